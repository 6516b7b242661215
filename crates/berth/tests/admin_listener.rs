//! The admin listener (where the API is served) gets the proxy's protections: a header timeout
//! against slowloris, a body timeout, and a cap on open connections, so that idle or slow
//! clients on it can exhaust neither berth's file descriptors nor the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use test_support::{closed_within, Berth, Reply, Upstream};

/// The header timeout the tests configure; connections must close around it, not before.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// Room for a loaded machine on top of a timeout.
const MARGIN: Duration = Duration::from_secs(3);
const CAP: usize = 16;

fn limited_berth(up: &Upstream) -> Berth {
    Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\nadmin_max_connections = {CAP}\n\n{}",
            route("app.localhost", &[up.addr], "")
        ),
    )
}

/// A connection the peer has not closed yet: a read of up to `wait` sees neither EOF nor data.
fn still_open(s: &mut TcpStream, wait: Duration) -> bool {
    !closed_within(s, wait)
}

/// Wait until the peer closes `s` (EOF or reset); how long that took, or `None` after `limit`.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    closed_within(s, limit).then(|| t.elapsed())
}

fn health(b: &Berth) -> (u16, Duration) {
    let t = Instant::now();
    let r = get(b.admin, "127.0.0.1", "/api/v1/health");
    (r.status, t.elapsed())
}

#[test]
fn idle_connections_are_capped_and_closed_at_the_header_timeout() {
    let up = Upstream::start(Reply::Ok("proxied"));
    let b = limited_berth(&up);
    // Fill the cap with connections that send nothing.
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(b.admin).unwrap())
        .collect();
    // One more: closed at once, long before any timeout, without an answer.
    let mut extra = TcpStream::connect(b.admin).unwrap();
    let _ = extra.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n");
    let t = Instant::now();
    let mut got = Vec::new();
    extra.set_read_timeout(Some(HEADER_TIMEOUT / 2)).unwrap();
    let closed = loop {
        let mut buf = [0u8; 1024];
        match extra.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed
            && t.elapsed() < HEADER_TIMEOUT / 2
            && !String::from_utf8_lossy(&got).contains(" 200 "),
        "the connection past the cap of {CAP} was {} after {:?} ({:?})",
        if closed { "closed" } else { "still open" },
        t.elapsed(),
        String::from_utf8_lossy(&got)
    );
    // The proxy is not affected meanwhile.
    let r = get(b.http, "app.localhost", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "proxied"));
    // Every idle connection is closed by the header timeout, and not much before it.
    for (i, s) in idle.iter_mut().enumerate() {
        let left = (opened + HEADER_TIMEOUT + MARGIN).saturating_duration_since(Instant::now());
        assert!(
            closed_after(s, left).is_some(),
            "idle connection {i} still open {:?} after it was opened (header timeout {HEADER_TIMEOUT:?})",
            opened.elapsed()
        );
        assert!(
            opened.elapsed() >= HEADER_TIMEOUT / 2,
            "idle connection {i} closed after {:?}, before the header timeout",
            opened.elapsed()
        );
    }
    // The slots are free again.
    let (status, took) = health(&b);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(1), "health took {took:?}");
}

#[test]
fn trickling_clients_are_cut_off_while_the_api_and_the_proxy_answer() {
    let up = Upstream::start(Reply::Ok("proxied"));
    let b = limited_berth(&up);
    // Slowloris under the cap: each sends a request head one byte every 100 ms, never ending it.
    let n = CAP - 4;
    let opened = Instant::now();
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(b.admin).unwrap();
            s.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<TcpStream> = conns.iter().map(|s| s.try_clone().unwrap()).collect();
    let trickle = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut writers: Vec<Option<TcpStream>> = writers.into_iter().map(Some).collect();
            let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaa\r\n";
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && writers.iter().any(Option::is_some) {
                for w in writers.iter_mut() {
                    if let Some(s) = w {
                        if s.write_all(&header[i % header.len()..][..1]).is_err() {
                            *w = None;
                        }
                    }
                }
                i += 1;
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    // Meanwhile the API answers promptly, and so does the proxy.
    for _ in 0..3 {
        let (status, took) = health(&b);
        assert_eq!(status, 200);
        assert!(took < Duration::from_millis(500), "health took {took:?}");
        let r = get(b.http, "app.localhost", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "proxied"));
    }
    // Trickling does not keep a connection: all are closed at the header timeout.
    for (i, mut s) in conns.into_iter().enumerate() {
        let left = (opened + HEADER_TIMEOUT + MARGIN).saturating_duration_since(Instant::now());
        assert!(
            closed_after(&mut s, left).is_some(),
            "trickling connection {i} still open {:?} after it was opened",
            opened.elapsed()
        );
    }
    assert!(opened.elapsed() >= HEADER_TIMEOUT / 2);
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    let (status, _) = health(&b);
    assert_eq!(status, 200);
}

