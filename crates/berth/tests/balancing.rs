//! Issue 2, item 6: load balancing and health — round robin, least connections, active health
//! checks, passive ejection, one retry of idempotent requests on connect failure, 502/504 and
//! error bodies that name no internal address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use test_support::{eventually, Berth, Reply, Upstream};

const WAIT: Duration = Duration::from_secs(15);

fn post(b: &Berth, host: &str) -> Resp {
    request(b.http, "POST", host, "/submit", &[], b"payload")
}

#[test]
fn round_robin_spreads_requests_evenly() {
    let a = Upstream::start(Reply::Ok("a"));
    let c = Upstream::start(Reply::Ok("b"));
    let b = Berth::start(BIN, &route("app.localhost", &[a.addr, c.addr], ""));
    // On one keep-alive connection, and on fresh connections.
    let mut conn = Conn::open(b.http);
    let mut seq = Vec::new();
    for _ in 0..20 {
        seq.push(conn.get("app.localhost", "/").unwrap().text());
    }
    for i in 0..20 {
        assert_eq!(get(b.http, "app.localhost", &format!("/{i}")).status, 200);
    }
    let (na, nb) = (a.count(), c.count());
    assert_eq!(na + nb, 40);
    assert!(
        na.abs_diff(nb) <= 2,
        "round robin sent {na} requests to one upstream and {nb} to the other"
    );
    // Consecutive requests alternate.
    for w in seq.windows(2) {
        assert_ne!(
            w[0], w[1],
            "round robin picked the same upstream twice in a row: {seq:?}"
        );
    }
}

#[test]
fn least_conn_prefers_the_idle_upstream() {
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(3)));
    let fast = Upstream::start(Reply::Ok("fast"));
    let b = Berth::start(
        BIN,
        &route(
            "app.localhost",
            &[slow.addr, fast.addr],
            "balance = \"least_conn\"",
        ),
    );
    // Occupy the slow upstream with one in-flight request (send until one lands there).
    let http = b.http;
    let mut background = Vec::new();
    eventually(WAIT, "a request in flight on the slow upstream", || {
        if slow.count() >= 1 {
            return Some(());
        }
        if background.len() < 4 {
            let before = fast.count();
            background.push(thread::spawn(move || get(http, "app.localhost", "/occupy")));
            // Wait until this one was answered by `fast` or reached `slow`.
            eventually(WAIT, "the request to land", || {
                (fast.count() > before || slow.count() >= 1).then_some(())
            });
        }
        None
    });
    // While it is busy, every new request goes to the idle upstream.
    let t = Instant::now();
    for _ in 0..10 {
        let r = get(b.http, "app.localhost", "/");
        assert_eq!((r.status, r.text().as_str()), (200, "fast"));
    }
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "requests waited on the busy upstream"
    );
    assert_eq!(
        slow.count(),
        1,
        "least_conn sent requests to the busy upstream"
    );
    for h in background {
        assert_eq!(h.join().unwrap().status, 200);
    }
}

