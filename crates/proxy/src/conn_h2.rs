//! HTTP/2 clients (ALPN "h2" over TLS), served by hyper's h2 server on the worker's LocalSet and
//! forwarded to upstreams over the same HTTP/1.1 pool as the HTTP/1.1 front. The h2 crate already
//! enforces the frame-level battery (H2–H5: malformed or connection-specific headers, content-length
//! mismatches, rapid reset, CONTINUATION floods); this module adds routing-level checks.

use crate::accesslog::Entry;
use crate::conn_h1::idempotent;
use crate::h1::{self, Framing};
use crate::metrics::UpstreamError;
use crate::request;
use crate::server::Worker;
use crate::static_files::{Conditional, LocalBody, LocalResponse};
use crate::table::{Action, Route};
use crate::upstream::{HeadError, UpConn};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response bodies live on the worker thread only, so they need not be `Send`.
type RespBody = Pin<Box<dyn Body<Data = Bytes, Error = io::Error>>>;

/// Spawns hyper's per-stream tasks on the worker's LocalSet (they are `!Send`).
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

pub async fn serve(
    w: Rc<Worker>,
    io: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    accepted: tokio::time::Instant,
) {
    let lim = &w.shared.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(LocalExec);
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(lim.max_header_bytes.0.min(u64::from(u32::MAX)) as u32)
        .keep_alive_interval(Some(lim.idle_timeout.0))
        .keep_alive_timeout(lim.header_timeout.0);
    let shutdown = w.shared.shutdown.clone();
    // The header timeout runs from accept, the TLS handshake included.
    let activity = Rc::new(Activity {
        streams: std::cell::Cell::new(0),
        last: std::cell::Cell::new(accepted),
        progress: std::cell::Cell::new(accepted),
        served: std::cell::Cell::new(false),
    });
    let (svc_w, svc_activity) = (w.clone(), activity.clone());
    let svc = hyper::service::service_fn(move |req| {
        // Counted as open from the moment hyper hands the stream over, not from its first poll.
        let guard = StreamGuard::open(svc_activity.clone());
        let w = svc_w.clone();
        async move {
            let resp = handle(w, peer, req, &guard.0).await;
            Ok::<_, Infallible>(resp.map(|body| Box::pin(Tracked { body, guard }) as RespBody))
        }
    });
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    tokio::pin!(conn);
    // hyper's h2 server has no header, idle or send timeout (its keep-alive PINGs only check that
    // the peer is alive), so a watchdog closes a connection that
    // - has sent no request within `header_timeout` of the handshake,
    // - has had no open stream for `idle_timeout`, or
    // - has open streams none of which moved (a body frame either way) for `stall`: e.g. a
    //   client that stops granting flow-control window.
    // Every wake-up is computed from the latest activity, so it never spins.
    let stall = lim.body_timeout.0.max(lim.upstream_timeout.0);
    loop {
        let quiet_for = if activity.served.get() {
            lim.idle_timeout.0
        } else {
            lim.header_timeout.0
        };
        let busy = activity.streams.get() > 0;
        let due = if busy {
            activity.progress.get() + stall
        } else {
            activity.last.get() + quiet_for
        };
        // Streams open and close without waking the watchdog: look again at least every second.
        let wake = due.min(tokio::time::Instant::now() + std::time::Duration::from_secs(1));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
                return;
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = tokio::time::Instant::now();
                if activity.streams.get() > 0 {
                    if activity.progress.get() + stall <= now {
                        tracing::debug!(%peer, "h2 connection stalled; closing");
                        return;
                    }
                } else if activity.last.get() + quiet_for <= now {
                    conn.as_mut().graceful_shutdown();
                    // A stream that raced the GOAWAY is finished, within the stall bound.
                    let bound = if activity.served.get() { stall } else { std::time::Duration::from_secs(1) };
                    let _ = tokio::time::timeout(bound, conn.as_mut()).await;
                    return;
                }
            }
        }
    }
}

/// What the watchdog of one h2 connection watches.
pub(crate) struct Activity {
    streams: std::cell::Cell<usize>,
    /// When a stream last opened or closed.
    last: std::cell::Cell<tokio::time::Instant>,
    /// When any stream last moved a body frame (either way) or opened.
    progress: std::cell::Cell<tokio::time::Instant>,
    served: std::cell::Cell<bool>,
}

impl Activity {
    pub(crate) fn touch(&self) {
        self.progress.set(tokio::time::Instant::now());
    }
}

