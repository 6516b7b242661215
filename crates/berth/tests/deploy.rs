//! Issue 3: the deploy engine, driven through the real CLI and the real API against the real
//! binary: deploy, redeploy under load with zero errors, a failed health check keeps the old
//! release, rollback, crash restart, `kill -9` mid-deploy (K1), env, scale, domains, logs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use test_support::{eventually, run, write_file, Berth};

#[test]
fn deploy_through_the_cli_serves_over_http_and_https() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "first", 200);
    write_file(&src.join(".gitignore"), b"secret.txt\n");
    write_file(&src.join("secret.txt"), b"not uploaded\n");
    let t0 = Instant::now();
    let out = deploy(&b, "hello", &src);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hello.localhost"),
        "prints the URL: {}",
        text(&out)
    );
    assert!(
        stdout.contains("Waiting for 1 web instance"),
        "streams the deploy log: {}",
        text(&out)
    );
    eprintln!("deploy took {:?}", t0.elapsed());
    let body = wait_body(&b, "hello", "first v1 web.1");
    assert!(body.starts_with("first"));
    // .gitignore'd files are not uploaded.
    let (_, rel) = api(&b, "GET", "/api/v1/apps/hello", "");
    assert_eq!(rel["live_release"], 1, "{rel}");
    assert!(!b.path("data/apps/hello/releases/v1/secret.txt").exists());
    assert!(b.path("data/apps/hello/releases/v1/app.py").exists());
    // HTTPS with the local CA, HTTP/2.
    let port = b.https.port();
    let (ok, out, _) = common::curl_https(&b, "hello.localhost", "/", &["--http2"]);
    assert!(ok && out.contains("first v1"), "{out}");
    // The API is also reachable through the proxy at berth.<domain>, over HTTPS only: plain
    // HTTP gets a redirect, so a token never travels in clear text.
    let r = common::get_with(
        b.http,
        "berth.localhost",
        "/api/v1/apps",
        &[("Authorization", &format!("Bearer {}", b.token))],
    );
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://berth.localhost:{port}/api/v1/apps").as_str())
    );
    let (ok, out, _) = common::curl_https(
        &b,
        "berth.localhost",
        "/api/v1/apps",
        &["-H", &b.auth(), "-w", "\n%{http_code}"],
    );
    assert!(ok && out.ends_with("\n200"), "{out}");
    assert!(out.contains("\"hello\""), "{out}");
    // `berth apps`, `ps`, `releases` in human and JSON form.
    let out = cli(&b, &["apps"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("hello"),
        "{}",
        text(&out)
    );
    let out = cli(&b, &["ps", "-a", "hello", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v[0]["state"], "running", "{}", text(&out));
}

#[test]
fn redeploys_under_load_have_zero_errors_and_drain_old_instances() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "gen0", 200);
    let out = deploy(&b, "zdt", &src);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "zdt", "gen0");

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for keepalive in [true, false] {
        let (stop, ok, bad, errors, addr) = (
            stop.clone(),
            ok.clone(),
            bad.clone(),
            errors.clone(),
            b.http,
        );
        clients.push(std::thread::spawn(move || {
            let mut conn: Option<common::Conn> = None;
            while !stop.load(Ordering::Relaxed) {
                let r = if keepalive {
                    let c = conn.get_or_insert_with(|| common::Conn::open(addr));
                    c.get("zdt.localhost", "/")
                } else {
                    Some(common::get(addr, "zdt.localhost", "/"))
                };
                match r {
                    Some(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        let mut e = errors.lock().unwrap();
                        if e.len() < 5 {
                            e.push(format!("{:?}", other.map(|r| (r.status, r.text()))));
                        }
                        conn = None;
                    }
                }
            }
        }));
    }
    let mut old_pids = Vec::new();
    for gen in 1..=3 {
        old_pids.extend(web_pids(&b, "zdt"));
        python_app(&src, &format!("gen{gen}"), 200);
        let out = deploy(&b, "zdt", &src);
        assert!(out.status.success(), "{}", text(&out));
        // The switch is done when the deploy ends: the new release answers at once.
        let (st, body) = app_get(&b, "zdt", "/");
        assert_eq!(st, 200);
        assert!(body.starts_with(&format!("gen{gen} ")), "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, bad) = (ok.load(Ordering::Relaxed), bad.load(Ordering::Relaxed));
    assert!(ok > 50, "the clients made progress: {ok}");
    assert_eq!(
        bad,
        0,
        "{ok} ok, {bad} failed: {:?}",
        errors.lock().unwrap()
    );
    // Old instances were stopped after the drain.
    for pid in old_pids {
        eventually(T, "old instance to exit", || {
            (!pid_alive(pid)).then_some(())
        });
    }
    let (_, v) = api(&b, "GET", "/api/v1/apps/zdt/instances", "");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn failed_health_check_keeps_the_old_release_and_rollback_needs_no_rebuild() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "good", 200);
    assert!(deploy(&b, "app", &src).status.success());
    wait_body(&b, "app", "good v1");

    // v2 answers 500 on /health: the deploy fails, v1 keeps serving.
    python_app(&src, "sick", 500);
    let out = deploy(&b, "app", &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("health check failed"), "{}", text(&out));
    let (st, body) = app_get(&b, "app", "/");
    assert_eq!((st, body.starts_with("good v1")), (200, true), "{body}");
    let (_, deploys) = api(&b, "GET", "/api/v1/apps/app/deploys", "");
    assert_eq!(deploys[0]["status"], "failed", "{deploys}");
    assert!(deploys[0]["reason"]
        .as_str()
        .unwrap()
        .contains("health check failed"));
    // The deploy log has the instance's log tail.
    let id = deploys[0]["id"].as_i64().unwrap();
    let (_, log) = api(&b, "GET", &format!("/api/v1/apps/app/deploys/{id}/log"), "");
    assert!(
        log.as_str().unwrap().contains("/health HTTP/1.1\" 500"),
        "the log tail: {log}"
    );
    // Only v1's instance runs, and only its log is kept (the failed one's tail is in the deploy
    // log; its files would otherwise pile up with every failed deploy).
    let (_, inst) = api(&b, "GET", "/api/v1/apps/app/instances", "");
    assert_eq!(inst.as_array().unwrap().len(), 1, "{inst}");
    assert_eq!(inst[0]["release"], 1);
    let logs: Vec<String> = std::fs::read_dir(b.path("data/apps/app/logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(logs.iter().all(|l| l.starts_with("app.v1.")), "{logs:?}");

    // v3 good, then `berth rollback` goes back to the previous good release (v1).
    python_app(&src, "third", 200);
    assert!(deploy(&b, "app", &src).status.success());
    wait_body(&b, "app", "third v3");
    let out = cli(&b, &["rollback", "-a", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "app", "good v4");
    let (_, rels) = api(&b, "GET", "/api/v1/apps/app/releases", "");
    assert_eq!(rels[0]["version"], 4);
    assert_eq!(rels[0]["description"], "Rollback to v1");
    assert_eq!(rels[0]["live"], true);
    assert_eq!(rels[2]["status"], "failed", "{rels}");
    // Rolling back to a named version.
    let out = cli(&b, &["rollback", "3", "-a", "app"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "app", "third v5");
}

#[test]
fn a_crashed_instance_restarts() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "crashy", 200);
    assert!(deploy(&b, "crashy", &src).status.success());
    wait_body(&b, "crashy", "crashy v1");
    let pid = web_pids(&b, "crashy")[0];
    run("kill", &["-9", &pid.to_string()]);
    let new = eventually(T, "a new pid", || {
        web_pids(&b, "crashy")
            .into_iter()
            .find(|p| *p != pid && pid_alive(*p))
    });
    assert_ne!(new, pid);
    wait_body(&b, "crashy", "crashy v1");
}

#[test]
fn kill_9_mid_deploy_then_restart_recovers_k1() {
    let mut b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "stable", 200);
    assert!(deploy(&b, "k1", &src).status.success());
    wait_body(&b, "k1", "stable v1");
    let pid_v1 = web_pids(&b, "k1")[0];

    // A kill -9 with nothing running: the instance survives and is adopted.
    b.crash_and_restart(BIN);
    wait_body(&b, "k1", "stable v1");
    assert_eq!(web_pids(&b, "k1"), vec![pid_v1], "adopted, not restarted");

    // v2 has a slow build; berth is killed while it runs.
    python_app(&src, "next", 200);
    let mut toml = std::fs::read_to_string(src.join("berth.toml")).unwrap();
    toml.push_str("[build]\ncommand = \"echo building; sleep 30\"\n");
    write_file(&src.join("berth.toml"), toml.as_bytes());
    let (st, v) = upload(&b, "k1", &src);
    assert_eq!(st, 202, "{v}");
    let id = v["id"].as_i64().unwrap();
    eventually(T, "the build to start", || {
        let (_, d) = api(&b, "GET", &format!("/api/v1/apps/k1/deploys/{id}"), "");
        (d["step"] == "build").then_some(())
    });
    b.crash_and_restart(BIN);
    let (_, d) = api(&b, "GET", &format!("/api/v1/apps/k1/deploys/{id}"), "");
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("restart"), "{d}");
    wait_body(&b, "k1", "stable v1");
    assert_eq!(web_pids(&b, "k1"), vec![pid_v1]);
    // The store is intact and the app deploys again.
    let mut toml = std::fs::read_to_string(src.join("berth.toml")).unwrap();
    toml = toml.replace("sleep 30", "true");
    write_file(&src.join("berth.toml"), toml.as_bytes());
    let out = deploy(&b, "k1", &src);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "k1", "next v3");
    eventually(T, "v1 to stop", || (!pid_alive(pid_v1)).then_some(()));
}

