//! The admin listener's HTTP/1.1 server: the API router behind the same guards as the proxy's
//! listeners, so that slow or idle clients cannot hold berth's file descriptors or tasks.
//!
//! - a connection cap: past `max_connections` open connections, a new one is closed at once;
//! - a header timeout (hyper's `header_read_timeout`): a request head must arrive whole within
//!   `header_timeout` of the moment the server waits for it — on a new connection from accept,
//!   on a kept-alive one from the end of the last response (so it also bounds idle time);
//! - a body timeout: each read of a request body and each write of a response may wait at most
//!   `body_timeout` (a slow but moving transfer is fine, a stalled one is not; a quiet SSE stream
//!   writes nothing and is not affected).
//!
//! HTTP/1.1 only: the CLI, git and the proxy speak it, and an h2c connection would need a
//! watchdog of its own (the protocol sniffing of a dual server has no timeout at all).

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Sleep;

/// The guards of [`serve`]; berth fills them from `[limits]`.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_connections: usize,
}

/// Serve `app` on `listener` until `stop` turns true; then stop accepting and let each open
/// connection finish its request in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let body_timeout = limits.body_timeout;
    let app = app.layer(axum::middleware::map_request(move |req: Request| async move {
        req.map(|b| Body::new(TimeoutBody::new(b, body_timeout)))
    }));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|v| *v) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: wait instead of spinning on it.
                tracing::warn!("admin listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, cap = limits.max_connections, "admin listener at its connection cap: connection closed");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let io = TokioIo::new(WriteTimeout::new(stream, limits.body_timeout));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let stopping = async move {
                let _ = stop.wait_for(|v| *v).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopping => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// A request body whose every wait for the next frame is bounded by `timeout`.
struct TimeoutBody {
    inner: Body,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl TimeoutBody {
    fn new(inner: Body, timeout: Duration) -> TimeoutBody {
        TimeoutBody {
            inner,
            timeout,
            sleep: None,
        }
    }
}

#[derive(Debug)]
struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stalled longer than the body timeout")
    }
}

impl std::error::Error for BodyTimedOut {}

impl HttpBody for TimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.sleep = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes (and flushes) may each wait at most `timeout` for the
/// client to read: a client that never reads its response cannot hold the connection.
struct WriteTimeout {
    io: TcpStream,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn new(io: TcpStream, timeout: Duration) -> WriteTimeout {
        WriteTimeout {
            io,
            timeout,
            sleep: None,
        }
    }

    /// Called when a write is pending: arm the timer once, fail when it fires.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        self.sleep = None;
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not read the response within the body timeout",
        ))
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(r) = Pin::new(&mut self.io).poll_write(cx, buf) {
            self.sleep = None;
            return Poll::Ready(r);
        }
        self.stalled(cx).map(Err)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(r) = Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            self.sleep = None;
            return Poll::Ready(r);
        }
        self.stalled(cx).map(Err)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(r) = Pin::new(&mut self.io).poll_flush(cx) {
            self.sleep = None;
            return Poll::Ready(r);
        }
        self.stalled(cx).map(Err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