/// Counts a stream as open from its request until its response body is dropped.
struct StreamGuard(Rc<Activity>);

impl StreamGuard {
    fn open(a: Rc<Activity>) -> StreamGuard {
        a.streams.set(a.streams.get() + 1);
        a.served.set(true);
        a.last.set(tokio::time::Instant::now());
        a.touch();
        StreamGuard(a)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.set(self.0.streams.get().saturating_sub(1));
        self.0.last.set(tokio::time::Instant::now());
    }
}

/// A response body that keeps its stream counted as open while it is being sent, and marks
/// progress for the watchdog with every frame.
struct Tracked {
    body: RespBody,
    guard: StreamGuard,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = self.body.as_mut().poll_frame(cx);
        if polled.is_ready() {
            self.guard.0.touch();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn local(resp: LocalResponse, head_only: bool) -> Response<RespBody> {
    let mut r = Response::new(match resp.body {
        LocalBody::Bytes(b) if !head_only => full(b),
        LocalBody::File { file, offset, len } if !head_only => {
            let file = tokio::fs::File::from_std(file);
            let reader = async move {
                let mut f = file;
                f.seek(io::SeekFrom::Start(offset)).await?;
                Ok::<_, io::Error>(f.take(len))
            };
            ReadBody::lazy(reader, len)
        }
        _ => full(Bytes::new()),
    });
    *r.status_mut() = resp.status;
    *r.headers_mut() = resp.headers;
    r
}

fn full(b: Bytes) -> RespBody {
    Box::pin(http_body_util::Full::new(b).map_err(|never| match never {}))
}

async fn handle(
    w: Rc<Worker>,
    peer: SocketAddr,
    req: Request<Incoming>,
    activity: &Activity,
) -> Response<RespBody> {
    let start = Instant::now();
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    // `:authority` wins over `Host` (RFC 9113 §8.3.1).
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec());
    let host_src = authority.or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .map(|h| h.as_bytes().to_vec())
    });
    let host = host_src.as_deref().and_then(request::parse_host);
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if request::valid_request_id(v.as_bytes()) => {
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => request::new_request_id(),
    };
    // h2 checks the pseudo-header syntax only; anything but http(s) is not a request for us (H3).
    let scheme_ok = matches!(req.uri().scheme_str(), Some("http" | "https"));
    let host = host.filter(|_| scheme_ok);
    let (resp, route, upstream) = match (&host, route_for(&w, host.as_deref(), &target)) {
        (Some(_), Ok((route, norm))) => {
            let host_src = host_src.clone().unwrap_or_default();
            respond(
                &w,
                peer,
                req,
                &host_src,
                &target,
                &norm,
                &route,
                &request_id,
                activity,
            )
            .await
        }
        (_, Err(resp)) => {
            if resp.status() == StatusCode::BAD_REQUEST {
                w.shared.metrics.rejected_requests.inc();
            }
            (*resp, None, None)
        }
        (None, _) => {
            w.shared.metrics.rejected_requests.inc();
            (
                local(request::error(StatusCode::BAD_REQUEST), false),
                None,
                None,
            )
        }
    };
    let mut resp = resp;
    if let Some(hsts) = route.as_ref().and_then(|r| r.hsts.clone()) {
        // An upstream's own value wins.
        resp.headers_mut()
            .entry(http::header::STRICT_TRANSPORT_SECURITY)
            .or_insert(hsts);
    }
    let status = resp.status().as_u16();
    if let Some(route) = &route {
        route.metrics.record(status, start.elapsed().as_secs_f64());
    }
    let log = &w.shared.log;
    if log.enabled() {
        log.log(&Entry {
            host: host.as_deref().unwrap_or(""),
            method: method.as_str(),
            path: target.as_bytes(),
            status,
            bytes: resp.body().size_hint().exact().unwrap_or(0),
            duration: start.elapsed(),
            upstream,
            request_id: &request_id,
            client: peer.ip(),
            proto: "HTTP/2",
        });
    }
    resp
}

type Routed = Result<(Arc<Route>, String), Box<Response<RespBody>>>;

fn route_for(w: &Worker, host: Option<&str>, target: &str) -> Routed {
    let bad = || {
        Err(Box::new(local(
            request::error(StatusCode::BAD_REQUEST),
            false,
        )))
    };
    let Some(host) = host else { return bad() };
    let Some((raw_path, _)) = request::split_target(target.as_bytes()) else {
        return bad();
    };
    let Ok(norm) = request::normalize_path(raw_path) else {
        return bad();
    };
    match w.shared.table.load().lookup(host, &norm) {
        Some(r) => Ok((r.clone(), norm.into_owned())),
        None => Err(Box::new(local(request::not_found(), false))),
    }
}

