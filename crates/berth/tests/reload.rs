//! Reliability battery R1 (load with a config reload every second) and R3 (a slow request, a long
//! download and an open WebSocket across a reload), against the real binary. Reloads go both
//! through the admin API (`PUT /api/v1/routes`) and through SIGHUP after rewriting the file.
//! R1's HTTP/2 load comes from `h2load` (Debian package nghttp2-client).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use test_support::{eventually, raw, read_head, read_response, status, Berth, Reply, Upstream};

const BIN: &str = env!("CARGO_BIN_EXE_berth");

/// R1 is a load test: run this file's tests one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `(host, upstreams)` pairs as `[[route]]` tables.
fn toml(routes: &[(&str, Vec<SocketAddr>)]) -> String {
    routes
        .iter()
        .map(|(host, ups)| {
            let ups: Vec<String> = ups.iter().map(|a| format!("\"{a}\"")).collect();
            format!(
                "[[route]]\nhost = \"{host}\"\nupstreams = [{}]\n",
                ups.join(", ")
            )
        })
        .collect()
}

/// The same routes as the admin API's JSON.
fn json(routes: &[(&str, Vec<SocketAddr>)]) -> String {
    let list: Vec<serde_json::Value> = routes
        .iter()
        .map(|(host, ups)| {
            serde_json::json!({
                "host": host,
                "upstreams": ups.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string(&list).unwrap()
}

/// One admin API call; returns (status, body).
fn admin(b: &Berth, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        b.auth(),
        body.len()
    );
    let r = raw(b.admin, req.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&r).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status(&r), body)
}

/// A minimal keep-alive upstream for load: answers every request head with `200 ok` in one
/// write on a TCP_NODELAY socket. (test-support's `Upstream` writes head and body separately
/// without TCP_NODELAY, which Nagle + delayed ACK hold to ~25 requests/s per connection.)
struct FastUpstream {
    addr: SocketAddr,
    served: Arc<std::sync::atomic::AtomicUsize>,
}

impl FastUpstream {
    fn start() -> FastUpstream {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = served.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let count = count.clone();
                thread::spawn(move || {
                    let _ = s.set_nodelay(true);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            count.fetch_add(1, Ordering::Relaxed);
                            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if s.write_all(reply).is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        FastUpstream { addr, served }
    }

    fn count(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    refused: u64,
    reset: u64,
    non_2xx: u64,
    wrong_body: u64,
    notes: Vec<String>,
}

impl Tally {
    fn errors(&self) -> u64 {
        self.refused + self.reset + self.non_2xx + self.wrong_body
    }
    fn note(&mut self, what: String) {
        if self.notes.len() < 5 {
            self.notes.push(what);
        }
    }
}

/// A keep-alive HTTP/1.1 client sending requests back to back until `stop` (or 100 errors).
fn client(addr: SocketAddr, stop: Arc<AtomicBool>) -> Tally {
    let req = b"GET /r1 HTTP/1.1\r\nHost: app.localhost\r\n\r\n";
    let mut t = Tally::default();
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) && t.errors() < 100 {
        let s = match &mut conn {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    conn.insert(s)
                }
                Err(e) => {
                    t.refused += 1;
                    t.note(format!("connect: {e}"));
                    continue;
                }
            },
        };
        if let Err(e) = s.write_all(req) {
            t.reset += 1;
            t.note(format!("write: {e}"));
            conn = None;
            continue;
        }
        match read_response(s) {
            Ok((200..=299, body)) if body == b"ok" => t.ok += 1,
            Ok((200..=299, body)) => {
                t.wrong_body += 1;
                t.note(format!("body {:?}", String::from_utf8_lossy(&body)));
            }
            Ok((st, body)) => {
                t.non_2xx += 1;
                t.note(format!("{st}: {:?}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                t.reset += 1;
                t.note(format!("read: {e}"));
                conn = None;
            }
        }
    }
    t
}

/// `h2load` output → the numbers that must be zero, and the successes.
fn h2load_counts(out: &str) -> (u64, Vec<(String, u64)>) {
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in h2load output:\n{out}"))
            .to_string()
    };
    let field = |l: &str, name: &str| -> u64 {
        l.split(',')
            .find_map(|p| {
                p.trim()
                    .strip_suffix(name)?
                    .trim()
                    .rsplit(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name:?} in {l:?}"))
    };
    let req = line("requests:");
    let codes = line("status codes:");
    let bad = vec![
        ("failed".to_string(), field(&req, "failed")),
        ("errored".to_string(), field(&req, "errored")),
        ("timeout".to_string(), field(&req, "timeout")),
        ("3xx".to_string(), field(&codes, "3xx")),
        ("4xx".to_string(), field(&codes, "4xx")),
        ("5xx".to_string(), field(&codes, "5xx")),
    ];
    (field(&req, "succeeded"), bad)
}

/// R1: eight keep-alive HTTP/1.1 clients and an HTTP/2 load (h2load) run while the routes are
/// replaced every second, alternating between two equivalent upstream sets, through the admin
/// API and through SIGHUP: no refused connection, no reset, no non-2xx answer.
#[test]
fn r1_load_with_a_reload_every_second() {
    let _s = serial();
    assert!(
        Command::new("h2load").arg("--version").output().is_ok(),
        "R1 needs h2load (Debian package nghttp2-client)"
    );
    let ups: Vec<FastUpstream> = (0..4).map(|_| FastUpstream::start()).collect();
    let set_a = vec![("app.localhost", vec![ups[0].addr, ups[1].addr])];
    let set_b = vec![("app.localhost", vec![ups[2].addr, ups[3].addr])];
    let b = Berth::start(BIN, "");
    let (st, body) = admin(&b, "PUT", "/api/v1/routes", &json(&set_a));
    assert_eq!(st, 200, "PUT /api/v1/routes: {body}");
    // Whether the file defines the routes now (it then owns them, and a PUT is refused).
    let mut file_owns = false;

    // (via SIGHUP?, routes)
    let steps = [
        (false, &set_b),
        (false, &set_a),
        (true, &set_b),
        (true, &set_a),
        (false, &set_b),
        (true, &set_a),
    ];
    let load_secs = steps.len() as u64 + 1;

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (b.http, stop.clone());
            thread::spawn(move || client(addr, stop))
        })
        .collect();
    let h2 = {
        let connect_to = format!("--connect-to=127.0.0.1:{}", b.https.port());
        thread::spawn(move || {
            let out = Command::new("h2load")
                .args([
                    "-D",
                    &load_secs.to_string(),
                    "-c",
                    "2",
                    "-m",
                    "4",
                    &connect_to,
                ])
                .arg("https://app.localhost/r1-h2")
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr)
        })
    };

    let start = Instant::now();
    let mut took = Vec::new();
    for (i, (hup, set)) in steps.iter().enumerate() {
        // Pace: one reload per second.
        let at = start + Duration::from_secs(i as u64 + 1);
        thread::sleep(at.saturating_duration_since(Instant::now()));
        let want = set[0].1[0].to_string();
        let t = Instant::now();
        if *hup {
            b.rewrite_config(&toml(set));
            b.signal("HUP");
            eventually(Duration::from_secs(5), "SIGHUP to apply the file", || {
                admin(&b, "GET", "/api/v1/routes", "")
                    .1
                    .contains(&want)
                    .then_some(())
            });
            file_owns = true;
        } else {
            // The file gives the routes back to the API first (one more reload: the API's
            // stored routes, an equivalent set, come back into force).
            if file_owns {
                b.rewrite_config("");
                b.signal("HUP");
            }
            let body = eventually(Duration::from_secs(5), "the API to own the routes", || {
                let (st, body) = admin(&b, "PUT", "/api/v1/routes", &json(set));
                assert!(st == 200 || st == 409, "PUT /api/v1/routes: {st} {body}");
                (st == 200).then_some(body)
            });
            assert!(body.contains(&want), "{body}");
            file_owns = false;
        }
        took.push(t.elapsed());
    }
    let end = start + Duration::from_secs(load_secs);
    thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let h2out = h2.join().unwrap();

    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let (h2ok, h2bad) = h2load_counts(&h2out);
    let per_upstream: Vec<usize> = ups.iter().map(|u| u.count()).collect();
    eprintln!(
        "R1: {} reloads (took {took:?}); HTTP/1.1 {ok} ok; h2 {h2ok} ok; per upstream {per_upstream:?}",
        steps.len()
    );
    for (i, t) in tallies.iter().enumerate() {
        assert_eq!(
            t.errors(),
            0,
            "HTTP/1.1 client {i}: {} refused, {} reset, {} non-2xx, {} wrong body: {:?}",
            t.refused,
            t.reset,
            t.non_2xx,
            t.wrong_body,
            t.notes
        );
        assert!(t.ok > 0, "HTTP/1.1 client {i} got nothing done");
    }
    for (what, n) in &h2bad {
        assert_eq!(*n, 0, "h2load: {n} {what}:\n{h2out}");
    }
    assert!(h2ok > 0, "h2load got nothing done:\n{h2out}");
    assert!(
        per_upstream.iter().all(|n| *n > 0),
        "both upstream sets should have served: {per_upstream:?}"
    );
}

/// R3: a slow request, a long download and an open WebSocket, all started before a reload (PUT
/// routes, then SIGHUP) that points every host elsewhere, all complete correctly afterwards.
#[test]
fn r3_slow_request_download_and_websocket_survive_reloads() {
    let _s = serial();
    const SIZE: usize = 50 << 20;
    let slow = Upstream::start(Reply::Slow(Duration::from_secs(3)));
    let dl = Upstream::start(Reply::Bytes(SIZE));
    let ws = Upstream::start(Reply::Upgrade);
    let fresh = Upstream::start(Reply::Ok("fresh"));
    let before = [
        ("slow.localhost", vec![slow.addr]),
        ("dl.localhost", vec![dl.addr]),
        ("ws.localhost", vec![ws.addr]),
    ];
    let b = Berth::start(BIN, "");
    let (st, body) = admin(&b, "PUT", "/api/v1/routes", &json(&before));
    assert_eq!(st, 200, "{body}");

    // An open WebSocket (the upstream echoes every byte after its 101).
    let mut w = TcpStream::connect(b.http).unwrap();
    w.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    w.write_all(b"GET /chat HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let (st, _, head) = read_head(&mut w).unwrap();
    assert_eq!(st, 101, "{head}");
    let echo = |w: &mut TcpStream, msg: &[u8]| {
        w.write_all(msg).unwrap();
        let mut got = vec![0; msg.len()];
        w.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    };
    echo(&mut w, b"before the reload");

    // A long download, read slowly: its first MiB now, the rest after the reloads.
    let mut d = TcpStream::connect(b.http).unwrap();
    d.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    d.write_all(b"GET /big HTTP/1.1\r\nHost: dl.localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (st, len, head) = read_head(&mut d).unwrap();
    assert_eq!((st, len), (200, Some(SIZE)), "{head}");
    let mut first = vec![0; 1 << 20];
    d.read_exact(&mut first).unwrap();

    // A slow request, in flight at the upstream during the reloads.
    let addr = b.http;
    let slow_req = thread::spawn(move || {
        raw(
            addr,
            b"GET /slow HTTP/1.1\r\nHost: slow.localhost\r\nConnection: close\r\n\r\n",
            Duration::from_secs(15),
        )
    });
    eventually(
        Duration::from_secs(5),
        "the slow request to reach its upstream",
        || (slow.count() == 1).then_some(()),
    );

    // Reload 1, admin API: every host now goes to `fresh`.
    let after: Vec<(&str, Vec<SocketAddr>)> =
        before.iter().map(|(h, _)| (*h, vec![fresh.addr])).collect();
    let (st, body) = admin(&b, "PUT", "/api/v1/routes", &json(&after));
    assert_eq!(st, 200, "{body}");
    let r = raw(
        b.http,
        b"GET / HTTP/1.1\r\nHost: dl.localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(
        r.ends_with(b"fresh"),
        "new requests should use the new routes: {}",
        String::from_utf8_lossy(&r)
    );
    // Reload 2, SIGHUP: the file says the same plus a marker route.
    let mut file = after.clone();
    file.push(("marker.localhost", vec![fresh.addr]));
    b.rewrite_config(&toml(&file));
    b.signal("HUP");
    eventually(Duration::from_secs(5), "SIGHUP to apply the file", || {
        admin(&b, "GET", "/api/v1/routes", "")
            .1
            .contains("marker.localhost")
            .then_some(())
    });
    assert!(
        !slow_req.is_finished(),
        "the slow request should still be in flight after the reloads"
    );

    // All three complete.
    echo(&mut w, b"after the reload");
    let mut total = first.len();
    assert!(first.iter().all(|&c| c == b'x'));
    let mut buf = vec![0; 256 * 1024];
    loop {
        match d.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(buf[..n].iter().all(|&c| c == b'x'), "corrupt download");
                total += n;
            }
            Err(e) => panic!("download broke after {total} of {SIZE} bytes: {e}"),
        }
    }
    assert_eq!(total, SIZE, "download incomplete");
    let r = slow_req.join().unwrap();
    assert_eq!(
        status(&r),
        200,
        "slow request: {}",
        String::from_utf8_lossy(&r)
    );
    assert!(r.ends_with(b"slow"), "{}", String::from_utf8_lossy(&r));
    echo(&mut w, b"and still open");
    assert_eq!((slow.count(), dl.count(), ws.count()), (1, 1, 1));
}
