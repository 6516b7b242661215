//! Issue 4 item 6: outgoing notifications. Webhook targets get JSON build and deploy events,
//! signed with HMAC-SHA256 per target, in event order, retried with backoff (the same delivery
//! id each time); a target of another app gets nothing. Managed through the API and the CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use test_support::{eventually, write_file, Berth};

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A webhook receiver on an ephemeral port: answers 500 to its first `fail_first` requests and
/// 200 after, and records each one.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(fail_first: usize) -> Receiver {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let g = got.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 {
                        break;
                    }
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = {
                    let mut got = g.lock().unwrap();
                    let status = if got.len() < fail_first { 500 } else { 200 };
                    got.push(Received {
                        method,
                        path,
                        headers,
                        body,
                        status,
                    });
                    status
                };
                let _ = w.write_all(
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        });
        Receiver { addr, got }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// The accepted (2xx) deliveries about deploy `id`, in the order they arrived.
    fn delivered(&self, id: i64) -> Vec<Received> {
        self.got()
            .into_iter()
            .filter(|r| r.status == 200 && r.json()["build"]["id"] == id)
            .collect()
    }

    /// Wait until the deliveries about deploy `id` include `last`; their events in order.
    fn wait_events(&self, id: i64, last: &str) -> Vec<String> {
        eventually(T, &format!("a {last} delivery for deploy {id}"), || {
            let events = events(&self.delivered(id));
            events.iter().any(|e| e == last).then_some(events)
        })
    }
}

fn events(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.header("x-berth-event").to_string())
        .collect()
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, computed here.
fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// berth with a short notification backoff (50 ms), through a wrapper script that sets
/// `BERTH_NOTIFY_BACKOFF_MS` (the harness passes no environment of its own).
fn start_berth(dir: &Path) -> Berth {
    use std::os::unix::fs::PermissionsExt;
    let wrapper = dir.join("berth-fast-retries");
    write_file(
        &wrapper,
        format!("#!/bin/sh\nBERTH_NOTIFY_BACKOFF_MS=50 exec '{BIN}' \"$@\"\n").as_bytes(),
    );
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    Berth::start_with(wrapper.to_str().unwrap(), LOCAL_RECEIVERS, &[], "")
}

/// The receivers listen on loopback, which berth refuses unless allowed.
const LOCAL_RECEIVERS: &str = "allow_private_hosts = [\"127.0.0.1\"]";

/// A static site with a build command (so the deploy has a build step).
fn site(b: &Berth, name: &str, build: &str) -> Vec<u8> {
    let d = tmpdir(b, name);
    write_file(&d.join("index.html"), b"<h1>hi</h1>\n");
    write_file(
        &d.join("berth.toml"),
        format!("[build]\ncommand = \"{build}\"\n").as_bytes(),
    );
    targz(&d)
}

