//! Issue 2, items 8 and 9: hot changes (admin API `GET`/`PUT /api/v1/routes`, SIGHUP) with
//! invalid input rejected and the old routes kept; the JSON access log, Prometheus `/metrics` and
//! graceful shutdown on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};
use test_support::{closed_within, eventually, Berth, Reply, Upstream};

const WAIT: Duration = Duration::from_secs(15);

fn routes_json(b: &Berth) -> Value {
    let r = admin_get(b, "/api/v1/routes");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type").unwrap_or("").contains("json"),
        "{r:?}"
    );
    serde_json::from_slice(&r.body).unwrap()
}

/// berth with no routes in its config file, then `routes` (a JSON list) set through the API.
fn start_with_api_routes(routes: Value) -> Berth {
    let b = Berth::start(BIN, "");
    let r = admin_put(&b, "/api/v1/routes", &routes.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    b
}

#[test]
fn get_routes_returns_the_config_routes_as_json() {
    let a = Upstream::start(Reply::Ok("a"));
    let c = Upstream::start(Reply::Ok("c"));
    let b = Berth::start_with(
        BIN,
        "",
        &[("www/index.html", b"x")],
        &format!(
            "{}{}[[route]]\nhost = \"site.localhost\"\nstatic = \"{{dir}}/www\"\n",
            route(
                "app.localhost",
                &[a.addr, c.addr],
                "path = \"/api/\"\nstrip_prefix = true\nbalance = \"least_conn\"\nmax_body = \"10MiB\"\nhealth = { path = \"/healthz\", interval = \"2s\", timeout = \"1s\" }"
            ),
            route("*.apps.localhost", &[a.addr], "https_redirect = true"),
        ),
    );
    let v = routes_json(&b);
    let list = v.as_array().expect("a JSON array of routes");
    assert_eq!(list.len(), 3, "{v}");
    let api = &list[0];
    assert_eq!(api["host"], "app.localhost");
    assert_eq!(api["path"], "/api/");
    assert_eq!(api["strip_prefix"], true);
    assert_eq!(api["balance"], "least_conn");
    assert_eq!(
        api["upstreams"],
        json!([a.addr.to_string(), c.addr.to_string()])
    );
    assert_eq!(api["health"]["path"], "/healthz");
    assert!(
        api["max_body"].is_string() || api["max_body"].is_number(),
        "{api}"
    );
    assert_eq!(list[1]["host"], "*.apps.localhost");
    assert_eq!(list[1]["https_redirect"], true);
    assert_eq!(list[2]["host"], "site.localhost");
    assert!(
        list[2]["static"]
            .as_str()
            .is_some_and(|s| s.ends_with("www")),
        "{}",
        list[2]
    );
    // The config file defines routes, so it owns them: the API may not replace them (a
    // reload would silently undo it).
    let r = admin_put(&b, "/api/v1/routes", &v.to_string());
    assert_eq!(r.status, 409, "{}", r.text());
    let e: Value = serde_json::from_slice(&r.body).unwrap();
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("config file"),
        "{e}"
    );
    assert!(
        e["hint"].as_str().unwrap_or_default().contains("SIGHUP"),
        "{e}"
    );
    assert_eq!(routes_json(&b), v);

    // Without routes in the file, what GET returns can be PUT back unchanged.
    let b2 = start_with_api_routes(v.clone());
    let v2 = routes_json(&b2);
    assert_eq!(v2, v);
    let r = admin_put(&b2, "/api/v1/routes", &v2.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(routes_json(&b2), v);
}

/// Routes set through the API are kept: a reload and a restart keep them. A config file that
/// later defines routes takes them over (said in the log), and gives them back when its
/// routes go.
#[test]
fn routes_set_through_the_api_survive_a_reload_and_a_restart() {
    let api = Upstream::start(Reply::Ok("api"));
    let file = Upstream::start(Reply::Ok("file"));
    let mut b = start_with_api_routes(json!([
        { "host": "kept.localhost", "upstreams": [api.addr.to_string()] }
    ]));
    assert_eq!(get(b.http, "kept.localhost", "/").text(), "api");
    b.signal("HUP");
    eventually(WAIT, "the reload to be logged", || {
        b.stderr().contains("config reloaded").then_some(())
    });
    assert_eq!(get(b.http, "kept.localhost", "/").text(), "api");
    b.crash_and_restart(BIN);
    assert_eq!(get(b.http, "kept.localhost", "/").text(), "api");
    assert_eq!(routes_json(&b)[0]["host"], "kept.localhost");

    // The file defines a route: it owns them now, and says the API's are not used.
    b.rewrite_config(&route("file.localhost", &[file.addr], ""));
    b.signal("HUP");
    eventually(WAIT, "the file's route after SIGHUP", || {
        (get(b.http, "file.localhost", "/").text() == "file").then_some(())
    });
    assert_eq!(get(b.http, "kept.localhost", "/").status, 404);
    assert!(b.stderr().contains("are not used"), "{}", b.stderr());
    let r = admin_put(&b, "/api/v1/routes", "[]");
    assert_eq!(r.status, 409, "{}", r.text());

    // The file's routes go: the API's are back.
    b.rewrite_config("");
    b.signal("HUP");
    eventually(WAIT, "the API's route back after SIGHUP", || {
        (get(b.http, "kept.localhost", "/").text() == "api").then_some(())
    });
    assert_eq!(get(b.http, "file.localhost", "/").status, 404);
}

#[test]
fn put_routes_replaces_them_and_is_live_at_once() {
    let old = Upstream::start(Reply::Ok("old"));
    let new = Upstream::start(Reply::Ok("new"));
    let b = start_with_api_routes(json!([
        { "host": "old.localhost", "upstreams": [old.addr.to_string()] }
    ]));
    assert_eq!(get(b.http, "old.localhost", "/").text(), "old");

    let body = json!([
        { "host": "new.localhost", "upstreams": [new.addr.to_string()] },
        { "host": "old.localhost", "path": "/moved/", "upstreams": [new.addr.to_string()], "strip_prefix": true }
    ]);
    let r = admin_put(&b, "/api/v1/routes", &body.to_string());
    assert!((200..300).contains(&r.status), "{}", r.text());
    // Live for the very next request: no polling.
    let r = get(b.http, "new.localhost", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "new"));
    assert_eq!(get(b.http, "old.localhost", "/").status, 404);
    let r = get(b.http, "old.localhost", "/moved/x");
    assert_eq!((r.status, r.text().as_str()), (200, "new"));
    assert!(new.last().starts_with("GET /x "), "{}", new.last());
    // Over TLS too: a route added at run time gets a local-CA certificate.
    let (ok, out, err) = curl_https(&b, "new.localhost", "/", &["--http2"]);
    assert!(ok, "{err}");
    assert_eq!(out, "new");
    let v = routes_json(&b);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["host"], "new.localhost");

    // An empty list is valid: nothing is routed.
    let r = admin_put(&b, "/api/v1/routes", "[]");
    assert!((200..300).contains(&r.status), "{}", r.text());
    assert_eq!(get(b.http, "new.localhost", "/").status, 404);
}

