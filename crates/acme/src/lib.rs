//! berth's ACME client: with `[tls.acme]`, every host of the route table gets a certificate
//! from the ACME CA (Let's Encrypt, ZeroSSL, a private CA; Pebble in tests), renewed at two
//! thirds of its lifetime, served from the next handshake on.
//!
//! - **Which hosts**: the route table's exact host names ([`proxy::Proxy::route_hosts`]), less
//!   IP addresses, `localhost` and `*.localhost` (the local CA's), single-label names (no CA
//!   issues for them) and hosts a certificate file covers (`[tls] certs` win). A host waiting
//!   for its first certificate is served by the local CA meanwhile.
//! - **Up to [`CONCURRENT_ORDERS`] orders at once**, from one task on the control plane: an order, its challenge
//!   answered by the proxy (HTTP-01 on the HTTP listener, or TLS-ALPN-01 on the HTTPS one, per
//!   `challenge`), finalize (a fresh P-256 key), download. A failure is recorded with its
//!   reason and retried after a backoff that doubles up to [`MAX_BACKOFF`]; other hosts are not
//!   held up.
//! - **On demand** (`[tls.acme.on_demand]`): a handshake for a host only a wildcard or
//!   catch-all route knows (the proxy tells the manager of every SNI host without a
//!   certificate, without waiting) orders one too, if the `ask` URL approves and at most
//!   `per_minute` such orders a minute; that handshake and the next get the local CA's
//!   certificate until the order is done. Denials are remembered for [`DENIED_FOR`].
//! - **Storage**: `<data>/acme/account-<hash of the directory URL>.json` (the account key) and
//!   `<data>/acme/certs/<host>/{cert,key}.pem`, mode 0600, written atomically; loaded at start,
//!   so a restart serves and renews what it had.
#![forbid(unsafe_code)]

mod client;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proxy::config::AcmeConfig;
use proxy::tls::CertInfo;
use proxy::Proxy;

/// The longest wait before another attempt at a failing host.
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 60 * 60);
/// How often the route table is looked at for new hosts (a route change also wakes the loop).
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// Bound on one whole issuance.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
/// Orders under way at once: a slow or hung one never holds up the other hosts for long.
const CONCURRENT_ORDERS: usize = 4;
/// How long an on-demand host that was turned down (by `ask`, or not routed) is not asked
/// about again.
pub const DENIED_FOR: Duration = Duration::from_secs(60);
/// On-demand hosts waiting to be considered; more handshakes meanwhile are dropped.
const ON_DEMAND_QUEUE: usize = 256;
/// At most this many hosts come from on-demand issuance: names are not free.
pub const ON_DEMAND_MAX_HOSTS: usize = 1000;
/// An on-demand host whose orders failed this many times in a row is forgotten.
const ON_DEMAND_MAX_FAILURES: u32 = 5;

/// What the manager needs.
pub struct Options {
    pub config: AcmeConfig,
    /// `<data>/acme`.
    pub dir: PathBuf,
    pub proxy: Arc<Proxy>,
    /// The first wait after a failure (doubling after each, up to [`MAX_BACKOFF`]).
    pub backoff: Duration,
}

/// One host's certificate as `berth certs` shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HostStatus {
    pub host: String,
    /// `pending` (waiting for its first certificate), `issuing`, `valid`, `failed` (retried
    /// later; a valid certificate, if any, is still served).
    pub status: &'static str,
    /// Unix seconds.
    pub not_after: Option<u64>,
    pub issuer: Option<String>,
    /// Unix seconds: when it is renewed.
    pub renew_at: Option<u64>,
    pub error: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Seconds until the next attempt, for a failed host.
    pub retry_in: Option<u64>,
}

#[derive(Debug)]
struct Host {
    /// `pending`, `issuing`, `valid`, `failed`, `expired`, or `unused` (no route needs it
    /// now: not renewed).
    status: &'static str,
    /// Came from on-demand issuance (counted against [`ON_DEMAND_MAX_HOSTS`]).
    on_demand: bool,
    /// A route needs it now (only those are ordered and renewed).
    in_use: bool,
    cert: Option<CertInfo>,
    error: Option<String>,
    failures: u32,
    next_try: Instant,
}

