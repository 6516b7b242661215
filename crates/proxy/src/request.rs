//! Request interpretation shared by the HTTP/1.1 and HTTP/2 fronts: host and path normalisation,
//! the route decision, request ids, and berth's own small responses.

use crate::static_files::{text_response, LocalResponse};
use http::StatusCode;
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
/// `;parameters` dropped: what routing matches on, so that `/public/..%2Fadmin` routes like
/// `/admin` and `/admin;/` like `/admin/` (battery case P2). `Err` → 400: NUL, backslash,
/// invalid UTF-8, or `..` above the root.
pub fn normalize_path(raw_path: &[u8]) -> Result<std::borrow::Cow<'_, str>, &'static str> {
    // The common path is already normal: printable ASCII without '%', '\\', ';', dot segments
    // or empty segments. Take it as it is, without allocating.
    let plain = raw_path.first() == Some(&b'/')
        && raw_path
            .iter()
            .all(|&b| b > 0x20 && b < 0x7f && !matches!(b, b'%' | b'\\' | b';'))
        && !raw_path.windows(2).any(|w| w == b"//" || w == b"/.");
    if plain {
        if let Ok(s) = std::str::from_utf8(raw_path) {
            return Ok(std::borrow::Cow::Borrowed(s));
        }
    }
    let decoded = percent_decode(raw_path).collect::<Vec<u8>>();
    let decoded = String::from_utf8(decoded).map_err(|_| "path is not UTF-8")?;
    if decoded
        .bytes()
        .any(|b| b == 0 || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        return Err("control character or backslash in path");
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("path climbs above the root");
                }
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut path = String::with_capacity(decoded.len() + 1);
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || (trailing && !path.ends_with('/')) {
        path.push('/');
    }
    Ok(std::borrow::Cow::Owned(path))
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

/// The target to send upstream: unchanged, or with the route's prefix removed.
pub fn upstream_target(raw_path: &[u8], query: &[u8], norm: &str, strip: Option<&str>) -> Vec<u8> {
    let mut t = Vec::with_capacity(raw_path.len() + query.len());
    match strip {
        None => t.extend_from_slice(raw_path),
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
    let mut r = text_response(StatusCode::PERMANENT_REDIRECT, "308 Permanent Redirect\n");
    if let Ok(v) = http::HeaderValue::from_str(&location) {
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
            ("/public/..%2Fadmin", "/admin"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/admin;/", "/admin/"),
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
        assert_eq!(upstream_target(b"/a%2Fb", b"", "/a/b", None), b"/a%2Fb");
        assert_eq!(
            split_absolute(b"http://h.test:8/p?q"),
            Some((&b"h.test:8"[..], &b"/p?q"[..]))
        );
    }
}
