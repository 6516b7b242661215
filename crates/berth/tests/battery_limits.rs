//! Reliability battery D1–D4 (limits) against the real binary, over plain HTTP/1.1 with raw
//! sockets: slowloris, slow bodies and clients that never read, oversized heads and bodies, and
//! the global connection cap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};
use test_support::{eventually, raw, read_response, status, Berth, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// D1 measures latency under load: run this file's tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn route(host: &str, up: &Upstream, extra: &str) -> String {
    format!(
        "[[route]]\nhost = \"{host}\"\nupstreams = [\"{}\"]\n{extra}\n",
        up.addr
    )
}

fn get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Read until EOF or reset (`true`) or until `timeout` passes (`false`).
fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (out, true),
        }
    }
}

/// A gauge or counter from berth's `/metrics`.
fn metric(b: &Berth, name: &str) -> f64 {
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nConnection: close\r\n\r\n",
        b.auth()
    );
    let r = raw(b.admin, req.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&r);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// The soft open-files limit after trying to raise it to `want` (within the hard limit) with
/// util-linux `prlimit`; berth, started afterwards, inherits it.
fn raise_nofile(want: u64) -> u64 {
    let read = || {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_string();
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
        (num(f[3]), num(f[4]))
    };
    let (soft, hard) = read();
    if soft < want {
        let new = want.min(hard);
        let _ = Command::new("prlimit")
            .args([
                "--pid",
                &std::process::id().to_string(),
                &format!(
                    "--nofile={new}:{}",
                    if hard == u64::MAX {
                        "unlimited".to_string()
                    } else {
                        hard.to_string()
                    }
                ),
            ])
            .status();
    }
    read().0
}

struct Slow {
    s: TcpStream,
    opened: Instant,
    closed: Option<Duration>,
    reply: Vec<u8>,
}

