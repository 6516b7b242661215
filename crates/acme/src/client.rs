//! One ACME account and its orders, on `instant-acme`: the HTTPS client it talks
//! through (the public roots plus `[tls.acme] ca`), the account (created once, its key kept in
//! `<dir>/account-<hash of the directory URL>.json`, mode 0600), and an order for one host answered by HTTP-01 or
//! TLS-ALPN-01 through the proxy's [`Challenges`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use proxy::config::{AcmeChallenge, AcmeConfig};
use proxy::tls::Challenges;
use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;

/// Bound on connecting to the CA.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one request to the CA.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the CA gets to validate the challenges, and then to issue.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(90);

/// The account file of a directory URL: instant-acme's credentials (the account URL and its
/// private key), one per directory URL: switching CAs never loses an account.
fn account_file(directory: &str) -> String {
    let hash = directory.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("account-{:016x}.json", hash)
}

/// Did the CA say it does not know (or no longer accepts) the account?
pub(crate) fn account_gone(error: &str) -> bool {
    error.contains("accountDoesNotExist") || error.contains("account does not exist")
}

/// A signed-in ACME account (cheap to clone: orders run side by side on one account).
#[derive(Clone)]
pub(crate) struct Client {
    account: Account,
    challenge: AcmeChallenge,
    challenges: Arc<Challenges>,
}

impl Client {
    /// Signs in with the account kept in `dir` for this directory, or creates one (and keeps
    /// it). `fresh`: the CA said it does not know the stored account; make a new one. A stored
    /// account that cannot be restored now (the CA unreachable) is an error, never replaced.
    pub(crate) async fn connect(
        cfg: &AcmeConfig,
        dir: &Path,
        challenges: Arc<Challenges>,
        fresh: bool,
    ) -> Result<Client, String> {
        let http = || -> Result<Box<dyn HttpClient>, String> { Ok(Box::new(Https::new(cfg)?)) };
        // One account file per directory URL: switching CAs never loses an account.
        let path = dir.join(account_file(&cfg.directory));
        let read = path.clone();
        let stored = tokio::task::spawn_blocking(move || std::fs::read_to_string(read).ok())
            .await
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str::<AccountCredentials>(&s).ok())
            .filter(|_| !fresh);
        if let Some(credentials) = stored {
            let account = Account::builder_with_http(http()?)
                .from_credentials(credentials)
                .await
                .map_err(|e| format!("cannot reach the CA with the stored account: {e}"))?;
            return Ok(Client {
                account,
                challenge: cfg.challenge,
                challenges,
            });
        }
        let contact: Vec<String> = cfg.email.iter().map(|e| format!("mailto:{e}")).collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &cfg.eab {
            Some(eab) => Some(ExternalAccountKey::new(
                eab.kid.clone(),
                &b64url_decode(&eab.hmac).ok_or("tls.acme.eab.hmac is not base64url")?,
            )),
            None => None,
        };
        let (account, credentials) = Account::builder_with_http(http()?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                cfg.directory.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| format!("cannot create an account at {}: {e}", cfg.directory))?;
        let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
        let dir = dir.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || {
            proxy::tls::create_private_dir(&dir)?;
            proxy::tls::write_atomic(&path, &json, 0o600)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            // Kept in memory all the same: another account per attempt would soon hit the
            // CA's limit on new accounts.
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot store the new ACME account; it lasts until berth stops")
            }
            Err(e) => tracing::error!(error = %e, "cannot store the new ACME account"),
        }
        tracing::info!(directory = %cfg.directory, account = %account.id(), "ACME account created");
        Ok(Client {
            account,
            challenge: cfg.challenge,
            challenges,
        })
    }

    /// Orders a certificate for `host` and answers its challenge; the chain (PEM, leaf first)
    /// and its private key (PKCS#8 PEM).
    pub(crate) async fn issue(&self, host: &str) -> Result<(String, String), String> {
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = self
            .account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("the CA refused the order: {e}"))?;
        let mut answered = Answered {
            challenges: &self.challenges,
            tokens: Vec::new(),
            hosts: Vec::new(),
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| format!("cannot read an authorization: {e}"))?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    // Validated earlier for this account: nothing to answer.
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("authorization is {other:?}")),
                }
                let name = authz.identifier().to_string();
                let kind = match self.challenge {
                    AcmeChallenge::Http01 => ChallengeType::Http01,
                    AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                };
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    format!("the CA offers no {kind:?} challenge for {name} (hint: set [tls.acme] challenge to the other kind)")
                })?;
                let key_auth = challenge.key_authorization();
                match self.challenge {
                    AcmeChallenge::Http01 => {
                        self.challenges
                            .set_http01(&challenge.token, key_auth.as_str());
                        answered.tokens.push(challenge.token.clone());
                    }
                    AcmeChallenge::TlsAlpn01 => {
                        let cert = alpn_cert(&name, key_auth.digest().as_ref())?;
                        self.challenges.set_alpn(&name, cert);
                        answered.hosts.push(name.clone());
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("cannot tell the CA the challenge is ready: {e}"))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(2.0)
            .timeout(VALIDATION_TIMEOUT);
        let status = order
            .poll_ready(&retry)
            .await
            .map_err(|e| format!("validation failed: {e}"))?;
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| format!("{status:?}"));
            return Err(format!("validation failed: {why}"));
        }
        drop(answered);
        let key = order
            .finalize()
            .await
            .map_err(|e| format!("cannot finalize the order: {e}"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| format!("the CA did not issue the certificate: {e}"))?;
        Ok((chain, key))
    }
}

