//! One HTTP/1.1 client connection: read a head, decide (reject, answer locally, or proxy), relay
//! bodies both ways, repeat while keep-alive holds. The request head is rewritten for the upstream
//! in one pass over httparse's slices into a reused buffer; nothing is converted into a header map.

use crate::accesslog::Entry;
use crate::config::Limits;
use crate::h1::{self, BodyError, Framing, Relay};
use crate::metrics::UpstreamError;
use crate::request::{self, parse_host};
use crate::server::Worker;
use crate::static_files::{Conditional, LocalBody, LocalResponse};
use crate::table::{Action, Route};
use crate::upstream::{self, UpConn};
use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Header slots parsed per request; `limits.max_headers` may not exceed it.
const MAX_HEADERS: usize = 128;
/// Request bodies up to this size are read and discarded when berth answers itself, so the
/// connection can stay open; larger ones close it.
const DRAIN_MAX: u64 = 64 * 1024;
/// Scratch buffers larger than this are freed between requests rather than kept per connection.
const SCRATCH_KEEP: usize = 2048;

/// A client transport. `idle_wait` waits for the next request without holding a read buffer, so
/// that idle keep-alive connections cost a few hundred bytes, not a buffer each.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin {
    fn idle_wait(&self) -> impl std::future::Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

impl ClientIo for TcpStream {
    fn idle_wait(&self) -> impl std::future::Future<Output = io::Result<()>> {
        self.readable()
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {}

/// What the request head says, kept for the rest of the exchange.
struct Req {
    method: Method,
    http10: bool,
    host: String,
    /// Raw request target as received (for the access log and redirects).
    target: Vec<u8>,
    framing: Framing,
    keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
    request_id: String,
}

enum Decision {
    /// Answer with this status and close; the request is not served.
    Reject(StatusCode),
    Local(LocalResponse, Option<Arc<Route>>),
    Proxy(Arc<Route>),
}

struct Conn {
    w: Rc<Worker>,
    accepted: Option<tokio::time::Instant>,
    peer: SocketAddr,
    /// The client's address as written into X-Forwarded-For, formatted once per connection.
    peer_ip: String,
    tls: bool,
    buf: BytesMut,
    /// Scratch: the upstream request head.
    up_head: Vec<u8>,
    /// Scratch: bytes about to be written (heads, re-chunked bodies).
    out: Vec<u8>,
    served: u64,
}

/// `accepted`: when the TCP connection was accepted, if time has passed since (a TLS
/// handshake), so that the first request's header timeout still runs from accept.
pub async fn serve<S: ClientIo>(
    w: Rc<Worker>,
    mut io: S,
    peer: SocketAddr,
    tls: bool,
    accepted: Option<tokio::time::Instant>,
) {
    let mut c = Conn {
        w,
        accepted,
        peer,
        peer_ip: peer.ip().to_string(),
        tls,
        buf: BytesMut::new(),
        up_head: Vec::new(),
        out: Vec::new(),
        served: 0,
    };
    c.run(&mut io).await;
}

enum HeadError {
    Closed,
    Timeout,
    TooLarge,
}

/// How an exchange ended for the client connection.
struct Outcome {
    status: u16,
    bytes: u64,
    keep: bool,
    upstream: Option<SocketAddr>,
    /// Close with a lingering close (the client may still be sending a body we did not read).
    /// Done after the request is logged and counted, so the close never delays either.
    linger: bool,
}

impl Conn {
    fn limits(&self) -> &Limits {
        &self.w.shared.limits
    }

    async fn run<S: ClientIo>(&mut self, io: &mut S) {
        loop {
            let head_len = match self.read_head(io).await {
                Ok(n) => n,
                Err(HeadError::Closed) => return,
                Err(HeadError::Timeout) => {
                    let status = StatusCode::REQUEST_TIMEOUT;
                    Box::pin(self.reject(io, status)).await;
                    self.log_rejected(status, Instant::now());
                    return Box::pin(linger_close(io)).await;
                }
                Err(HeadError::TooLarge) => {
                    let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                    Box::pin(self.reject(io, status)).await;
                    self.log_rejected(status, Instant::now());
                    return Box::pin(linger_close(io)).await;
                }
            };
            // The exchange's future is large (body relays, upstream I/O); boxing it keeps the
            // connection task small while it waits idle between requests.
            if !Box::pin(self.exchange(io, head_len)).await {
                return;
            }
            self.served += 1;
            if self.w.shared.shutdown.is_cancelled() {
                return;
            }
            if self.buf.is_empty() {
                // Idle: hold no buffers between requests.
                self.buf = BytesMut::new();
            }
            if self.out.capacity() > SCRATCH_KEEP {
                self.out = Vec::new();
            }
            if self.up_head.capacity() > SCRATCH_KEEP {
                self.up_head = Vec::new();
            }
        }
    }

    /// One request and its response. Returns whether the connection stays open.
    async fn exchange<S: ClientIo>(&mut self, io: &mut S, head_len: usize) -> bool {
        let start = Instant::now();
        // Parse in place: the head is dropped from the buffer, which keeps any pipelined bytes.
        let buf = std::mem::take(&mut self.buf);
        let (req, decision) = self.decide(&buf[..head_len]);
        self.buf = buf;
        self.buf.advance(head_len);
        let (outcome, route) = match decision {
            Decision::Reject(status) => {
                self.reject(io, status).await;
                match &req {
                    Some(req) => self.log(req, status.as_u16(), 0, None, start),
                    None => self.log_rejected(status, start),
                }
                Box::pin(linger_close(io)).await;
                return false;
            }
            Decision::Local(mut resp, route) => {
                let Some(req) = &req else { return false };
                if let Some(v) = route
                    .as_ref()
                    .and_then(|r| r.hsts.clone())
                    .filter(|_| self.tls)
                {
                    resp.headers
                        .entry(http::header::STRICT_TRANSPORT_SECURITY)
                        .or_insert(v);
                }
                (self.respond_local(io, req, resp).await, route)
            }
            Decision::Proxy(route) => {
                let Some(req) = &req else { return false };
                (self.proxy(io, req, &route).await, Some(route))
            }
        };
        if let Some(req) = &req {
            self.log(req, outcome.status, outcome.bytes, outcome.upstream, start);
        }
        if let Some(route) = route {
            route
                .metrics
                .record(outcome.status, start.elapsed().as_secs_f64());
        }
        if outcome.linger {
            Box::pin(linger_close(io)).await;
        }
        outcome.keep
    }

    fn log(
        &self,
        req: &Req,
        status: u16,
        bytes: u64,
        upstream: Option<SocketAddr>,
        start: Instant,
    ) {
        let log = &self.w.shared.log;
        if log.enabled() {
            log.log(&Entry {
                host: &req.host,
                method: req.method.as_str(),
                path: &req.target,
                status,
                bytes,
                duration: start.elapsed(),
                upstream,
                request_id: &req.request_id,
                client: self.peer.ip(),
                proto: if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
            });
        }
    }

    /// A request refused before it could be parsed: counted, and logged with what is known.
    fn log_rejected(&self, status: StatusCode, start: Instant) {
        self.w.shared.metrics.rejected_requests.inc();
        let log = &self.w.shared.log;
        if log.enabled() {
            log.log(&Entry {
                host: "",
                method: "-",
                path: b"",
                status: status.as_u16(),
                bytes: 0,
                duration: start.elapsed(),
                upstream: None,
                request_id: "",
                client: self.peer.ip(),
                proto: "HTTP/1.1",
            });
        }
    }

    async fn read_head<S: ClientIo>(&mut self, io: &mut S) -> Result<usize, HeadError> {
        let lim = self.limits().clone();
        let mut deadline = None;
        if self.buf.is_empty() {
            // Waiting for the first byte of a request: the idle timeout applies (the header
            // timeout on a new connection), and shutdown closes the connection at once.
            let idle = if self.served == 0 {
                lim.header_timeout.0
            } else {
                lim.idle_timeout.0
            };
            let w = self.w.clone();
            let buf = &mut self.buf;
            let first = async {
                io.idle_wait().await?;
                buf.reserve(4096);
                io.read_buf(buf).await
            };
            // On a new connection the header timeout runs from accept to the end of the head;
            // on a kept-alive one, from the first byte of the next request.
            let mut wait = match self.accepted {
                Some(at) if self.served == 0 => Some(at + lim.header_timeout.0),
                _ => None,
            };
            tokio::select! {
                r = h1::timed(&mut wait, idle, first) => match r {
                    Some(Ok(n)) if n > 0 => {}
                    _ => return Err(HeadError::Closed),
                },
                _ = w.shared.shutdown.cancelled() => return Err(HeadError::Closed),
            }
            if self.served == 0 {
                deadline = wait;
            }
        }
        let max = lim.max_header_bytes.0 as usize;
        loop {
            if let Some(end) = h1::find_head_end(&self.buf) {
                return if end > max {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(end)
                };
            }
            if self.buf.len() > max {
                return Err(HeadError::TooLarge);
            }
            self.buf.reserve(4096);
            let read = io.read_buf(&mut self.buf);
            match h1::timed(&mut deadline, lim.header_timeout.0, read).await {
                Some(Ok(0)) | Some(Err(_)) => return Err(HeadError::Closed),
                Some(Ok(_)) => {}
                None => {
                    return if self.buf.is_empty() {
                        Err(HeadError::Closed)
                    } else {
                        Err(HeadError::Timeout)
                    }
                }
            }
        }
    }

    /// Parse and check the head, pick the route, and for proxied requests write the upstream
    /// head into `self.up_head`. Every refusal here happens before any byte goes upstream.
    fn decide(&mut self, head: &[u8]) -> (Option<Req>, Decision) {
        let bad = |_| (None, Decision::Reject(StatusCode::BAD_REQUEST));
        if h1::has_bare_lf(head) {
            return bad("bare LF");
        }
        let max_headers = self.limits().max_headers.min(MAX_HEADERS);
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut slots[..max_headers]);
        match parsed.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return (
                    None,
                    Decision::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                )
            }
            _ => return bad("malformed head"),
        }
        let (Some(method), Some(target), Some(version)) =
            (parsed.method, parsed.path, parsed.version)
        else {
            return bad("incomplete request line");
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return bad("method");
        };
        let http10 = version == 0;
        let headers: &[httparse::Header<'_>] = parsed.headers;

        // Framing and connection-level headers (battery S1–S12).
        let mut host_hdr: Option<&[u8]> = None;
        let mut hosts = 0;
        let mut cl: Option<u64> = None;
        let mut te = false;
        let mut close = http10;
        let mut conn_upgrade = false;
        let mut conn_tokens: [&[u8]; 8] = [b""; 8];
        let mut n_tokens = 0;
        let mut upgrade: Option<&[u8]> = None;
        let mut expect_continue = false;
        let mut rid: Option<&[u8]> = None;
        let mut xff: Option<&[u8]> = None;
        let mut cond = Conditional::default();
        for h in headers {
            let name = h.name.as_bytes();
            let v = h1::trim_ows(h.value);
            match name.len() {
                4 if name.eq_ignore_ascii_case(b"host") => {
                    hosts += 1;
                    host_hdr = Some(v);
                }
                14 if name.eq_ignore_ascii_case(b"content-length") => {
                    let Some(n) = h1::parse_content_length(v) else {
                        return bad("content-length");
                    };
                    if cl.is_some() {
                        return bad("repeated content-length");
                    }
                    cl = Some(n);
                }
                17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                    if te || !v.eq_ignore_ascii_case(b"chunked") {
                        return bad("transfer-encoding");
                    }
                    te = true;
                }
                10 if name.eq_ignore_ascii_case(b"connection") => {
                    for t in h1::tokens(v) {
                        if t.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if t.eq_ignore_ascii_case(b"keep-alive") {
                            close = false;
                        } else if t.eq_ignore_ascii_case(b"upgrade") {
                            conn_upgrade = true;
                        } else if n_tokens < conn_tokens.len() {
                            conn_tokens[n_tokens] = t;
                            n_tokens += 1;
                        } else {
                            return bad("too many connection options");
                        }
                    }
                }
                7 if name.eq_ignore_ascii_case(b"upgrade") => upgrade = Some(v),
                6 if name.eq_ignore_ascii_case(b"expect") => {
                    if !v.eq_ignore_ascii_case(b"100-continue") {
                        return (None, Decision::Reject(StatusCode::EXPECTATION_FAILED));
                    }
                    expect_continue = !http10;
                }
                12 if name.eq_ignore_ascii_case(b"x-request-id") => rid = Some(v),
                15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => {
                    if xff.is_some() {
                        return bad("repeated x-forwarded-for");
                    }
                    xff = Some(v);
                }
                13 if name.eq_ignore_ascii_case(b"if-none-match") => cond.if_none_match = Some(v),
                17 if name.eq_ignore_ascii_case(b"if-modified-since") => {
                    cond.if_modified_since = Some(v)
                }
                5 if name.eq_ignore_ascii_case(b"range") => cond.range = Some(v),
                8 if name.eq_ignore_ascii_case(b"if-range") => cond.if_range = Some(v),
                15 if name.eq_ignore_ascii_case(b"accept-encoding") => {
                    cond.accept_encoding = Some(v)
                }
                _ => {}
            }
        }
        if te && (cl.is_some() || http10) {
            return bad("transfer-encoding with content-length or HTTP/1.0");
        }
        if hosts > 1 || (hosts == 0 && !http10) {
            return bad("host");
        }
        let framing = match (te, cl) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::None,
        };

        // Target and host.
        let (authority, origin) = match request::split_absolute(target.as_bytes()) {
            Some((auth, origin)) => (Some(auth), origin),
            None => (None, target.as_bytes()),
        };
        let Some((raw_path, query)) = request::split_target(origin) else {
            return bad("target form");
        };
        let host_src = authority.or(host_hdr).unwrap_or(b"");
        let host = if host_src.is_empty() && http10 {
            String::new()
        } else {
            match parse_host(host_src) {
                Some(h) => h,
                None => return bad("invalid host"),
            }
        };
        let Ok(norm) = request::normalize_path(raw_path) else {
            return bad("path");
        };
        let request_id = match rid {
            Some(r) if request::valid_request_id(r) => String::from_utf8_lossy(r).into_owned(),
            _ => request::new_request_id(),
        };
        let ws = conn_upgrade
            && upgrade.is_some_and(|u| h1::tokens(u).any(|t| t.eq_ignore_ascii_case(b"websocket")));
        let req = Req {
            method,
            http10,
            host,
            // Kept only for the access log.
            target: if self.w.shared.log.enabled() {
                target.as_bytes().to_vec()
            } else {
                Vec::new()
            },
            framing,
            keep_alive: !close,
            upgrade: ws,
            expect_continue: expect_continue && framing != Framing::None,
            request_id,
        };

        // An ACME CA validating HTTP-01 (plain HTTP only, before any route or redirect).
        if !self.tls {
            if let Some(answer) = norm
                .strip_prefix("/.well-known/acme-challenge/")
                .and_then(|token| self.w.shared.challenges.http01(token))
            {
                return (
                    Some(req),
                    Decision::Local(request::acme_answer(answer), None),
                );
            }
        }

        // Route.
        let table = self.w.shared.table.load();
        let Some(route) = table.lookup(&req.host, &norm).cloned() else {
            return (Some(req), Decision::Local(request::not_found(), None));
        };
        // Hosts with a real certificate are HTTPS only, as with Caddy (the ACME CA's own
        // validation path stays plain).
        let certified = || {
            self.w
                .shared
                .redirect_certified
                .as_ref()
                .is_some_and(|r| r.has_real_cert(&req.host))
                && !norm.starts_with("/.well-known/acme-challenge/")
        };
        if !self.tls && (route.spec.https_redirect || certified()) {
            let resp = request::https_redirect(&req.host, self.w.shared.https_port, origin);
            return (Some(req), Decision::Local(resp, Some(route)));
        }
        if let Framing::Length(n) = framing {
            if n > route.max_body {
                return (
                    Some(req),
                    Decision::Local(request::error(StatusCode::PAYLOAD_TOO_LARGE), Some(route)),
                );
            }
        }
        match &route.action {
            Action::Static(root) => {
                let resp = request::serve_static(&route, root, &req.method, &norm, query, cond);
                (Some(req), Decision::Local(resp, Some(route)))
            }
            Action::Proxy(_) => {
                let strip = route
                    .spec
                    .strip_prefix
                    .then_some(route.spec.path.0.as_str());
                let up_target = request::upstream_target(raw_path, query, &norm, strip);
                let head = request::UpstreamHead {
                    method: req.method.as_str(),
                    target: &up_target,
                    host: host_src,
                    xff,
                    client_ip: &self.peer_ip,
                    tls: self.tls,
                    request_id: &req.request_id,
                    websocket: req.upgrade,
                    framing: req.framing,
                };
                let listed = &conn_tokens[..n_tokens];
                request::write_upstream_head(
                    &mut self.up_head,
                    &head,
                    headers.iter().map(|h| (h.name.as_bytes(), h.value)),
                    |name| listed.iter().any(|t| t.eq_ignore_ascii_case(name)),
                );
                (Some(req), Decision::Proxy(route))
            }
        }
    }

    /// Write an error answer that closes the connection; the caller then closes with
    /// `linger_close` so the client reads the answer even if it is still sending.
    async fn reject<S: ClientIo>(&mut self, io: &mut S, status: StatusCode) {
        let resp = request::error(status);
        self.out.clear();
        write_local_head(&mut self.out, &resp, false, false);
        if let LocalBody::Bytes(b) = &resp.body {
            self.out.extend_from_slice(b);
        }
        let t = self.limits().body_timeout.0;
        let _ = tokio::time::timeout(t, async {
            io.write_all(&self.out).await?;
            io.flush().await
        })
        .await;
    }

    /// A response berth makes itself. A request body is discarded when small and already here;
    /// otherwise the connection closes after the answer.
    async fn respond_local<S: ClientIo>(
        &mut self,
        io: &mut S,
        req: &Req,
        resp: LocalResponse,
    ) -> Outcome {
        let status = resp.status.as_u16();
        let mut keep = req.keep_alive && !self.w.shared.shutdown.is_cancelled();
        match req.framing {
            Framing::None => {}
            Framing::Length(n) if n <= DRAIN_MAX && self.buf.len() as u64 >= n => {
                self.buf.advance(n as usize)
            }
            _ => keep = false,
        }
        let bytes = match self.write_local(io, req, resp, keep).await {
            Ok(n) => n,
            Err(_) => {
                return Outcome {
                    status,
                    bytes: 0,
                    keep: false,
                    upstream: None,
                    linger: false,
                }
            }
        };
        Outcome {
            status,
            bytes,
            keep,
            upstream: None,
            linger: !keep && req.framing != Framing::None,
        }
    }

    async fn write_local<S: ClientIo>(
        &mut self,
        io: &mut S,
        req: &Req,
        resp: LocalResponse,
        keep: bool,
    ) -> io::Result<u64> {
        let t = self.limits().body_timeout.0;
        self.out.clear();
        write_local_head(&mut self.out, &resp, keep, req.http10);
        let head_only = req.method == Method::HEAD;
        let mut bytes = 0;
        let file = match resp.body {
            LocalBody::Bytes(b) if !head_only => {
                self.out.extend_from_slice(&b);
                bytes = b.len() as u64;
                None
            }
            LocalBody::File { file, offset, len } if !head_only => Some((file, offset, len)),
            _ => None,
        };
        // Every write has its own timeout (a slow reader of a large file is fine, a stalled one
        // is not); a file that shrinks under us is an error, so the connection closes rather
        // than leave the client waiting for bytes that will not come.
        timed(t, io.write_all(&self.out)).await?;
        if let Some((file, offset, len)) = file {
            let mut f = tokio::fs::File::from_std(file);
            f.seek(io::SeekFrom::Start(offset)).await?;
            let mut f = f.take(len);
            let mut chunk = vec![0u8; 64 * 1024];
            while bytes < len {
                let n = f.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank while sent",
                    ));
                }
                timed(t, io.write_all(&chunk[..n])).await?;
                bytes += n as u64;
            }
        }
        timed(t, io.flush()).await?;
        Ok(bytes)
    }

    async fn proxy<S: ClientIo>(&mut self, io: &mut S, req: &Req, route: &Arc<Route>) -> Outcome {
        let Action::Proxy(pool) = &route.action else {
            return self.fail(io, StatusCode::INTERNAL_SERVER_ERROR, None).await;
        };
        let shared = self.w.shared.clone();
        let lim = &shared.limits;
        let body_pending = req.framing != Framing::None;
        let hsts = route.hsts.clone().filter(|_| self.tls);

        let mut at = match self.w.checkout(pool, idempotent(&req.method)).await {
            Ok(a) => a,
            Err((status, addr)) => return self.fail(io, status, addr).await,
        };

        // Send the head and the body.
        if req.expect_continue && self.buf.is_empty() {
            let t = lim.body_timeout.0;
            let sent = timed(t, async {
                io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                io.flush().await
            });
            if sent.await.is_err() {
                return Outcome {
                    status: 499,
                    bytes: 0,
                    keep: false,
                    upstream: Some(at.up.addr),
                    linger: false,
                };
            }
            let _ = io.flush().await;
        }
        // Sent again after a failure before any response byte (see `Worker::resend`): only
        // requests safe to send twice, with no body that would have to be read again.
        let resendable = !body_pending && idempotent(&req.method);
        loop {
            self.out.clear();
            self.out.extend_from_slice(&self.up_head);
            let relay = Relay {
                framing: req.framing,
                dst_chunked: req.framing == Framing::Chunked,
                limit: route.max_body,
                read_timeout: lim.body_timeout.0,
                write_timeout: lim.upstream_timeout.0,
                out: &mut self.out,
            };
            let addr = Some(at.up.addr);
            let failed = match relay.run(io, &mut self.buf, &mut at.conn.stream).await {
                Ok(_) => match self.read_response(req, &mut at.conn, hsts.as_ref()).await {
                    Ok(r) => break self.relay_response(io, r, at.conn, at.up.addr).await,
                    Err(Some(status)) => return self.fail(io, status, addr).await,
                    // Closed or reset before a byte of the response head.
                    Err(None) => UpstreamError::BadResponse,
                },
                Err(BodyError::Write(_)) => UpstreamError::Connect,
                Err(BodyError::TooLarge) => {
                    return self.fail(io, StatusCode::PAYLOAD_TOO_LARGE, addr).await
                }
                Err(BodyError::ReadTimeout) => {
                    return self.fail(io, StatusCode::REQUEST_TIMEOUT, addr).await
                }
                Err(BodyError::Malformed(_)) => {
                    return self.fail(io, StatusCode::BAD_REQUEST, addr).await
                }
                Err(BodyError::ReadIo(_)) => {
                    return Outcome {
                        status: 499,
                        bytes: 0,
                        keep: false,
                        upstream: addr,
                        linger: false,
                    }
                }
            };
            if !resendable {
                shared.metrics.upstream_error(failed);
                return self.fail(io, StatusCode::BAD_GATEWAY, addr).await;
            }
            if let Err((status, addr)) = self.w.resend(pool, &mut at, failed).await {
                return self.fail(io, status, addr).await;
            }
        }
    }

    /// Read the upstream's response head and write the client's version of it into
    /// `self.out`. `Err(None)`: the upstream closed before sending a byte.
    async fn read_response(
        &mut self,
        req: &Req,
        conn: &mut UpConn,
        hsts: Option<&http::HeaderValue>,
    ) -> Result<RespInfo, Option<StatusCode>> {
        let shared = self.w.shared.clone();
        let out = &mut self.out;
        let closing = shared.shutdown.is_cancelled();
        let read = conn.read_head(
            req.method == Method::HEAD,
            req.upgrade,
            shared.limits.upstream_timeout.0,
            |head, headers| {
                let upgraded = head.status == 101;
                let client_chunked =
                    !req.http10 && matches!(head.framing, Framing::Chunked | Framing::UntilClose);
                let keep = req.keep_alive
                    && !upgraded
                    && !closing
                    && (matches!(head.framing, Framing::None | Framing::Length(_))
                        || client_chunked);
                let info = RespInfo {
                    status: head.status,
                    framing: head.framing,
                    up_keep: head.keep_alive,
                    client_chunked,
                    keep,
                    upgraded,
                };
                out.clear();
                write_response_head(out, &info, headers, req.http10, hsts);
                info
            },
        );
        match read.await {
            Ok(info) => Ok(info),
            Err(upstream::HeadError::ClosedEarly) => Err(None),
            Err(upstream::HeadError::Bad) => {
                shared.metrics.upstream_error(UpstreamError::BadResponse);
                Err(Some(StatusCode::BAD_GATEWAY))
            }
            Err(upstream::HeadError::Timeout) => {
                shared.metrics.upstream_error(UpstreamError::Timeout);
                Err(Some(StatusCode::GATEWAY_TIMEOUT))
            }
        }
    }

    async fn relay_response<S: ClientIo>(
        &mut self,
        io: &mut S,
        r: RespInfo,
        mut conn: UpConn,
        addr: SocketAddr,
    ) -> Outcome {
        let lim = self.limits().clone();
        if r.upgraded {
            return self.tunnel(io, conn, addr).await;
        }
        let relay = Relay {
            framing: r.framing,
            dst_chunked: r.client_chunked,
            limit: u64::MAX,
            read_timeout: lim.upstream_timeout.0,
            write_timeout: lim.body_timeout.0,
            out: &mut self.out,
        };
        match relay.run(&mut conn.stream, &mut conn.buf, io).await {
            Ok(bytes) => {
                if r.up_keep {
                    self.w.pool.put(addr, conn);
                }
                Outcome {
                    status: r.status,
                    bytes,
                    keep: r.keep,
                    upstream: Some(addr),
                    linger: false,
                }
            }
            Err(_) => Outcome {
                status: r.status,
                bytes: 0,
                keep: false,
                upstream: Some(addr),
                linger: false,
            },
        }
    }

    /// After a 101: the head is in `self.out`; pass bytes both ways until either side closes.
    async fn tunnel<S: ClientIo>(
        &mut self,
        io: &mut S,
        mut conn: UpConn,
        addr: SocketAddr,
    ) -> Outcome {
        let out = std::mem::take(&mut self.out);
        let early_up = conn.buf.split();
        let early_client = self.buf.split();
        let t = self.limits().body_timeout.0;
        let r = async {
            timed(t, async {
                io.write_all(&out).await?;
                io.write_all(&early_up).await?;
                io.flush().await?;
                conn.stream.write_all(&early_client).await
            })
            .await?;
            tokio::io::copy_bidirectional(io, &mut conn.stream).await
        }
        .await;
        let bytes = r.map(|(_, down)| down).unwrap_or(0);
        Outcome {
            status: 101,
            bytes,
            keep: false,
            upstream: Some(addr),
            linger: false,
        }
    }

    /// An error answer for a request whose body may be partly unread: always closes.
    async fn fail<S: ClientIo>(
        &mut self,
        io: &mut S,
        status: StatusCode,
        upstream: Option<SocketAddr>,
    ) -> Outcome {
        self.reject(io, status).await;
        Outcome {
            status: status.as_u16(),
            bytes: 0,
            keep: false,
            upstream,
            linger: true,
        }
    }
}

