//! Which hosts an app may claim as custom domains, tried with a deploy-only token: never an IP
//! address, the base domain, berth's own names, a name under another app, or a host an
//! operator route serves; and the local CA signs only what it should.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::{dead_addr, route, BIN};
use test_support::Berth;

#[test]
fn a_deploy_token_claims_only_hosts_that_are_free_and_its_own() {
    let dead = dead_addr();
    let routes = format!(
        "{}{}",
        route("ops.example.test", &[dead], ""),
        route("*.wild.example.test", &[dead], "")
    );
    let b = Berth::start_with(BIN, "domain = \"apps.test\"", &[], &routes);
    create_app(&b, "a");
    create_app(&b, "other");
    let token = deploy_token(&b, "a");
    // `other` has a custom domain, given by an admin.
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/other/domains",
        r#"{"host":"shop.example.org"}"#,
    );
    assert!(st < 300, "{v}");
    let claim = |host: &str| -> (u16, String) {
        let body = serde_json::json!({ "host": host }).to_string();
        let (st, v) = api_as(
            &b,
            &token,
            "POST",
            "/api/v1/apps/a/domains",
            "application/json",
            body.as_bytes(),
        );
        (st, v.to_string())
    };
    // (host, status, why)
    let cases: &[(&str, u16, &str)] = &[
        ("127.0.0.1", 422, "an IPv4 address"),
        ("10.1.2.3", 422, "a private IPv4 address"),
        ("apps.test", 409, "the base domain itself"),
        ("other.apps.test", 409, "another app's own name"),
        ("x.other.apps.test", 409, "a name under another app"),
        ("deep.x.other.apps.test", 409, "deeper under another app"),
        ("berth.apps.test", 409, "the API host"),
        ("git.berth.apps.test", 409, "under the API host"),
        ("ops.example.test", 409, "an operator's exact route"),
        ("foo.wild.example.test", 409, "an operator's wildcard route"),
        (
            "x.shop.example.org",
            409,
            "a name under another app's custom domain",
        ),
        (
            "example.org",
            409,
            "the domain above another app's custom domain",
        ),
        ("x.a.apps.test", 201, "a name under its own app"),
        ("www.example.com", 201, "a free domain"),
        (
            "deeper.foo.wild.example.test",
            201,
            "two labels under a wildcard is not it",
        ),
    ];
    let mut problems = Vec::new();
    for (host, want, why) in cases {
        let (st, body) = claim(host);
        if st != *want {
            problems.push(format!("{host} ({why}): {st} {body}, want {want}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Taken by `a`: the other app cannot have it too.
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/other/domains",
        r#"{"host":"www.example.com"}"#,
    );
    assert_eq!(st, 409, "{v}");
    // An admin may put related names on two apps (example.org and api.example.org).
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/a/domains",
        r#"{"host":"api.shop.example.org"}"#,
    );
    assert_eq!(st, 201, "{v}");
}

/// A deploy token reaches its own app's previews, and no app whose name merely ends like one
/// of them: a long app's previews have its name cut, so `<x>--<a>` can be another app's.
#[test]
fn a_deploy_token_reaches_its_own_previews_only() {
    let b = Berth::start(BIN, "");
    let long = format!("{}-x", "a".repeat(52));
    let short = "a".repeat(52);
    for app in [long.as_str(), short.as_str()] {
        create_app(&b, app);
    }
    // Previews multiply an app's budgets: only an admin turns them on or sets how many.
    let own = deploy_token(&b, &long);
    for body in [r#"{"previews":true}"#, r#"{"preview_max":50}"#] {
        let (st, v) = api_as(
            &b,
            &own,
            "PATCH",
            &format!("/api/v1/apps/{long}/settings"),
            "application/json",
            body.as_bytes(),
        );
        assert_eq!(st, 403, "{body}: {v}");
    }
    let (st, v) = api(
        &b,
        "PATCH",
        &format!("/api/v1/apps/{long}/settings"),
        r#"{"previews":true}"#,
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = api(
        &b,
        "PATCH",
        &format!("/api/v1/apps/{long}/env"),
        r#"{"set":{"DBPASS":"long-app-secret"}}"#,
    );
    assert!(st < 300, "{v}");
    let src = tmpdir(&b, "site");
    test_support::write_file(&src.join("index.html"), b"preview\n");
    let (st, v) = api_as(
        &b,
        &b.token,
        "POST",
        &format!(
            "/api/v1/apps/{long}/deploys?trigger=git&branch=feature-branch-number-one&sha=1111&message=m&author=Ann"
        ),
        "application/gzip",
        &targz(&src),
    );
    assert_eq!(st, 202, "{v}");
    let preview = v["app"].as_str().unwrap().to_string();
    assert!(preview.ends_with(&format!("--{short}")), "{preview}");

    // The short app's token: not the long app's preview.
    let other = deploy_token(&b, &short);
    let path = format!("/api/v1/apps/{preview}/env?reveal=true");
    let (st, v) = api_as(&b, &other, "GET", &path, "application/json", b"");
    assert_eq!(st, 403, "{v}");
    assert!(!v.to_string().contains("long-app-secret"), "{v}");
    // The long app's token: its own preview, yes.
    let own = deploy_token(&b, &long);
    let (st, v) = api_as(&b, &own, "GET", &path, "application/json", b"");
    assert_eq!(st, 200, "{v}");
}

/// An app sets its own limits and step timeouts: it may not set them above the server's
/// maxima (it would lift its own confinement, or hold a shared build slot for days).
#[test]
fn an_app_cannot_ask_more_than_the_servers_maxima() {
    let b = Berth::start_with(
        BIN,
        "app_max_pids = 100\napp_max_memory = \"1GiB\"\nstep_max_timeout = \"10m\"",
        &[],
        "",
    );
    create_app(&b, "greedy");
    let token = deploy_token(&b, "greedy");
    let cases: &[(&str, u16, &str)] = &[
        ("[limits]\npids = 4000000\n", 422, "app_max_pids"),
        ("[limits]\nmemory = \"1000000GiB\"\n", 422, "app_max_memory"),
        (
            "[build]\ncommand = \"true\"\ntimeout = \"100h\"\n",
            422,
            "step_max_timeout",
        ),
        (
            "[test]\ncommand = \"true\"\ntimeout = \"11m\"\n",
            422,
            "step_max_timeout",
        ),
        ("[limits]\npids = 100\nmemory = \"1GiB\"\n", 202, ""),
    ];
    let mut problems = Vec::new();
    for (toml, want, names) in cases {
        let dir = tmpdir(&b, "greedy-src");
        test_support::write_file(&dir.join("index.html"), b"hi\n");
        test_support::write_file(
            &dir.join("berth.toml"),
            format!("[static]\ndir = \".\"\n{toml}").as_bytes(),
        );
        let (st, v) = api_as(
            &b,
            &token,
            "POST",
            "/api/v1/apps/greedy/deploys",
            "application/gzip",
            &targz(&dir),
        );
        if st != *want || !v.to_string().contains(names) {
            problems.push(format!("{toml:?}: {st} {v}, want {want} naming {names}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
