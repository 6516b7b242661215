//! Request interpretation shared by the HTTP/1.1 and HTTP/2 fronts: host and path normalisation,
//! the route decision, request ids, and berth's own small responses.

use crate::static_files::{text_response, LocalBody, LocalResponse};
use http::{HeaderMap, StatusCode};
use percent_encoding::{percent_decode, utf8_percent_encode, AsciiSet, CONTROLS};

/// Lower-cased host without port, from a Host header or `:authority`. `None` when malformed.
pub fn parse_host(v: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(v).ok()?;
    let host = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let (ip, after) = rest.split_at(end);
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &after[1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return Some(format!("[{}]", ip.to_ascii_lowercase()));
    } else {
        match s.rsplit_once(':') {
            Some((h, port)) if is_port(port) => h,
            Some(_) => return None,
            None => s,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    ok.then(|| host.to_ascii_lowercase())
}

fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// The path of a request target, decoded once, dot segments resolved, empty segments merged and
/// `;parameters` dropped: what routing matches on, so that `/public/../admin` routes like
/// `/admin` and `/admin;/` like `/admin/` (battery case P2). `Err` → 400: NUL, control
/// characters, backslash, invalid UTF-8, `..` above the root, and every spelling whose meaning
/// depends on who decodes it (battery P3): an encoded slash (`%2F`), a dot segment written with
/// percent-encoding or parameters (`%2e%2e`, `.%2e`, `..;`, `..%3b`), a segment that is empty
/// but for parameters (`/;x/`). What is left has one reading, and [`upstream_target`] forwards
/// exactly the path routed on.
pub fn normalize_path(raw_path: &[u8]) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    // The common path is already normal: take it as it is, without allocating.
    if is_plain(raw_path) {
        if let Ok(s) = std::str::from_utf8(raw_path) {
            return Ok(std::borrow::Cow::Borrowed(s));
        }
    }
    let resolved = resolve(raw_path)?;
    let mut path = String::with_capacity(raw_path.len() + 1);
    for (_, name) in &resolved.segments {
        path.push('/');
        path.push_str(name);
    }
    if path.is_empty() || (resolved.trailing_slash && !path.ends_with('/')) {
        path.push('/');
    }
    Ok(std::borrow::Cow::Owned(path))
}

/// Printable ASCII without '%', '\\', ';', dot segments or empty segments: normal as it is.
fn is_plain(raw_path: &[u8]) -> bool {
    raw_path.first() == Some(&b'/')
        && raw_path
            .iter()
            .all(|&b| b > 0x20 && b < 0x7f && !matches!(b, b'%' | b'\\' | b';'))
        && !raw_path.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// A raw path with its literal `.`, `..` and empty segments resolved.
struct Resolved<'a> {
    /// Each remaining segment as the client spelled it (parameters included) and its decoded
    /// name (parameters dropped).
    segments: Vec<(&'a [u8], String)>,
    /// The path names a directory: it ends in `/`, `/.` or `/..`.
    trailing_slash: bool,
}

/// Split the raw path at its literal slashes, then decode each segment once on its own, so
/// decoding can never change the segment structure, and refuse every ambiguous segment (see
/// [`normalize_path`]).
fn resolve(raw: &[u8]) -> Result<Resolved<'_>, &'static str> {
    let Some(rest) = raw.strip_prefix(b"/") else {
        return Err("path does not start with /");
    };
    let mut segments: Vec<(&[u8], String)> = Vec::new();
    let mut last: &[u8] = b"";
    for seg in rest.split(|&b| b == b'/') {
        last = seg;
        match seg {
            b"" | b"." => continue,
            b".." => {
                if segments.pop().is_none() {
                    return Err("path climbs above the root");
                }
                continue;
            }
            _ => {}
        }
        let decoded = String::from_utf8(percent_decode(seg).collect::<Vec<u8>>())
            .map_err(|_| "path is not UTF-8")?;
        if decoded
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'\\' || b == b'/')
        {
            return Err("control character, backslash or encoded slash in path");
        }
        let name = decoded.split(';').next().unwrap_or("");
        if matches!(name, "" | "." | "..") {
            return Err("dot or empty segment spelled with percent-encoding or parameters");
        }
        let name = name.to_owned();
        segments.push((seg, name));
    }
    Ok(Resolved {
        segments,
        trailing_slash: matches!(last, b"" | b"." | b".."),
    })
}

/// Characters escaped when a normalised path is put back on the wire.
const PATH_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_ESCAPE).to_string()
}

/// Split a request target into path and query (`?` included); `None` for forms other than
/// origin-form.
pub fn split_target(target: &[u8]) -> Option<(&[u8], &[u8])> {
    if target.first() != Some(&b'/') {
        return None;
    }
    Some(match target.iter().position(|&b| b == b'?') {
        Some(q) => target.split_at(q),
        None => (target, &[][..]),
    })
}

/// `(authority, origin-form target)` of an absolute-form target such as `http://h:8/p?q`.
pub fn split_absolute(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = if target.len() > 8 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() > 9 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let slash = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (auth, path) = rest.split_at(slash);
    if auth.contains(&b'@') {
        return None;
    }
    Some((auth, if path.is_empty() { b"/" } else { path }))
}

