//! Issue 5, Swarm: a Dockerfile app with `runtime = "swarm"` runs as a Docker Swarm service on a
//! real single-node swarm (`docker swarm init --advertise-addr 127.0.0.1` when the daemon is in
//! none), redeployed under load with zero errors. Skipped, loudly, only when no daemon answers
//! or it cannot become a swarm manager.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, app_get, cli, create_app, text, upload, wait_body, wait_deploy, T};
use common::docker::{deploy_ok, docker_app, docker_available, serial};
use common::BIN;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use test_support::{eventually, write_file, Berth};

/// Is the daemon a swarm manager (made one when it is in no swarm)?
fn swarm_manager() -> bool {
    if !docker_available() {
        return false;
    }
    let state = |what: &str| {
        let out = Command::new("docker")
            .args(["info", "--format", what])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    if state("{{.Swarm.LocalNodeState}}") == "inactive" {
        let out = Command::new("docker")
            .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
            .output()
            .unwrap();
        // Another test may have made it one meanwhile.
        if !out.status.success() && state("{{.Swarm.LocalNodeState}}") != "active" {
            eprintln!(
                "\n!!! SKIPPED: `docker swarm init` failed: {} !!!\n",
                text(&out)
            );
            return false;
        }
    }
    let ok = state("{{.Swarm.ControlAvailable}}") == "true";
    if !ok {
        eprintln!("\n!!! SKIPPED: the Docker daemon is in a swarm but no manager !!!\n");
    }
    ok
}

/// A Swarm app: the busybox Dockerfile app, listening only 2 s after its start (as real apps
/// do: Swarm must not take a running task for a ready one), plus a berth.toml with `extra`
/// after the runtime.
fn swarm_app(dir: &Path, body: &str, extra: &str) {
    docker_app(dir, body, "");
    write_file(
        &dir.join("Dockerfile"),
        b"FROM scratch\n\
          COPY busybox /bin/busybox\n\
          RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
          COPY www /www\n\
          CMD [\"/bin/sh\", \"-c\", \"echo container up on $PORT; sleep 2; exec httpd -f -v -p $PORT -h /www\"]\n",
    );
    write_file(
        &dir.join("berth.toml"),
        format!("runtime = \"swarm\"\n{extra}").as_bytes(),
    );
}

/// web as the image runs it, plus a worker that listens nowhere.
const PROCFILE: &str = "web: echo container up on $PORT; sleep 2; exec httpd -f -v -p $PORT -h /www\nworker: echo working; exec sleep 100000\n";

/// GET on the daemon's API (curl over its socket).
fn docker_get(path: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-s", "--unix-socket", "/var/run/docker.sock"])
        .arg(format!("http://d{path}"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The owner label of the swarm services of the berth with data dir `data`.
fn swarm_owner(data: &Path) -> String {
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let id = std::fs::read_to_string(data.join("berth-id")).unwrap_or_default();
    format!("{}#{}", data.display(), id.trim())
}

/// The swarm services of app `app` of berth `b`: (id, name).
fn services(b: &Berth, app: &str) -> Vec<(String, String)> {
    let owner = swarm_owner(&b.path("data"));
    let filter = serde_json::json!({
        "label": [format!("berth.app={app}"), format!("berth.owner={owner}")]
    })
    .to_string();
    let v = docker_get(&format!("/services?filters={}", urlencode(&filter)));
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["ID"].as_str().unwrap().to_string(),
                s["Spec"]["Name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Running tasks of service `name`, with the release each runs.
fn running_tasks(name: &str) -> Vec<String> {
    let filter = format!(r#"{{"service":["{name}"],"desired-state":["running"]}}"#);
    let v = docker_get(&format!("/tasks?filters={}", urlencode(&filter)));
    v.as_array()
        .unwrap()
        .iter()
        .filter(|t| t["Status"]["State"] == "running")
        .map(|t| {
            t["Spec"]["ContainerSpec"]["Labels"]["berth.swarm.instance"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The upstreams berth routes `host` to.
fn upstreams(b: &Berth, host: &str) -> Vec<String> {
    let (_, routes) = api(b, "GET", "/api/v1/routes?all=true", "");
    routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["host"] == host)
        .map(|r| {
            r["upstreams"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the services of berth `owner` when the test ends, passed or failed: Swarm keeps
/// them running after berth is gone, by design.
struct RemoveServices(std::path::PathBuf);

impl Drop for RemoveServices {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args(["service", "ls", "-q", "--filter"])
            .arg(format!("label=berth.owner={}", swarm_owner(&self.0)))
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["service", "rm", id]).output();
            }
        }
    }
}

#[test]
fn a_swarm_service_with_two_replicas_redeploys_under_load_with_zero_errors() {
    let _serial = serial();
    if !swarm_manager() {
        return;
    }
    let mut b = Berth::start(BIN, "");
    let _cleanup = RemoveServices(b.path("data"));
    let app = "swarmy";
    create_app(&b, app);
    let src = b.path("swarmy-src");
    // Two replicas of web and a worker (which listens nowhere: running is ready for it).
    let toml =
        "[formation]\nweb = 2\nworker = 1\n[swarm]\nconstraints = [\"node.role == manager\"]\n";
    swarm_app(&src, "swarmy v1\n", toml);
    std::fs::write(src.join("Procfile"), PROCFILE).unwrap();
    deploy_ok(&b, app, &src);
    assert_eq!(app_get(&b, app, "/"), (200, "swarmy v1\n".into()));
    let svcs = services(&b, app);
    assert_eq!(svcs.len(), 2, "{svcs:?}");
    let (service_id, service) = svcs
        .iter()
        .find(|(_, name)| name.contains("-web-"))
        .cloned()
        .unwrap();
    let worker = svcs
        .iter()
        .find(|(_, n)| n.contains("-worker-"))
        .unwrap()
        .1
        .clone();
    assert_eq!(running_tasks(&worker).len(), 1);
    assert_eq!(running_tasks(&service).len(), 2);
    // berth routes to both tasks (their host-mode ports), not through a VIP.
    let host = format!("{app}.localhost");
    eventually(T, "both tasks routed", || {
        (upstreams(&b, &host).len() == 2).then_some(())
    });

    // `berth nodes`: the one node, its role and berth's two tasks on it.
    let (st, nodes) = api(&b, "GET", "/api/v1/nodes", "");
    assert_eq!(st, 200, "{nodes}");
    let node = &nodes.as_array().unwrap()[0];
    assert_eq!(node["role"], "manager", "{nodes}");
    assert_eq!(node["state"], "ready", "{nodes}");
    assert!(node["tasks"].as_u64().unwrap() >= 2, "{nodes}");
    let out = cli(&b, &["nodes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("manager (leader)"), "{}", text(&out));

    // The tasks' output reaches `berth logs`.
    eventually(T, "the tasks' output in berth logs", || {
        let out = cli(&b, &["logs", "-a", app]);
        text(&out).contains("container up on").then_some(())
    });

    // Redeploys under load: Swarm replaces one task at a time, new before old, and berth
    // follows the tasks; every request is answered 200 by some release.
    let stop = AtomicBool::new(false);
    let (ok, bad) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let (st, body) = app_get(&b, app, "/");
                    if st == 200 && body.starts_with("swarmy v") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        eprintln!("bad answer: {st} {body:?}");
                    }
                }
            });
        }
        for v in 2..=3 {
            swarm_app(&src, &format!("swarmy v{v}\n"), toml);
            std::fs::write(src.join("Procfile"), PROCFILE).unwrap();
            deploy_ok(&b, app, &src);
            wait_body(&b, app, &format!("swarmy v{v}"));
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "swarm redeploys under load: {} ok, {} bad",
        ok.load(Ordering::Relaxed),
        bad.load(Ordering::Relaxed)
    );
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 50);
    // Still the same services, updated in place; only the new release's tasks run.
    assert!(services(&b, app).contains(&(service_id.clone(), service.clone())));
    assert_eq!(services(&b, app).len(), 2);
    assert!(running_tasks(&worker)
        .iter()
        .all(|t| t.starts_with("swarmy.v3.")));
    let tasks = running_tasks(&service);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(
        tasks.iter().all(|t| t.starts_with("swarmy.v3.")),
        "{tasks:?}"
    );

    // A release whose tasks die at once: Swarm rolls back by itself, the deploy fails and
    // says so, v3 keeps serving.
    swarm_app(&src, "swarmy v4\n", toml);
    std::fs::write(
        src.join("Procfile"),
        "web: echo crashing on purpose; exit 3\nworker: exec sleep 100000\n",
    )
    .unwrap();
    let (st, v) = upload(&b, app, &src);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(&b, app, v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("roll") && reason.contains("previous release"),
        "{reason}"
    );
    eventually(T, "the rollback to finish", || {
        let tasks = running_tasks(&service);
        (tasks.len() == 2 && tasks.iter().all(|t| t.starts_with("swarmy.v3."))).then_some(())
    });
    assert_eq!(app_get(&b, app, "/"), (200, "swarmy v3\n".into()));

    // Scaling changes the replicas in place, and the route follows.
    let (st, v) = api(
        &b,
        "PUT",
        &format!("/api/v1/apps/{app}/formation"),
        r#"{"web": 3}"#,
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        wait_deploy(&b, app, v["deploy"]["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    assert_eq!(running_tasks(&service).len(), 3);
    eventually(T, "three tasks routed", || {
        (upstreams(&b, &host).len() == 3).then_some(())
    });
    // `ps` shows each task, with the port it publishes.
    let (st, insts) = api(&b, "GET", &format!("/api/v1/apps/{app}/instances"), "");
    assert_eq!(st, 200, "{insts}");
    let mut ports: Vec<u64> = insts
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["port"].as_u64())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3, "one row per task: {insts}");

    // kill -9 of berth: the tasks keep serving; the restart finds the service as it was.
    b.crash_and_restart(BIN);
    assert_eq!(app_get(&b, app, "/"), (200, "swarmy v3\n".into()));
    assert!(services(&b, app).contains(&(service_id, service.clone())));
    assert_eq!(services(&b, app).len(), 2);
    assert_eq!(running_tasks(&service).len(), 3);
    eventually(T, "three tasks routed after the restart", || {
        (upstreams(&b, &host).len() == 3).then_some(())
    });

    // Destroying the app removes its service.
    let (st, _) = api(&b, "DELETE", &format!("/api/v1/apps/{app}"), "");
    assert_eq!(st, 204);
    assert!(services(&b, app).is_empty());
}

#[test]
fn a_first_release_that_never_serves_fails_and_leaves_no_service() {
    let _serial = serial();
    if !swarm_manager() {
        return;
    }
    let b = Berth::start(BIN, "");
    let _cleanup = RemoveServices(b.path("data"));
    let app = "swarmbad";
    create_app(&b, app);
    let src = b.path("src");
    swarm_app(&src, "never\n", "[health]\ntimeout = \"5s\"\n");
    std::fs::write(
        src.join("Procfile"),
        "web: echo crashing on purpose; exit 3\n",
    )
    .unwrap();
    let (_, v) = upload(&b, app, &src);
    let d = wait_deploy(&b, app, v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    assert!(services(&b, app).is_empty(), "{:?}", services(&b, app));
}

#[test]
fn a_swarm_app_with_accessory_services_is_refused_with_a_hint() {
    let _serial = serial();
    if !swarm_manager() {
        return;
    }
    let b = Berth::start(BIN, "");
    let _cleanup = RemoveServices(b.path("data"));
    let app = "swarmsvc";
    create_app(&b, app);
    let src = b.path("src");
    swarm_app(
        &src,
        "x\n",
        "[services.db]\nimage = \"busybox-does-not-matter\"\n",
    );
    let (st, v) = upload(&b, app, &src);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(&b, app, v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("Swarm app") && reason.contains("hint"),
        "{reason}"
    );
    assert!(services(&b, app).is_empty());
}

/// A registry (Debian's `docker-registry`) on a loopback port, stopped on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Option<Registry> {
        if !Path::new("/usr/bin/docker-registry").exists() {
            eprintln!(
                "\n!!! SKIPPED: no /usr/bin/docker-registry (apt install docker-registry) !!!\n"
            );
            return None;
        }
        // The registry cannot say which port it bound: take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        write_file(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("registry").display()
            )
            .as_bytes(),
        );
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry { child, addr };
        eventually(T, "the registry to answer", || r.catalog().map(|_| ()));
        Some(r)
    }

    /// The repositories it holds.
    fn catalog(&self) -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "2"])
            .arg(format!("http://{}/v2/_catalog", self.addr))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn with_a_registry_the_image_is_pushed_and_tasks_may_run_on_any_node() {
    let _serial = serial();
    if !swarm_manager() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(registry) = Registry::start(dir.path()) else {
        return;
    };
    let b = Berth::start_with(BIN, &format!("registry = \"{}\"", registry.addr), &[], "");
    let _cleanup = RemoveServices(b.path("data"));
    let app = "swarmreg";
    create_app(&b, app);
    let src = b.path("src");
    swarm_app(&src, "from the registry\n", "");
    deploy_ok(&b, app, &src);
    assert_eq!(app_get(&b, app, "/"), (200, "from the registry\n".into()));
    // The service names the registry's copy, and nothing pins it to this node.
    let (id, _) = services(&b, app)[0].clone();
    let svc = docker_get(&format!("/services/{id}"));
    let image = svc["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
        .as_str()
        .unwrap();
    assert!(image.starts_with(&format!("{}/", registry.addr)), "{image}");
    let constraints = &svc["Spec"]["TaskTemplate"]["Placement"]["Constraints"];
    assert!(
        !constraints.to_string().contains("node.id"),
        "{constraints}"
    );
    let catalog = registry.catalog().unwrap();
    assert!(
        catalog.to_string().contains(&format!("/{app}")),
        "{catalog}"
    );
    let (st, _) = api(&b, "DELETE", &format!("/api/v1/apps/{app}"), "");
    assert_eq!(st, 204);
}

#[test]
fn without_a_registry_the_tasks_stay_on_the_node_that_has_the_image() {
    let _serial = serial();
    if !swarm_manager() {
        return;
    }
    let b = Berth::start(BIN, "");
    let _cleanup = RemoveServices(b.path("data"));
    let app = "swarmlocal";
    create_app(&b, app);
    let src = b.path("src");
    swarm_app(&src, "local\n", "");
    deploy_ok(&b, app, &src);
    let (id, _) = services(&b, app)[0].clone();
    let svc = docker_get(&format!("/services/{id}"));
    let constraints = svc["Spec"]["TaskTemplate"]["Placement"]["Constraints"].to_string();
    assert!(constraints.contains("node.id == "), "{constraints}");
    // Its tasks are on the app's own overlay network, not on Docker's default bridge (where
    // other tenants' containers and image builds are).
    let task_networks = eventually(T, "a running task", || {
        let filter = urlencode(&format!(
            r#"{{"label":["com.docker.swarm.service.id={id}"]}}"#
        ));
        let list = docker_get(&format!("/containers/json?filters={filter}"));
        list.as_array()?
            .first()
            .map(|c| c["NetworkSettings"]["Networks"].clone())
    });
    let names: Vec<String> = task_networks.as_object().unwrap().keys().cloned().collect();
    assert!(!names.iter().any(|n| n == "bridge"), "{names:?}");
    let overlay = names
        .iter()
        .find(|n| n.ends_with(&format!("-swarm-{app}")))
        .unwrap_or_else(|| panic!("{names:?}"))
        .clone();
    let images = || {
        let owner = std::fs::canonicalize(b.path("data")).unwrap();
        let filter = urlencode(&format!(
            r#"{{"label":["berth.app={app}","berth.owner={}"]}}"#,
            owner.display()
        ));
        docker_get(&format!("/images/json?filters={filter}"))
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(images() > 0, "the app's image exists");
    let (st, _) = api(&b, "DELETE", &format!("/api/v1/apps/{app}"), "");
    assert_eq!(st, 204);
    // Destroying the app removes its images too (once Swarm has let go of its tasks).
    eventually(T, "the app's images to be removed", || {
        (images() == 0).then_some(())
    });
    // And its network.
    let gone = docker_get(&format!("/networks/{overlay}"));
    assert!(gone["Id"].is_null(), "the overlay network is left: {gone}");
}
