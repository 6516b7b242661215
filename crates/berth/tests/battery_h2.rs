//! Reliability battery H2–H5 (HTTP/2 abuse) and T1 (TLS configuration) against the real binary.
//!
//! HTTP/2 frames are written by hand by `tests/scripts/h2raw.py` (struct + ssl with ALPN h2, HPACK
//! literals without Huffman coding), so malformed input reaches berth exactly as written. It needs
//! python3 with the `hpack` module (Debian: python3-h2) to decode berth's answers; T1 needs
//! `sslscan` and `openssl`; H4's second client is `curl --http2`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};
use test_support::{curl, eventually, run, Berth, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// The flood tests measure latency and memory: run this file's tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn script() -> String {
    format!("{}/tests/scripts/h2raw.py", env!("CARGO_MANIFEST_DIR"))
}

/// A python3 that can `import hpack` (the PATH one first, then Debian's).
fn python() -> &'static str {
    static PY: OnceLock<&'static str> = OnceLock::new();
    PY.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|py| {
                Command::new(py)
                    .args(["-c", "import hpack"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("battery_h2 needs python3 with the hpack module (Debian package python3-h2)")
    })
}

/// Run h2raw.py in `mode` against berth's TLS listener; one JSON value per output line.
fn h2raw(b: &Berth, sni: &str, mode: &str, args: &[&str], stdin: &str) -> Vec<Value> {
    let ca = b.ca().display().to_string();
    let port = b.https.port().to_string();
    let out = test_support::run_with_input(
        Command::new(python())
            .arg(script())
            .args(["127.0.0.1", &port, sni, &ca, mode])
            .args(args),
        stdin.as_bytes(),
    );
    assert!(
        out.status.success(),
        "h2raw.py {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// What berth must do with a request.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// RST_STREAM or GOAWAY (or a closed connection); no response, never upstream (H2).
    Reset,
    /// RST_STREAM, GOAWAY, close or a 4xx answer; never upstream (H3).
    ResetOr4xx,
    /// Served: 200 with this body (controls that prove the raw client itself is right).
    Ok(&'static str),
    /// `:authority` (a.localhost) differs from `host` (b.localhost): served by a.localhost's
    /// upstream, or refused; never by b.localhost's.
    AuthorityWins,
}

struct H2Case {
    name: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    data: Vec<&'static str>,
    expect: Expect,
}

/// The four pseudo-headers of a valid GET to `host`, with `drop` left out and `set` replacing
/// or adding values, followed by `extra` regular headers.
fn req(
    host: &'static str,
    set: &[(&'static str, &'static str)],
    drop: &[&str],
    extra: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    let mut h: Vec<(&'static str, &'static str)> = vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/h2-battery"),
        (":authority", host),
    ];
    h.retain(|(n, _)| !drop.contains(n));
    for (n, v) in set {
        match h.iter_mut().find(|(hn, _)| hn == n) {
            Some(slot) => slot.1 = v,
            None => h.push((n, v)),
        }
    }
    h.extend_from_slice(extra);
    h
}

fn cases() -> Vec<H2Case> {
    use Expect::*;
    const TRAP: &str = "trap.localhost";
    let post = |cl: &'static str| req(TRAP, &[(":method", "POST")], &[], &[("content-length", cl)]);
    let hdr = |n: &'static str, v: &'static str| req(TRAP, &[], &[], &[(n, v)]);
    let pseudo = |set: &[(&'static str, &'static str)], drop: &[&str]| req(TRAP, set, drop, &[]);
    let case = |name, headers, data, expect| H2Case {
        name,
        headers,
        data,
        expect,
    };
    vec![
        // Controls: the same raw client, well-formed requests.
        case(
            "control GET",
            req("ok.localhost", &[], &[], &[]),
            vec![],
            Ok("ok"),
        ),
        case(
            "control POST with matching content-length",
            req(
                "ok.localhost",
                &[(":method", "POST")],
                &[],
                &[("content-length", "5")],
            ),
            vec!["he", "llo"],
            Ok("ok"),
        ),
        case(
            "control te: trailers",
            req("ok.localhost", &[], &[], &[("te", "trailers")]),
            vec![],
            Ok("ok"),
        ),
        // H2: content-length ≠ DATA length.
        case(
            "content-length 10, 3 bytes of DATA",
            post("10"),
            vec!["abc"],
            Reset,
        ),
        case(
            "content-length 3, 10 bytes of DATA",
            post("3"),
            vec!["abcdefghij"],
            Reset,
        ),
        case(
            "content-length 4, DATA 2+3 bytes",
            post("4"),
            vec!["ab", "cde"],
            Reset,
        ),
        case(
            "content-length 5, END_STREAM on HEADERS",
            post("5"),
            vec![],
            Reset,
        ),
        // H2: connection-specific headers (RFC 9113 §8.2.2).
        case(
            "connection: keep-alive",
            hdr("connection", "keep-alive"),
            vec![],
            Reset,
        ),
        case(
            "transfer-encoding: chunked",
            hdr("transfer-encoding", "chunked"),
            vec![],
            Reset,
        ),
        case(
            "keep-alive: timeout=5",
            hdr("keep-alive", "timeout=5"),
            vec![],
            Reset,
        ),
        case(
            "proxy-connection: keep-alive",
            hdr("proxy-connection", "keep-alive"),
            vec![],
            Reset,
        ),
        case(
            "upgrade: websocket",
            hdr("upgrade", "websocket"),
            vec![],
            Reset,
        ),
        case("te: gzip", hdr("te", "gzip"), vec![], Reset),
        // H2: uppercase names.
        case("uppercase name X-Upper", hdr("X-Upper", "1"), vec![], Reset),
        case(
            "mixed-case name x-Mixed",
            hdr("x-Mixed", "1"),
            vec![],
            Reset,
        ),
        // H2: CR, LF, NUL in a value.
        case("CR in a value", hdr("x-v", "a\rb"), vec![], Reset),
        case("LF in a value", hdr("x-v", "a\nb"), vec![], Reset),
        case("NUL in a value", hdr("x-v", "a\0b"), vec![], Reset),
        case(
            "CRLF header injection",
            hdr("x-v", "a\r\nx-injected: 1"),
            vec![],
            Reset,
        ),
        // H3: bad pseudo-headers.
        case(
            "empty :path",
            pseudo(&[(":path", "")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "no leading slash in :path",
            pseudo(&[(":path", "h2-battery")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case("missing :path", pseudo(&[], &[":path"]), vec![], ResetOr4xx),
        case(
            "empty :scheme",
            pseudo(&[(":scheme", "")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "space in :scheme",
            pseudo(&[(":scheme", "ht tp")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "digit first in :scheme",
            pseudo(&[(":scheme", "1http")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "missing :scheme",
            pseudo(&[], &[":scheme"]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "missing :method",
            pseudo(&[], &[":method"]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "space in :method",
            pseudo(&[(":method", "GE T")], &[]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "duplicate :path",
            req(TRAP, &[], &[], &[(":path", "/other")]),
            vec![],
            ResetOr4xx,
        ),
        case(
            "unknown pseudo-header",
            hdr(":bogus", "1"),
            vec![],
            ResetOr4xx,
        ),
        case(
            "pseudo-header after a regular header",
            {
                let mut h = pseudo(&[], &[":path"]);
                h.push(("x-first", "1"));
                h.push((":path", "/h2-battery"));
                h
            },
            vec![],
            ResetOr4xx,
        ),
        // H3: :authority ≠ host.
        case(
            ":authority a.localhost, host b.localhost",
            req("a.localhost", &[], &[], &[("host", "b.localhost")]),
            vec![],
            AuthorityWins,
        ),
    ]
}

/// H2 + H3: every malformed request is reset (or, for H3, refused with a 4xx) and never reaches
/// an upstream; `:authority` wins over `host`.
#[test]
fn h2_h3_malformed_requests_are_reset_and_never_upstream() {
    let _s = serial();
    let ok = Upstream::start(Reply::Ok("ok"));
    let trap = Upstream::start(Reply::Echo);
    let a = Upstream::start(Reply::Ok("A"));
    let bu = Upstream::start(Reply::Ok("B"));
    let route = |host: &str, up: &Upstream| {
        format!(
            "[[route]]\nhost = \"{host}\"\nupstreams = [\"{}\"]\n",
            up.addr
        )
    };
    let b = Berth::start(
        BIN,
        &[
            route("ok.localhost", &ok),
            route("trap.localhost", &trap),
            route("a.localhost", &a),
            route("b.localhost", &bu),
        ]
        .concat(),
    );
    let cases = cases();
    let input: Vec<Value> = cases
        .iter()
        .map(|c| {
            let mut headers: Vec<Value> = c.headers.iter().map(|(n, v)| json!([n, v])).collect();
            headers.push(json!(["x-case", c.name]));
            // SNI names the same host as :authority, as a browser would.
            let sni = c
                .headers
                .iter()
                .find(|(n, _)| *n == ":authority")
                .map_or("trap.localhost", |(_, v)| v);
            json!({"name": c.name, "headers": headers, "data": c.data, "sni": sni})
        })
        .collect();
    let results = h2raw(
        &b,
        "trap.localhost",
        "requests",
        &[],
        &serde_json::to_string(&input).unwrap(),
    );
    assert_eq!(results.len(), cases.len());

    let mut failures = Vec::new();
    for (c, r) in cases.iter().zip(&results) {
        let status = r["status"].as_u64();
        let refused = !r["rst"].is_null() || !r["goaway"].is_null() || r["closed"] == true;
        let body = r["body"].as_str().unwrap_or("");
        eprintln!(
            "{:<45} status={:?} rst={} goaway={} closed={}",
            c.name, status, r["rst"], r["goaway"], r["closed"]
        );
        let good = match c.expect {
            Expect::Reset => refused && status.is_none(),
            Expect::ResetOr4xx => {
                (refused && status.is_none()) || status.is_some_and(|s| (400..500).contains(&s))
            }
            Expect::Ok(want) => status == Some(200) && body == want,
            Expect::AuthorityWins => {
                (status == Some(200) && body == "A")
                    || (refused && status.is_none())
                    || status == Some(400)
            }
        };
        if !good {
            failures.push(format!("{} (expected {:?}): got {r}", c.name, c.expect));
        }
    }

    // A fence: a valid request to the trap, so that anything sent before it has arrived too.
    let fence = json!([{"name": "fence", "headers": req("trap.localhost", &[], &[], &[("x-case", "fence")])
        .iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(), "data": []}]);
    let r = h2raw(&b, "trap.localhost", "requests", &[], &fence.to_string());
    assert_eq!(r[0]["status"], 200, "fence request: {}", r[0]);
    eventually(
        Duration::from_secs(5),
        "the fence to reach the trap",
        || {
            trap.requests
                .lock()
                .unwrap()
                .iter()
                .any(|q| String::from_utf8_lossy(q).contains("x-case: fence"))
                .then_some(())
        },
    );
    let leaked: Vec<String> = trap
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|q| String::from_utf8_lossy(q).into_owned())
        .filter(|q| !q.contains("x-case: fence"))
        .map(|q| {
            q.lines()
                .find(|l| l.to_ascii_lowercase().starts_with("x-case:"))
                .unwrap_or(q.lines().next().unwrap_or(""))
                .to_string()
        })
        .collect();
    if !leaked.is_empty() {
        failures.push(format!("reached the upstream: {leaked:?}"));
    }
    eprintln!(
        "trap upstream: {} connections, {} whole requests",
        trap.connections.load(std::sync::atomic::Ordering::Relaxed),
        trap.count()
    );
    assert_eq!(
        bu.count(),
        0,
        "b.localhost's upstream saw a request routed by `host`"
    );
    assert!(
        failures.is_empty(),
        "{} problems in {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// H4: rapid reset. Rounds of 10,000 HEADERS+RST_STREAM pairs on one connection each end in
/// GOAWAY or a close; meanwhile another h2 client is served in under a second, and berth's RSS
/// stays within 50 MiB of where it started.
#[test]
fn h4_rapid_reset_gets_goaway_others_served_memory_flat() {
    let _s = serial();
    let ok = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[[route]]\nhost = \"*.localhost\"\nupstreams = [\"{}\"]\n",
            ok.addr
        ),
    );
    let probe = {
        let url = format!("https://ok.localhost:{}/", b.https.port());
        let resolve = format!("ok.localhost:{}:127.0.0.1", b.https.port());
        let ca = b.ca().display().to_string();
        move || {
            let (ok, out) = curl(&[
                "--http2",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version} %{time_total}",
                &url,
            ]);
            assert!(ok, "probe failed: {out}");
            let mut f = out.split_whitespace();
            let (code, version) = (f.next().unwrap().to_string(), f.next().unwrap().to_string());
            let secs: f64 = f.next().unwrap().parse().unwrap();
            assert_eq!((code.as_str(), version.as_str()), ("200", "2"), "{out}");
            secs
        }
    };
    // Warm up (leaf certificate, upstream pool), then take the baseline.
    probe();
    let pid = b.child.id();
    let rss_before = rss_kib(pid);

    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (done, probe) = (done.clone(), probe.clone());
        thread::spawn(move || {
            let mut times = Vec::new();
            // Bounded: at most 200 probes, at least one.
            while times.is_empty() || (!done.load(Ordering::Relaxed) && times.len() < 200) {
                times.push(probe());
            }
            times
        })
    };
    let start = Instant::now();
    let mut rounds = Vec::new();
    // At least 5 rounds and about 2 s of flooding, at most 50 rounds.
    while rounds.len() < 5 || (start.elapsed() < Duration::from_secs(2) && rounds.len() < 50) {
        rounds.extend(h2raw(&b, "ok.localhost", "rapid_reset", &["10000"], ""));
    }
    done.store(true, Ordering::Relaxed);
    let times = prober.join().unwrap();
    let rss_after = rss_kib(pid);
    eprintln!(
        "H4: {} rounds in {:?}, first {}, {} probes, slowest {:.3}s, RSS {} -> {} KiB",
        rounds.len(),
        start.elapsed(),
        rounds[0],
        times.len(),
        times.iter().cloned().fold(0.0, f64::max),
        rss_before,
        rss_after
    );
    for r in &rounds {
        assert!(
            !r["goaway"].is_null() || r["closed"] == true,
            "10,000 HEADERS+RST_STREAM pairs were neither answered with GOAWAY nor closed: {r}"
        );
    }
    let slow: Vec<&f64> = times.iter().filter(|t| **t >= 1.0).collect();
    assert!(
        slow.is_empty(),
        "other clients waited ≥ 1 s during the flood: {slow:?}"
    );
    assert!(
        rss_after < rss_before + 50 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Still serving afterwards.
    assert!(probe() < 1.0);
}

/// H5: HEADERS without END_HEADERS, then CONTINUATION frames without end: berth must close the
/// connection (or send GOAWAY) long before 10 MB.
#[test]
fn h5_continuation_flood_is_cut_off() {
    let _s = serial();
    let ok = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[[route]]\nhost = \"ok.localhost\"\nupstreams = [\"{}\"]\n",
            ok.addr
        ),
    );
    let limit = 10_000_000;
    let r = h2raw(
        &b,
        "ok.localhost",
        "continuation",
        &[&limit.to_string()],
        "",
    );
    let r = &r[0];
    eprintln!("H5: {r}");
    assert_eq!(
        r["stopped_before_limit"], true,
        "berth neither closed nor sent GOAWAY within 10 MB of CONTINUATION: {r}"
    );
    assert!(r["sent"].as_u64().unwrap() < limit, "{r}");
    assert_eq!(ok.count(), 0, "the flooded request reached the upstream");
    // And berth still serves.
    let r = h2raw(
        &b,
        "ok.localhost",
        "requests",
        &[],
        &json!([{"name": "after", "headers": req("ok.localhost", &[], &[], &[])
            .iter().map(|(n, v)| json!([n, v])).collect::<Vec<_>>(), "data": []}])
        .to_string(),
    );
    assert_eq!(r[0]["status"], 200, "{}", r[0]);
}

/// T1: TLS 1.2 and 1.3 only, ECDHE + AEAD suites only, ALPN h2 and http/1.1.
#[test]
fn t1_tls_versions_ciphers_and_alpn() {
    let _s = serial();
    let ok = Upstream::start(Reply::Ok("ok"));
    // sslscan's key-exchange-group probes leave handshakes half open until berth's handshake
    // (header) timeout: keep it short so the scan takes seconds, not tens of seconds.
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\n[[route]]\nhost = \"app.localhost\"\nupstreams = [\"{}\"]\n",
            ok.addr
        ),
    );
    let target = format!("127.0.0.1:{}", b.https.port());

    // sslscan: the whole picture.
    assert!(
        Command::new("sslscan").arg("--version").output().is_ok(),
        "T1 needs sslscan (Debian package sslscan)"
    );
    let (_, scan, err) = run(
        "sslscan",
        &["--no-colour", "--sni-name=app.localhost", &target],
    );
    let proto = |name: &str| {
        scan.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("sslscan did not report {name}:\n{scan}\n{err}"))
    };
    for (p, want) in [
        ("SSLv2", "disabled"),
        ("SSLv3", "disabled"),
        ("TLSv1.0", "disabled"),
        ("TLSv1.1", "disabled"),
        ("TLSv1.2", "enabled"),
        ("TLSv1.3", "enabled"),
    ] {
        assert_eq!(proto(p), want, "{p}:\n{scan}");
    }
    let suites: Vec<(String, String)> = scan
        .lines()
        .filter(|l| l.starts_with("Accepted") || l.starts_with("Preferred"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_string(), f[4].to_string())
        })
        .collect();
    assert!(suites.iter().any(|(v, _)| v == "TLSv1.2"), "{scan}");
    assert!(suites.iter().any(|(v, _)| v == "TLSv1.3"), "{scan}");
    for (version, suite) in &suites {
        let aead = ["GCM", "CHACHA20-POLY1305", "CHACHA20_POLY1305", "CCM"]
            .iter()
            .any(|a| suite.contains(a));
        let ecdhe = version == "TLSv1.3" || suite.starts_with("ECDHE-");
        assert!(
            aead && ecdhe,
            "{version} {suite} is not ECDHE + AEAD:\n{scan}"
        );
    }

    // Key exchange: elliptic-curve groups only (no finite-field DHE in TLS 1.3 either).
    let groups: Vec<&str> = scan
        .lines()
        .skip_while(|l| !l.contains("Key Exchange Group"))
        .skip(1)
        .take_while(|l| l.starts_with("TLSv"))
        .collect();
    assert!(!groups.is_empty(), "sslscan listed no groups:\n{scan}");
    for g in &groups {
        let lower = g.to_ascii_lowercase();
        assert!(
            ["x25519", "x448", "secp", "prime256v1", "mlkem"]
                .iter()
                .any(|ec| lower.contains(ec))
                && !lower.contains("ffdhe"),
            "not an ECDHE group: {g}\n{scan}"
        );
    }

    // openssl s_client: the specific handshakes.
    let s_client = |args: &[&str]| {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &target,
                "-servername",
                "app.localhost",
            ])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("T1 needs openssl");
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            !se.contains("no protocols available") && !se.contains("no ciphers available"),
            "openssl could not even offer {args:?}: {se}"
        );
        let accepted = out.status.success() && !so.contains("Cipher is (NONE)");
        (accepted, so, se)
    };
    let table: &[(&[&str], bool)] = &[
        (&["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"], false),
        (&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], false),
        (&["-tls1_2"], true),
        (&["-tls1_3"], true),
        (&["-tls1_2", "-cipher", "AES128-SHA"], false),
        (&["-tls1_2", "-cipher", "AES128-GCM-SHA256"], false),
        (&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"], false),
        (
            &[
                "-tls1_2",
                "-cipher",
                "ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256",
            ],
            false,
        ),
    ];
    for (args, want) in table {
        let (accepted, so, se) = s_client(args);
        assert_eq!(accepted, *want, "s_client {args:?}:\n{so}\n{se}");
    }
    for (args, alpn) in [
        (&["-alpn", "h2"][..], "h2"),
        (&["-alpn", "http/1.1"][..], "http/1.1"),
        (&["-alpn", "h2,http/1.1"][..], "h2"),
        (&["-tls1_2", "-alpn", "h2"][..], "h2"),
        (&["-tls1_2", "-alpn", "http/1.1"][..], "http/1.1"),
    ] {
        let (accepted, so, se) = s_client(args);
        assert!(accepted, "s_client {args:?}:\n{so}\n{se}");
        assert!(
            so.contains(&format!("ALPN protocol: {alpn}\n")),
            "s_client {args:?} should negotiate {alpn}:\n{so}"
        );
    }
}

/// An h2 client that asks for a large file and then never grants flow-control window (no
/// WINDOW_UPDATE), while answering SETTINGS and PINGs like a live peer. Prints the seconds until
/// berth closed the connection. Raw frames, standard library only.
const H2_NO_WINDOW: &str = r#"
import socket, ssl, struct, sys, time
def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload
def lit(name, value):
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="files.localhost")
hdrs = lit(b":method", b"GET") + lit(b":scheme", b"https") + lit(b":path", b"/big.bin") + lit(b":authority", b"files.localhost")
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, hdrs))
start = time.time()
s.settimeout(15)
buf = b""
try:
    while time.time() - start < 15:
        d = s.recv(65536)
        if not d:
            break
        buf += d
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            t, fl, payload = buf[3], buf[4], buf[9:9 + n]
            buf = buf[9 + n:]
            if t == 4 and not fl & 1:
                s.sendall(frame(4, 1, 0))
            if t == 6 and not fl & 1:
                s.sendall(frame(6, 1, 0, payload))
except Exception:
    pass
print(time.time() - start)
"#;

#[test]
fn h2_client_that_grants_no_window_is_closed() {
    let _s = serial();
    let big = vec![b'x'; 4 << 20];
    let b = Berth::start_with(
        BIN,
        "",
        &[("www/big.bin", &big)],
        "[limits]\nbody_timeout = \"1s\"\nupstream_timeout = \"1s\"\n[[route]]\nhost = \"files.localhost\"\nstatic = \"{dir}/www\"\n",
    );
    let secs = test_support::python_seconds(H2_NO_WINDOW, &[&b.https.port().to_string()]);
    assert!(
        secs < 6.0,
        "a stalled h2 stream kept its connection open for {secs:.1}s"
    );
}

/// P3 over h2: the same raw `:path` values as the HTTP/1.1 battery; each is refused (reset or
/// 400) or reaches one upstream with a path inside that upstream's route and no dot segment.
#[test]
fn p3_h2_upstreams_never_see_a_path_outside_their_route() {
    use test_support::paths;
    let _s = serial();
    let public = Upstream::start(Reply::Echo);
    let rest = Upstream::start(Reply::Echo);
    let b = Berth::start(
        BIN,
        &format!(
            "[[route]]\nhost = \"p3.localhost\"\npath = \"/public\"\nupstreams = [\"{}\"]\n\
             [[route]]\nhost = \"p3.localhost\"\npath = \"/\"\nupstreams = [\"{}\"]\n",
            public.addr, rest.addr
        ),
    );
    let input: Vec<Value> = paths::TARGETS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let name = format!("p3-{i}");
            let headers: Vec<Value> = req("p3.localhost", &[(":path", *t)], &[], &[])
                .iter()
                .map(|(n, v)| json!([n, v]))
                .chain([json!(["x-case", name])])
                .collect();
            json!({"name": name, "headers": headers, "data": []})
        })
        .collect();
    let results = h2raw(
        &b,
        "p3.localhost",
        "requests",
        &[],
        &serde_json::to_string(&input).unwrap(),
    );
    assert_eq!(results.len(), paths::TARGETS.len());
    // What each upstream received, by case.
    let seen = |up: &Upstream| -> Vec<(String, String)> {
        up.requests
            .lock()
            .unwrap()
            .iter()
            .map(|q| {
                let q = String::from_utf8_lossy(q).into_owned();
                let target = q
                    .lines()
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_string();
                let case = q
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("x-case:")
                            .map(|v| v.trim().to_string())
                    })
                    .unwrap_or_default();
                (case, target)
            })
            .collect()
    };
    let (at_public, at_rest) = (seen(&public), seen(&rest));
    let mut failures = Vec::new();
    for (i, (target, r)) in paths::TARGETS.iter().zip(&results).enumerate() {
        let name = format!("p3-{i}");
        let status = r["status"].as_u64();
        let refused = !r["rst"].is_null() || !r["goaway"].is_null() || r["closed"] == true;
        let got: Vec<(&str, &String)> = at_public
            .iter()
            .filter(|(c, _)| *c == name)
            .map(|(_, t)| ("/public", t))
            .chain(
                at_rest
                    .iter()
                    .filter(|(c, _)| *c == name)
                    .map(|(_, t)| ("/", t)),
            )
            .collect();
        match (status, got.as_slice()) {
            (None, []) if refused => {}
            (Some(400), []) => {}
            (Some(200), [(prefix, up_target)]) => {
                if let Some(why) = paths::escapes(prefix, up_target) {
                    failures.push(format!(
                        "{target}: the upstream of {prefix:?} got {up_target:?}: {why}"
                    ));
                }
                if paths::CONTROLS.contains(target) && up_target != target {
                    failures.push(format!("{target}: control forwarded as {up_target:?}"));
                }
            }
            _ => failures.push(format!(
                "{target}: status {status:?}, refused {refused}, upstreams got {got:?}; want a reset or 400, or 200 from one upstream"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "P3 (h2): {} failing case(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
