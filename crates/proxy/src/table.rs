//! The compiled, immutable routing table. A reload builds a whole new table and swaps it in with
//! one atomic pointer store (`arc_swap`); requests hold an `Arc` to the table they started with.

use crate::config::{Balance, HealthSpec, RouteSpec};
use crate::metrics::RouteMetrics;
use crate::upstream::{Registry, Upstream};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct RouteTable {
    exact: HashMap<Box<str>, Vec<Arc<Route>>>,
    /// Keyed by the suffix after `*.`: `*.apps.test` is stored under `apps.test`.
    wildcard: HashMap<Box<str>, Vec<Arc<Route>>>,
    any: Vec<Arc<Route>>,
    specs: Vec<RouteSpec>,
}

pub struct Route {
    pub spec: RouteSpec,
    pub action: Action,
    pub max_body: u64,
    pub metrics: RouteMetrics,
    /// `spec.hsts` as a header value, for HTTPS responses.
    pub hsts: Option<http::HeaderValue>,
}

pub enum Action {
    Proxy(Pool),
    Static(crate::static_files::Root),
}

pub struct Pool {
    pub upstreams: Vec<Arc<Upstream>>,
    pub balance: Balance,
    pub health: Option<HealthSpec>,
    next: AtomicUsize,
}

impl Pool {
    /// Pick an upstream that is up, skipping `avoid` (the one that just failed). When no
    /// upstream is up, pick among all of them anyway (Envoy's "panic mode"): health checks can
    /// be wrong (an overloaded app misses one), and a request tried on a doubtful upstream
    /// beats a certain 502. `None` only when there is nothing else to try (→ 502).
    pub fn pick(&self, avoid: Option<&Upstream>) -> Option<&Arc<Upstream>> {
        let not_avoided = |u: &&Arc<Upstream>| avoid.is_none_or(|a| !std::ptr::eq(a, &***u));
        self.pick_where(|u| u.is_up() && not_avoided(u))
            .or_else(|| self.pick_where(not_avoided))
    }

    fn pick_where(&self, usable: impl Fn(&&Arc<Upstream>) -> bool) -> Option<&Arc<Upstream>> {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut candidates = (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .filter(|u| usable(u));
        match self.balance {
            Balance::RoundRobin => candidates.next(),
            // Ties go round-robin (the rotating start) so equal upstreams share the load.
            Balance::LeastConn => candidates.min_by_key(|u| u.active()),
        }
    }
}

impl RouteTable {
    pub fn empty() -> RouteTable {
        RouteTable {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any: Vec::new(),
            specs: Vec::new(),
        }
    }

    /// Compile specs (checked by `config::validate_routes`). Upstream state (health, active
    /// counts) is shared with the previous table through `registry`, so a reload does not forget
    /// that a backend is down. Static roots are opened here; a missing one fails the build.
    pub fn build(
        specs: Vec<RouteSpec>,
        default_max_body: u64,
        registry: &Registry,
        metrics: &crate::metrics::Metrics,
    ) -> Result<RouteTable, crate::config::RouteError> {
        crate::config::validate_routes(&specs)?;
        let mut t = RouteTable::empty();
        for (index, spec) in specs.iter().enumerate() {
            let action = match &spec.static_root {
                Some(root) => {
                    Action::Static(crate::static_files::Root::open(root).map_err(|e| {
                        crate::config::RouteError {
                            index,
                            host: spec.host.0.clone(),
                            path: spec.path.0.clone(),
                            reason: format!("static directory {}: {e}", root.display()),
                        }
                    })?)
                }
                None => Action::Proxy(Pool {
                    upstreams: spec.upstreams.iter().map(|u| registry.get(u.0)).collect(),
                    balance: spec.balance,
                    health: spec.health.clone(),
                    next: AtomicUsize::new(0),
                }),
            };
            let route = Arc::new(Route {
                max_body: spec.max_body.map_or(default_max_body, |s| s.0),
                metrics: metrics.route(&format!("{}{}", spec.host, spec.path)),
                hsts: spec
                    .hsts
                    .as_ref()
                    .and_then(|h| http::HeaderValue::from_str(&h.0).ok()),
                spec: spec.clone(),
                action,
            });
            let host = spec.host.0.as_str();
            let list = if host == "*" {
                &mut t.any
            } else if let Some(suffix) = host.strip_prefix("*.") {
                t.wildcard.entry(suffix.into()).or_default()
            } else {
                t.exact.entry(host.into()).or_default()
            };
            list.push(route);
        }
        for list in t
            .exact
            .values_mut()
            .chain(t.wildcard.values_mut())
            .chain([&mut t.any])
        {
            list.sort_by_key(|r| std::cmp::Reverse(r.spec.path.0.len()));
        }
        t.specs = specs;
        Ok(t)
    }

