//! Helpers shared by berth's functional integration tests (`cli`, `routing`, `http`,
//! `static_files`, `balancing`, `admin`): small HTTP/1.1 clients over raw sockets, `curl` over
//! TLS against berth's local CA, config snippets, special-purpose upstreams (discard, source,
//! toggle) and `/proc` readings. Every test file uses only part of this module. [`apps`] holds
//! the helpers of the deploy tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod apps;
pub mod docker;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;
use test_support::{raw, run, Berth};

pub const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// Generous per-request timeout for the raw clients.
pub const T: Duration = Duration::from_secs(10);

/// One parsed HTTP response.
#[derive(Debug, Clone, Default)]
pub struct Resp {
    pub status: u16,
    /// "HTTP/1.1", "HTTP/2", ...
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse_head(head: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Resp {
        status,
        version,
        headers,
        body: Vec::new(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a chunked body; `None` when it is incomplete.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = find(b, b"\r\n")?;
        let size = std::str::from_utf8(&b[..nl]).ok()?;
        let n = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[nl + 2..];
        if n == 0 {
            return Some(out);
        }
        if b.len() < n + 2 {
            return None;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// Parse the first response of `bytes` (informational 1xx responses are skipped). The body is
/// framed by Content-Length or chunked encoding, else it is the rest of the bytes.
pub fn parse_response(bytes: &[u8]) -> Resp {
    let mut rest = bytes;
    loop {
        let Some(end) = find(rest, b"\r\n\r\n") else {
            return Resp::default();
        };
        let mut r = parse_head(&rest[..end]);
        let body = &rest[end + 4..];
        if (100..200).contains(&r.status) && r.status != 101 {
            rest = body;
            continue;
        }
        r.body = if let Some(n) = r.header("content-length").and_then(|v| v.parse().ok()) {
            body[..body.len().min(n)].to_vec()
        } else if r
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            dechunk(body).unwrap_or_else(|| body.to_vec())
        } else {
            body.to_vec()
        };
        return r;
    }
}

/// One request on a fresh connection with `Connection: close`; the whole response.
pub fn request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    let out = raw(addr, &bytes, T);
    if method == "HEAD" {
        // A HEAD response has no body whatever Content-Length says: keep every byte after the
        // head so that a stray body is visible to the test.
        let mut r = parse_response(&out);
        if let Some(end) = find(&out, b"\r\n\r\n") {
            r.body = out[end + 4..].to_vec();
        }
        return r;
    }
    parse_response(&out)
}

pub fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    request(addr, "GET", host, path, &[], b"")
}

pub fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    request(addr, "GET", host, path, headers, b"")
}

/// A keep-alive HTTP/1.1 client connection that reads exactly one response per request.
pub struct Conn {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        Conn { s, buf: Vec::new() }
    }

    /// Send `req` (raw bytes) and read one response; `None` when the connection closes first.
    pub fn send(&mut self, req: &[u8]) -> Option<Resp> {
        self.s.write_all(req).ok()?;
        self.read_response(false)
    }

    pub fn get(&mut self, host: &str, path: &str) -> Option<Resp> {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    fn fill(&mut self) -> Option<()> {
        let mut tmp = [0u8; 16 * 1024];
        match self.s.read(&mut tmp) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Some(())
            }
        }
    }

    /// Read one response head and its framed body.
    pub fn read_response(&mut self, head_only: bool) -> Option<Resp> {
        loop {
            let end = loop {
                if let Some(e) = find(&self.buf, b"\r\n\r\n") {
                    break e;
                }
                self.fill()?;
            };
            let mut r = parse_head(&self.buf[..end]);
            self.buf.drain(..end + 4);
            if (100..200).contains(&r.status) && r.status != 101 {
                continue;
            }
            if head_only || r.status == 101 || r.status == 204 || r.status == 304 {
                return Some(r);
            }
            if let Some(n) = r
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
            {
                while self.buf.len() < n {
                    self.fill()?;
                }
                r.body = self.buf.drain(..n).collect();
            } else if r
                .header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
            {
                loop {
                    if let Some(b) = dechunk(&self.buf) {
                        r.body = b;
                        // Drop the consumed chunked body (ends with 0\r\n\r\n, no trailers here).
                        let end = find(&self.buf, b"\r\n0\r\n\r\n")
                            .map(|e| e + 7)
                            .or_else(|| self.buf.starts_with(b"0\r\n\r\n").then_some(5))
                            .unwrap_or(self.buf.len());
                        self.buf.drain(..end);
                        break;
                    }
                    self.fill()?;
                }
            } else {
                while self.fill().is_some() {}
                r.body = std::mem::take(&mut self.buf);
            }
            return Some(r);
        }
    }

    /// Bytes already read past the last response plus up to `n` more, waiting at most `T`.
    pub fn read_exact_n(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            if self.fill().is_none() {
                break;
            }
        }
        let k = self.buf.len().min(n);
        self.buf.drain(..k).collect()
    }
}

