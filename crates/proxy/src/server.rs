//! Listeners and workers. Each worker is an OS thread running a current-thread tokio runtime with
//! its own SO_REUSEPORT socket per listener, so the kernel spreads connections over workers and a
//! connection never moves between threads: worker state (the upstream pool) needs no lock.

use crate::accesslog::AccessLog;
use crate::config::{FileConfig, Limits, Listen, RouteError, RouteSpec};
use crate::metrics::{Metrics, UpstreamError};
use crate::table::{Pool, RouteTable};
use crate::tls;
use crate::upstream::{ActiveGuard, ConnPool, Registry, UpConn, Upstream};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Process-wide proxy state shared by every worker.
pub struct Shared {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub limits: Limits,
    pub metrics: Metrics,
    pub log: AccessLog,
    pub conns: AtomicUsize,
    /// Cancelled on graceful shutdown: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
    /// Port of the HTTPS listener, for `https_redirect`.
    pub https_port: Option<u16>,
    /// ACME challenge answers (HTTP-01 is served by `conn_h1`).
    pub challenges: Arc<tls::Challenges>,
    /// The HTTPS listener's certificates, when plain HTTP to a host that has a real one is
    /// redirected (`[tls] redirect`).
    pub redirect_certified: Option<Arc<tls::Resolver>>,
}

/// One worker thread's state.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pool: ConnPool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Routes(#[from] RouteError),
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// Addresses actually bound (the config may say port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// The running data plane, and the route API the control plane uses.
pub struct Proxy {
    shared: Arc<Shared>,
    registry: Registry,
    resolver: Option<Arc<tls::Resolver>>,
    health: Mutex<CancellationToken>,
    stop_workers: CancellationToken,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub bound: Bound,
}

impl Proxy {
    /// Bind the listeners, load certificates and routes, and start the workers. Must be called
    /// inside a tokio runtime (health checks run there, not on the workers).
    pub fn start(cfg: &FileConfig) -> Result<Proxy, StartError> {
        let workers = cfg
            .server
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let limits = cfg.limits.clone();
        let metrics = Metrics::new();
        let registry = Registry::default();
        let table = RouteTable::build(cfg.route_specs(), limits.max_body.0, &registry, &metrics)?;
        let table = Arc::new(ArcSwap::from_pointee(table));

        let http = bind_group(cfg.server.http, workers)?;
        let https = bind_group(cfg.server.https, workers)?;
        let bound = Bound {
            http: first_addr(&http),
            https: first_addr(&https),
        };

        let mut resolver = None;
        let challenges = Arc::new(tls::Challenges::default());
        let acceptor = if https.is_empty() {
            None
        } else {
            let files = tls::load_cert_files(&cert_files(cfg))?;
            let ca = if cfg.tls.local_ca {
                Some(tls::LocalCa::load_or_create(
                    &cfg.server.data_dir.join("ca"),
                    &cfg.server.domain,
                )?)
            } else {
                None
            };
            let allow = {
                let (table, domain) = (table.clone(), cfg.server.domain.clone());
                Arc::new(move |host: &str| {
                    host == domain
                        || host
                            .strip_suffix(domain.as_str())
                            .is_some_and(|p| p.ends_with('.'))
                        || table.load().names_host(host)
                }) as tls::AllowFn
            };
            let r = Arc::new(tls::Resolver::with_challenges(
                files,
                ca,
                allow,
                challenges.clone(),
            ));
            resolver = Some(r.clone());
            Some(tokio_rustls::TlsAcceptor::from(tls::server_config(r)?))
        };

        let shared = Arc::new(Shared {
            table,
            https_port: bound.https.map(|a| a.port()),
            challenges,
            redirect_certified: resolver.clone().filter(|_| cfg.tls.redirect),
            log: crate::accesslog::AccessLog::open(&cfg.server.access_log)
                .map_err(StartError::AccessLog)?,
            limits,
            metrics,
            conns: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
        });

        let stop_workers = CancellationToken::new();
        let mut threads = Vec::new();
        let mut http = http.into_iter();
        let mut https = https.into_iter();
        for i in 0..workers {
            let (h, s) = (http.next(), https.next());
            let (shared, acceptor, stop) = (shared.clone(), acceptor.clone(), stop_workers.clone());
            let t = std::thread::Builder::new()
                .name(format!("berth-worker-{i}"))
                .spawn(move || run_worker(shared, h, s, acceptor, stop))
                .map_err(StartError::Thread)?;
            threads.push(t);
        }
        let proxy = Proxy {
            shared,
            registry,
            resolver,
            health: Mutex::new(CancellationToken::new()),
            stop_workers,
            threads: Mutex::new(threads),
            bound,
        };
        proxy.restart_health_checks();
        Ok(proxy)
    }

