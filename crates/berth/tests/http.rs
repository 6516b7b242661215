//! Issue 2, item 4: HTTP/1.1 and HTTP/2 (ALPN) to clients, pooled keep-alive upstream
//! connections, WebSocket passthrough, X-Forwarded-* and X-Request-Id, hop-by-hop header removal,
//! and bodies streamed both ways with bounded memory (1 GiB up and down, flat RSS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use test_support::{eventually, run, Berth, Reply, Upstream};

const GIB: u64 = 1 << 30;
/// Peak RSS allowed while a GiB streams through.
const RSS_LIMIT_KIB: u64 = 100 * 1024;

/// Header (lower-case name, value) pairs of a raw request or response head.
fn head_headers(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn values(h: &[(String, String)], name: &str) -> Vec<String> {
    h.iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn one(h: &[(String, String)], name: &str) -> String {
    let v = values(h, name);
    assert_eq!(
        v.len(),
        1,
        "expected exactly one {name} header upstream, got {v:?}"
    );
    v[0].clone()
}

#[test]
fn serves_http1_and_http2_by_alpn() {
    let up = Upstream::start(Reply::Ok("hi"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http2", "-w", "|%{http_version}"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "hi|2", "curl --http2 did not negotiate h2");
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http1.1", "-w", "|%{http_version}"],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "hi|1.1");
    // Several h2 streams on one connection (curl multiplexes URLs given together).
    let port = b.https.port();
    let url = format!("https://app.localhost:{port}/s");
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "--http2",
            "--cacert",
            b.ca().to_str().unwrap(),
            "--resolve",
            &format!("app.localhost:{port}:127.0.0.1"),
            "-w",
            "|%{http_version}\n",
            &url,
            &url,
            &url,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "hi|2\nhi|2\nhi|2\n");
    // Plain HTTP is HTTP/1.1.
    let r = get(b.http, "app.localhost", "/");
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.1", 200));
    assert_eq!(up.count(), 6);
}

#[test]
fn upstream_connections_are_pooled_and_reused() {
    let up = Upstream::start(Reply::Ok("pooled"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    // 40 requests, each on its own client connection (which it closes).
    for i in 0..40 {
        let r = get(b.http, "app.localhost", &format!("/{i}"));
        assert_eq!((r.status, r.text().as_str()), (200, "pooled"));
    }
    // 40 more on one keep-alive client connection.
    let mut c = Conn::open(b.http);
    for i in 0..40 {
        let r = c.get("app.localhost", &format!("/k{i}")).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "pooled"));
    }
    // And 20 over h2.
    let port = b.https.port();
    let url = format!("https://app.localhost:{port}/h2");
    let mut args = vec![
        "-sS".to_string(),
        "--http2".into(),
        "--cacert".into(),
        b.ca().display().to_string(),
        "--resolve".into(),
        format!("app.localhost:{port}:127.0.0.1"),
    ];
    args.extend(std::iter::repeat_n(url, 20));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = run("curl", &refs);
    assert!(ok, "{err}");
    assert_eq!(out, "pooled".repeat(20));
    assert_eq!(up.count(), 100);
    let conns = up.connections.load(Ordering::Relaxed);
    assert!(
        conns <= 4,
        "100 sequential requests opened {conns} upstream connections: keep-alive pooling is not working"
    );
    // The client's `Connection: close` is hop-by-hop: it must not reach the upstream.
    assert!(!up.last().to_ascii_lowercase().contains("connection: close"));
}

#[test]
fn websocket_upgrade_is_passed_through() {
    let up = Upstream::start(Reply::Upgrade);
    let b = Berth::start(BIN, &route("ws.localhost", &[up.addr], ""));
    let mut c = Conn::open(b.http);
    c.s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let r = c.read_response(true).expect("no answer to the upgrade");
    assert_eq!(r.status, 101, "{r:?}");
    assert!(
        r.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "101 without `Upgrade: websocket` for the client: {r:?}"
    );
    assert!(
        r.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "101 without `Connection: upgrade` for the client: {r:?}"
    );
    // The upstream saw the upgrade request with its Upgrade/Connection headers.
    let seen = head_headers(&up.last());
    assert_eq!(one(&seen, "upgrade").to_ascii_lowercase(), "websocket");
    assert!(one(&seen, "connection")
        .to_ascii_lowercase()
        .contains("upgrade"));
    assert_eq!(one(&seen, "sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
    // Bytes flow both ways after 101, several times, including binary.
    for msg in [
        &b"hello websocket"[..],
        &[0u8, 1, 2, 0x81, 0xff, b'\r', b'\n'],
        &[b'x'; 100_000],
    ] {
        c.s.write_all(msg).unwrap();
        assert_eq!(c.read_exact_n(msg.len()), msg, "echo through the tunnel");
    }
}

/// A wss:// client: TLS with ALPN http/1.1, then the upgrade and bytes both ways.
const WSS_CLIENT: &str = r#"
import socket, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="ws.localhost")
s.sendall(b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
buf = b""
while b"\r\n\r\n" not in buf:
    d = s.recv(4096)
    if not d:
        break
    buf += d
head, _, got = buf.partition(b"\r\n\r\n")
print(head.split(b"\r\n")[0].decode())
msg = b"over tls " * 10000
s.sendall(msg)
while len(got) < len(msg):
    d = s.recv(65536)
    if not d:
        break
    got += d
print("echo-ok" if got == msg else "echo-bad %d" % len(got))
"#;

#[test]
fn websocket_upgrade_is_passed_through_over_tls() {
    let up = Upstream::start(Reply::Upgrade);
    let b = Berth::start(BIN, &route("ws.localhost", &[up.addr], ""));
    let (ok, out, err) = run(
        "python3",
        &[
            "-c",
            WSS_CLIENT,
            &b.https.port().to_string(),
            b.ca().to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let mut lines = out.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("HTTP/1.1 101"),
        "{out}"
    );
    assert_eq!(lines.next(), Some("echo-ok"), "{out}");
}

#[test]
fn forwarded_headers_describe_the_client_and_cannot_be_spoofed() {
    let up = Upstream::start(Reply::Echo);
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let host = format!("app.localhost:{}", b.http.port());
    let r = get(b.http, &host, "/x");
    assert_eq!(r.status, 200);
    let h = head_headers(&up.last());
    assert_eq!(one(&h, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&h, "x-forwarded-proto"), "http");
    assert_eq!(one(&h, "x-forwarded-host"), host);
    assert_eq!(one(&h, "host"), host, "the Host header is passed through");

    // A client that claims to be someone else over plain HTTP.
    let r = get_with(
        b.http,
        &host,
        "/y",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "evil.test"),
        ],
    );
    assert_eq!(r.status, 200);
    let h = head_headers(&up.last());
    let xff = one(&h, "x-forwarded-for");
    assert_eq!(
        xff.rsplit(',').next().unwrap().trim(),
        "127.0.0.1",
        "X-Forwarded-For must end with the real peer: {xff}"
    );
    assert_eq!(
        one(&h, "x-forwarded-proto"),
        "http",
        "spoofed X-Forwarded-Proto passed through"
    );
    assert_eq!(
        one(&h, "x-forwarded-host"),
        host,
        "spoofed X-Forwarded-Host passed through"
    );

    // Over TLS with h2: proto https, host from :authority.
    let (ok, out, err) = curl_https(&b, "app.localhost", "/z", &["--http2"]);
    assert!(ok, "{err}");
    let h = head_headers(&out);
    assert_eq!(one(&h, "x-forwarded-proto"), "https", "{out}");
    assert_eq!(one(&h, "x-forwarded-for"), "127.0.0.1", "{out}");
    assert_eq!(
        one(&h, "x-forwarded-host"),
        format!("app.localhost:{}", b.https.port()),
        "{out}"
    );
}

#[test]
fn request_id_is_kept_when_well_formed_and_generated_otherwise() {
    let up = Upstream::start(Reply::Echo);
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let id_upstream = |sent: Option<&str>| {
        let headers: Vec<(&str, &str)> = sent.map(|v| ("X-Request-Id", v)).into_iter().collect();
        let r = get_with(b.http, "app.localhost", "/", &headers);
        assert_eq!(r.status, 200);
        one(&head_headers(&up.last()), "x-request-id")
    };
    let well_formed = |id: &str| {
        id.len() >= 8
            && id.len() <= 128
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
    };
    // Kept.
    for id in ["abc-123_DEF.456", "0f8fad5b-d9cb-469f-a165-70867728950e"] {
        assert_eq!(id_upstream(Some(id)), id);
    }
    // Generated when absent; different every time.
    let a = id_upstream(None);
    let c = id_upstream(None);
    assert!(well_formed(&a), "generated id {a:?}");
    assert_ne!(a, c, "generated request ids repeat");
    // Replaced when malformed.
    for bad in [
        "has spaces in it",
        "quote\"inside",
        "<script>",
        "",
        &"a".repeat(300),
    ] {
        let got = id_upstream(Some(bad));
        assert_ne!(got, bad, "malformed X-Request-Id {bad:?} was kept");
        assert!(well_formed(&got), "replacement id {got:?}");
    }
    // h2 too.
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http2", "-H", "X-Request-Id: via-h2-123"],
    );
    assert!(ok, "{err}");
    assert_eq!(one(&head_headers(&out), "x-request-id"), "via-h2-123");
    let (ok, out, err) = curl_https(
        &b,
        "app.localhost",
        "/",
        &["--http2", "-H", "X-Request-Id: bad id"],
    );
    assert!(ok, "{err}");
    let got = one(&head_headers(&out), "x-request-id");
    assert!(well_formed(&got), "h2 replacement id {got:?}");
}

#[test]
fn hop_by_hop_headers_are_removed_both_ways() {
    let echo = Upstream::start(Reply::Echo);
    let raw_up = Upstream::start(Reply::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Up-Hop\r\nX-Up-Hop: secret\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\nok",
    ));
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route("app.localhost", &[echo.addr], ""),
            route("raw.localhost", &[raw_up.addr], "")
        ),
    );
    // Request direction.
    let mut c = Conn::open(b.http);
    let r = c
        .send(
            b"GET /h HTTP/1.1\r\nHost: app.localhost\r\nConnection: keep-alive, X-Client-Hop\r\n\
X-Client-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\n\
Upgrade: h2c\r\nX-End-To-End: yes\r\n\r\n",
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let h = head_headers(&echo.last());
    for name in [
        "x-client-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            values(&h, name).is_empty(),
            "hop-by-hop header {name} reached the upstream: {}",
            echo.last()
        );
    }
    for v in values(&h, "connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-client-hop"),
            "Connection: {v}"
        );
    }
    assert_eq!(one(&h, "x-end-to-end"), "yes");

    // Response direction.
    let r = get(b.http, "raw.localhost", "/");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    for name in ["x-up-hop", "keep-alive", "proxy-connection"] {
        assert!(
            r.header(name).is_none(),
            "hop-by-hop {name} reached the client: {r:?}"
        );
    }
    assert_eq!(r.header("x-kept"), Some("yes"));
}

