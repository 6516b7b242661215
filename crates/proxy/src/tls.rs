//! TLS for the edge: certificates from files, berth's local CA, the SNI resolver and the
//! rustls `ServerConfig`.
//!
//! Certificate choice for a handshake (see [`Resolver`]):
//! SNI → file certificate (exact name, then one-label wildcard) → local-CA leaf (cached, or
//! issued on the spot when the `allow` policy accepts the host). Everything on the handshake
//! path reads `ArcSwap` snapshots; nothing blocks.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    NameConstraints, PublicKeyData,
};
use rustls::crypto::aws_lc_rs::{self, cipher_suite as cs, kx_group as kx};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// File name of the local CA's certificate inside its directory (`curl --cacert` this).
pub const ROOT_CERT_FILE: &str = "root.pem";
/// File name of the local CA's private key inside its directory (mode 0600).
pub const ROOT_KEY_FILE: &str = "root.key";

const CA_NAME: &str = "berth local CA";
/// Names the local CA may sign besides the platform's base domain (its root carries them as
/// name constraints): names that can never be someone else's on the Internet (RFC 6761's
/// `localhost`, `test`, `example`, `invalid`; RFC 8375's `home.arpa`; ICANN's `internal`). A
/// client that trusts the root therefore trusts it for nothing public but the base domain.
const LOCAL_NAMES: [&str; 6] = [
    "localhost",
    "test",
    "example",
    "invalid",
    "internal",
    "home.arpa",
];
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// A cached leaf is re-issued this long before it expires.
const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// At most this many local-CA leaves are cached; beyond it an arbitrary one is evicted.
const LEAF_CACHE_CAP: usize = 10_000;
/// TLS 1.2 session-id cache entries (TLS 1.3 resumption uses stateless tickets).
const SESSION_CACHE_SIZE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: no private key found", .0.display())]
    NoPrivateKey(PathBuf),
    #[error("{}: private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("issuing a certificate for {host:?}: {source}")]
    Issue { host: String, source: rcgen::Error },
    #[error("the local CA does not sign {0:?}: outside its name constraints (the base domain and non-public names)")]
    NotPermitted(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn invalid(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The crypto provider for everything here: aws-lc-rs, ECDHE (and the X25519+ML-KEM hybrid)
/// key exchange only, AEAD suites only.
fn provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx::X25519MLKEM768, kx::X25519, kx::SECP256R1, kx::SECP384R1],
        ..aws_lc_rs::default_provider()
    }
}

/// rustls `ServerConfig` for the HTTPS listener: TLS 1.2 + 1.3, ALPN `h2` then `http/1.1`,
/// resumption via tickets (TLS 1.3) and a session cache (TLS 1.2).
///
/// Build it once and keep it: ticket keys live in the config, and certificate changes go
/// through [`Resolver::set_files`] rather than a new config.
pub fn server_config(resolver: Arc<Resolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    // `acme-tls/1` last: only an ACME server validating TLS-ALPN-01 offers it (RFC 8737).
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    // Our order, not the client's: many clients (OpenSSL among them) list AES-256-GCM-SHA384
    // first, whose SHA-384 key schedule costs about a fifth of a full handshake here, while
    // AES-128-GCM-SHA256 runs on SHA-NI and is every bit as sound (measured: bench/README.md).
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Lower-case, without a trailing dot: the form every lookup key is stored in.
fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

// ---------------------------------------------------------------------------------------------
// Local CA
// ---------------------------------------------------------------------------------------------

/// berth's local CA: created on first start in `dir` (e.g. `<data_dir>/ca`) as `root.pem`
/// (the CA certificate) and `root.key` (mode 0600), loaded on later starts. ECDSA P-256.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
    /// The DNS subtrees of its name constraints.
    permitted: Vec<String>,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa").finish_non_exhaustive() // never print the key
    }
}

/// The CA's parameters. Only the name, key-id method and key usages matter when the CA is
/// reloaded, so they must stay stable across versions.
fn ca_params(domain: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: permitted_names(domain)
            .into_iter()
            .map(GeneralSubtree::DnsName)
            .chain([
                GeneralSubtree::IpAddress(CidrSubnet::V4([127, 0, 0, 0], [255, 0, 0, 0])),
                GeneralSubtree::IpAddress(CidrSubnet::V6(
                    std::net::Ipv6Addr::LOCALHOST.octets(),
                    [0xff; 16],
                )),
            ])
            .collect(),
        excluded_subtrees: Vec::new(),
    });
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_LIFETIME);
    Ok(params)
}