#[test]
fn deploy_events_are_signed_ordered_and_retried() {
    let wrap = tempfile::tempdir().unwrap();
    let b = start_berth(wrap.path());
    create_app(&b, "site");
    create_app(&b, "other");
    // A: the app's target, through the CLI; its first delivery is refused once.
    let a = Receiver::start(1);
    let out = cli(&b, &["notify:add", &a.url("/hooks/a"), "-a", "site"]);
    assert!(out.status.success(), "{}", text(&out));
    let secret_a = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(secret_a.len(), 64, "{}", text(&out));
    assert!(secret_a.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("X-Berth-Signature-256"),
        "says how receivers verify: {}",
        text(&out)
    );
    // B: another app's target (gets nothing); C: every app's.
    let other = Receiver::start(0);
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/notifications",
        &format!(r#"{{"url":"{}","app":"other"}}"#, other.url("/b")),
    );
    assert_eq!(st, 201, "{v}");
    let all = Receiver::start(0);
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/notifications",
        &format!(r#"{{"url":"{}"}}"#, all.url("/c")),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["app"], Value::Null, "{v}");
    let secret_c = v["secret"].as_str().unwrap().to_string();
    // D: a receiver that always fails.
    let dead = Receiver::start(usize::MAX);
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/notifications",
        &format!(r#"{{"url":"{}","app":"site"}}"#, dead.url("/d")),
    );
    assert_eq!(st, 201, "{v}");
    assert_ne!(secret_a, secret_c);

    // A deploy that succeeds.
    let id = deploy_ok(&b, &b.token, "site", &site(&b, "ok", "echo built"));
    let want = [
        "build.started",
        "build.succeeded",
        "deploy.started",
        "deploy.succeeded",
    ];
    assert_eq!(a.wait_events(id, "deploy.succeeded"), want);
    assert_eq!(all.wait_events(id, "deploy.succeeded"), want);

    // The refused first delivery came again with the same id and body, and then nothing was
    // sent twice.
    let got = a.got();
    assert_eq!(got[0].status, 500);
    assert_eq!(got[1].status, 200);
    assert_eq!(
        got[0].header("x-berth-delivery"),
        got[1].header("x-berth-delivery")
    );
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got.len(), 5, "{:?}", events(&got));
    let mut ids: Vec<&str> = got[1..]
        .iter()
        .map(|r| r.header("x-berth-delivery"))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "one delivery id per event");

    // Every request: signed with its target's secret, headers agree with the body.
    for (recv, secret) in [(&a, &secret_a), (&all, &secret_c)] {
        for r in recv.got() {
            assert_eq!(r.method, "POST");
            assert_eq!(
                r.header("x-berth-signature-256"),
                signature(secret, &r.body),
                "signature of {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_ne!(
                r.header("x-berth-signature-256"),
                signature("wrong", &r.body)
            );
            assert!(r.header("content-type").starts_with("application/json"));
            assert!(
                r.header("user-agent").starts_with("berth/"),
                "{}",
                r.header("user-agent")
            );
            let v = r.json();
            assert_eq!(v["event"], r.header("x-berth-event"), "{v}");
            assert_eq!(v["delivery"], r.header("x-berth-delivery"), "{v}");
            assert_eq!(v["app"], "site", "{v}");
            assert!(v["url"].as_str().unwrap().contains("site.localhost"), "{v}");
            let at = v["at"].as_str().unwrap();
            assert!(
                at.len() == 24 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
                "{at}"
            );
            let build = &v["build"];
            assert_eq!(build["id"], id, "{v}");
            assert_eq!(build["kind"], "build", "{v}");
            assert_eq!(build["trigger"], "upload", "{v}");
            assert_eq!(build["release"], 1, "{v}");
            for k in [
                "status", "step", "reason", "sha", "branch", "author", "message",
            ] {
                assert!(build.get(k).is_some(), "no {k}: {v}");
            }
        }
    }
    assert_eq!(a.got()[0].path, "/hooks/a");
    let last = a.delivered(id).last().unwrap().json();
    assert_eq!(last["build"]["status"], "succeeded", "{last}");

    // A deploy that fails: its failure event carries the reason.
    let (st, d) = upload_file(&b, "site", &site(&b, "broken", "echo broken; exit 3"));
    assert_eq!(st, 202, "{d}");
    let failed = d["id"].as_i64().unwrap();
    let fin = wait_deploy(&b, "site", failed);
    assert_eq!(fin["status"], "failed", "{fin}");
    let ev = eventually(T, "a failure event", || {
        let got = a.delivered(failed);
        got.iter()
            .find(|r| r.header("x-berth-event").ends_with(".failed"))
            .cloned()
            .map(|r| (events(&got), r))
    });
    let (seen, failure) = ev;
    assert_eq!(seen[0], "build.started", "{seen:?}");
    assert!(!seen.iter().any(|e| e.ends_with(".succeeded")), "{seen:?}");
    let v = failure.json();
    let reason = v["build"]["reason"].as_str().unwrap_or_default();
    assert!(
        !reason.is_empty(),
        "a failure event without the reason: {v}"
    );
    assert_eq!(v["build"]["status"], "failed", "{v}");
    assert_eq!(
        failure.header("x-berth-signature-256"),
        signature(&secret_a, &failure.body)
    );
    all.wait_events(failed, failure.header("x-berth-event"));

    // The failing receiver got each delivery 6 times (the queue moves on only after that).
    let got = eventually(T, "the dead target's second delivery", || {
        let got = dead.got();
        (got.len() > 6).then_some(got)
    });
    let first = got[0].header("x-berth-delivery");
    assert!(got[..6]
        .iter()
        .all(|r| r.header("x-berth-delivery") == first));
    assert_ne!(got[6].header("x-berth-delivery"), first);
    assert_eq!(got[0].header("x-berth-event"), "build.started");
    assert_eq!(got[6].header("x-berth-event"), "build.succeeded");

    // The other app's target got nothing of all this.
    assert!(other.got().is_empty(), "{:?}", events(&other.got()));
}

