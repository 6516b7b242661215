//! Issue 3: the deploy queue and release config. Deploys of one app run in the order they were
//! asked for; an env change queued behind a build restarts the new build; a rollback brings
//! back the env of the release it returns to; only releases that ran can be rolled back to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, create_app, upload, wait_deploy};
use common::BIN;
use serde_json::Value;
use std::path::Path;
use test_support::{eventually, write_file, Berth};

/// An app whose `/` answers `<tag> <release> GREETING=<value>`; `build` is a build command.
fn app_dir(dir: &Path, tag: &str, build: Option<&str>) {
    write_file(&dir.join("Procfile"), b"web: python3 app.py\n");
    let mut toml = String::from("[health]\npath = \"/\"\n[deploy]\nstop_grace = \"2s\"\n");
    if let Some(cmd) = build {
        toml.push_str(&format!("[build]\ncommand = \"{cmd}\"\n"));
    }
    write_file(&dir.join("berth.toml"), toml.as_bytes());
    let app = format!(
        r#"import os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("{tag} " + os.environ["BERTH_RELEASE"] + " GREETING=" + os.environ.get("GREETING", "-") + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#
    );
    write_file(&dir.join("app.py"), app.as_bytes());
}

/// Upload `dir` (202); the deploy id.
fn upload_id(b: &Berth, app: &str, dir: &Path) -> i64 {
    let (st, v) = upload(b, app, dir);
    assert_eq!(st, 202, "{v}");
    v["id"].as_i64().unwrap()
}

