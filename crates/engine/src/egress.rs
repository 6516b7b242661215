//! Where berth connects on a user's behalf: a connected repository's fetch (webhooks) and a
//! notification target's `POST`. Never to this machine or its networks: loopback, link-local
//! (169.254/16 — cloud metadata —, fe80::/10), private (RFC 1918, CGNAT 100.64/10, IPv6 ULA
//! fc00::/7), unspecified, broadcast or multicast addresses, also when mapped into IPv6. An
//! admin lets named hosts through with `[server] allow_private_hosts`.
//!
//! A URL is checked when it is given (the IP literal, or every address its name resolves to;
//! a name that does not resolve yet is let through, since nothing can connect to it) and again
//! at each connection, on the addresses actually used: a git fetch is pinned to the checked
//! addresses (`http.curloptResolve`), and the notification client's resolver refuses the
//! connection itself. DNS may change between the two.
//!
//! A repository is fetched over `https://` only (the admin-only local paths and `file://`
//! aside); its URL must keep to a strict form (no percent-encoding or odd characters in the
//! host), so that git's URL parser and this one cannot disagree on the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};

/// The hint given with a refused address.
const ALLOW_HINT: &str = "berth does not connect to loopback, link-local, private, CGNAT, unspecified or multicast addresses; an admin can allow a host with [server] allow_private_hosts = [\"git.internal.example\"]";

/// What kind of address `ip` is, when berth must not connect to it.
pub fn forbidden(ip: IpAddr) -> Option<&'static str> {
    // One of this machine's own addresses (a public IP on its interface): berth would connect
    // to itself. An address can be bound only if it is local. An IPv6 address that carries an
    // IPv4 one (mapped, NAT64, 6to4) reaches that one.
    let own = |ip: IpAddr| {
        std::net::UdpSocket::bind((ip, 0))
            .is_ok()
            .then_some("one of this server's own addresses")
    };
    by_class(ip)
        .or_else(|| own(ip))
        .or_else(|| carried_v4(ip).and_then(|v4| own(IpAddr::V4(v4))))
}

/// The IPv4 address an IPv6 one carries: mapped, compatible, NAT64 (64:ff9b::/96), 6to4.
fn carried_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(embedded_v4(v6));
    }
    if s[0] == 0x2002 {
        let o = v6.octets();
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// The address classes that are never an outside party (see [`forbidden`]).
fn by_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("an unspecified address")
            } else if v6.is_loopback() {
                Some("a loopback address")
            } else if let Some(kind) = carried_v4(ip).and_then(forbidden_v4) {
                // It reaches the IPv4 address inside (mapped, compatible, NAT64, 6to4).
                Some(kind)
            } else if v6.is_multicast() {
                Some("a multicast address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("a link-local address")
            } else if s[0] & 0xffc0 == 0xfec0 {
                Some("a site-local address")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a private (unique local) address")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation (2001:db8::/32) address")
            } else {
                None
            }
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Ipv4Addr {
    let o = v6.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_private() {
        Some("a private address")
    } else if o[0] == 100 && o[1] & 0xc0 == 64 {
        Some("a shared (CGNAT) address")
    } else if o[0] == 198 && o[1] & 0xfe == 18 {
        Some("a benchmarking (198.18.0.0/15) address")
    } else if matches!((o[0], o[1], o[2]), (192, 0, 0) | (192, 88, 99)) {
        Some("a special-purpose (IETF protocol or 6to4 relay) address")
    } else if matches!(
        (o[0], o[1], o[2]),
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113)
    ) {
        Some("a documentation (TEST-NET) address")
    } else if ip.is_multicast() || o[0] >= 240 {
        Some("a multicast, broadcast or reserved address")
    } else {
        None
    }
}

/// The hosts berth may connect to whatever their addresses (`[server] allow_private_hosts`):
/// names and IP literals, compared without case and IPv6 brackets.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<String>,
}

/// Where a checked URL connects: its host and port and the addresses it may use (empty: an
/// allowed host, or an IP literal, which needs no pin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub host: String,
    pub port: u16,
    pub pin: Vec<IpAddr>,
}

