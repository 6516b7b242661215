//! `git push` deploys: each app's repository is served at `/git/<app>.git` (on the admin
//! listener, and so also at `https://berth.<domain>/git/<app>.git` through the proxy) by the
//! system's `git http-backend`, run as a CGI: berth never speaks the pack protocol itself.
//!
//! Authentication is HTTP Basic with an API token as the password (any user name); a bearer
//! token works too. Fetching and pushing both need a token that may act on the app
//! ([`Caller::app`]). The repository's `pre-receive` hook runs `berth hook pre-receive`
//! (`crates/berth/src/hook.rs`), which builds and deploys a push to the deploy branch through
//! the API while the push waits; a failed deploy rejects the push.
//!
//! Repositories live at `<data>/git/<app>.git` (bare, created on first access). Pushes to one
//! app are serialised: a per-app lock is held for the whole receive-pack request, so two pushes
//! cannot both deploy and then race their ref updates.
//!
//! A request body is received whole before git runs: decoded here (`Content-Encoding: gzip`
//! is inflated by berth, never by git) and spooled to an unlinked file in `<data>/tmp`, at
//! most `[server] max_upload` *decoded* bytes, else 413 and git never starts. receive-pack
//! also gets `receive.maxInputSize` = `max_upload`, so no push adds a pack larger than the
//! limit to the repository.

use crate::auth::{caller_for, Caller};
use crate::{ApiError, Ctx};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdout};
use tokio::sync::OwnedMutexGuard;

/// The `WWW-Authenticate` challenge: git asks for credentials (or fails clearly) on a 401.
const CHALLENGE: &str = "Basic realm=\"berth\"";
/// Largest CGI header block accepted from `git http-backend`.
const MAX_CGI_HEAD: usize = 64 * 1024;
/// Read size for `git http-backend`'s output.
const CHUNK: usize = 32 * 1024;
/// How long to wait for `git http-backend` to exit once its output has ended.
const EXIT_WAIT: Duration = Duration::from_secs(10);

type Res = Result<Response, Response>;

/// `GET|POST /git/{repo}/{*rest}`.
pub async fn handle(
    State(ctx): State<Ctx>,
    Path((repo, rest)): Path<(String, String)>,
    req: Request,
) -> Response {
    match serve(&ctx, &repo, &rest, req).await {
        Ok(r) | Err(r) => r,
    }
}

