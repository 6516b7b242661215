//! A first end-to-end check: the real binary proxies to a real upstream and serves static files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;
use test_support::{raw, status, Berth, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

#[test]
fn proxies_and_serves_static() {
    let up = Upstream::start(Reply::Ok("hello from upstream"));
    let b = Berth::start_with(
        BIN,
        "",
        &[("www/index.html", b"<h1>site</h1>")],
        &format!(
            "[[route]]\nhost = \"app.localhost\"\nupstreams = [\"{}\"]\n[[route]]\nhost = \"site.localhost\"\nstatic = \"{{dir}}/www\"\n",
            up.addr
        ),
    );
    let r = raw(
        b.http,
        b"GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert!(String::from_utf8_lossy(&r).ends_with("hello from upstream"));
    let r = raw(
        b.http,
        b"GET / HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
    assert!(String::from_utf8_lossy(&r).ends_with("<h1>site</h1>"));
}

/// berth's own log written to a file (not a terminal) is plain text: no ANSI colour codes.
#[test]
fn the_log_in_a_file_has_no_colour_codes() {
    let b = Berth::start(BIN, "");
    let log = b.stderr();
    assert!(log.contains("berth is serving"), "{log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a file: {log:?}");
}
