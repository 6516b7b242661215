//! The proxy's wire formats: the TOML config file (the file provider) and the JSON route list of the
//! admin API. These are the only `Deserialize` types of the proxy; `table::RouteTable` is what they
//! compile to. Value-level checks live in the `Deserialize` impls of small newtypes, so that the TOML
//! parser reports file, line and column for them; cross-route checks are in [`validate_routes`].

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole config file. Unknown keys anywhere are an error.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default, rename = "route")]
    pub routes: Vec<toml::Spanned<RouteSpec>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Plain HTTP listener; `"off"` disables it.
    pub http: Listen,
    /// TLS listener (HTTP/1.1 and h2 by ALPN); `"off"` disables it.
    pub https: Listen,
    /// Admin API and `/metrics`; loopback by default.
    pub admin: Listen,
    /// Proxy worker threads, each a current-thread runtime with its own SO_REUSEPORT socket.
    pub workers: Option<usize>,
    /// `"stdout"`, `"off"` or a file path.
    pub access_log: String,
    /// Where berth keeps its state (local CA, listen addresses, later the SQLite store).
    pub data_dir: PathBuf,
    /// The platform's base domain: apps live at `<app>.<domain>`.
    pub domain: String,
    /// Largest source bundle (compressed) a deploy may upload → 413.
    pub max_upload: Size,
    /// Host name of the control-plane API behind the proxy (an exact DNS name, stored
    /// lower-case); `None`: `berth.<domain>`.
    #[serde(deserialize_with = "api_host")]
    pub api_host: Option<String>,
    /// At most this many builds at once, across apps; `None`: the number of cores.
    pub build_concurrency: Option<usize>,
    /// What apps with `runtime = "auto"` get: `"auto"` (Docker for a source with a Dockerfile,
    /// when a daemon answers), `"process"` (never Docker; no daemon is contacted), `"docker"` or
    /// `"swarm"` (Dockerfile apps run as Docker Swarm services).
    pub runtime: String,
    /// The Docker daemon's socket (default: `$DOCKER_HOST` if unix://, else
    /// /var/run/docker.sock).
    pub docker_socket: Option<PathBuf>,
    /// A registry every swarm node can pull from (`host[:port][/path]`): Swarm apps' images
    /// are pushed there. Unset: Swarm apps run on the node berth talks to only.
    pub registry: Option<String>,
    /// Shut every app process in its jail (own user, mount namespace, seccomp, firewall
    /// rule). `false` runs apps unjailed as berth's own user: for machines that cannot build
    /// the jail, and said loudly at every start.
    pub jail: bool,
    /// The most memory an app may ask for one instance or step in its `[limits]`; default:
    /// the host's memory.
    pub app_max_memory: Option<Size>,
    /// The most processes an app may ask for one instance or step (default 4096).
    pub app_max_pids: Option<u64>,
    /// The most processes and threads all of one app's jailed processes may have together
    /// (its user's `RLIMIT_NPROC`); default: a quarter of the kernel's `pid_max`, at least
    /// `app_max_pids`. Without it, a few instances of one app could use up the host's pids.
    pub app_pids_budget: Option<u64>,
    /// The most memory all of one app's jailed processes (its instances and steps) may use
    /// together (one parent cgroup per app user); default: half the host's memory.
    pub app_memory_budget: Option<Size>,
    /// The longest `[test]`/`[build]` timeout an app may ask (default 1h): a step holds one of
    /// the shared build slots while it runs.
    pub step_max_timeout: Option<Dur>,
    /// Hosts (names or IP literals) a repository or notification URL may name although they
    /// are, or resolve to, loopback, private, link-local or other non-public addresses.
    #[serde(deserialize_with = "allow_private_hosts")]
    pub allow_private_hosts: Vec<String>,
}

/// `[server] allow_private_hosts`: host names or IP literals (IPv6 with or without brackets),
/// stored lower-case.
fn allow_private_hosts<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let hosts = Vec::<String>::deserialize(d)?;
    hosts
        .into_iter()
        .map(|h| {
            let bare = h.trim_start_matches('[').trim_end_matches(']');
            let ok = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
            if ok {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(de::Error::custom(format!(
                    "invalid host {h:?} in allow_private_hosts: expected a host name or an IP address, such as \"git.internal.example\" or \"10.0.0.5\" (no scheme, port or path)"
                )))
            }
        })
        .collect()
}