/// Challenge answers put up for one order, taken down when it ends (any way it ends).
struct Answered<'a> {
    challenges: &'a Challenges,
    tokens: Vec<String>,
    hosts: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.challenges.remove_http01(t);
        }
        for h in &self.hosts {
            self.challenges.remove_alpn(h);
        }
    }
}

/// The TLS-ALPN-01 certificate (RFC 8737): self-signed for `host`, with the critical
/// acmeIdentifier extension holding the SHA-256 of the key authorization.
fn alpn_cert(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let fail = |e: rcgen::Error| format!("cannot make the TLS-ALPN-01 certificate: {e}");
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(fail)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(fail)?;
    let cert = params.self_signed(&key).map_err(fail)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("cannot load the TLS-ALPN-01 key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// The HTTPS client instant-acme talks through: one TLS connection per request (ACME traffic
/// is a handful of requests per certificate), trusting the public roots and `[tls.acme] ca`.
struct Https {
    tls: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(cfg: &AcmeConfig) -> Result<Https, String> {
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots
            .add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        if added == 0 {
            return Err("no public root certificates".into());
        }
        if let Some(ca) = &cfg.ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("cannot read tls.acme.ca {}: {e}", ca.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("tls.acme.ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("tls.acme.ca {}: {e}", ca.display()))?;
            }
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Https {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpClient for Https {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move { send(tls, req).await.map_err(instant_acme::Error::Other) })
    }
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    mut req: http::Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, BoxError> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("refusing a non-https ACME URL: {uri}").into());
    }
    let host = uri
        .host()
        .ok_or("an ACME URL without a host")?
        .trim_matches(['[', ']'])
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp =
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port))).await??;
    let stream = tls.connect(ServerName::try_from(host)?, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends once the response is read.
    tokio::spawn(conn);
    // The low-level client sends the URI as given: origin form, and the authority as Host.
    let authority = uri
        .authority()
        .ok_or("an ACME URL without an authority")?
        .as_str()
        .to_string();
    *req.uri_mut() = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
    req.headers_mut()
        .insert(http::header::HOST, authority.parse()?);
    let response = tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req)).await??;
    Ok(BytesResponse::from(response))
}

/// Asks the on-demand `ask` URL about `host`: `GET <ask>?domain=<host>`, approved by a 2xx.
pub(crate) async fn ask(cfg: &AcmeConfig, url: &str, host: &str) -> Result<bool, String> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let uri: http::Uri = format!("{url}{sep}domain={host}")
        .parse()
        .map_err(|e| format!("on_demand.ask: {e}"))?;
    let authority = uri
        .authority()
        .ok_or("on_demand.ask has no host")?
        .as_str()
        .to_string();
    let host_part = uri
        .host()
        .ok_or("on_demand.ask has no host")?
        .trim_matches(['[', ']'])
        .to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let req = http::Request::get(uri.path_and_query().map_or("/", |pq| pq.as_str()))
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "berth-on-demand")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let go = async {
        let tcp = TcpStream::connect((host_part.as_str(), port)).await?;
        let status = if https {
            let tls = Https::new(cfg)?.tls;
            let stream = tls
                .connect(ServerName::try_from(host_part.clone())?, tcp)
                .await?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?.status()
        } else {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            sender.send_request(req).await?.status()
        };
        Ok::<_, BoxError>(status)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, go).await {
        Ok(Ok(status)) => Ok(status.is_success()),
        Ok(Err(e)) => Err(format!("on_demand.ask {url}: {e}")),
        Err(_) => Err(format!(
            "on_demand.ask {url}: no answer within {CONNECT_TIMEOUT:?}"
        )),
    }
}

/// base64url (padding optional), as CAs give EAB keys.
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_keys_decode() {
        assert_eq!(b64url_decode("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(b64url_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(b64url_decode("_-8"), Some(vec![0xff, 0xef]));
        assert_eq!(b64url_decode("+/8"), None, "not the url-safe alphabet");
        assert_eq!(b64url_decode("not base64!"), None);
        assert_eq!(b64url_decode(""), None);
    }
}
