//! Static file server: the nginx role.
//!
//! [`serve`] maps a raw request path onto a file below a root directory and builds a
//! [`LocalResponse`] for it: index files, directory redirects, MIME types, validators
//! (`ETag`, `Last-Modified`) with `304` handling, single byte ranges, and precompressed
//! `.br` / `.gz` siblings.
//!
//! It is synchronous on purpose: it runs on the proxy's current-thread worker and makes
//! a handful of page-cache-fast `std::fs` syscalls, as nginx does. Small bodies are read
//! into memory; larger ones are handed back as an open file for the caller to stream.
//!
//! Path safety: the path is percent-decoded exactly once; NUL, backslash and invalid
//! UTF-8 are rejected (400); dot segments are resolved lexically and climbing above the
//! root is rejected (400); finally every file is opened with `openat2(RESOLVE_BENEATH)`
//! relative to the root's directory handle, so the kernel refuses any resolution — `..`
//! or a symlink, at any depth — that would leave the root (404). Dotfiles and dot directories
//! (any segment starting with `.`, but the top-level `.well-known`) answer 404 as if absent,
//! however the path was spelled (`%2eenv` decodes to `.env` first). One open and one fstat
//! per file: no canonicalize, no per-component readlink. Responses never mention
//! filesystem paths.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, StatusCode};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

/// Bodies up to this size are read into memory; larger ones are returned as [`LocalBody::File`].
const SMALL_BODY: u64 = 64 * 1024;

/// Precompressed siblings, in order of preference: (content-coding, file suffix).
const SIBLINGS: [(&str, &str); 2] = [("br", ".br"), ("gzip", ".gz")];

/// Characters escaped when a path segment is written back into a `Location` header.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Request header values the static server looks at (raw bytes as received; None when absent).
#[derive(Debug, Default, Clone, Copy)]
pub struct Conditional<'a> {
    pub if_none_match: Option<&'a [u8]>,
    pub if_modified_since: Option<&'a [u8]>,
    pub range: Option<&'a [u8]>,
    pub if_range: Option<&'a [u8]>,
    pub accept_encoding: Option<&'a [u8]>,
}

/// A response berth makes itself (static files, errors, redirects).
#[derive(Debug)]
pub struct LocalResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: LocalBody,
}

/// The body of a [`LocalResponse`]. `Content-Length` is always set in the headers, also
/// for HEAD responses (whose body is `Empty`).
#[derive(Debug)]
pub enum LocalBody {
    Empty,
    Bytes(Bytes),
    /// Send `len` bytes of `file` starting at `offset`.
    File {
        file: File,
        offset: u64,
        len: u64,
    },
}

