#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Operating berth: the admin token file is recreated when it is lost (the documented
//! recovery), the data dir is private, a start sweeps leftover upload spool files, the API
//! behind the proxy is HTTPS only and its host configurable, and deploy logs are read bounded.

mod common;

use common::apps::*;
use common::BIN;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use test_support::{eventually, Berth};

/// SIGTERM berth and wait until it has exited (its data dir stays).
fn stop(b: &mut Berth) {
    b.signal("TERM");
    eventually(T, "berth to exit", || {
        b.child.try_wait().ok().flatten().map(|_| ())
    });
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_lost_admin_token_file_gets_a_new_token_on_restart() {
    let mut b = Berth::start(BIN, "");
    let first = b.token.clone();
    assert!(first.starts_with("berth_"), "{first:?}");
    assert_eq!(status_with(&b, &first, "/api/v1/apps"), 200);

    // A plain restart keeps the token.
    stop(&mut b);
    b.crash_and_restart(BIN);
    assert_eq!(b.token, first, "a valid token file is kept");

    // The documented recovery: delete the file, restart.
    stop(&mut b);
    std::fs::remove_file(b.path("data/admin-token")).unwrap();
    b.crash_and_restart(BIN);
    let second = b.token.clone();
    assert!(
        second.starts_with("berth_") && second != first,
        "{second:?}"
    );
    assert_eq!(mode(&b.path("data/admin-token")), 0o600);
    assert_eq!(status_with(&b, &second, "/api/v1/apps"), 200);
    assert_eq!(
        status_with(&b, &first, "/api/v1/apps"),
        200,
        "earlier tokens are not revoked"
    );
    assert!(
        !b.stderr().contains(&second),
        "the new token is never printed: {}",
        b.stderr()
    );

    // A file with something that is not a token is replaced too.
    stop(&mut b);
    std::fs::write(b.path("data/admin-token"), "berth_not-a-token\n").unwrap();
    b.crash_and_restart(BIN);
    let third = b.token.clone();
    assert!(third != first && third != second && third.starts_with("berth_"));
    assert_eq!(status_with(&b, &third, "/api/v1/apps"), 200);
    assert_eq!(status_with(&b, "berth_not-a-token", "/api/v1/apps"), 401);

    // So is a revoked token (here revoked with the first token).
    let (st, tokens) = api(&b, "GET", "/api/v1/tokens", "");
    assert_eq!(st, 200, "{tokens}");
    let newest = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_i64())
        .max()
        .unwrap();
    let r = common::request(
        b.admin,
        "DELETE",
        "127.0.0.1",
        &format!("/api/v1/tokens/{newest}"),
        &[("Authorization", &format!("Bearer {first}"))],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(status_with(&b, &third, "/api/v1/apps"), 401);
    stop(&mut b);
    b.crash_and_restart(BIN);
    let fourth = b.token.clone();
    assert!(fourth != third && fourth.starts_with("berth_"));
    assert_eq!(status_with(&b, &fourth, "/api/v1/apps"), 200);
}

#[test]
fn the_data_dir_is_private_and_leftover_spool_files_are_swept() {
    // A fresh data dir is created 0700.
    let b = Berth::start(BIN, "");
    assert_eq!(mode(&b.path("data")), 0o700);
    drop(b);

    // An existing data dir with looser bits is tightened (and that is logged); upload spool
    // files a crash left behind are removed before berth serves.
    let files: &[(&str, &[u8])] = &[
        ("data/tmp/upload-0123456789abcdef.tar.gz", &[0u8; 4096]),
        ("data/tmp/quickstart-hello.tar.gz", b"partial"),
    ];
    let mut b = Berth::start_with(BIN, "", files, "");
    assert_eq!(mode(&b.path("data")), 0o700);
    let left: Vec<_> = std::fs::read_dir(b.path("data/tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "spool files left: {left:?}");
    assert!(
        b.stderr().contains("removed leftover upload spool files"),
        "{}",
        b.stderr()
    );
    stop(&mut b);
    std::fs::set_permissions(b.path("data"), std::fs::Permissions::from_mode(0o755)).unwrap();
    b.crash_and_restart(BIN);
    assert_eq!(mode(&b.path("data")), 0o700);
    assert!(
        b.stderr().contains("changed it to 700"),
        "the chmod is logged: {}",
        b.stderr()
    );
}

#[test]
fn the_api_behind_the_proxy_is_https_only_at_the_configured_host() {
    let b = Berth::start_with(BIN, "api_host = \"Berth-API.Example.test.\"", &[], "");
    let host = "berth-api.example.test";
    let auth = format!("Bearer {}", b.token);
    // Plain HTTP: a redirect before anything reaches the API.
    let r = common::get_with(b.http, host, "/api/v1/apps", &[("Authorization", &auth)]);
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{host}:{}/api/v1/apps", b.https.port()).as_str())
    );
    // HTTPS with the local CA: the API.
    let r = common::curl_https_resp(
        &b,
        host,
        "/api/v1/apps",
        &["-H", &format!("Authorization: {auth}")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "[]");
    // The default name is not routed to the API any more.
    let r = common::get_with(
        b.http,
        "berth.localhost",
        "/api/v1/apps",
        &[("Authorization", &auth)],
    );
    assert!(r.status != 200 && r.status != 308, "{}", r.status);
}

#[test]
fn api_host_must_be_an_exact_host_name() {
    let dir = tempfile::tempdir().unwrap();
    for (value, ok) in [
        ("berth.example.com", true),
        ("*.example.com", false),
        ("*", false),
        ("a..example.com", false),
        ("berth example.com", false),
        ("", false),
    ] {
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, format!("[server]\napi_host = \"{value}\"\n")).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), ok, "{value:?}: {err}");
        if !ok {
            assert!(err.contains(":2:"), "names the line: {err}");
            assert!(
                err.contains("api_host") || err.contains("invalid host"),
                "{err}"
            );
        }
    }
}