/// The DNS subtrees of the local CA's name constraints for base domain `domain`.
fn permitted_names(domain: &str) -> Vec<String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut names: Vec<String> = LOCAL_NAMES.iter().map(|n| n.to_string()).collect();
    if !domain.is_empty()
        && !names
            .iter()
            .any(|n| domain == *n || domain.ends_with(&format!(".{n}")))
    {
        names.insert(0, domain);
    }
    names
}

/// Valid from a day ago (clock skew) until `lifetime` from now.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - DAY;
    params.not_after = now + lifetime;
}

impl LocalCa {
    /// Loads the CA from `dir`, or creates it there when `root.pem` does not exist yet.
    ///
    /// `root.pem` is the commit point: the key is written (atomically) first, the certificate
    /// last, so a crash at any moment leaves either a whole CA or none.
    pub fn load_or_create(dir: &Path, domain: &str) -> Result<LocalCa, TlsError> {
        let cert_path = dir.join(ROOT_CERT_FILE);
        let key_path = dir.join(ROOT_KEY_FILE);
        if cert_path.exists() {
            let ca = Self::load(&cert_path, &key_path, domain)?;
            if ca.constrained_to(domain) {
                return Ok(ca);
            }
            // A root from before name constraints (or for another base domain) would let
            // anyone who trusts it trust berth for any name: it is set aside, never deleted.
            let mut aside = dir.as_os_str().to_owned();
            aside.push(format!(
                ".unconstrained-{}",
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs()
            ));
            fs::rename(dir, &aside).map_err(io_err(dir))?;
            tracing::warn!(
                old = %PathBuf::from(&aside).display(),
                new = %cert_path.display(),
                "the local CA's root had no name constraints for {domain}: made a new one (trust the new root.pem instead of the old)"
            );
        }
        let gen_err = |source| TlsError::Issue {
            host: CA_NAME.to_owned(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen_err)?;
        let params = ca_params(domain).map_err(gen_err)?;
        let cert = params.self_signed(&key).map_err(gen_err)?;
        let root_pem = cert.pem();

        create_private_dir(dir)?;
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(&cert_path, root_pem.as_bytes(), 0o644)?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        tracing::info!(path = %cert_path.display(), "created berth local CA");

        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            root_der: cert.der().clone(),
            root_pem,
            permitted: permitted_names(domain),
        })
    }

    fn load(cert_path: &Path, key_path: &Path, domain: &str) -> Result<LocalCa, TlsError> {
        let root_pem = fs::read_to_string(cert_path).map_err(io_err(cert_path))?;
        let root_der = CertificateDer::from_pem_slice(root_pem.as_bytes())
            .map_err(|e| invalid(cert_path, format_args!("invalid PEM: {e}")))?;
        let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| invalid(key_path, format_args!("invalid CA key: {e}")))?;

        let (_, parsed) = x509_parser::parse_x509_certificate(&root_der)
            .map_err(|e| invalid(cert_path, format_args!("cannot parse certificate: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            });
        }
        let params = ca_params(domain).map_err(|e| invalid(cert_path, e))?;
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            root_der,
            root_pem,
            permitted: permitted_names(domain),
        })
    }

    /// Does the root carry exactly the DNS name constraints berth gives a root for `domain`?
    fn constrained_to(&self, domain: &str) -> bool {
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(&self.root_der) else {
            return false;
        };
        let Ok(Some(nc)) = parsed.name_constraints() else {
            return false;
        };
        let mut got: Vec<String> = nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .filter_map(|s| match s.base {
                x509_parser::extensions::GeneralName::DNSName(n) => Some(n.to_string()),
                _ => None,
            })
            .collect();
        let mut want = permitted_names(domain);
        got.sort();
        want.sort();
        got == want
    }

    /// May the local CA sign `host`? Only names under its name constraints: the base domain
    /// and names that cannot be public (see `LOCAL_NAMES`), and loopback addresses.
    pub fn permits(&self, host: &str) -> bool {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
        {
            return ip.is_loopback();
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.permitted
            .iter()
            .any(|n| host == *n || host.ends_with(&format!(".{n}")))
    }

    /// The CA certificate, PEM-encoded (the contents of `root.pem`).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf for `host`: a DNS SAN, or an IP SAN for an IP literal (`localhost` also
    /// gets 127.0.0.1 and ::1, so clients connecting by loopback IP verify too). ECDSA P-256,
    /// valid for a year (back-dated a day), chain = [leaf, root].
    pub fn issue(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        let err = |source| TlsError::Issue {
            host: host.to_owned(),
            source,
        };
        if !self.permits(host) {
            return Err(TlsError::NotPermitted(host.to_owned()));
        }
        let mut names = vec![host.to_owned()];
        if host == "localhost" {
            names.extend(["127.0.0.1".to_owned(), "::1".to_owned()]);
        }
        let mut params = CertificateParams::new(names).map_err(err)?;
        params.distinguished_name = DistinguishedName::new();
        if host.len() <= 64 {
            params.distinguished_name.push(DnType::CommonName, host); // X.520 ub-common-name
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_LIFETIME);

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = aws_lc_rs::sign::any_supported_type(&key_der)?;
        let chain = vec![cert.der().clone(), self.root_der.clone()];
        Ok(Arc::new(CertifiedKey::new(chain, signer)))
    }
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_err(dir))
}