/// Make a sparse file of `len` bytes (zeros, no disk space).
fn sparse(b: &Berth, name: &str, len: u64) -> std::path::PathBuf {
    let p = b.path(name);
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

#[test]
fn one_gib_uploads_stream_with_flat_rss() {
    let sink = MiniServer::discard();
    let b = Berth::start(
        BIN,
        &route("up.localhost", &[sink.addr], "max_body = \"2GiB\""),
    );
    let file = sparse(&b, "big.bin", GIB);
    let port = b.http.port();
    let url = format!("http://up.localhost:{port}/upload");
    let resolve = format!("up.localhost:{port}:127.0.0.1");
    let pid = b.child.id();
    let baseline = rss_kib(pid).unwrap();

    // Content-Length upload (curl -T file: PUT with a length, Expect: 100-continue).
    let watch = RssWatch::start(pid);
    let t = Instant::now();
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "120",
            "--resolve",
            &resolve,
            "-T",
            file.to_str().unwrap(),
            "-w",
            "|%{http_code}",
            &url,
        ],
    );
    let cl_time = t.elapsed();
    assert!(ok, "{err}");
    assert_eq!(out, format!("{GIB}|200"), "Content-Length upload");
    let peak_cl = watch.peak_kib();
    drop(watch);

    // Chunked upload (curl -T - reads stdin and sends Transfer-Encoding: chunked).
    let watch = RssWatch::start(pid);
    let t = Instant::now();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "--resolve",
            &resolve,
            "-T",
            "-",
            "-w",
            "|%{http_code}",
            &url,
        ])
        .stdin(std::fs::File::open(&file).unwrap())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let chunked_time = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{GIB}|200"),
        "chunked upload"
    );
    let peak_chunked = watch.peak_kib();
    drop(watch);
    assert_eq!(sink.count(), 2);
    eprintln!(
        "berth RSS: baseline {baseline} KiB, peak {peak_cl} KiB (CL upload, {cl_time:?}), peak {peak_chunked} KiB (chunked upload, {chunked_time:?})"
    );
    assert!(
        peak_cl < RSS_LIMIT_KIB,
        "RSS reached {peak_cl} KiB during a 1 GiB Content-Length upload"
    );
    assert!(
        peak_chunked < RSS_LIMIT_KIB,
        "RSS reached {peak_chunked} KiB during a 1 GiB chunked upload"
    );
}

