//! Helpers for the tests that deploy apps (`deploy`, `deploy_errors`, `deploy_ops`): run the
//! `berth` CLI and call the admin API against a running berth, pack and upload bundles, write a
//! small Python web app, and look at an app's answers and instances.

use super::{get, get_with, request, Resp, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use test_support::{eventually, write_file, Berth};

/// How long to wait for a deploy, an app or an instance to get somewhere.
pub const T: Duration = Duration::from_secs(30);

/// Run the CLI against `b` (it finds the admin API and token in the data dir).
pub fn cli(b: &Berth, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(b.path("data"))
        .env_remove("BERTH_URL")
        .env_remove("BERTH_TOKEN")
        .env_remove("BERTH_APP")
        .env("XDG_CONFIG_HOME", b.path("xdg"))
        .output()
        .unwrap()
}

/// A command's exit code, stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `berth deploy <dir> -a <app>`.
pub fn deploy(b: &Berth, app: &str, dir: &Path) -> Output {
    cli(b, &["deploy", dir.to_str().unwrap(), "-a", app])
}

/// One request to the admin API with `token`: (status, JSON body, or the text as a JSON string).
pub fn api_as(
    b: &Berth,
    token: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = request(
        b.admin,
        method,
        "127.0.0.1",
        path,
        &[("Authorization", &auth), ("Content-Type", content_type)],
        body,
    );
    let v = serde_json::from_slice(&r.body).unwrap_or_else(|_| Value::String(r.text()));
    (r.status, v)
}

/// A JSON request to the API with the admin token.
pub fn api(b: &Berth, method: &str, path: &str, body: &str) -> (u16, Value) {
    api_as(
        b,
        &b.token,
        method,
        path,
        "application/json",
        body.as_bytes(),
    )
}

/// GET `path` on the admin listener with `token` (and no other header).
pub fn get_as(b: &Berth, token: &str, path: &str) -> Resp {
    get_with(
        b.admin,
        "127.0.0.1",
        path,
        &[("Authorization", &format!("Bearer {token}"))],
    )
}

/// GET `path` on the admin listener with `token`: the status.
pub fn status_with(b: &Berth, token: &str, path: &str) -> u16 {
    get_as(b, token, path).status
}

/// Create the app `name` through the API (it must not exist yet).
pub fn create_app(b: &Berth, name: &str) {
    let (st, v) = api(
        b,
        "POST",
        "/api/v1/apps",
        &format!(r#"{{"name":"{name}"}}"#),
    );
    assert_eq!(st, 201, "{v}");
}

/// A new deploy-only token for `app`: its secret.
pub fn deploy_token(b: &Berth, app: &str) -> String {
    let body = serde_json::json!({"name": "ci", "scope": "deploy", "apps": [app]}).to_string();
    let (st, tok) = api(b, "POST", "/api/v1/tokens", &body);
    assert_eq!(st, 201, "{tok}");
    tok["token"].as_str().unwrap().to_string()
}

/// POST a `.tar.gz` bundle to `app` with the admin token (the deploy is not waited for).
pub fn upload_file(b: &Berth, app: &str, bytes: &[u8]) -> (u16, Value) {
    api_as(
        b,
        &b.token,
        "POST",
        &format!("/api/v1/apps/{app}/deploys"),
        "application/gzip",
        bytes,
    )
}

/// Pack `dir` with the system tar and POST it (for tests that must not wait for the deploy).
pub fn upload(b: &Berth, app: &str, dir: &Path) -> (u16, Value) {
    upload_file(b, app, &targz(dir))
}

/// `dir` packed by the system tar, as a `.tar.gz` in memory.
pub fn targz(dir: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["-czf", "-", "-C", dir.to_str().unwrap(), "."])
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", text(&out));
    out.stdout
}

/// Upload `bundle` to `app` with `token` and wait for the deploy to succeed; the deploy id.
pub fn deploy_ok(b: &Berth, token: &str, app: &str, bundle: &[u8]) -> i64 {
    let (st, d) = api_as(
        b,
        token,
        "POST",
        &format!("/api/v1/apps/{app}/deploys"),
        "application/gzip",
        bundle,
    );
    assert_eq!(st, 202, "{d}");
    let id = d["id"].as_i64().unwrap();
    let fin = wait_deploy_as(b, token, app, id);
    assert_eq!(fin["status"], "succeeded", "{fin}");
    id
}

/// Wait for deploy `id` of `app` to finish (succeeded or failed); its final JSON.
pub fn wait_deploy(b: &Berth, app: &str, id: i64) -> Value {
    wait_deploy_as(b, &b.token, app, id)
}

fn wait_deploy_as(b: &Berth, token: &str, app: &str, id: i64) -> Value {
    eventually(T, &format!("deploy {id} to finish"), || {
        let (_, d) = api_as(
            b,
            token,
            "GET",
            &format!("/api/v1/apps/{app}/deploys/{id}"),
            "application/json",
            b"",
        );
        (d["status"] != "running" && d["status"] != "queued").then_some(d)
    })
}

/// The directory `name` in `b`'s temp dir, created.
pub fn tmpdir(b: &Berth, name: &str) -> PathBuf {
    let d = b.path(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A bundle of a one-file static site (written to the directory `name`).
pub fn static_site(b: &Berth, name: &str) -> Vec<u8> {
    let d = tmpdir(b, name);
    write_file(&d.join("index.html"), b"<h1>hi</h1>\n");
    targz(&d)
}

/// A Python web app (stdlib only) that answers `<tag> <release> <dyno>`, `/health`, `/env`
/// (its `GREETING`) and `/slow` (after 4 s; it first creates the file `slow-started` in its storage dir, or its own
/// directory when it has none). `health_status` is what `/health` answers (500
/// makes the deploy fail its health check). A file `delay` in the app's directory holds seconds
/// to wait before listening.
pub fn python_app(dir: &Path, tag: &str, health_status: u16) {
    write_file(&dir.join("Procfile"), b"web: python3 app.py\n");
    write_file(
        &dir.join("berth.toml"),
        b"[health]\npath = \"/health\"\ntimeout = \"8s\"\n[deploy]\ndrain_timeout = \"5s\"\nstop_grace = \"2s\"\n",
    );
    let app = format!(
        r#"import os, signal, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/health":
            code, body = {health_status}, b"health\n"
        elif self.path == "/env":
            code, body = 200, (os.environ.get("GREETING", "-") + "\n").encode()
        elif self.path == "/slow":
            open(os.path.join(os.environ.get("BERTH_STORAGE", "."), "slow-started"), "w").close()
            time.sleep(4)
            code, body = 200, b"slow done\n"
        else:
            code, body = 200, ("{tag} " + os.environ["BERTH_RELEASE"] + " " + os.environ["DYNO"] + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("request", fmt % args, flush=True)
if os.path.exists("delay"):
    time.sleep(float(open("delay").read()))
ThreadingHTTPServer.request_queue_size = 128
s = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=s.shutdown).start())
print("{tag} listening", flush=True)
s.serve_forever()
"#
    );
    write_file(&dir.join("app.py"), app.as_bytes());
}

/// GET `path` of `app` through the proxy: (status, body).
pub fn app_get(b: &Berth, app: &str, path: &str) -> (u16, String) {
    let r = get(b.http, &format!("{app}.localhost"), path);
    (r.status, r.text())
}

/// Wait until `/` of `app` answers 200 with a body containing `want`; the body.
pub fn wait_body(b: &Berth, app: &str, want: &str) -> String {
    eventually(T, &format!("{app} to answer {want:?}"), || {
        let (st, body) = app_get(b, app, "/");
        (st == 200 && body.contains(want)).then_some(body)
    })
}

/// Is the process `pid` alive (and not a zombie)?
pub fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The pids of `app`'s web instances, from the API.
pub fn web_pids(b: &Berth, app: &str) -> Vec<u64> {
    let (st, v) = api(b, "GET", &format!("/api/v1/apps/{app}/instances"), "");
    assert_eq!(st, 200, "{v}");
    v.as_array()
        .unwrap()
        .iter()
        .filter(|i| i["proc_type"] == "web")
        .filter_map(|i| i["pid"].as_u64())
        .collect()
}
