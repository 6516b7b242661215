//! Issue 2, item 5: static sites served by berth itself, through the real listeners: index.html,
//! Content-Type, ETag/Last-Modified with 304, Range (206/416), precompressed `.br`/`.gz` siblings
//! with `Vary`, HEAD, directories without an index; over HTTP/1.1 and HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use test_support::Berth;

const INDEX: &[u8] = b"<!doctype html><h1>home</h1>";
const PAGE: &[u8] = b"<!doctype html><p>page, uncompressed</p>";
const PAGE_BR: &[u8] = b"BROTLI-BYTES-OF-PAGE";
const PAGE_GZ: &[u8] = b"\x1f\x8bGZIP-BYTES-OF-PAGE";

fn digits() -> Vec<u8> {
    b"0123456789".repeat(100)
}

fn site() -> Berth {
    let big = digits();
    let files: Vec<(&str, &[u8])> = vec![
        ("www/index.html", INDEX),
        ("www/page.html", PAGE),
        ("www/page.html.br", PAGE_BR),
        ("www/page.html.gz", PAGE_GZ),
        ("www/style.css", b"body{color:red}"),
        ("www/app.js", b"console.log(1)"),
        ("www/data.json", b"{\"a\":1}"),
        (
            "www/logo.svg",
            b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
        ),
        ("www/pic.png", b"\x89PNG\r\n\x1a\n0000"),
        ("www/notes.txt", b"plain notes"),
        ("www/digits.txt", &big),
        ("www/sub/index.html", b"sub index"),
        ("www/noindex/file.txt", b"listed?"),
    ];
    Berth::start_with(
        BIN,
        "",
        &files,
        "[[route]]\nhost = \"site.localhost\"\nstatic = \"{dir}/www\"\n",
    )
}

fn sget(b: &Berth, path: &str, headers: &[(&str, &str)]) -> Resp {
    get_with(b.http, "site.localhost", path, headers)
}

#[test]
fn index_html_is_served_for_directories() {
    let b = site();
    let r = sget(&b, "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, INDEX);
    let r = sget(&b, "/index.html", &[]);
    assert_eq!((r.status, r.body.as_slice()), (200, INDEX));
    let r = sget(&b, "/sub/", &[]);
    assert_eq!((r.status, r.text().as_str()), (200, "sub index"));
    // `/sub` without the slash: the index, or a redirect to `/sub/`.
    let r = sget(&b, "/sub", &[]);
    match r.status {
        200 => assert_eq!(r.text(), "sub index"),
        301 | 302 | 307 | 308 => {
            let loc = r.header("location").unwrap_or("");
            assert!(loc.ends_with("/sub/"), "redirect to {loc}");
        }
        s => panic!("GET /sub gave {s}"),
    }
}

#[test]
fn content_type_follows_the_extension() {
    let b = site();
    let cases = [
        ("/", "text/html"),
        ("/page.html", "text/html"),
        ("/style.css", "text/css"),
        ("/app.js", "javascript"),
        ("/data.json", "application/json"),
        ("/logo.svg", "image/svg+xml"),
        ("/pic.png", "image/png"),
        ("/notes.txt", "text/plain"),
    ];
    for (path, want) in cases {
        let r = sget(&b, path, &[]);
        assert_eq!(r.status, 200, "{path}");
        let ct = r.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with(want) || ct.contains(want),
            "{path}: Content-Type {ct:?}"
        );
        if want.starts_with("text/") {
            assert!(
                ct.to_ascii_lowercase().contains("charset=utf-8"),
                "{path}: {ct}"
            );
        }
    }
}