/// `curl` against berth's HTTPS listener for `host`, trusting berth's local CA and resolving
/// `host` to the listener. `args` go before the URL. Returns (exit ok, stdout, stderr).
pub fn curl_https(b: &Berth, host: &str, path: &str, args: &[&str]) -> (bool, String, String) {
    curl_https_ca(b, &b.ca(), host, path, args)
}

pub fn curl_https_ca(
    b: &Berth,
    ca: &Path,
    host: &str,
    path: &str,
    args: &[&str],
) -> (bool, String, String) {
    let port = b.https.port();
    let resolve = format!("{host}:{port}:127.0.0.1");
    let url = format!("https://{host}:{port}{path}");
    let ca = ca.display().to_string();
    let mut all: Vec<&str> = vec![
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
    ];
    all.extend_from_slice(args);
    all.push(&url);
    run("curl", &all)
}

/// `curl -i` over HTTPS, parsed. Panics when curl fails.
pub fn curl_https_resp(b: &Berth, host: &str, path: &str, args: &[&str]) -> Resp {
    let mut a = vec!["-i"];
    a.extend_from_slice(args);
    let (ok, out, err) = curl_https(b, host, path, &a);
    assert!(ok, "curl https://{host}{path} {args:?} failed: {err}");
    parse_curl_i(&out)
}

/// Parse `curl -i` output (HTTP/1.1 or HTTP/2 heads, LF or CRLF), skipping 1xx heads.
pub fn parse_curl_i(out: &str) -> Resp {
    let norm = out.replace("\r\n", "\n");
    let mut rest = norm.as_str();
    loop {
        let (head, body) = rest.split_once("\n\n").unwrap_or((rest, ""));
        let mut r = parse_head(head.replace('\n', "\r\n").as_bytes());
        if (100..200).contains(&r.status) && r.status != 101 {
            rest = body;
            continue;
        }
        r.body = body.as_bytes().to_vec();
        return r;
    }
}

/// A `[[route]]` proxying `host` to `ups`, with extra TOML lines.
pub fn route(host: &str, ups: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[[route]]\nhost = \"{host}\"\nupstreams = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// An address where nothing listens (bound once, then released).
pub fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples a process's RSS every 20 ms on a thread until dropped; `max_kib` is the peak.
pub struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl RssWatch {
    pub fn start(pid: u32) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    p.fetch_max(r, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        RssWatch {
            peak,
            stop,
            handle: Some(handle),
        }
    }

    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Read an HTTP/1.1 request head from `r`; `None` at EOF.
fn read_head(r: &mut impl BufRead) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Some(head);
        }
    }
}

fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Read a request body framed by Content-Length or chunked encoding into a sink; byte count.
fn drain_body(r: &mut impl BufRead, head: &str) -> Option<u64> {
    if let Some(n) = head_value(head, "content-length").and_then(|v| v.parse::<u64>().ok()) {
        let got = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink()).ok()?;
        return (got == n).then_some(n);
    }
    if head_value(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut total = 0u64;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let n = u64::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
            if n == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t).ok()? == 0 || t == "\r\n" {
                        return Some(total);
                    }
                }
            }
            let got = std::io::copy(&mut r.by_ref().take(n), &mut std::io::sink()).ok()?;
            if got != n {
                return None;
            }
            total += n;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).ok()?;
        }
    }
    Some(0)
}

