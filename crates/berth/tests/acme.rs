//! Issue 6: certificates from a real ACME server. Pebble (Let's Encrypt's test CA, Debian's
//! `pebble`) runs on loopback with its own test roots; its DNS (challtestsrv) answers every name
//! with 127.0.0.1, so the validation of `<app>.test` reaches berth's listeners, whose ports
//! Pebble is told first. Skipped, loudly, only when Pebble is not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, cli, create_app, text, upload, wait_deploy};
use common::BIN;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use test_support::pebble::{Pebble, PebbleOptions};
use test_support::{eventually, free_port, write_file, Berth};

/// Long enough for an issuance with a few retries.
const ISSUE: Duration = Duration::from_secs(60);

/// Pebble told berth's ports, then berth on them with `[tls.acme]` pointing at Pebble
/// (`acme_extra`: more lines of that table) and a page at `www/index.html` for static routes
/// in `extra`. Apps live at `<app>.test`.
fn berth_and_pebble(validity_secs: Option<u64>, acme_extra: &str, extra: &str) -> (Berth, Pebble) {
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs,
        eab: false,
    });
    let b = Berth::start_with(
        BIN,
        &format!("http = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\ndomain = \"test\""),
        &[("www/index.html", b"a page\n")],
        &format!(
            "[tls.acme]\ndirectory = \"{}\"\nca = \"{}\"\nemail = \"ops@example.com\"\n{acme_extra}\n{extra}",
            pebble.directory_url(),
            pebble.ca_pem_path().display()
        ),
    );
    (b, pebble)
}