#[test]
fn etag_and_last_modified_give_304() {
    let b = site();
    let r = sget(&b, "/page.html", &[]);
    assert_eq!(r.status, 200);
    let etag = r.header("etag").expect("ETag").to_string();
    let lm = r
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();
    assert!(
        etag.starts_with('"') || etag.starts_with("W/\""),
        "ETag {etag}"
    );
    assert!(httpdate_like(&lm), "Last-Modified {lm}");

    // If-None-Match with the current tag (alone, in a list, weak form) → 304, no body.
    for inm in [etag.clone(), format!("\"nope\", {etag}"), "*".to_string()] {
        let r = sget(&b, "/page.html", &[("If-None-Match", &inm)]);
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.body.is_empty(), "304 with a body");
        assert_eq!(
            r.header("etag"),
            Some(etag.as_str()),
            "304 repeats the ETag"
        );
    }
    let r = sget(&b, "/page.html", &[("If-None-Match", "\"something-else\"")]);
    assert_eq!((r.status, r.body.as_slice()), (200, PAGE));

    // If-Modified-Since: same date → 304; an older date → 200; a later one → 304.
    let r = sget(&b, "/page.html", &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304, "If-Modified-Since: {lm}");
    assert!(r.body.is_empty());
    let r = sget(
        &b,
        "/page.html",
        &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")],
    );
    assert_eq!((r.status, r.body.as_slice()), (200, PAGE));
    let r = sget(
        &b,
        "/page.html",
        &[("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")],
    );
    assert_eq!(r.status, 304);
    // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
    let r = sget(
        &b,
        "/page.html",
        &[("If-None-Match", "\"other\""), ("If-Modified-Since", &lm)],
    );
    assert_eq!(r.status, 200);

    // A changed file gets a new tag.
    std::fs::write(
        b.path("www/page.html"),
        b"<p>changed, and longer than before</p>",
    )
    .unwrap();
    let r = sget(&b, "/page.html", &[("If-None-Match", &etag)]);
    assert_eq!(
        r.status, 200,
        "stale ETag still matched after the file changed"
    );
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

fn httpdate_like(s: &str) -> bool {
    s.ends_with(" GMT") && s.len() == 29 && s.as_bytes()[3] == b','
}

#[test]
fn ranges_give_206_and_416() {
    let b = site();
    let big = digits();
    let r = sget(&b, "/digits.txt", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let cases = [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=10-19", 10, 19),
        ("bytes=-5", 995, 999),
        ("bytes=990-", 990, 999),
        ("bytes=995-5000", 995, 999),
    ];
    for (range, start, end) in cases {
        let r = sget(&b, "/digits.txt", &[("Range", range)]);
        assert_eq!(r.status, 206, "Range: {range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/1000").as_str()),
            "Range: {range}"
        );
        assert_eq!(r.body, &big[start..=end], "Range: {range}");
        assert_eq!(
            r.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
    }
    for range in ["bytes=1000-", "bytes=5000-6000"] {
        let r = sget(&b, "/digits.txt", &[("Range", range)]);
        assert_eq!(r.status, 416, "Range: {range}");
        assert_eq!(
            r.header("content-range"),
            Some("bytes */1000"),
            "Range: {range}"
        );
    }
    // A range with a stale If-Range is ignored: the whole file.
    let r = sget(
        &b,
        "/digits.txt",
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    );
    assert_eq!((r.status, r.body.len()), (200, 1000));
}

