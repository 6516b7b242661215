//! Outgoing webhooks: build and deploy events, JSON signed with HMAC-SHA256 per target,
//! retried with backoff.
//!
//! - [`Engine::notify`] is called by the pipeline at each event of [`EVENTS`]. It reads the
//!   deploy once (the body is a snapshot of that moment) and hands one delivery per target of
//!   the deploy's app (its own, the global ones and, for a branch preview, those of the app it
//!   previews) to that target's queue. It never waits for the network.
//! - Each target has one queue and one task that sends its deliveries one at a time, in the
//!   order they were queued, so a receiver never sees `deploy.succeeded` before
//!   `deploy.started`. The task ends after a minute without deliveries.
//! - A delivery is a `POST` of the JSON body with `X-Berth-Event`, `X-Berth-Delivery` (the same
//!   across retries) and `X-Berth-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`. A 2xx
//!   answer ends it; anything else (another status, a connection error, no answer within
//!   10 s) is tried again after the backoff (`EngineConfig::notify_backoff`, doubling each
//!   time), [`ATTEMPTS`] attempts in all. A target removed meanwhile gets no more attempts.
//! - The HTTP client is ureq (blocking, so each attempt runs on the blocking pool) with rustls
//!   and the public web PKI roots. It connects directly (no proxy from the environment), and
//!   only to public addresses: its resolver refuses loopback, private, link-local and the like
//!   unless `[server] allow_private_hosts` names the host (`egress.rs`); a target's URL is
//!   checked the same way when it is added.

use crate::{lock, Engine, EngineError};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use store::{Deploy, NotifyTarget};
use tokio::sync::mpsc;

/// The events a target receives.
pub const EVENTS: &[&str] = &[
    "build.started",
    "build.succeeded",
    "build.failed",
    "deploy.started",
    "deploy.succeeded",
    "deploy.failed",
];

/// Attempts per delivery, the first included.
pub const ATTEMPTS: u32 = 6;
/// The wait before the first retry (then 2×, 4×…), unless `EngineConfig::notify_backoff`.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// One attempt: connect, send and read the answer's head.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A target's task ends after this long without deliveries (the next event starts another).
const IDLE: Duration = Duration::from_secs(60);
/// Longest URL accepted for a target.
const MAX_URL: usize = 2048;

/// The delivery queues, one per target, and the HTTP client they share.
#[derive(Default)]
pub(crate) struct Notifier {
    queues: Mutex<HashMap<i64, Queue>>,
    /// Tells a queue from its successor under the same target id.
    generation: AtomicU64,
    agent: OnceLock<ureq::Agent>,
}

struct Queue {
    tx: mpsc::UnboundedSender<Arc<Delivery>>,
    generation: u64,
}

/// One event for one target, signed.
struct Delivery {
    target: i64,
    url: String,
    event: &'static str,
    id: String,
    body: Vec<u8>,
    signature: String,
}