#[test]
fn put_with_invalid_json_is_400_and_changes_nothing() {
    let up = Upstream::start(Reply::Ok("up"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let before = routes_json(&b);
    for body in ["{not json", "", "{\"host\": \"a.test\"}", "[1, 2]", "null"] {
        let r = admin_put(&b, "/api/v1/routes", body);
        assert_eq!(r.status, 400, "PUT {body:?}: {}", r.text());
        assert!(
            r.header("content-type").unwrap_or("").contains("json"),
            "{r:?}"
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "PUT {body:?}: {v}"
        );
    }
    assert_eq!(routes_json(&b), before);
    assert_eq!(get(b.http, "app.localhost", "/").text(), "up");
}

#[test]
fn put_with_an_invalid_route_is_refused_with_a_clear_message() {
    let up = Upstream::start(Reply::Ok("up"));
    let b = start_with_api_routes(json!([
        { "host": "app.localhost", "upstreams": [up.addr.to_string()] }
    ]));
    test_support::write_file(&b.path("www/index.html"), b"x");
    let before = routes_json(&b);
    let www = b.path("www").display().to_string();
    let ups = json!([up.addr.to_string()]);
    // (body, words the error must contain)
    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!([{ "host": "bad host!", "upstreams": ups }]),
            &["host"],
        ),
        (json!([{ "host": "a..test", "upstreams": ups }]), &["host"]),
        (
            json!([{ "host": "a.test", "upstreams": ups, "static": www }]),
            &["static", "upstreams"],
        ),
        (json!([{ "host": "a.test" }]), &["upstreams"]),
        (
            json!([{ "host": "a.test", "upstream": ups }]),
            &["upstream"],
        ),
        (
            json!([{ "host": "a.test", "upstreams": ["nope"] }]),
            &["nope"],
        ),
        (
            json!([{ "host": "a.test", "path": "api", "upstreams": ups }]),
            &["path"],
        ),
        (
            json!([{ "host": "a.test", "upstreams": ups, "balance": "random" }]),
            &["random"],
        ),
        (
            json!([
                { "host": "a.test", "upstreams": ups },
                { "host": "a.test", "upstreams": ups }
            ]),
            &["a.test"],
        ),
        // One bad route among good ones: nothing is applied.
        (
            json!([
                { "host": "fine.test", "upstreams": ups },
                { "host": "", "upstreams": ups }
            ]),
            &["host"],
        ),
    ];
    for (body, words) in cases {
        let r = admin_put(&b, "/api/v1/routes", &body.to_string());
        assert!(
            (400..500).contains(&r.status),
            "PUT {body} gave {}: {}",
            r.status,
            r.text()
        );
        let v: Value = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("PUT {body}: error is not JSON: {}", r.text()));
        let msg = v["error"].as_str().unwrap_or_default().to_string();
        for w in words {
            assert!(
                msg.contains(w),
                "PUT {body}: error {msg:?} does not mention {w:?}"
            );
        }
        assert_eq!(routes_json(&b), before, "PUT {body} changed the routes");
        assert_eq!(get(b.http, "app.localhost", "/").text(), "up");
        assert_eq!(get(b.http, "fine.test", "/").status, 404);
    }
}