#[test]
fn env_scale_domains_and_logs() {
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "cfg", 200);
    let out = deploy(&b, "cfg", &src);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Starting 1 web instance: "),
        "{}",
        text(&out)
    );
    wait_body(&b, "cfg", "cfg v1");

    // env:set restarts with the value; listings mask it; it never reaches berth's log.
    let secret = "s3cr3t-value-4711";
    let out = cli(&b, &["env:set", &format!("GREETING={secret}"), "-a", "cfg"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("restarted cfg with the new env"),
        "{}",
        text(&out)
    );
    eventually(T, "the new env", || {
        let (_, body) = app_get(&b, "cfg", "/env");
        body.contains(secret).then_some(())
    });
    let (_, env) = api(&b, "GET", "/api/v1/apps/cfg/env", "");
    assert_ne!(env["GREETING"], secret, "masked: {env}");
    let (_, env) = api(&b, "GET", "/api/v1/apps/cfg/env?reveal=true", "");
    assert_eq!(env["GREETING"], secret);
    let out = cli(&b, &["env:unset", "GREETING", "-a", "cfg"]);
    assert!(out.status.success(), "{}", text(&out));
    eventually(T, "the env without GREETING", || {
        let (_, body) = app_get(&b, "cfg", "/env");
        (body.trim() == "-").then_some(())
    });
    assert!(!b.stderr().contains(secret), "env values never logged");
    let (_, audit) = api(&b, "GET", "/api/v1/audit", "");
    assert!(!audit.to_string().contains(secret));
    assert!(audit.to_string().contains("GREETING"));

    // scale web=2: both instances serve.
    let out = cli(&b, &["scale", "web=2", "-a", "cfg"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("scaled cfg"),
        "{}",
        text(&out)
    );
    eventually(T, "both dynos to answer", || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let (_, body) = app_get(&b, "cfg", "/");
            seen.insert(body.split_whitespace().nth(2).unwrap_or("").to_string());
        }
        (seen.contains("web.1") && seen.contains("web.2")).then_some(())
    });
    assert_eq!(web_pids(&b, "cfg").len(), 2);

    // A custom domain.
    let out = cli(&b, &["domains:add", "www.example.test", "-a", "cfg"]);
    assert!(out.status.success(), "{}", text(&out));
    let r = common::get(b.http, "www.example.test", "/");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("cfg "), "{}", r.text());
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/cfg/domains",
        r#"{"host":"www.example.test"}"#,
    );
    assert_eq!(st, 409, "{v}");

    // Logs: the app's request lines, prefixed with the instance.
    let out = cli(&b, &["logs", "-a", "cfg", "-n", "200"]);
    assert!(out.status.success(), "{}", text(&out));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(
        logs.contains("web.1 | ") && logs.contains("request"),
        "{logs}"
    );
}

