//! Issue 2, item 3: routes from the config file — exact hosts, one-label wildcards, longest path
//! prefix, `strip_prefix`, `https_redirect`, berth's own 404, and certificate files chosen by SNI
//! over the local CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use test_support::{Berth, Reply, Upstream};

#[test]
fn exact_host_matches_only_that_host() {
    let ci = Upstream::start(Reply::Ok("ci"));
    let b = Berth::start(BIN, &route("ci.example.test", &[ci.addr], ""));
    for host in [
        "ci.example.test",
        "CI.Example.Test",
        &format!("ci.example.test:{}", b.http.port()),
        "ci.example.test.",
    ] {
        let r = get(b.http, host, "/");
        assert_eq!(r.status, 200, "Host: {host}");
        assert_eq!(r.text(), "ci", "Host: {host}");
    }
    for host in [
        "example.test",
        "x.ci.example.test",
        "ci.example.testx",
        "cci.example.test",
    ] {
        assert_eq!(get(b.http, host, "/").status, 404, "Host: {host}");
    }
    assert_eq!(ci.count(), 4);
}

#[test]
fn wildcard_matches_exactly_one_label() {
    let wild = Upstream::start(Reply::Ok("wild"));
    let special = Upstream::start(Reply::Ok("special"));
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route("*.apps.example.test", &[wild.addr], ""),
            route("special.apps.example.test", &[special.addr], "")
        ),
    );
    for host in [
        "foo.apps.example.test",
        "bar-1.apps.example.test",
        "FOO.APPS.example.test",
    ] {
        let r = get(b.http, host, "/");
        assert_eq!((r.status, r.text().as_str()), (200, "wild"), "Host: {host}");
    }
    // An exact route is more specific than the wildcard.
    let r = get(b.http, "special.apps.example.test", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "special"));
    // Two labels, or none, are not "one label".
    for host in [
        "a.b.apps.example.test",
        "apps.example.test",
        "xapps.example.test",
    ] {
        let r = get(b.http, host, "/");
        assert_eq!(r.status, 404, "Host: {host} matched the one-label wildcard");
    }
    assert_eq!(wild.count(), 3);
}

#[test]
fn longest_path_prefix_wins() {
    let root = Upstream::start(Reply::Ok("root"));
    let api = Upstream::start(Reply::Ok("api"));
    let v2 = Upstream::start(Reply::Ok("v2"));
    // Declared shortest-last and out of order: order in the file must not matter.
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}{}",
            route("example.test", &[api.addr], "path = \"/api/\""),
            route("example.test", &[v2.addr], "path = \"/api/v2/\""),
            route("example.test", &[root.addr], "")
        ),
    );
    let cases = [
        ("/", "root"),
        ("/index.html", "root"),
        ("/apix", "root"),
        ("/api/", "api"),
        ("/api/users?id=3", "api"),
        ("/api/v2/", "v2"),
        ("/api/v2/things/1", "v2"),
        ("/api/v20", "api"),
    ];
    for (path, want) in cases {
        let r = get(b.http, "example.test", path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), want, "GET {path}");
    }
}

#[test]
fn strip_prefix_removes_the_matched_prefix_only_when_asked() {
    let stripped = Upstream::start(Reply::Echo);
    let kept = Upstream::start(Reply::Echo);
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route(
                "example.test",
                &[stripped.addr],
                "path = \"/api/\"\nstrip_prefix = true"
            ),
            route("example.test", &[kept.addr], "path = \"/keep/\"")
        ),
    );
    let cases = [
        ("/api/users?x=1", "GET /users?x=1 HTTP/1.1"),
        ("/api/", "GET / HTTP/1.1"),
        ("/api/a/b/", "GET /a/b/ HTTP/1.1"),
    ];
    for (path, want) in cases {
        let r = get(b.http, "example.test", path);
        assert_eq!(r.status, 200, "{path}");
        let first = stripped.last().lines().next().unwrap_or("").to_string();
        assert_eq!(first, want, "GET {path} reached the upstream as {first:?}");
    }
    let r = get(b.http, "example.test", "/keep/users?x=1");
    assert_eq!(r.status, 200);
    assert!(
        kept.last().starts_with("GET /keep/users?x=1 HTTP/1.1\r\n"),
        "{}",
        kept.last()
    );
}