    pub fn routes(&self) -> Vec<RouteSpec> {
        self.shared.table.load().specs().to_vec()
    }

    /// Replace the whole route table atomically. In-flight requests finish on the table they
    /// started with; an invalid list changes nothing.
    pub fn set_routes(&self, specs: Vec<RouteSpec>) -> Result<(), RouteError> {
        let table = self.prepare_routes(specs)?;
        self.install_routes(table);
        Ok(())
    }

    /// Build a table from `specs` (static roots opened), to install later with
    /// `install_routes`: a reload can check everything before it changes anything.
    pub fn prepare_routes(&self, specs: Vec<RouteSpec>) -> Result<RouteTable, RouteError> {
        RouteTable::build(
            specs,
            self.shared.limits.max_body.0,
            &self.registry,
            &self.shared.metrics,
        )
    }

    /// Swap in a prepared table.
    pub fn install_routes(&self, table: RouteTable) {
        self.shared.table.store(Arc::new(table));
        self.restart_health_checks();
    }

    /// The ACME challenge answers the listeners serve.
    pub fn challenges(&self) -> Arc<tls::Challenges> {
        self.shared.challenges.clone()
    }

    /// The certificate resolver of the HTTPS listener (`None` without one).
    pub fn resolver(&self) -> Option<Arc<tls::Resolver>> {
        self.resolver.clone()
    }

    /// Does a route of the live table match `host` (exactly, by a wildcard, or catch-all)?
    pub fn knows_host(&self, host: &str) -> bool {
        self.shared.table.load().knows_host(host)
    }

    /// The exact host names of the live route table (no wildcards), sorted.
    pub fn route_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .shared
            .table
            .load()
            .specs()
            .iter()
            .map(|r| r.host.0.clone())
            .filter(|h| !h.contains('*'))
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Re-read certificate files (SIGHUP). On error the old certificates stay in force.
    pub fn reload_certs(&self, cfg: &FileConfig) -> Result<(), tls::TlsError> {
        if let Some(r) = &self.resolver {
            r.set_files(tls::load_cert_files(&cert_files(cfg))?);
        }
        Ok(())
    }

    /// Requests in flight to one upstream address (the deploy engine drains on this).
    pub fn in_flight(&self, addr: SocketAddr) -> usize {
        self.registry.active(addr)
    }

    pub fn metrics(&self) -> String {
        self.shared.metrics.encode()
    }

    fn restart_health_checks(&self) {
        let mut token = self.health.lock().unwrap_or_else(|p| p.into_inner());
        token.cancel();
        *token = CancellationToken::new();
        crate::upstream::spawn_health_checks(&self.shared.table.load(), token.clone());
    }

    /// Graceful shutdown: stop accepting, let open requests finish for up to the grace period,
    /// then stop the workers.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cancel();
        let grace = self.shared.limits.shutdown_grace.0;
        let deadline = tokio::time::Instant::now() + grace;
        while self.shared.conns.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop_workers.cancel();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
                .await;
    }
}

