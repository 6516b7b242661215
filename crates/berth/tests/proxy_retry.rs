//! nginx's `proxy_next_upstream error` for idempotent requests: a request that fails on its
//! upstream before any byte of the response came back (connection refused, closed or reset
//! before the response head) is sent once more to another upstream of the pool when it is
//! idempotent and has no body. Requests with a body and response timeouts are not retried.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use test_support::{eventually, Berth, Reply, Upstream};

const WAIT: Duration = Duration::from_secs(15);

/// How a [`Hangup`] upstream drops a request.
#[derive(Clone, Copy, Debug)]
enum Hang {
    /// Reads the whole request head, then closes (FIN).
    Close,
    /// Reads one byte, then closes with the rest unread: the kernel sends a reset.
    Reset,
}

/// An upstream that accepts connections and drops every request without answering.
struct Hangup {
    addr: SocketAddr,
    /// Request heads started (one per connection).
    requests: Arc<AtomicUsize>,
}

impl Hangup {
    fn start(how: Hang) -> Hangup {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let seen = requests.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let seen = seen.clone();
                thread::spawn(move || match how {
                    Hang::Reset => {
                        if s.read(&mut [0u8; 1]).unwrap_or(0) == 1 {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Hang::Close => {
                        let mut r = BufReader::new(s);
                        let mut line = String::new();
                        while r.read_line(&mut line).unwrap_or(0) > 0 {
                            if line == "\r\n" {
                                seen.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            line.clear();
                        }
                    }
                });
            }
        });
        Hangup { addr, requests }
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn errors(b: &Berth) -> f64 {
    metric(
        &admin_get(b, "/metrics").text(),
        "berth_upstream_errors_total",
        &[],
    )
    .unwrap_or(0.0)
}

fn access_lines(b: &Berth) -> Vec<Value> {
    std::fs::read_to_string(b.path("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One request over h2 with curl: (HTTP version, status, body).
fn h2_request(b: &Berth, method: &str, body: Option<&str>) -> (String, u16, String) {
    let mut args = vec![
        "--http2",
        "-X",
        method,
        "-w",
        "\n%{http_version} %{http_code}",
    ];
    if let Some(body) = body {
        args.extend(["--data-binary", body]);
    }
    let (ok, out, err) = curl_https(b, "app.localhost", "/", &args);
    assert!(ok, "curl failed: {err}");
    let (text, last) = out.rsplit_once('\n').unwrap();
    let (version, status) = last.split_once(' ').unwrap();
    (version.into(), status.parse().unwrap(), text.into())
}

#[test]
fn a_get_dropped_before_the_response_moves_to_another_upstream_a_body_does_not() {
    for how in [Hang::Close, Hang::Reset] {
        let bad = Hangup::start(how);
        let good = Upstream::start(Reply::Ok("b"));
        let b = Berth::start(BIN, &route("app.localhost", &[bad.addr, good.addr], ""));

        // Idempotent and body-less: every one answered by the healthy upstream.
        for method in ["GET", "GET", "HEAD", "DELETE", "GET", "OPTIONS"] {
            let r = request(b.http, method, "app.localhost", "/", &[], b"");
            assert_eq!(r.status, 200, "{how:?}: {method} was not moved: {r:?}");
            if method == "GET" {
                assert_eq!(r.text(), "b");
            }
        }
        let dropped = bad.count();
        assert!(
            dropped >= 1,
            "{how:?}: no request reached the failing upstream"
        );
        assert_eq!(good.count(), 6, "{how:?}");
        // One upstream error per failed attempt, no more.
        assert_eq!(errors(&b), dropped as f64, "{how:?}");
        // The access log names the upstream that answered.
        let lines = eventually(WAIT, "six access log lines", || {
            let l = access_lines(&b);
            (l.len() >= 6).then_some(l)
        });
        let good_addr = good.addr.to_string();
        for l in &lines {
            assert_eq!(l["upstream"], good_addr.as_str(), "{how:?}: {l}");
        }

        // With a body (even an idempotent PUT): not sent twice, 502 from the failing upstream.
        for method in ["POST", "PUT"] {
            let (before_bad, before_good) = (bad.count(), good.count());
            let mut statuses = Vec::new();
            while bad.count() == before_bad {
                assert!(
                    statuses.len() < 4,
                    "{how:?}: no {method} reached {statuses:?}"
                );
                let r = request(b.http, method, "app.localhost", "/", &[], b"payload");
                if r.status == 502 {
                    assert_no_internals(&r.text(), &[bad.addr, good.addr]);
                }
                statuses.push(r.status);
            }
            let ok = statuses.iter().filter(|s| **s == 200).count();
            assert_eq!(statuses.len() - ok, 1, "{how:?} {method}: {statuses:?}");
            assert_eq!(
                statuses.last(),
                Some(&502),
                "{how:?} {method}: {statuses:?}"
            );
            assert_eq!(
                good.count() - before_good,
                ok,
                "{how:?}: a {method} with a body was resent"
            );
        }
    }
}

#[test]
fn with_one_upstream_a_dropped_get_is_a_502_sent_once() {
    let bad = Hangup::start(Hang::Close);
    let b = Berth::start(BIN, &route("app.localhost", &[bad.addr], ""));
    let r = get(b.http, "app.localhost", "/");
    assert_eq!(r.status, 502);
    assert_no_internals(&r.text(), &[bad.addr]);
    assert_eq!(
        bad.count(),
        1,
        "the request was sent again to the same upstream"
    );
}

/// An upstream that answers one request on one keep-alive connection, then stops listening
/// (`stopped`), and drops the next request that arrives on that connection: a process killed
/// while berth holds a pooled connection to it.
fn dies_after_one_answer() -> (SocketAddr, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let stopped = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicUsize::new(0));
    let (st, lt) = (stopped.clone(), late.clone());
    thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let head = |r: &mut BufReader<_>| {
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line == "\r\n" {
                    return true;
                }
                line.clear();
            }
            false
        };
        assert!(head(&mut r));
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
            .unwrap();
        drop(l); // new connections are refused from now on
        st.store(true, Ordering::SeqCst);
        if head(&mut r) {
            lt.fetch_add(1, Ordering::SeqCst);
        }
        // Dropped: closes the pooled connection without an answer.
    });
    (addr, stopped, late)
}

#[test]
fn a_stale_pooled_connection_to_a_stopped_upstream_moves_to_another() {
    let (dying, stopped, late) = dies_after_one_answer();
    let good = Upstream::start(Reply::Ok("b"));
    let b = Berth::start(BIN, &route("app.localhost", &[dying, good.addr], ""));
    // One client connection stays on one worker, whose pool keeps the connection to `dying`.
    let mut conn = Conn::open(b.http);
    let mut seen = Vec::new();
    while !seen.contains(&"a".to_string()) {
        assert!(
            seen.len() < 2,
            "round robin never picked the first upstream: {seen:?}"
        );
        let r = conn.get("app.localhost", "/").unwrap();
        assert_eq!(r.status, 200);
        seen.push(r.text());
    }
    eventually(WAIT, "the first upstream to stop listening", || {
        stopped.load(Ordering::SeqCst).then_some(())
    });
    // Its pooled connection fails, and a fresh connect to it is refused: the other answers.
    for i in 0..6 {
        let r = conn.get("app.localhost", "/").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "b"), "request {i}");
    }
    assert_eq!(
        late.load(Ordering::SeqCst),
        1,
        "the pooled connection to the stopped upstream was not tried"
    );
    // New client connections (other workers, no pooled connection) too.
    for i in 0..6 {
        let r = get(b.http, "app.localhost", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "b"), "request {i}");
    }
}