/// D1: ~1,000 connections trickle header lines; each is closed (408 or plain close) at the
/// header timeout, and meanwhile fresh requests are answered fast.
#[test]
fn d1_slowloris_is_closed_at_header_timeout_and_probes_stay_fast() {
    let _s = serial();
    // The test and berth each hold one fd per slow connection; stay under the soft limit.
    let soft = raise_nofile(4096);
    let n = 1000.min(soft.saturating_sub(150)) as usize;
    let header_timeout = Duration::from_secs(2);
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"2s\"\n{}",
            route("app.localhost", &up, "")
        ),
    );
    let ok = raw(b.http, &get("app.localhost"), Duration::from_secs(5));
    assert_eq!(
        status(&ok),
        200,
        "warm-up: {}",
        String::from_utf8_lossy(&ok)
    );

    let mut slow: Vec<Slow> = (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(b.http).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.localhost\r\n")
                .unwrap();
            let opened = Instant::now();
            s.set_nonblocking(true).unwrap();
            Slow {
                s,
                opened,
                closed: None,
                reply: Vec::new(),
            }
        })
        .collect();
    // berth has accepted them all (not just the kernel's backlog).
    eventually(
        Duration::from_secs(5),
        "berth to accept the slow connections",
        || (metric(&b, "berth_open_connections") >= n as f64).then_some(()),
    );

    // Probes on fresh connections while the slow ones are open, one every ~50 ms.
    let addr = b.http;
    let prober = thread::spawn(move || {
        (0..20)
            .map(|_| {
                let t = Instant::now();
                let r = raw(addr, &get("app.localhost"), Duration::from_secs(5));
                let d = t.elapsed();
                assert_eq!(status(&r), 200, "probe: {}", String::from_utf8_lossy(&r));
                thread::sleep(Duration::from_millis(50));
                d
            })
            .collect::<Vec<_>>()
    });

    // Trickle a header line to every open connection every ~100 ms, and note when each closes.
    let deadline = Instant::now() + header_timeout + Duration::from_secs(4);
    let mut last_trickle = Instant::now();
    let mut buf = [0u8; 1024];
    while slow.iter().any(|c| c.closed.is_none()) && Instant::now() < deadline {
        let trickle = last_trickle.elapsed() >= Duration::from_millis(100);
        if trickle {
            last_trickle = Instant::now();
        }
        for c in slow.iter_mut().filter(|c| c.closed.is_none()) {
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => c.closed = Some(c.opened.elapsed()),
                    Ok(k) => {
                        c.reply.extend_from_slice(&buf[..k]);
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => c.closed = Some(c.opened.elapsed()),
                }
                break;
            }
            if trickle && c.closed.is_none() {
                match c.s.write(b"X-Slow: 1\r\n") {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => c.closed = Some(c.opened.elapsed()),
                }
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    let probes = prober.join().unwrap();

    let open = slow.iter().filter(|c| c.closed.is_none()).count();
    let mut times: Vec<Duration> = slow.iter().filter_map(|c| c.closed).collect();
    times.sort();
    let mut lat = probes.clone();
    lat.sort();
    let p99 = lat[(lat.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "D1: {n} slow connections (soft fd limit {soft}); closed after {:?}..{:?}; {open} still open; probes p50 {:?} p99 {:?}",
        times.first(),
        times.last(),
        lat[lat.len() / 2],
        p99
    );
    assert_eq!(
        open,
        0,
        "{open} of {n} slow connections were still open after {:?}",
        header_timeout + Duration::from_secs(4)
    );
    let early = times
        .iter()
        .filter(|t| **t < header_timeout - Duration::from_millis(250))
        .count();
    assert_eq!(
        early,
        0,
        "{early} slow connections closed well before the header timeout: {:?}",
        times.first()
    );
    assert!(
        *times.last().unwrap() < header_timeout + Duration::from_millis(2500),
        "slow connections closed as late as {:?} (header timeout {header_timeout:?})",
        times.last()
    );
    let bad: Vec<String> = slow
        .iter()
        .filter(|c| !c.reply.is_empty() && status(&c.reply) != 408)
        .map(|c| String::from_utf8_lossy(&c.reply).into_owned())
        .take(3)
        .collect();
    assert!(
        bad.is_empty(),
        "slow connections got something other than 408: {bad:?}"
    );
    assert!(
        p99 < Duration::from_millis(200),
        "probe p99 {p99:?}: {lat:?}"
    );
    assert_eq!(
        up.count(),
        21,
        "only the warm-up and the probes reach the upstream"
    );
}

/// D2 (body): a request body that stalls is cut off at `body_timeout` (408 or close), and no
/// incomplete request is delivered upstream as if it were whole.
#[test]
fn d2_slow_body_is_closed_at_body_timeout() {
    let _s = serial();
    let up = Upstream::start(Reply::Echo);
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nbody_timeout = \"1s\"\n{}",
            route("app.localhost", &up, "")
        ),
    );
    let body_timeout = Duration::from_secs(1);
    let cases: &[(&str, &[u8])] = &[
        (
            "Content-Length 1000, 10 bytes sent",
            b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 1000\r\n\r\n0123456789",
        ),
        (
            "Content-Length 1000, no body bytes",
            b"POST / HTTP/1.1\r\nHost: app.localhost\r\nContent-Length: 1000\r\n\r\n",
        ),
        (
            "chunked, a 1000-byte chunk with 10 bytes sent",
            b"POST / HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n0123456789",
        ),
    ];
    for (name, bytes) in cases {
        let mut s = TcpStream::connect(b.http).unwrap();
        s.write_all(bytes).unwrap();
        let t = Instant::now();
        let (reply, closed) = read_to_close(&mut s, Duration::from_secs(6));
        let took = t.elapsed();
        eprintln!(
            "D2 {name}: closed={closed} after {took:?}: {:?}",
            String::from_utf8_lossy(&reply)
        );
        assert!(closed, "{name}: still open after {took:?}");
        assert!(
            took >= body_timeout - Duration::from_millis(100)
                && took < body_timeout + Duration::from_secs(2),
            "{name}: closed after {took:?}, body timeout {body_timeout:?}"
        );
        assert!(
            reply.is_empty() || status(&reply) == 408,
            "{name}: expected 408 or a plain close, got {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    assert_eq!(
        up.count(),
        0,
        "an incomplete body reached the upstream as a whole request"
    );
}

/// D2 (write): a client that asks for 64 MiB and never reads is disconnected at the write
/// timeout (`body_timeout`), and berth goes on serving.
#[test]
fn d2_client_that_never_reads_is_closed_at_write_timeout() {
    let _s = serial();
    let big = Upstream::start(Reply::Bytes(64 << 20));
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nbody_timeout = \"1s\"\n{}{}",
            route("big.localhost", &big, ""),
            route("app.localhost", &up, "")
        ),
    );
    let mut s = TcpStream::connect(b.http).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
        .unwrap();
    let t = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the request to reach the upstream",
        || (big.count() == 1).then_some(()),
    );
    // Never read: berth's writes stall once the socket buffers are full.
    let closed_after = eventually(
        Duration::from_secs(10),
        "berth to drop the connection of a client that never reads",
        || (metric(&b, "berth_open_connections") == 0.0).then(|| t.elapsed()),
    );
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(10));
    eprintln!(
        "D2 never-reading client: dropped after {closed_after:?}; {} of {} bytes had been sent",
        got.len(),
        64 << 20
    );
    assert!(
        closed_after < Duration::from_secs(1) + Duration::from_secs(3),
        "dropped only after {closed_after:?} (body timeout 1s)"
    );
    assert!(
        closed,
        "the connection is still open from the client's side"
    );
    assert_eq!(status(&got), 200);
    assert!(
        got.len() < 64 << 20,
        "the whole body arrived, so nothing was tested"
    );
    let r = raw(b.http, &get("app.localhost"), Duration::from_secs(5));
    assert_eq!(
        status(&r),
        200,
        "berth stopped serving: {}",
        String::from_utf8_lossy(&r)
    );
}

