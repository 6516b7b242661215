//! Upstreams: shared health state (atomics, read on the request path without locks), the
//! per-worker pool of idle keep-alive connections, and the active health checker.

use bytes::{Buf, BytesMut};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Consecutive connect failures after which an upstream is ejected (passive health).
const EJECT_AFTER: u32 = 2;
/// How long a passively ejected upstream is skipped.
const EJECT_FOR: Duration = Duration::from_secs(5);
/// Consecutive failed active checks that take an upstream out, and passed ones that put it back.
const HEALTH_FALL: u32 = 3;
const HEALTH_RISE: u32 = 2;
/// Idle pooled connections older than this are closed rather than reused.
const POOL_IDLE_MAX: Duration = Duration::from_secs(30);

pub struct Upstream {
    pub addr: SocketAddr,
    /// Set by the active health checker; true until a check fails.
    healthy: AtomicBool,
    /// Consecutive connect failures (passive health).
    fails: AtomicU32,
    /// Milliseconds since `epoch()` until which the upstream is ejected.
    ejected_until: AtomicU64,
    /// In-flight requests across all workers (for least_conn).
    active: AtomicUsize,
    /// Active checks in a row that disagreed with `healthy` (see `HEALTH_FALL`). Kept here, not
    /// in the checker task, so that the restart of the checkers at every table swap does not
    /// reset it.
    streak: AtomicU32,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Upstream {
    fn new(addr: SocketAddr) -> Upstream {
        Upstream {
            addr,
            healthy: AtomicBool::new(true),
            fails: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            streak: AtomicU32::new(0),
        }
    }

    pub fn is_up(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && {
            let until = self.ejected_until.load(Ordering::Relaxed);
            until == 0 || now_ms() >= until
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Count an in-flight request until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    pub fn connect_failed(&self, may_eject: bool) {
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if may_eject && fails >= EJECT_AFTER {
            self.ejected_until
                .store(now_ms() + EJECT_FOR.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(upstream = %self.addr, "upstream ejected after {fails} connect failures");
        }
    }

    pub fn connect_ok(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// One active check's verdict: the state flips after `HEALTH_FALL` failures or
    /// `HEALTH_RISE` passes in a row.
    fn check_result(&self, ok: bool) {
        if ok == self.healthy.load(Ordering::Relaxed) {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= if ok { HEALTH_RISE } else { HEALTH_FALL } {
            self.set_healthy(ok);
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    fn set_healthy(&self, up: bool) {
        if self.healthy.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(upstream = %self.addr, "upstream healthy");
            } else {
                tracing::warn!(upstream = %self.addr, "upstream failed its health check");
            }
        }
    }
}

pub struct ActiveGuard(Arc<Upstream>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One `Upstream` per address across table generations, so health survives a reload. Touched
/// only when a table is built, never on the request path.
#[derive(Default)]
pub struct Registry(Mutex<HashMap<SocketAddr, Weak<Upstream>>>);

impl Registry {
    pub fn get(&self, addr: SocketAddr) -> Arc<Upstream> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get(&addr).and_then(Weak::upgrade) {
            return u;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let u = Arc::new(Upstream::new(addr));
        map.insert(addr, Arc::downgrade(&u));
        u
    }

    /// In-flight requests to `addr` across all workers (0 once no table or request holds it):
    /// what a deploy waits on before it stops an old instance.
    pub fn active(&self, addr: SocketAddr) -> usize {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&addr)
            .and_then(Weak::upgrade)
            .map_or(0, |u| u.active())
    }
}

/// A connection to an upstream with its read buffer.
pub struct UpConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// Taken from the pool (a failure before any response byte may be a stale keep-alive).
    pub reused: bool,
}

/// Idle keep-alive connections of one worker thread. Worker-local: no lock, no atomics.
pub struct ConnPool {
    idle: RefCell<HashMap<SocketAddr, Vec<(UpConn, Instant)>>>,
    max_per_host: usize,
}

impl ConnPool {
    pub fn new(max_per_host: usize) -> ConnPool {
        ConnPool {
            idle: RefCell::new(HashMap::new()),
            max_per_host,
        }
    }

    /// A live idle connection, newest first; stale ones (closed by the peer or too old) are dropped.
    pub fn take(&self, addr: SocketAddr) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() > POOL_IDLE_MAX {
                continue;
            }
            if conn.idle_and_open() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Close idle connections that are too old or that the upstream has closed (or written to),
    /// and forget addresses with none left. Run periodically by each worker, so connections to
    /// upstreams that left the route table do not linger until they would be taken.
    pub fn sweep(&self) {
        let mut idle = self.idle.borrow_mut();
        for list in idle.values_mut() {
            list.retain(|(conn, since)| since.elapsed() <= POOL_IDLE_MAX && conn.idle_and_open());
        }
        idle.retain(|_, list| !list.is_empty());
    }

    pub fn put(&self, addr: SocketAddr, mut conn: UpConn) {
        if !conn.buf.is_empty() {
            return; // bytes beyond the response: the upstream is confused; do not reuse
        }
        if conn.buf.capacity() > 64 * 1024 {
            conn.buf = BytesMut::new();
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() < self.max_per_host {
            list.push((conn, Instant::now()));
        }
    }
}

/// Largest upstream response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Header slots for one parsed upstream response head.
const RESPONSE_HEADERS: usize = 128;

/// Why no usable response head came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Closed before sending a byte: on a reused connection, a stale keep-alive.
    ClosedEarly,
    /// Malformed, ambiguous, too large, a 101 nobody asked for, or closed mid-head (502).
    Bad,
    /// No head within the upstream timeout (504).
    Timeout,
}

impl UpConn {
    /// Nothing to read: the connection is open and quiet. A readable idle connection was either
    /// closed by the upstream (EOF) or sent bytes nobody asked for: not reusable.
    fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Read the response head of one exchange, for either front. 1xx heads other than 101 are
    /// skipped; a 101 is accepted only when `upgrade` was asked for. `take` sees the final head
    /// and its headers and makes what the front needs of them (the client's head bytes, or an h2
    /// header map); the head is then consumed from the buffer, leaving the body's first bytes.
    pub async fn read_head<T>(
        &mut self,
        is_head: bool,
        upgrade: bool,
        timeout: Duration,
        mut take: impl FnMut(&crate::h1::ResponseHead, &[httparse::Header<'_>]) -> T,
    ) -> Result<T, HeadError> {
        let mut deadline = None;
        loop {
            if let Some(done) = self.try_head(is_head, upgrade, &mut take) {
                return done;
            }
            self.buf.reserve(8 * 1024);
            let read = self.stream.read_buf(&mut self.buf);
            match crate::h1::timed(&mut deadline, timeout, read).await {
                Some(Ok(0)) | Some(Err(_)) if self.buf.is_empty() => {
                    return Err(HeadError::ClosedEarly)
                }
                Some(Ok(0)) | Some(Err(_)) => return Err(HeadError::Bad),
                Some(Ok(_)) => {}
                None => return Err(HeadError::Timeout),
            }
        }
    }

    /// One parse of the buffered bytes; `None` when more are needed. Synchronous, so that the
    /// header slots stay on the stack and out of the caller's future.
    fn try_head<T>(
        &mut self,
        is_head: bool,
        upgrade: bool,
        take: &mut impl FnMut(&crate::h1::ResponseHead, &[httparse::Header<'_>]) -> T,
    ) -> Option<Result<T, HeadError>> {
        use crate::h1::ResponseError;
        loop {
            let mut slots = [httparse::EMPTY_HEADER; RESPONSE_HEADERS];
            let (head, headers) = match crate::h1::parse_response(&self.buf, &mut slots, is_head) {
                Ok(parsed) => parsed,
                Err(ResponseError::Incomplete) if self.buf.len() > MAX_RESPONSE_HEAD => {
                    return Some(Err(HeadError::Bad))
                }
                Err(ResponseError::Incomplete) => return None,
                Err(ResponseError::Invalid(why)) => {
                    tracing::debug!(why, "invalid upstream response");
                    return Some(Err(HeadError::Bad));
                }
            };
            let len = head.len;
            if head.status == 101 && !upgrade {
                return Some(Err(HeadError::Bad)); // a protocol switch nobody asked for
            }
            if (100..200).contains(&head.status) && head.status != 101 {
                self.buf.advance(len);
                continue;
            }
            let made = take(&head, headers);
            self.buf.advance(len);
            return Some(Ok(made));
        }
    }
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<UpConn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(UpConn {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        reused: false,
    })
}

/// Probe every pool's upstreams per its `health` spec until `stop` is cancelled. One task per
/// (upstream, spec); a 2xx/3xx answer within the timeout is healthy.
pub fn spawn_health_checks(
    table: &crate::table::RouteTable,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut seen = std::collections::HashSet::new();
    for pool in table.pools() {
        let Some(spec) = &pool.health else { continue };
        for up in &pool.upstreams {
            if !seen.insert((up.addr, spec.path.0.clone())) {
                continue;
            }
            let (up, spec, stop) = (up.clone(), spec.clone(), stop.clone());
            tokio::spawn(async move {
                // One slow probe must not take an upstream out (an app's listen backlog
                // overflows under a burst and a connect waits a second for the retry):
                // down after FALL failures in a row, up after RISE successes (HAProxy's
                // defaults). Starts from the upstream's current state.
                let mut tick = tokio::time::interval(spec.interval.0);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let host = up.addr.to_string();
                    let check = probe(up.addr, &host, &spec.path.0);
                    let ok = tokio::time::timeout(spec.timeout.0, check)
                        .await
                        .is_ok_and(|r| r.is_ok());
                    up.check_result(ok);
                }
            });
        }
    }
}

/// One HTTP health probe: `GET path` to `addr` with `Host: host` and `Connection: close`; a 2xx
/// or 3xx status is healthy. The rest of the answer is read in the background (bounded) before
/// closing, so the app does not see its response cut off (Python's http.server logs a traceback for every
/// reset). The proxy's active checks send the address as the host; the deploy engine uses the
/// same probe with the app's host name (apps that check `Host`, e.g. Django's `ALLOWED_HOSTS`,
/// refuse an address) before it sends traffic to a new instance.
pub async fn probe(addr: SocketAddr, host: &str, path: &str) -> Result<(), String> {
    let clean = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if !clean(host) || !clean(path) {
        return Err(format!("invalid probe target {host:?} {path:?}"));
    }
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 1024];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) => return Err("closed before a status line".into()),
            Err(e) => return Err(format!("read: {e}")),
            Ok(k) => n += k,
        }
    }
    // "HTTP/1.x 2xx" or "3xx"
    let status = std::str::from_utf8(&buf[9..12])
        .unwrap_or("???")
        .to_string();
    let ok = buf.starts_with(b"HTTP/1.") && matches!(buf[9], b'2' | b'3');
    // Read the rest of the answer in the background: the verdict (and the caller's timeout)
    // must not wait for it.
    tokio::spawn(async move {
        let drain = async {
            let mut drained = n;
            while drained < 64 * 1024 {
                match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                    Ok(Ok(k)) if k > 0 => drained += k,
                    _ => break,
                }
            }
        };
        // A health path that streams must not pile up connections: 2 s at most.
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    });
    if ok {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_flips_only_after_a_streak() {
        let up = Upstream::new("127.0.0.1:1".parse().unwrap());
        for ok in [false, false, true, false, false] {
            up.check_result(ok);
            assert!(up.is_up(), "two failures in a row do not take it out");
        }
        up.check_result(false);
        assert!(!up.is_up(), "the third does");
        up.check_result(true);
        assert!(!up.is_up());
        up.check_result(true);
        assert!(up.is_up(), "two passes put it back");
    }

    /// A one-shot HTTP server that answers `status` and hands back the request head it got.
    async fn recorder(status: u16) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before the end of the head");
                head.extend_from_slice(&buf[..n]);
            }
            let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8(head).unwrap()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn probe_sends_the_given_host() {
        let (addr, head) = recorder(200).await;
        probe(addr, "hello.example.test", "/health").await.unwrap();
        let head = head.await.unwrap();
        assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: hello.example.test\r\n"), "{head}");
        assert!(!head.contains(&addr.to_string()), "{head}");

        let (addr, head) = recorder(503).await;
        let err = probe(addr, &addr.to_string(), "/").await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        assert!(head
            .await
            .unwrap()
            .contains(&format!("\r\nHost: {addr}\r\n")));

        // A host that would inject header lines is refused before connecting.
        assert!(probe(addr, "a\r\nX-Evil: 1", "/").await.is_err());
    }
}
