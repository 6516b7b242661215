//! Issue 6, defaults: `Strict-Transport-Security` is opt-in per route, sent on HTTPS only
//! (HTTP/1.1 and h2, proxied and local responses), never over plain HTTP; an upstream's own
//! value wins; bad values are refused with a hint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{curl_https_resp, get, route, BIN};
use std::process::Command;
use test_support::{Berth, Reply, Upstream};

#[test]
fn hsts_is_sent_on_https_responses_of_the_routes_that_ask_for_it() {
    let plain = Upstream::start(Reply::Ok("up\n"));
    let own = Upstream::start(Reply::Raw(
        b"HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=5\r\nContent-Length: 3\r\nConnection: close\r\n\r\nup\n",
    ));
    let config = format!(
        "{}{}{}[[route]]\nhost = \"files.test\"\nstatic = \"{{dir}}/www\"\nhsts = true\n",
        route(
            "proxied.test",
            &[plain.addr],
            "hsts = \"max-age=63072000; includeSubDomains\"",
        ),
        route("own.test", &[own.addr], "hsts = true"),
        route("none.test", &[plain.addr], ""),
    );
    let b = Berth::start_with(BIN, "", &[("www/index.html", b"files\n")], &config);
    let sts = "strict-transport-security";
    for proto in [&["--http1.1"][..], &["--http2"][..]] {
        let r = curl_https_resp(&b, "proxied.test", "/", proto);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header(sts),
            Some("max-age=63072000; includeSubDomains"),
            "{proto:?}"
        );
        let r = curl_https_resp(&b, "files.test", "/", proto);
        assert_eq!(r.header(sts), Some("max-age=31536000"), "{proto:?}");
        let r = curl_https_resp(&b, "own.test", "/", proto);
        assert_eq!(
            r.header(sts),
            Some("max-age=5"),
            "{proto:?}: the upstream's wins"
        );
        let r = curl_https_resp(&b, "none.test", "/", proto);
        assert_eq!(r.header(sts), None, "{proto:?}: not asked for");
    }
    // Never over plain HTTP (RFC 6797 §7.2).
    for host in ["proxied.test", "files.test"] {
        let r = get(b.http, host, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.header(sts), None, "{host}");
    }
}

#[test]
fn bad_hsts_values_are_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    for (i, value) in [
        "false",
        "\"31536000\"",
        "\"max-age=abc\"",
        "\"includeSubDomains\"",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[route]]\nhost = \"a.test\"\nupstreams = [\"127.0.0.1:9\"]\nhsts = {value}\n"
            ),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("hsts") && err.contains(":4:"),
            "{value}: {err}"
        );
    }
}

#[test]
fn an_app_opts_in_with_hsts_in_its_berth_toml() {
    use common::apps::{create_app, upload, wait_deploy};
    use test_support::write_file;
    let b = Berth::start(BIN, "");
    create_app(&b, "strict");
    let src = b.path("src");
    write_file(&src.join("www/index.html"), b"strict\n");
    write_file(
        &src.join("berth.toml"),
        b"hsts = \"max-age=600\"\n[static]\ndir = \"www\"\n",
    );
    let (st, v) = upload(&b, "strict", &src);
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        wait_deploy(&b, "strict", v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    let r = curl_https_resp(&b, "strict.localhost", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=600"));
    // A bad value is refused before anything is deployed, naming the line.
    std::fs::write(
        src.join("berth.toml"),
        "hsts = \"forever\"\n[static]\ndir = \"www\"\n",
    )
    .unwrap();
    let (st, v) = upload(&b, "strict", &src);
    assert_eq!(st, 422, "{v}");
    let err = v.to_string();
    assert!(
        err.contains("berth.toml:1") && err.contains("max-age"),
        "{err}"
    );
}