impl Engine {
    /// Tell every target of the deploy's app that `event` happened (in the background: a slow
    /// or dead receiver never holds up a deploy). Call it after the store records what the
    /// event says (the body is read from the store now).
    pub(crate) fn notify(self: &Arc<Self>, deploy_id: i64, event: &'static str) {
        let deploy = match self.store.deploy(deploy_id) {
            Ok(Some(d)) => d,
            Ok(None) => {
                tracing::debug!(deploy = deploy_id, event, "no such deploy to notify about");
                return;
            }
            Err(e) => {
                tracing::warn!(deploy = deploy_id, event, error = %e, "cannot read the deploy to notify about");
                return;
            }
        };
        let targets = match self.targets_for(&deploy.app) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(deploy = deploy_id, event, error = %e, "cannot read the notification targets");
                return;
            }
        };
        if targets.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                deploy = deploy_id,
                event,
                "notification not sent: no async runtime"
            );
            return;
        };
        let at = rfc3339(store::now_ms());
        for t in targets {
            let id = crate::random_hex(16);
            let body = event_body(&deploy, event, &id, &at, &self.app_url(&deploy.app));
            let body = match serde_json::to_vec(&body) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(event, error = %e, "cannot encode a notification");
                    continue;
                }
            };
            let Some(signature) = sign(&t.secret, &body) else {
                tracing::warn!(target_id = t.id, "cannot sign a notification");
                continue;
            };
            let d = Delivery {
                target: t.id,
                url: t.url,
                event,
                id,
                body,
                signature,
            };
            self.enqueue_delivery(&runtime, Arc::new(d));
        }
    }

    /// The targets that get `app`'s events: its own, the global ones, and for a branch
    /// preview those of the app it previews.
    fn targets_for(&self, app: &str) -> Result<Vec<NotifyTarget>, store::StoreError> {
        let mut targets = self.store.notify_targets(Some(app))?;
        let parent = self
            .store
            .app(app)?
            .and_then(|a| a.settings.preview_of.map(|p| p.app));
        if let Some(parent) = parent {
            for t in self.store.notify_targets(Some(&parent))? {
                if !targets.iter().any(|x| x.id == t.id) {
                    targets.push(t);
                }
            }
        }
        Ok(targets)
    }

    /// Queue `d` behind the target's earlier deliveries, starting the target's task if none
    /// runs.
    fn enqueue_delivery(self: &Arc<Self>, runtime: &tokio::runtime::Handle, d: Arc<Delivery>) {
        let n = &self.notifier;
        let mut queues = lock(&n.queues);
        let d = match queues.get(&d.target) {
            Some(q) => match q.tx.send(d) {
                Ok(()) => return,
                Err(mpsc::error::SendError(d)) => d,
            },
            None => d,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let generation = n.generation.fetch_add(1, Ordering::Relaxed);
        let target = d.target;
        if tx.send(d).is_err() {
            return;
        }
        queues.insert(target, Queue { tx, generation });
        runtime.spawn(self.clone().deliver_queue(target, generation, rx));
    }

    /// A target's task: its deliveries one after the other, until it has been idle a while.
    async fn deliver_queue(
        self: Arc<Self>,
        target: i64,
        generation: u64,
        mut rx: mpsc::UnboundedReceiver<Arc<Delivery>>,
    ) {
        loop {
            match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(d)) => self.deliver(&d).await,
                Ok(None) => return,
                Err(_) => {
                    if self.retire_queue(target, generation, &rx) {
                        return;
                    }
                }
            }
        }
    }

    /// Remove an idle queue from the map, unless a delivery arrived meanwhile (checked under
    /// the lock `enqueue_delivery` sends under, so none is lost).
    fn retire_queue(
        &self,
        target: i64,
        generation: u64,
        rx: &mpsc::UnboundedReceiver<Arc<Delivery>>,
    ) -> bool {
        let mut queues = lock(&self.notifier.queues);
        if !rx.is_empty() {
            return false;
        }
        if queues
            .get(&target)
            .is_some_and(|q| q.generation == generation)
        {
            queues.remove(&target);
        }
        true
    }

    /// Send one delivery, with retries.
    async fn deliver(&self, d: &Arc<Delivery>) {
        let base = self.cfg.notify_backoff;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                let wait = base.saturating_mul(1u32 << (attempt - 2).min(20));
                tokio::time::sleep(wait).await;
                if !self.target_exists(d.target) {
                    tracing::info!(
                        target_id = d.target,
                        delivery = %d.id,
                        "notification target removed; delivery dropped"
                    );
                    return;
                }
            }
            let agent = self.notifier.agent(&self.cfg.allow_private_hosts).clone();
            let d2 = d.clone();
            let outcome = tokio::task::spawn_blocking(move || post(&agent, &d2))
                .await
                .unwrap_or_else(|e| Err(format!("the sending task failed: {e}")));
            match outcome {
                Ok(status) if (200..300).contains(&status) => {
                    tracing::debug!(
                        target_id = d.target,
                        event = d.event,
                        delivery = %d.id,
                        attempt,
                        status,
                        "notification delivered"
                    );
                    return;
                }
                Ok(status) => tracing::warn!(
                    target_id = d.target,
                    host = host_of(&d.url),
                    event = d.event,
                    delivery = %d.id,
                    attempt,
                    status,
                    "notification refused by the receiver"
                ),
                Err(error) => tracing::warn!(
                    target_id = d.target,
                    host = host_of(&d.url),
                    event = d.event,
                    delivery = %d.id,
                    attempt,
                    %error,
                    "notification not delivered"
                ),
            }
        }
        tracing::error!(
            target_id = d.target,
            host = host_of(&d.url),
            event = d.event,
            delivery = %d.id,
            "notification given up after {ATTEMPTS} attempts"
        );
    }

    fn target_exists(&self, id: i64) -> bool {
        match self.store.notify_targets(None) {
            Ok(all) => all.iter().any(|t| t.id == id),
            // Unknown: keep trying.
            Err(_) => true,
        }
    }

    /// Add an outgoing webhook for `app`'s events (`None`: every app's). The target comes back
    /// with its signing secret, which is shown only this once.
    pub async fn add_notify_target(
        &self,
        app: Option<&str>,
        url: &str,
        actor: &str,
    ) -> Result<NotifyTarget, EngineError> {
        if let Some(a) = app {
            self.app(a)?;
        }
        check_url(url).map_err(|why| {
            EngineError::BadInput(format!(
                "invalid notification URL: {why} (hint: an http or https URL with a host, like https://example.com/hooks/berth)"
            ))
        })?;
        let (policy, u) = (self.egress_policy(), url.to_string());
        tokio::task::spawn_blocking(move || policy.check_notify_url(&u, true))
            .await
            .map_err(|e| EngineError::Internal(format!("the URL check failed: {e}")))?
            .map_err(|why| EngineError::BadInput(format!("notification URL refused: {why}")))?;
        let secret = crate::new_secret()?;
        Ok(self.store.add_notify_target(app, url, &secret, actor)?)
    }

    pub fn remove_notify_target(&self, id: i64, actor: &str) -> Result<(), EngineError> {
        Ok(self.store.remove_notify_target(id, actor)?)
    }

    /// Every target (`None`), or those that get `app`'s events.
    pub fn notify_targets(&self, app: Option<&str>) -> Result<Vec<NotifyTarget>, EngineError> {
        if let Some(a) = app {
            self.app(a)?;
        }
        Ok(self.store.notify_targets(app)?)
    }
}