#[test]
fn active_health_checks_take_an_upstream_out_and_put_it_back() {
    let good = MiniServer::start(|_, _| (200, b"good".to_vec()));
    let healthy = Arc::new(AtomicBool::new(false));
    let flaky = MiniServer::toggle("flaky", healthy.clone());
    let b = Berth::start(
        BIN,
        &route(
            "app.localhost",
            &[good.addr, flaky.addr],
            "health = { path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\" }",
        ),
    );
    // The checker probes /healthz on both.
    eventually(WAIT, "health checks on both upstreams", || {
        (good.count_starting("GET /healthz ") > 0 && flaky.count_starting("GET /healthz ") > 0)
            .then_some(())
    });
    // The failing one is taken out: 10 requests in a row all reach the good one.
    eventually(WAIT, "the failing upstream to be taken out", || {
        (0..10)
            .all(|_| get(b.http, "app.localhost", "/").text() == "good")
            .then_some(())
    });
    let before = flaky.count_starting("GET / ");
    for _ in 0..10 {
        assert_eq!(get(b.http, "app.localhost", "/").text(), "good");
    }
    assert_eq!(
        flaky.count_starting("GET / "),
        before,
        "requests still reached the unhealthy upstream"
    );
    // It recovers and gets traffic again.
    healthy.store(true, Ordering::Relaxed);
    eventually(WAIT, "the recovered upstream to get traffic again", || {
        (0..4)
            .any(|_| get(b.http, "app.localhost", "/").text() == "flaky")
            .then_some(())
    });
    // A health check that times out also counts as failing.
    let hang = MiniServer::start(|head, _| {
        if head.starts_with("GET /healthz ") {
            thread::sleep(Duration::from_millis(600));
        }
        (200, b"hang".to_vec())
    });
    let good2 = MiniServer::start(|_, _| (200, b"good2".to_vec()));
    b.rewrite_config(&route(
        "slowcheck.localhost",
        &[good2.addr, hang.addr],
        "health = { path = \"/healthz\", interval = \"200ms\", timeout = \"100ms\" }",
    ));
    b.signal("HUP");
    eventually(
        WAIT,
        "the upstream with a slow health check to be taken out",
        || {
            (0..10)
                .all(|_| get(b.http, "slowcheck.localhost", "/").text() == "good2")
                .then_some(())
        },
    );
}

#[test]
fn connect_failures_eject_an_upstream_passively() {
    let good = Upstream::start(Reply::Ok("good"));
    let dead = dead_addr();
    let b = Berth::start(BIN, &route("app.localhost", &[dead, good.addr], ""));
    // POSTs are not retried, so a POST picked for the dead upstream gets 502 — until berth has
    // seen enough connect failures and skips it.
    eventually(WAIT, "the dead upstream to be ejected", || {
        (0..10)
            .all(|_| post(&b, "app.localhost").status == 200)
            .then_some(())
    });
    let m = admin_get(&b, "/metrics").text();
    let errors = metric(&m, "berth_upstream_errors_total", &[]).unwrap_or(0.0);
    assert!(errors >= 1.0, "connect failures not counted: {m}");
    // While ejected, requests do not even try it.
    for _ in 0..20 {
        assert_eq!(get(b.http, "app.localhost", "/").status, 200);
    }
    let m = admin_get(&b, "/metrics").text();
    let after = metric(&m, "berth_upstream_errors_total", &[]).unwrap_or(0.0);
    assert!(
        after - errors <= 1.0,
        "berth kept connecting to the ejected upstream ({} more connect errors)",
        after - errors
    );
}