/// `[server] api_host`: validated like a route's host, but exact (no wildcard).
fn api_host<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    let h = HostPattern::parse(&s).map_err(de::Error::custom)?;
    if h.0.starts_with('*') {
        return Err(de::Error::custom(format!(
            "invalid api_host {s:?}: expected an exact DNS name such as \"berth.example.com\" (no wildcard)"
        )));
    }
    Ok(Some(h.0))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: Listen::On(SocketAddr::from(([127, 0, 0, 1], 8080))),
            https: Listen::On(SocketAddr::from(([127, 0, 0, 1], 8443))),
            admin: Listen::On(SocketAddr::from(([127, 0, 0, 1], 8081))),
            workers: None,
            access_log: "stdout".into(),
            data_dir: PathBuf::from("berth-data"),
            domain: "localhost".into(),
            max_upload: Size(512 << 20),
            api_host: None,
            build_concurrency: None,
            runtime: "auto".into(),
            docker_socket: None,
            registry: None,
            jail: true,
            app_max_memory: None,
            app_max_pids: None,
            app_pids_budget: None,
            app_memory_budget: None,
            step_max_timeout: None,
            allow_private_hosts: Vec::new(),
        }
    }
}

/// A listener address or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    On(SocketAddr),
    Off,
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "off" {
            return Ok(Listen::Off);
        }
        s.parse().map(Listen::On).map_err(|_| {
            de::Error::custom(format!(
                "invalid listen address {s:?}: expected IP:PORT such as \"127.0.0.1:8080\", or \"off\""
            ))
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate files (e.g. Cloudflare origin certificates), chosen by SNI from their SANs.
    pub certs: Vec<CertFiles>,
    /// Issue leaf certificates from berth's local CA for hosts no file covers.
    pub local_ca: bool,
    /// Certificates from an ACME CA (Let's Encrypt, ...) for every routed host no file covers.
    pub acme: Option<AcmeConfig>,
    /// Plain HTTP to a host with a certificate from a file or the ACME CA gets a 308 to HTTPS
    /// (ACME challenge paths excepted).
    pub redirect: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certs: Vec::new(),
            local_ca: true,
            acme: None,
            redirect: true,
        }
    }
}

/// `[tls.acme]` (or `[tls] acme = { ... }`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL (`https://`), e.g. Let's Encrypt's
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// The account's contact address (the CA's expiry warnings go there).
    pub email: Option<String>,
    /// External account binding, for CAs that require one (ZeroSSL, Google, ...).
    pub eab: Option<AcmeEab>,
    /// A PEM file of CA certificates to trust for the directory's HTTPS besides the public
    /// roots (a private ACME CA; Pebble in tests).
    pub ca: Option<PathBuf>,
    /// How the CA checks control of a host: `"http-01"` (default: on the HTTP listener, port
    /// 80 in production) or `"tls-alpn-01"` (on the HTTPS listener, port 443).
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Also order a certificate at the first handshake for a host only a wildcard or catch-all
    /// route knows (Caddy's on-demand TLS).
    pub on_demand: Option<OnDemandConfig>,
}

/// `[tls.acme.on_demand]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandConfig {
    /// Asked `GET <ask>?domain=<host>` before ordering: a 2xx answer approves the host.
    /// Required: without it anyone who can send a ClientHello picks the names berth orders
    /// (and uses up the CA's rate limits).
    pub ask: Option<String>,
    /// At most this many on-demand orders per minute (default 10): a flood of made-up names
    /// cannot turn into a flood of orders.
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
}

