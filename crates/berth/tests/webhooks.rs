//! Issue 4 item 2: signed push webhooks (`POST /hooks/{github,gitea,gitlab}`) against the real
//! binary, with raw bytes over TCP: the W1–W3 battery as a table, then a push per provider from
//! a real git repository (`file://`) that the app then serves, and the pushes that must build
//! nothing (wrong token, another branch, another repository).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::{parse_response, Resp, BIN};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::Path;
use std::process::Command;
use test_support::{raw, write_file, Berth};

/// GitHub's documented test vector.
const W1_SECRET: &str = "It's a Secret to Everybody";
const W1_BODY: &[u8] = b"Hello, World!";
const W1_SIG: &str = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
/// HMAC-SHA1 of the same body with the same secret (what `X-Hub-Signature` carries).
const W1_SHA1: &str = "sha1=01dc10d0c83e72ed246219cdd91669667fe2ca59";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The hex HMAC-SHA256 of `body` keyed with `secret`.
fn hmac256(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex(&mac.finalize().into_bytes())
}

/// A raw HTTP/1.1 POST of `body` to `path` with `headers`.
fn post_bytes(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Send raw request bytes to berth's admin listener; the parsed response and its JSON body.
fn send(b: &Berth, bytes: &[u8]) -> (Resp, Value) {
    let r = parse_response(&raw(b.admin, bytes, common::T));
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
    (r, v)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args([
            "-c",
            "user.name=Ada Lovelace",
            "-c",
            "user.email=ada@example.org",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work repository with a static site on `main`; its `file://` URL.
fn work_repo(b: &Berth, name: &str, content: &str) -> (std::path::PathBuf, String) {
    let dir = tmpdir(b, name);
    git(&dir, &["init", "--quiet", "-b", "main"]);
    commit(&dir, content, "first version");
    let url = format!("file://{}", dir.display());
    (dir, url)
}

/// Commit `index.html` with `content` on the current branch; the commit id.
fn commit(dir: &Path, content: &str, message: &str) -> String {
    write_file(&dir.join("index.html"), content.as_bytes());
    git(dir, &["add", "."]);
    git(dir, &["commit", "--quiet", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// `PUT /api/v1/apps/{app}/repo`; the answer (with the secret).
fn connect(b: &Berth, app: &str, body: Value) -> Value {
    let (st, v) = api(
        b,
        "PUT",
        &format!("/api/v1/apps/{app}/repo"),
        &body.to_string(),
    );
    assert_eq!(st, 200, "{v}");
    v
}

fn deploys(b: &Berth, app: &str) -> Vec<Value> {
    let (st, v) = api(b, "GET", &format!("/api/v1/apps/{app}/deploys"), "");
    assert_eq!(st, 200, "{v}");
    v.as_array().unwrap().clone()
}

/// A GitHub push delivery of `body`, signed with `secret`, with delivery id `delivery`.
fn deliver_github(b: &Berth, secret: &str, body: &[u8], delivery: &str) -> (Resp, Value) {
    let sig = format!("sha256={}", hmac256(secret, body));
    send(
        b,
        &post_bytes(
            "/hooks/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
            ],
            body,
        ),
    )
}

/// A GitHub (and Gitea: same shape) push payload.
fn github_push(url: &str, branch: &str, sha: &str, message: &str) -> Vec<u8> {
    json!({
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "deleted": false,
        "repository": { "full_name": "ada/site", "clone_url": url, "html_url": "https://example.com/ada/site" },
        "head_commit": { "id": sha, "message": format!("{message}\n\nmore"), "author": { "name": "Ada Lovelace", "email": "ada@example.org" } },
        "pusher": { "name": "ada" },
    })
    .to_string()
    .into_bytes()
}

fn gitlab_push(url: &str, branch: &str, sha: &str, message: &str) -> Vec<u8> {
    json!({
        "object_kind": "push",
        "ref": format!("refs/heads/{branch}"),
        "before": "0000000000000000000000000000000000000000",
        "after": sha,
        "checkout_sha": sha,
        "user_name": "Ada Lovelace",
        "project": { "git_http_url": url, "git_ssh_url": "git@example.com:ada/site.git", "web_url": "https://example.com/ada/site" },
        "commits": [{ "id": sha, "message": message, "author": { "name": "Ada Lovelace", "email": "ada@example.org" } }],
    })
    .to_string()
    .into_bytes()
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// A piece of the JSON answer.
    answer: &'static str,
}

/// W1–W3: GitHub's test vector is accepted and builds nothing; a changed body, a truncated or
/// missing signature and SHA-1 only are 401 before any parsing, and record nothing; the same
/// delivery twice builds once.
#[test]
fn battery_w1_to_w3() {
    let b = Berth::start(BIN, "");
    let (dir, url) = work_repo(&b, "work", "<h1>webhook v1</h1>\n");
    let sha = git(&dir, &["rev-parse", "HEAD"]);
    create_app(&b, "site");
    create_app(&b, "other");
    let v = connect(&b, "site", json!({ "url": url, "secret": W1_SECRET }));
    assert_eq!(v["secret"], W1_SECRET, "{v}");
    assert_eq!(v["branch"], "main", "{v}");
    // The URL to give the provider is the API host behind the proxy, over HTTPS.
    let hook_url = format!(
        "https://berth.localhost:{}/hooks/github?app=site",
        b.https.port()
    );
    assert_eq!(v["webhook_urls"]["github"], hook_url.as_str(), "{v}");
    let r = common::curl_https_resp(
        &b,
        "berth.localhost",
        "/hooks/github?app=site",
        &[
            "-X",
            "POST",
            "-H",
            &format!("X-Hub-Signature-256: {W1_SIG}"),
            "-H",
            "X-GitHub-Event: ping",
            "--data-binary",
            "Hello, World!",
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("ignored"), "{}", r.text());
    // A secret shorter than 16 bytes is refused.
    let (st, e) = api(
        &b,
        "PUT",
        "/api/v1/apps/other/repo",
        &json!({ "url": url, "secret": "short" }).to_string(),
    );
    assert_eq!(st, 422, "{e}");

    let gh = |sig: Option<(&str, &str)>, event: &str, delivery: &str, body: &[u8]| {
        let mut h = vec![("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)];
        h.extend(sig);
        post_bytes("/hooks/github", &h, body)
    };
    let truncated = &W1_SIG[..W1_SIG.len() - 2];
    let odd = &W1_SIG[..W1_SIG.len() - 1];
    let push = github_push(&url, "main", &sha, "first version");
    let push_sig = format!("sha256={}", hmac256(W1_SECRET, &push));
    let mut changed = push.clone();
    let i = changed.iter().position(|&c| c == b'm').unwrap();
    changed[i] = b'n';
    let cases = vec![
        Case {
            name: "W1 test vector, ping",
            request: gh(
                Some(("X-Hub-Signature-256", W1_SIG)),
                "ping",
                "w1-a",
                W1_BODY,
            ),
            status: 200,
            answer: "ignored",
        },
        Case {
            name: "W1 test vector, no event header",
            request: post_bytes("/hooks/github", &[("X-Hub-Signature-256", W1_SIG)], W1_BODY),
            status: 200,
            answer: "ignored",
        },
        Case {
            name: "W1 test vector, ?app=site",
            request: gh(
                Some(("X-Hub-Signature-256", W1_SIG)),
                "ping",
                "w1-b",
                W1_BODY,
            )
            .replace_path("/hooks/github?app=site"),
            status: 200,
            answer: "ignored",
        },
        Case {
            name: "W2 body changed by one byte",
            request: gh(
                Some(("X-Hub-Signature-256", W1_SIG)),
                "ping",
                "w2",
                b"Hello, World?",
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 push body changed by one byte",
            request: gh(
                Some(("X-Hub-Signature-256", &push_sig)),
                "push",
                "w2",
                &changed,
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 truncated signature",
            request: gh(
                Some(("X-Hub-Signature-256", truncated)),
                "ping",
                "w2",
                W1_BODY,
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 odd-length signature",
            request: gh(Some(("X-Hub-Signature-256", odd)), "ping", "w2", W1_BODY),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 empty signature",
            request: gh(Some(("X-Hub-Signature-256", "")), "ping", "w2", W1_BODY),
            status: 401,
            answer: "X-Hub-Signature-256",
        },
        Case {
            name: "W2 missing signature",
            request: gh(None, "push", "w2", &push),
            status: 401,
            answer: "X-Hub-Signature-256",
        },
        Case {
            name: "W2 sha1 only",
            request: gh(Some(("X-Hub-Signature", W1_SHA1)), "ping", "w2", W1_BODY),
            status: 401,
            answer: "SHA-1",
        },
        Case {
            name: "W2 sha1 in the sha256 header",
            request: gh(
                Some(("X-Hub-Signature-256", W1_SHA1)),
                "ping",
                "w2",
                W1_BODY,
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 not JSON, wrong signature: refused before parsing",
            request: gh(
                Some(("X-Hub-Signature-256", W1_SIG)),
                "push",
                "w2",
                b"{not json",
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 signed for another app (?app=other)",
            request: gh(Some(("X-Hub-Signature-256", W1_SIG)), "ping", "w2", W1_BODY)
                .replace_path("/hooks/github?app=other"),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 truncated Gitea signature",
            request: post_bytes(
                "/hooks/gitea",
                &[
                    ("X-Gitea-Signature", &W1_SIG[7..W1_SIG.len() - 1]),
                    ("X-Gitea-Event", "push"),
                ],
                W1_BODY,
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W2 GitLab token wrong",
            request: post_bytes(
                "/hooks/gitlab",
                &[
                    ("X-Gitlab-Token", "It's a Secret to Everybodz"),
                    ("X-Gitlab-Event", "Push Hook"),
                ],
                &gitlab_push(&url, "main", &sha, "x"),
            ),
            status: 401,
            answer: "signature does not match",
        },
        Case {
            name: "W3 push, first delivery",
            request: gh(
                Some(("X-Hub-Signature-256", &push_sig)),
                "push",
                "w3",
                &push,
            ),
            status: 202,
            answer: "\"deploys\"",
        },
        Case {
            name: "W3 push, same delivery again",
            request: gh(
                Some(("X-Hub-Signature-256", &push_sig)),
                "push",
                "w3",
                &push,
            ),
            status: 200,
            answer: "\"duplicate\":true",
        },
        Case {
            name: "W2 recorded nothing: its delivery id is new",
            request: gh(Some(("X-Hub-Signature-256", W1_SIG)), "ping", "w2", W1_BODY),
            status: 200,
            answer: "ignored",
        },
    ];
    let mut failures = Vec::new();
    let mut build = None;
    for c in &cases {
        let (r, v) = send(&b, &c.request);
        let text = v.to_string();
        if r.status != c.status || !text.contains(c.answer) {
            failures.push(format!(
                "{}: want {} with {:?}, got {} {text}",
                c.name, c.status, c.answer, r.status
            ));
        }
        if c.name.starts_with("W2") && !c.name.contains("recorded nothing") {
            // Nothing ran: no deploy of either app.
            assert!(deploys(&b, "site").is_empty(), "{}: a deploy", c.name);
        }
        if c.name == "W3 push, first delivery" {
            build = v["deploys"][0]["id"].as_i64();
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // W3: one build, of that commit.
    let id = build.expect("the first W3 delivery names its build");
    let fin = wait_deploy(&b, "site", id);
    assert_eq!(fin["status"], "succeeded", "{fin}\n{}", b.stderr());
    assert_eq!(fin["trigger"], "webhook", "{fin}");
    assert_eq!(fin["commit"]["sha"], sha.as_str(), "{fin}");
    assert_eq!(fin["commit"]["branch"], "main", "{fin}");
    assert_eq!(fin["commit"]["message"], "first version", "{fin}");
    assert_eq!(
        fin["commit"]["author"], "Ada Lovelace <ada@example.org>",
        "{fin}"
    );
    wait_body(&b, "site", "webhook v1");
    let all = deploys(&b, "site");
    assert_eq!(all.len(), 1, "one build only: {all:?}");
    assert!(deploys(&b, "other").is_empty());
}

trait ReplacePath {
    fn replace_path(self, path: &str) -> Vec<u8>;
}

impl ReplacePath for Vec<u8> {
    /// Replace the request target of a raw request.
    fn replace_path(self, path: &str) -> Vec<u8> {
        let text = String::from_utf8(self).unwrap();
        let (line, rest) = text.split_once("\r\n").unwrap();
        let method = line.split(' ').next().unwrap();
        format!("{method} {path} HTTP/1.1\r\n{rest}").into_bytes()
    }
}

/// One app per provider, connected to the same repository with its own generated secret: each
/// provider's push builds its app only, from the pushed commit; the pushes that must build
/// nothing build nothing.
#[test]
fn a_push_from_each_provider_deploys_its_commit() {
    let b = Berth::start(BIN, "");
    let (dir, url) = work_repo(&b, "work", "<h1>provider v1</h1>\n");
    let v1 = git(&dir, &["rev-parse", "HEAD"]);
    let mut secrets = std::collections::HashMap::new();
    for app in ["gh", "gt", "gl"] {
        create_app(&b, app);
        let v = connect(&b, app, json!({ "url": url, "branch": "main" }));
        let secret = v["secret"].as_str().unwrap().to_string();
        assert_eq!(secret.len(), 64, "{v}");
        assert!(
            v["webhook_urls"]["github"]
                .as_str()
                .unwrap()
                .ends_with("/hooks/github?app=gh")
                || app != "gh",
            "{v}"
        );
        secrets.insert(app, secret);
    }
    // GET shows the repository without the secret.
    let (st, v) = api(&b, "GET", "/api/v1/apps/gh/repo", "");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["url"], url.as_str());
    assert!(v.get("secret").is_none(), "{v}");
    assert!(!v.to_string().contains(&secrets["gh"]), "{v}");

    // GitHub.
    let body = github_push(&url, "main", &v1, "first version");
    let sig = format!("sha256={}", hmac256(&secrets["gh"], &body));
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "gh-1"),
            ],
            &body,
        ),
    );
    assert_eq!(r.status, 202, "{v}");
    let list = v["deploys"].as_array().unwrap();
    assert_eq!(list.len(), 1, "only the app whose secret signed it: {v}");
    assert_eq!(list[0]["app"], "gh", "{v}");
    let fin = wait_deploy(&b, "gh", list[0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "succeeded", "{fin}\n{}", b.stderr());
    wait_body(&b, "gh", "provider v1");

    // Gitea / Forgejo, with a new commit.
    let v2 = commit(&dir, "<h1>provider v2</h1>\n", "second version");
    let body = github_push(&url, "main", &v2, "second version");
    let sig = hmac256(&secrets["gt"], &body);
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/gitea",
            &[
                ("X-Gitea-Signature", &sig),
                ("X-Gitea-Event", "push"),
                ("X-Gitea-Delivery", "gt-1"),
            ],
            &body,
        ),
    );
    assert_eq!(r.status, 202, "{v}");
    assert_eq!(v["deploys"][0]["app"], "gt", "{v}");
    let fin = wait_deploy(&b, "gt", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "succeeded", "{fin}");
    assert_eq!(fin["commit"]["sha"], v2.as_str(), "{fin}");
    wait_body(&b, "gt", "provider v2");

    // GitLab builds the commit it names (still the tip of main).
    let body = gitlab_push(&url, "main", &v2, "second version");
    let bad = post_bytes(
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Token", &secrets["gh"]),
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", "gl-1"),
        ],
        &body,
    )
    .replace_path("/hooks/gitlab?app=gl");
    let (r, v) = send(&b, &bad);
    assert_eq!(r.status, 401, "another app's token for ?app=gl: {v}");
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/gitlab",
            &[
                ("X-Gitlab-Token", "not the token at all"),
                ("X-Gitlab-Event", "Push Hook"),
            ],
            &body,
        ),
    );
    assert_eq!(r.status, 401, "{v}");
    assert!(deploys(&b, "gl").is_empty());
    let ok = post_bytes(
        "/hooks/gitlab",
        &[
            ("X-Gitlab-Token", &secrets["gl"]),
            ("X-Gitlab-Event", "Push Hook"),
            ("X-Gitlab-Event-UUID", "gl-1"),
            ("Idempotency-Key", "gl-key-1"),
        ],
        &body,
    );
    let (r, v) = send(&b, &ok);
    assert_eq!(r.status, 202, "{v}");
    let fin = wait_deploy(&b, "gl", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "succeeded", "{fin}");
    wait_body(&b, "gl", "provider v2");
    let (r, v) = send(&b, &ok);
    assert_eq!(
        (r.status, v["duplicate"].as_bool()),
        (200, Some(true)),
        "{v}"
    );
    assert_eq!(deploys(&b, "gl").len(), 1);
    let v3 = commit(&dir, "<h1>provider v3</h1>\n", "third version");

    // A push to another branch builds nothing (previews are off).
    git(&dir, &["checkout", "--quiet", "-b", "feature"]);
    let f1 = commit(&dir, "<h1>feature</h1>\n", "feature work");
    let before = deploys(&b, "gh").len();
    let body = github_push(&url, "feature", &f1, "feature work");
    let sig = format!("sha256={}", hmac256(&secrets["gh"], &body));
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "gh-2"),
            ],
            &body,
        ),
    );
    assert_eq!(r.status, 200, "{v}");
    assert!(v["ignored"].is_string(), "{v}");
    assert_eq!(deploys(&b, "gh").len(), before);

    // A deleted branch: its preview goes (there is none here); the deploy branch stays.
    let gh_hook = |delivery: &str, body: &[u8]| {
        let sig = format!("sha256={}", hmac256(&secrets["gh"], body));
        post_bytes(
            "/hooks/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
            ],
            body,
        )
    };
    let zero = "0000000000000000000000000000000000000000";
    let mut deleted: Value =
        serde_json::from_slice(&github_push(&url, "feature", zero, "x")).unwrap();
    deleted["deleted"] = true.into();
    deleted["head_commit"] = Value::Null;
    let (r, v) = send(&b, &gh_hook("gh-del-1", deleted.to_string().as_bytes()));
    assert_eq!(r.status, 202, "{v}");
    assert_eq!(v["deleted_branch"], "feature", "{v}");
    deleted["ref"] = "refs/heads/main".into();
    let (r, v) = send(&b, &gh_hook("gh-del-2", deleted.to_string().as_bytes()));
    assert_eq!(r.status, 200, "{v}");
    assert!(
        v["ignored"].as_str().unwrap().contains("deploy branch"),
        "{v}"
    );
    wait_body(&b, "gh", "provider v1");
    assert_eq!(deploys(&b, "gh").len(), before);

    // With previews on, another branch deploys its preview.
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/gh/settings",
        &json!({ "previews": true }).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let body = github_push(&url, "feature", &f1, "feature work");
    let (r, v) = send(&b, &gh_hook("gh-4", &body));
    assert_eq!(r.status, 202, "{v}");
    assert_eq!(v["previews"][0]["branch"], "feature", "{v}");
    assert_eq!(
        deploys(&b, "gh").len(),
        before,
        "the app itself is not rebuilt"
    );
    wait_body(&b, "feature--gh", "<h1>feature</h1>");
    // Deleting the branch destroys its preview.
    deleted["ref"] = "refs/heads/feature".into();
    let (r, v) = send(&b, &gh_hook("gh-del-3", deleted.to_string().as_bytes()));
    assert_eq!(r.status, 202, "{v}");
    test_support::eventually(T, "the preview to be destroyed", || {
        let (st, _) = api(&b, "GET", "/api/v1/apps/feature--gh", "");
        (st == 404).then_some(())
    });

    // A payload for another repository builds nothing, even signed with the app's secret.
    let body = github_push("https://example.com/else/where.git", "main", &v3, "x");
    let body = String::from_utf8(body)
        .unwrap()
        .replace(
            "https://example.com/ada/site",
            "https://example.com/else/where",
        )
        .into_bytes();
    let sig = format!("sha256={}", hmac256(&secrets["gh"], &body));
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/github",
            &[
                ("X-Hub-Signature-256", &sig),
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "gh-3"),
            ],
            &body,
        ),
    );
    assert_eq!(r.status, 200, "{v}");
    assert!(v["ignored"].is_string(), "{v}");
    assert_eq!(deploys(&b, "gh").len(), before);

    // A repository that cannot be fetched fails the build with git's message.
    create_app(&b, "gone");
    let missing = format!("file://{}/nowhere", b.path("").display());
    let s = connect(&b, "gone", json!({ "url": missing }))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let body = github_push(&missing, "main", &v1, "x");
    let (r, v) = deliver_github(&b, &s, &body, "gone-1");
    assert_eq!(r.status, 202, "{v}");
    let fin = wait_deploy(&b, "gone", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "failed", "{fin}");
    assert!(
        fin["reason"].as_str().unwrap().contains("git fetch failed"),
        "{fin}"
    );

    // Disconnected: the old secret no longer matches.
    let (st, v) = api(&b, "DELETE", "/api/v1/apps/gh/repo", "");
    assert_eq!(st, 204, "{v}");
    let (st, _) = api(&b, "GET", "/api/v1/apps/gh/repo", "");
    assert_eq!(st, 404);
    let body = github_push(&url, "main", &v3, "third version");
    let sig = format!("sha256={}", hmac256(&secrets["gh"], &body));
    let (r, v) = send(
        &b,
        &post_bytes(
            "/hooks/github",
            &[("X-Hub-Signature-256", &sig), ("X-GitHub-Event", "push")],
            &body,
        ),
    );
    assert_eq!(r.status, 401, "{v}");
}

