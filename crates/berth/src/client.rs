//! The HTTP side of the `berth` client commands: finding the server (flags, saved credentials,
//! or the data directory of a local `berth serve`), a small blocking client over ureq, and a
//! Server-Sent Events parser for the deploy and log streams.
//!
//! Server discovery order (see [`discover`]):
//! 1. `--url` / `--token` (or `BERTH_URL`, `BERTH_TOKEN`);
//! 2. the credentials saved by `berth login` (`$XDG_CONFIG_HOME/berth/credentials.json`, default
//!    `~/.config/berth/credentials.json`);
//! 3. on the server itself: `<data>/listen.json` (the admin listener, plain HTTP) and
//!    `<data>/admin-token` (`--data-dir`, `BERTH_DATA`, default `./berth-data`).
//!
//! A piece missing from one source (say a `--token` without `--url`) is taken from the next.
//!
//! Invariant: a data dir is used only when it is the user's own — the directory, its
//! `listen.json` and its `admin-token` owned by the CLI's effective uid and writable by no
//! group or other user ([`read_data_dir`]). Anyone who can write a directory someone runs
//! `berth` in could otherwise plant a `berth-data/listen.json` naming their own server, and get
//! the user's `BERTH_TOKEN` (or their source, on `berth deploy`). Such a data dir is an error,
//! never a fallback (`tests/cli.rs` `a_listen_json_another_user_could_write_gets_no_token`).

use crate::cli::output::for_terminal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ffi::OsStr;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Exit code: the operation succeeded.
pub const EXIT_OK: i32 = 0;
/// Exit code: the operation failed (a deploy failed, the server answered 4xx/5xx).
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage error (bad arguments or local input).
pub const EXIT_USAGE: i32 = 2;
/// Exit code: cannot reach or authenticate to the server.
pub const EXIT_UNREACHABLE: i32 = 3;

/// Connect timeout for every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-call timeout of ordinary API calls (not uploads or streams, which have none).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A failure of a client command: printed as `berth: <message>` and `hint: <hint>`, exits with
/// `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: i32,
    /// The HTTP status when the server answered with an error.
    pub status: Option<u16>,
    pub message: String,
    pub hint: Option<String>,
}

impl Error {
    pub fn new(code: i32, message: impl Into<String>) -> Error {
        Error {
            code,
            status: None,
            message: message.into(),
            hint: None,
        }
    }
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(EXIT_USAGE, message)
    }
    pub fn failed(message: impl Into<String>) -> Error {
        Error::new(EXIT_FAILED, message)
    }
    pub fn unreachable(message: impl Into<String>) -> Error {
        Error::new(EXIT_UNREACHABLE, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }
    /// Adds a hint only when there is none yet (the server's own hint wins).
    pub fn or_hint(mut self, hint: impl Into<String>) -> Error {
        if self.hint.is_none() {
            self.hint = Some(hint.into());
        }
        self
    }
    /// Is this the server's "unknown app/deploy" answer?
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404) && self.message.to_ascii_lowercase().contains("not found")
    }
    /// Prints the error to stderr and returns its exit code. The message and hint go through
    /// [`for_terminal`]: they may quote the server, an app's output or a file name.
    pub fn report(&self) -> i32 {
        let mut err = io::stderr().lock();
        let _ = writeln!(err, "berth: {}", for_terminal(&self.message));
        if let Some(h) = &self.hint {
            let _ = writeln!(err, "hint: {}", for_terminal(h));
        }
        self.code
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

const NO_SERVER_HINT: &str =
    "run `berth login URL --token T`, or run this on the server next to its berth-data directory";

// ---------------------------------------------------------------------------------------------
// Credentials and discovery
// ---------------------------------------------------------------------------------------------

/// What `berth login` saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub url: String,
    pub token: String,
    /// An extra PEM root to trust for this server (`--ca` at login time), absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/berth/credentials.json`, else `$HOME/.config/berth/credentials.json`.
/// An empty or relative `XDG_CONFIG_HOME` is ignored, as the XDG spec says.
pub fn credentials_path_from(
    xdg_config_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Option<PathBuf> {
    let base = match xdg_config_home.map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => {
            let home = PathBuf::from(home?);
            if home.as_os_str().is_empty() {
                return None;
            }
            home.join(".config")
        }
    };
    Some(base.join("berth").join("credentials.json"))
}

/// The credentials path of this process's environment.
pub fn credentials_path() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME");
    let home = std::env::var_os("HOME");
    credentials_path_from(xdg.as_deref(), home.as_deref())
}

