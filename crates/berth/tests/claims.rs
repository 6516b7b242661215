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
}