#[test]
fn sighup_applies_a_rewritten_config() {
    let old = Upstream::start(Reply::Ok("old"));
    let new = Upstream::start(Reply::Ok("new"));
    let b = Berth::start(BIN, &route("old.localhost", &[old.addr], ""));
    assert_eq!(get(b.http, "old.localhost", "/").text(), "old");
    b.rewrite_config(&route("new.localhost", &[new.addr], ""));
    b.signal("HUP");
    eventually(WAIT, "the new route after SIGHUP", || {
        (get(b.http, "new.localhost", "/").text() == "new").then_some(())
    });
    assert_eq!(get(b.http, "old.localhost", "/").status, 404);
    assert_eq!(routes_json(&b)[0]["host"], "new.localhost");
    // Still running after the reload.
    assert!(b.child.id() > 0);
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_routes_and_logs_why() {
    let up = Upstream::start(Reply::Ok("up"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    b.rewrite_config(&format!(
        "{}\n[[route]]\nhost = \"x.localhost\"\nbogus_key = 1\nupstreams = [\"{}\"]\n",
        route("other.localhost", &[up.addr], ""),
        up.addr
    ));
    b.signal("HUP");
    let log = eventually(WAIT, "an error about the bad config in berth's log", || {
        let s = b.stderr();
        s.contains("bogus_key").then_some(s)
    });
    let line = log.lines().find(|l| l.contains("bogus_key")).unwrap();
    assert!(
        line.contains("ERROR") || line.to_lowercase().contains("error"),
        "{line}"
    );
    assert!(
        line.contains(&b.config_path.display().to_string()),
        "the error does not name the file: {line}"
    );
    // The old table is still in force, the new one was not applied even in part.
    assert_eq!(get(b.http, "app.localhost", "/").text(), "up");
    assert_eq!(get(b.http, "other.localhost", "/").status, 404);
    assert_eq!(routes_json(&b)[0]["host"], "app.localhost");
    // berth is still alive and a later good config applies.
    b.rewrite_config(&route("other.localhost", &[up.addr], ""));
    b.signal("HUP");
    eventually(WAIT, "the fixed config to apply", || {
        (get(b.http, "other.localhost", "/").status == 200).then_some(())
    });
}

#[test]
fn route_changes_keep_in_flight_requests_and_websockets_alive() {
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(1)));
    let ws = Upstream::start(Reply::Upgrade);
    let other = Upstream::start(Reply::Ok("other"));
    let b = start_with_api_routes(json!([
        { "host": "slow.localhost", "upstreams": [slow.addr.to_string()] },
        { "host": "ws.localhost", "upstreams": [ws.addr.to_string()] }
    ]));
    // An open WebSocket...
    let mut w = Conn::open(b.http);
    w.s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    assert_eq!(w.read_response(true).unwrap().status, 101);
    w.s.write_all(b"before").unwrap();
    assert_eq!(w.read_exact_n(6), b"before");
    // ...and a slow request in flight...
    let http = b.http;
    let inflight = thread::spawn(move || get(http, "slow.localhost", "/"));
    eventually(WAIT, "the slow request to reach its upstream", || {
        (slow.count() == 1).then_some(())
    });
    // ...survive a PUT and a SIGHUP that both remove their routes.
    let r = admin_put(
        &b,
        "/api/v1/routes",
        &json!([{ "host": "other.localhost", "upstreams": [other.addr.to_string()] }]).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    b.rewrite_config(&route("other.localhost", &[other.addr], "path = \"/x/\""));
    b.signal("HUP");
    eventually(WAIT, "the SIGHUP to apply", || {
        (routes_json(&b)[0]["path"] == "/x/").then_some(())
    });
    let r = inflight.join().unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    w.s.write_all(b"after").unwrap();
    assert_eq!(
        w.read_exact_n(5),
        b"after",
        "the WebSocket did not survive the reload"
    );
}

fn access_lines(b: &Berth) -> Vec<Value> {
    std::fs::read_to_string(b.path("access.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn access_log_has_json_lines_with_the_request_fields() {
    let up = Upstream::start(Reply::Ok("hello"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let r = get_with(
        b.http,
        "app.localhost",
        "/some/path?q=1",
        &[("X-Request-Id", "trace-abc-123")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(b.http, "nowhere.localhost", "/missing").status, 404);
    let (ok, _, err) = curl_https(&b, "app.localhost", "/h2", &["--http2", "-X", "DELETE"]);
    assert!(ok, "{err}");

    let lines = eventually(WAIT, "three access log lines", || {
        let l = access_lines(&b);
        (l.len() >= 3).then_some(l)
    });
    let find = |pred: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|v| pred(v))
            .unwrap_or_else(|| panic!("no such line in {lines:?}"))
            .clone()
    };
    let ok_line = find(&|v| v["request_id"] == "trace-abc-123");
    for key in [
        "time",
        "host",
        "method",
        "path",
        "status",
        "bytes",
        "upstream",
        "request_id",
    ] {
        assert!(ok_line.get(key).is_some(), "no {key:?} in {ok_line}");
    }
    let duration = ok_line
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("duration"))
        .map(|(_, v)| v.clone());
    assert!(
        duration
            .as_ref()
            .is_some_and(|d| d.as_f64().is_some_and(|x| x >= 0.0)),
        "no numeric duration in {ok_line}"
    );
    assert_eq!(ok_line["host"], "app.localhost");
    assert_eq!(ok_line["method"], "GET");
    assert!(
        ok_line["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/some/path")),
        "{ok_line}"
    );
    assert_eq!(ok_line["status"], 200);
    assert_eq!(
        ok_line["bytes"], 5,
        "bytes is the response body size: {ok_line}"
    );
    assert_eq!(ok_line["upstream"], up.addr.to_string());
    let time = ok_line["time"].as_str().unwrap();
    assert!(
        time.len() >= 19 && time.as_bytes()[4] == b'-' && time.contains('T'),
        "time {time}"
    );

    let nf = find(&|v| v["status"] == 404);
    assert_eq!(nf["host"], "nowhere.localhost");
    assert_eq!(nf["path"], "/missing");
    assert!(nf["upstream"].is_null(), "{nf}");
    assert!(
        nf["request_id"].as_str().is_some_and(|s| !s.is_empty()),
        "a generated request id is logged: {nf}"
    );

    let h2 = find(&|v| v["method"] == "DELETE");
    assert_eq!(h2["path"], "/h2");
    assert_eq!(h2["status"], 200);
}

#[test]
fn metrics_cover_requests_latency_upstream_errors_and_connections() {
    let up = Upstream::start(Reply::Ok("hello"));
    let dead = dead_addr();
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route("app.localhost", &[up.addr], ""),
            route("dead.localhost", &[dead], "")
        ),
    );
    for _ in 0..3 {
        assert_eq!(get(b.http, "app.localhost", "/").status, 200);
    }
    assert_eq!(get(b.http, "dead.localhost", "/").status, 502);
    assert_eq!(get(b.http, "nowhere.localhost", "/").status, 404);

    let r = admin_get(&b, "/metrics");
    assert_eq!(r.status, 200);
    let m = r.text();
    let ok = metric(&m, "berth_requests_total", &["app.localhost", "2xx"]).unwrap_or(0.0);
    assert!(
        ok >= 3.0,
        "berth_requests_total for app.localhost 2xx = {ok}: {m}"
    );
    let bad = metric(&m, "berth_requests_total", &["dead.localhost", "5xx"]).unwrap_or(0.0);
    assert!(
        bad >= 1.0,
        "berth_requests_total for dead.localhost 5xx = {bad}: {m}"
    );
    assert_eq!(
        metric(&m, "berth_requests_total", &["dead.localhost", "2xx"]).unwrap_or(0.0),
        0.0
    );
    // Latency histogram with buckets, count and sum per route.
    assert!(
        m.contains("# TYPE berth_request_duration_seconds histogram"),
        "{m}"
    );
    let count = metric(
        &m,
        "berth_request_duration_seconds_count",
        &["app.localhost"],
    )
    .unwrap_or(0.0);
    assert!(count >= 3.0, "{m}");
    let inf = metric(
        &m,
        "berth_request_duration_seconds_bucket",
        &["app.localhost", "le=\"+Inf\""],
    )
    .unwrap_or(0.0);
    assert!(inf >= 3.0, "+Inf bucket: {m}");
    assert!(metric(&m, "berth_request_duration_seconds_sum", &["app.localhost"]).is_some());
    assert!(
        metric(&m, "berth_upstream_errors_total", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "berth_open_connections", &[]).is_some(), "{m}");

    // Open connections: three idle keep-alive clients count, then stop counting.
    let mut held: Vec<Conn> = (0..3).map(|_| Conn::open(b.http)).collect();
    for c in &mut held {
        assert_eq!(c.get("app.localhost", "/").unwrap().status, 200);
    }
    eventually(WAIT, "berth_open_connections >= 3", || {
        let m = admin_get(&b, "/metrics").text();
        (metric(&m, "berth_open_connections", &[]).unwrap_or(0.0) >= 3.0).then_some(())
    });
    drop(held);
    eventually(WAIT, "berth_open_connections back to 0", || {
        let m = admin_get(&b, "/metrics").text();
        (metric(&m, "berth_open_connections", &[]).unwrap_or(-1.0) == 0.0).then_some(())
    });
}

/// The latency histogram as Prometheus reads it: a known mix of fast and slow requests lands in
/// the right buckets, buckets never decrease, and `+Inf` equals `_count`.
#[test]
fn the_latency_histogram_parses_and_counts_each_request_once() {
    let fast = Upstream::start(Reply::Ok("fast"));
    let slow = Upstream::start(Reply::Slow(Duration::from_millis(300)));
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route("fast.localhost", &[fast.addr], ""),
            route("slow.localhost", &[slow.addr], "")
        ),
    );
    for _ in 0..5 {
        assert_eq!(get(b.http, "fast.localhost", "/").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(b.http, "slow.localhost", "/").status, 200);
    }
    let text = admin_get(&b, "/metrics").text();
    let python = ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", "import prometheus_client"])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("needs python3 with prometheus_client (Debian: python3-prometheus-client)");
    let out = test_support::run_with_input(
        std::process::Command::new(python).arg(format!(
            "{}/tests/scripts/histograms.py",
            env!("CARGO_MANIFEST_DIR")
        )),
        text.as_bytes(),
    );
    assert!(
        out.status.success(),
        "the exposition does not parse:\n{text}"
    );
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    let series = |route: &str| -> &Value {
        all.as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.starts_with("berth_request_duration_seconds") && k.contains(route))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no latency series for {route}: {all:#}"))
    };
    for (route, n, slow_ones) in [("fast.localhost", 5.0, 0.0), ("slow.localhost", 2.0, 2.0)] {
        let h = series(route);
        let buckets: Vec<(f64, f64)> = h["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                let le = b[0].as_str().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, b[1].as_f64().unwrap())
            })
            .collect();
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{route}: buckets must rise: {buckets:?}"
        );
        let inf = buckets.last().unwrap();
        assert_eq!(inf.0, f64::INFINITY, "{route}: {buckets:?}");
        assert_eq!(
            inf.1,
            h["count"].as_f64().unwrap(),
            "{route}: +Inf != _count"
        );
        assert_eq!(inf.1, n, "{route}: each request counted once: {buckets:?}");
        // Requests of 300 ms and more are above the 0.25 s bucket and within 2.5 s.
        let at = |le: f64| buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!(at(0.25), n - slow_ones, "{route}: {buckets:?}");
        assert_eq!(at(2.5), n, "{route}: {buckets:?}");
        let sum = h["sum"].as_f64().unwrap();
        assert!(
            sum >= 0.3 * slow_ones && sum < 2.5 * n,
            "{route}: sum {sum}"
        );
    }
}

