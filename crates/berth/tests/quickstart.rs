//! Issue 3, items 6 and 7: the README's quickstart (`serve --deploy examples/hello --deploy
//! examples/site`) serves the example apps over HTTP and HTTPS; the CLI logs in to a remote
//! berth with a token, follows logs, and checks an app with a TCP health check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, cli, create_app, deploy, text, tmpdir, wait_body, T};
use common::BIN;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use test_support::{eventually, write_file, Berth};

fn examples() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

#[test]
fn the_quickstart_deploys_the_examples_at_startup() {
    let ex = examples();
    let (hello, site) = (format!("{ex}/hello"), format!("{ex}/site"));
    let b = Berth::start_serving(
        BIN,
        "",
        &[],
        "",
        &["--deploy", hello.as_str(), "--deploy", site.as_str()],
    );
    let body = wait_body(&b, "hello", "Hello from berth (v1, web.1)");
    assert!(body.ends_with('\n'));
    wait_body(&b, "site", "A static site on berth");
    // HTTPS with the local CA (the README's second curl).
    let port = b.https.port();
    let (ok, out) = test_support::curl(&[
        "-sS",
        "--cacert",
        b.ca().to_str().unwrap(),
        "--resolve",
        &format!("hello.localhost:{port}:127.0.0.1"),
        &format!("https://hello.localhost:{port}/"),
    ]);
    assert!(ok && out.starts_with("Hello from berth"), "{out}");
    // The apps are listed, with their URLs.
    let out = cli(&b, &["apps"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("hello") && listing.contains("site"),
        "{}",
        text(&out)
    );
}

#[test]
fn login_saves_credentials_and_a_bad_token_is_refused() {
    let b = Berth::start(BIN, "");
    create_app(&b, "remote");
    let url = format!("http://{}", b.admin);
    let xdg = b.path("xdg-login");
    // No data dir here: the CLI only has what `login` saved.
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--data-dir", "/nonexistent"])
            .env_remove("BERTH_URL")
            .env_remove("BERTH_TOKEN")
            .env("XDG_CONFIG_HOME", &xdg)
            .output()
            .unwrap()
    };
    let out = run(&["apps"]);
    assert_eq!(out.status.code(), Some(3), "not logged in: {}", text(&out));
    let out = run(&["login", &url, "--token", "berth_wrong"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = run(&["login", &url, "--token", &b.token]);
    assert!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::PermissionsExt;
    let creds = xdg.join("berth/credentials.json");
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let out = run(&["apps"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("remote"));
    let out = run(&["logout"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(run(&["apps"]).status.code(), Some(3));
}

#[test]
fn logs_follow_streams_new_lines_and_tcp_health_checks_work() {
    let b = Berth::start(BIN, "");
    // A process that only accepts TCP (no HTTP) passes a TCP health check and logs a line
    // per connection.
    let src = tmpdir(&b, "tcp");
    write_file(&src.join("Procfile"), b"web: python3 tcp.py\n");
    write_file(
        &src.join("berth.toml"),
        b"[health]\ntcp = true\ntimeout = \"10s\"\n",
    );
    write_file(
        &src.join("tcp.py"),
        br#"import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen()
n = 0
while True:
    c, _ = s.accept()
    n += 1
    print("connection", n, flush=True)
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\ntcp")
    c.close()
"#,
    );
    let out = deploy(&b, "tcp", &src);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "tcp", "tcp");
    // `berth logs -f` prints lines as they are written.
    let mut follow = Command::new(BIN)
        .args(["logs", "-f", "-a", "tcp", "--data-dir"])
        .arg(b.path("data"))
        .env("XDG_CONFIG_HOME", b.path("xdg"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    eventually(T, "a followed log line for a new request", || {
        common::get(b.http, "tcp.localhost", "/");
        while let Ok(l) = rx.try_recv() {
            seen.push(l);
        }
        seen.iter()
            .any(|l| l.contains(" web.1 | connection"))
            .then_some(())
    });
    let _ = follow.kill();
    let _ = follow.wait();
    // The instance is listed as running with a TCP check.
    let (_, inst) = api(&b, "GET", "/api/v1/apps/tcp/instances", "");
    assert_eq!(inst[0]["state"], "running", "{inst}");
}