#[test]
fn targets_are_managed_through_the_api_and_the_cli() {
    let b = Berth::start_with(BIN, LOCAL_RECEIVERS, &[], "");
    create_app(&b, "site");
    create_app(&b, "other");

    // Bad URLs are refused with a hint.
    for bad in [
        "example.com/hook",
        "ftp://example.com/x",
        "http://",
        "https://exa mple.com/",
        "",
    ] {
        let body = serde_json::json!({ "url": bad, "app": "site" }).to_string();
        let (st, v) = api(&b, "POST", "/api/v1/notifications", &body);
        assert_eq!(st, 422, "{bad:?}: {v}");
        assert!(
            v["hint"].as_str().is_some_and(|h| h.contains("https://")),
            "{v}"
        );
    }
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/notifications",
        r#"{"url":"https://example.com/h","app":"nope"}"#,
    );
    assert_eq!(st, 404, "{v}");
    let (st, v) = api(&b, "POST", "/api/v1/notifications", r#"{"app":"site"}"#);
    assert_eq!(st, 400, "{v}");

    // A deploy token may add a target for its app, not for another or for every app.
    let (st, t) = api(
        &b,
        "POST",
        "/api/v1/tokens",
        r#"{"name":"ci","scope":"deploy","apps":["site"]}"#,
    );
    assert_eq!(st, 201, "{t}");
    let token = t["token"].as_str().unwrap();
    let post = |body: &str| {
        api_as(
            &b,
            token,
            "POST",
            "/api/v1/notifications",
            "application/json",
            body.as_bytes(),
        )
    };
    let (st, mine) = post(r#"{"url":"https://example.com/site","app":"site"}"#);
    assert_eq!(st, 201, "{mine}");
    assert_eq!(mine["app"], "site");
    assert_eq!(mine["secret"].as_str().unwrap().len(), 64, "{mine}");
    let (st, v) = post(r#"{"url":"https://example.com/x","app":"other"}"#);
    assert_eq!(st, 403, "{v}");
    let (st, v) = post(r#"{"url":"https://example.com/x"}"#);
    assert_eq!(st, 403, "{v}");
    assert!(v["hint"].is_string(), "{v}");
    // It may list its app's targets but not all of them.
    assert_eq!(status_with(&b, token, "/api/v1/notifications"), 403);
    assert_eq!(
        status_with(&b, token, "/api/v1/notifications?app=site"),
        200
    );
    assert_eq!(
        status_with(&b, token, "/api/v1/notifications?app=other"),
        403
    );

    // The admin adds one for another app and one for every app, with the CLI.
    let out = cli(
        &b,
        &["notify:add", "https://example.com/other", "-a", "other"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&b, &["notify:add", "http://127.0.0.1:9/every"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("every app"),
        "{}",
        text(&out)
    );
    let out = cli(&b, &["notify:add", "not a url", "-a", "site"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hint:"),
        "{}",
        text(&out)
    );

    // Listings never show a secret.
    let (st, list) = api(&b, "GET", "/api/v1/notifications", "");
    assert_eq!(st, 200, "{list}");
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    assert!(!list.to_string().contains(mine["secret"].as_str().unwrap()));
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("secret").is_none()));
    let (_, site_list) = api(&b, "GET", "/api/v1/notifications?app=site", "");
    let urls: Vec<&str> = site_list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["url"].as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        ["https://example.com/site", "http://127.0.0.1:9/every"]
    );
    let out = cli(&b, &["notify"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    for want in ["example.com/site", "example.com/other", "every app"] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    let out = cli(&b, &["notify", "-a", "other", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");

    // Removing: the deploy token only its app's; the CLI; an unknown id is a 404.
    let other_id = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["app"] == "other")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let del = |token: &str, id: i64| {
        api_as(
            &b,
            token,
            "DELETE",
            &format!("/api/v1/notifications/{id}"),
            "application/json",
            b"",
        )
        .0
    };
    assert_eq!(del(token, other_id), 404);
    assert_eq!(del(token, mine["id"].as_i64().unwrap()), 204);
    assert_eq!(del(token, mine["id"].as_i64().unwrap()), 404);
    let out = cli(&b, &["notify:remove", &other_id.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&b, &["notify:remove", &other_id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (_, list) = api(&b, "GET", "/api/v1/notifications", "");
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // Audited, without the secret.
    let (_, audit) = api(&b, "GET", "/api/v1/audit", "");
    let s = audit.to_string();
    assert!(
        s.contains("notify.add") && s.contains("notify.remove"),
        "{s}"
    );
    assert!(!s.contains(mine["secret"].as_str().unwrap()), "{s}");
}