/// Reads saved credentials; a missing file is `Ok(None)`.
pub fn load_credentials(path: &Path) -> Result<Option<Credentials>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::unreachable(format!(
                "cannot read the saved credentials {}: {e}",
                path.display()
            )))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::unreachable(format!(
            "the saved credentials {} are not valid: {e}",
            path.display()
        ))
        .with_hint("run `berth login URL --token T` again, or `berth logout` to remove them")
    })
}

/// Writes the credentials atomically (temporary file + rename): the file is mode 0600 and its
/// directory 0700.
pub fn save_credentials(path: &Path, creds: &Credentials) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "credentials.json".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        #[cfg(unix)]
        {
            // The file may have existed with looser bits: mode() only applies on creation.
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        let mut json = serde_json::to_vec_pretty(creds).map_err(io::Error::other)?;
        json.push(b'\n');
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the saved credentials; `Ok(false)` when there were none.
pub fn remove_credentials(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Where the server was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--url` (or `BERTH_URL`).
    Flags,
    /// The credentials file saved by `berth login`.
    Credentials(PathBuf),
    /// The data directory of a local `berth serve`.
    DataDir(PathBuf),
}

/// The server to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Base URL without a trailing slash, e.g. `https://berth.example.com`.
    pub url: String,
    pub token: Option<String>,
    /// An extra PEM root certificate to trust.
    pub ca: Option<PathBuf>,
    pub source: Source,
}

/// The inputs of [`discover`], explicit so that tests never touch the real environment.
#[derive(Debug, Clone, Default)]
pub struct Discovery<'a> {
    pub url: Option<&'a str>,
    pub token: Option<&'a str>,
    pub ca: Option<&'a Path>,
    /// The credentials file (None: no home directory).
    pub credentials: Option<&'a Path>,
    pub data_dir: Option<&'a Path>,
}

/// What a local server's data directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub url: String,
    pub token: Option<String>,
}

#[derive(Deserialize)]
struct ListenFile {
    #[serde(default)]
    admin: Option<String>,
}