#[test]
fn static_site_and_worker_processes() {
    let b = Berth::start(BIN, "");
    let site = tmpdir(&b, "site");
    write_file(&site.join("index.html"), b"<h1>static</h1>\n");
    let out = deploy(&b, "site", &site);
    assert!(out.status.success(), "{}", text(&out));
    let (st, body) = app_get(&b, "site", "/");
    assert_eq!((st, body.as_str()), (200, "<h1>static</h1>\n"));
    // A worker without a route, and a release command that runs before the switch. The
    // release is read-only to the app (a write there fails, with a hint); its storage dir is
    // where it writes.
    let w = tmpdir(&b, "w");
    write_file(
        &w.join("Procfile"),
        b"worker: echo working; exec sleep 1000\nrelease: echo migrating > migrated.txt\n",
    );
    let out = deploy(&b, "w", &w);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Read-only file system") && text(&out).contains("$BERTH_STORAGE"),
        "{}",
        text(&out)
    );
    write_file(
        &w.join("Procfile"),
        b"worker: echo working; exec sleep 1000\nrelease: echo migrating > $BERTH_STORAGE/migrated.txt\n",
    );
    let out = deploy(&b, "w", &w);
    assert!(out.status.success(), "{}", text(&out));
    assert!(b.path("data/apps/w/storage/migrated.txt").exists());
    let (_, inst) = api(&b, "GET", "/api/v1/apps/w/instances", "");
    assert_eq!(inst[0]["proc_type"], "worker", "{inst}");
    assert_eq!(inst[0]["state"], "running", "{inst}");
    let (st, _) = app_get(&b, "w", "/");
    assert_eq!(st, 404, "a worker-only app has no route");
}