/// `app`'s instances as (id, pid), sorted.
fn instances_of(b: &Berth, app: &str) -> Vec<(String, u64)> {
    let (_, v) = api(b, "GET", &format!("/api/v1/apps/{app}/instances"), "");
    let mut list: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().to_string(),
                i["pid"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    list.sort();
    list
}

fn body(b: &Berth, app: &str) -> String {
    common::get(b.http, &format!("{app}.localhost"), "/").text()
}

#[test]
fn deploys_of_one_app_run_in_order_a_newer_build_cancels_an_older_and_an_env_change_restarts_the_newest_build(
) {
    let b = Berth::start(BIN, "");
    create_app(&b, "q");
    let (one, two) = (b.path("one"), b.path("two"));
    app_dir(&one, "one", Some("sleep 2"));
    app_dir(&two, "two", None);
    // A slow build, then a fast one, then an env change, all queued at once.
    let d1 = upload_id(&b, "q", &one);
    let d2 = upload_id(&b, "q", &two);
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/q/env",
        r#"{"set":{"GREETING":"hi"}}"#,
    );
    assert_eq!(st, 200, "{v}");
    let d3 = v["deploy"]["id"]
        .as_i64()
        .expect("a restart deploy is queued");
    let (r1, r2, r3) = (
        wait_deploy(&b, "q", d1),
        wait_deploy(&b, "q", d2),
        wait_deploy(&b, "q", d3),
    );
    // The newer build cancelled the slow one (running) or superseded it (still waiting).
    assert!(
        r1["status"] == "cancelled" || r1["status"] == "superseded",
        "{r1}"
    );
    assert!(
        r1["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("build {d2}")),
        "{r1}"
    );
    for d in [&r2, &r3] {
        assert_eq!(d["status"], "succeeded", "{d}");
    }
    // They ran in order: they finished in the order they were asked for, with releases
    // numbered in the same order (a restart gets its release when it runs).
    let at = |d: &Value| d["finished_at"].as_str().unwrap().to_string();
    assert!(at(&r1) <= at(&r2) && at(&r2) <= at(&r3));
    let rel = |d: &Value| d["release"].as_i64();
    assert_eq!((rel(&r1), rel(&r2), rel(&r3)), (Some(1), Some(2), Some(3)));
    // The restart ran the newest build (two), with the new env.
    assert_eq!(body(&b, "q"), "two v3 GREETING=hi\n");
    let (_, rels) = api(&b, "GET", "/api/v1/apps/q/releases", "");
    assert_eq!(rels[0]["source_release"], 2, "{rels}");
}

#[test]
fn a_rollback_brings_back_the_env_of_its_release_and_needs_a_release_that_ran() {
    let b = Berth::start(BIN, "");
    create_app(&b, "r");
    let src = b.path("src");
    app_dir(&src, "r", None);
    let d = upload_id(&b, "r", &src);
    assert_eq!(wait_deploy(&b, "r", d)["status"], "succeeded");
    assert_eq!(body(&b, "r"), "r v1 GREETING=-\n");
    let (_, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/r/env",
        r#"{"set":{"GREETING":"new"}}"#,
    );
    wait_deploy(&b, "r", v["deploy"]["id"].as_i64().unwrap());
    assert_eq!(body(&b, "r"), "r v2 GREETING=new\n");

    // A build that fails (v3) cannot be rolled back to.
    let broken = b.path("broken");
    app_dir(&broken, "broken", Some("exit 7"));
    let d = upload_id(&b, "r", &broken);
    let failed = wait_deploy(&b, "r", d);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["reason"].as_str().unwrap().contains("exit code 7"),
        "{failed}"
    );
    let (st, v) = api(&b, "POST", "/api/v1/apps/r/rollback", r#"{"version":3}"#);
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("failed"), "{v}");

    // `rollback` (no version): the previous good release, v1, with v1's env (no GREETING).
    let (st, v) = api(&b, "POST", "/api/v1/apps/r/rollback", "{}");
    assert_eq!(st, 202, "{v}");
    let done = wait_deploy(&b, "r", v["id"].as_i64().unwrap());
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(body(&b, "r"), "r v4 GREETING=-\n");
    let (_, env) = api(&b, "GET", "/api/v1/apps/r/env", "");
    assert_eq!(env, serde_json::json!({}), "the app's env is v1's again");
    // And rolling back to v2 brings GREETING back.
    let (_, v) = api(&b, "POST", "/api/v1/apps/r/rollback", r#"{"version":2}"#);
    wait_deploy(&b, "r", v["id"].as_i64().unwrap());
    assert_eq!(body(&b, "r"), "r v5 GREETING=new\n");

    // Each deploy says what it was: a build, an env change, rollbacks.
    let (_, list) = api(&b, "GET", "/api/v1/builds?app=r", "");
    let seen: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|d| {
            (
                d["trigger"].as_str().unwrap_or("-").to_string(),
                d["message"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("upload", "-"),
        ("env", "Set env GREETING"),
        ("upload", "-"),
        ("rollback", "Rollback to v1"),
        ("rollback", "Rollback to v2"),
    ]
    .iter()
    .map(|(t, m)| (t.to_string(), m.to_string()))
    .collect();
    assert_eq!(seen, want, "{list}");
}

#[test]
fn an_env_change_before_anything_is_live_applies_to_the_first_deploy() {
    let b = Berth::start(BIN, "");
    create_app(&b, "e");
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/e/env",
        r#"{"set":{"GREETING":"early"}}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["deploy"].is_null(), "nothing to restart: {v}");
    let src = b.path("src");
    app_dir(&src, "e", None);
    let d = upload_id(&b, "e", &src);
    wait_deploy(&b, "e", d);
    assert_eq!(body(&b, "e"), "e v1 GREETING=early\n");
}

#[test]
fn old_release_files_are_pruned_and_cannot_be_rolled_back_to() {
    let b = Berth::start(BIN, "");
    create_app(&b, "p");
    let site = b.path("site");
    for i in 1..=12 {
        write_file(&site.join("index.html"), format!("v{i}\n").as_bytes());
        let d = upload_id(&b, "p", &site);
        assert_eq!(wait_deploy(&b, "p", d)["status"], "succeeded");
    }
    assert_eq!(body(&b, "p"), "v12\n");
    // The newest ten keep their files; v1 and v2 are history only.
    let releases = b.path("data/apps/p/releases");
    let names: Vec<bool> = (1..=12)
        .map(|v| releases.join(format!("v{v}")).is_dir())
        .collect();
    assert_eq!(names[..2], [false, false], "{names:?}");
    assert!(names[2..].iter().all(|x| *x), "{names:?}");
    let (st, v) = api(&b, "POST", "/api/v1/apps/p/rollback", r#"{"version":1}"#);
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pruned"), "{v}");
    let (st, v) = api(&b, "POST", "/api/v1/apps/p/rollback", r#"{"version":3}"#);
    assert_eq!(st, 202, "{v}");
    wait_deploy(&b, "p", v["id"].as_i64().unwrap());
    assert_eq!(body(&b, "p"), "v3\n");
}

/// `berth restart` replaces the live release's instances with new ones of the same release
/// (as Heroku's restart: no new release), with zero failed requests, and the new instances are
/// the ones a berth killed with `kill -9` adopts again.
#[test]
fn restart_starts_new_instances_of_the_live_release_without_a_new_release() {
    let mut b = Berth::start(BIN, "");
    create_app(&b, "rs");
    let out = common::apps::cli(&b, &["restart", "-a", "rs"]);
    assert_eq!(out.status.code(), Some(1), "nothing live yet");
    let src = b.path("src");
    app_dir(&src, "rs", None);
    wait_deploy(&b, "rs", upload_id(&b, "rs", &src));
    let instances = |b: &Berth| instances_of(b, "rs");
    let before = instances(&b);
    let mut generations = vec![before.clone()];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if body(&b, "rs") != "rs v1 GREETING=-\n" {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        for _ in 0..2 {
            let out = common::apps::cli(&b, &["restart", "-a", "rs"]);
            assert!(out.status.success(), "{}", common::apps::text(&out));
            generations.push(instances(&b));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(
        failed.into_inner(),
        0,
        "requests failed during the restarts"
    );
    // New processes of the same release: v1 still, the only release.
    let after = instances(&b);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0].1, before[0].1, "a new process");
    // The instances each restart replaced are stopped, not left running beside the new ones.
    for old in &generations[..2] {
        eventually(
            common::apps::T,
            "the replaced instance to be stopped",
            || (!common::apps::pid_alive(old[0].1)).then_some(()),
        );
    }
    assert_eq!(after[0].0, "rs.v1.r2.web.1", "{after:?}");
    assert_eq!(body(&b, "rs"), "rs v1 GREETING=-\n");
    let (_, rels) = api(&b, "GET", "/api/v1/apps/rs/releases", "");
    assert_eq!(rels.as_array().unwrap().len(), 1, "{rels}");
    let (_, builds) = api(&b, "GET", "/api/v1/builds?app=rs", "");
    assert_eq!(builds[0]["trigger"], "restart", "{builds}");
    assert_eq!(builds[0]["release"], 1, "{builds}");
    // A berth killed with -9 adopts the restarted instances (not the ones they replaced).
    b.crash_and_restart(BIN);
    assert_eq!(body(&b, "rs"), "rs v1 GREETING=-\n");
    assert_eq!(instances(&b), after);
    // An env change is a new release, as on Heroku.
    let out = common::apps::cli(&b, &["env:set", "GREETING=hi", "-a", "rs"]);
    assert!(out.status.success(), "{}", common::apps::text(&out));
    assert_eq!(body(&b, "rs"), "rs v2 GREETING=hi\n");
    assert_eq!(instances(&b)[0].0, "rs.v2.web.1");
}

#[test]
fn scale_adds_and_removes_instances_in_place() {
    let mut b = Berth::start(BIN, "");
    create_app(&b, "sc");
    let src = b.path("src");
    app_dir(&src, "sc", None);
    wait_deploy(&b, "sc", upload_id(&b, "sc", &src));
    let pids = |b: &Berth| instances_of(b, "sc");
    let before = pids(&b);
    assert_eq!(before.len(), 1);
    let (st, v) = api(&b, "PUT", "/api/v1/apps/sc/formation", r#"{"web":3}"#);
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        wait_deploy(&b, "sc", v["deploy"]["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    let after = pids(&b);
    assert_eq!(after.len(), 3, "{after:?}");
    assert_eq!(after[0], before[0], "web.1 kept running: no restart");
    // No new release: still v1.
    let (_, rels) = api(&b, "GET", "/api/v1/apps/sc/releases", "");
    assert_eq!(rels.as_array().unwrap().len(), 1, "{rels}");
    assert_eq!(body(&b, "sc"), "sc v1 GREETING=-\n");
    // A crash keeps the new count: all three are adopted.
    b.crash_and_restart(BIN);
    assert_eq!(pids(&b), after);
    // Down to one: web.2 and web.3 leave the route and stop; web.1 stays.
    let (_, v) = api(&b, "PUT", "/api/v1/apps/sc/formation", r#"{"web":1}"#);
    wait_deploy(&b, "sc", v["deploy"]["id"].as_i64().unwrap());
    assert_eq!(pids(&b), before);
    for (_, pid) in &after[1..] {
        test_support::eventually(
            std::time::Duration::from_secs(20),
            "removed instances to stop",
            || (!common::apps::pid_alive(*pid)).then_some(()),
        );
    }
    for _ in 0..5 {
        assert_eq!(body(&b, "sc"), "sc v1 GREETING=-\n");
    }
}

#[test]
fn a_rollback_that_fails_leaves_the_env_as_it_was() {
    let b = Berth::start(BIN, "");
    create_app(&b, "fr");
    let src = b.path("src");
    app_dir(&src, "fr", None);
    // The release command fails once the file `stop-release` exists in the release dir.
    write_file(
        &src.join("Procfile"),
        b"web: python3 app.py\nrelease: test ! -e stop-release\n",
    );
    wait_deploy(&b, "fr", upload_id(&b, "fr", &src));
    for g in ["a", "b"] {
        let (_, v) = api(
            &b,
            "PATCH",
            "/api/v1/apps/fr/env",
            &format!(r#"{{"set":{{"GREETING":"{g}"}}}}"#),
        );
        wait_deploy(&b, "fr", v["deploy"]["id"].as_i64().unwrap());
    }
    assert_eq!(body(&b, "fr"), "fr v3 GREETING=b\n");
    write_file(&b.path("data/apps/fr/releases/v1/stop-release"), b"");
    let (st, v) = api(&b, "POST", "/api/v1/apps/fr/rollback", r#"{"version":2}"#);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(&b, "fr", v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    // v3 serves, and the app's env is still v3's.
    assert_eq!(body(&b, "fr"), "fr v3 GREETING=b\n");
    let (_, env) = api(&b, "GET", "/api/v1/apps/fr/env?reveal=true", "");
    assert_eq!(env["GREETING"], "b", "{env}");
}

#[test]
fn a_missing_static_root_leaves_only_that_app_unrouted() {
    let mut b = Berth::start(BIN, "");
    create_app(&b, "st");
    create_app(&b, "py");
    let site = b.path("site");
    write_file(&site.join("index.html"), b"static\n");
    wait_deploy(&b, "st", upload_id(&b, "st", &site));
    let src = b.path("src");
    app_dir(&src, "py", None);
    wait_deploy(&b, "py", upload_id(&b, "py", &src));
    // Its files vanish while berth is down: berth still starts and serves the other app.
    std::fs::remove_dir_all(b.path("data/apps/st/releases/v1")).unwrap();
    b.crash_and_restart(BIN);
    assert_eq!(body(&b, "py"), "py v1 GREETING=-\n");
    assert_eq!(common::get(b.http, "st.localhost", "/").status, 404);
    // And deploys keep working.
    wait_deploy(&b, "st", upload_id(&b, "st", &site));
    assert_eq!(body(&b, "st"), "static\n");
}

/// `release:` and postdeploy know the release they run for (`BERTH_RELEASE`), and `berth env`
/// lists app.json's `value` defaults as the processes get them, under what was set.
#[test]
fn release_steps_see_their_release_and_env_lists_app_json_defaults() {
    let b = Berth::start(BIN, "");
    create_app(&b, "rel");
    let dir = b.path("rel");
    app_dir(&dir, "rel", None);
    write_file(
        &dir.join("Procfile"),
        b"web: python3 app.py\nrelease: echo release-sees-$BERTH_RELEASE\n",
    );
    write_file(
        &dir.join("app.json"),
        br#"{"env": {"GREETING": {"value": "hi"}, "COLOR": {"value": "blue"}}, "scripts": {"postdeploy": "echo postdeploy-sees-$BERTH_RELEASE"}}"#,
    );
    let out = common::apps::cli(&b, &["env:set", "COLOR=red", "-a", "rel"]);
    assert!(out.status.success(), "{out:?}");
    let id = upload_id(&b, "rel", &dir);
    let d = wait_deploy(&b, "rel", id);
    assert_eq!(d["status"], "succeeded", "{d}");
    let log =
        common::apps::get_as(&b, &b.token, &format!("/api/v1/apps/rel/deploys/{id}/log")).text();
    assert!(log.contains("release-sees-v1"), "{log}");
    assert!(log.contains("postdeploy-sees-v1"), "{log}");
    assert!(
        !log.contains("Draining the previous release"),
        "a first deploy: {log}"
    );
    assert_eq!(body(&b, "rel"), "rel v1 GREETING=hi\n");

    let out = common::apps::cli(&b, &["env", "--reveal", "-a", "rel"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("GREETING=hi\n"), "{text}");
    assert!(text.contains("COLOR=red\n"), "the set value wins: {text}");
}

/// A step's output is kept up to a cap in its deploy log: a build that prints without end
/// cannot fill berth's disk, and it still finishes.
#[test]
fn a_steps_output_is_capped_in_the_deploy_log() {
    let b = Berth::start(BIN, "");
    create_app(&b, "loud");
    let dir = b.path("loud");
    app_dir(
        &dir,
        "loud",
        Some("head -c 200000000 /dev/zero | tr '\\\\0' A; echo; echo build-went-$((1+1))"),
    );
    let id = upload_id(&b, "loud", &dir);
    let d = wait_deploy(&b, "loud", id);
    assert_eq!(d["status"], "succeeded", "{d}");
    let log = b.path("data").join(format!("apps/loud/deploys/{id}.log"));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 65 << 20, "the deploy log is {size} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("wrote more than 64 MiB of output"),
        "no notice"
    );
    assert!(
        !text.contains("build-went-on"),
        "output past the cap was kept"
    );
    assert_eq!(body(&b, "loud"), "loud v1 GREETING=-\n");
}

/// A step that prints nothing for a while: `berth deploy` (not on a terminal here) says which
/// step still runs, so a CI log shows the deploy is alive.
#[test]
fn a_silent_build_step_is_shown_still_running() {
    let b = Berth::start(BIN, "");
    create_app(&b, "quiet");
    let dir = b.path("quiet");
    app_dir(&dir, "quiet", Some("sleep 21"));
    let out = common::apps::cli(&b, &["deploy", dir.to_str().unwrap(), "-a", "quiet"]);
    assert!(out.status.success(), "{}", common::apps::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Building: sleep 21: still running ("), "{err}");
}

/// Destroying an app cancels its running build (and anything queued) instead of waiting for
/// it: a build may run for up to the server's step timeout.
#[test]
fn destroying_an_app_cancels_its_running_build() {
    let b = Berth::start(BIN, "");
    create_app(&b, "busy");
    let dir = b.path("busy");
    app_dir(&dir, "busy", Some("sleep 120"));
    let id = upload_id(&b, "busy", &dir);
    test_support::eventually(std::time::Duration::from_secs(30), "the build step", || {
        let (_, d) = api(&b, "GET", &format!("/api/v1/builds/{id}"), "");
        (d["step"] == "build").then_some(())
    });
    let started = std::time::Instant::now();
    let (st, v) = api(&b, "DELETE", "/api/v1/apps/busy", "");
    assert_eq!(st, 204, "{v}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "destroy waited for the build: {:?}",
        started.elapsed()
    );
    let (st, _) = api(&b, "GET", "/api/v1/apps/busy", "");
    assert_eq!(st, 404);
}

/// Deploy logs do not pile up: the newest 100 deploys of an app keep theirs, older ones go
/// (their rows stay, as history).
#[test]
fn only_the_newest_deploy_logs_are_kept() {
    let b = Berth::start(BIN, "");
    create_app(&b, "many");
    let bundle = common::apps::static_site(&b, "many-src");
    let mut ids = Vec::new();
    for _ in 0..102 {
        let (st, v) = common::apps::upload_file(&b, "many", &bundle);
        assert_eq!(st, 202, "{v}");
        let id = v["id"].as_i64().unwrap();
        assert_eq!(wait_deploy(&b, "many", id)["status"], "succeeded");
        ids.push(id);
    }
    let log = |id: i64| b.path("data").join(format!("apps/many/deploys/{id}.log"));
    assert!(!log(ids[0]).exists(), "the oldest log is kept");
    assert!(log(ids[2]).exists(), "a log among the newest 100 is gone");
    assert!(log(ids[101]).exists());
    let (st, d) = api(&b, "GET", &format!("/api/v1/builds/{}", ids[0]), "");
    assert_eq!(st, 200, "{d}");
}