/// The target to send upstream: the path routing matched — the client's own spelling with its
/// literal dot and empty segments resolved (unchanged when already normal), or, with
/// `strip_prefix`, the normalised path minus the route's prefix — and the query as sent.
/// `raw_path` must have passed [`normalize_path`].
pub fn upstream_target(raw_path: &[u8], query: &[u8], norm: &str, strip: Option<&str>) -> Vec<u8> {
    let mut t = Vec::with_capacity(raw_path.len() + query.len());
    match strip {
        None if is_plain(raw_path) => t.extend_from_slice(raw_path),
        None => match resolve(raw_path) {
            Ok(r) => {
                for (seg, _) in &r.segments {
                    t.push(b'/');
                    t.extend_from_slice(seg);
                }
                if t.is_empty() || (r.trailing_slash && !t.ends_with(b"/")) {
                    t.push(b'/');
                }
            }
            // Not reached: the path was checked by `normalize_path`.
            Err(_) => t.extend_from_slice(encode_path(norm).as_bytes()),
        },
        Some(prefix) => {
            let rest = norm
                .strip_prefix(prefix.trim_end_matches('/'))
                .unwrap_or(norm);
            if !rest.starts_with('/') {
                t.push(b'/');
            }
            t.extend_from_slice(encode_path(rest).as_bytes());
        }
    }
    t.extend_from_slice(query);
    t
}

/// What the upstream request head is made of, from either front (HTTP/1.1 or h2).
pub struct UpstreamHead<'a> {
    pub method: &'a str,
    pub target: &'a [u8],
    /// The Host header (or `:authority`) as the client sent it.
    pub host: &'a [u8],
    /// The client's own X-Forwarded-For, which berth extends.
    pub xff: Option<&'a [u8]>,
    pub client_ip: &'a str,
    pub tls: bool,
    pub request_id: &'a str,
    pub websocket: bool,
    pub framing: crate::h1::Framing,
}