#[allow(clippy::too_many_arguments)]
async fn respond(
    w: &Rc<Worker>,
    peer: SocketAddr,
    req: Request<Incoming>,
    host_src: &[u8],
    target: &str,
    norm: &str,
    route: &Arc<Route>,
    request_id: &str,
    activity: &Activity,
) -> (Response<RespBody>, Option<Arc<Route>>, Option<SocketAddr>) {
    let head_only = req.method() == Method::HEAD;
    let (raw_path, query) = request::split_target(target.as_bytes()).unwrap_or((b"/", b""));
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| h1::parse_content_length(v.as_bytes()));
    if declared.is_some_and(|n| n > route.max_body) {
        return (
            local(request::error(StatusCode::PAYLOAD_TOO_LARGE), head_only),
            Some(route.clone()),
            None,
        );
    }
    match &route.action {
        Action::Static(root) => {
            let h = req.headers();
            let get = |n: &str| h.get(n).map(|v| v.as_bytes());
            let cond = Conditional {
                if_none_match: get("if-none-match"),
                if_modified_since: get("if-modified-since"),
                range: get("range"),
                if_range: get("if-range"),
                accept_encoding: get("accept-encoding"),
            };
            let resp = request::serve_static(route, root, req.method(), norm, query, cond);
            (local(resp, head_only), Some(route.clone()), None)
        }
        Action::Proxy(pool) => {
            let strip = route
                .spec
                .strip_prefix
                .then_some(route.spec.path.0.as_str());
            let up_target = request::upstream_target(raw_path, query, norm, strip);
            let (resp, addr) = proxy(
                w,
                peer,
                req,
                pool,
                &up_target,
                host_src,
                declared,
                route.max_body,
                request_id,
                activity,
            )
            .await;
            (resp, Some(route.clone()), addr)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    w: &Rc<Worker>,
    peer: SocketAddr,
    req: Request<Incoming>,
    pool: &crate::table::Pool,
    target: &[u8],
    host: &[u8],
    declared: Option<u64>,
    max_body: u64,
    request_id: &str,
    activity: &Activity,
) -> (Response<RespBody>, Option<SocketAddr>) {
    let lim = &w.shared.limits;
    let is_head = req.method() == Method::HEAD;
    let err = |s: StatusCode, addr| (local(request::error(s), is_head), addr);
    let (parts, mut body) = req.into_parts();
    let framing = match declared {
        _ if body.is_end_stream() => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    };
    let head = upstream_head(&parts, target, host, peer, framing, request_id);
    let mut at = match w.checkout(pool, idempotent(&parts.method)).await {
        Ok(a) => a,
        Err((s, addr)) => return err(s, addr),
    };
    // Sent again after a failure before any response byte (see `Worker::resend`): only
    // requests safe to send twice, with no body.
    let resendable = framing == Framing::None && idempotent(&parts.method);
    let (status, headers, framing, up_keep) = loop {
        let addr = Some(at.up.addr);
        let sent = send_request(
            &mut at.conn,
            &head,
            &mut body,
            framing,
            max_body,
            lim,
            activity,
        );
        let failed = match sent.await {
            Ok(()) => {
                let read = at
                    .conn
                    .read_head(is_head, false, lim.upstream_timeout.0, |head, hs| {
                        (
                            head.status,
                            response_headers(hs, head.framing),
                            head.framing,
                            head.keep_alive,
                        )
                    });
                match read.await {
                    Ok(r) => break r,
                    Err(HeadError::Bad) => {
                        w.shared.metrics.upstream_error(UpstreamError::BadResponse);
                        return err(StatusCode::BAD_GATEWAY, addr);
                    }
                    Err(HeadError::Timeout) => {
                        w.shared.metrics.upstream_error(UpstreamError::Timeout);
                        return err(StatusCode::GATEWAY_TIMEOUT, addr);
                    }
                    Err(HeadError::ClosedEarly) => UpstreamError::BadResponse,
                }
            }
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                return err(StatusCode::PAYLOAD_TOO_LARGE, addr)
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return err(StatusCode::REQUEST_TIMEOUT, addr)
            }
            // With a body, the failure may be the client's (a reset stream): not counted.
            Err(_) if !resendable => return err(StatusCode::BAD_GATEWAY, addr),
            Err(_) => UpstreamError::Connect,
        };
        if !resendable {
            w.shared.metrics.upstream_error(failed);
            return err(StatusCode::BAD_GATEWAY, addr);
        }
        if let Err((s, addr)) = w.resend(pool, &mut at, failed).await {
            return err(s, addr);
        }
    };
    let addr = at.up.addr;
    let Ok(status) = StatusCode::from_u16(status) else {
        return err(StatusCode::BAD_GATEWAY, Some(addr));
    };
    let body = match framing {
        Framing::None => {
            if up_keep {
                w.pool.put(addr, at.conn);
            }
            full(Bytes::new())
        }
        Framing::Length(n) if at.conn.buf.len() as u64 == n && up_keep => {
            let b = at.conn.buf.split().freeze();
            w.pool.put(addr, at.conn);
            full(b)
        }
        // The upstream stays counted as busy (least_conn) until its body has been relayed.
        _ => relay_body(w, at.conn, framing, up_keep, addr, at.active),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    (resp, Some(addr))
}

/// Write the request head, then the body frames as they arrive (re-chunked when the length is
/// unknown). A body over `max_body` is `FileTooLarge`.
async fn send_request(
    conn: &mut UpConn,
    head: &[u8],
    body: &mut Incoming,
    framing: Framing,
    max_body: u64,
    lim: &crate::config::Limits,
    activity: &Activity,
) -> io::Result<()> {
    let (t, up_t) = (lim.body_timeout.0, lim.upstream_timeout.0);
    // Each wait has its own timeout (between frames from the client, each write upstream), so
    // a long upload is fine as long as it keeps moving: `TimedOut` when it stalls.
    // A stalled client is a 408 (`TimedOut`); an upstream that stops reading is a 502.
    let stalled = || io::Error::new(io::ErrorKind::TimedOut, "request body stalled");
    let stuck = || io::Error::other("upstream stopped reading");
    h1::timed_for(up_t, conn.stream.write_all(head))
        .await
        .ok_or_else(stuck)??;
    let mut sent = 0u64;
    let mut size_line = Vec::with_capacity(20);
    while let Some(frame) = h1::timed_for(t, body.frame()).await.ok_or_else(stalled)? {
        let frame = frame.map_err(io::Error::other)?;
        activity.touch();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        sent += data.len() as u64;
        if sent > max_body {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "body too large",
            ));
        }
        if framing == Framing::Chunked && !data.is_empty() {
            size_line.clear();
            h1::push_hex(&mut size_line, data.len() as u64);
            size_line.extend_from_slice(b"\r\n");
            let write = async {
                conn.stream.write_all(&size_line).await?;
                conn.stream.write_all(&data).await?;
                conn.stream.write_all(b"\r\n").await
            };
            h1::timed_for(up_t, write).await.ok_or_else(stuck)??;
        } else {
            h1::timed_for(up_t, conn.stream.write_all(&data))
                .await
                .ok_or_else(stuck)??;
        }
    }
    if framing == Framing::Chunked {
        h1::timed_for(up_t, conn.stream.write_all(b"0\r\n\r\n"))
            .await
            .ok_or_else(stuck)??;
    }
    Ok(())
}