async fn serve(ctx: &Ctx, repo: &str, rest: &str, req: Request) -> Res {
    let caller = authenticate(ctx, req.headers()).map_err(challenge)?;
    let not_found = || {
        ApiError::new(StatusCode::NOT_FOUND, format!("no repository {repo:?}"))
            .hint("an app's repository is /git/<app>.git")
            .into_response()
    };
    let app = repo.strip_suffix(".git").ok_or_else(not_found)?;
    if engine::store::valid_app_name(app).is_err() || !valid_rest(rest) {
        return Err(not_found());
    }
    caller.app(app).map_err(IntoResponse::into_response)?;
    let deploy_branch = ctx
        .engine
        .app(app)
        .map_err(|e| ApiError::from(e).into_response())?
        .settings
        .deploy_branch;

    let query = req.uri().query().unwrap_or("").to_string();
    let push =
        rest == "git-receive-pack" || query.split('&').any(|kv| kv == "service=git-receive-pack");
    let max = ctx.engine.cfg.max_upload;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }

    let data = ctx.engine.cfg.data_dir.clone();
    let root = data.join("git");
    let tmp = data.join("tmp");
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| internal(format!("cannot create {}: {e}", tmp.display())))?;

    let Some(admin) = ctx.engine.cfg.admin else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "git needs the admin listener (the push hook calls the API there)",
        )
        .hint("set [server] admin in the config")
        .into_response());
    };
    // The body, decoded and bounded, before git or the repository is touched.
    let post = req.method() == axum::http::Method::POST;
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").to_string())
        .unwrap_or_default();
    let (head, body) = req.into_parts();
    let input = if post {
        Some(spool_body(body, &encoding, &tmp, max).await?)
    } else {
        None
    };

    let (root2, app2) = (root.clone(), app.to_string());
    let dir = tokio::task::spawn_blocking(move || ensure_repo(&root2, &app2, &deploy_branch))
        .await
        .map_err(|e| internal(e.to_string()))?
        .map_err(internal)?;
    // A receive-pack POST holds the app's push lock until its response has been sent.
    let lock = if push && post {
        Some(push_lock(&dir).lock_owned().await)
    } else {
        None
    };

    let h = &head.headers;
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("TMPDIR", &tmp)
        .env("GIT_PROJECT_ROOT", &root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{app}.git/{rest}"))
        // No push may add a pack larger than the upload limit.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "receive.maxInputSize")
        .env("GIT_CONFIG_VALUE_0", max.to_string())
        .env("REQUEST_METHOD", head.method.as_str())
        .env("QUERY_STRING", &query)
        .env("CONTENT_TYPE", text("content-type"))
        .env("GIT_PROTOCOL", text("git-protocol"))
        .env("REMOTE_USER", caller.actor())
        .env("REMOTE_ADDR", remote_addr(h))
        .env("BERTH_HOOK_API", format!("http://{}", connectable(admin)))
        .env("BERTH_HOOK_TOKEN", secret_of(h).unwrap_or_default())
        .env("BERTH_HOOK_APP", app)
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a client going away ends the hook and the
        // receive-pack under it too, not only http-backend.
        .process_group(0)
        .kill_on_drop(true);
    match input {
        Some((file, len)) => {
            cmd.env("CONTENT_LENGTH", len.to_string()).stdin(file);
        }
        None => {
            cmd.stdin(Stdio::null());
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| internal(format!("cannot run git http-backend: {e}")))?;
    let group = Group(child.id());
    let (Some(mut stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(internal("git http-backend has no pipes".into()));
    };
    tokio::spawn(log_stderr(stderr, app.to_string()));

    let (status, headers, first) = read_head(&mut stdout).await.map_err(internal)?;
    let out = Out {
        stdout,
        child,
        group,
        _lock: lock,
        first: Some(Bytes::from(first)),
        buf: vec![0; CHUNK],
        done: false,
    };
    let mut resp = Response::new(Body::from_stream(futures_util::stream::unfold(
        out,
        Out::next,
    )));
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers);
    Ok(resp)
}

/// The caller of a Basic (password = token) or Bearer `Authorization`; 401 otherwise.
fn authenticate(ctx: &Ctx, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let unauthorized = |msg: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, msg)
            .hint("use an API token as the password (any user name): `berth tokens:create`, or the admin token in <data_dir>/admin-token")
    };
    let Some(secret) = secret_of(headers).filter(|s| !s.is_empty()) else {
        return Err(unauthorized("missing credentials"));
    };
    caller_for(ctx, &secret)?.ok_or_else(|| unauthorized("invalid or revoked token"))
}

/// An error answer; a 401 carries the Basic challenge git needs to ask for credentials.
fn challenge(e: ApiError) -> Response {
    let unauthorized = e.status == StatusCode::UNAUTHORIZED;
    let mut r = e.into_response();
    if unauthorized {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
    }
    r
}

/// The token of an `Authorization: Basic` (its password) or `Bearer` header.
fn secret_of(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_string());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(rest.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (_user, pass) = text.split_once(':')?;
    Some(pass.to_string())
}

/// Standard base64 (padding optional); `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

/// The path inside the repository: plain segments only (git http-backend checks it too).
fn valid_rest(rest: &str) -> bool {
    !rest.is_empty()
        && rest.len() <= 1024
        && !rest.chars().any(|c| c.is_control() || c == '\\')
        && rest
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The client's address as the proxy reported it (`X-Forwarded-For`, last hop), for git's
/// reflog; the admin listener does not record peers.
fn remote_addr(h: &HeaderMap) -> String {
    h.get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .next_back()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "127.0.0.1".into())
}

/// A wildcard listen address is not one to connect to: loopback instead.
fn connectable(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v) if v.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v.port()))
        }
        SocketAddr::V6(v) if v.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v.port()))
        }
        a => a,
    }
}

fn internal(m: String) -> Response {
    tracing::error!(error = %m, "git endpoint");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).into_response()
}

fn too_large(max: u64) -> Response {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the push is larger than the upload limit ({max} bytes, after decoding)"),
    )
    .hint("[server] max_upload in the config")
    .into_response()
}

/// The lock of one repository's pushes.
fn push_lock(dir: &FsPath) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(dir.to_path_buf()).or_default().clone()
}