/// Writes `path` via `<path>.tmp` + fsync + rename, so readers see the old file or the whole
/// new one. `mode` applies on Unix.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp); // a leftover from a crash; create_new below needs it gone
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

// ---------------------------------------------------------------------------------------------
// Certificates from files
// ---------------------------------------------------------------------------------------------

/// One configured certificate: a PEM chain (leaf first) and its PEM private key
/// (PKCS#8, SEC1 or PKCS#1 RSA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFile {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// File certificates indexed by name. Built by [`load_cert_files`]; immutable once built.
#[derive(Debug, Default, Clone)]
pub struct CertIndex {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.b.example.com` is stored under `b.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first configured certificate: the answer to clients that send no SNI.
    first: Option<Arc<CertifiedKey>>,
}

impl CertIndex {
    /// The certificate for `host` (case-insensitive): an exact name first, then a wildcard
    /// for exactly one label (`a.b.example.com` matches `*.b.example.com`, nothing deeper).
    pub fn lookup(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = normalize(host);
        if let Some(cert) = self.exact.get(&host) {
            return Some(cert.clone());
        }
        match host.split_once('.') {
            Some((label, parent)) if !label.is_empty() => self.wildcard.get(parent).cloned(),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The first configured certificate, if any.
    pub fn first(&self) -> Option<Arc<CertifiedKey>> {
        self.first.clone()
    }

    /// Adds `name` → `cert`; when two files cover the same name, the first one listed wins.
    fn insert(&mut self, name: &str, cert: &Arc<CertifiedKey>) {
        let name = normalize(name);
        let (map, key) = match name.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent.to_owned()),
            None => (&mut self.exact, name),
        };
        if key.contains('*') || key.is_empty() {
            tracing::warn!(name = %key, "ignoring unsupported certificate name");
            return;
        }
        map.entry(key).or_insert_with(|| cert.clone());
    }
}

/// Loads every cert/key pair and indexes it by its SAN DNS names (the subject CN only when
/// the certificate has no SAN DNS name). Any bad file fails the whole load, naming the file.
pub fn load_cert_files(files: &[CertFile]) -> Result<CertIndex, TlsError> {
    let provider = provider();
    let mut index = CertIndex::default();
    for file in files {
        let (cert, names) = load_cert_file(file, &provider)?;
        let cert = Arc::new(cert);
        for name in &names {
            index.insert(name, &cert);
        }
        index.first.get_or_insert(cert);
    }
    Ok(index)
}

/// What berth shows of a certificate (`berth certs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The issuer's distinguished name, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: String,
}

/// Reads a certificate's validity and issuer (`None` for bytes that are no certificate).
pub fn cert_info(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    Some(CertInfo {
        not_before: at(cert.validity().not_before.timestamp()),
        not_after: at(cert.validity().not_after.timestamp()),
        issuer: cert.issuer().to_string(),
    })
}