/// Write the HTTP/1.1 request head for the upstream into `out`: the client's end-to-end headers
/// (`headers`, minus hop-by-hop ones, minus those berth sets, minus any for which `also_skip`
/// says so — e.g. names listed in the client's Connection header), then berth's forwarding
/// headers and the body framing. One pass, straight into the reused buffer.
pub fn write_upstream_head<'h>(
    out: &mut Vec<u8>,
    p: &UpstreamHead<'_>,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    also_skip: impl Fn(&[u8]) -> bool,
) {
    use crate::h1::{is_hop_by_hop, push_dec, Framing};
    out.clear();
    out.extend_from_slice(p.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(p.target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(p.host);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if is_hop_by_hop(name) || is_set_by_berth(name) || also_skip(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = p.xff {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(p.client_ip.as_bytes());
    out.extend_from_slice(if p.tls {
        b"\r\nX-Forwarded-Proto: https"
    } else {
        b"\r\nX-Forwarded-Proto: http"
    });
    out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    out.extend_from_slice(p.host);
    out.extend_from_slice(b"\r\nX-Request-Id: ");
    out.extend_from_slice(p.request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    if p.websocket {
        // Only the websocket token: an h2c offer must never reach the upstream (S14).
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: websocket\r\n");
    }
    match p.framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_dec(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Request headers berth writes itself for the upstream (a client's copy is dropped).
fn is_set_by_berth(name: &[u8]) -> bool {
    let is = |h: &[u8]| h.eq_ignore_ascii_case(name);
    match name.len() {
        4 => is(b"host"),
        12 => is(b"x-request-id"),
        15 => is(b"x-forwarded-for"),
        16 => is(b"x-forwarded-host"),
        17 => is(b"x-forwarded-proto"),
        _ => false,
    }
}

/// Serve a request on a static route: the normalised path (minus the route's prefix with
/// `strip_prefix`), the query kept for directory redirects, whose Location gets the prefix back.
pub fn serve_static(
    route: &crate::table::Route,
    root: &crate::static_files::Root,
    method: &http::Method,
    norm: &str,
    query: &[u8],
    cond: crate::static_files::Conditional<'_>,
) -> LocalResponse {
    let strip = route
        .spec
        .strip_prefix
        .then(|| route.spec.path.0.trim_end_matches('/'));
    if let Some(prefix) = strip.filter(|p| !p.is_empty() && norm == *p) {
        // `/docs` for a site mounted at `/docs/`: like any directory, to the slash form.
        let mut location = format!("{prefix}/").into_bytes();
        location.extend_from_slice(query);
        return redirect(http::HeaderValue::from_bytes(&location).ok());
    }
    let mut path = match strip {
        Some(prefix) => upstream_target(b"", b"", norm, Some(prefix)),
        None => encode_path(norm).into_bytes(),
    };
    path.extend_from_slice(query);
    let mut resp = crate::static_files::serve(root, method, &path, cond);
    if let (Some(prefix), true) = (strip, resp.status.is_redirection()) {
        let location = resp
            .headers
            .get(http::header::LOCATION)
            .map(|l| format!("{prefix}{}", String::from_utf8_lossy(l.as_bytes())));
        if let Some(v) = location.and_then(|l| http::HeaderValue::from_str(&l).ok()) {
            resp.headers.insert(http::header::LOCATION, v);
        }
    }
    resp
}

/// A client-supplied X-Request-Id is kept when it looks like an id (so traces join up), and
/// replaced otherwise (so logs cannot be injected into).
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter().all(|&b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'=' | b'/')
        })
}

/// 32 random hex digits.
pub fn new_request_id() -> String {
    let mut id = Vec::with_capacity(32);
    for part in [fastrand::u64(..), fastrand::u64(..)] {
        for i in (0..16).rev() {
            id.push(b"0123456789abcdef"[((part >> (i * 4)) & 15) as usize]);
        }
    }
    String::from_utf8(id).unwrap_or_default()
}

/// 308 to the same host and path on https.
pub fn https_redirect(host: &str, https_port: Option<u16>, target: &[u8]) -> LocalResponse {
    let port = match https_port {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let location = format!("https://{host}{port}{}", String::from_utf8_lossy(target));
    redirect(http::HeaderValue::from_str(&location).ok())
}

/// 308 to `location` (no Location header when it was not a valid header value).
fn redirect(location: Option<http::HeaderValue>) -> LocalResponse {
    let mut r = text_response(StatusCode::PERMANENT_REDIRECT, "308 Permanent Redirect\n");
    if let Some(v) = location {
        r.headers.insert(http::header::LOCATION, v);
    }
    r
}

pub fn not_found() -> LocalResponse {
    text_response(
        StatusCode::NOT_FOUND,
        "404 Not Found: no app is deployed at this address (berth)\n",
    )
}

/// The answer to an ACME HTTP-01 validation: the key authorization, as is.
pub fn acme_answer(key_authorization: String) -> LocalResponse {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(key_authorization.len()),
    );
    LocalResponse {
        status: StatusCode::OK,
        headers,
        body: LocalBody::Bytes(bytes::Bytes::from(key_authorization)),
    }
}

/// A short error body naming only the status (never an upstream address).
pub fn error(status: StatusCode) -> LocalResponse {
    text_response(
        status,
        &format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths_like_the_backend_will() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/public/../admin", "/admin"),
            ("/admin;/", "/admin/"),
            ("/a;x=1/b;y", "/a/b"),
            ("/admin;jsessionid=1/x", "/admin/x"),
            ("//a///b", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/%252e%252e/x", "/%2e%2e/x"),
            ("/a/..", "/"),
            ("/caf%C3%A9", "/café"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw.as_bytes()).as_deref(), Ok(want), "{raw}");
            assert!(valid_request_id(new_request_id().as_bytes()));
        }
        for raw in [
            "/..",
            "/../etc/passwd",
            "/%2e%2e/",
            "/a/%00",
            "/a%5cb",
            "/a\\b",
            "/%ff",
            // Ambiguous: refused rather than guessed (P3).
            "/public/..%2Fadmin",
            "/public/%2e%2e/admin",
            "/a/.%2e/b",
            "/a/%2E/b",
            "/a%2fb",
            "/a/..;/b",
            "/a/..;x=1/b",
            "/a/.;/b",
            "/a/..%3b/b",
            "/a/;/b",
            "/a/;x/../b",
            "/a;x%2f..%2f../b",
        ] {
            assert!(normalize_path(raw.as_bytes()).is_err(), "{raw}");
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            parse_host(b"Example.TEST:8080").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            parse_host(b"example.test.").as_deref(),
            Some("example.test")
        );
        assert_eq!(parse_host(b"[::1]:80").as_deref(), Some("[::1]"));
        for bad in [&b""[..], b"a b", b"a:b", b"a/b", b"[::1", b"a@b", b":80"] {
            assert_eq!(parse_host(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn strip_prefix_targets() {
        assert_eq!(
            upstream_target(b"/api/users", b"?x=1", "/api/users", Some("/api/")),
            b"/users?x=1"
        );
        assert_eq!(upstream_target(b"/api", b"", "/api", Some("/api/")), b"/");
        assert_eq!(upstream_target(b"/a%2Bb", b"", "/a+b", None), b"/a%2Bb");
        // What the upstream gets is what routing matched, in the client's own spelling.
        for (raw, want) in [
            (&b"/public/x/../y"[..], &b"/public/y?q"[..]),
            (b"//public//x;v=1/./", b"/public/x;v=1/?q"),
            (b"/public/%41/..", b"/public/?q"),
            (b"/a/..", b"/?q"),
            (b"/p%75blic/a%2Bb", b"/p%75blic/a%2Bb?q"),
        ] {
            let norm = normalize_path(raw).unwrap();
            assert_eq!(
                upstream_target(raw, b"?q", &norm, None),
                want,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            split_absolute(b"http://h.test:8/p?q"),
            Some((&b"h.test:8"[..], &b"/p?q"[..]))
        );
    }
}