/// Why `meta` (a data dir, or a file in one) may not be trusted by the user `uid`: owned by
/// another user, or writable by a group or by others. `None`: it is the user's own.
fn not_own(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if meta.uid() != uid {
        return Some(format!(
            "is owned by uid {}, not by you (uid {uid})",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!("is writable by other users (mode {mode:o})"));
    }
    None
}

/// The error for a data dir that is not the user's own (see the module's invariant).
fn not_own_error(path: &Path, listen: &Path, why: &str) -> Error {
    Error::unreachable(format!(
        "not using {}: {} {why}, so the server it names could be anyone's",
        listen.display(),
        path.display()
    ))
    .with_hint(
        "run `berth login URL --token T` (or pass --url), or --data-dir DIR of a berth you run; a data dir must be yours and writable only by you",
    )
}

/// `path`'s contents, opened once and checked on the opened file (a swapped path cannot slip
/// in between): `Ok(None)` when it does not exist.
fn read_own_file(path: &Path, listen: &Path, uid: u32) -> Result<Option<String>, Error> {
    let cannot = |e: io::Error| {
        Error::unreachable(format!("cannot read {}: {e}", path.display()))
            .with_hint("run as the user that runs `berth serve`, or pass --url and --token")
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(cannot(e)),
    };
    let meta = file.metadata().map_err(cannot)?;
    if let Some(why) = not_own(&meta, uid) {
        return Err(not_own_error(path, listen, &why));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
    Ok(Some(text))
}

/// Reads `<data>/listen.json` and `<data>/admin-token`. `Ok(None)`: no listen.json there. An
/// error when the directory or either file is not the user's own ([`not_own`]).
pub fn read_data_dir(data: &Path) -> Result<Option<Local>, Error> {
    read_data_dir_as(data, rustix::process::geteuid().as_raw())
}

/// [`read_data_dir`] for the user `uid`.
fn read_data_dir_as(data: &Path, uid: u32) -> Result<Option<Local>, Error> {
    let listen = data.join("listen.json");
    let Some(text) = read_own_file(&listen, &listen, uid)? else {
        return Ok(None);
    };
    let dir = std::fs::metadata(data).map_err(|e| {
        Error::unreachable(format!("cannot read {}: {e}", data.display()))
            .with_hint("run as the user that runs `berth serve`, or pass --url and --token")
    })?;
    if let Some(why) = not_own(&dir, uid) {
        return Err(not_own_error(data, &listen, &why));
    }
    let parsed: ListenFile = serde_json::from_str(&text).map_err(|e| {
        Error::unreachable(format!("{} is not valid: {e}", listen.display()))
            .with_hint("is `berth serve` running? it rewrites this file when it starts")
    })?;
    let Some(admin) = parsed.admin.filter(|a| !a.trim().is_empty()) else {
        return Err(Error::unreachable(format!(
            "the server of {} has no admin listener",
            data.display()
        ))
        .with_hint(
            "enable [server] admin in berth.toml, or pass --url https://berth.<domain> and --token",
        ));
    };
    let url = format!("http://{}", connectable(admin.trim()));
    let token = read_own_file(&data.join("admin-token"), &listen, uid)?
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    Ok(Some(Local { url, token }))
}

/// A wildcard listen address is not one to connect to: use loopback instead.
fn connectable(addr: &str) -> String {
    if let Some(port) = addr.strip_prefix("0.0.0.0:") {
        format!("127.0.0.1:{port}")
    } else if let Some(port) = addr.strip_prefix("[::]:") {
        format!("[::1]:{port}")
    } else {
        addr.to_string()
    }
}

/// `berth.example.com` → `https://berth.example.com`; trailing slashes go; other schemes are
/// refused.
pub fn normalize_url(url: &str) -> Result<String, Error> {
    let url = url.trim();
    if url.is_empty() {
        return Err(Error::usage("the server URL is empty")
            .with_hint("pass one like https://berth.example.com"));
    }
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("https://{url}")
    };
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Err(Error::usage(format!("unsupported URL {url}"))
            .with_hint("use an http:// or https:// URL, like https://berth.example.com"));
    }
    let trimmed = url.trim_end_matches('/');
    if trimmed.len() <= "http://".len() || trimmed.ends_with(':') {
        return Err(Error::usage(format!("the URL {url} has no host"))
            .with_hint("pass one like https://berth.example.com"));
    }
    Ok(trimmed.to_string())
}

/// The system's resolver, except that `localhost` and `*.localhost` are loopback without
/// asking it (RFC 6761, as browsers and curl do): `berth login https://berth.localhost:8443`
/// works where the system resolver knows only `localhost`.
#[derive(Debug, Default)]
struct LocalhostResolver {
    system: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for LocalhostResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri
            .host()
            .unwrap_or("")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if host != "localhost" && !host.ends_with(".localhost") {
            return self.system.resolve(uri, config, timeout);
        }
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("http") => 80,
            _ => 443,
        });
        let mut addrs = self.empty();
        addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        Ok(addrs)
    }
}