#[test]
fn precompressed_siblings_are_served_when_accepted() {
    let b = site();
    let plain = sget(&b, "/page.html", &[]);
    assert_eq!(plain.body, PAGE);
    assert!(plain.header("content-encoding").is_none());
    let vary = |r: &Resp| {
        r.all("vary")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    };
    // Like nginx's gzip_static (without gzip_vary), siblings are looked up only for clients
    // that accept a coding, so a request without Accept-Encoding costs no extra syscall and its
    // answer carries no Vary; every answer to a client that offers a coding does.
    assert!(
        !vary(&plain),
        "no sibling lookup without Accept-Encoding: {plain:?}"
    );

    let br = sget(&b, "/page.html", &[("Accept-Encoding", "br")]);
    assert_eq!(br.status, 200);
    assert_eq!(br.header("content-encoding"), Some("br"));
    assert_eq!(br.body, PAGE_BR);
    assert!(
        br.header("content-type")
            .unwrap_or("")
            .starts_with("text/html"),
        "{br:?}"
    );
    assert!(vary(&br), "{br:?}");

    let gz = sget(&b, "/page.html", &[("Accept-Encoding", "gzip, deflate")]);
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.body, PAGE_GZ);
    assert!(gz
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(vary(&gz));

    // Both accepted: one of them (brotli is smaller and usually preferred).
    let both = sget(
        &b,
        "/page.html",
        &[("Accept-Encoding", "gzip, deflate, br")],
    );
    let enc = both.header("content-encoding").unwrap_or("");
    assert!(
        (enc == "br" && both.body == PAGE_BR) || (enc == "gzip" && both.body == PAGE_GZ),
        "{both:?}"
    );
    // Refused with q=0.
    let r = sget(&b, "/page.html", &[("Accept-Encoding", "br;q=0, gzip")]);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let r = sget(&b, "/page.html", &[("Accept-Encoding", "identity")]);
    assert_eq!(
        (r.header("content-encoding"), r.body.as_slice()),
        (None, PAGE)
    );

    // Each representation has its own validator.
    let tags = [&plain, &br, &gz].map(|r| r.header("etag").unwrap_or("").to_string());
    assert!(
        tags[0] != tags[1] && tags[0] != tags[2] && tags[1] != tags[2],
        "representations share an ETag: {tags:?}"
    );
    // A file without siblings is served as is, whatever is accepted.
    let r = sget(&b, "/notes.txt", &[("Accept-Encoding", "br, gzip")]);
    assert_eq!(
        (r.header("content-encoding"), r.text().as_str()),
        (None, "plain notes")
    );
    // The siblings themselves are not a different page: asking for page.html.gz directly
    // gives those bytes (as a file) or 404, never text/html with Content-Encoding.
    let r = sget(&b, "/page.html.gz", &[]);
    assert!(r.status == 404 || r.body == PAGE_GZ);
}

#[test]
fn head_gives_the_headers_without_a_body() {
    let b = site();
    let r = request(b.http, "HEAD", "site.localhost", "/page.html", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(PAGE.len().to_string().as_str())
    );
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    assert!(r.header("etag").is_some());
    assert!(
        r.body.is_empty(),
        "HEAD response carried a body: {:?}",
        r.text()
    );
    // HEAD then GET pipelined on one keep-alive connection: the framing must stay right.
    let mut c = Conn::open(b.http);
    c.s.write_all(
        b"HEAD /digits.txt HTTP/1.1\r\nHost: site.localhost\r\n\r\nGET /notes.txt HTTP/1.1\r\nHost: site.localhost\r\n\r\n",
    )
    .unwrap();
    let head = c.read_response(true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1000"));
    let next = c.read_response(false).unwrap();
    assert_eq!(
        (next.status, next.text().as_str()),
        (200, "plain notes"),
        "the HEAD response was followed by body bytes"
    );
}

#[test]
fn directories_without_index_and_missing_files_are_404() {
    let b = site();
    // `/noindex` may first redirect to `/noindex/` (like `/sub`), which is then a 404.
    let r = sget(&b, "/noindex", &[]);
    if (300..400).contains(&r.status) {
        assert_eq!(r.header("location"), Some("/noindex/"), "{r:?}");
    } else {
        assert_eq!(r.status, 404, "{r:?}");
    }
    for path in ["/noindex/", "/missing.html", "/sub/missing/", "/nope/"] {
        let r = sget(&b, path, &[]);
        assert_eq!(r.status, 404, "{path}: {r:?}");
        assert!(
            !r.text().contains("file.txt"),
            "{path} listed the directory: {}",
            r.text()
        );
        assert_no_internals(&r.text(), &[]);
        assert!(!r.text().contains(&b.dir.path().display().to_string()));
    }
}

#[test]
fn static_files_over_http2() {
    let b = site();
    let r = curl_https_resp(&b, "site.localhost", "/style.css", &["--http2"]);
    assert_eq!((r.version.as_str(), r.status), ("HTTP/2", 200));
    assert!(r
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/css"));
    assert_eq!(r.text(), "body{color:red}");
    let etag = r.header("etag").unwrap().to_string();

    let r = curl_https_resp(
        &b,
        "site.localhost",
        "/style.css",
        &["--http2", "-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    let r = curl_https_resp(
        &b,
        "site.localhost",
        "/digits.txt",
        &["--http2", "-r", "10-19"],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "0123456789");
    assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));

    let r = curl_https_resp(
        &b,
        "site.localhost",
        "/digits.txt",
        &["--http2", "-r", "2000-3000"],
    );
    assert_eq!(r.status, 416);

    let r = curl_https_resp(
        &b,
        "site.localhost",
        "/page.html",
        &["--http2", "-H", "Accept-Encoding: br"],
    );
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(r.body, PAGE_BR);

    let r = curl_https_resp(&b, "site.localhost", "/", &["--http2", "-I"]);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());

    let r = curl_https_resp(&b, "site.localhost", "/noindex/", &["--http2"]);
    assert_eq!(r.status, 404);
}