/// Wait for the process to exit; its status, or `None` after `timeout`.
fn wait_exit(b: &mut Berth, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(s) = b.child.try_wait().unwrap() {
            return Some(s);
        }
        thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(1)));
    let mut b = Berth::start(BIN, &route("slow.localhost", &[slow.addr], ""));
    let http = b.http;
    let inflight = thread::spawn(move || get(http, "slow.localhost", "/"));
    eventually(WAIT, "the slow request to reach its upstream", || {
        (slow.count() == 1).then_some(())
    });
    let t = Instant::now();
    b.signal("TERM");
    // New connections are refused while the in-flight request is still running.
    eventually(
        Duration::from_secs(5),
        "new connections to be refused",
        || TcpStream::connect(http).is_err().then_some(()),
    );
    assert!(
        !inflight.is_finished(),
        "the listener closed only after the in-flight request ended"
    );
    let r = inflight.join().unwrap();
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "slow"),
        "the in-flight request was cut off"
    );
    let status = wait_exit(&mut b, Duration::from_secs(9))
        .expect("berth did not exit within the grace period");
    assert!(status.success(), "berth exited with {status}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        t.elapsed()
    );
}

#[test]
fn sigterm_closes_idle_keepalive_connections_without_waiting_for_the_grace_period() {
    let up = Upstream::start(Reply::Ok("x"));
    let mut b = Berth::start(
        BIN,
        &format!(
            "[limits]\nshutdown_grace = \"30s\"\n\n{}",
            route("app.localhost", &[up.addr], "")
        ),
    );
    let mut idle = Conn::open(b.http);
    assert_eq!(idle.get("app.localhost", "/").unwrap().status, 200);
    let t = Instant::now();
    b.signal("TERM");
    assert!(
        closed_within(&mut idle.s, Duration::from_secs(5)),
        "an idle keep-alive connection stayed open after SIGTERM"
    );
    let status = wait_exit(&mut b, Duration::from_secs(5))
        .expect("berth waited for an idle keep-alive connection instead of exiting");
    assert!(status.success(), "berth exited with {status}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn admin_api_needs_a_valid_token_except_for_health() {
    // A page that rebinds a name to 127.0.0.1 cannot know the token, whatever its Host.
    let b = Berth::start(BIN, "");
    let bearer = format!("Bearer {}", b.token);
    for (path, auth, want) in [
        ("/api/v1/routes", None, 401),
        ("/api/v1/routes", Some("Bearer berth_0000"), 401),
        ("/api/v1/routes", Some("Basic YWRtaW46YWRtaW4="), 401),
        ("/metrics", None, 401),
        ("/api/v1/apps", None, 401),
        ("/api/v1/openapi.json", None, 401),
        ("/api/v1/health", None, 200),
        ("/api/v1/routes", Some(bearer.as_str()), 200),
        ("/metrics", Some(bearer.as_str()), 200),
        ("/api/v1/no-such-thing", Some(bearer.as_str()), 404),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = get_with(b.admin, "evil.example", path, &headers);
        assert_eq!(r.status, want, "{path} with {auth:?}: {}", r.text());
        if want == 401 {
            assert!(r.text().contains("\"error\""), "JSON error: {}", r.text());
        }
    }
    // The token file is private to berth's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(b.path("data/admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Its path is printed, never the secret (berth's output may end up in shared logs).
    assert!(!b.stderr().contains(&b.token));
    assert!(b.stderr().contains("created the admin API token in"));
}

#[test]
fn refused_requests_are_logged_and_counted() {
    let up = Upstream::start(Reply::Ok("hello"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    // Ambiguous framing: refused before routing (battery S1).
    let smuggle = b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let out = test_support::raw(b.http, smuggle, Duration::from_secs(5));
    assert_eq!(test_support::status(&out), 400);
    let m = eventually(WAIT, "the rejection to be counted", || {
        let m = admin_get(&b, "/metrics").text();
        (metric(&m, "berth_rejected_requests_total", &[]).unwrap_or(0.0) >= 1.0).then_some(m)
    });
    assert!(m.contains("berth_rejected_requests_total"), "{m}");
    eventually(WAIT, "an access log line for the 400", || {
        access_lines(&b)
            .iter()
            .any(|v| v["status"] == 400)
            .then_some(())
    });
}

#[test]
fn sighup_with_bad_routes_keeps_the_old_certificates_too() {
    let (cert_a, key_a) = self_signed("files.test");
    let (cert_b, key_b) = self_signed("files.test");
    let up = Upstream::start(Reply::Ok("up"));
    let tls = |which: &str| {
        format!("[tls]\ncerts = [{{ cert = \"{{dir}}/{which}.pem\", key = \"{{dir}}/{which}.key\" }}]\n")
    };
    let b = Berth::start_with(
        BIN,
        "",
        &[
            ("a.pem", &cert_a),
            ("a.key", &key_a),
            ("b.pem", &cert_b),
            ("b.key", &key_b),
        ],
        &format!("{}{}", tls("a"), route("files.test", &[up.addr], "")),
    );
    let serial = |text: &str| {
        text.lines()
            .skip_while(|l| !l.contains("Serial Number"))
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let before = serial(&presented_cert(&b, "files.test"));
    assert!(!before.is_empty());
    // New certificate, but a route whose static root does not exist: nothing may change.
    b.rewrite_config(&format!(
        "{}{}[[route]]\nhost = \"site.test\"\nstatic = \"{{dir}}/missing\"\n",
        tls("b"),
        route("files.test", &[up.addr], "")
    ));
    b.signal("HUP");
    eventually(WAIT, "the refused reload in berth's log", || {
        b.stderr().contains("config reload failed").then_some(())
    });
    assert_eq!(
        serial(&presented_cert(&b, "files.test")),
        before,
        "certificates changed half-way"
    );
}