/// Processes this berth's runtime tagged (`BERTH_OWNER=<data dir>`) whose instance id starts
/// with `prefix`.
fn tagged_processes(b: &Berth, prefix: &str) -> Vec<u32> {
    let owner = format!(
        "BERTH_OWNER={}",
        b.path("data").canonicalize().unwrap().display()
    );
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let vars: Vec<String> = env
            .split(|&c| c == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let ours = vars.contains(&owner);
        let id = vars.iter().find_map(|v| v.strip_prefix("BERTH_INSTANCE="));
        if ours && id.is_some_and(|id| id.starts_with(prefix)) && pid_alive(u64::from(pid)) {
            found.push(pid);
        }
    }
    found
}

/// Battery K1 at each step of a deploy: `kill -9` of berth while the deploy is building, waiting
/// for the health check, or draining; after the restart the deploy is failed (before the switch)
/// or finished (after it), the right release serves, and nothing of the loser keeps running.
#[test]
fn kill_9_at_each_step_of_a_deploy_k1() {
    for step in ["build", "health", "drain"] {
        let mut b = Berth::start(BIN, "");
        let src = tmpdir(&b, "src");
        python_app(&src, "old", 200);
        assert!(deploy(&b, "k", &src).status.success(), "{step}");
        wait_body(&b, "k", "old v1");
        let old_pid = web_pids(&b, "k")[0];

        python_app(&src, "new", 200);
        match step {
            "build" => {
                let toml = std::fs::read_to_string(src.join("berth.toml")).unwrap();
                let toml = format!("{toml}[build]\ncommand = \"sleep 30\"\n");
                write_file(&src.join("berth.toml"), toml.as_bytes());
            }
            "health" => write_file(&src.join("delay"), b"30"),
            _ => {}
        }
        // For the drain: a slow request in flight on the old instance holds it.
        let slow = (step == "drain").then(|| {
            let addr = b.http;
            let s = std::thread::spawn(move || common::get(addr, "k.localhost", "/slow"));
            let started = b.path("data/apps/k/storage/slow-started");
            eventually(T, "the slow request to reach the app", || {
                started.exists().then_some(())
            });
            s
        });
        let (st, v) = upload(&b, "k", &src);
        assert_eq!(st, 202, "{step}: {v}");
        let id = v["id"].as_i64().unwrap();
        eventually(T, &format!("the deploy to reach {step}"), || {
            let (_, d) = api(&b, "GET", &format!("/api/v1/apps/k/deploys/{id}"), "");
            (d["step"] == step).then_some(())
        });

        b.crash_and_restart(BIN);

        let (_, d) = api(&b, "GET", &format!("/api/v1/apps/k/deploys/{id}"), "");
        let (want_status, want_body) = if step == "drain" {
            ("succeeded", "new v2")
        } else {
            ("failed", "old v1")
        };
        assert_eq!(d["status"], want_status, "{step}: {d}");
        wait_body(&b, "k", want_body);
        if step == "drain" {
            eventually(T, "the old instance to be stopped", || {
                (!pid_alive(old_pid)).then_some(())
            });
        } else {
            assert_eq!(web_pids(&b, "k"), vec![old_pid], "{step}: v1 adopted");
            // Nothing of v2 runs: no instance, no build left by the crash.
            eventually(T, "v2's processes to be gone", || {
                (tagged_processes(&b, "k.v2.").is_empty()
                    && tagged_processes(&b, "build.").is_empty())
                .then_some(())
            });
        }
        if let Some(s) = slow {
            let _ = s.join();
        }
    }
}

/// SIGQUIT stops berth and leaves its apps running (an upgrade: the next start adopts them);
/// SIGTERM stops the apps too.
#[test]
fn sigquit_keeps_the_apps_for_an_upgrade_and_sigterm_stops_them() {
    let mut b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "up", 200);
    assert!(deploy(&b, "up", &src).status.success());
    wait_body(&b, "up", "up v1");
    let pid = web_pids(&b, "up")[0];
    b.signal("QUIT");
    eventually(T, "berth to exit", || {
        b.child.try_wait().unwrap().map(|_| ())
    });
    assert!(pid_alive(pid), "the app outlives berth");
    b.crash_and_restart(BIN);
    wait_body(&b, "up", "up v1");
    assert_eq!(web_pids(&b, "up"), vec![pid], "adopted");
    b.signal("TERM");
    eventually(T, "berth to exit", || {
        b.child.try_wait().unwrap().map(|_| ())
    });
    eventually(T, "the app to be stopped", || {
        (!pid_alive(pid)).then_some(())
    });
}