fn default_per_minute() -> u32 {
    10
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeEab {
    pub kid: String,
    /// The HMAC key as the CA gives it (base64url).
    pub hmac: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Connection and request limits; every default is documented in the README.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time to receive a whole request head (slowloris guard) → 408 and close.
    pub header_timeout: Dur,
    /// Time a keep-alive connection may sit idle between requests.
    pub idle_timeout: Dur,
    /// Longest pause while reading a request body, or while the client reads a response.
    pub body_timeout: Dur,
    /// Largest request head (request line + headers) → 431.
    pub max_header_bytes: Size,
    /// Most header fields in one request → 431.
    pub max_headers: usize,
    /// Default largest request body for routes without `max_body` → 413.
    pub max_body: Size,
    /// Open client connections across all listeners; more are closed at once.
    pub max_connections: usize,
    /// Time to connect to an upstream before trying another (or 502).
    pub upstream_connect_timeout: Dur,
    /// Time for an upstream to send its response head → 504.
    pub upstream_timeout: Dur,
    /// Idle pooled upstream connections kept per upstream and worker.
    pub upstream_idle_per_host: usize,
    /// On SIGTERM, how long in-flight requests may take before berth exits anyway.
    pub shutdown_grace: Dur,
    /// Open connections on the admin listener (the API); more are closed at once.
    pub admin_max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Dur(Duration::from_secs(10)),
            idle_timeout: Dur(Duration::from_secs(60)),
            body_timeout: Dur(Duration::from_secs(60)),
            max_header_bytes: Size(32 * 1024),
            max_headers: 100,
            max_body: Size(1024 * 1024 * 1024),
            max_connections: 20_000,
            upstream_connect_timeout: Dur(Duration::from_secs(5)),
            upstream_timeout: Dur(Duration::from_secs(60)),
            upstream_idle_per_host: 256,
            shutdown_grace: Dur(Duration::from_secs(10)),
            admin_max_connections: 256,
        }
    }
}

/// One route, as written in `[[route]]` or in the admin API's JSON.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Exact host (`example.test`), one-label wildcard (`*.apps.example.test`) or `*` for any host.
    pub host: HostPattern,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "root_path")]
    pub path: PathPrefix,
    /// Remove the matched prefix before forwarding.
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,
    /// Serve files from this directory instead of proxying.
    #[serde(default, rename = "static", skip_serializing_if = "Option::is_none")]
    pub static_root: Option<PathBuf>,
    /// Plain-HTTP requests get a 308 to the same URL on https.
    #[serde(default, skip_serializing_if = "is_false")]
    pub https_redirect: bool,
    /// `Strict-Transport-Security` on this route's HTTPS responses (opt-in, as browsers remember
    /// it): `true` for `max-age=31536000`, or the whole value
    /// (`"max-age=63072000; includeSubDomains; preload"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Hsts>,
}

/// A `Strict-Transport-Security` value, checked: `max-age=<seconds>` then optional directives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Hsts(pub String);

impl<'de> Deserialize<'de> for Hsts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            On(bool),
            Value(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::On(on) => units::parse_hsts(Some(on), None),
            Raw::Value(v) => units::parse_hsts(None, Some(v)),
        };
        parsed.map(Hsts).map_err(de::Error::custom)
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn root_path() -> PathPrefix {
    PathPrefix("/".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    /// HTTP path to GET; a 2xx or 3xx answer is healthy.
    #[serde(default = "root_path")]
    pub path: PathPrefix,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "default_health_timeout")]
    pub timeout: Dur,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_health_timeout() -> Dur {
    Dur(Duration::from_secs(1))
}

macro_rules! string_newtype {
    ($name:ident, $parse:path) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $parse(&s).map_err(de::Error::custom)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    };
}

/// A host pattern, stored lower-case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern(pub String);

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let h = s.trim_end_matches('.').to_ascii_lowercase();
        if h == "*" {
            return Ok(HostPattern(h));
        }
        let name = h.strip_prefix("*.").unwrap_or(&h);
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "invalid host {s:?}: expected a DNS name such as \"app.example.test\", \"*.apps.example.test\" (one label) or \"*\""
            ));
        }
        Ok(HostPattern(h))
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(HostPattern, HostPattern::parse);

/// A path prefix: starts with `/`, no dot segments, no `%`, `?` or `#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPrefix(pub String);