impl Host {
    fn renew_at(&self) -> Option<SystemTime> {
        let c = self.cert.as_ref()?;
        let life = c.not_after.duration_since(c.not_before).unwrap_or_default();
        Some(c.not_before + life * 2 / 3)
    }

    /// Does it need a certificate now?
    fn due(&self, now: Instant) -> bool {
        if !self.in_use || self.status == "issuing" {
            return false;
        }
        let wants = match self.renew_at() {
            Some(at) => SystemTime::now() >= at,
            None => true,
        };
        wants && now >= self.next_try
    }
}

/// Keeps every routed host's certificate. See the crate docs.
pub struct Manager {
    opts: Options,
    /// Orders since start, by outcome (metrics).
    issued: AtomicU64,
    failed: AtomicU64,
    /// The CA does not know the stored account: make a new one at the next sign-in.
    fresh_account: std::sync::atomic::AtomicBool,
    /// On demand: names queued for `consider` (a name takes one slot of the queue).
    queued: Arc<Mutex<std::collections::HashSet<String>>>,
    hosts: Mutex<BTreeMap<String, Host>>,
    /// On demand: hosts recently turned down, until when.
    denied: Mutex<BTreeMap<String, Instant>>,
    /// On demand: when the orders of the last minute were allowed.
    recent: Mutex<std::collections::VecDeque<Instant>>,
    wake: tokio::sync::Notify,
    /// The signed-in account, made on first use and dropped after an error.
    client: tokio::sync::Mutex<Option<client::Client>>,
}

impl Manager {
    /// Loads the stored certificates into the proxy and starts the issuing task (inside a
    /// tokio runtime).
    pub fn start(opts: Options) -> Arc<Manager> {
        let manager = Arc::new(Manager {
            opts,
            issued: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            fresh_account: std::sync::atomic::AtomicBool::new(false),
            queued: Arc::default(),
            hosts: Mutex::new(BTreeMap::new()),
            denied: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(std::collections::VecDeque::new()),
            wake: tokio::sync::Notify::new(),
            client: tokio::sync::Mutex::new(None),
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(ON_DEMAND_QUEUE);
        if let (Some(_), Some(resolver)) = (
            manager.opts.config.on_demand.as_ref(),
            manager.opts.proxy.resolver(),
        ) {
            let queued = manager.queued.clone();
            resolver.on_miss(Arc::new(move |host: &str| {
                // Never waits (the handshake path): a busy set or a full queue drops the name,
                // and the next handshake offers it again. A name already queued is not again.
                let Ok(mut q) = queued.try_lock() else { return };
                if q.len() < ON_DEMAND_QUEUE
                    && q.insert(host.to_string())
                    && tx.try_send(host.to_string()).is_err()
                {
                    q.remove(host);
                }
            }));
        }
        tokio::spawn(manager.clone().run(rx));
        manager
    }

    /// Look at the route table now (a route was added).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The manager's figures, OpenMetrics text without the final `# EOF` (to go before the
    /// proxy's): certificates by status, seconds until each expires, orders by outcome
    /// (`berth_acme_orders_total`).
    pub fn metrics(&self) -> String {
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        let mut registry = prometheus_client::registry::Registry::with_prefix("berth_acme");
        let by_status = Family::<Vec<(String, String)>, Gauge>::default();
        let expiry = Family::<Vec<(String, String)>, Gauge>::default();
        let now = SystemTime::now();
        for (host, h) in lock(&self.hosts).iter() {
            by_status
                .get_or_create(&vec![("status".to_string(), h.status.to_string())])
                .inc();
            if let Some(c) = &h.cert {
                let left = c.not_after.duration_since(now).map_or(0, |d| d.as_secs());
                expiry
                    .get_or_create(&vec![("host".to_string(), host.clone())])
                    .set(i64::try_from(left).unwrap_or(i64::MAX));
            }
        }
        let orders =
            Family::<Vec<(String, String)>, prometheus_client::metrics::counter::Counter>::default(
            );
        for (result, n) in [
            ("issued", self.issued.load(Ordering::Relaxed)),
            ("failed", self.failed.load(Ordering::Relaxed)),
        ] {
            orders
                .get_or_create(&vec![("result".to_string(), result.to_string())])
                .inc_by(n);
        }
        registry.register(
            "certificates",
            "Hosts ACME looks after, by status",
            by_status,
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until the host's ACME certificate expires",
            expiry,
        );
        registry.register("orders", "Orders since berth started, by outcome", orders);
        let mut out = String::new();
        // Without the `# EOF` (the proxy's exposition ends with it).
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &registry);
        out
    }

    /// Every host the manager keeps, by name.
    pub fn status(&self) -> Vec<HostStatus> {
        let now = Instant::now();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs());
        lock(&self.hosts)
            .iter()
            .map(|(name, h)| HostStatus {
                host: name.clone(),
                status: h.status,
                not_after: h.cert.as_ref().and_then(|c| secs(c.not_after)),
                issuer: h.cert.as_ref().map(|c| c.issuer.clone()),
                renew_at: h.renew_at().and_then(secs),
                error: h.error.clone(),
                failures: h.failures,
                retry_in: (h.status == "failed")
                    .then(|| h.next_try.saturating_duration_since(now).as_secs()),
            })
            .collect()
    }