#[test]
fn idempotent_requests_are_retried_once_on_another_upstream() {
    let good = Upstream::start(Reply::Ok("good"));
    let dead = dead_addr();
    let b = Berth::start(BIN, &route("app.localhost", &[dead, good.addr], ""));
    for method in [
        "GET", "HEAD", "GET", "PUT", "DELETE", "OPTIONS", "GET", "GET",
    ] {
        let r = request(b.http, method, "app.localhost", "/", &[], b"");
        assert_eq!(
            r.status, 200,
            "{method} whose upstream connect failed was not retried"
        );
    }
    let m = admin_get(&b, "/metrics").text();
    assert!(
        metric(&m, "berth_upstream_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "no connect failure happened, so nothing was retried: {m}"
    );
}

#[test]
fn a_post_whose_upstream_connect_fails_is_not_retried() {
    let good = Upstream::start(Reply::Ok("good"));
    let dead = dead_addr();
    let b = Berth::start(BIN, &route("app.localhost", &[dead, good.addr], ""));
    // Consecutive POSTs on one connection: round robin sends one of the first two to the dead
    // upstream, which must answer 502 rather than resend the body elsewhere.
    let mut statuses = Vec::new();
    let mut conn = Conn::open(b.http);
    for _ in 0..4 {
        let req =
            b"POST /submit HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 7\r\n\r\npayload";
        let r = match conn.send(req) {
            Some(r) => r,
            None => {
                conn = Conn::open(b.http);
                conn.send(req).unwrap()
            }
        };
        if r.status == 502 {
            assert_no_internals(&r.text(), &[dead, good.addr]);
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.contains(&502),
        "no POST answered 502: {statuses:?}"
    );
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(
        good.count(),
        ok,
        "a POST was resent to the other upstream: {statuses:?}"
    );
}

#[test]
fn all_upstreams_down_gives_502() {
    let (d1, d2) = (dead_addr(), dead_addr());
    let b = Berth::start(BIN, &route("app.localhost", &[d1, d2], ""));
    for _ in 0..6 {
        let r = get(b.http, "app.localhost", "/");
        assert_eq!(r.status, 502);
        assert_no_internals(&r.text(), &[d1, d2]);
    }
    let r = post(&b, "app.localhost");
    assert_eq!(r.status, 502);
    // Over h2 as well.
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http2", "-w", "|%{http_code}"],
    );
    assert!(ok, "{err}");
    assert!(out.ends_with("|502"), "{out}");
    assert_no_internals(&out, &[d1, d2]);
}

#[test]
fn upstream_connect_failure_gives_502() {
    let dead = dead_addr();
    let b = Berth::start(BIN, &route("app.localhost", &[dead], ""));
    let r = get(b.http, "app.localhost", "/");
    assert_eq!(r.status, 502);
    assert!(!r.body.is_empty());
    assert_no_internals(&r.text(), &[dead]);
    let m = admin_get(&b, "/metrics").text();
    assert!(
        metric(&m, "berth_upstream_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

#[test]
fn upstream_response_timeout_gives_504() {
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(3)));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nupstream_timeout = \"500ms\"\n\n{}",
            route("app.localhost", &[slow.addr], "")
        ),
    );
    let t = Instant::now();
    let r = get(b.http, "app.localhost", "/");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took < Duration::from_millis(2500),
        "504 came after {took:?}, not after the 500 ms upstream timeout"
    );
    assert!(
        took >= Duration::from_millis(450),
        "504 after only {took:?}"
    );
    assert_no_internals(&r.text(), &[slow.addr]);
    // h2.
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http2", "-w", "|%{http_code}"],
    );
    assert!(ok, "{err}");
    assert!(out.ends_with("|504"), "{out}");
    assert_no_internals(&out, &[slow.addr]);
    let m = admin_get(&b, "/metrics").text();
    assert!(
        metric(&m, "berth_upstream_errors_total", &["timeout"]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

#[test]
fn a_bad_upstream_response_gives_502_naming_nothing() {
    let bad = Upstream::start(Reply::Raw(b"this is not HTTP\r\n\r\n"));
    let b = Berth::start(BIN, &route("app.localhost", &[bad.addr], ""));
    let r = get(b.http, "app.localhost", "/");
    assert_eq!(r.status, 502);
    assert_no_internals(&r.text(), &[bad.addr]);
}

#[test]
fn when_every_upstream_fails_its_health_check_requests_are_still_tried() {
    // Health checks can be wrong (a busy app misses them); a request tried anyway beats a
    // certain 502 (Envoy's panic mode). The upstream answers / but fails /healthz.
    let up = MiniServer::start(|head, _| {
        if head.starts_with("GET /healthz ") {
            (500, b"sick".to_vec())
        } else {
            (200, b"served".to_vec())
        }
    });
    let b = Berth::start(
        BIN,
        &route(
            "app.localhost",
            &[up.addr],
            "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\" }",
        ),
    );
    // Taken out after three failed checks in a row...
    eventually(WAIT, "the upstream to be marked down", || {
        b.stderr()
            .contains("upstream failed its health check")
            .then_some(())
    });
    assert!(up.count_starting("GET /healthz ") >= 3);
    // ...and still tried, since nothing else is up.
    let r = get(b.http, "app.localhost", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "served"));
}