/// Dotfiles are never served: any segment starting with `.` (`.env`, `.git/`, `.htpasswd`, a
/// hidden file deeper down) answers 404 — not 403, which would confirm it exists — however the
/// path is spelled, at the root and under a `strip_prefix` mount, over HTTP/1.1 and h2. Only
/// `/.well-known/` is served (but not a dotfile inside it).
#[test]
fn dotfiles_are_404_except_well_known() {
    const SECRET: &str = "DOTFILE-SECRET-3f9a";
    let files: Vec<(&str, &[u8])> = vec![
        ("www/index.html", INDEX),
        ("www/.env", b"DOTFILE-SECRET-3f9a env"),
        ("www/.env.gz", b"DOTFILE-SECRET-3f9a env.gz"),
        ("www/.htpasswd", b"DOTFILE-SECRET-3f9a htpasswd"),
        ("www/.git/config", b"DOTFILE-SECRET-3f9a git config"),
        ("www/.git/index.html", b"DOTFILE-SECRET-3f9a git index"),
        ("www/sub/.secret", b"DOTFILE-SECRET-3f9a sub"),
        (
            "www/sub/.hidden/page.html",
            b"DOTFILE-SECRET-3f9a hidden dir",
        ),
        ("www/sub/visible.txt", b"visible"),
        ("www/.well-known/security.txt", b"Contact: ops@example.test"),
        (
            "www/.well-known/.private",
            b"DOTFILE-SECRET-3f9a well-known",
        ),
    ];
    let b = Berth::start_with(
        BIN,
        "",
        &files,
        "[[route]]\nhost = \"dot.localhost\"\nstatic = \"{dir}/www\"\n\
         [[route]]\nhost = \"dot.localhost\"\npath = \"/docs/\"\nstrip_prefix = true\nstatic = \"{dir}/www\"\n",
    );
    let hidden = [
        "/.env",
        "/.env?x=1",
        "/.htpasswd",
        "/.git/config",
        "/.git/",
        "/.git",
        "/sub/.secret",
        "/sub/.hidden/page.html",
        "/sub/.hidden/",
        "/%2eenv",
        "/%2Egit/config",
        "/sub/%2esecret",
        "/sub/../.env",
        "/.well-known/.private",
        "/docs/.env",
        "/docs/.git/config",
        "/docs/sub/.secret",
    ];
    let mut failures = Vec::new();
    for path in hidden {
        for (method, headers) in [
            ("GET", &[][..]),
            ("HEAD", &[][..]),
            ("GET", &[("Accept-Encoding", "gzip, br")][..]),
            ("GET", &[("Range", "bytes=0-3")][..]),
        ] {
            let r = request(b.http, method, "dot.localhost", path, headers, b"");
            if r.status != 404 || r.text().contains(SECRET) || r.header("location").is_some() {
                failures.push(format!("{method} {path} {headers:?}: {r:?}"));
            }
        }
    }
    let r = curl_https_resp(&b, "dot.localhost", "/.git/config", &["--http2"]);
    if (r.version.as_str(), r.status) != ("HTTP/2", 404) || r.text().contains(SECRET) {
        failures.push(format!("h2 /.git/config: {r:?}"));
    }
    // Served: /.well-known/ (at the root of the site) and ordinary files next to dotfiles.
    for (path, want) in [
        ("/.well-known/security.txt", "Contact: ops@example.test"),
        (
            "/docs/.well-known/security.txt",
            "Contact: ops@example.test",
        ),
        ("/sub/visible.txt", "visible"),
        ("/docs/sub/visible.txt", "visible"),
    ] {
        let r = get(b.http, "dot.localhost", path);
        if r.status != 200 || r.text() != want {
            failures.push(format!("control {path}: {r:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