impl Checked {
    /// git's `http.curloptResolve` value that makes curl use exactly the checked addresses.
    pub fn curl_resolve(&self) -> Option<String> {
        if self.pin.is_empty() {
            return None;
        }
        let addrs: Vec<String> = self
            .pin
            .iter()
            .map(|a| match a {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            })
            .collect();
        Some(format!("{}:{}:{}", self.host, self.port, addrs.join(",")))
    }
}

fn bare(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

impl Policy {
    pub fn new(allow: &[String]) -> Policy {
        Policy {
            allow: allow.iter().map(|h| bare(h)).collect(),
        }
    }

    pub fn allows(&self, host: &str) -> bool {
        let h = bare(host);
        self.allow.contains(&h)
    }

    /// Check `host:port` (a name or an IP literal, IPv6 in brackets or not): the addresses to
    /// connect to, or why not. `lenient`: a name that does not resolve is let through (at
    /// create time; a connection checks again).
    pub fn check(&self, host: &str, port: u16, lenient: bool) -> Result<Checked, String> {
        let name = bare(host);
        let checked = |pin| Checked {
            host: name.clone(),
            port,
            pin,
        };
        if self.allows(&name) {
            return Ok(checked(Vec::new()));
        }
        // Resolvers answer `localhost` and its subdomains with loopback (RFC 6761), whatever
        // DNS says now.
        let dotless = name.trim_end_matches('.');
        if dotless == "localhost" || dotless.ends_with(".localhost") {
            return Err(format!("{name} is a loopback name (hint: {ALLOW_HINT})"));
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return match forbidden(ip) {
                Some(kind) => Err(format!("{ip} is {kind} (hint: {ALLOW_HINT})")),
                None => Ok(checked(Vec::new())),
            };
        }
        let addrs: Vec<IpAddr> = match (name.as_str(), port).to_socket_addrs() {
            Ok(a) => a.map(|a: SocketAddr| a.ip()).collect(),
            Err(_) if lenient => return Ok(checked(Vec::new())),
            Err(e) => return Err(format!("cannot resolve {name}: {e}")),
        };
        if addrs.is_empty() {
            return if lenient {
                Ok(checked(Vec::new()))
            } else {
                Err(format!("{name} resolves to no address"))
            };
        }
        for ip in &addrs {
            if let Some(kind) = forbidden(*ip) {
                return Err(format!(
                    "{name} resolves to {ip}, {kind} (hint: {ALLOW_HINT})"
                ));
            }
        }
        let mut pin = addrs;
        pin.dedup();
        Ok(checked(pin))
    }

    /// A repository URL berth may fetch from: `https://` with a public (or allowed) host;
    /// `lenient` as in [`Policy::check`]. Local repositories are not handled here
    /// ([`is_local_repo`]).
    pub fn check_repo_url(&self, url: &str, lenient: bool) -> Result<Checked, String> {
        let (host, port) = https_host(url)?;
        self.check(&host, port, lenient)
            .map_err(|e| format!("repository URL refused: {e}"))
    }

    /// A notification URL berth may post to: a public (or allowed) host. The scheme and the
    /// rest are checked by `notify.rs`.
    pub fn check_notify_url(&self, url: &str, lenient: bool) -> Result<Checked, String> {
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| format!("it does not parse ({e})"))?;
        let host = uri.host().unwrap_or("");
        let port = uri.port_u16().unwrap_or(
            if uri
                .scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
            {
                443
            } else {
                80
            },
        );
        self.check(host, port, lenient)
    }
}

/// Is `url` a repository on this server's disk rather than a remote one? Anything git would
/// not reach over the network is: `file:`, absolute and relative paths (git resolves `a/b.git`
/// against its working directory). Remote is `scheme://`, or scp-like `[user@]host:path`.
pub fn is_local_repo(url: &str) -> bool {
    let u = url.to_ascii_lowercase();
    if u.starts_with("file:") {
        return true;
    }
    let scheme = u
        .split_once("://")
        .is_some_and(|(s, _)| !s.is_empty() && s.bytes().all(is_scheme_char));
    let scp_like = match u.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/') && !host.starts_with('.'),
        None => false,
    };
    !(scheme || scp_like)
}

fn is_scheme_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.'
}