    fn certs_dir(&self) -> PathBuf {
        self.opts.dir.join("certs")
    }

    /// The certificates of an earlier run, served again (and renewed when due).
    fn load_stored(&self) {
        let Some(resolver) = self.opts.proxy.resolver() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(self.certs_dir()) else {
            return;
        };
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let mut hosts: Vec<String> = names.iter().filter(|n| !n.contains('~')).cloned().collect();
        // A swap cut off by a crash (see `issue_once`): finish it, or drop its leftovers.
        for name in names.iter().filter_map(|n| n.strip_suffix("~new")) {
            let dir = self.certs_dir().join(name);
            if !dir.exists() && std::fs::rename(sibling(&dir, "new"), &dir).is_ok() {
                hosts.push(name.to_string());
            }
        }
        for name in names.iter().filter(|n| n.contains('~')) {
            let _ = std::fs::remove_dir_all(self.certs_dir().join(name));
        }
        for host in hosts {
            let dir = self.certs_dir().join(&host);
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            match proxy::tls::load_pair(&cert, &key) {
                // An expired certificate is not served (the local CA's is, until a new one).
                Ok((_, info)) if info.not_after <= SystemTime::now() => {
                    tracing::warn!(%host, "a stored ACME certificate has expired");
                }
                Ok((certified, info)) => {
                    resolver.set_acme(&host, certified);
                    lock(&self.hosts).insert(
                        host,
                        Host {
                            status: "valid",
                            // A stored on-demand host that no route knows stays unused.
                            on_demand: false,
                            in_use: false,
                            cert: Some(info),
                            error: None,
                            failures: 0,
                            next_try: Instant::now(),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(%host, error = %e, "ignoring a stored ACME certificate")
                }
            }
        }
    }

    async fn run(self: Arc<Self>, mut on_demand: tokio::sync::mpsc::Receiver<String>) {
        // Off the async threads: there may be many.
        let this = self.clone();
        let _ = tokio::task::spawn_blocking(move || this.load_stored()).await;
        let mut orders = tokio::task::JoinSet::new();
        loop {
            self.sync_hosts();
            // Start what is due, the longest waiting first, while there is room.
            while orders.len() < CONCURRENT_ORDERS {
                let now = Instant::now();
                let due = {
                    let mut hosts = lock(&self.hosts);
                    let name = hosts
                        .iter()
                        .filter(|(_, h)| h.due(now))
                        .min_by_key(|(_, h)| h.next_try)
                        .map(|(name, _)| name.clone());
                    if let Some(h) = name.as_ref().and_then(|n| hosts.get_mut(n)) {
                        h.status = "issuing";
                    }
                    name
                };
                let Some(host) = due else { break };
                let this = self.clone();
                orders.spawn(async move { this.issue(&host).await });
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(LOOK_EVERY) => {}
                Some(_) = orders.join_next() => {}
                Some(host) = on_demand.recv() => {
                    self.consider(&host).await;
                    lock(&self.queued).remove(&host);
                }
            }
        }
    }

    /// Brings the hosts in line with the route table: routed hosts that need a certificate
    /// are added; hosts no route needs any more (or that a file now covers) are not renewed;
    /// an expired certificate is no longer served.
    fn sync_hosts(&self) {
        let Some(resolver) = self.opts.proxy.resolver() else {
            return;
        };
        let routed: std::collections::HashSet<String> = self
            .opts
            .proxy
            .route_hosts()
            .into_iter()
            .filter(|h| wanted(h) && !resolver.file_covers(h))
            .collect();
        let now = SystemTime::now();
        let mut hosts = lock(&self.hosts);
        for host in &routed {
            if !hosts.contains_key(host) {
                tracing::info!(%host, "a certificate will be ordered");
                hosts.insert(
                    host.clone(),
                    Host {
                        status: "pending",
                        on_demand: false,
                        in_use: true,
                        cert: None,
                        error: None,
                        failures: 0,
                        next_try: Instant::now(),
                    },
                );
            }
        }
        for (name, h) in hosts.iter_mut() {
            let used = if h.on_demand {
                self.opts.proxy.knows_host(name) && !resolver.file_covers(name)
            } else {
                routed.contains(name)
            };
            if used != h.in_use {
                h.in_use = used;
                if !used {
                    tracing::info!(host = %name, "no route needs this certificate any more: not renewed");
                    h.status = "unused";
                } else if h.status == "unused" {
                    h.status = if h.cert.is_some() { "valid" } else { "pending" };
                }
            }
            if h.cert.as_ref().is_some_and(|c| c.not_after <= now) {
                resolver.remove_acme(name);
                h.cert = None;
                if h.in_use {
                    h.status = "expired";
                }
            }
        }
    }

    /// On demand: a handshake for `host` found no certificate. Ordered if the route table
    /// knows it, the CA would issue for it, `ask` approves and the rate allows.
    async fn consider(&self, host: &str) {
        let Some(od) = self.opts.config.on_demand.as_ref() else {
            return;
        };
        let now = Instant::now();
        if lock(&self.hosts).contains_key(host)
            || lock(&self.denied)
                .get(host)
                .is_some_and(|until| *until > now)
        {
            return;
        }
        let deny = |why: &str| {
            tracing::info!(%host, why, "no on-demand certificate");
            let mut denied = lock(&self.denied);
            denied.retain(|_, until| *until > now);
            denied.insert(host.to_string(), now + DENIED_FOR);
        };
        let file = self
            .opts
            .proxy
            .resolver()
            .is_some_and(|r| r.file_covers(host));
        if !wanted(host) || file || !self.opts.proxy.knows_host(host) {
            return deny("not a routed host a CA issues for");
        }
        let on_demand_hosts = lock(&self.hosts).values().filter(|h| h.on_demand).count();
        if on_demand_hosts >= ON_DEMAND_MAX_HOSTS {
            return deny("too many on-demand hosts");
        }
        // The ask URL first: names it turns down never use the order budget.
        if let Some(url) = &od.ask {
            match client::ask(&self.opts.config, url, host).await {
                Ok(true) => {}
                Ok(false) => return deny("the ask URL said no"),
                Err(e) => {
                    tracing::warn!(%host, error = %e, "the on-demand ask URL failed");
                    return deny("the ask URL failed");
                }
            }
        }
        {
            let mut recent = lock(&self.recent);
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
            {
                recent.pop_front();
            }
            if recent.len() >= od.per_minute as usize {
                // Not remembered as denied: a later handshake may find room.
                tracing::warn!(%host, per_minute = od.per_minute, "on-demand certificates are rate limited");
                return;
            }
            recent.push_back(now);
        }
        tracing::info!(%host, "a certificate will be ordered (on demand)");
        lock(&self.hosts).insert(
            host.to_string(),
            Host {
                status: "pending",
                on_demand: true,
                in_use: true,
                cert: None,
                error: None,
                failures: 0,
                next_try: Instant::now(),
            },
        );
    }

    /// One issuance for `host` (marked `issuing` by the caller); the outcome is recorded.
    async fn issue(&self, host: &str) {
        let t0 = Instant::now();
        let result = tokio::time::timeout(ISSUE_TIMEOUT, self.issue_once(host))
            .await
            .unwrap_or_else(|_| Err(format!("no certificate within {ISSUE_TIMEOUT:?}")));
        let mut hosts = lock(&self.hosts);
        let Some(h) = hosts.get_mut(host) else { return };
        match result {
            Ok(info) => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%host, seconds = t0.elapsed().as_secs_f64(), issuer = %info.issuer, "certificate issued");
                h.status = "valid";
                h.cert = Some(info);
                h.error = None;
                h.failures = 0;
                h.next_try = Instant::now();
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if client::account_gone(&e) {
                    self.fresh_account.store(true, Ordering::Relaxed);
                }
                if h.on_demand && h.failures + 1 >= ON_DEMAND_MAX_FAILURES && h.cert.is_none() {
                    tracing::warn!(%host, error = %e, "forgetting an on-demand host whose orders keep failing");
                    hosts.remove(host);
                    return;
                }
                h.failures += 1;
                let wait = retry_after(&e, backoff(self.opts.backoff, h.failures));
                tracing::warn!(%host, error = %e, retry_in = ?wait, "certificate not issued");
                // A certificate still valid keeps being served.
                h.status = "failed";
                h.error = Some(e);
                h.next_try = Instant::now() + wait;
            }
        }
    }

