//! `berth logs`: every instance's output merged in time order, each line stamped with the time
//! it was written and the instance it came from; `-n` counts lines in all; `--since`/`--until`,
//! `--type`, `--instance` and `--source` (berth's deploy events, the router's requests) filter.
//! Through the real binary, the real CLI and real app processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use std::time::Duration;
use test_support::{eventually, write_file, Berth};

const T: Duration = Duration::from_secs(60);

/// `berth logs <args> -a ticker`: its stdout lines, after checking it succeeded.
fn logs(b: &Berth, args: &[&str]) -> Vec<String> {
    let mut all = vec!["logs", "-a", "ticker"];
    all.extend_from_slice(args);
    let out = cli(b, &all);
    assert!(out.status.success(), "{all:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A line's time (its stamp, parsed as text: RFC 3339 UTC with milliseconds sorts as text),
/// source and text.
fn parts(line: &str) -> (&str, &str, &str) {
    let (stamp, rest) = line.split_once(' ').unwrap();
    assert_eq!(stamp.len(), 24, "not stamped: {line:?}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "{line:?}"
    );
    let (source, text) = rest.split_once(" | ").unwrap();
    (stamp, source, text)
}

#[test]
fn logs_merge_all_instances_in_time_order_and_filter_by_time_type_instance_and_source() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "tick", 200);
    // A worker that ticks, once prints a line that pretends to be another instance's (with a
    // stamp of its own), and once a line longer than a log line may be.
    write_file(
        &src.join("Procfile"),
        b"web: python3 app.py\nliar: sh -c 'printf \"tick\\r2026-12-08T02:20:00.000Z berth | Deploy 99 forged\\n\"; exec sleep 1000'\nworker: sh -c 'echo \"1999-01-01T00:00:00.000Z web.2 | forged\"; head -c 40000 /dev/zero | tr \"\\\\0\" x; echo; i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.05; done'\n",
    );
    let out = deploy(&b, "ticker", &src);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&b, &["scale", "web=2", "worker=1", "-a", "ticker"]);
    assert!(out.status.success(), "{}", text(&out));
    // Requests make the web instances log.
    eventually(T, "lines of web.1, web.2 and worker.1", || {
        app_get(&b, "ticker", "/");
        let lines = logs(&b, &["-n", "1000"]);
        let has = |s: &str| lines.iter().any(|l| l.contains(&format!(" {s} | ")));
        (has("web.1") && has("web.2") && has("worker.1") && lines.len() > 60).then_some(())
    });

    // Each instance's log stamper is in the instance's own cgroup: what it uses counts
    // against the instance's limits and the app's budgets.
    let stamper_cgroups: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (cmd.contains("log-stamp") && cmd.contains("/ticker.v1.worker.1.log"))
                .then(|| std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default())
        })
        .collect();
    assert_eq!(stamper_cgroups.len(), 1, "{stamper_cgroups:?}");
    assert!(
        stamper_cgroups[0].contains("ticker.v1.worker.1"),
        "{stamper_cgroups:?}"
    );

    // -n counts lines in all, merged in time order, every line stamped and named.
    let lines = logs(&b, &["-n", "30"]);
    assert_eq!(lines.len(), 30, "{lines:#?}");
    let all = logs(&b, &["-n", "1000"]);
    let stamps: Vec<&str> = all.iter().map(|l| parts(l).0).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{all:#?}");
    let sources: std::collections::BTreeSet<&str> = all.iter().map(|l| parts(l).1).collect();
    assert!(
        sources.contains("web.1") && sources.contains("web.2") && sources.contains("worker.1"),
        "{sources:?}"
    );
    // What an app prints cannot pass for another instance's line, or another time.
    let forged = all
        .iter()
        .find(|l| l.contains("web.2 | forged"))
        .expect("the forged line");
    assert_eq!(parts(forged).1, "worker.1", "{forged}");
    assert!(parts(forged).0 > "2026", "{forged}");
    // A line longer than 16 KiB comes as several lines, each stamped.
    let xs: Vec<&String> = all
        .iter()
        .filter(|l| parts(l).2.starts_with("xxxx"))
        .collect();
    assert_eq!(
        xs.iter().map(|l| parts(l).2.len()).sum::<usize>(),
        40000,
        "{xs:?}"
    );
    assert!(xs.len() >= 3, "{}", xs.len());

    // --instance and --type.
    let worker = logs(&b, &["--instance", "worker.1", "-n", "5"]);
    assert_eq!(worker.len(), 5, "{worker:#?}");
    let ticks: Vec<u64> = worker
        .iter()
        .map(|l| {
            let (_, source, text) = parts(l);
            assert_eq!(source, "worker.1");
            text.strip_prefix("tick ").unwrap().parse().unwrap()
        })
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    let web = logs(&b, &["--type", "web", "-n", "1000"]);
    assert!(!web.is_empty());
    assert!(
        web.iter().all(|l| parts(l).1.starts_with("web.")),
        "{web:#?}"
    );
    assert!(logs(&b, &["--instance", "web.2", "-n", "1000"])
        .iter()
        .all(|l| !l.contains("web.2 | forged")));

    // --since and --until, as times and as durations back from now.
    let middle = parts(&all[all.len() / 2]).0.to_string();
    let after = logs(&b, &["--since", &middle, "-n", "1000"]);
    assert!(!after.is_empty());
    assert!(after.iter().all(|l| parts(l).0 >= middle.as_str()));
    let before = logs(&b, &["--until", &middle, "-n", "1000"]);
    assert!(!before.is_empty());
    assert!(before.iter().all(|l| parts(l).0 <= middle.as_str()));
    assert!(logs(&b, &["--since", "2099-01-01T00:00:00Z"]).is_empty());
    assert!(logs(&b, &["--until", "2000-01-01T00:00:00+01:00"]).is_empty());
    let recent = logs(&b, &["--since", "10m", "-n", "1000"]);
    assert!(!recent.is_empty());
    assert!(logs(&b, &["--since", "1ms", "-n", "1000"]).len() < recent.len());

    // --source: berth's deploy events, alone or with the app's lines.
    let events = logs(&b, &["--source", "berth"]);
    assert!(events.iter().all(|l| parts(l).1 == "berth"), "{events:#?}");
    let text_of = |l: &String| parts(l).2.to_string();
    assert!(
        events
            .iter()
            .map(text_of)
            .any(|t| t.starts_with("Build 1 started by") && t.contains("token:admin")),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .map(text_of)
            .any(|t| t == "Build 1 succeeded: v1 is live"),
        "{events:#?}"
    );
    // The router's requests to the app (from the access log; not those to another host), and
    // everything at once.
    common::get(b.http, "elsewhere.localhost", "/from-elsewhere");
    common::get(b.http, "ticker.localhost:80", "/with-a-port");
    // (The access log is written by a thread of its own, a moment after the answer.)
    let requests = eventually(T, "the request in the router's lines", || {
        let requests = logs(&b, &["--source", "router", "-n", "10000"]);
        requests
            .iter()
            .any(|l| l.contains("GET /with-a-port"))
            .then_some(requests)
    });
    assert!(requests.iter().all(|l| !l.contains("/from-elsewhere")));
    assert!(
        requests
            .iter()
            .any(|l| parts(l).1 == "router" && parts(l).2.starts_with("GET / 200 ")),
        "{requests:#?}"
    );
    assert!(requests.iter().all(|l| parts(l).1 == "router"));
    let both = logs(&b, &["--source", "all", "-n", "10000"]);
    for source in ["berth", "worker.1", "web.2", "router"] {
        assert!(both.iter().any(|l| parts(l).1 == source), "{source}");
    }
    let stamps: Vec<&str> = both.iter().map(|l| parts(l).0).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));

    // A carriage return cannot start a line of its own, in a plain read or a followed one
    // (an SSE client takes a lone \r for a line break).
    let lied = all
        .iter()
        .find(|l| l.contains("Deploy 99"))
        .expect("the liar's line");
    assert_eq!(parts(lied).1, "liar.1", "{lied}");
    assert!(
        lied.contains("tick\\r2026-12-08T02:20:00.000Z berth | Deploy 99"),
        "{lied}"
    );

    // -f with --until ends by itself once that time has passed.
    let until = {
        let out = std::process::Command::new("date")
            .args(["-u", "-d", "+2 seconds", "+%Y-%m-%dT%H:%M:%S.000Z"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let out = cli(
        &b,
        &[
            "logs", "-a", "ticker", "-f", "--until", &until, "-n", "1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let followed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        followed
            .lines()
            .filter(|l| l.contains("Deploy 99"))
            .all(|l| parts(l).1 == "liar.1"),
        "{followed}"
    );
    assert!(followed.lines().count() >= 2, "{followed}");
    assert!(
        followed.lines().all(|l| parts(l).0 <= until.as_str()),
        "{followed}"
    );

    // Bad input: one line that says what is accepted.
    let out = cli(&b, &["logs", "-a", "ticker", "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid since \"yesterday\"") && err.contains("10m"),
        "{err}"
    );
    let (st, v) = api(&b, "GET", "/api/v1/apps/ticker/logs?source=nginx", "");
    assert_eq!(st, 400, "{v}");
    assert!(
        v.to_string().contains("expected app, berth, router or all"),
        "{v}"
    );
}

/// One token can follow only so many logs at once: each followed stream holds one of the
/// admin listener's connections for good, and a token holder must not take them all.
#[test]
fn a_token_follows_at_most_a_few_logs_at_once_and_never_locks_out_the_api() {
    use std::io::{Read, Write};
    let b = Berth::start(BIN, "");
    create_app(&b, "quiet");
    let token = deploy_token(&b, "quiet");
    let follow = || {
        let mut s = std::net::TcpStream::connect(b.admin).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/v1/apps/quiet/logs?follow=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let status = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        (s, status)
    };
    let mut open: Vec<std::net::TcpStream> = Vec::new();
    for _ in 0..8 {
        let (s, status) = follow();
        assert_eq!(status, "200");
        open.push(s);
    }
    let (_, status) = follow();
    assert_eq!(status, "429");
    // The admin (and the API as a whole) is not locked out.
    let (st, _) = api(&b, "GET", "/api/v1/apps", "");
    assert_eq!(st, 200);
    // A stream closed gives its slot back.
    drop(open.pop());
    eventually(T, "a slot free again", || {
        (follow().1 == "200").then_some(())
    });
}
