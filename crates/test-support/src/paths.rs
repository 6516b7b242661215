//! Request paths that try to make an upstream see something other than what the proxy routed on
//! (battery P3), and the check of what an upstream received.

/// Is the path of `target`, as an upstream of the route `prefix` received it, outside its route?
/// `None` when the path is fine: it starts with `prefix` (segment-wise, after decoding once), has
/// no `.` or `..` segment (with or without `;parameters`) and no empty segment.
pub fn escapes(prefix: &str, target: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or("");
    let decoded = percent_decode_lossy(path);
    if !decoded.starts_with('/') || decoded.starts_with("//") {
        return Some(format!(
            "decoded path {decoded:?} is not a single-slash absolute path"
        ));
    }
    let segs: Vec<&str> = decoded[1..].split('/').collect();
    for (i, s) in segs.iter().enumerate() {
        let name = s.split(';').next().unwrap_or("");
        if name == "." || name == ".." {
            return Some(format!(
                "decoded path {decoded:?} has the dot segment {s:?}"
            ));
        }
        if name.is_empty() && i + 1 < segs.len() {
            return Some(format!("decoded path {decoded:?} has an empty segment"));
        }
    }
    let p = prefix.trim_end_matches('/');
    let inside = p.is_empty()
        || decoded == p
        || decoded
            .strip_prefix(p)
            .is_some_and(|rest| rest.starts_with('/'));
    (!inside).then(|| format!("decoded path {decoded:?} is outside the route prefix {prefix:?}"))
}

/// Percent-decode once (invalid escapes kept as they are), as an upstream would.
fn percent_decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Raw targets that try to make the upstream of `/public` (or of the catch-all `/`) see a path
/// other than the one berth routed on.
pub const TARGETS: &[&str] = &[
    "/public/../admin",
    "/public/x/../../admin",
    "/public/x/../y",
    "/public/..",
    "/public/./x",
    "/public/..%2fadmin",
    "/public/..%2Fadmin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/.%2e/admin",
    "/public/%2e./admin",
    "/public/%2e%2e%2fadmin",
    "/public/x/..%2f..%2fadmin",
    "/public%2f..%2fadmin",
    "/public/%2fadmin",
    "/public/..;/admin",
    "/public/..;x=1/admin",
    "/public/.;/x",
    "/public;/../admin",
    "/public;x/../admin",
    "/public/;/../admin",
    "/public/;x/../../admin",
    "/admin;/../public/x",
    "/public/x;/../y",
    "/public/..%3b/admin",
    "/public/..%5cadmin",
    "/public/..\\admin",
    "/public/%00/../admin",
    "/public/%252e%252e/admin",
    "/public/%252e%252e%252fadmin",
    "//public/x",
    "/public//x",
    "///public/../admin",
    "/%2fpublic/x",
    "/./public/x",
    "/p%75blic/../admin",
    "/public/%u002e%u002e/admin",
    "/public/%c0%ae%c0%ae/admin",
    "http://a.test/public/../admin",
    // Controls.
    "/public/x",
    "/public/a%2Bb;v=1",
    "/admin/x",
];

/// The targets of [`TARGETS`] that are already normal: routed and forwarded exactly as sent.
pub const CONTROLS: &[&str] = &["/public/x", "/public/a%2Bb;v=1", "/admin/x"];