    async fn issue_once(&self, host: &str) -> Result<CertInfo, String> {
        let resolver = self
            .opts
            .proxy
            .resolver()
            .ok_or("no HTTPS listener to serve the certificate on")?;
        // One sign-in shared by the orders under way (made by the first that needs it).
        let c = {
            let mut client = self.client.lock().await;
            if client.is_none() {
                let fresh = self.fresh_account.swap(false, Ordering::Relaxed);
                *client = Some(
                    client::Client::connect(
                        &self.opts.config,
                        &self.opts.dir,
                        self.opts.proxy.challenges(),
                        fresh,
                    )
                    .await?,
                );
            }
            client.clone().ok_or("no ACME account")?
        };
        let issued = c.issue(host).await;
        if let Err(e) = &issued {
            if client::account_gone(e) {
                // Sign in again (with a new account) for the next order.
                *self.client.lock().await = None;
            }
        }
        let (chain, key) = issued?;
        // Checked before it replaces what is on disk; written off the async threads.
        let dir = self.certs_dir().join(host);
        // The pair goes to `<host>~new`, is loaded from there, and only then swaps with the
        // directory in use (`<host>~old` meanwhile): never a key of one and a chain of another.
        let stored = tokio::task::spawn_blocking(move || {
            let (new, old) = (sibling(&dir, "new"), sibling(&dir, "old"));
            let _ = std::fs::remove_dir_all(&new);
            proxy::tls::create_private_dir(&new).map_err(|e| e.to_string())?;
            for (name, data) in [("key.pem", &key), ("cert.pem", &chain)] {
                proxy::tls::write_atomic(&new.join(name), data.as_bytes(), 0o600)
                    .map_err(|e| format!("cannot store the certificate: {e}"))?;
            }
            let loaded = proxy::tls::load_pair(&new.join("cert.pem"), &new.join("key.pem"))
                .map_err(|e| format!("the CA's certificate does not load: {e}"));
            let loaded = match loaded {
                Ok(l) => l,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&new);
                    return Err(e);
                }
            };
            let _ = std::fs::remove_dir_all(&old);
            if dir.exists() {
                std::fs::rename(&dir, &old)
                    .map_err(|e| format!("cannot store the certificate: {e}"))?;
            }
            std::fs::rename(&new, &dir)
                .map_err(|e| format!("cannot store the certificate: {e}"))?;
            let _ = std::fs::remove_dir_all(&old);
            Ok::<_, String>(loaded)
        })
        .await
        .map_err(|e| e.to_string())??;
        let (certified, info) = stored;
        resolver.set_acme(host, certified);
        Ok(info)
    }
}