/// The certificates berth reports (`GET /api/v1/certs`), by host.
fn cert_of(b: &Berth, host: &str) -> serde_json::Value {
    let (st, v) = api(b, "GET", "/api/v1/certs", "");
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .find(|c| c["host"] == host)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until `host` is served with a certificate from the ACME CA; its `not_after`.
fn wait_acme(b: &Berth, host: &str) -> u64 {
    eventually(ISSUE, &format!("an ACME certificate for {host}"), || {
        let c = cert_of(b, host);
        (c["source"] == "acme").then(|| c["not_after"].as_u64().unwrap())
    })
}

/// GET `https://<host>/` through berth's HTTPS listener, trusting only `root` (the CA's
/// root): (status, issuer line of the served certificate, body).
fn https_get(b: &Berth, host: &str, root: &Path) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "5", "--cacert"])
        .arg(root)
        .arg("--resolve")
        .arg(format!("{host}:{}:127.0.0.1", b.https.port()))
        .arg(format!("https://{host}:{}/", b.https.port()))
        .args(["-w", "\n%{http_code}"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", "0"));
    let issuer = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find(|l| l.contains("issuer:"))
        .unwrap_or_default()
        .to_string();
    (code.trim().parse().unwrap_or(0), issuer, body.to_string())
}

/// A static app to deploy: `index.html` with `body`.
fn static_app(dir: &Path, body: &str) {
    write_file(&dir.join("www/index.html"), body.as_bytes());
    write_file(&dir.join("berth.toml"), b"[static]\ndir = \"www\"\n");
}

#[test]
fn a_deployed_app_gets_a_certificate_from_the_acme_ca_over_http01() {
    if !Pebble::available() {
        return;
    }
    let (b, pebble) = berth_and_pebble(None, "", "");
    let root = b.path("pebble-root.pem");
    write_file(&root, pebble.root_pem().as_bytes());
    create_app(&b, "hello");
    let src = b.path("src");
    static_app(&src, "hello over acme\n");
    let (st, v) = upload(&b, "hello", &src);
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        wait_deploy(&b, "hello", v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    let not_after = wait_acme(&b, "hello.test");
    let c = cert_of(&b, "hello.test");
    assert_eq!(c["acme"]["status"], "valid", "{c}");
    assert!(c["issuer"].as_str().unwrap().contains("Pebble"), "{c}");
    assert!(not_after > 0);
    // A client that trusts only Pebble's root gets the app over HTTPS.
    let (code, issuer, body) = https_get(&b, "hello.test", &root);
    assert_eq!(code, 200, "{issuer}");
    assert_eq!(body, "hello over acme\n");
    assert!(issuer.contains("Pebble"), "{issuer}");
    // Plain HTTP to a host with a real certificate is redirected, but the ACME path is not.
    let plain = |path: &str| {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "-H",
            ])
            .arg("Host: hello.test")
            .arg(format!("http://{}{path}", b.http))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        plain("/page?x=1"),
        format!("308 https://hello.test:{}/page?x=1", b.https.port())
    );
    assert!(
        plain("/.well-known/acme-challenge/unknown").starts_with("404"),
        "{}",
        plain("/.well-known/acme-challenge/unknown")
    );
    // The metrics count it.
    let out = Command::new("curl")
        .args(["-s", "-H"])
        .arg(format!("Authorization: Bearer {}", b.token))
        .arg(format!("http://{}/metrics", b.admin))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&out.stdout).into_owned();
    // hello.test and the API's host, berth.test.
    assert!(
        metrics.contains("berth_acme_certificates{status=\"valid\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_acme_orders_total{result=\"issued\"} 2"),
        "{metrics}"
    );
    assert!(!metrics.contains("\n\n"), "no empty line: {metrics}");
    assert!(metrics.contains("berth_acme_certificate_expiry_seconds{host=\"hello.test\"}"));
    assert_eq!(metrics.matches("# EOF").count(), 1, "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));
    // `berth certs` shows it.
    let out = cli(&b, &["certs"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = text(&out);
    assert!(
        listing
            .lines()
            .any(|l| l.contains("hello.test") && l.contains("acme") && l.contains("valid")),
        "{listing}"
    );
    // The key and the account are the data dir's, readable by berth only.
    let account = std::fs::read_dir(b.path("data/acme"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("account-") && n.ends_with(".json"))
        .expect("an account file");
    for f in [
        format!("acme/{account}"),
        "acme/certs/hello.test/key.pem".to_string(),
    ] {
        let mode = std::fs::metadata(b.path("data").join(&f))
            .unwrap_or_else(|e| panic!("{f}: {e}"))
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600,
            "{f}"
        );
    }
}

#[test]
fn tls_alpn01_issues_too_and_a_restart_serves_the_stored_certificate() {
    if !Pebble::available() {
        return;
    }
    let (mut b, pebble) = berth_and_pebble(
        None,
        "challenge = \"tls-alpn-01\"",
        "[[route]]\nhost = \"alpn.test\"\nstatic = \"{dir}/www\"\n",
    );
    let root = b.path("pebble-root.pem");
    write_file(&root, pebble.root_pem().as_bytes());
    let not_after = wait_acme(&b, "alpn.test");
    assert_eq!(https_get(&b, "alpn.test", &root).0, 200);
    // After a restart the stored certificate is served at once, without a new order; also when
    // berth died in the middle of swapping a new pair into place (only `<host>~new` left).
    drop(pebble);
    let certs = b.path("data/acme/certs");
    std::fs::rename(certs.join("alpn.test"), certs.join("alpn.test~new")).unwrap();
    b.crash_and_restart(BIN);
    // Loaded from the data dir right after the start (no CA needed: Pebble is gone).
    let c = eventually(Duration::from_secs(10), "the stored certificate", || {
        let c = cert_of(&b, "alpn.test");
        (c["source"] == "acme").then_some(c)
    });
    assert_eq!(c["not_after"].as_u64(), Some(not_after), "{c}");
    assert_eq!(https_get(&b, "alpn.test", &root).0, 200);
}

#[test]
fn short_lived_certificates_are_renewed_before_they_expire() {
    if !Pebble::available() {
        return;
    }
    // 15 s certificates: renewed at two thirds, 10 s after they start.
    let (b, pebble) = berth_and_pebble(
        Some(15),
        "",
        "[[route]]\nhost = \"renew.test\"\nstatic = \"{dir}/www\"\n",
    );
    let first = wait_acme(&b, "renew.test");
    let renewed = eventually(Duration::from_secs(45), "a renewed certificate", || {
        let c = cert_of(&b, "renew.test");
        c["not_after"].as_u64().filter(|n| *n > first)
    });
    assert!(renewed > first);
    let root = b.path("pebble-root.pem");
    write_file(&root, pebble.root_pem().as_bytes());
    assert_eq!(https_get(&b, "renew.test", &root).0, 200);
}

#[test]
fn a_failing_challenge_is_retried_while_other_hosts_get_theirs() {
    if !Pebble::available() {
        return;
    }
    let routes = "[[route]]\nhost = \"good.test\"\nstatic = \"{dir}/www\"\n\n[[route]]\nhost = \"bad.test\"\nstatic = \"{dir}/www\"\n";
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: None,
        eab: false,
    });
    // bad.test resolves (for the CA) to an address where nothing listens: its validation fails.
    let dns = pebble.dns_mgmt();
    let add = Command::new("curl")
        .args([
            "-sSf",
            "-X",
            "POST",
            "-d",
            r#"{"host":"bad.test","addresses":["127.0.0.2"]}"#,
        ])
        .arg(format!("http://{dns}/add-a"))
        .output()
        .unwrap();
    assert!(add.status.success(), "{}", text(&add));
    // berth with a short first retry (500 ms), through a wrapper that sets
    // `BERTH_ACME_BACKOFF_MS` (the harness passes no environment of its own).
    let bin_dir = tempfile::tempdir().unwrap();
    let wrapper = bin_dir.path().join("berth-fast-retries");
    write_file(
        &wrapper,
        format!("#!/bin/sh\nBERTH_ACME_BACKOFF_MS=500 exec '{BIN}' \"$@\"\n").as_bytes(),
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let b = Berth::start_with(
        wrapper.to_str().unwrap(),
        &format!("http = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\ndomain = \"test\""),
        &[("www/index.html", b"ok\n")],
        &format!(
            "[tls.acme]\ndirectory = \"{}\"\nca = \"{}\"\n\n{routes}",
            pebble.directory_url(),
            pebble.ca_pem_path().display()
        ),
    );
    wait_acme(&b, "good.test");
    let failed = eventually(ISSUE, "bad.test to fail and be retried", || {
        let c = cert_of(&b, "bad.test");
        (c["acme"]["failures"].as_u64() >= Some(2)).then_some(c)
    });
    assert!(
        failed["acme"]["error"]
            .as_str()
            .unwrap()
            .contains("validation"),
        "{failed}"
    );
    // Meanwhile bad.test is served by the local CA rather than failing the handshake.
    assert_eq!(failed["source"], "local", "{failed}");
    // Once its name resolves to berth, the next attempt succeeds.
    let fix = Command::new("curl")
        .args(["-sSf", "-X", "POST", "-d", r#"{"host":"bad.test"}"#])
        .arg(format!("http://{dns}/clear-a"))
        .output()
        .unwrap();
    assert!(fix.status.success(), "{}", text(&fix));
    wait_acme(&b, "bad.test");
}

#[test]
fn bad_acme_settings_are_refused_with_a_hint() {
    let cases = [
        ("[tls.acme]\ndirectory = \"http://ca.test/dir\"\n", "https://"),
        (
            "[tls.acme]\ndirectory = \"https://ca.test/dir\"\nemail = \"not an address\"\n",
            "email",
        ),
        (
            "[tls.acme]\ndirectory = \"https://ca.test/dir\"\nchallenge = \"dns-01\"\n",
            "tls-alpn-01",
        ),
        (
            "[tls.acme]\ndirectory = \"https://ca.test/dir\"\neab = { kid = \"k\", hmac = \"not base64!\" }\n",
            "eab",
        ),
        (
            "[tls.acme]\ndirectory = \"https://ca.test/dir\"\non_demand = { per_minute = 5 }\n",
            "ask",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (toml, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{toml}");
        let err = text(&out);
        assert!(err.contains(want), "{toml} → {err}");
    }
}

/// A tiny `ask` endpoint: 200 for hosts starting with `yes`, 403 otherwise; the domains it was
/// asked about.
fn ask_server() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let domain = head
                .split_whitespace()
                .nth(1)
                .and_then(|t| t.split("domain=").nth(1))
                .unwrap_or_default()
                .to_string();
            let ok = domain.starts_with("yes");
            seen.lock().unwrap().push(domain);
            let status = if ok { "200 OK" } else { "403 Forbidden" };
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    (port, asked)
}

/// A TLS handshake (and GET) for `host` through berth, trusting anything: what triggers
/// on-demand issuance.
fn handshake(b: &Berth, host: &str) {
    let _ = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-o", "/dev/null", "--resolve"])
        .arg(format!("{host}:{}:127.0.0.1", b.https.port()))
        .arg(format!("https://{host}:{}/", b.https.port()))
        .output();
}

#[test]
fn on_demand_certificates_need_a_route_the_ask_url_and_room_in_the_rate() {
    if !Pebble::available() {
        return;
    }
    let (ask_port, asked) = ask_server();
    let (b, pebble) = berth_and_pebble(
        None,
        &format!("on_demand = {{ ask = \"http://127.0.0.1:{ask_port}/check\", per_minute = 1 }}"),
        "[[route]]\nhost = \"*.od.test\"\nstatic = \"{dir}/www\"\n",
    );
    let root = b.path("pebble-root.pem");
    write_file(&root, pebble.root_pem().as_bytes());
    // A name only the wildcard route knows: its first handshake gets the local CA's
    // certificate and starts an order; a later one gets the CA's.
    handshake(&b, "yes1.od.test");
    wait_acme(&b, "yes1.od.test");
    let (code, issuer, _) = https_get(&b, "yes1.od.test", &root);
    assert_eq!(code, 200, "{issuer}");
    // The ask URL says no: nothing is ordered.
    handshake(&b, "no.od.test");
    eventually(ISSUE, "the ask URL to be asked about no.od.test", || {
        asked
            .lock()
            .unwrap()
            .iter()
            .any(|d| d == "no.od.test")
            .then_some(())
    });
    // Not routed at all: not even asked.
    handshake(&b, "yes.elsewhere.test");
    // One order a minute, which yes1 took (no, turned down by the ask URL, took none): yes2
    // waits.
    handshake(&b, "yes2.od.test");
    eventually(ISSUE, "the rate limit to hold yes2 back", || {
        std::fs::read_to_string(&b.log_path)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("rate limited") && l.contains("yes2.od.test"))
            .then_some(())
    });
    assert!(cert_of(&b, "no.od.test")["acme"].is_null());
    assert!(cert_of(&b, "yes2.od.test")["acme"].is_null());
    assert!(!asked
        .lock()
        .unwrap()
        .iter()
        .any(|d| d.contains("elsewhere")));
}

#[test]
fn a_ca_that_requires_external_account_binding_gets_it() {
    if !Pebble::available() {
        return;
    }
    let (http, https) = (free_port(), free_port());
    let pebble = Pebble::start(PebbleOptions {
        http_port: http,
        tls_port: https,
        validity_secs: None,
        eab: true,
    });
    let (kid, hmac) = pebble.eab().unwrap();
    let start = |kid: &str, hmac: &str| {
        Berth::start_with(
            BIN,
            &format!("http = \"127.0.0.1:{http}\"\nhttps = \"127.0.0.1:{https}\"\ndomain = \"test\""),
            &[("www/index.html", b"eab\n")],
            &format!(
                "[tls.acme]\ndirectory = \"{}\"\nca = \"{}\"\neab = {{ kid = \"{kid}\", hmac = \"{hmac}\" }}\n\n[[route]]\nhost = \"eab.test\"\nstatic = \"{{dir}}/www\"\n",
                pebble.directory_url(),
                pebble.ca_pem_path().display()
            ),
        )
    };
    // A wrong key: the account cannot be made, and the error says so.
    let wrong = start("nobody", "d3JvbmcgaG1hYyBrZXkgZm9yIHRoZSB0ZXN0");
    let c = eventually(ISSUE, "the failed order to be reported", || {
        let c = cert_of(&wrong, "eab.test");
        (c["acme"]["status"] == "failed").then_some(c)
    });
    assert!(
        c["acme"]["error"].as_str().unwrap().contains("account"),
        "{c}"
    );
    drop(wrong);
    // The CA's key: issued.
    let b = start(&kid, &hmac);
    wait_acme(&b, "eab.test");
}