/// RFC 9110 §9.2.2: a request that may be sent twice.
pub fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[derive(Clone, Copy)]
struct RespInfo {
    status: u16,
    framing: Framing,
    up_keep: bool,
    client_chunked: bool,
    keep: bool,
    upgraded: bool,
}

async fn timed<T>(
    t: std::time::Duration,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    h1::timed_for(t, f)
        .await
        .unwrap_or_else(|| Err(io::Error::new(io::ErrorKind::TimedOut, "client too slow")))
}

/// Close gracefully: stop writing, then read and discard for a moment so that the kernel does
/// not answer the client's unread bytes with a reset that would destroy our response.
async fn linger_close<S: ClientIo>(io: &mut S) {
    let mut sink = [0u8; 4096];
    // All of it bounded: for TLS, shutdown flushes close_notify to a client that may not read.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = io.shutdown().await;
        let mut total = 0usize;
        while let Ok(n) = io.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 20 {
                break;
            }
        }
    })
    .await;
}

fn write_local_head(out: &mut Vec<u8>, resp: &LocalResponse, keep: bool, http10: bool) {
    status_line(out, resp.status.as_u16());
    for (name, value) in &resp.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    persistence(out, keep, http10);
    out.extend_from_slice(b"\r\n");
}

/// HTTP/1.1 connections persist unless told otherwise; HTTP/1.0 ones only when told.
fn persistence(out: &mut Vec<u8>, keep: bool, http10: bool) {
    if !keep {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    h1::push_dec(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The client's version of an upstream response head: hop-by-hop headers out, framing and
/// persistence as decided in `r`.
fn write_response_head(
    out: &mut Vec<u8>,
    r: &RespInfo,
    headers: &[httparse::Header<'_>],
    http10: bool,
    hsts: Option<&http::HeaderValue>,
) {
    let RespInfo {
        status,
        framing,
        client_chunked,
        keep,
        upgraded,
        ..
    } = *r;
    status_line(out, status);
    let mut conn_tokens: [&[u8]; 8] = [b""; 8];
    let mut n = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in h1::tokens(h.value) {
                if n < conn_tokens.len() {
                    conn_tokens[n] = t;
                    n += 1;
                }
            }
        }
    }
    for h in headers {
        let name = h.name.as_bytes();
        let keep_cl = framing == Framing::None && name.eq_ignore_ascii_case(b"content-length");
        let keep_upgrade = upgraded && name.eq_ignore_ascii_case(b"upgrade");
        let listed = conn_tokens[..n]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name));
        if !keep_upgrade && ((h1::is_hop_by_hop(name) && !keep_cl) || listed) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    // The route's Strict-Transport-Security (HTTPS only; an upstream's own value wins).
    if let Some(v) = hsts {
        if !headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("strict-transport-security"))
        {
            out.extend_from_slice(b"Strict-Transport-Security: ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(len) => {
            out.extend_from_slice(b"Content-Length: ");
            h1::push_dec(out, len);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose if client_chunked => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        _ => {}
    }
    if upgraded {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else {
        persistence(out, keep, http10);
    }
    out.extend_from_slice(b"\r\n");
}