impl Notifier {
    /// The shared client; `allow`: `[server] allow_private_hosts` (the same for the whole run).
    fn agent(&self, allow: &[String]) -> &ureq::Agent {
        self.agent.get_or_init(|| {
            let roots: Vec<ureq::tls::Certificate<'static>> =
                webpki_root_certs::TLS_SERVER_ROOT_CERTS
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()))
                    .collect();
            let tls = ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
                .build();
            let config = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .tls_config(tls)
                .timeout_global(Some(ATTEMPT_TIMEOUT))
                .max_redirects(0)
                // Through a proxy the target's address would be the proxy's to resolve,
                // unchecked.
                .proxy(None)
                .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
                .build();
            ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                crate::egress::CheckingResolver {
                    policy: crate::egress::Policy::new(allow),
                    inner: Default::default(),
                },
            )
        })
    }
}

/// One attempt: the answer's status, or why there is none.
fn post(agent: &ureq::Agent, d: &Delivery) -> Result<u16, String> {
    agent
        .post(&d.url)
        .header("Content-Type", "application/json")
        .header("X-Berth-Event", d.event)
        .header("X-Berth-Delivery", &d.id)
        .header("X-Berth-Signature-256", &d.signature)
        .send(&d.body[..])
        .map(|res| res.status().as_u16())
        .map_err(|e| e.to_string())
}