#[test]
fn a_stalled_request_body_is_cut_off_at_the_body_timeout() {
    let up = Upstream::start(Reply::Ok("proxied"));
    let b = limited_berth(&up);
    let stall = |addr: SocketAddr| {
        let mut s = TcpStream::connect(addr).unwrap();
        let head = format!(
            "PUT /api/v1/routes HTTP/1.1\r\nHost: x\r\n{}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[",
            b.auth()
        );
        s.write_all(head.as_bytes()).unwrap();
        s
    };
    let mut s = stall(b.admin);
    let t = Instant::now();
    // Open past the header timeout (the head arrived whole)...
    assert!(still_open(&mut s, HEADER_TIMEOUT / 2));
    // ...and closed once the body has stalled for the body timeout.
    let took = closed_after(&mut s, Duration::from_secs(1) + MARGIN);
    assert!(
        took.is_some(),
        "a stalled body still open after {:?}",
        t.elapsed()
    );
    // Nothing was changed by the half body.
    let r = admin_get(&b, "/api/v1/routes");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("app.localhost"), "{}", r.text());
}

// ---------------------------------------------------------------------------------------------
// The API in clear text: with HTTPS off, only the admin listener serves it.

#[test]
fn with_https_off_the_api_is_not_routed_on_the_plain_listener() {
    let b = Berth::start_with(BIN, "https = \"off\"", &[], "");
    for (path, auth) in [
        ("/api/v1/health", None),
        ("/api/v1/apps", Some(b.auth())),
        ("/metrics", Some(b.auth())),
        ("/git/x.git/info/refs?service=git-upload-pack", None),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .and_then(|a| a.split_once(": "))
            .into_iter()
            .collect();
        let r = get_with(b.http, "berth.localhost", path, &headers);
        assert!(
            matches!(r.status, 404 | 421),
            "{path} on the plain listener: {} {}",
            r.status,
            r.text()
        );
        assert!(!r.text().contains("\"ok\""), "{}", r.text());
    }
    // The admin listener still serves it.
    let r = admin_get(&b, "/api/v1/apps");
    assert_eq!(r.status, 200, "{}", r.text());
    // On loopback (the default), no warning.
    assert!(
        !b.stderr().contains("admin listener is bound to"),
        "{}",
        b.stderr()
    );
}

#[test]
fn with_https_on_plain_http_to_the_api_host_is_still_redirected() {
    let b = Berth::start(BIN, "");
    let r = get_with(
        b.http,
        "berth.localhost",
        "/api/v1/apps",
        &[("Authorization", &format!("Bearer {}", b.token))],
    );
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://berth.localhost:{}/api/v1/apps", b.https.port()).as_str())
    );
}

#[test]
fn an_admin_listener_off_loopback_is_warned_about_at_start() {
    let b = Berth::start_with(BIN, "admin = \"0.0.0.0:0\"", &[], "");
    let err = b.stderr();
    let line = err
        .lines()
        .find(|l| l.contains("admin listener is bound to"))
        .unwrap_or_else(|| panic!("no warning about the admin listener in:\n{err}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("0.0.0.0"), "{line}");
    // It still serves.
    let r = get(
        SocketAddr::from(([127, 0, 0, 1], b.admin.port())),
        "x",
        "/api/v1/health",
    );
    assert_eq!(r.status, 200);
}