fn cert_files(cfg: &FileConfig) -> Vec<tls::CertFile> {
    cfg.tls
        .certs
        .iter()
        .map(|c| tls::CertFile {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect()
}

fn first_addr(l: &[std::net::TcpListener]) -> Option<SocketAddr> {
    l.first().and_then(|l| l.local_addr().ok())
}

/// One listening socket per worker on the same address (SO_REUSEPORT). With port 0 the first
/// bind picks the port and the others join it.
fn bind_group(listen: Listen, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    let Listen::On(addr) = listen else {
        return Ok(Vec::new());
    };
    let first = bind_one(addr)?;
    let actual = first
        .local_addr()
        .map_err(|source| StartError::Bind { addr, source })?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind_one(actual)?);
    }
    Ok(all)
}

fn bind_one(addr: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    use socket2::{Domain, Socket, Type};
    let err = |source| StartError::Bind { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.set_reuse_port(true).map_err(err)?;
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(4096).map_err(err)?;
    Ok(s.into())
}

fn run_worker(
    shared: Arc<Shared>,
    http: Option<std::net::TcpListener>,
    https: Option<std::net::TcpListener>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("worker runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    let w = Rc::new(Worker {
        pool: ConnPool::new(shared.limits.upstream_idle_per_host),
        shared,
    });
    local.block_on(&rt, async move {
        for (l, acc) in [(http, None), (https, acceptor)] {
            let Some(l) = l else { continue };
            match TcpListener::from_std(l) {
                Ok(l) => drop(tokio::task::spawn_local(accept_loop(w.clone(), l, acc))),
                Err(e) => tracing::error!("listener: {e}"),
            }
        }
        // Idle upstream connections are also checked every few seconds, not only when taken.
        let sweeper = w.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                sweeper.pool.sweep();
            }
        });
        stop.cancelled().await;
    });
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct ConnGuard(Arc<Shared>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.open_connections.dec();
    }
}

async fn accept_loop(w: Rc<Worker>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    let shared = w.shared.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if shared.conns.load(Ordering::Relaxed) >= shared.limits.max_connections {
            shared.metrics.rejected_connections.inc();
            drop(stream);
            continue;
        }
        shared.conns.fetch_add(1, Ordering::Relaxed);
        shared.metrics.open_connections.inc();
        let guard = ConnGuard(shared.clone());
        let _ = stream.set_nodelay(true);
        let (w, tls) = (w.clone(), tls.clone());
        match tls {
            // Plain HTTP: the connection future itself is small (see conn_h1::Conn::run).
            None => drop(tokio::task::spawn_local(async move {
                let _guard = guard;
                crate::conn_h1::serve(w, stream, peer, false, None).await
            })),
            // TLS: the handshake and h2 state are large; box them so the task enum stays small.
            Some(acc) => drop(tokio::task::spawn_local(Box::pin(async move {
                let _guard = guard;
                let t = w.shared.limits.header_timeout.0;
                let accepted = tokio::time::Instant::now();
                let Ok(Ok(tls)) = tokio::time::timeout(t, acc.accept(stream)).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol();
                if alpn == Some(tls::ACME_TLS_ALPN) {
                    // A TLS-ALPN-01 validation: the handshake was the answer (RFC 8737).
                    let mut tls = tls;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                    return;
                }
                if alpn == Some(b"h2") {
                    crate::conn_h2::serve(w, tls, peer, accepted).await;
                } else {
                    crate::conn_h1::serve(w, tls, peer, true, Some(accepted)).await;
                }
            }))),
        }
    }
}

/// Why a request got no upstream answer: the status to answer, and the upstream last tried.
pub type Failed = (http::StatusCode, Option<SocketAddr>);

/// A request's place on an upstream: the connection it is sent on, and its count as in flight
/// there (`track`), which moves with it when the request moves to another upstream.
pub struct Attempt {
    pub up: Arc<Upstream>,
    pub conn: UpConn,
    pub active: ActiveGuard,
    /// The request has already moved to another upstream once (it never moves twice).
    moved: bool,
}