/// The JSON an event carries.
fn event_body(d: &Deploy, event: &str, delivery: &str, at: &str, url: &str) -> serde_json::Value {
    serde_json::json!({
        "event": event,
        "delivery": delivery,
        "at": at,
        "app": d.app,
        "url": url,
        "build": {
            "id": d.id,
            "kind": d.kind.as_str(),
            "status": d.status.as_str(),
            "step": d.step,
            "reason": d.reason,
            "trigger": d.meta.trigger,
            "sha": d.meta.sha,
            "branch": d.meta.branch,
            "author": d.meta.author,
            "message": d.meta.message,
            "release": d.release_version,
        },
    })
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`; the key is the secret's text as shown.
fn sign(secret: &str, body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(body);
    Some(format!("sha256={}", hex(&mac.finalize().into_bytes())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An http or https URL with a host, no whitespace, that the HTTP client can parse.
fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("it is empty".into());
    }
    if url.len() > MAX_URL {
        return Err(format!("it is longer than {MAX_URL} characters"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains whitespace or control characters".into());
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("it does not parse ({e})"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("the scheme is {other}, not http or https")),
        None => return Err("it has no scheme (http:// or https://)".into()),
    }
    if uri.host().is_none_or(|h| h.is_empty() || h == "[]") {
        return Err("it has no host".into());
    }
    Ok(())
}

/// The host of a URL, for logs (a URL's path or query may hold a secret token).
fn host_of(url: &str) -> String {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_default()
}

/// Unix milliseconds as RFC 3339 UTC (`2026-11-28T09:30:00.123Z`): how the API and the
/// notifications write times.
pub use units::rfc3339;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://example.com",
            "https://example.com/hooks/berth?x=1",
            "http://127.0.0.1:9000/h",
            "http://[::1]:8080/",
            "HTTPS://Example.com/",
            "https://user:pw@example.com/x",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}: {:?}", check_url(ok));
        }
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "http://",
            "http:///path",
            "https://exa mple.com/",
            " https://example.com/",
            "https://example.com/\n",
            "javascript:alert(1)",
            "/relative",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?").unwrap(),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// https works with berth's rustls setup: an untrusted (here: not even TLS) peer is an
    /// error, not a panic for want of a crypto provider.
    #[test]
    fn https_failure_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                use std::io::Write;
                let _ = (&s).write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            }
        });
        let d = Delivery {
            target: 1,
            url: format!("https://localhost:{}/hook", addr.port()),
            event: "deploy.started",
            id: "x".into(),
            body: b"{}".to_vec(),
            signature: sign("s", b"{}").unwrap(),
        };
        let err = post(Notifier::default().agent(&["localhost".into()]), &d).unwrap_err();
        assert!(!err.is_empty());
        assert!(!err.contains("allow_private_hosts"), "{err}");
    }

    /// The client itself refuses a private address (the URL was checked when added; DNS may
    /// have changed since), unless the host is allowed.
    #[test]
    fn private_addresses_are_refused_when_connecting() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                use std::io::{Read, Write};
                let mut buf = [0u8; 4096];
                let _ = (&s).read(&mut buf);
                let _ = (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let d = |host: &str| Delivery {
            target: 1,
            url: format!("http://{host}:{}/hook", addr.port()),
            event: "deploy.started",
            id: "x".into(),
            body: b"{}".to_vec(),
            signature: sign("s", b"{}").unwrap(),
        };
        let strict = Notifier::default();
        let err = post(strict.agent(&[]), &d("localhost")).unwrap_err();
        assert!(err.contains("allow_private_hosts"), "{err}");
        let err = post(strict.agent(&[]), &d("127.0.0.1")).unwrap_err();
        assert!(err.contains("allow_private_hosts"), "{err}");
        let allowed = Notifier::default();
        assert_eq!(
            post(allowed.agent(&["127.0.0.1".into()]), &d("127.0.0.1")),
            Ok(200)
        );
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}