/// git's `<transport>::<address>` form (which runs a remote helper: `ext::`, `fd::`): a
/// non-empty run of URL scheme characters followed by `::`.
pub fn is_transport_helper(url: &str) -> bool {
    let run = url.bytes().take_while(|&b| is_scheme_char(b)).count();
    run > 0 && url[run..].starts_with("::")
}

/// The host and port of an `https://` URL in the strict form berth fetches from:
/// `https://[user[:password]@]host[:port][/path]`, the host a DNS name (letters, digits, `-`,
/// `_`, `.`), a dotted IPv4 address or a bracketed IPv6 address, the path without `\`,
/// whitespace or control characters. Another scheme is refused with why.
pub fn https_host(url: &str) -> Result<(String, u16), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(if url.contains('@') && url.contains(':') {
            "ssh repositories (user@host:path) are not supported yet: berth has no deploy keys (hint: use the https:// URL, with a read-only access token as the password if the repository is private: https://x-access-token:TOKEN@host/owner/repo.git)".to_string()
        } else {
            format!("{url:?} is not an https:// URL (hint: \"https://github.com/you/app.git\")")
        });
    };
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "ssh" | "git+ssh" | "ssh+git" => {
            return Err("ssh repositories are not supported yet: berth has no deploy keys (hint: use the https:// URL, with a read-only access token as the password if the repository is private: https://x-access-token:TOKEN@host/owner/repo.git)".into())
        }
        "http" => {
            return Err(
                "plain http:// is refused: the code and any credentials would travel in clear (hint: use the https:// URL)"
                    .into(),
            )
        }
        other => {
            return Err(format!(
                "the {other}:// protocol is refused (hint: use the https:// URL)"
            ))
        }
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path
        .bytes()
        .any(|b| b == b'\\' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "{url:?}: the path has a backslash, whitespace or a control character"
        ));
    }
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            if !userinfo
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:".contains(&b))
            {
                return Err(format!(
                    "the credentials of {} have characters that must be percent-encoded",
                    crate::webhook::redact_url(url)
                ));
            }
            hp
        }
        None => authority,
    };
    let bad_host = || {
        format!(
            "{:?} has no valid host (a DNS name, an IPv4 address or a bracketed IPv6 address, optionally :port)",
            crate::webhook::redact_url(url)
        )
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or_else(bad_host)?;
        ip.parse::<Ipv6Addr>().map_err(|_| bad_host())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad_host)?),
        };
        (format!("[{ip}]"), port)
    } else {
        let (h, p) = match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        };
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        if !ok {
            return Err(bad_host());
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None => 443,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => p
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(bad_host)?,
        Some(_) => return Err(bad_host()),
    };
    Ok((host, port))
}

/// The notification client's resolver: the system's, then every address checked against the
/// policy, so the connection itself never goes where it must not.
#[derive(Debug)]
pub(crate) struct CheckingResolver {
    pub(crate) policy: Policy,
    pub(crate) inner: ureq::unversioned::resolver::DefaultResolver,
}

