//! The route table berth installs: the config file's routes, the control-plane API at
//! `berth.<domain>` or `[server] api_host` (HTTPS only; not routed without an HTTPS listener), and
//! each live app at `<app>.<domain>` plus its custom domains. Always computed whole from the
//! engine's state and swapped in at once.

use crate::{lock, Engine, EngineError, Live, Target};
use proxy::config::{Balance, Dur, HealthSpec, HostPattern, PathPrefix, RouteSpec, Upstream};
use proxy::table::RouteTable;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The store's key of the routes set through the API (a JSON list of route objects).
const API_ROUTES: &str = "routes";

/// The operator's routes in force at start or after a reload, given the config file's, and
/// whether the file owns them. One owner at a time, so neither silently overwrites the other:
/// a file that defines routes owns them (and the routes once set through the API are kept in
/// the store but not used, said in the log); a file without routes leaves them to the API.
pub(crate) fn operator_routes(
    store: &store::Store,
    file: Vec<RouteSpec>,
) -> (bool, Vec<RouteSpec>) {
    let stored = match store.setting(API_ROUTES) {
        Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_else(|e| {
            tracing::error!(
                "the routes set through the API cannot be read back ({e}); none are used"
            );
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::error!("cannot read the routes set through the API: {e}");
            Vec::new()
        }
    };
    if file.is_empty() {
        return (false, stored);
    }
    if !stored.is_empty() {
        tracing::warn!(
            "the config file defines {} route(s), so it owns the operator's routes: the {} set through the API are not used (remove the file's [[route]] tables to use them again)",
            file.len(),
            stored.len()
        );
    }
    (true, file)
}

impl Engine {
    /// The operator's routes in force (the config file's, or those set through the API).
    pub fn base_routes(&self) -> Vec<RouteSpec> {
        lock(&self.base_routes).clone()
    }

    /// `PUT /api/v1/routes`: replace the operator's routes and keep them in the store, so a
    /// restart or a reload keeps them too. Refused (409) when the config file owns them; a
    /// table that cannot be built is refused (422) and changes nothing.
    pub fn set_api_routes(&self, routes: Vec<RouteSpec>, actor: &str) -> Result<(), EngineError> {
        let json = serde_json::to_string(&routes)
            .map_err(|e| EngineError::Internal(format!("routes as JSON: {e}")))?;
        let _routes = lock(&self.routes_lock);
        if self
            .file_owns_routes
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(EngineError::Conflict(
                "the config file defines the operator's routes ([[route]]), so it owns them (hint: edit the file and reload with SIGHUP; or remove its [[route]] tables, reload, and manage the routes here)".into(),
            ));
        }
        self.install_operator_routes(routes, || {
            self.store
                .set_setting(API_ROUTES, &json, actor)
                .map_err(EngineError::from)
        })
    }

    /// SIGHUP: the config file's routes are `file`; run `before_install` (the certificate
    /// reload) once the table is built, then install. Any error keeps what was in force.
    pub fn reload_file_routes(
        &self,
        file: Vec<RouteSpec>,
        before_install: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), EngineError> {
        let (owns, routes) = operator_routes(&self.store, file);
        let _routes = lock(&self.routes_lock);
        self.install_operator_routes(routes, || before_install().map_err(EngineError::BadInput))?;
        self.file_owns_routes
            .store(owns, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Puts `routes` in force if the whole table builds and `before_install` succeeds; else
    /// the old routes stay. Callers hold `routes_lock`.
    fn install_operator_routes(
        &self,
        routes: Vec<RouteSpec>,
        before_install: impl FnOnce() -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let old = std::mem::replace(&mut *lock(&self.base_routes), routes);
        let result = self
            .prepare_table()
            .map_err(|e| match e {
                EngineError::Internal(m) => EngineError::BadInput(m),
                e => e,
            })
            .and_then(|t| before_install().map(|()| t));
        match result {
            Ok(table) => {
                self.proxy.install_routes(table);
                Ok(())
            }
            Err(e) => {
                *lock(&self.base_routes) = old;
                Err(e)
            }
        }
    }

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
