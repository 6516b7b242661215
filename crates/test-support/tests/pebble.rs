//! The Pebble harness itself: it comes up on loopback, serves an ACME directory over TLS that
//! the generated CA verifies, hands out its issuing root, honours the EAB and validity options,
//! and leaves no processes behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use berth_test_support::pebble::{Pebble, PebbleOptions};
use berth_test_support::run;

/// `GET url` with curl, trusting only `ca`; the parsed JSON body.
fn get_json(ca: &Path, url: &str) -> serde_json::Value {
    let ca = ca.to_str().expect("temp dir path is UTF-8");
    let (ok, body, err) = run("curl", &["-sSf", "--max-time", "10", "--cacert", ca, url]);
    assert!(ok, "GET {url} failed: {err}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"))
}

/// Is a process with this pid alive (or a zombie)?
fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn pebble_serves_directory_and_root_and_stops_on_drop() {
    if !Pebble::available() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions {
        http_port: 5002,
        tls_port: 5001,
        validity_secs: None,
        eab: false,
    });
    let url = pebble.directory_url();
    assert!(
        url.starts_with("https://127.0.0.1:") && url.ends_with("/dir"),
        "{url}"
    );

    let dir = get_json(pebble.ca_pem_path(), &url);
    for key in ["newAccount", "newOrder", "newNonce"] {
        let v = dir[key]
            .as_str()
            .unwrap_or_else(|| panic!("directory has no {key}: {dir}"));
        assert!(v.starts_with("https://127.0.0.1:"), "{key}: {v}");
    }
    assert_eq!(dir["meta"]["externalAccountRequired"], false, "{dir}");
    assert_eq!(pebble.eab(), None);

    let root = pebble.root_pem();
    assert!(root.starts_with("-----BEGIN CERTIFICATE-----"), "{root}");
    assert!(
        root.trim_end().ends_with("-----END CERTIFICATE-----"),
        "{root}"
    );

    // The DNS management API answers (plain HTTP).
    let mgmt = format!("http://{}/", pebble.dns_mgmt());
    let (ok, code, _) = run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            &mgmt,
        ],
    );
    assert!(
        ok && code != "000",
        "challtestsrv management at {mgmt}: {code}"
    );

    let (p, c) = pebble.pids();
    assert!(pid_exists(p) && pid_exists(c));
    drop(pebble);
    assert!(!pid_exists(p), "pebble (pid {p}) still running after drop");
    assert!(
        !pid_exists(c),
        "pebble-challtestsrv (pid {c}) still running after drop"
    );
}

#[test]
fn pebble_with_eab_and_short_validity() {
    if !Pebble::available() {
        return;
    }
    let pebble = Pebble::start(PebbleOptions {
        http_port: 5002,
        tls_port: 5001,
        validity_secs: Some(30),
        eab: true,
    });
    let dir = get_json(pebble.ca_pem_path(), &pebble.directory_url());
    assert_eq!(dir["meta"]["externalAccountRequired"], true, "{dir}");

    let (kid, key) = pebble.eab().expect("eab: true exposes a key");
    assert!(!kid.is_empty());
    assert!(
        key.len() >= 43
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "EAB key is not unpadded base64url: {key}"
    );
    let logs = pebble.logs();
    assert!(
        logs.contains("certificate validity period of 30 seconds"),
        "validity_secs not applied:\n{logs}"
    );
}

#[test]
fn two_pebbles_side_by_side() {
    if !Pebble::available() {
        return;
    }
    let opts = PebbleOptions {
        http_port: 5002,
        tls_port: 5001,
        ..PebbleOptions::default()
    };
    let (a, b) = (Pebble::start(opts.clone()), Pebble::start(opts));
    assert_ne!(a.directory_url(), b.directory_url());
    // Each has its own listener CA and its own issuing root.
    assert_ne!(a.root_pem(), b.root_pem());
    get_json(b.ca_pem_path(), &b.directory_url());
}