#[test]
fn one_gib_h2_upload_streams_with_flat_rss() {
    let sink = MiniServer::discard();
    let b = Berth::start(
        BIN,
        &route("up.localhost", &[sink.addr], "max_body = \"2GiB\""),
    );
    let file = sparse(&b, "big.bin", GIB);
    let watch = RssWatch::start(b.child.id());
    let (ok, out, err) = curl_https(
        &b,
        "up.localhost",
        "/upload",
        &[
            "--http2",
            "--max-time",
            "120",
            "-T",
            file.to_str().unwrap(),
            "-w",
            "|%{http_code}|%{http_version}",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{GIB}|200|2"), "h2 upload");
    let peak = watch.peak_kib();
    eprintln!("berth RSS peak during a 1 GiB h2 upload: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "RSS reached {peak} KiB during a 1 GiB h2 upload"
    );
}

#[test]
fn one_gib_download_streams_with_flat_rss() {
    let (src, _) = source_server(GIB);
    let b = Berth::start(BIN, &route("down.localhost", &[src], ""));
    let port = b.http.port();
    let watch = RssWatch::start(b.child.id());
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "120",
            "--resolve",
            &format!("down.localhost:{port}:127.0.0.1"),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}|%{http_code}",
            &format!("http://down.localhost:{port}/big"),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(out, format!("{GIB}|200"));
    let peak = watch.peak_kib();
    eprintln!("berth RSS peak during a 1 GiB download: {peak} KiB");
    assert!(
        peak < RSS_LIMIT_KIB,
        "RSS reached {peak} KiB during a 1 GiB download"
    );
}

/// A client that stops reading: berth must stop reading from the upstream too (backpressure),
/// not buffer the response.
#[test]
fn a_client_that_does_not_read_holds_back_the_upstream() {
    let (src, written) = source_server(GIB);
    let b = Berth::start(BIN, &route("down.localhost", &[src], ""));
    let mut c = Conn::open(b.http);
    c.s.write_all(b"GET /big HTTP/1.1\r\nHost: down.localhost\r\n\r\n")
        .unwrap();
    // Wait until the upstream has written something and then stalls (no progress for 500 ms).
    let mut last = (0u64, Instant::now());
    let stalled_at = eventually(Duration::from_secs(20), "the upstream to stall", || {
        let now = written.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
            return None;
        }
        (now > 0 && last.1.elapsed() > Duration::from_millis(500)).then_some(now)
    });
    let rss = rss_kib(b.child.id()).unwrap();
    eprintln!("upstream stalled after {stalled_at} bytes; berth RSS {rss} KiB");
    assert!(
        stalled_at < 64 << 20,
        "berth read {stalled_at} bytes from the upstream for a client that reads nothing"
    );
    assert!(rss < RSS_LIMIT_KIB, "berth RSS {rss} KiB");
    // Reading resumes the flow.
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    let got = c.read_exact_n(8 << 20);
    assert_eq!(got.len(), 8 << 20);
    eventually(Duration::from_secs(10), "the upstream to resume", || {
        (written.load(Ordering::Relaxed) > stalled_at).then_some(())
    });
}