/// Loads one PEM chain (leaf first) and its key, as for `[tls] certs`: the certificate to
/// serve and what it says of itself.
pub fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, CertInfo), TlsError> {
    let file = CertFile {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let (certified, _) = load_cert_file(&file, &provider())?;
    let info = certified
        .cert
        .first()
        .and_then(|leaf| cert_info(leaf))
        .ok_or_else(|| invalid(cert, "cannot read the certificate's validity"))?;
    Ok((Arc::new(certified), info))
}

fn load_cert_file(
    file: &CertFile,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let (cert_path, key_path) = (file.cert.as_path(), file.key.as_path());
    let cert_pem = fs::read(cert_path).map_err(io_err(cert_path))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_path, format_args!("invalid PEM: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    };
    let names = cert_names(leaf, cert_path)?;

    let key_pem = fs::read(key_path).map_err(io_err(key_path))?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key) => key,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            return Err(TlsError::NoPrivateKey(key_path.to_owned()))
        }
        Err(e) => return Err(invalid(key_path, format_args!("invalid PEM: {e}"))),
    };
    let cert = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        },
        e => invalid(key_path, format_args!("unusable private key: {e}")),
    })?;
    Ok((cert, names))
}

/// SAN DNS names of `der`, or its CN when there are none; warns when it has expired.
fn cert_names(der: &CertificateDer<'_>, path: &Path) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| invalid(path, format_args!("cannot parse certificate: {e}")))?;
    if cert.validity().time_to_expiration().is_none() {
        tracing::warn!(path = %path.display(), "certificate is expired or not yet valid");
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid(path, format_args!("bad subjectAltName: {e}")))?;
    let mut names: Vec<String> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_owned),
        );
    }
    if names.is_empty() {
        return Err(invalid(
            path,
            "certificate names no host (no SAN DNS name, no CN)",
        ));
    }
    Ok(names)
}

// ---------------------------------------------------------------------------------------------
// Resolver
// ---------------------------------------------------------------------------------------------

/// A local-CA leaf in the resolver's cache.
struct CachedLeaf {
    cert: Arc<CertifiedKey>,
    renew_after: SystemTime,
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The answers to ACME challenges in progress, which the data plane serves: HTTP-01 key
/// authorizations by token (`/.well-known/acme-challenge/<token>` on plain HTTP) and TLS-ALPN-01
/// certificates by host name (handshakes that offer only `acme-tls/1`). Written by the ACME
/// client on the control plane; read lock-free on the workers.
#[derive(Default)]
pub struct Challenges {
    http01: ArcSwap<HashMap<String, String>>,
    alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Challenges")
            .field("http01", &self.http01.load().len())
            .field("alpn", &self.alpn.load().len())
            .finish()
    }
}

impl Challenges {
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        self.http01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_string(), key_authorization.to_string());
            m
        });
    }

    pub fn remove_http01(&self, token: &str) {
        self.http01.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    /// The key authorization to answer for `token`.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01.load().get(token).cloned()
    }

    pub fn set_alpn(&self, host: &str, cert: Arc<CertifiedKey>) {
        let host = normalize(host);
        self.alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(host.clone(), cert.clone());
            m
        });
    }

    pub fn remove_alpn(&self, host: &str) {
        let host = normalize(host);
        self.alpn.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&host);
            m
        });
    }

    fn alpn(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.load().get(&normalize(host)).cloned()
    }
}

/// Told (on the handshake path: must not block) of an SNI host that has no certificate of its
/// own yet; ACME's on-demand issuance listens.
pub type MissFn = Arc<dyn Fn(&str) + Send + Sync>;

/// Predicate deciding whether the local CA may issue a leaf for a host (e.g. "a route exists").
pub type AllowFn = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The SNI → certificate resolver. Lock-free on the handshake path: the file index and the
/// leaf cache are `ArcSwap` snapshots, replaced copy-on-write.
pub struct Resolver {
    files: ArcSwap<CertIndex>,
    /// Certificates from the ACME CA, by host (between the files and the local CA).
    acme: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    challenges: Arc<Challenges>,
    /// See [`MissFn`]; set once, by the ACME client.
    on_miss: std::sync::OnceLock<MissFn>,
    local_ca: Option<LocalCa>,
    allow: AllowFn,
    leaves: ArcSwap<HashMap<String, Arc<CachedLeaf>>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("files", &self.files.load().exact.len())
            .field("local_ca", &self.local_ca.is_some())
            .field("cached_leaves", &self.leaves.load().len())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// `allow(host)` is asked (with a lower-case host) before a local-CA leaf is served or
    /// issued for an SNI name that no file certificate covers; it must be cheap and non-blocking.
    pub fn new(files: CertIndex, local_ca: Option<LocalCa>, allow: AllowFn) -> Resolver {
        Self::with_challenges(files, local_ca, allow, Arc::default())
    }