impl ureq::unversioned::resolver::Resolver for CheckingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let addrs = self.inner.resolve(uri, config, timeout)?;
        let host = uri.host().unwrap_or("");
        if self.policy.allows(host) {
            return Ok(addrs);
        }
        for a in addrs.iter() {
            if let Some(kind) = forbidden(a.ip()) {
                return Err(ureq::Error::Io(std::io::Error::other(format!(
                    "{} resolves to {}, {kind}: not connected (allow it with [server] allow_private_hosts)",
                    bare(host),
                    a.ip()
                ))));
            }
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_servers_own_public_addresses_are_refused() {
        // Whatever non-loopback address this machine has (none: nothing to check).
        let out = std::process::Command::new("hostname").arg("-I").output();
        let addrs = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for a in addrs
            .split_whitespace()
            .filter_map(|a| a.parse::<IpAddr>().ok())
        {
            assert!(super::forbidden(a).is_some(), "{a} is this server's");
        }
        assert_eq!(super::forbidden("93.184.216.34".parse().unwrap()), None);
    }

    #[test]
    fn addresses() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fec0::1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.1",
            "192.88.99.1",
            "192.0.2.7",
            "198.51.100.1",
            "203.0.113.9",
            "2001:db8::1",
        ] {
            assert!(forbidden(bad.parse().unwrap()).is_some(), "{bad}");
        }
        for good in [
            "93.184.216.34",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "::ffff:93.184.216.34",
            "2001:4860:4860::8888",
            "2002:5db8:d822::1",
            "198.20.0.1",
        ] {
            assert!(forbidden(good.parse().unwrap()).is_none(), "{good}");
        }
    }

    #[test]
    fn policy() {
        let p = Policy::new(&[
            "Git.Internal.Example".into(),
            "[::1]".into(),
            "127.0.0.1".into(),
        ]);
        assert!(p.check("git.internal.example", 443, false).is_ok());
        assert!(p.check("[::1]", 443, false).is_ok());
        assert!(p.check("127.0.0.1", 443, false).is_ok());
        assert!(p.check("127.0.0.2", 443, false).is_err());
        let strict = Policy::default();
        let e = strict.check("localhost", 443, true).unwrap_err();
        assert!(e.contains("allow_private_hosts"), "{e}");
        assert!(strict.check("2130706433", 443, true).is_err());
        assert!(strict.check("127.1", 443, true).is_err());
        // `.localhost` names are loopback whatever DNS says, even when they do not resolve.
        for name in ["foo.localhost", "A.B.LOCALHOST", "localhost."] {
            assert!(strict.check(name, 443, true).is_err(), "{name}");
        }
        // Not resolvable: let through when created, refused when connecting.
        assert!(strict.check("nothing.invalid", 443, true).is_ok());
        assert!(strict.check("nothing.invalid", 443, false).is_err());
        let c = strict.check("93.184.216.34", 443, false).unwrap();
        assert_eq!(c.curl_resolve(), None);
        let c = Checked {
            host: "git.example".into(),
            port: 8443,
            pin: vec![
                "93.184.216.34".parse().unwrap(),
                "2001:db8::1".parse().unwrap(),
            ],
        };
        assert_eq!(
            c.curl_resolve().unwrap(),
            "git.example:8443:93.184.216.34,[2001:db8::1]"
        );
    }

    #[test]
    fn repository_urls() {
        for (url, host, port) in [
            ("https://github.com/a/b.git", "github.com", 443),
            ("HTTPS://GitHub.com:8443/a/b", "github.com", 8443),
            ("https://u:t%40k@h.example/x", "h.example", 443),
            ("https://[2001:db8::1]:444/x", "[2001:db8::1]", 444),
            ("https://93.184.216.34", "93.184.216.34", 443),
        ] {
            assert_eq!(https_host(url).unwrap(), (host.to_string(), port), "{url}");
        }
        for (url, why) in [
            ("http://github.com/a.git", "http://"),
            ("git://github.com/a.git", "git://"),
            ("ssh://git@github.com/a.git", "ssh"),
            ("git@github.com:a/b.git", "ssh"),
            ("https://a b/x", "host"),
            ("https://h%2e/x", "host"),
            ("https://evil.example\\@127.0.0.1/", "percent-encoded"),
            ("https://h/x\\y", "backslash"),
            ("https://h:0/x", "host"),
            ("https://h:+1/x", "host"),
            ("https://[::1/x", "host"),
            ("https:///x", "host"),
            ("https://u@p@h/x", "percent-encoded"),
        ] {
            let e = https_host(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
    }

    #[test]
    fn local_and_helpers() {
        assert!(is_local_repo("file:///srv/x") && is_local_repo("/srv/x"));
        for local in ["var/lib/berth/git/b.git", "./x", "~/x", "File:/x", "x"] {
            assert!(is_local_repo(local), "{local}");
        }
        for remote in [
            "git@github.com:a/b.git",
            "ssh://h/x",
            "git://h/x",
            "HTTP://h/x",
            "https://[::1]/x",
        ] {
            assert!(!is_local_repo(remote), "{remote}");
        }
        assert!(is_transport_helper("ext::sh -c touch% /tmp/x"));
        assert!(is_transport_helper("fd::1"));
        assert!(!is_transport_helper("https://[::1]/x"));
        assert!(!is_transport_helper("::x"));
    }
}