/// Stream an upstream body into the h2 response through an in-memory pipe; the pooled connection
/// goes back to the pool when the body is complete.
fn relay_body(
    w: &Rc<Worker>,
    mut conn: UpConn,
    framing: Framing,
    up_keep: bool,
    addr: SocketAddr,
    active: crate::upstream::ActiveGuard,
) -> RespBody {
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let (whole, whole_rx) = tokio::sync::oneshot::channel();
    let timeout = w.shared.limits.upstream_timeout.0;
    let write_timeout = w.shared.limits.body_timeout.0;
    let w = w.clone();
    tokio::task::spawn_local(async move {
        let _active = active;
        let mut out = Vec::new();
        let relay = h1::Relay {
            framing,
            dst_chunked: false,
            limit: u64::MAX,
            read_timeout: timeout,
            write_timeout,
            out: &mut out,
        };
        if relay
            .run(&mut conn.stream, &mut conn.buf, &mut tx)
            .await
            .is_ok()
        {
            // Said before `tx` drops, so the reader sees it when it reaches EOF.
            let _ = whole.send(());
            if up_keep {
                w.pool.put(addr, conn);
            }
        }
    });
    ReadBody::reading(rx, EndCheck::Signal(whole_rx))
}

fn upstream_head(
    parts: &http::request::Parts,
    target: &[u8],
    host: &[u8],
    peer: SocketAddr,
    framing: Framing,
    request_id: &str,
) -> Vec<u8> {
    let xff = parts.headers.get("x-forwarded-for").map(|v| v.as_bytes());
    let client_ip = peer.ip().to_string();
    let head = request::UpstreamHead {
        method: parts.method.as_str(),
        target,
        host,
        xff,
        client_ip: &client_ip,
        tls: true,
        request_id,
        websocket: false,
        framing,
    };
    let mut out = Vec::with_capacity(512);
    // h2 clients may split Cookie into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    let cookies: Vec<&[u8]> = parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = (cookies.len() > 1).then(|| cookies.join(&b"; "[..]));
    let headers = parts
        .headers
        .iter()
        .filter(|(n, _)| joined.is_none() || *n != http::header::COOKIE)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .chain(joined.as_deref().map(|j| (&b"cookie"[..], j)));
    request::write_upstream_head(&mut out, &head, headers, |_| false);
    out
}

