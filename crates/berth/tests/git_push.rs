//! Issue 4 item 1: `git push` deploys. The real `git` client pushes to the real binary's
//! `/git/<app>.git` (admin listener, and through the proxy over HTTPS): a push to the deploy
//! branch builds and deploys while it waits and shows the log as `remote:` lines; a failed
//! build rejects it; tokens are checked (Basic auth, scopes); clones work.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use test_support::{run, write_file, Berth};

/// `git <args>` in `dir`, with no user or system config and never a prompt.
fn git(b: &Berth, dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args([
            "-c",
            "user.name=Pat Pusher",
            "-c",
            "user.email=pat@example.org",
        ])
        .args(["-c", "init.defaultBranch=main", "-c", "credential.helper="])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", b.path("home"))
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .env_remove("GIT_DIR")
        // The environment may name another CA bundle; it would win over http.sslCAInfo.
        .env_remove("GIT_SSL_CAINFO")
        .env_remove("GIT_SSL_CAPATH")
        .env_remove("GIT_SSL_NO_VERIFY")
        .output()
        .unwrap()
}

/// `git` that must succeed; its stdout.
fn git_ok(b: &Berth, dir: &Path, args: &[&str]) -> String {
    let out = git(b, dir, args);
    assert!(out.status.success(), "git {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository URL of `app` on the admin listener, with `token` as the password.
fn remote(b: &Berth, token: &str, app: &str) -> String {
    format!("http://git:{token}@{}/git/{app}.git", b.admin)
}

/// A work tree with the Python app (tag `tag`) committed on `main`; the commit id.
fn work_tree(b: &Berth, name: &str, tag: &str) -> (std::path::PathBuf, String) {
    let dir = tmpdir(b, name);
    python_app(&dir, tag, 200);
    add_build(&dir, &format!("echo build-output-{tag}"));
    git_ok(b, &dir, &["init", "--quiet", "-b", "main"]);
    let sha = commit(b, &dir, &format!("first: {tag}"));
    (dir, sha)
}

/// Appends a `[build]` command to the app's berth.toml.
fn add_build(dir: &Path, command: &str) {
    let path = dir.join("berth.toml");
    let mut toml = std::fs::read_to_string(&path).unwrap();
    toml.push_str(&format!("[build]\ncommand = \"{command}\"\n"));
    write_file(&path, toml.as_bytes());
}

/// Commits everything in `dir`; the new commit id.
fn commit(b: &Berth, dir: &Path, message: &str) -> String {
    git_ok(b, dir, &["add", "-A"]);
    git_ok(b, dir, &["commit", "--quiet", "-m", message]);
    git_ok(b, dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// The commit `refs/heads/<branch>` points to on the server (`git ls-remote`), if any.
fn remote_sha(b: &Berth, url: &str, branch: &str) -> Option<String> {
    let out = git_ok(
        b,
        &b.path(""),
        &["ls-remote", url, &format!("refs/heads/{branch}")],
    );
    out.split_whitespace().next().map(str::to_string)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn deploys(b: &Berth, app: &str) -> Vec<Value> {
    let (st, v) = api(b, "GET", &format!("/api/v1/apps/{app}/deploys"), "");
    assert_eq!(st, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// A deploy token for `apps`; its secret.
fn deploy_token(b: &Berth, name: &str, apps: &[&str]) -> String {
    let body = serde_json::json!({ "name": name, "scope": "deploy", "apps": apps });
    let (st, v) = api(b, "POST", "/api/v1/tokens", &body.to_string());
    assert_eq!(st, 201, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// `curl` a URL on the admin listener: (status, headers and body).
fn curl_status(url: &str, extra: &[&str]) -> (u16, String) {
    let mut args = vec!["-sS", "--max-time", "20", "-i", "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let (ok, out, err) = run("curl", &args);
    assert!(ok, "curl {url}: {err}");
    let (all, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), all.to_string())
}

#[test]
fn push_to_the_deploy_branch_deploys_and_streams_the_log() {
    let b = Berth::start(BIN, "");
    create_app(&b, "web");
    let (src, sha1) = work_tree(&b, "src", "first");
    let url = remote(&b, &b.token, "web");

    let out = git(&b, &src, &["push", &url, "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("remote: build-output-first"),
        "the build log reaches the pusher: {err}"
    );
    assert!(
        err.contains("remote: berth: deployed web v1"),
        "the hook reports the release: {err}"
    );
    assert!(err.contains("web.localhost"), "the app's URL: {err}");
    wait_body(&b, "web", "first v1 web.1");
    assert_eq!(remote_sha(&b, &url, "main").as_deref(), Some(sha1.as_str()));
    let d = &deploys(&b, "web")[0];
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(d["trigger"], "git", "{d}");
    assert_eq!(d["commit"]["sha"], sha1.as_str(), "{d}");
    assert_eq!(d["commit"]["branch"], "main", "{d}");
    assert_eq!(d["commit"]["author"], "Pat Pusher <pat@example.org>", "{d}");
    assert_eq!(d["commit"]["message"], "first: first", "{d}");
    assert_eq!(d["actor"], "token:admin", "{d}");

    // A new commit redeploys; the switch is done when the push returns.
    python_app(&src, "second", 200);
    let sha2 = commit(&b, &src, "second");
    let out = git(&b, &src, &["push", &url, "main"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("remote: berth: deployed web v2"),
        "{}",
        text(&out)
    );
    let (st, body) = app_get(&b, "web", "/");
    assert_eq!(st, 200);
    assert!(body.starts_with("second v2"), "{body}");
    assert_eq!(remote_sha(&b, &url, "main").as_deref(), Some(sha2.as_str()));

    // A push of another branch (no previews) is accepted and deploys nothing.
    git_ok(&b, &src, &["checkout", "--quiet", "-b", "feature"]);
    write_file(&src.join("notes.txt"), b"wip\n");
    let sha3 = commit(&b, &src, "wip");
    let n = deploys(&b, "web").len();
    let out = git(&b, &src, &["push", &url, "feature"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("nothing deployed"), "{}", text(&out));
    assert_eq!(
        deploys(&b, "web").len(),
        n,
        "no deploy for a non-deploy branch"
    );
    assert_eq!(
        remote_sha(&b, &url, "feature").as_deref(),
        Some(sha3.as_str())
    );
    let (_, body) = app_get(&b, "web", "/");
    assert!(body.starts_with("second v2"), "{body}");

    // Deleting that branch is accepted; deleting the deploy branch is not.
    let out = git(&b, &src, &["push", &url, ":feature"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(remote_sha(&b, &url, "feature"), None);
    let out = git(&b, &src, &["push", &url, ":main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(remote_sha(&b, &url, "main").as_deref(), Some(sha2.as_str()));

    // A tag is accepted as it is.
    git_ok(&b, &src, &["tag", "v-one", &sha1]);
    let out = git(&b, &src, &["push", &url, "v-one"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(deploys(&b, "web").len(), n);

    // Clone with a deploy token of the app.
    let tok = deploy_token(&b, "ci", &["web"]);
    let out = git(
        &b,
        &b.path(""),
        &["clone", "--quiet", &remote(&b, &tok, "web"), "copy"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let head = git_ok(&b, &b.path("copy"), &["rev-parse", "HEAD"]);
    assert_eq!(head.trim(), sha2);
    assert!(b.path("copy/app.py").is_file());
    // The repository lives in the data dir, with the hook pointing at this binary.
    let hook = std::fs::read_to_string(b.path("data/git/web.git/hooks/pre-receive")).unwrap();
    assert!(hook.contains("hook pre-receive"), "{hook}");
}

#[test]
fn a_failed_build_rejects_the_push() {
    let b = Berth::start(BIN, "");
    create_app(&b, "app");
    let (src, sha1) = work_tree(&b, "src", "good");
    let url = remote(&b, &b.token, "app");
    let out = git(&b, &src, &["push", &url, "main"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "app", "good v1");

    python_app(&src, "broken", 200);
    add_build(&src, "echo about-to-fail; exit 3");
    commit(&b, &src, "broken build");
    let out = git(&b, &src, &["push", &url, "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("remote: about-to-fail"),
        "the build log: {err}"
    );
    assert!(err.contains("pre-receive hook declined"), "{err}");
    assert!(err.contains("remote: berth: deploy"), "the reason: {err}");
    // The ref was not updated; the old release still serves.
    assert_eq!(remote_sha(&b, &url, "main").as_deref(), Some(sha1.as_str()));
    let (st, body) = app_get(&b, "app", "/");
    assert_eq!((st, body.starts_with("good v1")), (200, true), "{body}");
    let d = &deploys(&b, "app")[0];
    assert_eq!(d["status"], "failed", "{d}");
}

#[test]
fn tokens_are_checked() {
    let b = Berth::start(BIN, "");
    create_app(&b, "mine");
    create_app(&b, "other");
    let (src, _) = work_tree(&b, "src", "x");
    let base = format!("http://{}/git", b.admin);
    let refs = "info/refs?service=git-upload-pack";

    // No credentials, a wrong password: 401 with a Basic challenge.
    let (st, resp) = curl_status(&format!("{base}/mine.git/{refs}"), &[]);
    assert_eq!(st, 401, "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"berth\""),
        "{resp}"
    );
    let (st, _) = curl_status(&format!("{base}/mine.git/{refs}"), &["-u", "git:wrong"]);
    assert_eq!(st, 401);
    let out = git(&b, &src, &["push", &remote(&b, "wrong", "mine"), "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("Authentication failed"),
        "{}",
        text(&out)
    );

    // A valid token: 200 with git's advertisement (any user name).
    let admin = format!("anyone:{}", b.token);
    let (st, resp) = curl_status(&format!("{base}/mine.git/{refs}"), &["-u", &admin]);
    assert_eq!(st, 200, "{resp}");
    assert!(
        resp.contains("application/x-git-upload-pack-advertisement"),
        "{resp}"
    );

    // A deploy token of another app: 403, for fetches and pushes.
    let tok = deploy_token(&b, "other-only", &["other"]);
    let other = format!("git:{tok}");
    let (st, resp) = curl_status(&format!("{base}/mine.git/{refs}"), &["-u", &other]);
    assert_eq!(st, 403, "{resp}");
    let push_refs = "info/refs?service=git-receive-pack";
    let (st, _) = curl_status(&format!("{base}/mine.git/{push_refs}"), &["-u", &other]);
    assert_eq!(st, 403);
    let out = git(&b, &src, &["push", &remote(&b, &tok, "mine"), "main"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("403"), "{}", text(&out));
    let (st, _) = curl_status(&format!("{base}/other.git/{push_refs}"), &["-u", &other]);
    assert_eq!(st, 200);

    // Unknown apps and names that are not repositories: 404 (JSON).
    for path in [
        format!("{base}/nope.git/{refs}"),
        format!("{base}/mine/{refs}"),
        format!("{base}/Bad_Name.git/{refs}"),
    ] {
        let (st, resp) = curl_status(&path, &["-u", &admin]);
        assert_eq!(st, 404, "{path}: {resp}");
        assert!(resp.contains("\"error\""), "{resp}");
    }
    assert!(deploys(&b, "mine").is_empty());
}

#[test]
fn push_through_the_proxy_over_https() {
    let b = Berth::start(BIN, "");
    create_app(&b, "site");
    let (src, sha) = work_tree(&b, "src", "tls");
    let port = b.https.port();
    let url = format!(
        "https://git:{}@berth.localhost:{port}/git/site.git",
        b.token
    );
    let resolve = format!("http.curloptResolve=berth.localhost:{port}:127.0.0.1");
    let ca = format!("http.sslCAInfo={}", b.ca().display());
    let out = git(&b, &src, &["-c", &resolve, "-c", &ca, "push", &url, "main"]);
    assert!(out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("remote: build-output-tls"), "{err}");
    assert!(err.contains("remote: berth: deployed site v1"), "{err}");
    wait_body(&b, "site", "tls v1");
    let out = git(
        &b,
        &b.path(""),
        &[
            "-c",
            &resolve,
            "-c",
            &ca,
            "ls-remote",
            &url,
            "refs/heads/main",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&sha));
}

#[test]
fn a_push_that_waited_for_another_is_refused_when_its_branch_moved() {
    let b = Berth::start(BIN, "");
    create_app(&b, "race");
    let (src, _) = work_tree(&b, "src", "one");
    let url = remote(&b, &b.token, "race");
    let out = git(&b, &src, &["push", &url, "main"]);
    assert!(out.status.success(), "{}", text(&out));
    // Two clones of v1. The first push's deploy is slow: its app waits 3 s before listening.
    let (dir_a, dir_b) = (b.path("a"), b.path("b"));
    git_ok(&b, &b.path(""), &["clone", "--quiet", &url, "a"]);
    git_ok(&b, &b.path(""), &["clone", "--quiet", &url, "b"]);
    python_app(&dir_a, "two", 200);
    write_file(&dir_a.join("delay"), b"3");
    let sha_a = commit(&b, &dir_a, "slow two");
    python_app(&dir_b, "three", 200);
    commit(&b, &dir_b, "three");
    std::thread::scope(|s| {
        let first = s.spawn(|| git(&b, &dir_a, &["push", "origin", "main"]));
        test_support::eventually(T, "the first push's deploy to run", || {
            let d = deploys(&b, "race");
            (d.len() == 2 && d[0]["status"] == "running").then_some(())
        });
        // The second push read `main` at v1's commit; it waits for the first, then finds
        // `main` moved and is refused before deploying anything.
        let second = git(&b, &dir_b, &["push", "origin", "main"]);
        let first = first.join().unwrap();
        assert!(first.status.success(), "{}", text(&first));
        assert!(!second.status.success(), "{}", text(&second));
        assert!(stderr(&second).contains("moved"), "{}", text(&second));
    });
    assert_eq!(
        remote_sha(&b, &url, "main").as_deref(),
        Some(sha_a.as_str())
    );
    assert_eq!(
        deploys(&b, "race").len(),
        2,
        "the second push deployed nothing"
    );
    let (_, body) = app_get(&b, "race", "/");
    assert!(body.starts_with("two v2"), "{body}");
}

/// Total size of the files under `dir`.
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        total += if meta.is_dir() {
            dir_size(&e.path())
        } else {
            meta.len()
        };
    }
    total
}

/// A receive-pack request creating `refs/heads/<branch>` at the HEAD of `dir`: the command
/// pkt-line, a flush, and a pack of HEAD's objects stored without compression.
fn receive_pack_request(b: &Berth, dir: &Path, branch: &str) -> Vec<u8> {
    use std::io::Write;
    let sha = git_ok(b, dir, &["rev-parse", "HEAD"]).trim().to_string();
    let mut child = Command::new("git")
        .args([
            "-c",
            "pack.compression=0",
            "pack-objects",
            "--revs",
            "--stdout",
            "-q",
        ])
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"HEAD\n").unwrap();
    let pack = child.wait_with_output().unwrap();
    assert!(pack.status.success());
    let zero = "0".repeat(40);
    let line = format!("{zero} {sha} refs/heads/{branch}\0report-status\n");
    let mut req = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    req.extend_from_slice(&pack.stdout);
    req
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `Content-Encoding: gzip` pushes are capped on their decoded size: a small gzip body that
/// inflates past `[server] max_upload` is a 413 and the repository does not grow; one that
/// inflates within the limit is pushed as usual.
#[test]
fn a_gzip_push_is_capped_by_its_decoded_size() {
    let b = Berth::start_with(BIN, "max_upload = \"256KiB\"", &[], "");
    create_app(&b, "bomb");
    let repo = b.path("data/git/bomb.git");
    let admin = format!("git:{}", b.token);
    let refs = format!(
        "http://{}/git/bomb.git/info/refs?service=git-receive-pack",
        b.admin
    );
    let (st, resp) = curl_status(&refs, &["-u", &admin]);
    assert_eq!(st, 200, "{resp}");

    // A 4 MiB file of zeros, packed without compression: gzip makes a few KiB of it.
    let big = tmpdir(&b, "big");
    write_file(&big.join("zeros"), &vec![0u8; 4 << 20]);
    git_ok(&b, &big, &["init", "--quiet", "-b", "main"]);
    commit(&b, &big, "zeros");
    let small = tmpdir(&b, "small");
    write_file(&small.join("hello.txt"), b"hello\n");
    git_ok(&b, &small, &["init", "--quiet", "-b", "main"]);
    let small_sha = commit(&b, &small, "hello");

    struct Case {
        name: &'static str,
        body: Vec<u8>,
        status: u16,
        branch: &'static str,
    }
    let cases = [
        Case {
            name: "gzip bomb: inflates past max_upload",
            body: gzip(&receive_pack_request(&b, &big, "bomb")),
            status: 413,
            branch: "bomb",
        },
        Case {
            name: "gzip within the limit",
            body: gzip(&receive_pack_request(&b, &small, "small")),
            status: 200,
            branch: "small",
        },
    ];
    for c in &cases {
        assert!(
            c.body.len() < 64 << 10,
            "{}: {} bytes",
            c.name,
            c.body.len()
        );
        let before = dir_size(&repo);
        let mut req = format!(
            "POST /git/bomb.git/git-receive-pack HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{}\r\nContent-Type: application/x-git-receive-pack-request\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            b.auth(),
            c.body.len()
        )
        .into_bytes();
        req.extend_from_slice(&c.body);
        let r = common::parse_response(&test_support::raw(b.admin, &req, T));
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.text());
        let url = remote(&b, &b.token, "bomb");
        if c.status == 413 {
            assert!(r.text().contains("max_upload"), "{}: {}", c.name, r.text());
            assert_eq!(dir_size(&repo), before, "{}: the repository grew", c.name);
            assert_eq!(remote_sha(&b, &url, c.branch), None, "{}", c.name);
        } else {
            assert!(
                r.text().contains("ok refs/heads/small"),
                "{}: {}",
                c.name,
                r.text()
            );
            assert_eq!(
                remote_sha(&b, &url, c.branch).as_deref(),
                Some(small_sha.as_str()),
                "{}",
                c.name
            );
        }
    }
}
