//! Test support for berth's integration tests: run the real `berth` binary on ephemeral ports in
//! a fresh temp dir, talk to it with raw bytes, run real upstreams that record what reaches them,
//! and wait for conditions with a deadline instead of sleeping.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod paths;
pub mod pebble;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (for a peer that must be told a port before the
/// listener exists; the tiny race is a test's to accept).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// A running `berth serve` process; killed when dropped.
pub struct Berth {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// The admin API token berth created on its first start (`<data>/admin-token`).
    pub token: String,
    server_section: String,
    /// Arguments after `serve --config <file>` (e.g. `--deploy DIR`).
    serve_args: Vec<String>,
    /// The data dir is a tmpfs of its own (`start_on_small_disk`), unmounted at the end.
    small_disk: bool,
}

impl Berth {
    /// Start `bin serve` with `extra` appended to a config that listens on ephemeral loopback
    /// ports, keeps its data in a fresh temp dir and writes the access log to `access.log`.
    /// `extra` may contain `{dir}`, replaced by the temp dir's path (for static roots).
    pub fn start(bin: &str, extra: &str) -> Berth {
        Self::start_with(bin, "", &[], extra)
    }

    /// Like `start`, with `server_extra` lines added to the `[server]` table and `files`
    /// (path relative to the temp dir, content) written before berth starts.
    pub fn start_with(
        bin: &str,
        server_extra: &str,
        files: &[(&str, &[u8])],
        extra: &str,
    ) -> Berth {
        Self::start_serving(bin, server_extra, files, extra, &[])
    }

    /// Like `start_with`, with `serve_args` after `serve --config <file>` (e.g. `--deploy DIR`).
    pub fn start_serving(
        bin: &str,
        server_extra: &str,
        files: &[(&str, &[u8])],
        extra: &str,
        serve_args: &[&str],
    ) -> Berth {
        Self::start_in(
            tempfile::tempdir().unwrap(),
            bin,
            server_extra,
            files,
            extra,
            serve_args,
        )
    }

    /// Like `start`, with the data dir on a tmpfs of `mib` MiB of its own (as root), to fill
    /// it: a full disk. Unmounted when the test is done with it.
    pub fn start_on_small_disk(bin: &str, mib: u32, server_extra: &str) -> Berth {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&data)
            .status()
            .unwrap();
        assert!(ok.success(), "mount a tmpfs on {}", data.display());
        let mut b = Self::start_in(dir, bin, server_extra, &[], "", &[]);
        b.small_disk = true;
        b
    }

    fn start_in(
        dir: tempfile::TempDir,
        bin: &str,
        server_extra: &str,
        files: &[(&str, &[u8])],
        extra: &str,
        serve_args: &[&str],
    ) -> Berth {
        for (rel, content) in files {
            write_file(&dir.path().join(rel), content);
        }
        let d = dir.path().display().to_string();
        // Ephemeral ports, unless `server_extra` names a listener's address itself (a test
        // whose peer must know the port first, e.g. an ACME server validating challenges).
        let listen = |key: &str| {
            let named = server_extra
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{key} =")));
            if named {
                String::new()
            } else {
                format!("{key} = \"127.0.0.1:0\"\n")
            }
        };
        let server_section = format!(
            "[server]\n{}{}{}workers = 2\ndata_dir = \"{d}/data\"\naccess_log = \"{d}/access.log\"\n{server_extra}\n",
            listen("http"),
            listen("https"),
            listen("admin")
        );
        let config = format!("{server_section}\n{}", extra.replace("{dir}", &d));
        let config_path = dir.path().join("berth.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("berth.stderr");
        let serve_args: Vec<String> = serve_args.iter().map(|a| a.to_string()).collect();
        let mut b = Berth {
            child: spawn(bin, &config_path, &log_path, &serve_args),
            serve_args,
            http: "0.0.0.0:0".parse().unwrap(),
            https: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            dir,
            config_path,
            log_path,
            token: String::new(),
            server_section,
            small_disk: false,
        };
        b.wait_listening();
        b
    }

    /// Wait for `<data>/listen.json` (written once everything is up) and read the addresses
    /// and the admin token.
    fn wait_listening(&mut self) {
        let listen = self.dir.path().join("data/listen.json");
        let v: serde_json::Value = eventually(Duration::from_secs(20), "berth to listen", || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("berth exited with {status}: {}", self.stderr());
            }
            let text = std::fs::read_to_string(&listen).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            // A listen.json left by an earlier run names another pid.
            (v["pid"].as_u64() == Some(u64::from(self.child.id()))).then_some(v)
        });
        let addr = |k: &str| {
            v[k].as_str()
                .map(|s| s.parse().unwrap())
                .unwrap_or("0.0.0.0:0".parse().unwrap())
        };
        self.http = addr("http");
        self.https = addr("https");
        self.admin = addr("admin");
        self.token = std::fs::read_to_string(self.dir.path().join("data/admin-token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
    }

    /// `kill -9` berth (its apps keep running, as after a crash), then start it again on the
    /// same config and data (battery case K1). Addresses are re-read: ports are ephemeral.
    pub fn crash_and_restart(&mut self, bin: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(bin, &self.config_path, &self.log_path, &self.serve_args);
        self.wait_listening();
    }

    /// `Authorization: Bearer <admin token>`, for raw requests to the API.
    pub fn auth(&self) -> String {
        format!("Authorization: Bearer {}", self.token)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The local CA's root certificate (for `curl --cacert`).
    pub fn ca(&self) -> PathBuf {
        self.path("data/ca/root.pem")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Replace everything after the `[server]` table of the config file with `extra` (`{dir}`
    /// expanded). Send SIGHUP afterwards to apply it.
    pub fn rewrite_config(&self, extra: &str) {
        let d = self.dir.path().display().to_string();
        std::fs::write(
            &self.config_path,
            format!("{}\n{}", self.server_section, extra.replace("{dir}", &d)),
        )
        .unwrap();
    }
}

/// Start `bin serve --config <config> <args>`, stderr appended to `log_path`.
fn spawn(bin: &str, config_path: &Path, log_path: &Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .unwrap();
    Command::new(bin)
        .args(["serve", "--config"])
        .arg(config_path)
        .args(args)
        .env("BERTH_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Berth {
    /// SIGTERM, so berth stops the apps it runs (a SIGKILL would leave them running, as a
    /// crash does); SIGKILL if it has not exited after 15 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.remove_host_state();
        if self.small_disk {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path().join("data"))
                .status();
        }
    }
}

impl Berth {
    /// What berth leaves on the machine on purpose (app users and its firewall table outlive
    /// a stop, as instances do), and the build users a berth killed mid-test could not remove,
    /// removed once a test is done with it.
    fn remove_host_state(&self) {
        use sha2::Digest;
        let data = self.dir.path().join("data");
        let data = data.canonicalize().unwrap_or(data);
        let hash = sha2::Sha256::digest(data.to_string_lossy().as_bytes());
        let tag: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
        let suffix = format!("({tag})");
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let app_user = f.len() > 4 && f[4].starts_with("berth app ") && f[4].ends_with(&suffix);
            let build_user = f[0].starts_with(&format!("berth-build-{tag}-"));
            if app_user || build_user {
                // Anything still running as the app's user (berth did not stop in time) first.
                let _ = Command::new("pkill").args(["-KILL", "-u", f[0]]).output();
                for _ in 0..50 {
                    let out = Command::new("userdel").arg(f[0]).output();
                    if out.is_ok_and(|o| o.status.success()) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &format!("berth_{tag}")])
            .stderr(std::process::Stdio::null())
            .status();
        self.remove_docker_state();
    }

    /// What this berth left in Docker (containers, Swarm services, networks, volumes and
    /// images, all labelled with its data dir): a test that stops before it destroys its apps
    /// would otherwise use up the daemon's network address pools within a few runs.
    fn remove_docker_state(&self) {
        if !Path::new("/var/run/docker.sock").exists() {
            return;
        }
        let data = self.dir.path().join("data");
        let mut owners = vec![data.display().to_string()];
        if let Ok(c) = data.canonicalize() {
            owners.push(c.display().to_string());
        }
        let list = |what: &[&str], owner: &str| -> Vec<String> {
            let filter = format!("label=berth.owner={owner}");
            Command::new("docker")
                .args(what)
                .args(["-q", "--filter", &filter])
                .stderr(std::process::Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let remove = |what: &[&str], ids: Vec<String>| {
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(what)
                    .args(ids)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        };
        owners.dedup();
        for owner in &owners {
            // Every container is on one of the berth's networks: none, nothing else to do.
            let networks = list(&["network", "ls"], owner);
            if networks.is_empty() {
                continue;
            }
            remove(&["service", "rm"], list(&["service", "ls"], owner));
            remove(&["rm", "-f", "-v"], list(&["ps", "-a"], owner));
            remove(&["network", "rm"], networks);
            remove(&["volume", "rm", "-f"], list(&["volume", "ls"], owner));
            remove(&["rmi", "-f"], list(&["image", "ls"], owner));
        }
    }
}

/// Send `bytes` on a fresh connection, then read until the peer closes or `timeout` passes.
pub fn raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    let _ = s.write_all(bytes);
    read_until_close(&mut s, timeout)
}

/// Read until EOF, a reset, or `timeout` overall.
pub fn read_until_close(s: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))
        .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Read one response head from a keep-alive connection, byte by byte (so nothing after it is
/// consumed): (status, Content-Length if any, the head as text).
pub fn read_head(s: &mut TcpStream) -> std::io::Result<(u16, Option<usize>, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head.to_ascii_lowercase().lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    });
    Ok((status(&buf), len, head))
}

/// Read one response (head + Content-Length body) from a keep-alive connection.
pub fn read_response(s: &mut TcpStream) -> std::io::Result<(u16, Vec<u8>)> {
    let (st, len, _) = read_head(s)?;
    let mut body = vec![0; len.unwrap_or(0)];
    s.read_exact(&mut body)?;
    Ok((st, body))
}

/// Did the peer close the connection (EOF or reset) within `timeout`?
pub fn closed_within(s: &mut TcpStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Status codes of every HTTP/1.x response in `bytes`, in order.
pub fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// The first status code in `bytes`, or 0.
pub fn status(bytes: &[u8]) -> u16 {
    statuses(bytes).first().copied().unwrap_or(0)
}

/// How an [`Upstream`] answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this body and a Content-Length; keep-alive.
    Ok(&'static str),
    /// These exact bytes, then close.
    Raw(&'static [u8]),
    /// 200 echoing the request head and body as the body (for header and body checks).
    Echo,
    /// Wait this long, then answer 200.
    Slow(Duration),
    /// 101 Switching Protocols, then echo every byte back (a WebSocket stand-in).
    Upgrade,
    /// 200 with `n` bytes of body.
    Bytes(usize),
}

/// A real HTTP/1.1 upstream on an ephemeral port that records every request it receives.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Every request head (and body) received, raw.
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(reply: Reply) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, st) = (requests.clone(), connections.clone(), stop.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                let _ = s.set_nodelay(true);
                c.fetch_add(1, Ordering::Relaxed);
                let (r, reply) = (r.clone(), reply.clone());
                thread::spawn(move || serve_upstream(s, r, reply));
            }
        });
        Upstream {
            addr,
            requests,
            connections,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last(&self) -> String {
        String::from_utf8_lossy(
            self.requests
                .lock()
                .unwrap()
                .last()
                .map(|v| &v[..])
                .unwrap_or(b""),
        )
        .into_owned()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_upstream(s: TcpStream, log: Arc<Mutex<Vec<Vec<u8>>>>, reply: Reply) {
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        // Head.
        let mut head = Vec::new();
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            head.extend_from_slice(&line);
            if line == b"\r\n" || line == b"\n" {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let header = |name: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(&format!("{name}:"))
                    .map(|v| v.trim().to_string())
            })
        };
        // Body.
        let mut body = Vec::new();
        if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            if r.read_exact(&mut body).is_err() {
                return;
            }
        } else if header("transfer-encoding").is_some_and(|v| v == "chunked") {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .unwrap_or(0);
                if n == 0 {
                    let mut end = String::new();
                    while r.read_line(&mut end).unwrap_or(0) > 0 && end != "\r\n" {
                        end.clear();
                    }
                    break;
                }
                let mut chunk = vec![0; n + 2];
                if r.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        }
        let mut record = head.clone();
        record.extend_from_slice(&body);
        log.lock().unwrap().push(record.clone());
        let ok = |w: &mut TcpStream, b: &[u8]| {
            let h = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                b.len()
            );
            // One write: a head and body in two small writes would meet Nagle + delayed ACK.
            let mut msg = h.into_bytes();
            msg.extend_from_slice(b);
            w.write_all(&msg)
        };
        let res = match &reply {
            Reply::Ok(b) => ok(&mut w, b.as_bytes()),
            Reply::Echo => ok(&mut w, &record),
            Reply::Bytes(n) => ok(&mut w, &vec![b'x'; *n]),
            Reply::Slow(d) => {
                thread::sleep(*d);
                ok(&mut w, b"slow")
            }
            Reply::Raw(b) => {
                let _ = w.write_all(b);
                return;
            }
            Reply::Upgrade => {
                let _ = w.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                let mut buf = [0u8; 4096];
                let mut carry = r.buffer().to_vec();
                let _ = w.write_all(&carry);
                carry.clear();
                loop {
                    match r.get_mut().read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if w.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        };
        if res.is_err() {
            return;
        }
    }
}

/// Run a standard-library-only Python client `script` with `args` and return the number it
/// prints (the tests' clients print how many seconds something took).
pub fn python_seconds(script: &str, args: &[&str]) -> f64 {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "python client: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Run a command and return (status success, stdout, stderr).
pub fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd` with `input` on its stdin; its output (stdout and stderr captured).
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `curl` with `args`; returns (exit ok, stdout).
pub fn curl(args: &[&str]) -> (bool, String) {
    let (ok, out, _) = run("curl", &[&["-sS", "--max-time", "20"], args].concat());
    (ok, out)
}

pub fn write_file(path: &Path, content: &[u8]) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(path, content).unwrap();
}