/// A tiny threaded HTTP/1.1 server: `handle(head, body_len)` returns (status, body) for each
/// request; keep-alive; every body is read and discarded (counted). Stops when dropped.
pub struct MiniServer {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    /// Request heads received, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

type Handler = dyn Fn(&str, u64) -> (u16, Vec<u8>) + Send + Sync;

impl MiniServer {
    pub fn start(handle: impl Fn(&str, u64) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handle: Arc<Handler> = Arc::new(handle);
        let (c, h, st) = (connections.clone(), heads.clone(), stop.clone());
        thread::spawn(move || {
            for s in l.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(s) = s else { continue };
                c.fetch_add(1, Ordering::Relaxed);
                let (h, handle) = (h.clone(), handle.clone());
                thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::with_capacity(256 * 1024, s);
                    while let Some(head) = read_head(&mut r) {
                        h.lock().unwrap().push(head.clone());
                        let Some(n) = drain_body(&mut r, &head) else {
                            return;
                        };
                        let (status, body) = handle(&head, n);
                        let res = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n",
                            body.len()
                        );
                        if w.write_all(res.as_bytes()).is_err() || w.write_all(&body).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        MiniServer {
            addr,
            connections,
            heads,
            stop,
        }
    }

    /// Answers 200 with the number of body bytes it read (a discard server for uploads).
    pub fn discard() -> Self {
        Self::start(|_, n| (200, n.to_string().into_bytes()))
    }

    /// Answers 200 `name` while `healthy` is set, else 500 — for every path.
    pub fn toggle(name: &'static str, healthy: Arc<AtomicBool>) -> Self {
        Self::start(move |_, _| {
            if healthy.load(Ordering::Relaxed) {
                (200, name.as_bytes().to_vec())
            } else {
                (500, b"sick".to_vec())
            }
        })
    }

    pub fn count(&self) -> usize {
        self.heads.lock().unwrap().len()
    }

    /// How many received request heads start with `prefix` (e.g. "GET /healthz ").
    pub fn count_starting(&self, prefix: &str) -> usize {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with(prefix))
            .count()
    }
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// An upstream that answers every request with `len` bytes of body, streamed from a small buffer
/// (for large downloads without holding them in memory). The counter is the body bytes written
/// so far, over all requests.
pub fn source_server(len: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let total = written.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let total = total.clone();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                while let Some(head) = read_head(&mut r) {
                    if drain_body(&mut r, &head).is_none() {
                        return;
                    }
                    let h = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
                    );
                    if w.write_all(h.as_bytes()).is_err() {
                        return;
                    }
                    let chunk = vec![b'z'; 256 * 1024];
                    let mut left = len;
                    while left > 0 {
                        let k = left.min(chunk.len() as u64) as usize;
                        if w.write_all(&chunk[..k]).is_err() {
                            return;
                        }
                        total.fetch_add(k as u64, Ordering::Relaxed);
                        left -= k as u64;
                    }
                }
            });
        }
    });
    (addr, written)
}

/// GET on the admin listener.
pub fn admin_get(b: &Berth, path: &str) -> Resp {
    get_with(
        b.admin,
        "127.0.0.1",
        path,
        &[("Authorization", &format!("Bearer {}", b.token))],
    )
}

/// PUT `body` (JSON) on the admin listener.
pub fn admin_put(b: &Berth, path: &str, body: &str) -> Resp {
    request(
        b.admin,
        "PUT",
        "127.0.0.1",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {}", b.token)),
        ],
        body.as_bytes(),
    )
}

/// The sum of every sample of metric `name` (exact name, before `{` or space) whose label set
/// contains every one of `labels` (e.g. `route="app.localhost/"`). `None` when no sample matches.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if n != name || !labels.iter().all(|want| l.contains(want)) {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Assert that an error page names no internal address.
pub fn assert_no_internals(body: &str, addrs: &[SocketAddr]) {
    assert!(
        !body.contains("127.0.0.1"),
        "error body names an internal address: {body:?}"
    );
    for a in addrs {
        assert!(
            !body.contains(&a.port().to_string()),
            "error body names upstream port {}: {body:?}",
            a.port()
        );
    }
    assert!(body.len() < 1024, "error body is not short: {body:?}");
}

/// Generate a self-signed P-256 certificate for `name` with openssl; (cert PEM, key PEM).
pub fn self_signed(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let (ok, _, err) = run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            &format!("subjectAltName=DNS:{name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    assert!(ok, "openssl req failed: {err}");
    (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
}

/// The leaf certificate berth presents for SNI `host`, as `openssl x509 -text` output.
pub fn presented_cert(b: &Berth, host: &str) -> String {
    let out = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &b.https.to_string(),
            "-servername",
            host,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate presented for {host}: {text}"));
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start + 25;
    let pem = &text[start..end];
    let out = test_support::run_with_input(
        std::process::Command::new("openssl").args(["x509", "-noout", "-text"]),
        pem.as_bytes(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