/// `<root>/<app>.git`, bare, created when missing, with `http.receivepack` on, `refs/berth`
/// hidden, the
/// `pre-receive` hook pointing at this binary and `HEAD` at the deploy branch (what a clone
/// checks out).
fn ensure_repo(root: &FsPath, app: &str, deploy_branch: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let dir = root.join(format!("{app}.git"));
    build::git::init_bare(&dir).map_err(|e| e.to_string())?;
    let head = format!("ref: refs/heads/{deploy_branch}\n");
    if build::git::valid_branch(deploy_branch)
        && std::fs::read_to_string(dir.join("HEAD")).ok().as_deref() != Some(head.as_str())
    {
        let mut cmd = build::git::git();
        cmd.arg("--git-dir")
            .arg(&dir)
            .args(["symbolic-ref", "HEAD"])
            .arg(format!("refs/heads/{deploy_branch}"));
        build::git::run(cmd, "symbolic-ref", Duration::from_secs(60)).map_err(|e| e.to_string())?;
    }
    let exe = current_exe()?;
    let script = format!(
        "#!/bin/sh\nexec {} hook pre-receive\n",
        sh_quote(&exe.to_string_lossy())
    );
    let hook = dir.join("hooks").join("pre-receive");
    if std::fs::read_to_string(&hook).ok().as_deref() == Some(script.as_str()) {
        return Ok(dir);
    }
    // Pushes over HTTP on; the refs webhooks fetch into (`refs/berth/fetched/*`) stay hidden
    // from clones and pushes.
    for (key, value) in [
        ("http.receivepack", "true"),
        ("uploadpack.hideRefs", "refs/berth"),
        ("receive.hideRefs", "refs/berth"),
    ] {
        let mut cmd = build::git::git();
        cmd.arg("--git-dir").arg(&dir).args(["config", key, value]);
        build::git::run(cmd, "config", Duration::from_secs(60)).map_err(|e| e.to_string())?;
    }
    write_executable(&hook, script.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", hook.display()))?;
    Ok(dir)
}

/// The running binary; after an upgrade replaced it in place, the new file at the same path.
fn current_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find berth's binary: {e}"))?;
    let s = exe.to_string_lossy();
    if let Some(p) = s.strip_suffix(" (deleted)") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    Ok(exe)
}

/// `s` in single quotes for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes `path` (mode 0755) through a temporary file and a rename.
fn write_executable(path: &FsPath, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(FsPath::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".pre-receive.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A spooled body over the limit (the error inside the I/O error).
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("over the upload limit")
    }
}

impl std::error::Error for TooLarge {}

/// A file that takes at most `max` bytes: one more is a [`TooLarge`] error.
struct Capped {
    file: std::fs::File,
    written: u64,
    max: u64,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            return Err(std::io::Error::other(TooLarge));
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The request body decoded (`gzip` inflated, identity as it is) into an unlinked file in
/// `tmp`, rewound: the file and its length. More than `max` decoded bytes → 413 (a gzip bomb
/// is stopped at the limit, not inflated whole); another encoding → 415; a broken gzip
/// stream → 400.
async fn spool_body(
    mut body: Body,
    encoding: &str,
    tmp: &FsPath,
    max: u64,
) -> Result<(std::fs::File, u64), Response> {
    let gzip = match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => false,
        "gzip" | "x-gzip" => true,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported"),
            )
            .hint("send the body as it is or gzip-compressed")
            .into_response())
        }
    };
    let path = tmp.join(format!(
        "git-body-{}-{}",
        std::process::id(),
        SPOOL_N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| internal(format!("cannot create {}: {e}", path.display())))?
    };
    // Unlinked at once: the file goes with its last descriptor (git's stdin), crash or not.
    let _ = std::fs::remove_file(&path);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::File, u64)> {
        use std::io::{Seek, Write};
        let mut sink = Capped {
            file,
            written: 0,
            max,
        };
        let mut sink = if gzip {
            let mut dec = flate2::write::GzDecoder::new(sink);
            while let Some(b) = rx.blocking_recv() {
                dec.write_all(&b)?;
            }
            dec.finish()?
        } else {
            while let Some(b) = rx.blocking_recv() {
                sink.write_all(&b)?;
            }
            sink
        };
        sink.flush()?;
        sink.file.rewind()?;
        Ok((sink.file, sink.written))
    });
    let mut broken = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    // The writer stopped (over the limit, a bad stream): its error says why.
                    if tx.send(data).await.is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(|e| internal(e.to_string()))?;
    if let Some(e) = broken {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body was cut: {e}"),
        )
        .into_response());
    }
    match written {
        Ok(out) => Ok(out),
        Err(e) if e.get_ref().is_some_and(|e| e.is::<TooLarge>()) => Err(too_large(max)),
        Err(e) if gzip => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the gzip request body does not decode: {e}"),
        )
        .into_response()),
        Err(e) => Err(internal(format!("cannot spool the request body: {e}"))),
    }
}