/// Upstream response headers as an h2 header map: connection-specific ones are removed (RFC 9113
/// §8.2.2), names lower-cased by `HeaderName`.
fn response_headers(hs: &[httparse::Header<'_>], framing: Framing) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(hs.len());
    let listed: Vec<&[u8]> = hs
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h1::tokens(h.value))
        .collect();
    for h in hs {
        let n = h.name.as_bytes();
        let keep_cl = framing == Framing::None && n.eq_ignore_ascii_case(b"content-length");
        if (h1::is_hop_by_hop(n) && !keep_cl) || listed.iter().any(|t| t.eq_ignore_ascii_case(n)) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(h.value))
        {
            map.append(name, value);
        }
    }
    if let Framing::Length(n) = framing {
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    map
}

/// A response body read from an `AsyncRead` (a pipe or a file), possibly opened lazily.
struct ReadBody<R> {
    state: ReadState<R>,
    buf: BytesMut,
    read: u64,
    end: EndCheck,
}

/// How a body read to EOF proves it is complete; an incomplete one ends in an error, so hyper
/// resets the stream instead of ending it cleanly (a truncated body must not look whole).
enum EndCheck {
    /// Exactly this many bytes (a static file that shrinks while sent fails).
    Length(u64),
    /// The relay task's word that the upstream body arrived whole.
    Signal(tokio::sync::oneshot::Receiver<()>),
}

enum ReadState<R> {
    Opening(Pin<Box<dyn std::future::Future<Output = io::Result<R>>>>),
    Reading(R),
    Done,
}

impl<R: AsyncRead + Unpin + 'static> ReadBody<R> {
    fn reading(r: R, end: EndCheck) -> RespBody {
        Box::pin(ReadBody {
            state: ReadState::Reading(r),
            buf: BytesMut::new(),
            read: 0,
            end,
        })
    }
    fn lazy(f: impl std::future::Future<Output = io::Result<R>> + 'static, len: u64) -> RespBody {
        Box::pin(ReadBody {
            state: ReadState::Opening(Box::pin(f)),
            buf: BytesMut::new(),
            read: 0,
            end: EndCheck::Length(len),
        })
    }

    fn complete(&mut self) -> bool {
        match &mut self.end {
            EndCheck::Length(n) => self.read == *n,
            EndCheck::Signal(rx) => rx.try_recv().is_ok(),
        }
    }
}

impl<R: AsyncRead + Unpin + 'static> Body for ReadBody<R> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                ReadState::Opening(f) => match f.as_mut().poll(cx) {
                    Poll::Ready(Ok(r)) => this.state = ReadState::Reading(r),
                    Poll::Ready(Err(e)) => {
                        this.state = ReadState::Done;
                        return Poll::Ready(Some(Err(e)));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                ReadState::Reading(r) => {
                    this.buf.reserve(16 * 1024);
                    return match tokio_util::io::poll_read_buf(Pin::new(r), cx, &mut this.buf) {
                        Poll::Ready(Ok(0)) => {
                            this.state = ReadState::Done;
                            if this.complete() {
                                Poll::Ready(None)
                            } else {
                                let e =
                                    io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short");
                                Poll::Ready(Some(Err(e)))
                            }
                        }
                        Poll::Ready(Ok(n)) => {
                            this.read += n as u64;
                            Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
                        }
                        Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
                        Poll::Pending => Poll::Pending,
                    };
                }
                ReadState::Done => return Poll::Ready(None),
            }
        }
    }
}