    pub fn specs(&self) -> &[RouteSpec] {
        &self.specs
    }

    /// Find the route for a lower-case host (no port) and a normalized path. The exact host wins
    /// over the wildcard, which wins over `*`; within a host the longest matching prefix wins,
    /// falling back to the next less specific host level when no prefix there matches.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        if let Some(r) = self.exact.get(host).and_then(|l| list_match(l, path)) {
            return Some(r);
        }
        if let Some((_, parent)) = host.split_once('.') {
            if let Some(r) = self.wildcard.get(parent).and_then(|l| list_match(l, path)) {
                return Some(r);
            }
        }
        list_match(&self.any, path)
    }

    /// Is there any route for this host? (Used to decide whether the local CA may issue a cert.)
    /// Does an exact or wildcard route name `host`? (Not the catch-all: that one takes any
    /// name, which the local CA must not sign for.)
    pub fn names_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, p)| self.wildcard.contains_key(p))
    }

    pub fn knows_host(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, p)| self.wildcard.contains_key(p))
            || !self.any.is_empty()
    }

    /// Every proxy pool, for the health checker.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain([&self.any])
            .flatten()
            .filter_map(|r| match &r.action {
                Action::Proxy(p) => Some(p),
                Action::Static(_) => None,
            })
    }
}

fn list_match<'a>(list: &'a [Arc<Route>], path: &str) -> Option<&'a Arc<Route>> {
    list.iter().find(|r| prefix_matches(&r.spec.path.0, path))
}

/// `/api/` matches `/api/x` and `/api`; `/api` matches `/api` and `/api/x` but not `/apix`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix.trim_end_matches('/')) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HostPattern, PathPrefix};

    fn spec(host: &str, path: &str, root: &str) -> RouteSpec {
        let root = std::env::temp_dir().join(format!("berth-table-test-{root}"));
        std::fs::create_dir_all(&root).unwrap();
        RouteSpec {
            host: HostPattern::parse(host).unwrap(),
            path: PathPrefix::parse(path).unwrap(),
            strip_prefix: false,
            upstreams: vec![],
            balance: Balance::RoundRobin,
            health: None,
            max_body: None,
            static_root: Some(root),
            https_redirect: false,
            hsts: None,
        }
    }

    #[test]
    fn lookup_prefers_exact_host_then_longest_prefix() {
        let specs = vec![
            spec("example.test", "/", "root"),
            spec("example.test", "/api/", "api"),
            spec("example.test", "/api/v2", "v2"),
            spec("*.apps.test", "/", "wild"),
            spec("x.apps.test", "/only/", "x-only"),
            spec("*", "/", "any"),
        ];
        let t = RouteTable::build(
            specs,
            1,
            &Registry::default(),
            &crate::metrics::Metrics::new(),
        )
        .unwrap();
        let root = |h: &str, p: &str| match t.lookup(h, p).map(|r| &r.action) {
            Some(Action::Static(root)) => root
                .path
                .to_string_lossy()
                .split("berth-table-test-")
                .nth(1)
                .unwrap()
                .to_owned(),
            _ => "none".into(),
        };
        let cases = [
            ("example.test", "/", "root"),
            ("example.test", "/api", "api"),
            ("example.test", "/api/x", "api"),
            ("example.test", "/apix", "root"),
            ("example.test", "/api/v2/y", "v2"),
            ("example.test", "/api/v2x", "api"),
            ("a.apps.test", "/", "wild"),
            ("a.b.apps.test", "/", "any"),
            ("apps.test", "/", "any"),
            ("x.apps.test", "/only/1", "x-only"),
            ("x.apps.test", "/other", "wild"),
            ("elsewhere.test", "/", "any"),
        ];
        for (h, p, want) in cases {
            assert_eq!(root(h, p), want, "{h}{p}");
        }
    }
}