/// D3: a 64 KiB header block → 431, 101+ header fields → 431, a body over the route's limit →
/// 413, none of them forwarded; requests just inside the limits pass.
#[test]
fn d3_oversized_heads_and_bodies_are_refused() {
    let _s = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(BIN, &route("app.localhost", &up, "max_body = \"1KiB\""));
    let head = |extra: &str| {
        format!("GET / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\n{extra}\r\n")
            .into_bytes()
    };
    let fields = |k: usize| (0..k).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let post = |cl: usize| {
        let mut r = format!(
            "POST / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\nContent-Length: {cl}\r\n\r\n"
        )
        .into_bytes();
        r.extend(std::iter::repeat_n(b'b', cl));
        r
    };
    let chunked = |total: usize| {
        let mut r = b"POST / HTTP/1.1\r\nHost: app.localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..total / 512 {
            r.extend_from_slice(b"200\r\n");
            r.extend(std::iter::repeat_n(b'c', 512));
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"0\r\n\r\n");
        r
    };
    // (case, request, status, reaches the upstream)
    let cases: Vec<(&str, Vec<u8>, u16, bool)> = vec![
        (
            "64 KiB header block",
            head(&format!("X-Big: {}\r\n", "a".repeat(64 * 1024))),
            431,
            false,
        ),
        (
            "64 KiB in 1 KiB header lines",
            head(
                &(0..64)
                    .map(|i| format!("X-L{i}: {}\r\n", "a".repeat(1024)))
                    .collect::<String>(),
            ),
            431,
            false,
        ),
        (
            "101 header fields (Host, Connection + 99)",
            head(&fields(99)),
            431,
            false,
        ),
        ("150 header fields", head(&fields(148)), 431, false),
        (
            "100 header fields (Host, Connection + 98)",
            head(&fields(98)),
            200,
            true,
        ),
        (
            "16 KiB header block",
            head(&format!("X-Big: {}\r\n", "a".repeat(16 * 1024))),
            200,
            true,
        ),
        ("body of 2 KiB, route limit 1 KiB", post(2048), 413, false),
        ("body of 1 KiB + 1", post(1025), 413, false),
        ("body of exactly 1 KiB", post(1024), 200, true),
        (
            "chunked body of 2 KiB, route limit 1 KiB",
            chunked(2048),
            413,
            false,
        ),
        ("chunked body of 1 KiB", chunked(1024), 200, true),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want, forwarded) in &cases {
        let before = up.count();
        let r = raw(b.http, bytes, Duration::from_secs(5));
        let got = status(&r);
        // A forwarded request is recorded before the upstream answers, so before berth does.
        let reached = up.count() > before;
        eprintln!(
            "D3 {name}: {got}, upstream {}",
            if reached { "reached" } else { "untouched" }
        );
        if got != *want || reached != *forwarded {
            failures.push(format!(
                "{name}: want {want} (upstream {}), got {got} (upstream {}): {:?}",
                if *forwarded { "reached" } else { "untouched" },
                if reached { "reached" } else { "untouched" },
                String::from_utf8_lossy(&r[..r.len().min(200)])
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing refused turned up late either.
    let forwarded = cases.iter().filter(|c| c.3).count();
    let r = raw(b.http, &get("app.localhost"), Duration::from_secs(5));
    assert_eq!(status(&r), 200);
    assert_eq!(
        up.count(),
        forwarded + 1,
        "a refused request reached the upstream"
    );
}

/// D4: with `max_connections = 20`, connections beyond the cap are closed at once without an
/// answer, while the 20 accepted ones keep being served; closing some makes room again.
#[test]
fn d4_connections_beyond_the_cap_are_refused_accepted_ones_unaffected() {
    let _s = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nmax_connections = 20\n{}",
            route("app.localhost", &up, "")
        ),
    );
    let keep_alive = b"GET / HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let mut accepted: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut s = TcpStream::connect(b.http).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(keep_alive).unwrap();
            let (st, body) =
                read_response(&mut s).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            assert_eq!((st, &body[..]), (200, &b"ok"[..]), "connection {i}");
            s
        })
        .collect();
    assert_eq!(metric(&b, "berth_open_connections"), 20.0);

    for i in 0..10 {
        let t = Instant::now();
        let mut s = TcpStream::connect(b.http).unwrap();
        let _ = s.write_all(keep_alive);
        let (reply, closed) = read_to_close(&mut s, Duration::from_secs(3));
        let took = t.elapsed();
        assert!(closed, "extra connection {i} still open after {took:?}");
        assert!(
            took < Duration::from_secs(1),
            "extra connection {i} closed only after {took:?}"
        );
        assert!(
            reply.is_empty() || status(&reply) == 503,
            "extra connection {i} was served: {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    assert!(metric(&b, "berth_rejected_connections_total") >= 10.0);

    for (i, s) in accepted.iter_mut().enumerate() {
        s.write_all(keep_alive).unwrap();
        let (st, body) =
            read_response(s).unwrap_or_else(|e| panic!("accepted connection {i}: {e}"));
        assert_eq!(
            (st, &body[..]),
            (200, &b"ok"[..]),
            "accepted connection {i}"
        );
    }

    // Closing five makes room for new connections.
    accepted.truncate(15);
    eventually(
        Duration::from_secs(5),
        "berth to count the closed connections",
        || (metric(&b, "berth_open_connections") <= 15.0).then_some(()),
    );
    let r = raw(b.http, &get("app.localhost"), Duration::from_secs(5));
    assert_eq!(status(&r), 200, "{}", String::from_utf8_lossy(&r));
}

#[test]
fn idle_keepalive_connections_close_at_the_idle_timeout() {
    let _g = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nidle_timeout = \"600ms\"\n{}",
            route("app.test", &up, "")
        ),
    );
    let req = b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n";
    // A busy connection (a request every 200 ms) outlives several idle timeouts...
    let mut busy = TcpStream::connect(b.http).unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut idle_from = started;
    while started.elapsed() < Duration::from_millis(2000) {
        // Pacing the client (the load pattern under test), not waiting for berth.
        thread::sleep(Duration::from_millis(200));
        busy.write_all(req).unwrap();
        assert_eq!(read_response(&mut busy).unwrap().0, 200);
        idle_from = Instant::now();
    }
    // ...and is closed once it stays idle longer than the timeout (not before).
    let (rest, closed) = read_to_close(&mut busy, Duration::from_secs(5));
    let waited = idle_from.elapsed();
    assert!(
        closed && rest.is_empty(),
        "idle connection not closed: {rest:?}"
    );
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "closed after {waited:?}, idle_timeout is 600ms"
    );
}