impl PathPrefix {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = !s.starts_with('/')
            || s.bytes()
                .any(|b| b <= b' ' || matches!(b, b'%' | b'?' | b'#' | b'\\' | 0x7f))
            || s.split('/').any(|seg| seg == "." || seg == "..");
        if bad {
            return Err(format!(
                "invalid path {s:?}: expected an absolute path prefix such as \"/api/\" (no spaces, dot segments, '%', '?' or '#')"
            ));
        }
        Ok(PathPrefix(s.to_string()))
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype!(PathPrefix, PathPrefix::parse);

/// An upstream address: `IP:PORT` or `localhost:PORT` (resolved to 127.0.0.1 at load time, never
/// on the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Upstream(pub SocketAddr);

impl Upstream {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
        let t = match t.strip_prefix("localhost:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => t.to_string(),
        };
        t.parse().map(Upstream).map_err(|_| {
            format!(
                "invalid upstream {s:?}: expected IP:PORT or localhost:PORT (an optional http:// before it), such as \"127.0.0.1:9000\", \"[::1]:9000\" or \"localhost:9000\""
            )
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
string_newtype!(Upstream, Upstream::parse);

/// A duration written as `500ms`, `2s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Self, String> {
        units::parse_duration(s).map(Dur)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}
string_newtype!(Dur, Dur::parse);

/// A byte size (`512`, `64KiB`, `10MiB`, `1G`, `10MB`): see `units::parse_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(s: &str) -> Result<Self, String> {
        units::parse_size(s).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if n >= m && n.is_multiple_of(m) {
                return write!(f, "{}{unit}", n / m);
            }
        }
        write!(f, "{n}")
    }
}
string_newtype!(Size, Size::parse);

/// A config error that knows where it is: `file:line:col: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {reason}", .file.display(), .line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<(usize, usize)>,
    pub reason: String,
}

/// A problem with one route of a list, by index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {index} ({host}{path}): {reason}")]
pub struct RouteError {
    pub index: usize,
    pub host: String,
    pub path: String,
    pub reason: String,
}

/// Checks that need the whole route list: each route has exactly one action and no two routes
/// share host and path.
pub fn validate_routes(routes: &[RouteSpec]) -> Result<(), RouteError> {
    let mut seen = std::collections::HashSet::new();
    for (index, r) in routes.iter().enumerate() {
        let fail = |reason: String| RouteError {
            index,
            host: r.host.0.clone(),
            path: r.path.0.clone(),
            reason,
        };
        match (r.upstreams.is_empty(), &r.static_root) {
            (true, None) => {
                return Err(fail("needs `upstreams` (proxy) or `static` (files)".into()))
            }
            (false, Some(_)) => {
                return Err(fail("has both `upstreams` and `static`; choose one".into()))
            }
            _ => {}
        }
        if r.static_root.is_some() && r.health.is_some() {
            return Err(fail(
                "`health` only applies to routes with `upstreams`".into(),
            ));
        }
        if !seen.insert((r.host.0.as_str(), r.path.0.as_str())) {
            return Err(fail("another route already has this host and path".into()));
        }
    }
    Ok(())
}