#[test]
fn a_response_timeout_is_not_retried() {
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(3)));
    let good = Upstream::start(Reply::Ok("b"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nupstream_timeout = \"500ms\"\n\n{}",
            route("app.localhost", &[slow.addr, good.addr], "")
        ),
    );
    for front in ["HTTP/1.1", "HTTP/2"] {
        let mut statuses = Vec::new();
        loop {
            assert!(statuses.len() < 4, "{front}: no 504 in {statuses:?}");
            let (before_slow, before_good) = (slow.count(), good.count());
            let t = Instant::now();
            let status = if front == "HTTP/1.1" {
                get(b.http, "app.localhost", "/").status
            } else {
                let (version, status, _) = h2_request(&b, "GET", None);
                assert_eq!(version, "2");
                status
            };
            let took = t.elapsed();
            statuses.push(status);
            if status == 504 {
                assert_eq!(
                    good.count(),
                    before_good,
                    "{front}: a timed-out GET was resent"
                );
                assert_eq!(slow.count(), before_slow + 1, "{front}");
                assert!(
                    took < Duration::from_millis(2500),
                    "{front}: 504 after {took:?}"
                );
                break;
            }
            assert_eq!(status, 200, "{front}: {statuses:?}");
        }
    }
}

#[test]
fn over_h2_a_dropped_get_moves_to_another_upstream_a_post_does_not() {
    for how in [Hang::Close, Hang::Reset] {
        let bad = Hangup::start(how);
        let good = Upstream::start(Reply::Ok("b"));
        let b = Berth::start(BIN, &route("app.localhost", &[bad.addr, good.addr], ""));
        for _ in 0..4 {
            let (version, status, body) = h2_request(&b, "GET", None);
            assert_eq!(
                (version.as_str(), status, body.as_str()),
                ("2", 200, "b"),
                "{how:?}"
            );
        }
        assert!(
            bad.count() >= 1,
            "{how:?}: no GET reached the failing upstream"
        );
        assert_eq!(good.count(), 4, "{how:?}");

        let (before_bad, before_good) = (bad.count(), good.count());
        let mut statuses = Vec::new();
        while bad.count() == before_bad {
            assert!(statuses.len() < 4, "{how:?}: no POST reached {statuses:?}");
            let (_, status, body) = h2_request(&b, "POST", Some("payload"));
            if status == 502 {
                assert_no_internals(&body, &[bad.addr, good.addr]);
            }
            statuses.push(status);
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!(statuses.last(), Some(&502), "{how:?}: {statuses:?}");
        assert_eq!(good.count() - before_good, ok, "{how:?}: a POST was resent");
    }
}