#[test]
fn d1_header_timeout_runs_from_accept_not_from_the_first_byte() {
    let _g = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\n{}",
            route("app.test", &up, "")
        ),
    );
    let mut s = TcpStream::connect(b.http).unwrap();
    s.set_nonblocking(true).unwrap();
    let accepted = Instant::now();
    // First byte late (0.7 s), then a trickle: the 408 must come 1 s after accept.
    thread::sleep(Duration::from_millis(700));
    let mut answered_at = None;
    let mut buf = [0u8; 1024];
    for b in b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa".iter() {
        let _ = s.write_all(&[*b]);
        thread::sleep(Duration::from_millis(50)); // the slow client's pace
        if let Ok(n) = s.read(&mut buf) {
            answered_at = Some(accepted.elapsed());
            assert!(
                n == 0 || buf.starts_with(b"HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            break;
        }
    }
    let answered_at = answered_at.expect("no 408 while the head trickled in for 3 s");
    assert!(
        answered_at < Duration::from_millis(1500),
        "408 came {answered_at:?} after accept with header_timeout = 1s"
    );
}

/// Open a TLS connection with ALPN h2 and stay silent (`silent`) or send only the connection
/// preface and an empty SETTINGS frame (`preface`); print how long until berth closed it.
const H2_QUIET: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="app.localhost")
assert t.selected_alpn_protocol() == "h2", t.selected_alpn_protocol()
start = time.time()
if sys.argv[2] == "preface":
    t.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
