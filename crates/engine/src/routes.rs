//! The route table berth installs: the config file's routes, the control-plane API at
//! `berth.<domain>` or `[server] api_host` (HTTPS only; not routed without an HTTPS listener), and
//! each live app at `<app>.<domain>` plus its custom domains. Always computed whole from the
//! engine's state and swapped in at once.

use crate::{lock, Engine, EngineError, Live, Target};
use proxy::config::{Balance, Dur, HealthSpec, HostPattern, PathPrefix, RouteSpec, Upstream};
use proxy::table::RouteTable;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

impl Engine {
    /// Recompute and install the table (domains changed, an app went away, SIGHUP).
    pub(crate) fn refresh_routes(&self) -> Result<(), EngineError> {
        let _routes = lock(&self.routes_lock);
        let table = self.prepare_table()?;
        self.proxy.install_routes(table);
        Ok(())
    }

    /// Build (and check) the table for the current state. Callers hold `routes_lock`.
    pub(crate) fn prepare_table(&self) -> Result<RouteTable, EngineError> {
        let specs = self.route_specs()?;
        self.proxy
            .prepare_routes(specs)
            .map_err(|e| EngineError::Internal(format!("route table: {e}")))
    }

    fn route_specs(&self) -> Result<Vec<RouteSpec>, EngineError> {
        let mut specs = lock(&self.base_routes).clone();
        let mut taken: HashSet<String> = specs
            .iter()
            .filter(|r| r.path.0 == "/")
            .map(|r| r.host.0.clone())
            .collect();
        if let Some(admin) = self.cfg.admin {
            let host = self.api_host();
            // Tokens never cross the network in clear: plain HTTP to the API host gets a 308
            // to HTTPS before anything is forwarded, and without an HTTPS listener the API
            // is not behind the proxy at all (only the admin listener serves it). The name
            // stays reserved either way: no app gets it.
            if taken.insert(host.clone()) && self.cfg.https_port.is_some() {
                if let Ok(h) = HostPattern::parse(&host) {
                    specs.push(RouteSpec {
                        upstreams: vec![Upstream(admin)],
                        https_redirect: true,
                        ..route(h)
                    });
                }
            }
        }
        let mut domains: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (app, host) in self.store.all_domains()? {
            domains.entry(app).or_default().push(host);
        }
        let live: BTreeMap<String, Live> = lock(&self.live)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (app, l) in live {
            let mut hosts = vec![format!("{app}.{}", self.cfg.domain)];
            hosts.extend(domains.remove(&app).unwrap_or_default());
            for host in hosts {
                if !taken.insert(host.clone()) {
                    tracing::warn!(
                        app,
                        host,
                        "host already routed by the config file; not routed to the app"
                    );
                    continue;
                }
                let Ok(h) = HostPattern::parse(&host) else {
                    continue;
                };
                let hsts = l.hsts.clone().map(proxy::config::Hsts);
                let spec = match &l.target {
                    Target::Upstreams(addrs) => RouteSpec {
                        upstreams: addrs.iter().map(|a| Upstream(*a)).collect(),
                        balance: Balance::LeastConn,
                        hsts: hsts.clone(),
                        health: l.health_path.as_deref().and_then(|p| {
                            Some(HealthSpec {
                                path: PathPrefix::parse(p).ok()?,
                                interval: Dur(Duration::from_secs(2)),
                                timeout: Dur(Duration::from_secs(1)),
                            })
                        }),
                        ..route(h)
                    },
                    // A root that cannot be opened would fail the whole table (every app);
                    // only this app goes unrouted.
                    Target::Static(dir) if !dir.is_dir() => {
                        tracing::error!(app, dir = %dir.display(), "static root is missing; the app is not routed");
                        continue;
                    }
                    Target::Static(dir) => RouteSpec {
                        static_root: Some(dir.clone()),
                        hsts,
                        ..route(h)
                    },
                    Target::None => continue,
                };
                specs.push(spec);
            }
        }
        Ok(specs)
    }
}

fn route(host: HostPattern) -> RouteSpec {
    RouteSpec {
        host,
        path: PathPrefix("/".into()),
        strip_prefix: false,
        upstreams: Vec::new(),
        balance: Balance::RoundRobin,
        health: None,
        max_body: None,
        static_root: None,
        https_redirect: false,
        hsts: None,
    }
}