impl Worker {
    /// An upstream connection for a request on `pool`: a pooled one when there is one, else a new
    /// connection. A failed connect counts against the upstream (passive health) and, for an
    /// idempotent request, is retried once on another upstream. Errors are the status to answer.
    /// The request counts as in flight on the upstream from the moment it is picked (the guard),
    /// so a deploy draining that upstream never sees 0 while a connect is under way.
    pub async fn checkout(&self, pool: &Pool, idempotent: bool) -> Result<Attempt, Failed> {
        self.pick_and_connect(pool, idempotent, None).await
    }

    /// Make `a` ready to send its request again after the exchange failed before any byte of the
    /// response came back: a write error, or the connection closed or reset before the response
    /// head (`error` is how that is counted). Callers only ask for requests safe to send twice
    /// (idempotent, no body), and never after a timeout: a slow application must not get every
    /// request twice. Like nginx's `proxy_next_upstream error`:
    /// - a pooled connection is replaced by a fresh one to the same upstream (a keep-alive the
    ///   upstream closed just as it was reused is not the upstream's fault);
    /// - otherwise (a fresh connection failed, or the fresh connect after a pooled one did) the
    ///   failure counts against the upstream and the request moves to another upstream of the
    ///   pool: once per request, so it never loops.
    ///
    /// `Err` is the answer when the request cannot be sent again.
    pub async fn resend(
        &self,
        pool: &Pool,
        a: &mut Attempt,
        mut error: UpstreamError,
    ) -> Result<(), Failed> {
        if a.conn.reused {
            let t = self.shared.limits.upstream_connect_timeout.0;
            match crate::upstream::connect(a.up.addr, t).await {
                Ok(c) => {
                    a.up.connect_ok();
                    a.conn = c;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(upstream = %a.up.addr, error = %e, "upstream connect failed");
                    error = UpstreamError::Connect;
                }
            }
        }
        self.shared.metrics.upstream_error(error);
        let several = pool.upstreams.len() > 1;
        a.up.connect_failed(several);
        if a.moved || !several {
            return Err((http::StatusCode::BAD_GATEWAY, Some(a.up.addr)));
        }
        // The new attempt counts the request as in flight on the new upstream; the assignment
        // drops the old attempt's guard, so the upstream it left (maybe draining) sees it go.
        *a = self
            .pick_and_connect(pool, true, Some(a.up.clone()))
            .await?;
        Ok(())
    }

