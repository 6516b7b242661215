//! Helpers of the Docker and Swarm tests: is there a daemon, a busybox Dockerfile app, a
//! deploy that must succeed.

use super::apps::{api, upload, wait_deploy};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use test_support::{write_file, Berth};

/// Does a Docker daemon answer on the default socket?
pub fn docker_available() -> bool {
    let ok = std::process::Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "--unix-socket",
            "/var/run/docker.sock",
            "http://d/_ping",
        ])
        .output()
        .is_ok_and(|o| o.stdout == b"OK");
    if !ok {
        eprintln!(
            "\n!!! SKIPPED: no Docker daemon answers at /var/run/docker.sock (start dockerd) !!!\n"
        );
    }
    ok
}

/// A Dockerfile app: busybox's httpd serving `www/` (with `body` as its index) on `$PORT`.
pub fn docker_app(dir: &Path, body: &str, extra_run: &str) {
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    std::fs::set_permissions(dir.join("busybox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write_file(&dir.join("www/index.html"), body.as_bytes());
    write_file(
        &dir.join("Dockerfile"),
        format!(
            "FROM scratch\n\
             COPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             {extra_run}\
             COPY www /www\n\
             CMD [\"/bin/sh\", \"-c\", \"echo container up on $PORT; exec httpd -f -v -p $PORT -h /www\"]\n"
        )
        .as_bytes(),
    );
}

pub fn deploy_ok(b: &Berth, app: &str, dir: &Path) -> serde_json::Value {
    let (st, v) = upload(b, app, dir);
    assert_eq!(st, 202, "{v}");
    let d = wait_deploy(b, app, v["id"].as_i64().unwrap());
    let (_, log) = api(
        b,
        "GET",
        &format!("/api/v1/apps/{app}/deploys/{}/log", d["id"]),
        "",
    );
    assert_eq!(
        d["status"],
        "succeeded",
        "{d}\n{}",
        log.as_str().unwrap_or("")
    );
    d
}

/// The daemon's view (`/containers/json`) of the running containers of berth's app `app`
/// (by the instance label).
pub fn app_containers(app: &str) -> Vec<serde_json::Value> {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            "/var/run/docker.sock",
            "http://d/containers/json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["Labels"]["berth.instance"]
                .as_str()
                .is_some_and(|i| i.starts_with(&format!("{app}.")))
        })
        .cloned()
        .collect()
}

/// One test at a time (per test binary): each test runs its own berth against the one Docker
/// daemon, and a prune by one berth while another builds on the same cached layers can leave
/// the new image without them (Docker's classic builder). One berth orders its own builds and
/// prunes (`DockerRuntime`); several berths cannot.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