/// Create `app`, deploy a one-file static site, wait for it to finish: the deploy id.
fn deploy_static(b: &Berth, app: &str) -> i64 {
    create_app(b, app);
    deploy_ok(b, &b.token, app, &static_site(b, &format!("src-{app}")))
}

#[test]
fn a_huge_deploy_log_is_cut_to_its_end_and_followed_in_bounded_reads() {
    let b = Berth::start(BIN, "");
    let id = deploy_static(&b, "biglog");
    let log = b.path(&format!("data/apps/biglog/deploys/{id}.log"));
    let before = std::fs::read(&log).unwrap();
    assert!(
        before.ends_with(b"\n"),
        "{}",
        String::from_utf8_lossy(&before)
    );
    // ~6 MiB of build output, with bytes that are not UTF-8, then a last line.
    let mut extra = Vec::new();
    for i in 0..60_000 {
        extra.extend_from_slice(format!("build output {i:06} {}", "x".repeat(80)).as_bytes());
        extra.extend_from_slice(b"\xff\n");
    }
    extra.extend_from_slice(b"the very last line\n");
    let mut all = before.clone();
    all.extend_from_slice(&extra);
    std::fs::write(&log, &all).unwrap();

    // Plain: the last 4 MiB, after a first line that says it was cut; lossy UTF-8.
    let r = get_as(
        &b,
        &b.token,
        &format!("/api/v1/apps/biglog/deploys/{id}/log"),
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("[berth: the log is ") && first.contains("4 MiB"),
        "{first}"
    );
    // At most 4 MiB of the file (each \xff became the 3-byte U+FFFD).
    let bytes = text.len() - text.matches('\u{fffd}').count() * 2;
    assert!(
        bytes <= (4 << 20) + 1024 && bytes > (4 << 20) - 1024,
        "{bytes}"
    );
    assert!(text.ends_with("the very last line\n"));
    assert!(text.contains("x\u{fffd}\n"));
    let second = text.lines().nth(1).unwrap();
    assert!(
        second.starts_with("build output "),
        "a whole line: {second}"
    );

    // Followed: every line, in several events, then `end` with the deploy.
    let (ok, out, err) = test_support::run(
        "curl",
        &[
            "-sS",
            "-N",
            "--max-time",
            "60",
            "-H",
            &format!("Authorization: Bearer {}", b.token),
            &format!(
                "http://{}/api/v1/apps/biglog/deploys/{id}/log?follow=true",
                b.admin
            ),
        ],
    );
    assert!(ok, "{err}");
    let events: Vec<&str> = out.lines().filter(|l| l.starts_with("event: ")).collect();
    assert!(
        events.iter().filter(|e| **e == "event: log").count() >= 20,
        "6 MiB come in reads of at most 256 KiB"
    );
    assert_eq!(events.last(), Some(&"event: end"));
    let data: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            l.strip_prefix("data: ")
                .or_else(|| (l == "data:").then_some(""))
        })
        .collect();
    let lines_before = String::from_utf8_lossy(&before).lines().count();
    // Every line of the file, then the final Deploy JSON.
    assert_eq!(data.len(), lines_before + 60_001 + 1);
    assert_eq!(
        data[lines_before],
        format!("build output 000000 {}\u{fffd}", "x".repeat(80))
    );
    assert_eq!(data[data.len() - 2], "the very last line");
    let end: Value = serde_json::from_str(data[data.len() - 1]).unwrap();
    assert_eq!(end["status"], "succeeded");
}