    /// Like [`Resolver::new`], answering TLS-ALPN-01 from `challenges`.
    pub fn with_challenges(
        files: CertIndex,
        local_ca: Option<LocalCa>,
        allow: AllowFn,
        challenges: Arc<Challenges>,
    ) -> Resolver {
        Resolver {
            files: ArcSwap::from_pointee(files),
            acme: ArcSwap::from_pointee(HashMap::new()),
            challenges,
            on_miss: std::sync::OnceLock::new(),
            local_ca,
            allow,
            leaves: ArcSwap::from_pointee(HashMap::new()),
        }
    }

    /// Replaces the file certificates atomically (config reload); handshakes in flight keep
    /// the snapshot they started with.
    pub fn set_files(&self, files: CertIndex) {
        self.files.store(Arc::new(files));
    }

    /// Calls `f` with every SNI host that gets no file or ACME certificate (at most one `f`).
    pub fn on_miss(&self, f: MissFn) {
        let _ = self.on_miss.set(f);
    }

    /// Does `host` have a certificate a browser trusts (a file's or the ACME CA's, not the
    /// local CA's)? Plain HTTP to such a host is redirected to HTTPS.
    pub fn has_real_cert(&self, host: &str) -> bool {
        let acme = self.acme.load();
        let files = self.files.load();
        if acme.is_empty() && files.is_empty() {
            return false;
        }
        let host = normalize(host);
        acme.contains_key(&host) || files.lookup(&host).is_some()
    }

    /// Does a certificate file cover `host` (so ACME leaves it alone)?
    pub fn file_covers(&self, host: &str) -> bool {
        self.files.load().lookup(host).is_some()
    }