/// An upstream that answers one keep-alive request per connection and then closes it, the way
/// a backend with a short keep-alive timeout does. Counts the connections it has closed.
fn closing_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{BufRead, BufReader};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = closed.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            drop(s);
            c.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, closed)
}

#[test]
fn pooled_connections_closed_by_the_upstream_are_not_reused() {
    let (up, closed) = closing_upstream();
    let b = Berth::start(BIN, &route("app.localhost", &[up], ""));
    for i in 1..=5 {
        // Each response leaves a pooled connection that the upstream closes right after.
        let r = get(b.http, "app.localhost", "/");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ok"[..]),
            "HTTP/1.1 request {i}"
        );
        eventually(Duration::from_secs(5), "the upstream to close", || {
            (closed.load(Ordering::SeqCst) >= i).then_some(())
        });
    }
    for i in 1..=5 {
        let (ok, out, err) = common::curl_https(&b, "app.localhost", "/", &["--http2"]);
        assert!(ok && out == "ok", "h2 request {i}: {out:?} {err}");
        eventually(Duration::from_secs(5), "the upstream to close", || {
            (closed.load(Ordering::SeqCst) >= 5 + i).then_some(())
        });
    }
}

#[test]
fn http10_keep_alive_is_acknowledged_and_kept() {
    let up = Upstream::start(Reply::Ok("hi"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let mut s = std::net::TcpStream::connect(b.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for i in 0..3 {
        s.write_all(b"GET / HTTP/1.0\r\nHost: app.localhost\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"hi") {
            let n = std::io::Read::read(&mut s, &mut buf).unwrap();
            assert!(n > 0, "closed before response {i}");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        assert!(
            text.contains("connection: keep-alive"),
            "response {i}: {text}"
        );
    }
    // Without the token, HTTP/1.0 closes after the response.
    let out = test_support::raw(
        b.http,
        b"GET / HTTP/1.0\r\nHost: app.localhost\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(String::from_utf8_lossy(&out)
        .to_ascii_lowercase()
        .contains("connection: close"));
}

#[test]
fn h2_cookie_fields_reach_the_upstream_as_one_header() {
    let up = Upstream::start(Reply::Echo);
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    // nghttp sends each -H as its own h2 field, as browsers split cookies (RFC 9113 §8.2.3).
    let url = format!("https://127.0.0.1:{}/", b.https.port());
    let (ok, out, err) = run(
        "nghttp",
        &[
            "-H",
            ":authority: app.localhost",
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: b=2",
            &url,
        ],
    );
    assert!(ok, "nghttp failed: {err}");
    let seen = up.last().to_ascii_lowercase();
    let cookies: Vec<&str> = seen.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(
        cookies,
        ["cookie: a=1; b=2"],
        "upstream saw {seen:?} (client got {out:?})"
    );
}

#[test]
fn slow_readers_of_large_static_files_get_the_whole_file() {
    const LEN: usize = 6 << 20;
    let big = vec![b'z'; LEN];
    let b = Berth::start_with(
        BIN,
        "",
        &[("www/big.bin", &big)],
        "[limits]\nbody_timeout = \"1s\"\n[[route]]\nhost = \"files.localhost\"\nstatic = \"{dir}/www\"\n",
    );
    // 6 MiB at 2 MiB/s takes 3 s: longer than body_timeout, which bounds each write, not the whole.
    let url = format!("http://{}/big.bin", b.http);
    let (ok, out, err) = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--limit-rate",
            "2M",
            "-H",
            "Host: files.localhost",
            &url,
        ],
    );
    assert!(ok, "curl failed: {err}");
    assert_eq!(out.trim(), LEN.to_string());
}

/// An upstream that answers with a chunked body: `chunks` chunks of "tick\n", one every
/// `every`, then either the last chunk (`finish`) or an abrupt close.
fn trickling_upstream(chunks: usize, every: Duration, finish: bool) -> std::net::SocketAddr {
    use std::io::{BufRead, BufReader};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                for _ in 0..chunks {
                    if s.write_all(b"5\r\ntick\n\r\n").is_err() {
                        return;
                    }
                    std::thread::sleep(every); // the upstream's pace, not synchronisation
                }
                if finish {
                    let _ = s.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    addr
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn h2_streams_longer_than_the_idle_timeout_finish_without_burning_cpu() {
    let up = trickling_upstream(15, Duration::from_millis(200), true);
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nidle_timeout = \"1s\"\n{}",
            route("app.localhost", &[up], "")
        ),
    );
    let before = cpu_ticks(b.child.id());
    let (ok, out, err) = common::curl_https(&b, "app.localhost", "/", &["--http2"]);
    let used = cpu_ticks(b.child.id()) - before;
    assert!(ok, "curl failed: {err}");
    assert_eq!(out.matches("tick").count(), 15);
    // 3 s of trickle; a watchdog that spun on a past deadline would burn ~100 ticks a second.
    assert!(
        used < 50,
        "berth used {used} ticks of CPU for a 3 s trickle"
    );
}

#[test]
fn h2_bodies_cut_short_by_the_upstream_are_not_delivered_as_whole() {
    let up = trickling_upstream(2, Duration::from_millis(10), false);
    let b = Berth::start(BIN, &route("app.localhost", &[up], ""));
    let (ok, out, _) = common::curl_https(&b, "app.localhost", "/", &["--http2"]);
    assert!(
        !ok,
        "a truncated body arrived as a complete response: {out:?}"
    );
    let (ok, _, _) = common::curl_https(&b, "app.localhost", "/", &["--http1.1"]);
    assert!(!ok, "HTTP/1.1 must fail the same way");
}
