//! Minimal instant-acme 0.8.5 client against Pebble: own HttpClient (hyper 1 client conn +
//! tokio-rustls, custom root), HTTP-01 or TLS-ALPN-01 answered by our own listeners.
//!
//! usage: acme-scratch <directory-url> <pebble-listener-ca.pem> <domain> <http-port> <tls-port>
//!                     <http-01|tls-alpn-01> [<eab-kid> <eab-hmac-b64url>]
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------- HttpClient: one TLS connection per request (ACME traffic is tiny) ----------

struct AcmeHttp {
    tls: tokio_rustls::TlsConnector,
}

impl AcmeHttp {
    fn new(roots: rustls::RootCertStore) -> anyhow::Result<Self> {
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth();
        Ok(Self {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }
}

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move { send(tls, req).await.map_err(instant_acme::Error::Other) })
    }
}

async fn send(
    tls: tokio_rustls::TlsConnector,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, BoxErr> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("refusing non-https ACME URL {uri}").into());
    }
    let host = uri
        .host()
        .ok_or("URL without host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect((host.as_str(), port)),
    )
    .await??;
    let stream = tls.connect(ServerName::try_from(host)?, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn); // drives the connection; ends when the response body is read
                        // hyper's low-level client sends the URI as given: use origin-form + Host
    let authority = uri
        .authority()
        .ok_or("URL without authority")?
        .as_str()
        .to_owned();
    *req.uri_mut() = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse()?;
    req.headers_mut()
        .insert(http::header::HOST, authority.parse()?);
    let rsp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req)).await??;
    Ok(BytesResponse::from(rsp))
}

// ---------- challenge state shared with the listeners ----------

#[derive(Default, Debug)]
struct Challenges {
    http01: Mutex<HashMap<String, String>>, // token -> key authorization
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>, // domain -> acme-tls/1 cert
}

async fn serve_http01(l: TcpListener, ch: Arc<Challenges>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                match s.read(&mut buf[n..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => n += k,
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let body = path
                .strip_prefix("/.well-known/acme-challenge/")
                .and_then(|t| ch.http01.lock().unwrap().get(t).cloned());
            let rsp = match body {
                Some(b) => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                    b.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
            };
            eprintln!(
                "http-01: GET {path} -> {}",
                if rsp.starts_with("HTTP/1.1 200") {
                    200
                } else {
                    404
                }
            );
            let _ = s.write_all(rsp.as_bytes()).await;
        });
    }
}

const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug)]
struct AlpnResolver(Arc<Challenges>);

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let is_acme = hello
            .alpn()
            .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN));
        let sni = hello.server_name()?.to_ascii_lowercase();
        eprintln!("tls: SNI {sni} acme-tls/1 offered: {is_acme}");
        if is_acme {
            return self.0.alpn.lock().unwrap().get(&sni).cloned();
        }
        None // berth: the normal SNI resolver path goes here
    }
}

async fn serve_tls_alpn01(l: TcpListener, ch: Arc<Challenges>) -> anyhow::Result<()> {
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(AlpnResolver(ch)));
    // server preference order; real clients never offer acme-tls/1, Pebble's VA offers only it
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    loop {
        let Ok((s, _)) = l.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor.accept(s).await {
                Ok(mut tls) => {
                    let alpn = tls
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned());
                    eprintln!("tls: handshake done, alpn {alpn:?}");
                    // RFC 8737: after acme-tls/1 the server sends no application data; just close
                    let _ = tls.shutdown().await;
                }
                Err(e) => eprintln!("tls: handshake failed: {e}"),
            }
        });
    }
}