    /// Serves `cert` (from the ACME CA) for `host` from the next handshake on.
    pub fn set_acme(&self, host: &str, cert: Arc<CertifiedKey>) {
        let host = normalize(host);
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(host.clone(), cert.clone());
            m
        });
    }

    /// Stops serving the ACME certificate of `host`.
    pub fn remove_acme(&self, host: &str) {
        let host = normalize(host);
        self.acme.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&host);
            m
        });
    }

    /// Which certificate a handshake for `host` gets now, and from where: `"file"`, `"acme"`
    /// or `"local"` (the local CA's, issued now if it has to be).
    pub fn serving(&self, host: &str) -> Option<(&'static str, Arc<CertifiedKey>)> {
        let host = normalize(host);
        if let Some(cert) = self.files.load().lookup(&host) {
            return Some(("file", cert));
        }
        if let Some(cert) = self.acme.load().get(&host) {
            return Some(("acme", cert.clone()));
        }
        if self.local_ca.is_none() || !(self.allow)(&host) {
            return None;
        }
        self.local_leaf(&host).map(|c| ("local", c))
    }

    fn for_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = normalize(host);
        if let Some(cert) = self.files.load().lookup(&host) {
            return Some(cert);
        }
        if let Some(cert) = self.acme.load().get(&host) {
            return Some(cert.clone());
        }
        if let Some(f) = self.on_miss.get() {
            f(&host);
        }
        if self.local_ca.is_none() || !(self.allow)(&host) {
            tracing::debug!(%host, "no certificate for SNI host");
            return None;
        }
        self.local_leaf(&host)
    }

    /// The cached leaf for `host`, or a fresh one from the local CA (then cached).
    fn local_leaf(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let ca = self.local_ca.as_ref()?;
        let now = SystemTime::now();
        if let Some(leaf) = self.leaves.load().get(host) {
            if leaf.renew_after > now {
                return Some(leaf.cert.clone());
            }
        }
        let cert = match ca.issue(host) {
            Ok(cert) => cert,
            Err(e) => {
                tracing::warn!(%host, error = %e, "local CA could not issue a certificate");
                return None;
            }
        };
        tracing::debug!(%host, "issued local-CA certificate");
        let leaf = Arc::new(CachedLeaf {
            cert: cert.clone(),
            renew_after: now + LEAF_LIFETIME - LEAF_RENEW_BEFORE,
        });
        self.leaves.rcu(|leaves| {
            let mut leaves = HashMap::clone(leaves);
            if leaves.len() >= LEAF_CACHE_CAP && !leaves.contains_key(host) {
                if let Some(evict) = leaves.keys().next().cloned() {
                    leaves.remove(&evict);
                }
            }
            leaves.insert(host.to_owned(), leaf.clone());
            leaves
        });
        Some(cert)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server validating TLS-ALPN-01 offers only `acme-tls/1`: it gets the challenge
        // certificate or nothing, never a real one.
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            return hello
                .server_name()
                .and_then(|sni| self.challenges.alpn(sni));
        }
        match hello.server_name() {
            Some(sni) => self.for_host(sni),
            // No SNI: the client connected by IP address.
            None if self.local_ca.is_some() => self.local_leaf("localhost"),
            None => self.files.load().first(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    fn allow_all() -> AllowFn {
        Arc::new(|_| true)
    }

    /// A self-signed cert for `names`, written as `<stem>.pem` / `<stem>.key` into `dir`.
    fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> (CertFile, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        let file = CertFile {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        fs::write(&file.cert, generated.cert.pem()).unwrap();
        fs::write(&file.key, generated.signing_key.serialize_pem()).unwrap();
        (file, generated.cert.pem())
    }

    struct Outcome {
        alpn: Option<Vec<u8>>,
        peer_leaf: CertificateDer<'static>,
    }

    /// A real handshake over an in-memory duplex; the client trusts only `root_pem`.
    async fn handshake(
        resolver: Arc<Resolver>,
        root_pem: &str,
        server_name: &str,
    ) -> Result<Outcome, io::Error> {
        handshake_with(resolver, root_pem, server_name, rustls::DEFAULT_VERSIONS).await
    }

    async fn handshake_with(
        resolver: Arc<Resolver>,
        root_pem: &str,
        server_name: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<Outcome, io::Error> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
            .unwrap();
        let mut client =
            ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(server_config(resolver).unwrap());
        let connector = TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from(server_name.to_owned()).unwrap();

        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut tls = acceptor.accept(server_io).await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            tls.write_all(&buf).await?;
            tls.flush().await
        };
        let client = async move {
            let mut tls = connector.connect(name, client_io).await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            assert_eq!(&buf, b"ping");
            let (_, conn) = tls.get_ref();
            Ok::<_, io::Error>(Outcome {
                alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
                peer_leaf: conn.peer_certificates().unwrap()[0].clone(),
            })
        };
        let (server, client) = tokio::join!(server, client);
        let outcome = client?;
        server?;
        Ok(outcome)
    }

    #[test]
    fn ca_is_created_once_then_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data/ca");
        let first = LocalCa::load_or_create(&dir, "localhost").unwrap();
        let second = LocalCa::load_or_create(&dir, "localhost").unwrap();
        assert_eq!(first.root_pem(), second.root_pem());
        assert_eq!(
            fs::read_to_string(dir.join(ROOT_CERT_FILE)).unwrap(),
            first.root_pem()
        );
        assert!(first.root_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(ROOT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        entries.sort();
        assert_eq!(
            entries,
            ["root.key", "root.pem"],
            "no temp files left behind"
        );

        // The reloaded CA signs leaves that chain to the original root.
        let der = CertificateDer::from_pem_slice(first.root_pem().as_bytes()).unwrap();
        assert_eq!(second.issue("x.localhost").unwrap().cert[1], der);
    }

    #[test]
    fn ca_without_root_pem_is_recreated_and_mismatched_key_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        // A crash after writing only the key: not a CA yet, so it is created afresh.
        fs::write(tmp.path().join(ROOT_KEY_FILE), "garbage").unwrap();
        let ca = LocalCa::load_or_create(tmp.path(), "localhost").unwrap();
        // A root.pem whose key is someone else's is an error naming the key file.
        let other = tempfile::tempdir().unwrap();
        LocalCa::load_or_create(other.path(), "localhost").unwrap();
        fs::copy(
            other.path().join(ROOT_KEY_FILE),
            tmp.path().join(ROOT_KEY_FILE),
        )
        .unwrap();
        let err = LocalCa::load_or_create(tmp.path(), "localhost").unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("root.key"), "{err}");
        drop(ca);
    }

    #[test]
    fn issued_leaf_has_ip_san_for_ip_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(tmp.path(), "localhost").unwrap();
        let leaf = ca.issue("127.0.0.2").unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert[0]).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let ip = x509_parser::extensions::GeneralName::IPAddress(&[127, 0, 0, 2]);
        assert_eq!(san.value.general_names, vec![ip]);
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 366);
    }

    #[test]
    fn the_local_ca_signs_only_its_domain_and_non_public_names() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&tmp.path().join("ca"), "apps.example.com").unwrap();
        for host in [
            "apps.example.com",
            "x.apps.example.com",
            "a.localhost",
            "files.test",
            "127.0.0.1",
        ] {
            assert!(ca.issue(host).is_ok(), "{host}");
        }
        for host in [
            "google.com",
            "example.com",
            "evil.apps.example.com.attacker.net",
            "10.1.2.3",
        ] {
            assert!(
                matches!(ca.issue(host), Err(TlsError::NotPermitted(_))),
                "{host}"
            );
        }
        // The root says so too, for clients that check name constraints.
        let (_, root) = x509_parser::parse_x509_certificate(&ca.root_der).unwrap();
        let nc = root.name_constraints().unwrap().unwrap();
        let names: Vec<String> = nc
            .value
            .permitted_subtrees
            .iter()
            .flatten()
            .map(|s| format!("{}", s.base))
            .collect();
        assert!(
            names.iter().any(|n| n.contains("apps.example.com")),
            "{names:?}"
        );
        // A root without them (an older berth's) is set aside and replaced, not deleted.
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(old.join(ROOT_CERT_FILE), cert.pem()).unwrap();
        std::fs::write(old.join(ROOT_KEY_FILE), key.serialize_pem()).unwrap();
        let renewed = LocalCa::load_or_create(&old, "localhost").unwrap();
        assert_ne!(renewed.root_pem(), cert.pem());
        assert!(renewed.issue("google.com").is_err());
        let aside: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("old.unconstrained-")
            })
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[tokio::test]
    async fn local_ca_leaf_verifies_and_negotiates_h2() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(tmp.path(), "localhost").unwrap();
        let root = ca.root_pem().to_owned();
        let resolver = Arc::new(Resolver::new(CertIndex::default(), Some(ca), allow_all()));

        let outcome = handshake(resolver.clone(), &root, "app.localhost")
            .await
            .unwrap();
        assert_eq!(outcome.alpn.as_deref(), Some(&b"h2"[..]));
        // The second handshake is served from the cache: the same leaf.
        let again = handshake(resolver.clone(), &root, "APP.localhost")
            .await
            .unwrap();
        assert_eq!(outcome.peer_leaf, again.peer_leaf);
        assert_eq!(resolver.leaves.load().len(), 1);

        // TLS 1.2 clients are served too.
        let tls12 = &[&rustls::version::TLS12];
        let old = handshake_with(resolver.clone(), &root, "app.localhost", tls12)
            .await
            .unwrap();
        assert_eq!(old.alpn.as_deref(), Some(&b"h2"[..]));

        // IP clients send no SNI and get the localhost leaf, which carries 127.0.0.1.
        handshake(resolver, &root, "127.0.0.1").await.unwrap();
    }

    #[tokio::test]
    async fn allow_false_means_no_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(tmp.path(), "localhost").unwrap();
        let root = ca.root_pem().to_owned();
        let allow: AllowFn =
            Arc::new(|host| host.ends_with(".localhost") && host != "denied.localhost");
        let resolver = Arc::new(Resolver::new(CertIndex::default(), Some(ca), allow));

        for denied in ["denied.localhost", "example.com"] {
            let err = handshake(resolver.clone(), &root, denied)
                .await
                .err()
                .unwrap();
            assert!(err.to_string().contains("AccessDenied"), "{err}"); // rustls: no cert resolved
        }
        assert!(resolver.leaves.load().is_empty());
        handshake(resolver, &root, "ok.localhost").await.unwrap();
    }

    #[tokio::test]
    async fn file_cert_wins_over_local_ca_and_set_files_swaps_it() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = LocalCa::load_or_create(&tmp.path().join("ca"), "localhost").unwrap();
        let ca_root = ca.root_pem().to_owned();
        let (file, file_pem) = self_signed(tmp.path(), "origin", &["app.localhost"]);
        let index = load_cert_files(std::slice::from_ref(&file)).unwrap();
        let resolver = Arc::new(Resolver::new(index, Some(ca), allow_all()));

        // The client trusts only the self-signed file cert, so success means it was served.
        let outcome = handshake(resolver.clone(), &file_pem, "app.localhost")
            .await
            .unwrap();
        let file_der = CertificateDer::from_pem_slice(file_pem.as_bytes()).unwrap();
        assert_eq!(outcome.peer_leaf, file_der);
        assert!(resolver.leaves.load().is_empty(), "local CA not consulted");
        // Other hosts still get local-CA leaves.
        handshake(resolver.clone(), &ca_root, "other.localhost")
            .await
            .unwrap();

        // After a reload without the file, the local CA takes over that host.
        resolver.set_files(CertIndex::default());
        handshake(resolver, &ca_root, "app.localhost")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn without_local_ca_no_sni_gets_first_file_cert() {
        let tmp = tempfile::tempdir().unwrap();
        let (first, first_pem) = self_signed(tmp.path(), "a", &["a.example.test", "127.0.0.1"]);
        let (second, _) = self_signed(tmp.path(), "b", &["b.example.test"]);
        let index = load_cert_files(&[first, second]).unwrap();
        let resolver = Arc::new(Resolver::new(index, None, allow_all()));
        handshake(resolver.clone(), &first_pem, "127.0.0.1")
            .await
            .unwrap();
        assert!(handshake(resolver, &first_pem, "c.example.test")
            .await
            .is_err());
    }

    #[test]
    fn wildcard_matches_exactly_one_label_and_exact_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let (wild, _) = self_signed(tmp.path(), "wild", &["*.b.example.com"]);
        let (exact, exact_pem) = self_signed(tmp.path(), "exact", &["A.b.example.com"]);
        let index = load_cert_files(&[wild, exact]).unwrap();
        let exact_der = CertificateDer::from_pem_slice(exact_pem.as_bytes()).unwrap();
        let found = |host: &str| index.lookup(host).map(|c| c.cert[0].clone());

        assert_eq!(found("a.b.example.com"), Some(exact_der.clone()));
        assert_eq!(found("A.B.EXAMPLE.COM."), Some(exact_der.clone()));
        let via_wildcard = found("x.b.example.com").unwrap();
        assert_ne!(via_wildcard, exact_der);
        assert_eq!(found("X.B.Example.Com"), Some(via_wildcard));
        assert_eq!(found("b.example.com"), None);
        assert_eq!(found("y.x.b.example.com"), None);
        assert_eq!(found(".b.example.com"), None);
        assert_eq!(found("example.com"), None);
    }

    #[test]
    fn cn_is_used_only_without_san() {
        let tmp = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "cn-only.example.test");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let file = CertFile {
            cert: tmp.path().join("c.pem"),
            key: tmp.path().join("c.key"),
        };
        fs::write(&file.cert, cert.pem()).unwrap();
        fs::write(&file.key, key.serialize_pem()).unwrap();
        let index = load_cert_files(&[file]).unwrap();
        assert!(index.lookup("cn-only.example.test").is_some());

        // With a SAN, the (default rcgen) CN is not indexed.
        let (san, _) = self_signed(tmp.path(), "san", &["san.example.test"]);
        let index = load_cert_files(&[san]).unwrap();
        assert!(index.lookup("san.example.test").is_some());
        assert!(index.lookup("rcgen self signed cert").is_none());
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (good, _) = self_signed(tmp.path(), "good", &["good.example.test"]);
        let (other, _) = self_signed(tmp.path(), "other", &["other.example.test"]);
        let text = tmp.path().join("text.pem");
        fs::write(&text, "not a pem file\n").unwrap();
        let broken = tmp.path().join("broken.pem");
        fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let missing = tmp.path().join("missing.pem");

        let cases = [
            (
                CertFile {
                    cert: text.clone(),
                    key: good.key.clone(),
                },
                "text.pem: no certificate found",
            ),
            (
                CertFile {
                    cert: broken.clone(),
                    key: good.key.clone(),
                },
                "broken.pem: invalid PEM",
            ),
            (
                CertFile {
                    cert: good.cert.clone(),
                    key: text.clone(),
                },
                "text.pem: no private key found",
            ),
            (
                CertFile {
                    cert: missing.clone(),
                    key: good.key.clone(),
                },
                "missing.pem: No such file",
            ),
            (
                CertFile {
                    cert: good.cert.clone(),
                    key: other.key.clone(),
                },
                "other.key: private key does not match",
            ),
        ];
        for (file, expected) in cases {
            let err = load_cert_files(&[good.clone(), file])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(
                err.contains(&tmp.path().display().to_string()),
                "{err:?} names the full path"
            );
        }
    }

    #[test]
    fn server_config_is_tls12_and_13_with_aead_ecdhe_and_resumption() {
        let resolver = Arc::new(Resolver::new(CertIndex::default(), None, allow_all()));
        let config = server_config(resolver).unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()]
        );
        assert!(config.ticketer.enabled());
        let provider = config.crypto_provider();
        assert_eq!(provider.cipher_suites.len(), 9);
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
            assert!(
                name.starts_with("TLS13_") || name.contains("ECDHE"),
                "{name}"
            );
        }
    }
}