/// A captured delivery sent again with a fresh delivery id (the signature covers the body
/// only) must not roll the app back: berth builds a push only while its commit is still the
/// tip of the branch when it fetches.
#[test]
fn a_replayed_delivery_never_rolls_the_app_back() {
    let b = Berth::start(BIN, "");
    let (dir, url) = work_repo(&b, "work", "<h1>replay v1</h1>\n");
    let v1 = git(&dir, &["rev-parse", "HEAD"]);
    create_app(&b, "site");
    let secret = connect(&b, "site", json!({ "url": url }))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let deliver = |body: &[u8], delivery: &str| {
        let sig = format!("sha256={}", hmac256(&secret, body));
        send(
            &b,
            &post_bytes(
                "/hooks/github",
                &[
                    ("X-Hub-Signature-256", &sig),
                    ("X-GitHub-Event", "push"),
                    ("X-GitHub-Delivery", delivery),
                ],
                body,
            ),
        )
    };
    let first = github_push(&url, "main", &v1, "first version");
    let (r, v) = deliver(&first, "replay-1");
    assert_eq!(r.status, 202, "{v}");
    let fin = wait_deploy(&b, "site", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "succeeded", "{fin}");
    wait_body(&b, "site", "replay v1");

    let v2 = commit(&dir, "<h1>replay v2</h1>\n", "second version");
    let (r, v) = deliver(
        &github_push(&url, "main", &v2, "second version"),
        "replay-2",
    );
    assert_eq!(r.status, 202, "{v}");
    let fin = wait_deploy(&b, "site", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "succeeded", "{fin}");
    wait_body(&b, "site", "replay v2");

    // The first push's body again, under a new delivery id.
    let (r, v) = deliver(&first, "replay-3");
    assert!(r.status < 300, "{} {v}", r.status);
    if let Some(id) = v["deploys"][0]["id"].as_i64() {
        let fin = wait_deploy(&b, "site", id);
        assert_ne!(fin["status"], "succeeded", "the replay was built: {fin}");
        let reason = fin["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("tip"), "says why: {fin}");
    }
    let (st, body) = app_get(&b, "site", "/");
    assert_eq!(st, 200);
    assert!(body.contains("replay v2"), "rolled back: {body}");
    let built_v1: Vec<Value> = deploys(&b, "site")
        .into_iter()
        .filter(|d| {
            d["commit"]["sha"] == v1.as_str()
                && d["status"] != "superseded"
                && d["status"] != "failed"
        })
        .collect();
    assert_eq!(built_v1.len(), 1, "v1 was built once only: {built_v1:?}");
    let (_, releases) = api(&b, "GET", "/api/v1/apps/site/releases", "");
    assert_eq!(releases.as_array().unwrap().len(), 2, "{releases}");
}

/// The same delivery replayed (with fresh delivery ids) while its build is still running is
/// not recorded again: it cannot supersede that build, however often it comes.
#[test]
fn a_delivery_replayed_while_it_builds_does_not_supersede_its_build() {
    let b = Berth::start(BIN, "");
    let (dir, url) = work_repo(&b, "work", "<h1>slow v1</h1>\n");
    write_file(&dir.join("berth.toml"), b"[build]\ncommand = \"sleep 2\"\n");
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "--quiet", "-m", "a slow build"]);
    let sha = git(&dir, &["rev-parse", "HEAD"]);
    create_app(&b, "slow");
    let secret = connect(&b, "slow", json!({ "url": url }))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let body = github_push(&url, "main", &sha, "a slow build");
    let (r, v) = deliver_github(&b, &secret, &body, "slow-1");
    assert_eq!(r.status, 202, "{v}");
    let id = v["deploys"][0]["id"].as_i64().unwrap();
    for n in 2..5 {
        let (r, v) = deliver_github(&b, &secret, &body, &format!("slow-{n}"));
        assert!(r.status < 300, "{} {v}", r.status);
        assert!(
            v["deploys"].as_array().is_none_or(|d| d.is_empty()),
            "recorded again: {v}"
        );
        assert!(
            v.to_string()
                .contains(&format!("already being built as deploy {id}")),
            "{v}"
        );
    }
    let fin = wait_deploy(&b, "slow", id);
    assert_eq!(fin["status"], "succeeded", "{fin}");
    wait_body(&b, "slow", "slow v1");
    assert_eq!(deploys(&b, "slow").len(), 1);
}

