//! The build queue (issue 4): a burst of pushes across apps under the global build limit,
//! supersede and cancel, the `[test]` step, build isolation, branch previews. Real binary,
//! real uploads, real build commands.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, app_get, create_app, python_app, targz, text, wait_body, T};
use common::BIN;
use serde_json::Value;
use std::path::Path;
use test_support::{eventually, write_file, Berth};

/// POST `dir` as a push of `branch` with commit metadata; (status, answer).
fn push(b: &Berth, app: &str, dir: &Path, branch: &str, sha: &str, message: &str) -> (u16, Value) {
    common::apps::api_as(
        b,
        &b.token,
        "POST",
        &format!(
            "/api/v1/apps/{app}/deploys?trigger=git&branch={}&sha={sha}&message={message}&author=Ann",
            branch.replace('/', "%2F")
        ),
        "application/gzip",
        &targz(dir),
    )
}

fn build(b: &Berth, id: i64) -> Value {
    let (st, v) = api(b, "GET", &format!("/api/v1/builds/{id}"), "");
    assert_eq!(st, 200, "{v}");
    v
}

fn wait_build(b: &Berth, id: i64) -> Value {
    eventually(T, &format!("build {id} to end"), || {
        let v = build(b, id);
        (v["status"] != "queued" && v["status"] != "running").then_some(v)
    })
}

/// A static site whose `[build]` is `build` (and `[test]` is `test`, if any).
fn site(dir: &Path, body: &str, build: &str, test: Option<&str>) {
    write_file(&dir.join("index.html"), body.as_bytes());
    let mut toml = format!("[static]\ndir = \".\"\n[build]\ncommand = {build:?}\n");
    if let Some(t) = test {
        toml.push_str(&format!("[test]\ncommand = {t:?}\n"));
    }
    write_file(&dir.join("berth.toml"), toml.as_bytes());
}

#[test]
fn a_burst_of_50_pushes_across_10_apps_ends_with_every_app_serving_its_newest_commit() {
    let b = Berth::start_with(BIN, "build_concurrency = 2", &[], "");
    let apps: Vec<String> = (0..10).map(|i| format!("burst{i}")).collect();
    for a in &apps {
        create_app(&b, a);
        // A running build finishes (and notes its end); waiting ones are still superseded.
        let (st, v) = api(
            &b,
            "PATCH",
            &format!("/api/v1/apps/{a}/settings"),
            r#"{"cancel_running":false}"#,
        );
        assert_eq!(st, 200, "{v}");
    }
    // Each build notes in its log when it starts and ends, to check the global limit (a
    // build cannot write anywhere outside its own scratch dir).
    let build = "echo EV S $(date +%s%N); sleep 0.3; echo EV E $(date +%s%N)";
    let t0 = std::time::Instant::now();
    std::thread::scope(|s| {
        for a in &apps {
            let (b, build) = (&b, &build);
            s.spawn(move || {
                for k in 1..=5 {
                    let dir = b.path(&format!("src-{a}-{k}"));
                    site(&dir, &format!("{a} push-{k}\n"), build, None);
                    let (st, v) = push(
                        b,
                        a,
                        &dir,
                        "main",
                        &format!("{k:040x}"),
                        &format!("push-{k}"),
                    );
                    assert_eq!(st, 202, "{v}");
                }
            });
        }
    });
    eventually(T, "the queue to drain", || {
        let (_, v) = api(&b, "GET", "/api/v1/builds?active=true", "");
        v.as_array().unwrap().is_empty().then_some(())
    });
    eprintln!("50 pushes across 10 apps served in {:?}", t0.elapsed());
    for a in &apps {
        let (_, list) = api(&b, "GET", &format!("/api/v1/builds?app={a}"), "");
        let list = list.as_array().unwrap();
        let (st, body) = app_get(&b, a, "/");
        // What berth logged that was not routine, to tell why if a build failed.
        let stderr = b.stderr();
        let log: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains(a.as_str()))
            .collect();
        let log = &log[log.len().saturating_sub(60)..];
        assert_eq!(
            (st, body),
            (200, format!("{a} push-5\n")),
            "{list:#?}\nberth's log:\n{}",
            log.join("\n")
        );
        assert_eq!(list.len(), 5, "{list:?}");
        // Newest first: the last push went live, with its commit recorded.
        assert_eq!(list[0]["status"], "succeeded", "{}", list[0]);
        assert_eq!(list[0]["commit"]["message"], "push-5");
        assert_eq!(list[0]["commit"]["branch"], "main");
        assert_eq!(list[0]["trigger"], "git");
        for d in list {
            let st = d["status"].as_str().unwrap();
            assert!(
                ["succeeded", "superseded"].contains(&st),
                "no push fails or is lost: {d}"
            );
        }
    }
    // Never more than 2 builds at once, and the 2 slots were used.
    let mut text = String::new();
    for a in &apps {
        let (_, list) = api(&b, "GET", &format!("/api/v1/builds?app={a}"), "");
        for d in list.as_array().unwrap() {
            let id = d["id"].as_i64().unwrap();
            let (_, log) = api(&b, "GET", &format!("/api/v1/builds/{id}/log"), "");
            text.push_str(log.as_str().unwrap_or_default());
        }
    }
    let mut ev: Vec<(u128, i32)> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("EV "))
        .map(|l| {
            let (k, t) = l.split_once(' ').unwrap();
            (t.trim().parse().unwrap(), if k == "S" { 1 } else { -1 })
        })
        .collect();
    ev.sort();
    let (mut now, mut max) = (0, 0);
    for (_, d) in ev {
        now += d;
        max = max.max(now);
    }
    assert_eq!(max, 2, "builds at once:\n{text}");
}