    /// `checkout`, avoiding `avoid` (the upstream a request moves away from; a request that has
    /// moved once does not move again when this connect fails).
    async fn pick_and_connect(
        &self,
        pool: &Pool,
        idempotent: bool,
        mut avoid: Option<Arc<Upstream>>,
    ) -> Result<Attempt, Failed> {
        let mut moved = avoid.is_some();
        loop {
            let Some(up) = pool.pick(avoid.as_deref()).cloned() else {
                self.shared
                    .metrics
                    .upstream_error(UpstreamError::NoneAvailable);
                return Err((http::StatusCode::BAD_GATEWAY, None));
            };
            let active = up.track();
            if let Some(conn) = self.pool.take(up.addr) {
                return Ok(Attempt {
                    up,
                    conn,
                    active,
                    moved,
                });
            }
            match crate::upstream::connect(up.addr, self.shared.limits.upstream_connect_timeout.0)
                .await
            {
                Ok(conn) => {
                    up.connect_ok();
                    return Ok(Attempt {
                        up,
                        conn,
                        active,
                        moved,
                    });
                }
                Err(e) => {
                    tracing::debug!(upstream = %up.addr, error = %e, "upstream connect failed");
                    self.shared.metrics.upstream_error(UpstreamError::Connect);
                    let several = pool.upstreams.len() > 1;
                    up.connect_failed(several);
                    if idempotent && several && !moved {
                        moved = true;
                        avoid = Some(up);
                        continue;
                    }
                    return Err((http::StatusCode::BAD_GATEWAY, Some(up.addr)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Balance, HostPattern, PathPrefix, RouteSpec};

    /// A worker and a round-robin pool over `addrs` (picked in order, from the first).
    fn worker_and_table(addrs: &[SocketAddr]) -> (Worker, Arc<RouteTable>) {
        let spec = RouteSpec {
            host: HostPattern::parse("app.test").unwrap(),
            path: PathPrefix::parse("/").unwrap(),
            strip_prefix: false,
            upstreams: addrs.iter().map(|a| crate::config::Upstream(*a)).collect(),
            balance: Balance::RoundRobin,
            health: None,
            max_body: None,
            static_root: None,
            https_redirect: false,
            hsts: None,
        };
        let metrics = Metrics::new();
        let table = RouteTable::build(vec![spec], 1 << 20, &Registry::default(), &metrics).unwrap();
        let table = Arc::new(table);
        let shared = Arc::new(Shared {
            table: Arc::new(ArcSwap::new(table.clone())),
            limits: Limits::default(),
            metrics,
            log: AccessLog::open("off").unwrap(),
            conns: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            https_port: None,
            challenges: Arc::default(),
            redirect_certified: None,
        });
        let w = Worker {
            pool: ConnPool::new(4),
            shared,
        };
        (w, table)
    }

    /// The whole resend rule on live sockets: a pooled connection is replaced by a fresh one to
    /// the same upstream, a fresh one's failure moves the request (and its in-flight count) to
    /// the other upstream, and a request that has moved once does not move again.
    #[tokio::test]
    async fn resend_replaces_a_pooled_connection_then_moves_once() {
        let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let (w, table) = worker_and_table(&[a, b]);
        let pool = table.pools().next().unwrap();
        let (up_a, up_b) = (pool.upstreams[0].clone(), pool.upstreams[1].clone());
        let err = UpstreamError::BadResponse;

        let mut at = w.checkout(pool, true).await.unwrap();
        assert_eq!(at.up.addr, a);
        assert_eq!((up_a.active(), up_b.active()), (1, 0));

        // A pooled connection that failed: a fresh one to the same upstream.
        at.conn.reused = true;
        w.resend(pool, &mut at, err).await.unwrap();
        assert_eq!(at.up.addr, a);
        assert!(!at.conn.reused);
        assert_eq!((up_a.active(), up_b.active()), (1, 0));

        // The fresh connection failed: to the other upstream, the in-flight count with it.
        w.resend(pool, &mut at, err).await.unwrap();
        assert_eq!(at.up.addr, b);
        assert_eq!((up_a.active(), up_b.active()), (0, 1));

        // Failed there too: no second move (and no loop back to the first).
        let failed = w.resend(pool, &mut at, err).await.unwrap_err();
        assert_eq!(failed, (http::StatusCode::BAD_GATEWAY, Some(b)));
        assert_eq!((up_a.active(), up_b.active()), (0, 1));
        drop(at);
        assert_eq!((up_a.active(), up_b.active()), (0, 0));
        let m = w.shared.metrics.encode();
        assert!(m.contains("kind=\"bad_response\"} 2"), "{m}");
    }

    /// With one upstream there is nowhere to move: the failure is the answer.
    #[tokio::test]
    async fn resend_does_not_move_in_a_pool_of_one() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        let (w, table) = worker_and_table(&[a]);
        let pool = table.pools().next().unwrap();
        let mut at = w.checkout(pool, true).await.unwrap();
        let failed = w
            .resend(pool, &mut at, UpstreamError::Connect)
            .await
            .unwrap_err();
        assert_eq!(failed, (http::StatusCode::BAD_GATEWAY, Some(a)));
    }
}