/// `<dir>~<what>`: a working copy beside a host's certificate directory (`~` is in no host name).
fn sibling(dir: &std::path::Path, what: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!("~{what}"));
    dir.with_file_name(name)
}

/// Does an ACME CA issue for `host`? DNS names of two labels or more, not the local CA's.
fn wanted(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.contains('.')
        && host.parse::<std::net::IpAddr>().is_err()
        && host != "localhost"
        && !host.ends_with(".localhost")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        // Every label a DNS label (this also keeps `.` and `..` out of the certs dir's names).
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'))
        && host.len() <= 253
}

/// The CA's own rate limits (Let's Encrypt: 5 failed validations per host and hour, 300 new
/// orders per 3 hours, ...) say when to come back: never sooner than [`RATE_LIMITED_WAIT`].
pub const RATE_LIMITED_WAIT: Duration = Duration::from_secs(60 * 60);

/// The wait after a failed order: `backoff`, or at least [`RATE_LIMITED_WAIT`] when the CA
/// answered `rateLimited`.
fn retry_after(error: &str, backoff: Duration) -> Duration {
    if error.contains("rateLimited") || error.contains("rate limit") {
        backoff.max(RATE_LIMITED_WAIT)
    } else {
        backoff
    }
}

/// `first` doubled per failure after the first, up to [`MAX_BACKOFF`].
fn backoff(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    first.saturating_mul(1u32 << doublings).min(MAX_BACKOFF)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_a_public_ca_issues_for_are_wanted() {
        for yes in ["app.example.com", "a.test", "xn--bcher-kva.example"] {
            assert!(wanted(yes), "{yes}");
        }
        for no in [
            "localhost",
            "app.localhost",
            "127.0.0.1",
            "::1",
            "intranet",
            "a_b.example.com",
            "..",
            ".a.b",
            "a..b",
            "-a.b",
        ] {
            assert!(!wanted(no), "{no}");
        }
    }

    #[test]
    fn a_rate_limited_order_waits_an_hour_at_least() {
        let s = Duration::from_secs;
        let limited = "the CA refused the order: API error: urn:ietf:params:acme:error:rateLimited: too many failed authorizations recently";
        assert_eq!(retry_after(limited, s(60)), RATE_LIMITED_WAIT);
        assert_eq!(retry_after(limited, s(7200)), s(7200));
        assert_eq!(
            retry_after("validation failed: connection refused", s(60)),
            s(60)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), 1), s(60));
        assert_eq!(backoff(s(60), 2), s(120));
        assert_eq!(backoff(s(60), 4), s(480));
        assert_eq!(backoff(s(60), 40), MAX_BACKOFF);
    }

    #[test]
    fn renewal_is_at_two_thirds_of_the_lifetime() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = Host {
            status: "valid",
            on_demand: false,
            in_use: true,
            cert: Some(CertInfo {
                not_before: start,
                not_after: start + Duration::from_secs(90 * 86_400),
                issuer: "CN=test".into(),
            }),
            error: None,
            failures: 0,
            next_try: Instant::now(),
        };
        assert_eq!(h.renew_at(), Some(start + Duration::from_secs(60 * 86_400)));
    }
}