impl FileConfig {
    /// Parse and validate a config file's text. `file` names it in errors; relative paths inside
    /// (`static`, cert files, `data_dir`) are resolved against the file's directory.
    pub fn parse(text: &str, file: &Path) -> Result<FileConfig, ConfigError> {
        let at = |span: Option<std::ops::Range<usize>>, reason: String| ConfigError {
            file: file.to_path_buf(),
            line: span.map(|s| line_col(text, s.start)),
            reason,
        };
        let mut cfg: FileConfig =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;
        let specs: Vec<RouteSpec> = cfg.routes.iter().map(|r| r.get_ref().clone()).collect();
        if let Err(e) = validate_routes(&specs) {
            let span = cfg.routes.get(e.index).map(|r| r.span());
            return Err(at(
                span,
                format!("route {}{}: {}", e.host, e.path, e.reason),
            ));
        }
        if !matches!(
            cfg.server.runtime.as_str(),
            "auto" | "process" | "docker" | "swarm"
        ) {
            return Err(at(
                None,
                format!(
                    "server.runtime {:?} is not one of \"auto\", \"process\", \"docker\", \"swarm\"",
                    cfg.server.runtime
                ),
            ));
        }
        if let Some(r) = &cfg.server.registry {
            let ok = !r.is_empty()
                && !r.contains("://")
                && r.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
                && !r.starts_with(['/', ':', '.', '-']);
            if !ok {
                return Err(at(
                    None,
                    format!("server.registry {r:?} is not a registry address (hint: host[:port][/path] without a scheme, e.g. \"registry.internal:5000\")"),
                ));
            }
        }
        if let Some(acme) = &cfg.tls.acme {
            let bad = |reason: String| Err(at(None, format!("tls.acme: {reason}")));
            if !acme.directory.starts_with("https://") || acme.directory.len() <= 8 {
                return bad(format!(
                    "directory {:?} is not an https:// URL (hint: Let's Encrypt's is \"https://acme-v02.api.letsencrypt.org/directory\")",
                    acme.directory
                ));
            }
            if let Some(e) = &acme.email {
                if !e.contains('@') || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return bad(format!("email {e:?} is not an address"));
                }
            }
            if let Some(eab) = &acme.eab {
                let b64url = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
                };
                if eab.kid.is_empty() || !b64url(&eab.hmac) {
                    return bad("eab needs a kid and the base64url hmac key the CA gave".into());
                }
            }
            if let Some(od) = &acme.on_demand {
                let Some(ask) = &od.ask else {
                    return bad(
                        "on_demand needs an ask URL that approves each name (hint: ask = \"http://127.0.0.1:9000/allowed\"; GET ?domain=<host> answers 2xx for your customers' domains)"
                            .into(),
                    );
                };
                if !(ask.starts_with("http://") || ask.starts_with("https://"))
                    || ask.contains(char::is_whitespace)
                {
                    return bad(format!("on_demand.ask {ask:?} is not an http(s) URL"));
                }
                if od.per_minute == 0 {
                    return bad("on_demand.per_minute must be at least 1".into());
                }
            }
            if matches!(cfg.server.https, Listen::Off) {
                return bad("certificates need an HTTPS listener: [server] https is off".into());
            }
            if acme.challenge == AcmeChallenge::Http01 && matches!(cfg.server.http, Listen::Off) {
                return bad(
                    "http-01 needs the HTTP listener, which is off (hint: challenge = \"tls-alpn-01\")"
                        .into(),
                );
            }
        }
        if cfg.server.build_concurrency == Some(0) {
            return Err(at(
                None,
                "server.build_concurrency must be at least 1".into(),
            ));
        }
        if cfg.server.workers == Some(0) {
            return Err(at(None, "server.workers must be at least 1".into()));
        }
        if cfg.limits.admin_max_connections == 0 {
            return Err(at(
                None,
                "limits.admin_max_connections must be at least 1 (hint: [server] admin = \"off\" turns the admin listener off)".into(),
            ));
        }
        let base = file.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        Ok(cfg)
    }

    /// The embedded defaults (`berth serve` without `--config`): no routes, paths relative to `cwd`.
    pub fn embedded() -> FileConfig {
        FileConfig::default()
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.server.data_dir);
        if let Some(p) = &mut self.server.docker_socket {
            join(p);
        }
        for c in &mut self.tls.certs {
            join(&mut c.cert);
            join(&mut c.key);
        }
        if let Some(ca) = self.tls.acme.as_mut().and_then(|a| a.ca.as_mut()) {
            join(ca);
        }
        for r in &mut self.routes {
            if let Some(root) = &mut r.get_mut().static_root {
                join(root);
            }
        }
    }

    /// `berth check`: every route's static directory exists; else where the route is in
    /// `text` (the file at `file`) and which directory is missing.
    pub fn check_static_dirs(&self, text: &str, file: &Path) -> Result<(), ConfigError> {
        for r in &self.routes {
            let spec = r.get_ref();
            if let Some(root) = spec.static_root.as_ref().filter(|root| !root.is_dir()) {
                return Err(ConfigError {
                    file: file.to_path_buf(),
                    line: Some(line_col(text, r.span().start)),
                    reason: format!(
                        "route {}{}: static directory {} does not exist (hint: a relative path is relative to the config file's directory)",
                        spec.host,
                        spec.path,
                        root.display()
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn route_specs(&self) -> Vec<RouteSpec> {
        self.routes.iter().map(|r| r.get_ref().clone()).collect()
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
admin = "127.0.0.1:8081"
workers = 1
access_log = "stdout"

[tls]
certs = [{ cert = "certs/origin.pem", key = "certs/origin.key" }]

[[route]]
host = "ci.example.test"
upstreams = ["127.0.0.1:60000"]
https_redirect = true

[[route]]
host = "*.apps.example.test"
upstreams = ["127.0.0.1:9001"]

[[route]]
host = "example.test"
path = "/api/"
strip_prefix = true
upstreams = ["127.0.0.1:8000", "127.0.0.1:8001"]
balance = "least_conn"
health = { path = "/healthz", interval = "2s", timeout = "1s" }
max_body = "10MiB"

[[route]]
host = "example.test"
static = "www"
"#;

    #[test]
    fn parses_the_issue_example() {
        let cfg = FileConfig::parse(EXAMPLE, Path::new("/etc/berth/berth.toml")).unwrap();
        assert_eq!(cfg.server.workers, Some(1));
        assert_eq!(cfg.routes.len(), 4);
        let api = cfg.routes[2].get_ref();
        assert_eq!(api.balance, Balance::LeastConn);
        assert_eq!(api.max_body, Some(Size(10 << 20)));
        assert_eq!(
            api.health.as_ref().unwrap().interval.0,
            Duration::from_secs(2)
        );
        assert_eq!(
            cfg.routes[3].get_ref().static_root.as_deref(),
            Some(Path::new("/etc/berth/www"))
        );
        assert_eq!(
            cfg.tls.certs[0].cert,
            Path::new("/etc/berth/certs/origin.pem")
        );
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let cases = [
            ("[server]\nhttp = \"nope\"\n", 2, "invalid listen address"),
            (
                "[[route]]\nhost = \"a.test\"\nupstream = [\"127.0.0.1:1\"]\n",
                3,
                "unknown field `upstream`",
            ),
            (
                "[[route]]\nhost = \"a.test\"\nupstreams = [\"1.2.3.4\"]\n",
                3,
                "invalid upstream",
            ),
            (
                "[[route]]\nhost = \"a..test\"\nstatic = \"www\"\n",
                2,
                "invalid host",
            ),
            ("[limits]\nheader_timeout = \"10\"\n", 2, "invalid duration"),
            ("[limits]\nmax_body = \"10 parsecs\"\n", 2, "invalid size"),
            ("\n\n[[route]]\nhost = \"a.test\"\n", 3, "needs `upstreams`"),
            ("[bogus]\n", 1, "unknown field `bogus`"),
            (
                "[[route]]\nhost = \"a.test\"\npath = \"/x/../y\"\nstatic = \"w\"\n",
                3,
                "invalid path",
            ),
        ];
        for (text, line, reason) in cases {
            let err = FileConfig::parse(text, Path::new("b.toml")).unwrap_err();
            assert_eq!(err.line.map(|l| l.0), Some(line), "{text:?}: {err}");
            assert!(err.to_string().contains(reason), "{text:?}: {err}");
            assert!(err.to_string().starts_with("b.toml:"), "{err}");
        }
    }

    #[test]
    fn duplicate_routes_are_refused() {
        let text = "[[route]]\nhost = \"a.test\"\nstatic = \"w\"\n[[route]]\nhost = \"A.test\"\nstatic = \"v\"\n";
        let err = FileConfig::parse(text, Path::new("b.toml")).unwrap_err();
        assert!(err.to_string().contains("already has this host"), "{err}");
    }

    #[test]
    fn route_json_round_trips() {
        let cfg = FileConfig::parse(EXAMPLE, Path::new("/x/b.toml")).unwrap();
        let specs = cfg.route_specs();
        let json = serde_json::to_string(&specs).unwrap();
        let back: Vec<RouteSpec> = serde_json::from_str(&json).unwrap();
        assert_eq!(specs, back);
    }
}