/// A small `text/plain` response (error pages). A trailing newline is added when missing.
pub fn text_response(status: StatusCode, msg: &str) -> LocalResponse {
    let mut body = String::with_capacity(msg.len() + 1);
    body.push_str(msg);
    if !body.ends_with('\n') {
        body.push('\n');
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    LocalResponse {
        status,
        headers,
        body: LocalBody::Bytes(Bytes::from(body)),
    }
}

/// `"404 Not Found\n"` and friends.
fn error(status: StatusCode) -> LocalResponse {
    let reason = status.canonical_reason().unwrap_or("Error");
    text_response(status, &format!("{} {reason}", status.as_u16()))
}

/// Serve `path` from `root`. `path` is the request path exactly as received on the wire (still
/// percent-encoded, may contain a query string which is ignored). HEAD gets the GET headers
/// (including `Content-Length`) with an empty body.
/// A static site's root directory, opened once; every lookup is resolved beneath it.
#[derive(Debug)]
pub struct Root {
    pub path: PathBuf,
    dir: OwnedFd,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        use rustix::fs::{Mode, OFlags};
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir = rustix::fs::open(path, flags, Mode::empty())?;
        Ok(Root {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Open `rel` (no leading `/`; `"."` for the root) for reading, never leaving the root.
    /// `O_NONBLOCK` so that a FIFO cannot block the worker; regular files ignore it.
    fn open_beneath(&self, rel: &str) -> Result<(File, Metadata), StatusCode> {
        use rustix::fs::{Mode, OFlags, ResolveFlags};
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY;
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let file = match rustix::fs::openat2(&self.dir, rel, flags, Mode::empty(), resolve) {
            Ok(fd) => File::from(fd),
            // EXDEV: resolution would leave the root, or met an absolute symlink (which
            // RESOLVE_BENEATH refuses even when it points inside). Decide the rare case the
            // slow way: canonicalize and require the result below the canonical root.
            Err(rustix::io::Errno::XDEV) => self.open_canonical(rel)?,
            Err(e) => return Err(io_status(e.into())),
        };
        let meta = file.metadata().map_err(io_status)?;
        Ok((file, meta))
    }

    fn open_canonical(&self, rel: &str) -> Result<File, StatusCode> {
        let root = std::fs::canonicalize(&self.path).map_err(io_status)?;
        let canon = std::fs::canonicalize(self.path.join(rel)).map_err(io_status)?;
        if !canon.starts_with(&root) {
            return Err(StatusCode::NOT_FOUND);
        }
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(canon)
            .map_err(io_status)
    }
}

pub fn serve(root: &Root, method: &Method, path: &[u8], cond: Conditional<'_>) -> LocalResponse {
    let head = method == Method::HEAD;
    if !head && method != Method::GET {
        let mut resp = error(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let mut resp = serve_file(root, head, path, &cond).unwrap_or_else(error);
    if head {
        resp.body = LocalBody::Empty;
    }
    resp
}

fn serve_file(
    root: &Root,
    head: bool,
    raw: &[u8],
    cond: &Conditional<'_>,
) -> Result<LocalResponse, StatusCode> {
    let (raw_path, query) = match raw.iter().position(|&b| b == b'?') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    let (segments, dir_request) = normalize(raw_path)?;
    if is_hidden(&segments) {
        // As if absent: a 403 would confirm the file exists.
        return Err(StatusCode::NOT_FOUND);
    }

    let mut rel = if segments.is_empty() {
        String::from(".")
    } else {
        segments.join("/")
    };
    let (mut file, mut meta) = root.open_beneath(&rel)?;
    if meta.is_dir() {
        if !dir_request {
            return redirect(&segments, query);
        }
        rel.push_str("/index.html");
        (file, meta) = root.open_beneath(&rel)?;
    } else if dir_request {
        return Err(StatusCode::NOT_FOUND); // "/file.txt/"
    }
    if !meta.is_file() {
        return Err(StatusCode::NOT_FOUND); // directories, FIFOs, devices, sockets
    }

    let mut headers = HeaderMap::with_capacity(8);

    // Precompressed siblings (`rel` is the requested name, like nginx's `$uri.gz`), looked
    // for only when the client accepts the coding: the common request costs no extra syscall.
    let mut coding = None;
    for (name, suffix) in SIBLINGS {
        if !accepts(cond.accept_encoding, name) {
            continue;
        }
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if let Ok((f, m)) = root.open_beneath(&format!("{rel}{suffix}")) {
            if m.is_file() {
                (file, meta) = (f, m);
                coding = Some(name);
                break;
            }
        }
    }
    if let Some(name) = coding {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(name));
    }

    let len = meta.len();
    let mtime = meta.modified().ok();
    let v = validators(&rel, &meta, coding);
    headers.insert(header::CONTENT_TYPE, v.content_type);
    let etag = v.etag.clone();
    let etag = etag.to_str().unwrap_or_default();
    headers.insert(header::ETAG, v.etag);
    if let Some(lm) = v.last_modified {
        headers.insert(header::LAST_MODIFIED, lm);
    }

    if not_modified(cond, etag, mtime) {
        return Ok(LocalResponse {
            status: StatusCode::NOT_MODIFIED,
            headers,
            body: LocalBody::Empty,
        });
    }

    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, offset, body_len) = match select_range(cond, head, etag, mtime, len) {
        ByteRange::Full => (StatusCode::OK, 0, len),
        ByteRange::Part(first, last) => {
            let value = format!("bytes {first}-{last}/{len}");
            headers.insert(header::CONTENT_RANGE, header_value(&value)?);
            (StatusCode::PARTIAL_CONTENT, first, last - first + 1)
        }
        ByteRange::Unsatisfiable => {
            let mut resp = error(StatusCode::RANGE_NOT_SATISFIABLE);
            let value = format!("bytes */{len}");
            resp.headers
                .insert(header::CONTENT_RANGE, header_value(&value)?);
            return Ok(resp);
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));

    let body = if head || body_len == 0 {
        LocalBody::Empty
    } else {
        open_body(file, offset, body_len)?
    };
    Ok(LocalResponse {
        status,
        headers,
        body,
    })
}

/// Percent-decodes `raw` once and resolves dot segments. Returns the segments and whether
/// the path names a directory (trailing `/`, `.` or `..`).
fn normalize(raw: &[u8]) -> Result<(Vec<String>, bool), StatusCode> {
    if raw.first() != Some(&b'/') || raw.contains(&0) || raw.contains(&b'\\') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let decoded: Vec<u8> = percent_decode(raw).collect();
    if decoded.contains(&0) || decoded.contains(&b'\\') {
        return Err(StatusCode::BAD_REQUEST);
    }
    let decoded = String::from_utf8(decoded).map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut segments: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(StatusCode::BAD_REQUEST)?;
            }
            _ => segments.push(seg.to_owned()),
        }
    }
    let last = decoded.rsplit('/').next().unwrap_or("");
    Ok((segments, matches!(last, "" | "." | "..")))
}

/// A dotfile or anything in a dot directory (`.env`, `.git/config`, `.htpasswd`,
/// `sub/.secret`): never served. The one exception is the site's top-level `.well-known`
/// directory (RFC 8615), though not a dotfile inside it.
fn is_hidden(segments: &[String]) -> bool {
    segments
        .iter()
        .enumerate()
        .any(|(i, s)| s.starts_with('.') && !(i == 0 && s == ".well-known"))
}

fn io_status(e: io::Error) -> StatusCode {
    match e.kind() {
        io::ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::NOT_FOUND,
    }
}

/// 308 to the same (normalized) path plus `/`, keeping the query. Built from the decoded
/// segments, so it always starts with exactly one `/` (never a `//host` redirect).
fn redirect(segments: &[String], query: Option<&[u8]>) -> Result<LocalResponse, StatusCode> {
    let mut location = String::from("/");
    for seg in segments {
        location.extend(utf8_percent_encode(seg, SEGMENT));
        location.push('/');
    }
    let mut location = location.into_bytes();
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        location.push(b'?');
        location.extend_from_slice(q);
    }
    let value = HeaderValue::from_bytes(&location).map_err(|_| StatusCode::BAD_REQUEST)?;
    let mut resp = error(StatusCode::PERMANENT_REDIRECT);
    resp.headers.insert(header::LOCATION, value);
    Ok(resp)
}

