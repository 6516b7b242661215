//! Issue 5: apps with a Dockerfile run in containers on a real `dockerd` (images built `FROM
//! scratch` from Debian's busybox-static: there is no registry). Skipped, loudly, only when no
//! daemon answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, app_get, cli, create_app, text, upload, wait_body, wait_deploy, T};
use common::docker::{deploy_ok, docker_app, docker_available, serial};
use common::BIN;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use test_support::{eventually, write_file, Berth};

#[test]
fn a_dockerfile_app_runs_in_containers_and_redeploys_under_load_with_zero_errors() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let mut b = Berth::start(BIN, "");
    create_app(&b, "dock");
    let src = b.path("dock-src");
    docker_app(&src, "dock v1\n", "");
    let d = deploy_ok(&b, "dock", &src);
    assert_eq!(app_get(&b, "dock", "/"), (200, "dock v1\n".into()));
    // The build log (Dockerfile steps) is in the deploy log; the container's output in `logs`.
    let (_, log) = api(
        &b,
        "GET",
        &format!("/api/v1/apps/dock/deploys/{}/log", d["id"]),
        "",
    );
    let log = log.as_str().unwrap().to_string();
    assert!(log.contains("COPY www /www"), "{log}");
    eventually(T, "the container's output in berth logs", || {
        let out = cli(&b, &["logs", "-a", "dock"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("container up on")
            .then_some(())
    });

    // Redeploys under load: every request answered 200 by some release.
    let stop = AtomicBool::new(false);
    let (ok, bad) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let (st, body) = app_get(&b, "dock", "/");
                    if st == 200 && body.starts_with("dock v") {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        bad.fetch_add(1, Ordering::Relaxed);
                        eprintln!("bad answer: {st} {body:?}");
                    }
                }
            });
        }
        for v in 2..=4 {
            docker_app(&src, &format!("dock v{v}\n"), "");
            deploy_ok(&b, "dock", &src);
            wait_body(&b, "dock", &format!("dock v{v}"));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20);

    // A failing Dockerfile: the deploy fails with the build's error; v4 keeps serving.
    docker_app(
        &src,
        "dock v5\n",
        "RUN [\"/bin/sh\", \"-c\", \"echo boom; exit 7\"]\n",
    );
    let (_, v) = upload(&b, "dock", &src);
    let d = wait_deploy(&b, "dock", v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    assert!(
        d["reason"].as_str().unwrap().contains("image build failed"),
        "{d}"
    );
    assert_eq!(app_get(&b, "dock", "/"), (200, "dock v4\n".into()));

    // kill -9 of berth: the container keeps serving, and the restart adopts it (no duplicate).
    let before = containers("dock");
    assert_eq!(before.len(), 1, "{before:?}");
    b.crash_and_restart(BIN);
    assert_eq!(app_get(&b, "dock", "/"), (200, "dock v4\n".into()));
    assert_eq!(containers("dock"), before);

    // A restart: a new container of the same release, which a kill -9 of berth adopts again.
    let (st, v) = api(&b, "POST", "/api/v1/apps/dock/restart", "");
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        wait_deploy(&b, "dock", v["deploy"]["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    let restarted = containers("dock");
    assert_eq!(restarted.len(), 1, "{restarted:?}");
    assert_ne!(restarted, before);
    assert_eq!(app_get(&b, "dock", "/"), (200, "dock v4\n".into()));
    b.crash_and_restart(BIN);
    assert_eq!(containers("dock"), restarted);

    // A rollback runs the earlier image again, without a build.
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/dock/rollback",
        r#"{"version": 2}"#,
    );
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        wait_deploy(&b, "dock", v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    wait_body(&b, "dock", "dock v2");

    // Destroying the app removes its containers.
    let (st, _) = api(&b, "DELETE", "/api/v1/apps/dock", "");
    assert_eq!(st, 204);
    eventually(T, "the containers to be removed", || {
        containers("dock").is_empty().then_some(())
    });
}

/// Destroy `app`: its containers, services, volumes, images and network go (Docker state does
/// not outlive the test; berth's own stop leaves services running, as they are long-lived).
fn destroy(b: &Berth, app: &str) {
    let (st, v) = api(b, "DELETE", &format!("/api/v1/apps/{app}"), "");
    assert_eq!(st, 204, "{v}");
}

/// Ids of the running containers of berth's app `app` (by the instance label).
fn containers(app: &str) -> Vec<String> {
    let mut ids: Vec<String> = common::docker::app_containers(app)
        .iter()
        .map(|c| c["Id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_unreachable_docker_daemon_fails_dockerfile_apps_with_the_socket_named() {
    let _serial = serial();
    let b = Berth::start_with(BIN, "docker_socket = \"/nonexistent/docker.sock\"", &[], "");
    create_app(&b, "nod");
    let src = b.path("nod-src");
    docker_app(&src, "x\n", "");
    let (st, v) = upload(&b, "nod", &src);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(&b, "nod", v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("/nonexistent/docker.sock"), "{reason}");
    // Apps on processes are unaffected.
    create_app(&b, "plain");
    let site = b.path("plain-src");
    write_file(&site.join("index.html"), b"plain\n");
    let (_, v) = upload(&b, "plain", &site);
    assert_eq!(
        wait_deploy(&b, "plain", v["id"].as_i64().unwrap())["status"],
        "succeeded"
    );
    let out = cli(&b, &["apps"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The image's HEALTHCHECK counts with berth's own: a container it calls unhealthy fails the
/// deploy (berth's HTTP check passes), is stopped, and the previous release keeps serving.
#[test]
fn a_container_whose_healthcheck_fails_is_stopped_and_reported() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    create_app(&b, "hc");
    let src = b.path("hc-src");
    docker_app(&src, "hc v1\n", "");
    deploy_ok(&b, "hc", &src);
    docker_app(
        &src,
        "hc v2\n",
        "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/sh\", \"-c\", \"exit 1\"]\n",
    );
    let (_, v) = upload(&b, "hc", &src);
    let d = wait_deploy(&b, "hc", v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("HEALTHCHECK"), "{d}");
    assert_eq!(app_get(&b, "hc", "/"), (200, "hc v1\n".into()));
    assert_eq!(
        containers("hc").len(),
        1,
        "the unhealthy container was removed"
    );
    destroy(&b, "hc");
}

/// A compose project, unchanged: the web service (busybox httpd with a CGI script) talks to a
/// `db` service (a tiny key-value store on busybox nc) by name; the db keeps its data in a named
/// volume, which survives a redeploy that replaces the db container, with zero failed requests
/// to the web app meanwhile.
#[test]
fn a_compose_project_with_a_database_keeps_its_data_across_redeploys() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    create_app(&b, "shop");
    let src = b.path("shop-src");
    compose_project(&src, "shop v1\n", "# v1");
    deploy_ok(&b, "shop", &src);
    assert_eq!(app_get(&b, "shop", "/"), (200, "shop v1\n".into()));
    assert_eq!(app_get(&b, "shop", "/cgi-bin/kv?put=apple").1, "OK\n");
    assert_eq!(app_get(&b, "shop", "/cgi-bin/kv").1, "apple\nEND\n");
    let out = cli(&b, &["services", "-a", "shop"]);
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listing.contains("db") && listing.contains("running"),
        "{}",
        text(&out)
    );

    // A new web release and a changed db (its container is replaced), under load.
    let stop = AtomicBool::new(false);
    let bad = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let (st, body) = app_get(&b, "shop", "/");
                if st != 200 || !body.starts_with("shop v") {
                    bad.fetch_add(1, Ordering::Relaxed);
                    eprintln!("bad answer: {st} {body:?}");
                }
            }
        });
        compose_project(&src, "shop v2\n", "# v2");
        deploy_ok(&b, "shop", &src);
        wait_body(&b, "shop", "shop v2");
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert_eq!(app_get(&b, "shop", "/cgi-bin/kv").1, "apple\nEND\n");

    // A compose key berth does not support is refused by name; nothing is deployed.
    write_file(
        &src.join("compose.yaml"),
        b"services:\n  web:\n    build: .\n    privileged: true\n",
    );
    let (st, v) = upload(&b, "shop", &src);
    assert_eq!(st, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("privileged"), "{v}");
    assert_eq!(app_get(&b, "shop", "/"), (200, "shop v2\n".into()));
    destroy(&b, "shop");
}

/// The compose project of the test above; `db_marker` changes the db's image.
fn compose_project(dir: &Path, body: &str, db_marker: &str) {
    docker_app(dir, body, "");
    write_file(
        &dir.join("www/cgi-bin/kv"),
        b"#!/bin/sh\necho 'Content-Type: text/plain'\necho ''\ncase \"$QUERY_STRING\" in\n  put=*) echo \"PUT ${QUERY_STRING#put=}\" | nc db 6379 ;;\n  *) echo GET | nc db 6379 ;;\nesac\n",
    );
    std::fs::set_permissions(
        dir.join("www/cgi-bin/kv"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let db = dir.join("db");
    std::fs::create_dir_all(&db).unwrap();
    std::fs::copy("/bin/busybox", db.join("busybox")).unwrap();
    write_file(
        &db.join("db.sh"),
        format!(
            "#!/bin/sh\n{db_marker}\nread -r cmd arg\ncase \"$cmd\" in\n  PUT) echo \"$arg\" >> /data/kv; echo OK ;;\n  GET) cat /data/kv 2>/dev/null; echo END ;;\nesac\n"
        )
        .as_bytes(),
    );
    std::fs::set_permissions(db.join("db.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_file(
        &db.join("Dockerfile"),
        b"FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY db.sh /bin/db.sh\nCMD [\"/bin/sh\", \"-c\", \"mkdir -p /data && exec nc -ll -p 6379 -e /bin/db.sh\"]\n",
    );
    write_file(
        &dir.join("compose.yaml"),
        b"services:\n  web:\n    build: .\n    depends_on: [db]\n  db:\n    build: { context: db }\n    volumes: [\"data:/data\"]\n    healthcheck:\n      test: [\"CMD-SHELL\", \"echo GET | nc 127.0.0.1 6379 | grep -q END\"]\n      interval: 1s\n      retries: 30\nvolumes:\n  data: {}\n",
    );
}

/// A build step that swaps the compose build context for a symlink (to `/`, or to berth's data
/// dir) does not get berth to send what it points to as the context: the deploy fails.
#[test]
fn a_build_context_swapped_for_a_symlink_is_refused() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    create_app(&b, "esc");
    let src = b.path("esc-src");
    write_file(&src.join("ctx/Dockerfile"), b"FROM scratch\nCOPY . /\n");
    write_file(
        &src.join("compose.yaml"),
        b"services:\n  web:\n    build: { context: ctx }\n",
    );
    write_file(
        &src.join("berth.toml"),
        b"[build]\ncommand = \"rm -rf ctx && ln -s / ctx\"\n",
    );
    let (st, v) = upload(&b, "esc", &src);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(&b, "esc", v["id"].as_i64().unwrap());
    assert_eq!(d["status"], "failed", "{d}");
    assert!(d["reason"].as_str().unwrap().contains("symlink"), "{d}");
    destroy(&b, "esc");
}

/// berth.toml `[services]` for an app that runs as processes: the service runs in Docker, its
/// port is published on 127.0.0.1, and `[service_env]` gives the app its address; the data
/// survives a redeploy.
#[test]
fn a_process_app_gets_a_service_and_its_address_from_berth_toml() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    create_app(&b, "proc");
    let src = b.path("proc-src");
    // The kv service of the compose test, built from `db/`.
    compose_project(&src, "unused\n", "# kv");
    std::fs::remove_file(src.join("compose.yaml")).unwrap();
    std::fs::remove_file(src.join("Dockerfile")).unwrap();
    write_file(&src.join("Procfile"), b"web: python3 app.py\n");
    write_file(
        &src.join("berth.toml"),
        b"[services.kv]\nbuild = \"db\"\nport = 6379\nvolumes = [\"data:/data\"]\nhealthcheck = [\"CMD-SHELL\", \"echo GET | nc 127.0.0.1 6379 | grep -q END\"]\n\n[service_env]\nKV_ADDR = \"{kv.host}:{kv.port}\"\n",
    );
    write_file(
        &src.join("app.py"),
        br#"import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = os.environ["KV_ADDR"].rsplit(":", 1)
        cmd = "PUT " + self.path.split("=", 1)[1] if "put=" in self.path else "GET"
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall((cmd + "\n").encode())
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        body = (os.environ["KV_ADDR"].split(":")[0] + " " + out.decode()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    );
    deploy_ok(&b, "proc", &src);
    assert_eq!(app_get(&b, "proc", "/?put=pear").1, "127.0.0.1 OK\n");
    // A new release of the app: the service is unchanged, its data still there.
    write_file(&src.join("VERSION"), b"2\n");
    deploy_ok(&b, "proc", &src);
    assert_eq!(app_get(&b, "proc", "/").1, "127.0.0.1 pear\nEND\n");

    // Another process app, told where that service is published, cannot reach it (the jail's
    // firewall lets an app reach only its own services' ports), while the owner still can.
    let kv_port = {
        let (st, v) = api(&b, "GET", "/api/v1/apps/proc/services", "");
        assert_eq!(st, 200, "{v}");
        v.as_array().unwrap()[0]["host_port"].as_u64().unwrap()
    };
    create_app(&b, "intruder");
    let (st, v) = api(
        &b,
        "PATCH",
        "/api/v1/apps/intruder/env",
        &serde_json::json!({"set": {"KV_ADDR": format!("127.0.0.1:{kv_port}")}}).to_string(),
    );
    assert!(st < 300, "{st} {v}");
    let intruder = b.path("intruder-src");
    write_file(&intruder.join("Procfile"), b"web: python3 app.py\n");
    write_file(
        &intruder.join("app.py"),
        br#"import os, socket
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = os.environ["KV_ADDR"].rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=2)
            s.sendall(b"GET\n")
            body = b"LEAKED " + s.recv(4096)
        except OSError as e:
            body = ("blocked %s" % e).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#,
    );
    deploy_ok(&b, "intruder", &intruder);
    let (st, body) = app_get(&b, "intruder", "/");
    assert_eq!(st, 200, "{body}");
    let jailed = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if jailed {
        assert!(body.starts_with("blocked"), "{body}");
    }
    assert_eq!(app_get(&b, "proc", "/").1, "127.0.0.1 pear\nEND\n");
    destroy(&b, "intruder");

    // Destroying names the data that goes, and --keep-volumes keeps it: the app created again
    // under its name finds its data.
    let (st, v) = api(&b, "GET", "/api/v1/apps/proc/volumes", "");
    assert_eq!(st, 200, "{v}");
    let volume = v[0].as_str().unwrap().to_string();
    assert!(volume.ends_with("-proc_data"), "{v}");
    let out = cli(&b, &["apps:destroy", "proc"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&volume) && said.contains("--keep-volumes"),
        "{said}"
    );
    let out = cli(&b, &["apps:destroy", "proc", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--confirm proc"),
        "{}",
        text(&out)
    );
    let out = cli(
        &b,
        &[
            "apps:destroy",
            "proc",
            "--confirm",
            "proc",
            "--keep-volumes",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kept its volumes"),
        "{}",
        text(&out)
    );
    create_app(&b, "proc");
    deploy_ok(&b, "proc", &src);
    assert_eq!(app_get(&b, "proc", "/").1, "127.0.0.1 pear\nEND\n");
    let out = cli(&b, &["apps:destroy", "proc", "--confirm", "proc"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("and its volumes {volume}")),
        "{}",
        text(&out)
    );
    let out = std::process::Command::new("docker")
        .args(["volume", "inspect", &volume])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the volume is still there");
}