#[test]
fn https_redirect_sends_plain_http_to_the_same_url_on_https() {
    let up = Upstream::start(Reply::Ok("secure"));
    let b = Berth::start(
        BIN,
        &route("ci.localhost", &[up.addr], "https_redirect = true"),
    );
    let port = b.https.port();
    for path in ["/", "/some/path?q=1&r=2", "/a%20b/"] {
        let r = request(
            b.http,
            "POST",
            &format!("ci.localhost:{}", b.http.port()),
            path,
            &[],
            b"data",
        );
        assert_eq!(r.status, 308, "{path}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some(format!("https://ci.localhost:{port}{path}").as_str()),
            "{path}"
        );
    }
    assert_eq!(up.count(), 0, "a redirected request reached the upstream");
    // Over HTTPS the route proxies.
    let (ok, out, err) = curl_https(&b, "ci.localhost", "/some/path", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "secure");
    assert_eq!(up.count(), 1);
}

#[test]
fn no_route_gives_a_short_404_naming_no_internals() {
    let up = Upstream::start(Reply::Ok("app"));
    let b = Berth::start_with(
        BIN,
        "",
        &[("www/index.html", b"site")],
        &format!(
            "{}[[route]]\nhost = \"site.localhost\"\nstatic = \"{{dir}}/www\"\n",
            route("app.localhost", &[up.addr], "")
        ),
    );
    let dir = b.dir.path().display().to_string();
    for (host, path) in [
        ("nothing.test", "/"),
        ("nothing.test", "/api/v1/routes"),
        ("localhost", "/"),
        ("app.localhost.evil.test", "/"),
    ] {
        let r = get(b.http, host, path);
        assert_eq!(r.status, 404, "Host: {host}");
        let body = r.text();
        assert!(!body.is_empty(), "empty 404 body");
        assert_no_internals(&body, &[up.addr, b.http, b.admin]);
        for secret in [
            dir.as_str(),
            "app.localhost\n",
            "site.localhost",
            "route",
            "panic",
        ] {
            assert!(
                !body.contains(secret),
                "404 body mentions {secret:?}: {body:?}"
            );
        }
    }
    // The same over TLS (a host under the local domain gets a certificate, then the 404).
    let (ok, out, err) = curl_https(&b, "nothing.localhost", "/", &["-w", "\n%{http_code}"]);
    assert!(ok, "{err}");
    assert!(out.ends_with("\n404"), "{out}");
    assert_eq!(up.count(), 0);
}

#[test]
fn certificate_files_are_chosen_by_sni_over_the_local_ca() {
    let (cert, key) = self_signed("files.test");
    let up = Upstream::start(Reply::Ok("from files.test"));
    let app = Upstream::start(Reply::Ok("from app"));
    let b = Berth::start_with(
        BIN,
        "",
        &[("certs/files.pem", &cert), ("certs/files.key", &key)],
        &format!(
            "[tls]\ncerts = [{{ cert = \"{{dir}}/certs/files.pem\", key = \"{{dir}}/certs/files.key\" }}]\n\n{}{}",
            route("files.test", &[up.addr], ""),
            route("app.localhost", &[app.addr], "")
        ),
    );
    // files.test gets the configured certificate: it verifies against that certificate...
    let file_ca = b.path("certs/files.pem");
    let (ok, out, err) = curl_https_ca(&b, &file_ca, "files.test", "/", &[]);
    assert!(
        ok,
        "files.test did not present the configured certificate: {err}"
    );
    assert_eq!(out, "from files.test");
    // ...and not against the local CA.
    let (ok, _, _) = curl_https(&b, "files.test", "/", &[]);
    assert!(
        !ok,
        "files.test was served a local-CA leaf instead of the file"
    );
    let text = presented_cert(&b, "files.test");
    assert!(
        text.contains("CN = files.test") || text.contains("CN=files.test"),
        "{text}"
    );

    // A host the files do not cover still gets a local-CA leaf.
    let (ok, out, err) = curl_https(&b, "app.localhost", "/", &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "from app");
    let (ok, _, _) = curl_https_ca(&b, &file_ca, "app.localhost", "/", &[]);
    assert!(!ok, "app.localhost was served the files.test certificate");
}

#[test]
fn static_routes_with_strip_prefix_redirect_directories_under_the_prefix() {
    let b = Berth::start_with(
        BIN,
        "",
        &[("site/guide/index.html", b"guide")],
        "[[route]]\nhost = \"docs.test\"\npath = \"/docs/\"\nstrip_prefix = true\nstatic = \"{dir}/site\"\n",
    );
    let r = get(b.http, "docs.test", "/docs/guide?v=1");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/docs/guide/?v=1"));
    let r = get(b.http, "docs.test", "/docs/guide/");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"guide"[..]));
    // The mount point itself, without its slash, goes to the slash form too.
    let r = get(b.http, "docs.test", "/docs?v=2");
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("/docs/?v=2"));
}