fn content_type(path: &Path) -> HeaderValue {
    let Some(mime) = mime_guess::from_path(path).first() else {
        return HeaderValue::from_static("application/octet-stream");
    };
    let essence = mime.essence_str();
    let text = mime.type_() == mime_guess::mime::TEXT || essence == "application/javascript";
    let value = if text {
        format!("{essence}; charset=utf-8")
    } else {
        essence.to_owned()
    };
    HeaderValue::from_str(&value)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

/// `body_len` bytes from `offset` of the open file: read into memory (one pread) when small,
/// otherwise the file itself for the caller to stream.
fn open_body(file: File, offset: u64, body_len: u64) -> Result<LocalBody, StatusCode> {
    if body_len > SMALL_BODY {
        return Ok(LocalBody::File {
            file,
            offset,
            len: body_len,
        });
    }
    let mut buf = vec![0u8; usize::try_from(body_len).unwrap_or(0)];
    file.read_exact_at(&mut buf, offset)
        .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(LocalBody::Bytes(Bytes::from(buf)))
}

fn header_value(s: &str) -> Result<HeaderValue, StatusCode> {
    HeaderValue::from_str(s).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

fn parse_date(raw: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(raw).ok()?.trim()).ok()
}

/// A strong validator from mtime (with nanoseconds) and size, like nginx's `"mtime-size"`.
/// The header values that depend only on which file (and which version of it) is served.
#[derive(Clone)]
struct Validators {
    content_type: HeaderValue,
    etag: HeaderValue,
    last_modified: Option<HeaderValue>,
}

/// Identity and version of an open file: device, inode, mtime (s, ns), size, coding.
type FileKey = (u64, u64, i64, i64, u64, Option<&'static str>);

thread_local! {
    /// Formatting an ETag, an HTTP date and a MIME type is most of the user-space work of a
    /// small file, so each worker keeps them per file version (bounded; cleared when full). A
    /// changed file has a new mtime or size, hence a new key: nothing is ever served stale.
    static VALIDATORS: std::cell::RefCell<std::collections::HashMap<FileKey, (Box<str>, Validators)>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

const VALIDATOR_CACHE_MAX: usize = 4096;

fn validators(rel: &str, meta: &Metadata, coding: Option<&'static str>) -> Validators {
    use std::os::unix::fs::MetadataExt;
    let key = (
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.len(),
        coding,
    );
    let ext = Path::new(rel)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("");
    let hit = VALIDATORS.with(|c| {
        c.borrow()
            .get(&key)
            .filter(|(e, _)| &**e == ext)
            .map(|(_, v)| v.clone())
    });
    if let Some(v) = hit {
        return v;
    }
    let mtime = meta.modified().ok();
    let v = Validators {
        content_type: content_type(Path::new(rel)),
        etag: HeaderValue::from_str(&make_etag(mtime, meta.len(), coding))
            .unwrap_or_else(|_| HeaderValue::from_static("\"0\"")),
        last_modified: mtime.and_then(|t| HeaderValue::from_str(&httpdate::fmt_http_date(t)).ok()),
    };
    VALIDATORS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= VALIDATOR_CACHE_MAX {
            c.clear();
        }
        c.insert(key, (ext.into(), v.clone()));
    });
    v
}

fn make_etag(mtime: Option<SystemTime>, len: u64, coding: Option<&str>) -> String {
    let since = mtime
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let suffix = match coding {
        Some("br") => "-br",
        Some(_) => "-gz",
        None => "",
    };
    format!(
        "\"{:x}-{:x}-{len:x}{suffix}\"",
        since.as_secs(),
        since.subsec_nanos()
    )
}

/// `If-None-Match` (weak comparison) wins over `If-Modified-Since`.
fn not_modified(cond: &Conditional<'_>, etag: &str, mtime: Option<SystemTime>) -> bool {
    if let Some(list) = cond.if_none_match {
        return etag_list_matches(list, etag);
    }
    let since = cond
        .if_modified_since
        .and_then(parse_date)
        .and_then(unix_secs);
    match (since, mtime.and_then(unix_secs)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// Weak comparison of our tag against a comma-separated list of entity tags (or `*`).
fn etag_list_matches(list: &[u8], etag: &str) -> bool {
    let mut in_quotes = false;
    list.split(|&b| {
        in_quotes ^= b == b'"';
        b == b',' && !in_quotes
    })
    .map(|item| {
        let item = item.trim_ascii();
        item.strip_prefix(b"W/").unwrap_or(item)
    })
    .any(|item| item == b"*" || item == etag.as_bytes())
}

enum ByteRange {
    Full,
    Part(u64, u64), // first..=last
    Unsatisfiable,
}

/// Applies `Range` / `If-Range` (GET only; RFC 9110 defines ranges for GET alone).
fn select_range(
    cond: &Conditional<'_>,
    head: bool,
    etag: &str,
    mtime: Option<SystemTime>,
    len: u64,
) -> ByteRange {
    let Some(range) = cond.range.filter(|_| !head) else {
        return ByteRange::Full;
    };
    if let Some(if_range) = cond.if_range {
        let v = if_range.trim_ascii();
        let fresh = if v.starts_with(b"\"") {
            v == etag.as_bytes() // strong comparison; weak tags (W/"...") never match
        } else if v.starts_with(b"W/") {
            false
        } else {
            let date = parse_date(v).and_then(unix_secs);
            date.is_some() && date == mtime.and_then(unix_secs)
        };
        if !fresh {
            return ByteRange::Full;
        }
    }
    parse_range(range, len).unwrap_or(ByteRange::Full)
}

/// One `bytes=` range; `None` (serve the full body) for malformed or multiple ranges.
fn parse_range(raw: &[u8], len: u64) -> Option<ByteRange> {
    let s = std::str::from_utf8(raw).ok()?;
    let (unit, spec) = s.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let n = digits(last)?;
        if n == 0 || len == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        return Some(ByteRange::Part(len.saturating_sub(n), len - 1));
    }
    let first = digits(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(digits(last)?)
    };
    if last.is_some_and(|l| l < first) {
        return None;
    }
    if first >= len {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Part(
        first,
        last.unwrap_or(u64::MAX).min(len - 1),
    ))
}

/// A non-empty run of ASCII digits; saturates instead of overflowing.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Whether `Accept-Encoding` allows `coding` (an explicit entry wins over `*`; q=0 refuses).
fn accepts(header: Option<&[u8]>, coding: &str) -> bool {
    let Some(value) = header.and_then(|h| std::str::from_utf8(h).ok()) else {
        return false;
    };
    let mut star = false;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q_ok = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .is_none_or(|(_, v)| v.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
        if name.eq_ignore_ascii_case(coding)
            || (coding == "gzip" && name.eq_ignore_ascii_case("x-gzip"))
        {
            return q_ok;
        }
        if name == "*" {
            star = q_ok;
        }
    }
    star
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::symlink;
    use std::time::Duration;
    use tempfile::TempDir;

    const SECRET: &str = "TOP-SECRET";
    const HELLO: &[u8] = b"hello world";

    /// tmp/www is the root; tmp/outside holds a secret that must never be served.
    struct Site {
        tmp: TempDir,
        big: Vec<u8>,
    }

    impl Site {
        fn root(&self) -> PathBuf {
            self.tmp.path().join("www")
        }
    }

    fn site() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let www = tmp.path().join("www");
        let out = tmp.path().join("outside");
        for d in ["dir", "empty_dir", "a b", "evil.com", "evil_index"] {
            fs::create_dir_all(www.join(d)).unwrap();
        }
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("secret.txt"), SECRET).unwrap();
        fs::write(out.join("index.html"), SECRET).unwrap();
        fs::write(www.join("index.html"), "<h1>root</h1>").unwrap();
        fs::write(www.join("a.txt"), HELLO).unwrap();
        fs::write(www.join(".hidden"), "hidden").unwrap();
        fs::write(www.join("empty.txt"), "").unwrap();
        fs::write(www.join("README"), "no extension").unwrap();
        fs::write(www.join("pic.png"), [0x89, b'P', b'N', b'G']).unwrap();
        fs::write(www.join("dir/index.html"), "<h1>dir</h1>").unwrap();
        fs::write(www.join("a b/index.html"), "space").unwrap();
        fs::write(www.join("%2e%2e"), "literal name").unwrap();
        let big: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
        fs::write(www.join("big.bin"), &big).unwrap();
        fs::write(www.join("style.css"), "body{color:red}").unwrap();
        fs::write(www.join("style.css.br"), "BROTLI").unwrap();
        fs::write(www.join("style.css.gz"), "GZIPPED-BYTES").unwrap();
        fs::write(www.join("app.js"), "console.log(1)").unwrap();
        fs::write(www.join("app.js.gz"), "GZ-JS").unwrap();
        fs::write(www.join("leak.css"), "leak").unwrap();
        symlink(out.join("secret.txt"), www.join("leak.css.gz")).unwrap();
        symlink(out.join("secret.txt"), www.join("secret_link.txt")).unwrap();
        symlink(&out, www.join("link_out")).unwrap();
        symlink(www.join("a.txt"), www.join("inside_link.txt")).unwrap();
        symlink("dir", www.join("dir_link")).unwrap();
        symlink(out.join("index.html"), www.join("evil_index/index.html")).unwrap();
        Site { tmp, big }
    }

    fn req(root: &Path, method: Method, path: &str, cond: Conditional<'_>) -> LocalResponse {
        serve(&Root::open(root).unwrap(), &method, path.as_bytes(), cond)
    }

    fn get(root: &Path, path: &str) -> LocalResponse {
        req(root, Method::GET, path, Conditional::default())
    }

    fn hdr(resp: &LocalResponse, name: header::HeaderName) -> Option<String> {
        resp.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn body(resp: LocalResponse) -> Vec<u8> {
        match resp.body {
            LocalBody::Empty => Vec::new(),
            LocalBody::Bytes(b) => b.to_vec(),
            LocalBody::File {
                mut file,
                offset,
                len,
            } => {
                file.seek(SeekFrom::Start(offset)).unwrap();
                let mut buf = Vec::new();
                file.take(len).read_to_end(&mut buf).unwrap();
                assert_eq!(buf.len() as u64, len);
                buf
            }
        }
    }

    /// Asserts Content-Length matches the body and returns the body.
    fn checked_body(resp: LocalResponse) -> Vec<u8> {
        let cl: usize = hdr(&resp, header::CONTENT_LENGTH).unwrap().parse().unwrap();
        let b = body(resp);
        assert_eq!(cl, b.len());
        b
    }

    #[test]
    fn only_get_and_head() {
        let s = site();
        for m in [
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
        ] {
            let r = req(&s.root(), m, "/a.txt", Conditional::default());
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(hdr(&r, header::ALLOW).unwrap(), "GET, HEAD");
            assert_eq!(checked_body(r), b"405 Method Not Allowed\n");
        }
    }

    #[test]
    fn get_small_file_is_bytes() {
        let s = site();
        let r = get(&s.root(), "/a.txt");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            hdr(&r, header::CONTENT_TYPE).unwrap(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(hdr(&r, header::ACCEPT_RANGES).unwrap(), "bytes");
        assert!(hdr(&r, header::VARY).is_none());
        assert!(matches!(r.body, LocalBody::Bytes(_)));
        assert_eq!(checked_body(r), HELLO);
    }

    #[test]
    fn get_large_file_is_file() {
        let s = site();
        let r = get(&s.root(), "/big.bin");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(hdr(&r, header::CONTENT_LENGTH).unwrap(), "102400");
        assert!(matches!(
            r.body,
            LocalBody::File {
                offset: 0,
                len: 102400,
                ..
            }
        ));
        assert_eq!(checked_body(r), s.big);
    }

    #[test]
    fn exactly_64k_is_bytes() {
        let s = site();
        fs::write(s.root().join("64k.bin"), vec![7u8; 64 * 1024]).unwrap();
        let r = get(&s.root(), "/64k.bin");
        assert!(matches!(r.body, LocalBody::Bytes(_)));
        assert_eq!(checked_body(r).len(), 64 * 1024);
    }

    #[test]
    fn empty_file() {
        let s = site();
        let r = get(&s.root(), "/empty.txt");
        assert_eq!(r.status, StatusCode::OK);
        assert!(matches!(r.body, LocalBody::Empty));
        assert_eq!(checked_body(r), b"");
    }

    #[test]
    fn head_has_headers_and_no_body() {
        let s = site();
        for (path, status, len) in [
            ("/a.txt", StatusCode::OK, "11"),
            ("/big.bin", StatusCode::OK, "102400"),
            ("/nope", StatusCode::NOT_FOUND, "14"),
        ] {
            let r = req(&s.root(), Method::HEAD, path, Conditional::default());
            assert_eq!(r.status, status, "{path}");
            assert_eq!(hdr(&r, header::CONTENT_LENGTH).unwrap(), len, "{path}");
            assert!(matches!(r.body, LocalBody::Empty), "{path}");
        }
        let g = get(&s.root(), "/a.txt");
        let h = req(&s.root(), Method::HEAD, "/a.txt", Conditional::default());
        assert_eq!(g.headers, h.headers);
    }

    #[test]
    fn index_files_and_directories() {
        let s = site();
        let r = get(&s.root(), "/");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            hdr(&r, header::CONTENT_TYPE).unwrap(),
            "text/html; charset=utf-8"
        );
        assert_eq!(checked_body(r), b"<h1>root</h1>");
        assert_eq!(checked_body(get(&s.root(), "/dir/")), b"<h1>dir</h1>");
        assert_eq!(checked_body(get(&s.root(), "/dir_link/")), b"<h1>dir</h1>");
        assert_eq!(get(&s.root(), "/empty_dir/").status, StatusCode::NOT_FOUND);
        assert_eq!(get(&s.root(), "/a.txt/").status, StatusCode::NOT_FOUND);
        assert_eq!(get(&s.root(), "/nope/").status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn dotfiles_are_not_found_except_well_known() {
        let s = site();
        let www = s.root();
        fs::create_dir_all(www.join(".git")).unwrap();
        fs::write(www.join(".git/config"), SECRET).unwrap();
        fs::create_dir_all(www.join("dir/.private")).unwrap();
        fs::write(www.join("dir/.private/index.html"), SECRET).unwrap();
        fs::create_dir_all(www.join(".well-known")).unwrap();
        fs::write(www.join(".well-known/security.txt"), "contact").unwrap();
        fs::write(www.join(".well-known/.x"), SECRET).unwrap();
        for path in [
            "/.hidden",
            "/%2ehidden",
            "/.git/config",
            "/.git/",
            "/.git",
            "/dir/.private/",
            "/dir/.private",
            "/dir/../.hidden",
            "/.well-known/.x",
        ] {
            let r = get(&www, path);
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
            assert!(r.headers.get(header::LOCATION).is_none(), "{path}");
            assert!(
                !String::from_utf8_lossy(&body(r)).contains(SECRET),
                "{path}"
            );
        }
        assert_eq!(
            checked_body(get(&www, "/.well-known/security.txt")),
            b"contact"
        );
    }

    #[test]
    fn directory_without_slash_redirects() {
        let s = site();
        for (path, location) in [
            ("/dir", "/dir/"),
            ("/dir?x=1&y=%20", "/dir/?x=1&y=%20"),
            ("/dir?", "/dir/"),
            ("/empty_dir", "/empty_dir/"),
            ("/a%20b", "/a%20b/"),
            ("/dir/../dir", "/dir/"),
            ("/dir_link", "/dir_link/"),
            // never a protocol-relative `//evil.com/` redirect
            ("//evil.com", "/evil.com/"),
            ("/%2fevil.com", "/evil.com/"),
        ] {
            let r = get(&s.root(), path);
            assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{path}");
            assert_eq!(hdr(&r, header::LOCATION).unwrap(), location, "{path}");
            assert_eq!(checked_body(r), b"308 Permanent Redirect\n");
        }
    }

    #[test]
    fn query_string_is_ignored() {
        let s = site();
        let r = get(&s.root(), "/a.txt?v=3&x=/../../etc/passwd");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(checked_body(r), HELLO);
    }

    #[test]
    fn content_types() {
        let s = site();
        for (path, ct) in [
            ("/a.txt", "text/plain; charset=utf-8"),
            ("/index.html", "text/html; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/pic.png", "image/png"),
            ("/README", "application/octet-stream"),
            ("/big.bin", "application/octet-stream"),
        ] {
            assert_eq!(
                hdr(&get(&s.root(), path), header::CONTENT_TYPE).unwrap(),
                ct,
                "{path}"
            );
        }
        let js = hdr(&get(&s.root(), "/app.js"), header::CONTENT_TYPE).unwrap();
        assert!(
            js.contains("javascript") && js.ends_with("; charset=utf-8"),
            "{js}"
        );
    }

    #[test]
    fn validators() {
        let s = site();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        File::options()
            .write(true)
            .open(s.root().join("a.txt"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        let r = get(&s.root(), "/a.txt");
        let etag = hdr(&r, header::ETAG).unwrap();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.contains("-b\""),
            "{etag}"
        );
        assert_eq!(
            hdr(&r, header::LAST_MODIFIED).unwrap(),
            "Tue, 14 Nov 2023 22:13:20 GMT"
        );
        // Same file, same tag; different content length, different tag.
        assert_eq!(hdr(&get(&s.root(), "/a.txt"), header::ETAG).unwrap(), etag);
        assert_ne!(hdr(&get(&s.root(), "/dir/"), header::ETAG).unwrap(), etag);
    }

    fn cond_get(s: &Site, path: &str, cond: Conditional<'_>) -> LocalResponse {
        req(&s.root(), Method::GET, path, cond)
    }

    fn b(s: &str) -> &[u8] {
        s.as_bytes()
    }

    #[test]
    fn conditional_requests() {
        let s = site();
        let r = get(&s.root(), "/a.txt");
        let etag = hdr(&r, header::ETAG).unwrap();
        let lm = hdr(&r, header::LAST_MODIFIED).unwrap();
        let weak = format!("W/{etag}");
        let list = format!("\"nope\", {weak} , \"x,y\"");
        let old = "Mon, 01 Jan 2001 00:00:00 GMT";
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(3600));
        let inm = |v| Conditional {
            if_none_match: Some(v),
            ..Default::default()
        };
        let ims = |v| Conditional {
            if_modified_since: Some(v),
            ..Default::default()
        };
        let cases: Vec<(Conditional<'_>, StatusCode)> = vec![
            (inm(b(&etag)), StatusCode::NOT_MODIFIED),
            (inm(b(&weak)), StatusCode::NOT_MODIFIED),
            (inm(b(&list)), StatusCode::NOT_MODIFIED),
            (inm(b"*"), StatusCode::NOT_MODIFIED),
            (inm(b"\"other\""), StatusCode::OK),
            (inm(b"\"x,y\", \"z\""), StatusCode::OK),
            (inm(b""), StatusCode::OK),
            (ims(b(&lm)), StatusCode::NOT_MODIFIED),
            (ims(b(&future)), StatusCode::NOT_MODIFIED),
            (ims(b(old)), StatusCode::OK),
            (ims(b"garbage"), StatusCode::OK),
            (ims(b"\xff"), StatusCode::OK),
            // If-None-Match present: If-Modified-Since is ignored.
            (
                Conditional {
                    if_none_match: Some(b"\"other\""),
                    if_modified_since: Some(b(&lm)),
                    ..Default::default()
                },
                StatusCode::OK,
            ),
        ];
        for (i, (cond, status)) in cases.into_iter().enumerate() {
            let r = cond_get(&s, "/a.txt", cond);
            assert_eq!(r.status, status, "case {i}");
            if status == StatusCode::NOT_MODIFIED {
                assert_eq!(hdr(&r, header::ETAG).unwrap(), etag);
                assert_eq!(hdr(&r, header::LAST_MODIFIED).unwrap(), lm);
                assert!(hdr(&r, header::CONTENT_LENGTH).is_none());
                assert!(matches!(r.body, LocalBody::Empty));
            }
        }
        let h = req(&s.root(), Method::HEAD, "/a.txt", inm(b(&etag)));
        assert_eq!(h.status, StatusCode::NOT_MODIFIED);
    }

    fn range_get(s: &Site, path: &str, range: &str) -> LocalResponse {
        let cond = Conditional {
            range: Some(range.as_bytes()),
            ..Default::default()
        };
        cond_get(s, path, cond)
    }

    #[test]
    fn single_ranges() {
        let s = site();
        for (range, content_range, want) in [
            ("bytes=0-4", "bytes 0-4/11", &b"hello"[..]),
            ("bytes=6-", "bytes 6-10/11", b"world"),
            ("bytes=-5", "bytes 6-10/11", b"world"),
            ("bytes=-100", "bytes 0-10/11", HELLO),
            ("bytes=3-100", "bytes 3-10/11", b"lo world"),
            ("bytes=10-10", "bytes 10-10/11", b"d"),
            ("bytes=0-99999999999999999999999", "bytes 0-10/11", HELLO),
            ("Bytes = 0-0", "bytes 0-0/11", b"h"),
        ] {
            let r = range_get(&s, "/a.txt", range);
            assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
            assert_eq!(
                hdr(&r, header::CONTENT_RANGE).unwrap(),
                content_range,
                "{range}"
            );
            assert_eq!(checked_body(r), want, "{range}");
        }
    }

    #[test]
    fn unsatisfiable_ranges() {
        let s = site();
        for (path, range, total) in [
            ("/a.txt", "bytes=11-", "11"),
            ("/a.txt", "bytes=100-200", "11"),
            ("/a.txt", "bytes=-0", "11"),
            ("/a.txt", "bytes=99999999999999999999999-", "11"),
            ("/empty.txt", "bytes=0-", "0"),
            ("/empty.txt", "bytes=-5", "0"),
        ] {
            let r = range_get(&s, path, range);
            assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
            assert_eq!(
                hdr(&r, header::CONTENT_RANGE).unwrap(),
                format!("bytes */{total}")
            );
            checked_body(r);
        }
    }

    #[test]
    fn malformed_or_multiple_ranges_serve_full() {
        let s = site();
        for range in [
            "bytes=0-1,3-4",
            "bytes=0-1,",
            "bytes=abc",
            "bytes=5-2",
            "bytes=-",
            "bytes=1",
            "bytes=+1-2",
            "bytes=0x1-2",
            "items=0-1",
            "0-1",
            "",
        ] {
            let r = range_get(&s, "/a.txt", range);
            assert_eq!(r.status, StatusCode::OK, "{range:?}");
            assert!(hdr(&r, header::CONTENT_RANGE).is_none());
            assert_eq!(checked_body(r), HELLO, "{range:?}");
        }
        let cond = Conditional {
            range: Some(b"bytes=\xff-1"),
            ..Default::default()
        };
        assert_eq!(cond_get(&s, "/a.txt", cond).status, StatusCode::OK);
    }

    #[test]
    fn ranges_of_large_files() {
        let s = site();
        let r = range_get(&s, "/big.bin", "bytes=1000-");
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert!(matches!(
            r.body,
            LocalBody::File {
                offset: 1000,
                len: 101400,
                ..
            }
        ));
        assert_eq!(checked_body(r), &s.big[1000..]);
        // A small slice of a large file is read into memory.
        let r = range_get(&s, "/big.bin", "bytes=70000-70009");
        assert!(matches!(r.body, LocalBody::Bytes(_)));
        assert_eq!(checked_body(r), &s.big[70000..70010]);
        let r = range_get(&s, "/big.bin", "bytes=-10");
        assert_eq!(
            hdr(&r, header::CONTENT_RANGE).unwrap(),
            "bytes 102390-102399/102400"
        );
        assert_eq!(checked_body(r), &s.big[102390..]);
    }

    #[test]
    fn head_ignores_range() {
        let s = site();
        let cond = Conditional {
            range: Some(b"bytes=0-4"),
            ..Default::default()
        };
        let r = req(&s.root(), Method::HEAD, "/a.txt", cond);
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(hdr(&r, header::CONTENT_LENGTH).unwrap(), "11");
    }

    #[test]
    fn if_range() {
        let s = site();
        let r = get(&s.root(), "/a.txt");
        let etag = hdr(&r, header::ETAG).unwrap();
        let lm = hdr(&r, header::LAST_MODIFIED).unwrap();
        let weak = format!("W/{etag}");
        for (if_range, status) in [
            (etag.as_str(), StatusCode::PARTIAL_CONTENT),
            (lm.as_str(), StatusCode::PARTIAL_CONTENT),
            ("\"other\"", StatusCode::OK),
            (weak.as_str(), StatusCode::OK),
            ("Mon, 01 Jan 2001 00:00:00 GMT", StatusCode::OK),
            ("garbage", StatusCode::OK),
        ] {
            let cond = Conditional {
                range: Some(b"bytes=0-4"),
                if_range: Some(if_range.as_bytes()),
                ..Default::default()
            };
            let r = cond_get(&s, "/a.txt", cond);
            assert_eq!(r.status, status, "{if_range}");
            let want: &[u8] = if status == StatusCode::OK {
                HELLO
            } else {
                b"hello"
            };
            assert_eq!(checked_body(r), want);
        }
    }

    fn ae_get(s: &Site, path: &str, ae: &str) -> LocalResponse {
        let cond = Conditional {
            accept_encoding: Some(ae.as_bytes()),
            ..Default::default()
        };
        cond_get(s, path, cond)
    }

    #[test]
    fn precompressed_siblings() {
        let s = site();
        for (path, ae, encoding, want) in [
            (
                "/style.css",
                "gzip, deflate, br",
                Some("br"),
                &b"BROTLI"[..],
            ),
            ("/style.css", "br;q=0.1, gzip;q=1", Some("br"), b"BROTLI"),
            ("/style.css", "gzip", Some("gzip"), b"GZIPPED-BYTES"),
            ("/style.css", "x-gzip", Some("gzip"), b"GZIPPED-BYTES"),
            ("/style.css", "br;q=0, gzip", Some("gzip"), b"GZIPPED-BYTES"),
            (
                "/style.css",
                "BR ; Q=0.000, GZIP",
                Some("gzip"),
                b"GZIPPED-BYTES",
            ),
            ("/style.css", "*", Some("br"), b"BROTLI"),
            ("/style.css", "br;q=0, *", Some("gzip"), b"GZIPPED-BYTES"),
            ("/style.css", "*;q=0", None, b"body{color:red}"),
            ("/style.css", "gzip;q=0, br;q=0", None, b"body{color:red}"),
            ("/style.css", "br;q=abc", None, b"body{color:red}"),
            ("/style.css", "identity", None, b"body{color:red}"),
            ("/style.css", "", None, b"body{color:red}"),
            ("/app.js", "br", None, b"console.log(1)"),
            ("/app.js", "br, gzip", Some("gzip"), b"GZ-JS"),
        ] {
            let r = ae_get(&s, path, ae);
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                hdr(&r, header::CONTENT_ENCODING).as_deref(),
                encoding,
                "{ae}"
            );
            // Siblings are looked for only when the client accepts a coding (nginx's
            // gzip_static without gzip_vary): only then does the answer say it varies.
            let offered =
                accepts(Some(ae.as_bytes()), "br") || accepts(Some(ae.as_bytes()), "gzip");
            let vary = hdr(&r, header::VARY);
            assert_eq!(
                vary.as_deref(),
                offered.then_some("Accept-Encoding"),
                "{ae}"
            );
            let ct = hdr(&r, header::CONTENT_TYPE).unwrap();
            assert!(ct.starts_with("text/"), "{ct}");
            assert_eq!(checked_body(r), want, "{ae}");
        }
        // No Accept-Encoding at all: the original, no sibling lookup.
        let r = get(&s.root(), "/style.css");
        assert!(hdr(&r, header::VARY).is_none());
        assert_eq!(
            hdr(&r, header::CONTENT_TYPE).unwrap(),
            "text/css; charset=utf-8"
        );
        // Siblings also apply to index files.
        fs::write(s.root().join("dir/index.html.gz"), "GZ-INDEX").unwrap();
        assert_eq!(checked_body(ae_get(&s, "/dir/", "gzip")), b"GZ-INDEX");
    }

    #[test]
    fn precompressed_etags_ranges_and_304() {
        let s = site();
        let tag = |ae| hdr(&ae_get(&s, "/style.css", ae), header::ETAG).unwrap();
        let (plain, br, gz) = (tag(""), tag("br"), tag("gzip"));
        assert!(plain != br && br != gz && plain != gz);

        let cond = Conditional {
            accept_encoding: Some(b"gzip"),
            range: Some(b"bytes=0-3"),
            ..Default::default()
        };
        let r = cond_get(&s, "/style.css", cond);
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(hdr(&r, header::CONTENT_RANGE).unwrap(), "bytes 0-3/13");
        assert_eq!(hdr(&r, header::CONTENT_ENCODING).unwrap(), "gzip");
        assert_eq!(checked_body(r), b"GZIP");

        let cond = Conditional {
            accept_encoding: Some(b"gzip"),
            if_none_match: Some(gz.as_bytes()),
            ..Default::default()
        };
        let r = cond_get(&s, "/style.css", cond);
        assert_eq!(r.status, StatusCode::NOT_MODIFIED);
        assert_eq!(hdr(&r, header::VARY).unwrap(), "Accept-Encoding");
        assert_eq!(hdr(&r, header::ETAG).unwrap(), gz);
        // The gzip tag does not validate the brotli representation.
        let cond = Conditional {
            accept_encoding: Some(b"br"),
            if_none_match: Some(gz.as_bytes()),
            ..Default::default()
        };
        assert_eq!(cond_get(&s, "/style.css", cond).status, StatusCode::OK);
    }

    #[test]
    fn sibling_symlink_out_of_root_is_ignored() {
        let s = site();
        let r = ae_get(&s, "/leak.css", "gzip");
        assert_eq!(r.status, StatusCode::OK);
        assert!(hdr(&r, header::CONTENT_ENCODING).is_none());
        assert_eq!(checked_body(r), b"leak");
    }

    #[test]
    fn path_safety() {
        let s = site();
        let bad = StatusCode::BAD_REQUEST;
        let missing = StatusCode::NOT_FOUND;
        let ok = StatusCode::OK;
        let cases: &[(&[u8], StatusCode)] = &[
            (b"/../outside/secret.txt", bad),
            (b"/..", bad),
            (b"/../", bad),
            (b"/%2e%2e/outside/secret.txt", bad),
            (b"/%2E%2E/outside/secret.txt", bad),
            (b"/.%2e/outside/secret.txt", bad),
            (b"/%2e%2e", bad),
            (b"/..%2foutside%2fsecret.txt", bad),
            (b"/%2e%2e%2foutside%2fsecret.txt", bad),
            (b"/dir/../../outside/secret.txt", bad),
            (b"/dir/..%2f..%2foutside/secret.txt", bad),
            (b"/dir/./../../outside/secret.txt", bad),
            (b"/..%5coutside%5csecret.txt", bad),
            (b"/..%5Coutside", bad),
            (b"/..\\outside\\secret.txt", bad),
            (b"/a.txt%00.html", bad),
            (b"/a.txt\0.html", bad),
            (b"/%00", bad),
            (b"/%ff", bad),
            (b"/%c0%ae%c0%ae/outside/secret.txt", bad), // overlong UTF-8 dots
            (b"/\xff", bad),
            (b"a.txt", bad),
            (b"", bad),
            (b"*", bad),
            (b"http://evil/a.txt", bad),
            // decoded exactly once: a literal file name
            (b"/%252e%252e/outside/secret.txt", missing),
            (b"/%252e%252e%252foutside%252fsecret.txt", missing),
            (b"/..%252foutside%252fsecret.txt", missing),
            (b"/%2500", missing),
            (b"/%255c", missing),
            (b"/%252e%252e", ok), // the file literally named "%2e%2e"
            // symlinks
            (b"/secret_link.txt", missing),
            (b"/link_out/secret.txt", missing),
            (b"/link_out/", missing),
            (b"/link_out", missing),
            (b"/evil_index/", missing),
            (b"/inside_link.txt", ok),
            (b"/dir_link/index.html", ok),
            // harmless dot segments and slashes inside the root
            (b"/dir/../a.txt", ok),
            (b"/./a.txt", ok),
            (b"/%2e/a.txt", ok),
            (b"/dir%2findex.html", ok),
            (b"/dir%2Findex.html", ok),
            (b"//a.txt", ok),
            (b"/dir//index.html", ok),
            (b"/a.txt/..", ok), // the root directory
            (b"/dir/.", ok),
            (b"/.hidden", missing), // dotfiles are never served
            (b"/%61.txt", ok),
            (b"/a.txt%", missing),
            (b"/a.txt%zz", missing),
        ];
        let tmp_path = s.tmp.path().to_string_lossy().into_owned();
        for &(path, status) in cases {
            let shown = String::from_utf8_lossy(path);
            let r = serve(
                &Root::open(&s.root()).unwrap(),
                &Method::GET,
                path,
                Conditional::default(),
            );
            assert_eq!(r.status, status, "{shown:?}");
            let b = checked_body(r);
            let text = String::from_utf8_lossy(&b);
            assert!(!text.contains(SECRET), "{shown:?} leaked");
            assert!(
                !text.contains(&tmp_path) && !text.contains("www"),
                "{shown:?}"
            );
            if status != ok {
                let reason = status.canonical_reason().unwrap();
                assert_eq!(text, format!("{} {reason}\n", status.as_u16()), "{shown:?}");
            }
        }
    }

    #[test]
    fn symlinked_root_works() {
        let s = site();
        let link = s.tmp.path().join("root_link");
        symlink(s.root(), &link).unwrap();
        assert_eq!(checked_body(get(&link, "/a.txt")), HELLO);
        assert_eq!(get(&link, "/secret_link.txt").status, StatusCode::NOT_FOUND);
        assert!(Root::open(Path::new("/nonexistent-berth-root")).is_err());
    }

    #[test]
    fn fifo_is_not_served() {
        let s = site();
        let fifo = s.root().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if !made.is_ok_and(|st| st.success()) {
            return; // no mkfifo on this machine
        }
        assert_eq!(get(&s.root(), "/pipe").status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn error_pages() {
        let r = text_response(StatusCode::BAD_GATEWAY, "502 Bad Gateway");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            hdr(&r, header::CONTENT_TYPE).unwrap(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(checked_body(r), b"502 Bad Gateway\n");
        assert_eq!(checked_body(text_response(StatusCode::OK, "ok\n")), b"ok\n");
        let r = get(site().root().as_path(), "/missing.txt");
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            hdr(&r, header::CONTENT_TYPE).unwrap(),
            "text/plain; charset=utf-8"
        );
        assert_eq!(checked_body(r), b"404 Not Found\n");
    }
}