/// RFC 8737 challenge cert: self-signed, SAN = domain, critical id-pe-acmeIdentifier
/// (1.3.6.1.5.5.7.1.31) = OCTET STRING(SHA-256(key authorization)).
fn alpn_challenge_cert(domain: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate()?; // P-256 ECDSA
    let cert = params.self_signed(&key)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = aws_lc_rs::default_provider()
        .key_provider
        .load_private_key(key_der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        bail!("usage: acme-scratch <dir-url> <ca.pem> <domain> <http-port> <tls-port> <http-01|tls-alpn-01> [eab-kid eab-key-b64url]");
    }
    let (dir_url, ca, domain) = (&args[1], &args[2], args[3].clone());
    let (http_port, tls_port): (u16, u16) = (args[4].parse()?, args[5].parse()?);
    let ctype = match args[6].as_str() {
        "http-01" => ChallengeType::Http01,
        "tls-alpn-01" => ChallengeType::TlsAlpn01,
        o => bail!("unknown challenge type {o}"),
    };

    // trust only the CA that signed Pebble's own HTTPS listener
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca)? {
        roots.add(c?)?;
    }
    let http =
        || -> anyhow::Result<Box<dyn HttpClient>> { Ok(Box::new(AcmeHttp::new(roots.clone())?)) };

    let ch = Arc::new(Challenges::default());
    tokio::spawn(serve_http01(
        TcpListener::bind(("127.0.0.1", http_port)).await?,
        ch.clone(),
    ));
    let tl = TcpListener::bind(("127.0.0.1", tls_port)).await?;
    tokio::spawn({
        let ch = ch.clone();
        async move {
            if let Err(e) = serve_tls_alpn01(tl, ch).await {
                eprintln!("tls server: {e}")
            }
        }
    });

    // 1. account (EAB optional: key is the base64url HMAC key as in the Pebble config)
    let eab = match (args.get(7), args.get(8)) {
        (Some(kid), Some(k)) => Some(ExternalAccountKey::new(kid.clone(), &b64url_decode(k)?)),
        _ => None,
    };
    let (_account, credentials) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            dir_url.clone(),
            eab.as_ref(),
        )
        .await?;
    // 2. persist + restore (AccountCredentials is serde: {"id","key_pkcs8","directory"})
    let stored = serde_json::to_string(&credentials)?;
    eprintln!(
        "credentials json keys: {:?}",
        serde_json::from_str::<serde_json::Value>(&stored)?
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
    );
    let credentials: AccountCredentials = serde_json::from_str(&stored)?;
    let account = Account::builder_with_http(http()?)
        .from_credentials(credentials)
        .await?;
    eprintln!("account {}", account.id());

    // 3. order
    let identifiers = [Identifier::Dns(domain.clone())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let status = order.state().status; // state() takes &mut self in 0.8
    eprintln!("order {} status {status:?}", order.url());

    // 4. authorizations -> challenges
    let mut authzs = order.authorizations();
    while let Some(authz) = authzs.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue, // reused authz (Pebble: PEBBLE_AUTHZREUSE)
            s => bail!("authorization {s:?}"),
        }
        let ident = authz.identifier().to_string();
        let mut challenge = authz
            .challenge(ctype.clone())
            .ok_or_else(|| anyhow!("no {ctype:?} challenge"))?;
        let key_auth = challenge.key_authorization();
        match ctype {
            ChallengeType::Http01 => {
                ch.http01
                    .lock()
                    .unwrap()
                    .insert(challenge.token.clone(), key_auth.as_str().to_owned());
            }
            ChallengeType::TlsAlpn01 => {
                let cert = alpn_challenge_cert(&ident, key_auth.digest().as_ref())?;
                ch.alpn.lock().unwrap().insert(ident.clone(), cert);
            }
            _ => unreachable!(),
        }
        challenge.set_ready().await?;
    }

    // 5. poll until ready (or invalid)
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retry).await?;
    if status != OrderStatus::Ready {
        bail!("order {status:?}: {:?}", order.state().error);
    }

    // 6. finalize: instant-acme generates the key + CSR (feature "rcgen"); returns key PEM
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&retry).await?;
    ch.http01.lock().unwrap().clear();
    ch.alpn.lock().unwrap().clear();
    let n = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).count();
    println!(
        "ISSUED: {n} certs in chain, key PEM {} bytes",
        key_pem.len()
    );
    std::fs::write("/tmp/acme-scratch/chain.pem", &chain_pem)?;
    std::fs::write("/tmp/acme-scratch/key.pem", &key_pem)?;
    Ok(())
}

fn b64url_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    // tiny base64url (no padding) decoder, to avoid another dependency in the example
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => continue,
            _ => bail!("bad base64url"),
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