t.settimeout(10)
try:
    while t.recv(65536):
        pass
except Exception:
    pass
print(time.time() - start)
"#;

#[test]
fn d1_quiet_h2_connections_close_at_the_header_timeout() {
    let _g = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\n{}",
            route("app.localhost", &up, "")
        ),
    );
    for mode in ["silent", "preface"] {
        let secs = test_support::python_seconds(H2_QUIET, &[&b.https.port().to_string(), mode]);
        assert!(
            secs < 3.0,
            "{mode} h2 connection open for {secs:.1}s with header_timeout = 1s"
        );
    }
}

/// TLS with ALPN http/1.1: connect, wait 0.7 s before the handshake, then trickle a head;
/// print the seconds from connect until berth answered or closed.
const TLS_TRICKLE: &str = r#"
import socket, ssl, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["http/1.1"])
start = time.time()
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
time.sleep(0.7)
t = ctx.wrap_socket(raw, server_hostname="app.localhost")
t.setblocking(False)
for b in b"GET / HTTP/1.1\r\nHost: app.localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa":
    try:
        t.send(bytes([b]))
    except Exception:
        break
    time.sleep(0.05)
    try:
        if t.recv(1024) is not None:
            break
    except ssl.SSLWantReadError:
        pass
    except Exception:
        break
print(time.time() - start)
"#;

#[test]
fn d1_tls_header_timeout_includes_the_handshake_wait() {
    let _g = serial();
    let up = Upstream::start(Reply::Ok("ok"));
    let b = Berth::start(
        BIN,
        &format!(
            "[limits]\nheader_timeout = \"1s\"\n{}",
            route("app.localhost", &up, "")
        ),
    );
    let secs = test_support::python_seconds(TLS_TRICKLE, &[&b.https.port().to_string()]);
    assert!(
        secs < 1.5,
        "TLS head still accepted {secs:.2}s after connect (header_timeout 1s)"
    );
}