#[test]
fn a_failing_test_step_stops_the_pipeline_and_a_running_build_can_be_cancelled() {
    let b = Berth::start(BIN, "");
    create_app(&b, "t");
    let good = b.path("good");
    site(&good, "good\n", "true", Some("echo tests pass"));
    let (st, v) = push(&b, "t", &good, "main", "aaaa", "good");
    assert_eq!(st, 202, "{v}");
    let d = wait_build(&b, v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "succeeded", "{d}");
    let steps: Vec<&str> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(&steps[..3], ["prepare", "test", "build"], "{d}");
    // The CLI shows the log, and follows a finished build to its end at once.
    let id = d["id"].as_i64().unwrap().to_string();
    let out = common::apps::cli(&b, &["builds:logs", &id]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tests pass"),
        "{}",
        text(&out)
    );
    let out = common::apps::cli(&b, &["builds:logs", &id, "-f"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployed t"),
        "{}",
        text(&out)
    );
    let out = common::apps::cli(&b, &["apps:settings", "t", "--previews", "on"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Previews        true"),
        "{}",
        text(&out)
    );
    let out = common::apps::cli(&b, &["apps:settings", "t", "--deploy-branch", "a..b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Failing tests: the build never runs, the old release serves.
    let bad = b.path("bad");
    site(
        &bad,
        "bad\n",
        "touch built; echo BUILD-RAN",
        Some("echo testing; exit 3"),
    );
    let (_, v) = push(&b, "t", &bad, "main", "bbbb", "bad");
    let id = v["id"].as_i64().unwrap();
    let d = wait_build(&b, id);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("tests"), "{d}");
    let steps: Vec<(&str, &str)> = d["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("prepare", "succeeded"), ("test", "failed")], "{d}");
    let (_, log) = api(&b, "GET", &format!("/api/v1/builds/{id}/log"), "");
    let log = log.as_str().unwrap().to_string();
    assert!(
        log.contains("testing") && !log.contains("BUILD-RAN"),
        "{log}"
    );
    assert_eq!(app_get(&b, "t", "/"), (200, "good\n".into()));

    // A running build is cancelled: its command is killed, the old release serves.
    let slow = b.path("slow");
    site(&slow, "slow\n", "sleep 31.5", None);
    let (_, v) = push(&b, "t", &slow, "main", "cccc", "slow");
    let id = v["id"].as_i64().unwrap();
    eventually(T, "the slow build to run", || {
        (build(&b, id)["step"] == "build").then_some(())
    });
    let running = || {
        std::process::Command::new("pgrep")
            .args(["-f", "sleep 31.5"])
            .output()
            .unwrap()
            .status
            .success()
    };
    // The step is recorded just before the command starts.
    eventually(T, "the build's command to run", || running().then_some(()));
    let (st, v) = api(&b, "POST", &format!("/api/v1/builds/{id}/cancel"), "");
    assert_eq!(st, 200, "{v}");
    let d = wait_build(&b, id);
    assert_eq!(d["status"], "cancelled", "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("cancelled by"),
        "{d}"
    );
    eventually(T, "the build's process to be gone", || {
        (!running()).then_some(())
    });
    assert_eq!(app_get(&b, "t", "/"), (200, "good\n".into()));
    // It ended: cancelling again is a conflict, also from the CLI.
    let (st, v) = api(&b, "POST", &format!("/api/v1/builds/{id}/cancel"), "");
    assert_eq!(st, 409, "{v}");
    let out = common::apps::cli(&b, &["builds:cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = common::apps::cli(&b, &["builds", "-a", "t"]);
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("cancelled") && listing.contains("cccc"),
        "{listing}"
    );
    let out = common::apps::cli(&b, &["builds:info", &id.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("STEP"),
        "{}",
        text(&out)
    );
}

/// As root, builds run as an unprivileged user outside the data dir: no token, no database,
/// no other app's env.
#[test]
fn a_build_cannot_read_the_data_dir_or_another_apps_env() {
    if std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        != b"0\n"
    {
        eprintln!("skipped: build isolation needs root");
        return;
    }
    let b = Berth::start(BIN, "");
    let data = b.path("data");
    // Another app runs with a secret in its env.
    create_app(&b, "other");
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/other/env",
        r#"{"set":{"OTHER_SECRET":"topsecret-4711"}}"#,
    );
    assert!(st == 200, "{v}");
    let other = b.path("other-src");
    python_app(&other, "other", 200);
    let (_, v) = push(&b, "other", &other, "main", "dddd", "other");
    assert_eq!(
        wait_build(&b, v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );

    create_app(&b, "iso");
    api(
        &b,
        "PATCH",
        "/api/v1/apps/iso/env",
        r#"{"set":{"OWN_VAR":"mine"}}"#,
    );
    let src = b.path("iso-src");
    let script = format!(
        "set -x\n\
         test \"$(id -u)\" != 0\n\
         case \"$PWD\" in {data}/*) exit 10;; esac\n\
         ! cat {data}/admin-token\n\
         ! cat {data}/berth.db > /dev/null\n\
         ! ls {data}\n\
         ! grep -l topsecret-4711 /proc/[0-9]*/environ\n\
         test \"$OWN_VAR\" = mine\n\
         touch \"$HOME/home-works\"\n\
         echo built-by-$(id -un) > built.txt\n",
        data = data.display()
    );
    write_file(&src.join("check.sh"), script.as_bytes());
    site(&src, "iso\n", "sh check.sh", None);
    let (_, v) = push(&b, "iso", &src, "main", "eeee", "iso");
    let id = v["id"].as_i64().unwrap();
    let d = wait_build(&b, id);
    let (_, log) = api(&b, "GET", &format!("/api/v1/builds/{id}/log"), "");
    assert_eq!(
        d["status"],
        "succeeded",
        "{d}\n{}",
        log.as_str().unwrap_or("")
    );
    // What the build wrote is in the release, owned by berth again.
    let (st, body) = app_get(&b, "iso", "/built.txt");
    assert_eq!(st, 200);
    assert!(body.starts_with("built-by-berth-build-"), "{body}");

    // A build cannot swap its source dir for a symlink (to serve `/`), and what it leaves
    // running (out of its process group) is killed.
    create_app(&b, "esc");
    let esc = b.path("esc-src");
    site(
        &esc,
        "esc\n",
        "echo left > /tmp/berth-test-leftover-4711; cd .. && (mv src x; ln -s / src; true); setsid sh -c 'sleep 301.5' >/dev/null 2>&1 < /dev/null &",
        None,
    );
    let (_, v) = push(&b, "esc", &esc, "main", "ffff", "esc");
    let d = wait_build(&b, v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(app_get(&b, "esc", "/"), (200, "esc\n".into()));
    assert_eq!(app_get(&b, "esc", "/etc/passwd").0, 404);
    assert!(!Path::new("/tmp/berth-test-leftover-4711").exists());
    eventually(T, "the build's leftover process to be killed", || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 301.5"])
            .output()
            .unwrap();
        (!out.status.success()).then_some(())
    });
}

#[test]
fn a_push_of_another_branch_deploys_a_preview_with_its_env_until_the_branch_is_deleted() {
    let b = Berth::start(BIN, "");
    create_app(&b, "shop");
    api(
        &b,
        "PATCH",
        "/api/v1/apps/shop/env",
        r#"{"set":{"GREETING":"prod"}}"#,
    );
    let main = b.path("main");
    python_app(&main, "main", 200);
    let (_, v) = push(&b, "shop", &main, "main", "1111", "main");
    assert_eq!(
        wait_build(&b, v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );

    // Previews off: another branch is stored, not deployed.
    let feature = b.path("feature");
    python_app(&feature, "feature", 200);
    let (st, v) = push(&b, "shop", &feature, "feature/x", "2222", "f");
    assert_eq!(st, 200, "{v}");
    assert!(v["ignored"].as_str().unwrap().contains("previews"), "{v}");

    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/shop/settings",
        r#"{"previews":true,"preview_max":1,"preview_env":{"GREETING":"preview"}}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["git"]["previews"], true, "{v}");
    assert_eq!(v["git"]["preview_env"], serde_json::json!(["GREETING"]));
    let (st, v) = push(&b, "shop", &feature, "feature/x", "3333", "f");
    assert_eq!(st, 202, "{v}");
    assert_eq!(v["app"], "feature-x--shop", "{v}");
    assert_eq!(
        wait_build(&b, v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    wait_body(&b, "feature-x--shop", "feature v1");
    assert_eq!(
        app_get(&b, "feature-x--shop", "/env"),
        (200, "preview\n".into())
    );
    assert_eq!(app_get(&b, "shop", "/env"), (200, "prod\n".into()));
    assert!(app_get(&b, "shop", "/").1.starts_with("main "));

    // The cap: a second preview is refused.
    let (st, v) = push(&b, "shop", &feature, "other", "4444", "o");
    assert_eq!(st, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("previews"), "{v}");

    // The deploy branch cannot be deleted; deleting the feature branch removes its preview.
    let (st, v) = api(&b, "DELETE", "/api/v1/apps/shop/branches/main", "");
    assert_eq!(st, 409, "{v}");
    let (st, v) = api(&b, "DELETE", "/api/v1/apps/shop/branches/feature/x", "");
    assert_eq!(st, 204, "{v}");
    let (st, _) = api(&b, "GET", "/api/v1/apps/feature-x--shop", "");
    assert_eq!(st, 404);
    assert_ne!(app_get(&b, "feature-x--shop", "/env").0, 200);
    assert_eq!(app_get(&b, "shop", "/env"), (200, "prod\n".into()));
}

/// K1 for the queue: a build still waiting for a build slot when berth is killed runs after the
/// restart (no push is dropped); the one cut off while building fails.
#[test]
fn a_build_waiting_for_its_turn_runs_after_berth_is_killed() {
    let mut b = Berth::start_with(BIN, "build_concurrency = 1", &[], "");
    create_app(&b, "slow");
    create_app(&b, "next");
    let slow = b.path("slow-src");
    site(&slow, "slow\n", "sleep 30.25", None);
    let (_, v) = push(&b, "slow", &slow, "main", "aaaa", "slow");
    let slow_id = v["id"].as_i64().unwrap();
    eventually(T, "the slow build to run", || {
        (build(&b, slow_id)["step"] == "build").then_some(())
    });
    let next = b.path("next-src");
    site(&next, "next\n", "true", None);
    let (_, v) = push(&b, "next", &next, "main", "bbbb", "next");
    let next_id = v["id"].as_i64().unwrap();
    assert_eq!(build(&b, next_id)["status"], "queued");
    b.crash_and_restart(BIN);
    let d = wait_build(&b, next_id);
    assert_eq!(d["status"], "succeeded", "{d}");
    assert_eq!(app_get(&b, "next", "/"), (200, "next\n".into()));
    let d = wait_build(&b, slow_id);
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("restart"), "{d}");
    eventually(T, "the cut-off build's process to be gone", || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 30.25"])
            .output()
            .unwrap();
        (!out.status.success()).then_some(())
    });
}