/// Credentials in a repository URL (`https://user:token@host/…`) are used for fetching and
/// never shown again: not in the connect answer, the app, the repository or the settings, to a
/// deploy token or to an admin, nor by the CLI.
#[test]
fn repository_credentials_are_never_shown() {
    let b = Berth::start(BIN, "");
    create_app(&b, "site");
    let secret_url = "https://ada:s3cr3t-t0ken@93.184.216.34/ada/site.git";
    let (st, v) = api(
        &b,
        "PUT",
        "/api/v1/apps/site/repo",
        &json!({ "url": secret_url }).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    let mut failures = Vec::new();
    if v.to_string().contains("s3cr3t") {
        failures.push(format!("PUT answer: {v}"));
    }
    if v["url"] != "https://93.184.216.34/ada/site.git" {
        failures.push(format!("PUT answer's url: {v}"));
    }
    let (st, t) = api(
        &b,
        "POST",
        "/api/v1/tokens",
        &json!({ "name": "ci", "scope": "deploy", "apps": ["site"] }).to_string(),
    );
    assert_eq!(st, 201, "{t}");
    let deploy_token = t["token"].as_str().unwrap().to_string();
    for (who, token) in [
        ("deploy token", deploy_token.as_str()),
        ("admin", b.token.as_str()),
    ] {
        for path in [
            "/api/v1/apps/site",
            "/api/v1/apps/site/repo",
            "/api/v1/apps",
        ] {
            let r = get_as(&b, token, path);
            assert_eq!(r.status, 200, "{who} {path}: {}", r.text());
            if r.text().contains("s3cr3t") || r.text().contains("ada:") {
                failures.push(format!("{who} GET {path}: {}", r.text()));
            }
        }
    }
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/site/settings",
        &json!({ "previews": true }).to_string(),
    );
    assert_eq!(st, 200, "{v}");
    if v.to_string().contains("s3cr3t") {
        failures.push(format!("PATCH settings: {v}"));
    }
    for args in [&["apps:info", "site"][..], &["apps:settings", "site"][..]] {
        let out = cli(&b, args);
        assert!(out.status.success(), "berth {args:?}: {}", text(&out));
        if text(&out).contains("s3cr3t") {
            failures.push(format!("berth {args:?}: {}", text(&out)));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Repository and notification URLs: berth connects only to public addresses (checked on an IP
/// literal or on every address a name resolves to), a repository only over https; an admin
/// and a deploy token are refused alike (422 with a hint), unless `[server]
/// allow_private_hosts` names the host.
#[test]
fn repository_and_notification_urls_must_be_public() {
    let b = Berth::start(BIN, "");
    create_app(&b, "site");
    let (st, t) = api(
        &b,
        "POST",
        "/api/v1/tokens",
        &json!({ "name": "ci", "scope": "deploy", "apps": ["site"] }).to_string(),
    );
    assert_eq!(st, 201, "{t}");
    let deploy_token = t["token"].as_str().unwrap().to_string();
    let repo = |token: &str, url: &str| {
        api_as(
            &b,
            token,
            "PUT",
            "/api/v1/apps/site/repo",
            "application/json",
            json!({ "url": url }).to_string().as_bytes(),
        )
    };
    let notify = |token: &str, url: &str| {
        api_as(
            &b,
            token,
            "POST",
            "/api/v1/notifications",
            "application/json",
            json!({ "url": url, "app": "site" }).to_string().as_bytes(),
        )
    };
    // (url, refused as a repository, refused as a notification target, a word of the
    // repository's hint or error)
    let cases: &[(&str, bool, bool, &str)] = &[
        ("http://127.0.0.1/x.git", true, true, "https"),
        ("https://127.0.0.1/x.git", true, true, "allow_private_hosts"),
        ("https://10.1.2.3/", true, true, "allow_private_hosts"),
        (
            "https://172.16.0.1/x.git",
            true,
            true,
            "allow_private_hosts",
        ),
        (
            "https://192.168.1.1/x.git",
            true,
            true,
            "allow_private_hosts",
        ),
        (
            "https://100.64.0.1/x.git",
            true,
            true,
            "allow_private_hosts",
        ),
        ("https://[::1]/", true, true, "allow_private_hosts"),
        ("https://[fd00::1]/x.git", true, true, "allow_private_hosts"),
        ("https://[fe80::1]/x.git", true, true, "allow_private_hosts"),
        (
            "https://[::ffff:127.0.0.1]/x.git",
            true,
            true,
            "allow_private_hosts",
        ),
        (
            "https://169.254.169.254/",
            true,
            true,
            "allow_private_hosts",
        ),
        ("https://localhost/", true, true, "allow_private_hosts"),
        ("https://0.0.0.0/", true, true, "allow_private_hosts"),
        ("https://224.0.0.1/x.git", true, true, "allow_private_hosts"),
        (
            "https://2130706433/x.git",
            true,
            true,
            "allow_private_hosts",
        ),
        ("git://example.com/x.git", true, true, "https"),
        ("ssh://git@example.com/x.git", true, true, "ssh"),
        ("git@example.com:x.git", true, true, "ssh"),
        ("http://93.184.216.34/x.git", true, false, "https"),
        ("https://93.184.216.34/x.git", false, false, ""),
        (
            "https://[2606:2800:220:1:248:1893:25c8:1946]/x.git",
            false,
            false,
            "",
        ),
    ];
    let mut failures = Vec::new();
    for (who, token) in [
        ("admin", b.token.as_str()),
        ("deploy token", deploy_token.as_str()),
    ] {
        for &(url, repo_refused, notify_refused, hint) in cases {
            // A notification URL may be http://; its refusals have hints of their own.
            for (what, refused, hint, (st, v)) in [
                ("repository", repo_refused, hint, repo(token, url)),
                ("notification", notify_refused, "", notify(token, url)),
            ] {
                let ok = if refused {
                    st == 422
                        && v["hint"].as_str().is_some_and(|h| {
                            h.contains(hint) || v["error"].as_str().unwrap_or("").contains(hint)
                        })
                } else {
                    st == 200 || st == 201
                };
                if !ok {
                    failures.push(format!("{who}, {what} {url}: {st} {v}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // An admin may allow named hosts.
    let b = Berth::start_with(
        BIN,
        "allow_private_hosts = [\"127.0.0.1\", \"git.internal.example\", \"::1\"]",
        &[],
        "",
    );
    create_app(&b, "site");
    for url in [
        "https://127.0.0.1:8443/x.git",
        "https://[::1]/x.git",
        "https://git.internal.example/x.git",
    ] {
        let (st, v) = api(
            &b,
            "PUT",
            "/api/v1/apps/site/repo",
            &json!({ "url": url }).to_string(),
        );
        assert_eq!(st, 200, "{url}: {v}");
    }
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/notifications",
        &json!({ "url": "http://127.0.0.1:9/h" }).to_string(),
    );
    assert_eq!(st, 201, "{v}");
    let (st, v) = api(
        &b,
        "PUT",
        "/api/v1/apps/site/repo",
        &json!({ "url": "https://10.1.2.3/x.git" }).to_string(),
    );
    assert_eq!(st, 422, "only the named hosts: {v}");

    // Checked again when fetching: connected while allowed, refused once it is not.
    let mut b = b;
    let url = "https://127.0.0.1:1/x.git";
    let secret = connect(&b, "site", json!({ "url": url }))["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let config = std::fs::read_to_string(&b.config_path).unwrap();
    let config: String = config
        .lines()
        .filter(|l| !l.starts_with("allow_private_hosts"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&b.config_path, config).unwrap();
    b.crash_and_restart(BIN);
    let body = github_push(url, "main", &"a".repeat(40), "x");
    let (r, v) = deliver_github(&b, &secret, &body, "private-1");
    assert_eq!(r.status, 202, "{v}");
    let fin = wait_deploy(&b, "site", v["deploys"][0]["id"].as_i64().unwrap());
    assert_eq!(fin["status"], "failed", "{fin}");
    assert!(
        fin["reason"]
            .as_str()
            .unwrap()
            .contains("allow_private_hosts"),
        "{fin}"
    );
}

/// `berth apps:connect` prints the secret and the webhook URLs once; `apps:disconnect`.
#[test]
fn cli_connect_and_disconnect() {
    let b = Berth::start(BIN, "");
    create_app(&b, "hello");
    let out = cli(
        &b,
        &[
            "apps:connect",
            "hello",
            "--repo",
            "https://github.com/ada/hello.git",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("/hooks/github?app=hello"), "{}", text(&out));
    assert!(stdout.contains("/hooks/gitlab?app=hello"), "{}", text(&out));
    let secret = stdout
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret: "))
        .unwrap_or_else(|| panic!("{}", text(&out)));
    assert_eq!(secret.len(), 64, "{}", text(&out));
    // The secret is never in the audit log.
    let (_, audit) = api(&b, "GET", "/api/v1/audit", "");
    assert!(!audit.to_string().contains(secret), "{audit}");
    let (st, v) = api(&b, "GET", "/api/v1/apps/hello/repo", "");
    assert_eq!((st, v["branch"].as_str()), (200, Some("main")), "{v}");
    let out = cli(&b, &["apps:disconnect", "hello"]);
    assert!(out.status.success(), "{}", text(&out));
    let (st, _) = api(&b, "GET", "/api/v1/apps/hello/repo", "");
    assert_eq!(st, 404);
    // Bad input.
    for body in [
        json!({ "url": "" }),
        json!({ "url": "-uhttps://x" }),
        json!({ "url": "ext::sh -c id" }),
        json!({ "url": "https://x/a.git", "branch": "a..b" }),
    ] {
        let (st, v) = api(&b, "PUT", "/api/v1/apps/hello/repo", &body.to_string());
        assert_eq!(st, 422, "{body}: {v}");
    }
}