static SPOOL_N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// git http-backend's stderr, to berth's log.
async fn log_stderr(stderr: tokio::process::ChildStderr, app: String) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::warn!(app, "git http-backend: {line}");
    }
}

type Head = (StatusCode, Vec<(HeaderName, HeaderValue)>, Vec<u8>);

/// Reads the CGI header block: the status (`Status:`, default 200), the headers to pass on,
/// and the body bytes read past it.
async fn read_head(out: &mut ChildStdout) -> Result<Head, String> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        if let Some((end, skip)) = head_end(&buf) {
            let (status, headers) = parse_head(&buf[..end])?;
            return Ok((status, headers, buf[end + skip..].to_vec()));
        }
        if buf.len() > MAX_CGI_HEAD {
            return Err("git http-backend sent an oversized header block".into());
        }
        let n = out
            .read(&mut chunk)
            .await
            .map_err(|e| format!("cannot read git http-backend's answer: {e}"))?;
        if n == 0 {
            return Err("git http-backend ended without an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Where the header block ends (`\r\n\r\n` or `\n\n`) and the separator's length.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) if b < a => Some((b, 2)),
        (Some(a), _) => Some((a, 4)),
        (None, Some(b)) => Some((b, 2)),
        (None, None) => None,
    }
}

fn parse_head(head: &[u8]) -> Result<(StatusCode, Vec<(HeaderName, HeaderValue)>), String> {
    let text = String::from_utf8_lossy(head);
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("git http-backend sent a bad header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or("");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("git http-backend sent a bad status {value:?}"))?;
            continue;
        }
        // Framing is hyper's business: the body is streamed.
        if ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.push((n, v));
        }
    }
    Ok((status, headers))
}

/// The process group of git http-backend (and so of receive-pack and the hook under it).
struct Group(Option<u32>);

impl Group {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The response body: git's output after the header block. Dropped before its end (the client
/// went away), it kills git's whole process group; the push lock goes with it.
struct Out {
    stdout: ChildStdout,
    child: Child,
    group: Group,
    _lock: Option<OwnedMutexGuard<()>>,
    first: Option<Bytes>,
    buf: Vec<u8>,
    done: bool,
}

impl Out {
    async fn next(mut self) -> Option<(std::io::Result<Bytes>, Out)> {
        if self.done {
            return None;
        }
        if let Some(b) = self.first.take().filter(|b| !b.is_empty()) {
            return Some((Ok(b), self));
        }
        match self.stdout.read(&mut self.buf).await {
            Ok(0) => {
                self.done = true;
                match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
                    Ok(Ok(st)) => {
                        // Exited: nothing of the group is left to kill.
                        self.group.0 = None;
                        if !st.success() {
                            tracing::debug!("git http-backend exited with {st}");
                        }
                    }
                    _ => self.group.kill(),
                }
                None
            }
            Ok(n) => Some((Ok(Bytes::copy_from_slice(&self.buf[..n])), self)),
            Err(e) => {
                self.done = true;
                Some((Err(e), self))
            }
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        self.group.kill();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn basic_and_bearer_credentials() {
        let mut h = HeaderMap::new();
        // "git:s3cr:et" — the password may contain ':'.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Z2l0OnMzY3I6ZXQ="),
        );
        assert_eq!(secret_of(&h).as_deref(), Some("s3cr:et"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("basic Z2l0OnM"),
        );
        assert_eq!(secret_of(&h).as_deref(), Some("s"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert_eq!(secret_of(&h).as_deref(), Some("tok"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(secret_of(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(secret_of(&h), None);
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), b"hello world");
    }

    #[test]
    fn cgi_head() {
        let out =
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nno\n";
        let (end, skip) = head_end(out).unwrap();
        let (st, h) = parse_head(&out[..end]).unwrap();
        assert_eq!(st, StatusCode::NOT_FOUND);
        assert_eq!(h.len(), 1);
        assert_eq!(&out[end + skip..], b"no\n");
        let (end, skip) = head_end(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!((end, skip), (15, 2));
        assert!(parse_head(b"Status: nope").is_err());
    }

    #[test]
    fn paths_and_quoting() {
        assert!(valid_rest("info/refs"));
        assert!(valid_rest("git-receive-pack"));
        assert!(!valid_rest("../x"));
        assert!(!valid_rest("a//b"));
        assert!(!valid_rest(""));
        assert_eq!(sh_quote("/a b/it's"), "'/a b/it'\\''s'");
    }
}