/// Finds the server: flags → saved credentials → the local data directory.
pub fn discover(d: &Discovery<'_>) -> Result<Target, Error> {
    let token_flag = d.token.map(str::trim).filter(|t| !t.is_empty());
    let creds = match d.credentials {
        Some(p) => load_credentials(p)?.map(|c| (p.to_path_buf(), c)),
        None => None,
    };
    if let Some(url) = d.url.filter(|u| !u.trim().is_empty()) {
        let url = normalize_url(url)?;
        let same = creds
            .as_ref()
            .filter(|(_, c)| normalize_url(&c.url).ok().as_deref() == Some(url.as_str()))
            .map(|(_, c)| c);
        let mut token = token_flag
            .map(str::to_string)
            .or_else(|| same.map(|c| c.token.clone()));
        if token.is_none() {
            if let Some(data) = d.data_dir {
                // Best effort: `--url http://127.0.0.1:8081` on the server itself.
                if let Ok(Some(local)) = read_data_dir(data) {
                    if local.url == url {
                        token = local.token;
                    }
                }
            }
        }
        let ca =
            d.ca.map(Path::to_path_buf)
                .or_else(|| same.and_then(|c| c.ca.clone()));
        return Ok(Target {
            url,
            token,
            ca,
            source: Source::Flags,
        });
    }
    if let Some((path, c)) = creds {
        return Ok(Target {
            url: normalize_url(&c.url)?,
            token: token_flag.map(str::to_string).or(Some(c.token)),
            ca: d.ca.map(Path::to_path_buf).or(c.ca),
            source: Source::Credentials(path),
        });
    }
    if let Some(data) = d.data_dir {
        if let Some(local) = read_data_dir(data)? {
            return Ok(Target {
                url: local.url,
                token: token_flag.map(str::to_string).or(local.token),
                ca: d.ca.map(Path::to_path_buf),
                source: Source::DataDir(data.to_path_buf()),
            });
        }
    }
    Err(Error::unreachable("no berth server configured").with_hint(NO_SERVER_HINT))
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// Percent-encodes one path segment (app names, hosts, ids).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A blocking client of the berth API.
pub struct Client {
    agent: ureq::Agent,
    target: Target,
}

#[derive(Deserialize)]
struct ApiError {
    error: String,
    #[serde(default)]
    hint: Option<String>,
}

/// Did the TLS handshake fail (unknown issuer, bad name…)? rustls errors often arrive wrapped
/// in an I/O error.
fn is_tls_error(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => io
            .get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
        _ => false,
    }
}

/// The PEM certificates of a file, for `--ca`.
fn read_ca(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::usage(format!("cannot read the CA file {}: {e}", path.display()))
            .with_hint("--ca (or BERTH_CA) takes a PEM file, like <data>/ca/root.pem")
    })?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(Error::usage(format!(
                    "the CA file {} is not valid PEM: {e}",
                    path.display()
                )))
            }
        }
    }
    if certs.is_empty() {
        return Err(Error::usage(format!(
            "the CA file {} holds no certificate",
            path.display()
        ))
        .with_hint(
            "--ca takes a PEM file with a BEGIN CERTIFICATE block, like <data>/ca/root.pem",
        ));
    }
    Ok(certs)
}

impl Client {
    pub fn new(target: Target) -> Result<Client, Error> {
        let mut roots: Vec<ureq::tls::Certificate<'static>> =
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()))
                .collect();
        if let Some(ca) = &target.ca {
            roots.extend(read_ca(ca)?);
        }
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
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(None)
            .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
            .user_agent(concat!("berth-cli/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            LocalhostResolver::default(),
        );
        Ok(Client { agent, target })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.url, path)
    }

    fn auth(&self) -> Option<String> {
        self.target.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// Maps a transport failure to exit 3 with a hint fitting where the server came from.
    fn transport_error(&self, e: ureq::Error) -> Error {
        let tls = is_tls_error(&e);
        let mut err = Error::unreachable(format!("cannot reach {}: {e}", self.target.url));
        err.hint = Some(if tls {
            "if the server uses berth's own CA, pass --ca <data>/ca/root.pem (or set BERTH_CA)"
                .into()
        } else {
            match &self.target.source {
                Source::DataDir(d) => format!(
                    "is `berth serve` running? (found {} in {})",
                    self.target.url,
                    d.display()
                ),
                Source::Credentials(p) => format!(
                    "is the server up? the URL comes from {} (change it with `berth login URL --token T`)",
                    p.display()
                ),
                Source::Flags => "is the server up? check --url (or BERTH_URL)".into(),
            }
        });
        err
    }

    /// Turns a 4xx/5xx answer into an [`Error`] (the server's `{"error","hint"}` when present).
    fn check(
        &self,
        res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let mut res = res.map_err(|e| self.transport_error(e))?;
        let status = res.status().as_u16();
        if status < 400 {
            return Ok(res);
        }
        let body = res.body_mut().read_to_string().unwrap_or_default();
        let (message, hint) = match serde_json::from_str::<ApiError>(&body) {
            Ok(e) => (e.error, e.hint),
            Err(_) => {
                let line = body.lines().next().unwrap_or("").trim();
                let reason = res.status().canonical_reason().unwrap_or("error");
                if line.is_empty() {
                    (format!("the server answered {status} {reason}"), None)
                } else {
                    (
                        format!("the server answered {status} {reason}: {line}"),
                        None,
                    )
                }
            }
        };
        let mut err = Error {
            code: EXIT_FAILED,
            status: Some(status),
            message,
            hint,
        };
        if status == 401 {
            err.code = EXIT_UNREACHABLE;
            if self.target.token.is_none() {
                err.message = format!("{} wants a token", self.target.url);
                err.hint = Some("pass --token (or BERTH_TOKEN), or run `berth login URL --token T`; create one with `berth tokens:create` on the server".into());
            } else {
                err.message = "the token was refused".into();
                err.hint = Some("create one with `berth tokens:create` on the server".into());
            }
        }
        Err(err)
    }

    fn json_of(&self, res: ureq::http::Response<ureq::Body>) -> Result<Value, Error> {
        if res.status().as_u16() == 204 {
            return Ok(Value::Null);
        }
        let text = res
            .into_body()
            .into_with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            Error::failed(format!(
                "the server's answer is not JSON ({e}): {}",
                text.lines().next().unwrap_or("")
            ))
            .with_hint("is the URL a berth server?")
        })
    }

    /// `req` with the bearer token, when there is one.
    fn authorized<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match self.auth() {
            Some(a) => req.header("authorization", a),
            None => req,
        }
    }

    /// `req` as an ordinary API call: with the token and the whole-call timeout.
    fn ordinary<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        self.authorized(req)
            .config()
            .timeout_global(Some(CALL_TIMEOUT))
            .build()
    }

    /// An ordinary call without a body (`method` is `GET` or `DELETE`), asking for JSON when
    /// `accept_json`; a 4xx/5xx answer is an [`Error`].
    fn call(
        &self,
        method: &str,
        path: &str,
        accept_json: bool,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let url = self.url(path);
        let mut req = match method {
            "DELETE" => self.agent.delete(url),
            _ => self.agent.get(url),
        };
        if accept_json {
            req = req.header("accept", "application/json");
        }
        self.check(self.ordinary(req).call())
    }

    /// `GET path` → JSON (`null` for an empty answer).
    pub fn get(&self, path: &str) -> Result<Value, Error> {
        let res = self.call("GET", path, true)?;
        self.json_of(res)
    }

    /// `GET path` → text.
    pub fn get_text(&self, path: &str) -> Result<String, Error> {
        self.call("GET", path, false)?
            .into_body()
            .into_with_config()
            .limit(256 * 1024 * 1024)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport_error(e))
    }

    /// `DELETE path` → JSON (`null` for 204).
    pub fn delete(&self, path: &str) -> Result<Value, Error> {
        let res = self.call("DELETE", path, true)?;
        self.json_of(res)
    }

    fn send_json(&self, method: &str, path: &str, body: &Value) -> Result<Value, Error> {
        let url = self.url(path);
        let req = match method {
            "POST" => self.agent.post(url),
            "PUT" => self.agent.put(url),
            _ => self.agent.patch(url),
        }
        .header("accept", "application/json");
        let res = self.check(self.ordinary(req).send_json(body))?;
        self.json_of(res)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send_json("POST", path, body)
    }
    pub fn put(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send_json("PUT", path, body)
    }
    pub fn patch(&self, path: &str, body: &Value) -> Result<Value, Error> {
        self.send_json("PATCH", path, body)
    }

    /// `POST path` streaming `len` bytes of `body` (no overall timeout) → JSON.
    pub fn upload(
        &self,
        path: &str,
        content_type: &str,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<Value, Error> {
        let req = self
            .agent
            .post(self.url(path))
            .header("accept", "application/json")
            .header("content-type", content_type)
            .header("content-length", len.to_string());
        let res = self.check(self.authorized(req).send(ureq::SendBody::from_reader(body)))?;
        self.json_of(res)
    }

    /// `GET path` as a stream (Server-Sent Events), without an overall timeout.
    pub fn stream(&self, path: &str) -> Result<impl BufRead + use<>, Error> {
        let req = self
            .agent
            .get(self.url(path))
            .header("accept", "text/event-stream")
            .header("cache-control", "no-cache");
        let res = self.check(self.authorized(req).call())?;
        Ok(io::BufReader::new(res.into_body().into_reader()))
    }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------------------------

/// Reads Server-Sent Events and calls `on_event(event, data)` for each one: `event` defaults to
/// `message`, `data` joins multi-line data with `\n`; comment lines (`:`) and `id`/`retry` are
/// skipped; LF, CRLF and a lone CR all end a line (the SSE spec's three). `on_event` returns false to stop reading. An event
/// left without its closing blank line at the end of the stream is still delivered. `Ok(())`
/// at the end of the stream or when told to stop; an I/O error as it came.
pub fn read_sse(
    mut reader: impl BufRead,
    mut on_event: impl FnMut(&str, &str) -> bool,
) -> io::Result<()> {
    let mut event = String::new();
    let mut data = String::new();
    let mut has_data = false;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            if has_data {
                on_event(if event.is_empty() { "message" } else { &event }, &data);
            }
            return Ok(());
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        // A lone CR ends a line too.
        for raw in buf.split(|b| *b == b'\r') {
            let line = String::from_utf8_lossy(raw);
            if line.is_empty() {
                if has_data {
                    let go_on = on_event(if event.is_empty() { "message" } else { &event }, &data);
                    if !go_on {
                        return Ok(());
                    }
                }
                event.clear();
                data.clear();
                has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => {
                    event.clear();
                    event.push_str(value);
                }
                "data" => {
                    if has_data {
                        data.push('\n');
                    }
                    data.push_str(value);
                    has_data = true;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn events(input: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        read_sse(input.as_bytes(), |e, d| {
            out.push((e.to_string(), d.to_string()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn sse_basic_and_default_event() {
        let got = events("data: hello\n\nevent: log\ndata: a line\n\n");
        assert_eq!(
            got,
            vec![
                ("message".into(), "hello".into()),
                ("log".into(), "a line".into())
            ]
        );
    }

    #[test]
    fn sse_multiline_comments_crlf() {
        let got = events(": keep-alive\r\nevent: end\r\ndata: {\"a\":1,\r\ndata:\"b\":2}\r\nid: 4\r\nretry: 10\r\n\r\n");
        assert_eq!(got, vec![("end".into(), "{\"a\":1,\n\"b\":2}".into())]);
    }

    #[test]
    fn sse_event_resets_and_empty_events_are_skipped() {
        let got = events("event: log\n\ndata: x\n\nevent: log\ndata:  two spaces\ndata\n\n");
        assert_eq!(
            got,
            vec![
                ("message".into(), "x".into()),
                ("log".into(), " two spaces\n".into())
            ]
        );
    }

    #[test]
    fn sse_lone_cr_ends_a_line() {
        let got = events("event: log\rdata: over\rdata: write\r\rdata: x\r\n\r\n");
        assert_eq!(
            got,
            vec![
                ("log".into(), "over\nwrite".into()),
                ("message".into(), "x".into())
            ]
        );
    }

    #[test]
    fn sse_unterminated_last_event_and_stop() {
        assert_eq!(
            events("event: end\ndata: {}"),
            vec![("end".into(), "{}".into())]
        );
        let mut n = 0;
        read_sse("data: 1\n\ndata: 2\n\ndata: 3\n\n".as_bytes(), |_, _| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn credentials_path_rules() {
        let p = credentials_path_from(Some(OsStr::new("/x/cfg")), Some(OsStr::new("/home/u")));
        assert_eq!(p, Some(PathBuf::from("/x/cfg/berth/credentials.json")));
        let p = credentials_path_from(Some(OsStr::new("")), Some(OsStr::new("/home/u")));
        assert_eq!(
            p,
            Some(PathBuf::from("/home/u/.config/berth/credentials.json"))
        );
        let p = credentials_path_from(Some(OsStr::new("rel")), Some(OsStr::new("/home/u")));
        assert_eq!(
            p,
            Some(PathBuf::from("/home/u/.config/berth/credentials.json"))
        );
        assert_eq!(credentials_path_from(None, None), None);
    }

    #[test]
    fn credentials_roundtrip_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/berth/credentials.json");
        let c = Credentials {
            url: "https://b.example".into(),
            token: "berth_x".into(),
            ca: None,
        };
        save_credentials(&path, &c).unwrap();
        assert_eq!(load_credentials(&path).unwrap(), Some(c.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o600);
            let m = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o700);
        }
        // Overwrite, no temporary file left behind.
        let c2 = Credentials {
            token: "berth_y".into(),
            ..c
        };
        save_credentials(&path, &c2).unwrap();
        assert_eq!(load_credentials(&path).unwrap(), Some(c2));
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(remove_credentials(&path).unwrap());
        assert!(!remove_credentials(&path).unwrap());
        assert_eq!(load_credentials(&path).unwrap(), None);
    }

    fn data_dir(admin: &str, token: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("listen.json"),
            format!(r#"{{"http":"127.0.0.1:8080","https":null,"admin":"{admin}","pid":1}}"#),
        )
        .unwrap();
        if let Some(t) = token {
            std::fs::write(d.path().join("admin-token"), format!("{t}\n")).unwrap();
        }
        // As `berth serve` leaves them, whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        for (p, mode) in [
            (d.path().to_path_buf(), 0o700),
            (d.path().join("listen.json"), 0o644),
            (d.path().join("admin-token"), 0o600),
        ] {
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        d
    }

    #[test]
    fn data_dir_must_be_the_users_own() {
        use std::os::unix::fs::PermissionsExt;
        let uid = rustix::process::geteuid().as_raw();
        let d = data_dir("127.0.0.1:9", Some("admintok"));
        let local = read_data_dir_as(d.path(), uid).unwrap().unwrap();
        assert_eq!(local.token.as_deref(), Some("admintok"));

        // Another user's files.
        let e = read_data_dir_as(d.path(), uid.wrapping_add(1)).unwrap_err();
        assert_eq!(e.code, EXIT_UNREACHABLE);
        assert!(
            e.message.contains("not using") && e.message.contains("owned by uid"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("berth login"));

        // The directory, listen.json or admin-token writable by a group or by others.
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for (path, loose, tight) in [
            (d.path().to_path_buf(), 0o777, 0o700),
            (d.path().to_path_buf(), 0o770, 0o700),
            (d.path().join("listen.json"), 0o666, 0o644),
            (d.path().join("admin-token"), 0o620, 0o600),
        ] {
            set(&path, loose);
            let e = read_data_dir_as(d.path(), uid).unwrap_err();
            assert!(
                e.message.contains("writable by other users"),
                "{}: {}",
                path.display(),
                e.message
            );
            set(&path, tight);
        }

        // Discovery: with a token of the user's own, an error rather than the named server;
        // with --url of the listener named there, its admin-token is not taken.
        set(d.path(), 0o777);
        let e = discover(&Discovery {
            token: Some("mine"),
            data_dir: Some(d.path()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.code, EXIT_UNREACHABLE);
        let t = discover(&Discovery {
            url: Some("http://127.0.0.1:9"),
            data_dir: Some(d.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.token, None);
        set(d.path(), 0o700);
    }

    #[test]
    fn discovery_order() {
        let home = tempfile::tempdir().unwrap();
        let creds_path = home.path().join("berth/credentials.json");
        let data = data_dir("0.0.0.0:8081", Some("admintok"));
        let empty = tempfile::tempdir().unwrap();

        // Nothing anywhere: exit 3 with the hint.
        let e = discover(&Discovery {
            credentials: Some(&creds_path),
            data_dir: Some(empty.path()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.code, EXIT_UNREACHABLE);
        assert!(e.hint.unwrap().contains("berth login"));

        // The data dir alone.
        let t = discover(&Discovery {
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.url, "http://127.0.0.1:8081");
        assert_eq!(t.token.as_deref(), Some("admintok"));
        assert_eq!(t.source, Source::DataDir(data.path().to_path_buf()));

        // Saved credentials win over the data dir.
        save_credentials(
            &creds_path,
            &Credentials {
                url: "https://berth.example.com/".into(),
                token: "savedtok".into(),
                ca: None,
            },
        )
        .unwrap();
        let t = discover(&Discovery {
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.url, "https://berth.example.com");
        assert_eq!(t.token.as_deref(), Some("savedtok"));
        assert_eq!(t.source, Source::Credentials(creds_path.clone()));

        // A --token alone overrides the saved token, keeps the saved URL.
        let t = discover(&Discovery {
            token: Some("flagtok"),
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.url, "https://berth.example.com");
        assert_eq!(t.token.as_deref(), Some("flagtok"));

        // Flags win over everything.
        let t = discover(&Discovery {
            url: Some("http://other:9000"),
            token: Some("flagtok"),
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.url, "http://other:9000");
        assert_eq!(t.token.as_deref(), Some("flagtok"));
        assert_eq!(t.source, Source::Flags);

        // --url alone: the token of the same saved URL, no other.
        let t = discover(&Discovery {
            url: Some("berth.example.com"),
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("savedtok"));
        let t = discover(&Discovery {
            url: Some("http://other:9000"),
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.token, None);
        // --url of the local admin listener: the admin token.
        let t = discover(&Discovery {
            url: Some("http://127.0.0.1:8081"),
            credentials: Some(&creds_path),
            data_dir: Some(data.path()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("admintok"));
    }

    #[test]
    fn data_dir_without_admin_or_token() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("listen.json"),
            r#"{"http":"127.0.0.1:80","admin":null}"#,
        )
        .unwrap();
        let e = read_data_dir(d.path()).unwrap_err();
        assert_eq!(e.code, EXIT_UNREACHABLE);
        let d = data_dir("127.0.0.1:9", None);
        let l = read_data_dir(d.path()).unwrap().unwrap();
        assert_eq!(l.url, "http://127.0.0.1:9");
        assert_eq!(l.token, None);
        std::fs::write(d.path().join("listen.json"), "not json").unwrap();
        assert!(read_data_dir(d.path()).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(normalize_url("b.example/").unwrap(), "https://b.example");
        assert_eq!(
            normalize_url("http://127.0.0.1:8081").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert_eq!(normalize_url("ftp://x").unwrap_err().code, EXIT_USAGE);
        assert!(normalize_url("https://").is_err());
        assert!(normalize_url("").is_err());
        assert_eq!(seg("www.example.com"), "www.example.com");
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn bad_ca_is_a_usage_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.pem");
        std::fs::write(&p, "nothing here").unwrap();
        let t = Target {
            url: "https://x".into(),
            token: None,
            ca: Some(p),
            source: Source::Flags,
        };
        assert_eq!(Client::new(t).err().map(|e| e.code), Some(EXIT_USAGE));
    }
}
