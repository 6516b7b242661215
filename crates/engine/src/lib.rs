//! berth's deploy engine: the control loop between the store (desired state), the runtime
//! (instances) and the proxy (routes).
//!
//! - A deploy is a pipeline (`pipeline.rs`): build → start new instances → health check →
//!   `release:` command → switch (the commit point, one store transaction, then the route swap) →
//!   drain → stop the old instances. A failure before the switch stops the new instances and
//!   leaves the old release serving.
//! - Every deploy creates a release (Heroku's model): a build gets a new release directory;
//!   a rollback, an env change or a scale reuses an earlier release's directory.
//! - One deploy at a time per app (a per-app async lock; later deploys queue), many apps at once.
//! - On start, `reconcile.rs` converges: finishes or fails deploys cut off by a crash, adopts
//!   instances that survived it, starts the missing ones, routes them.
#![forbid(unsafe_code)]

pub mod egress;
mod firewall;
mod health;
mod jails;
mod maxima;
pub use maxima::Maxima;
pub mod logs;
pub mod notify;
mod pipeline;
mod previews;
pub use previews::{preview_name, SettingsChange};
mod queue;
mod reconcile;
mod routes;
mod sandbox;
mod scale;
mod services;
mod swarm;
mod users;
pub mod webhook;

use build::manifest::AppSpec;
use proxy::config::RouteSpec;
use proxy::Proxy;
use runtime::Runtime;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use store::{App, Deploy, DeployKind, DeployMeta, Store};

pub use store;

/// What the engine needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    /// Apps live at `<app>.<domain>`.
    pub domain: String,
    /// Public ports, for the URLs berth prints (`None`: that listener is off).
    pub http_port: Option<u16>,
    pub https_port: Option<u16>,
    /// The admin listener; routed at `api_host` through the proxy when both are set.
    pub admin: Option<SocketAddr>,
    /// Host name of the control-plane API behind the proxy (default `berth.<domain>`).
    pub api_host: Option<String>,
    /// Largest compressed upload and largest unpacked source tree.
    pub max_upload: u64,
    pub max_unpacked: u64,
    /// At most this many builds (test and build steps) run at once, across apps.
    pub build_concurrency: usize,
    /// `[server] runtime`: what apps with `runtime = "auto"` (the default) get. `Auto`: Docker
    /// for a source with a Dockerfile; `Process`: never Docker unless an app asks for it.
    pub default_runtime: build::manifest::RuntimeChoice,
    /// `[server] registry`: where Swarm apps' images are pushed for the other nodes.
    pub registry: Option<String>,
    /// Wait before the first retry of a notification (doubling after each; `notify.rs`).
    pub notify_backoff: std::time::Duration,
    /// The jail helper (berth's own binary, `berth jail`) that shuts every app process in
    /// its jail (`jail.rs`); `None`: `[server] jail = false`, apps run unjailed.
    pub jail_helper: Option<PathBuf>,
    /// What an app may ask in its `[limits]` and step timeouts (`maxima.rs`).
    pub maxima: Maxima,
    /// Files every jail hides besides berth's data and build dirs: the config file and the
    /// TLS keys it names (an app sees the host's other files read-only).
    pub jail_hide: Vec<PathBuf>,
    /// `[server] allow_private_hosts`: hosts a repository or notification URL may name even
    /// though they are (or resolve to) loopback, private or link-local addresses (`egress.rs`).
    pub allow_private_hosts: Vec<String>,
    /// The access log, when it is a file (`[server] access_log`): the router events of an
    /// app's logs are read from it.
    pub access_log: Option<PathBuf>,
}

/// Errors the API turns into 4xx/5xx answers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Bad input from the user: the message says what and, after " (hint: ", how to fix it.
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Internal(String),
}

impl From<store::StoreError> for EngineError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound(m) => EngineError::NotFound(m),
            store::StoreError::Conflict(m) => EngineError::Conflict(m),
            e => EngineError::Internal(format!("state store: {e}")),
        }
    }
}

/// What the proxy routes for one app: its release, hosts and upstreams or static root.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub version: i64,
    pub target: Target,
    pub health_path: Option<String>,
    /// A Swarm app: the web service's instance, whose tasks' endpoints the route follows
    /// (`swarm.rs`).
    pub follow: Option<String>,
    /// The release's `hsts` (berth.toml), for its routes' HTTPS answers.
    pub hsts: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Target {
    Upstreams(Vec<SocketAddr>),
    Static(PathBuf),
    /// A release with no web process (workers only): nothing to route.
    None,
}

pub struct Engine {
    pub cfg: EngineConfig,
    store: Arc<Store>,
    runtime: Arc<dyn Runtime>,
    /// The Docker daemon (image builds, pruning), or why there is none (the socket tried).
    docker: Result<Arc<runtime::DockerRuntime>, String>,
    proxy: Arc<Proxy>,
    /// The operator's routes in force (`routes.rs`): the config file's when it defines any
    /// (it then owns them), else those set through the API (kept in the store). App routes
    /// are added to these.
    base_routes: Mutex<Vec<RouteSpec>>,
    /// The config file defines the operator's routes: `PUT /api/v1/routes` is refused.
    file_owns_routes: std::sync::atomic::AtomicBool,
    /// What is routed for each app, keyed by app name.
    live: Mutex<HashMap<String, Live>>,
    /// Held while a deploy of the app runs (and by destroy).
    app_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Each app's deploy queue (`queue.rs`).
    queues: Mutex<HashMap<String, queue::AppQueue>>,
    /// Ports handed to instances that may not have bound them yet.
    reserved_ports: Mutex<HashSet<u16>>,
    /// Held while a route table is computed, checked and installed, so that two apps
    /// switching at once never install a table that misses the other's change.
    routes_lock: Mutex<()>,
    /// Build slots: the global limit and the build users (`sandbox.rs`).
    slots: Arc<sandbox::Slots>,
    /// The apps' users, storage dirs and jails (`jails.rs`).
    jails: jails::Jails,
    /// Jobs queued or running, by deploy id (`queue.rs`).
    active: Mutex<HashMap<i64, queue::Active>>,
    /// Outgoing webhook queues (`notify.rs`).
    notifier: notify::Notifier,
}

impl Engine {
    /// Open the engine on a store and a runtime, reconcile (see `reconcile.rs`) and install
    /// the routes. `base_routes` are the config file's.
    pub async fn start(
        cfg: EngineConfig,
        store: Arc<Store>,
        runtime: Arc<dyn Runtime>,
        docker: Result<Arc<runtime::DockerRuntime>, String>,
        proxy: Arc<Proxy>,
        base_routes: Vec<RouteSpec>,
    ) -> Result<Arc<Engine>, EngineError> {
        let jails = {
            let (data, helper) = (cfg.data_dir.clone(), cfg.jail_helper.clone());
            let (admin, hide) = (cfg.admin.map(|a| a.port()), cfg.jail_hide.clone());
            let nproc = cfg.maxima.app_pids;
            tokio::task::spawn_blocking(move || {
                jails::Jails::new(&data, helper.as_deref(), admin, hide, nproc)
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
        };
        let slots = sandbox::Slots::new(cfg.build_concurrency, &cfg.data_dir, jails.firewall());
        let (file_owns_routes, base_routes) = routes::operator_routes(&store, base_routes);
        let engine = Arc::new(Engine {
            cfg,
            slots,
            jails,
            active: Mutex::new(HashMap::new()),
            store,
            runtime,
            docker,
            proxy,
            base_routes: Mutex::new(base_routes),
            file_owns_routes: file_owns_routes.into(),
            live: Mutex::new(HashMap::new()),
            app_locks: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            reserved_ports: Mutex::new(HashSet::new()),
            routes_lock: Mutex::new(()),
            notifier: notify::Notifier::default(),
        });
        engine.watch_runtime();
        engine.reconcile().await?;
        Ok(engine)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn runtime(&self) -> &dyn Runtime {
        &*self.runtime
    }

    /// `http://<app>.<domain>:<port>` (or https when only TLS listens), without a default port.
    pub fn app_url(&self, app: &str) -> String {
        let host = format!("{app}.{}", self.cfg.domain);
        match (self.cfg.http_port, self.cfg.https_port) {
            (Some(80), _) => format!("http://{host}"),
            (Some(p), _) => format!("http://{host}:{p}"),
            (None, Some(443)) => format!("https://{host}"),
            (None, Some(p)) => format!("https://{host}:{p}"),
            (None, None) => format!("http://{host}"),
        }
    }

    /// Where builds run: outside the data dir, which build users cannot enter (`sandbox.rs`).
    pub(crate) fn scratch_root(&self) -> PathBuf {
        sandbox::scratch_root(&self.cfg.data_dir)
    }

    /// The Docker daemon a release of `spec` runs on, `None` for processes, or why it cannot
    /// run (a Dockerfile app whose daemon is unreachable, with no Procfile to fall back to).
    pub(crate) fn docker_for(
        &self,
        spec: &AppSpec,
    ) -> Result<Option<Arc<runtime::DockerRuntime>>, String> {
        use build::manifest::RuntimeChoice;
        let wanted = spec.image.is_some()
            || match spec.runtime {
                RuntimeChoice::Process => false,
                RuntimeChoice::Docker | RuntimeChoice::Swarm => true,
                RuntimeChoice::Auto => {
                    spec.dockerfile && self.cfg.default_runtime != RuntimeChoice::Process
                }
            };
        if !wanted {
            return Ok(None);
        }
        match &self.docker {
            Ok(d) => Ok(Some(d.clone())),
            // A new build that could run as processes (a Procfile) does, as when there is no
            // Docker on the machine at all.
            Err(_)
                if spec.image.is_none()
                    && spec.runtime == RuntimeChoice::Auto
                    && self.cfg.default_runtime == RuntimeChoice::Auto
                    && spec.processes.values().all(|c| !c.is_empty()) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!(
                "this app runs on Docker, which is not reachable: {e} (hint: start dockerd, or set runtime = \"process\" in berth.toml with a Procfile)"
            )),
        }
    }

    /// The swarm's nodes (`berth nodes`), or why there are none to show.
    pub async fn nodes(&self) -> Result<Vec<runtime::NodeInfo>, EngineError> {
        let docker = self
            .docker
            .as_ref()
            .map_err(|e| EngineError::Conflict(format!("no Docker daemon, so no swarm: {e}")))?;
        docker
            .swarm()
            .nodes()
            .await
            .map_err(|e| EngineError::Conflict(e.to_string()))
    }

    /// The app's accessory services as Docker reports them (none without Docker).
    pub async fn services(&self, app: &str) -> Result<Vec<runtime::ServiceInfo>, EngineError> {
        self.app(app)?;
        match &self.docker {
            Ok(d) => d
                .services(app)
                .await
                .map_err(|e| EngineError::Internal(e.to_string())),
            Err(_) => Ok(Vec::new()),
        }
    }

    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.cfg.data_dir.join("apps").join(app)
    }

    pub(crate) fn lock_for(&self, app: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.app_locks)
            .entry(app.to_string())
            .or_default()
            .clone()
    }

    pub fn create_app(&self, name: &str, actor: &str) -> Result<App, EngineError> {
        store::valid_app_name(name).map_err(EngineError::BadInput)?;
        if name.contains("--") {
            return Err(EngineError::BadInput(format!(
                "invalid app name {name:?}: `--` is kept for branch previews (<branch>--<app>)"
            )));
        }
        Ok(self.store.create_app(name, actor)?)
    }

    pub fn app(&self, name: &str) -> Result<App, EngineError> {
        self.store.app(name)?.ok_or_else(|| not_found_app(name))
    }

    /// Stop every instance, drop the routes, then delete the app's state and files.
    pub async fn destroy_app(&self, name: &str, actor: &str) -> Result<(), EngineError> {
        self.destroy_app_with(name, actor, false).await
    }

    /// The names of `app`'s named volumes (its services' data); none without Docker.
    pub async fn volumes(&self, app: &str) -> Result<Vec<String>, EngineError> {
        self.app(app)?;
        match &self.docker {
            Ok(docker) => docker
                .volumes(app)
                .await
                .map_err(|e| EngineError::Internal(format!("cannot list the app's volumes: {e}"))),
            Err(_) => Ok(Vec::new()),
        }
    }

    /// [`Engine::destroy_app`]; with `keep_volumes` the app's named volumes stay (an app
    /// created again under the same name mounts them again).
    pub async fn destroy_app_with(
        &self,
        name: &str,
        actor: &str,
        keep_volumes: bool,
    ) -> Result<(), EngineError> {
        self.app(name)?;
        // An app's previews go with it.
        for p in self.previews(name)? {
            Box::pin(self.destroy_app(&p.name, actor)).await?;
        }
        // Its builds first: the lock is held by the one that runs.
        self.cancel_all(name, actor);
        let guard = self.lock_for(name);
        let _held = guard.lock().await;
        self.drop_queue(name);
        lock(&self.live).remove(name);
        self.refresh_routes()?;
        let mut stops = tokio::task::JoinSet::new();
        for inst in self.store.instances(name)? {
            let rt = self.runtime.clone();
            stops.spawn(async move {
                let _ = rt.stop(&inst.runtime_id, STOP_GRACE_ON_DESTROY).await;
                if let (Some(pid), Some(start)) = (inst.pid, inst.pid_start) {
                    // An instance this run never adopted is unknown to the runtime.
                    let _ = rt.kill_orphan(pid, start, STOP_GRACE_ON_DESTROY).await;
                }
                inst.port
            });
        }
        while let Some(port) = stops.join_next().await {
            self.release_port(port.ok().flatten());
        }
        if let Ok(docker) = &self.docker {
            // Swarm services of the app that no instance row names (a crash mid-deploy).
            docker.swarm().remove_app(name).await.map_err(|e| {
                EngineError::Internal(format!("cannot remove the app's swarm services: {e}"))
            })?;
            // Its services and their volumes first: a volume left behind would be mounted by
            // a later app of the same name. A failure keeps the app (destroy again).
            docker
                .remove_services(name, &[], !keep_volumes)
                .await
                .map_err(|e| {
                    EngineError::Internal(format!("cannot remove the app's services: {e}"))
                })?;
            // In the background: a prune waits for every running image build.
            let (images, app) = (docker.clone(), name.to_string());
            tokio::spawn(async move {
                if let Err(e) = images.prune_images(&app, &[]).await {
                    tracing::warn!(app, error = %e, "cannot remove the app's images");
                }
            });
            docker.remove_app_network(name).await;
        }
        self.store.destroy_app(name, actor)?;
        // Its processes are gone: its user and network rule go too.
        self.jails.remove_app(name).await;
        let dir = self.app_dir(name);
        if dir.exists() {
            // Off the async threads: a tree of releases can be large.
            let trash = self
                .cfg
                .data_dir
                .join("apps")
                .join(format!(".trash-{name}-{}", random_hex(4)));
            std::fs::rename(&dir, &trash).map_err(io_err)?;
            tokio::task::spawn_blocking(move || std::fs::remove_dir_all(trash));
        }
        tracing::info!(app = name, actor, "app destroyed");
        Ok(())
    }

    /// Start a deploy of an uploaded source bundle (a `.tar.gz` file, removed afterwards).
    /// Unpacking and the manifest are checked before anything is recorded: a corrupt bundle
    /// or a broken manifest is an error here, and nothing is written. The work runs in its own
    /// task, so a client that disconnects midway cannot cut it off before its clean-up.
    pub async fn deploy_bundle(
        self: &Arc<Self>,
        app: &str,
        bundle: &Path,
        actor: &str,
    ) -> Result<Deploy, EngineError> {
        let meta = DeployMeta {
            trigger: "upload".into(),
            ..DeployMeta::default()
        };
        self.deploy_bundle_with(app, bundle, actor, meta).await
    }

    /// A push of `meta.branch` (git or webhook): the app's deploy branch builds the app; another
    /// branch builds its preview when previews are on (`previews.rs`), and is otherwise only
    /// stored (`Pushed::Ignored` says why).
    pub async fn deploy_push(
        self: &Arc<Self>,
        app: &str,
        bundle: &Path,
        actor: &str,
        meta: DeployMeta,
    ) -> Result<Pushed, EngineError> {
        let a = self.app(app)?;
        match meta.branch.clone() {
            Some(b) if b != a.settings.deploy_branch => {
                self.deploy_preview(&a, &b, bundle, actor, meta).await
            }
            _ => Ok(Pushed::Deploy(
                self.deploy_bundle_with(app, bundle, actor, meta).await?,
            )),
        }
    }

    /// [`Engine::deploy_bundle`] with what triggered it and the commit it builds.
    pub async fn deploy_bundle_with(
        self: &Arc<Self>,
        app: &str,
        bundle: &Path,
        actor: &str,
        meta: DeployMeta,
    ) -> Result<Deploy, EngineError> {
        let (this, app, bundle, actor) = (
            self.clone(),
            app.to_string(),
            bundle.to_path_buf(),
            actor.to_string(),
        );
        tokio::spawn(async move {
            this.check_and_record(&app, &bundle, &actor, &meta, None)
                .await
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?
    }

    /// `existing`: a deploy recorded before the bundle was there (a webhook's, `webhook.rs`); a
    /// bundle or manifest that fails the checks then ends it as failed, with the reason.
    async fn check_and_record(
        self: &Arc<Self>,
        app: &str,
        bundle: &Path,
        actor: &str,
        meta: &DeployMeta,
        existing: Option<i64>,
    ) -> Result<Deploy, EngineError> {
        self.app(app)?;
        let releases = self.app_dir(app).join("releases");
        std::fs::create_dir_all(&releases).map_err(io_err)?;
        let tmp = releases.join(format!(".upload-{}", random_hex(8)));
        let (bundle_path, tmp2, max) = (bundle.to_path_buf(), tmp.clone(), self.cfg.max_unpacked);
        let maxima = self.cfg.maxima.clone();
        let checked = tokio::task::spawn_blocking(move || -> Result<AppSpec, EngineError> {
            let file = std::fs::File::open(&bundle_path).map_err(io_err)?;
            build::bundle::unpack(std::io::BufReader::new(file), &tmp2, max).map_err(
                |e| match e {
                    build::bundle::BundleError::TooLarge { .. } => {
                        EngineError::TooLarge(format!("source bundle: {e}"))
                    }
                    e => EngineError::BadInput(format!("source bundle: {e}")),
                },
            )?;
            let spec = build::manifest::load(&tmp2)
                .map_err(|e| EngineError::BadInput(format!("nothing was deployed: {e}")))?;
            maxima
                .check(&spec)
                .map_err(|e| EngineError::BadInput(format!("nothing was deployed: {e}")))?;
            Ok(spec)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
        .and_then(|r| r);
        let spec = match checked {
            Ok(spec) => spec,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                if let Some(id) = existing {
                    let reason = e.to_string();
                    let _ =
                        self.store
                            .finish_deploy(id, store::DeployStatus::Failed, Some(&reason));
                    return self.deploy(id);
                }
                return Err(e);
            }
        };
        let deploy = match existing {
            Some(id) => self.deploy(id),
            None => self
                .store
                .create_deploy_with(
                    app,
                    DeployKind::Build,
                    actor,
                    &self.app_dir(app).join("deploys"),
                    meta,
                )
                .map_err(EngineError::from),
        };
        let deploy = match deploy {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        match self.record_build(app, deploy.id, &tmp, &spec) {
            Ok(version) => self.enqueue(
                app,
                queue::Job::Build {
                    deploy: deploy.id,
                    version,
                },
            ),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                let reason = format!("recording the release: {e}");
                let _ =
                    self.store
                        .finish_deploy(deploy.id, store::DeployStatus::Failed, Some(&reason));
                return Err(e);
            }
        }
        self.deploy(deploy.id)
    }

    /// Record the release of an upload and move its files to their final place, `vN`. A crash
    /// before the rename leaves an `.upload-*` dir (removed at the next start) and a release
    /// that failed.
    fn record_build(
        &self,
        app: &str,
        deploy_id: i64,
        tmp: &Path,
        spec: &AppSpec,
    ) -> Result<i64, EngineError> {
        let release = self.store.create_release(
            app,
            tmp,
            &spec.to_json(),
            &format!("Deploy {deploy_id}"),
            None,
            store::ReleaseStatus::Building,
        )?;
        let dir = self
            .app_dir(app)
            .join("releases")
            .join(format!("v{}", release.version));
        if dir.exists() {
            // Left by an app of the same name destroyed in a crash: version N is new here.
            std::fs::remove_dir_all(&dir).map_err(io_err)?;
        }
        std::fs::rename(tmp, &dir).map_err(io_err)?;
        self.store
            .set_release_dir_spec(app, release.version, &dir, &spec.to_json())?;
        self.store.set_deploy_release(deploy_id, release.version)?;
        Ok(release.version)
    }

    /// Deploy an earlier release again (no rebuild). `None`: the newest good release before
    /// the live one.
    pub async fn rollback(
        self: &Arc<Self>,
        app: &str,
        version: Option<i64>,
        actor: &str,
    ) -> Result<Deploy, EngineError> {
        let a = self.app(app)?;
        let releases = self.store.releases(app)?;
        let target = match version {
            Some(v) => releases
                .iter()
                .find(|r| r.version == v)
                .ok_or_else(|| EngineError::NotFound(format!("{app} has no release v{v}")))?,
            None => {
                let live = a.live_release.unwrap_or(i64::MAX);
                releases
                    .iter()
                    .find(|r| r.version < live && r.status == store::ReleaseStatus::Ready)
                    .ok_or_else(|| {
                        EngineError::BadInput(format!(
                            "{app} has no earlier good release to roll back to (hint: `berth releases` lists them)"
                        ))
                    })?
            }
        };
        if target.status != store::ReleaseStatus::Ready {
            return Err(EngineError::BadInput(format!(
                "release v{} of {app} is {}, not a release that ran (hint: `berth releases` shows which are ready)",
                target.version,
                target.status.as_str()
            )));
        }
        if !target.dir.is_dir() {
            return Err(EngineError::BadInput(format!(
                "the files of release v{} of {app} were pruned (berth keeps the last {} releases)",
                target.version,
                pipeline::KEEP_RELEASES
            )));
        }
        let deploy = self.store.create_deploy_with(
            app,
            DeployKind::Rollback,
            actor,
            &self.app_dir(app).join("deploys"),
            &change_meta("rollback", format!("Rollback to v{}", target.version)),
        )?;
        self.enqueue(
            app,
            queue::Job::Rollback {
                deploy: deploy.id,
                source: target.version,
            },
        );
        self.deploy(deploy.id)
    }

    /// A live app restarts with the new state (env, formation) on whatever release is live
    /// when its turn in the queue comes. Nothing live and nothing queued: `None`.
    async fn restart_live(
        self: &Arc<Self>,
        app: &str,
        trigger: &str,
        description: &str,
        actor: &str,
    ) -> Result<Option<Deploy>, EngineError> {
        let meta = change_meta(trigger, description.to_string());
        self.queue_change(app, actor, &meta, |deploy| queue::Job::Restart {
            deploy,
            description: description.to_string(),
            // Only a plain restart keeps the release: a new env makes a release.
            in_place: trigger == "restart",
        })
    }

    /// Queue a change of a live app (a restart or a scale) as a deploy; `None` when nothing is
    /// live and nothing is queued (the change then applies to the next deploy).
    fn queue_change(
        self: &Arc<Self>,
        app: &str,
        actor: &str,
        meta: &DeployMeta,
        job: impl FnOnce(i64) -> queue::Job,
    ) -> Result<Option<Deploy>, EngineError> {
        let a = self.app(app)?;
        if a.live_release.is_none() && !self.deploying(app) {
            return Ok(None);
        }
        let deploy = self.store.create_deploy_with(
            app,
            DeployKind::Restart,
            actor,
            &self.app_dir(app).join("deploys"),
            meta,
        )?;
        self.enqueue(app, job(deploy.id));
        self.deploy(deploy.id).map(Some)
    }

    /// Set and unset env vars; a live app restarts with them (zero downtime).
    pub async fn update_env(
        self: &Arc<Self>,
        app: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
        actor: &str,
    ) -> Result<Option<Deploy>, EngineError> {
        self.app(app)?;
        for k in set.keys().chain(unset.iter()) {
            valid_env_key(k).map_err(EngineError::BadInput)?;
        }
        for v in set.values() {
            if v.contains('\0') {
                return Err(EngineError::BadInput(
                    "env values cannot contain NUL bytes".into(),
                ));
            }
        }
        self.store.update_env(app, &set, &unset, actor)?;
        let mut what: Vec<String> = set.keys().cloned().collect();
        what.extend(unset.iter().map(|k| format!("-{k}")));
        self.restart_live(app, "env", &format!("Set env {}", what.join(", ")), actor)
            .await
    }

    /// Restart a live app's instances (a new release of the same build and config, with zero
    /// downtime), as `heroku ps:restart` does. Nothing live: `None`.
    pub async fn restart(
        self: &Arc<Self>,
        app: &str,
        actor: &str,
    ) -> Result<Option<Deploy>, EngineError> {
        self.restart_live(app, "restart", "Restart", actor).await
    }

    /// The app's variables as its processes get them: what was set, over the `value` defaults
    /// of the live release's app.json (berth's own, such as `PORT`, are not included).
    pub fn env(&self, app: &str) -> Result<BTreeMap<String, String>, EngineError> {
        let a = self.app(app)?;
        let mut all = BTreeMap::new();
        if let Some(rel) = a
            .live_release
            .map(|v| self.store.release(app, v))
            .transpose()?
            .flatten()
        {
            if let Ok(spec) = AppSpec::from_json(&rel.spec) {
                all.extend(
                    spec.env
                        .into_iter()
                        .filter_map(|d| Some((d.key, d.default?))),
                );
            }
        }
        all.extend(self.store.env(app)?);
        Ok(all)
    }

    /// Replicas per process type: instances are added or removed in place, with no restart.
    pub async fn scale(
        self: &Arc<Self>,
        app: &str,
        changes: BTreeMap<String, u32>,
        actor: &str,
    ) -> Result<Option<Deploy>, EngineError> {
        let a = self.app(app)?;
        if changes.is_empty() {
            return Err(EngineError::BadInput(
                "nothing to scale (hint: berth scale web=2)".into(),
            ));
        }
        if let Some(live) = a.live_release {
            if let Some(rel) = self.store.release(app, live)? {
                let spec = AppSpec::from_json(&rel.spec).map_err(EngineError::Internal)?;
                for name in changes.keys() {
                    if !spec.processes.contains_key(name) {
                        let known: Vec<&str> = spec.processes.keys().map(|s| s.as_str()).collect();
                        return Err(EngineError::BadInput(format!(
                            "{app} has no process type {name:?} (its types: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        )));
                    }
                }
            }
        }
        for (name, n) in &changes {
            if *n > MAX_REPLICAS {
                return Err(EngineError::BadInput(format!(
                    "{name}={n}: at most {MAX_REPLICAS} instances per process type"
                )));
            }
        }
        let mut formation = a.formation.clone();
        formation.extend(changes.clone());
        let total: u64 = formation.values().map(|n| u64::from(*n)).sum();
        if total > u64::from(build::manifest::MAX_INSTANCES) {
            return Err(EngineError::BadInput(format!(
                "that makes {total} instances in all; an app runs at most {}",
                build::manifest::MAX_INSTANCES
            )));
        }
        self.store.set_formation(app, &formation, actor)?;
        let what: Vec<String> = changes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // In place, as `heroku ps:scale`: no new release (`scale.rs`).
        let description = format!("Scale {}", what.join(" "));
        let meta = change_meta("scale", description.clone());
        self.queue_change(app, actor, &meta, |deploy| queue::Job::Scale {
            deploy,
            description,
        })
    }

    /// Route `host` to `app`. `admin`: the caller may also take names related to another
    /// app's custom domain (an operator who runs `example.com` and `api.example.com` as two
    /// apps); a deploy token may not ([`Engine::check_claim`]).
    pub fn add_domain(
        &self,
        app: &str,
        host: &str,
        actor: &str,
        admin: bool,
    ) -> Result<(), EngineError> {
        self.app(app)?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        store::valid_host(&host).map_err(EngineError::BadInput)?;
        self.check_claim(app, &host)?;
        if !admin {
            self.check_related_claim(app, &host)?;
        }
        self.store.add_domain(app, &host, actor)?;
        if let Err(e) = self.refresh_routes() {
            let _ = self.store.remove_domain(app, &host, actor);
            let _ = self.refresh_routes();
            return Err(e);
        }
        Ok(())
    }

    pub fn remove_domain(&self, app: &str, host: &str, actor: &str) -> Result<(), EngineError> {
        self.app(app)?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.store.remove_domain(app, &host, actor)?;
        self.refresh_routes()
    }

    fn api_host(&self) -> String {
        self.cfg
            .api_host
            .clone()
            .unwrap_or_else(|| format!("berth.{}", self.cfg.domain))
    }

    /// May `app` claim `host` as a custom domain? Not an IP address (a TLD is never all
    /// digits), not the base domain itself, not one of berth's own names (`<app>.<domain>`,
    /// the API host and anything under it), nothing under another app's name
    /// (`x.<other>.<domain>`), and no host an operator route serves (exact or one-label
    /// wildcard; a catch-all `*` route is what is left over, so it does not count).
    fn check_claim(&self, app: &str, host: &str) -> Result<(), EngineError> {
        let refuse = |why: String| {
            Err(EngineError::Conflict(format!(
                "{host} cannot be claimed: {why}"
            )))
        };
        if host
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(EngineError::BadInput(format!(
                "{host} is an IP address, not a domain (hint: point a DNS name at the server)"
            )));
        }
        let domain = self.cfg.domain.as_str();
        let api = self.api_host();
        if host == domain {
            return refuse(format!("it is the platform's base domain {domain}"));
        }
        if host == api || host.ends_with(&format!(".{api}")) || self.is_app_host(host) {
            return refuse("it is one of berth's own names".into());
        }
        if let Some(under) = host.strip_suffix(&format!(".{domain}")) {
            // `x.y.<app>.<domain>`: the label before the domain is an app's name.
            let owner = under.rsplit('.').next().unwrap_or(under);
            if owner != app {
                return refuse(format!("names under {owner}.{domain} belong to {owner}"));
            }
        }
        let wildcard_of = |h: &str| h.split_once('.').map(|(_, parent)| format!("*.{parent}"));
        let served = lock(&self.base_routes).iter().any(|r| {
            let pattern = r.host.0.as_str();
            pattern == host || Some(pattern) == wildcard_of(host).as_deref()
        });
        if served {
            return refuse("an operator route serves it".into());
        }
        Ok(())
    }

    /// A deploy token may not claim a name under another app's custom domain, nor a domain
    /// above one: either would let it set cookies for (or phish under) that app's name.
    fn check_related_claim(&self, app: &str, host: &str) -> Result<(), EngineError> {
        for (other, theirs) in self.store.all_domains()? {
            if other == app {
                continue;
            }
            let under = host.ends_with(&format!(".{theirs}"));
            let above = theirs.ends_with(&format!(".{host}"));
            if under || above {
                return Err(EngineError::Conflict(format!(
                    "{host} cannot be claimed: it is {} {theirs}, a domain of another app (hint: an admin token can add it)",
                    if under { "under" } else { "above" }
                )));
            }
        }
        Ok(())
    }

    fn is_app_host(&self, host: &str) -> bool {
        host.strip_suffix(self.cfg.domain.as_str())
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|label| !label.contains('.'))
    }

    /// The instances of an app with their live state from the runtime.
    /// A Swarm service (one recorded instance) shows as one row per task the swarm runs, with
    /// the port it publishes.
    pub fn instances(&self, app: &str) -> Result<Vec<InstanceView>, EngineError> {
        self.app(app)?;
        Ok(self
            .store
            .instances(app)?
            .into_iter()
            .flat_map(|i| {
                let state = match self.runtime.state(&i.runtime_id) {
                    Some(runtime::InstanceState::Running { .. }) => "running".to_string(),
                    Some(runtime::InstanceState::Restarting { .. }) => "restarting".into(),
                    Some(runtime::InstanceState::Crashing { .. }) => "crashing".into(),
                    Some(runtime::InstanceState::Stopped) => "stopped".into(),
                    None => i.state.clone(),
                };
                let row = InstanceView {
                    id: i.runtime_id.clone(),
                    proc_type: i.proc_type.clone(),
                    index: i.index,
                    release: i.release_version,
                    port: i.port,
                    pid: i.pid,
                    state,
                };
                match self.runtime.endpoints(&i.runtime_id) {
                    Some(tasks) if !tasks.is_empty() => tasks
                        .iter()
                        .zip(1u32..)
                        .map(|(addr, n)| InstanceView {
                            id: format!("{}#{n}", row.id),
                            index: n,
                            port: Some(addr.port()),
                            pid: None,
                            ..row.clone()
                        })
                        .collect(),
                    _ => vec![row],
                }
            })
            .collect())
    }

    /// A summary state: deploying, crashing, running or idle (never deployed / no instances).
    pub fn app_status(&self, app: &App) -> &'static str {
        if self.deploying(&app.name) {
            return "deploying";
        }
        if app.live_release.is_none() {
            return "idle";
        }
        match self.instances(&app.name) {
            Ok(list) if list.iter().any(|i| i.state == "crashing") => "crashing",
            _ => "running",
        }
    }

    pub fn deploy(&self, id: i64) -> Result<Deploy, EngineError> {
        self.store
            .deploy(id)?
            .ok_or_else(|| EngineError::NotFound(format!("deploy {id} not found")))
    }

    /// Log files of an app's current instances: (label like `web.1`, path).
    pub fn log_files(&self, app: &str) -> Result<Vec<(String, PathBuf)>, EngineError> {
        let a = self.app(app)?;
        let mut files: Vec<(String, PathBuf)> = self
            .store
            .instances(app)?
            .into_iter()
            .filter(|i| Some(i.release_version) == a.live_release)
            .map(|i| {
                (
                    format!("{}.{}", i.proc_type, i.index),
                    self.instance_log(app, &i.runtime_id),
                )
            })
            .collect();
        files.sort();
        Ok(files)
    }

    /// The app's recent deploys as events of its logs (`logs::deploy_events`).
    pub fn log_events(&self, app: &str) -> Result<Vec<logs::LogLine>, EngineError> {
        Ok(logs::deploy_events(&self.store.deploys(app, 200)?))
    }

    /// Whether the access log is a file, which router events are read from.
    pub fn has_router_log(&self) -> bool {
        self.cfg.access_log.is_some()
    }

    /// The requests to the app's hosts in the end of the access log (`logs::router_events`);
    /// `None` when the access log is not a file. Blocking file I/O.
    pub fn router_events(&self, app: &str) -> Result<Option<Vec<logs::LogLine>>, EngineError> {
        let Some(path) = &self.cfg.access_log else {
            return Ok(None);
        };
        let mut hosts = vec![format!("{app}.{}", self.cfg.domain)];
        hosts.extend(self.store.domains(app)?);
        Ok(Some(logs::router_events(path, &hosts)))
    }

    pub(crate) fn instance_log(&self, app: &str, runtime_id: &str) -> PathBuf {
        self.app_dir(app)
            .join("logs")
            .join(format!("{runtime_id}.log"))
    }

    /// On SIGTERM: stop every instance berth supervises (a `kill -9` instead leaves them
    /// running and the next start adopts them).
    pub async fn shutdown(&self) {
        let Ok(all) = self.store.all_instances() else {
            return;
        };
        let mut stops = tokio::task::JoinSet::new();
        // Swarm services run on without berth: the swarm supervises them.
        for i in all
            .into_iter()
            .filter(|i| self.runtime.supervised(&i.runtime_id))
        {
            let rt = self.runtime.clone();
            stops.spawn(async move { rt.stop(&i.runtime_id, SHUTDOWN_GRACE).await });
        }
        while stops.join_next().await.is_some() {}
        let slots = self.slots.clone();
        let _ = tokio::task::spawn_blocking(move || slots.remove_users()).await;
    }

    fn watch_runtime(self: &Arc<Self>) {
        let mut events = self.runtime.subscribe();
        let store = self.store.clone();
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(runtime::Event::Started { id, pid, pid_start }) => {
                        let _ = store.set_instance_state(&id, "running", pid, pid_start);
                    }
                    Ok(runtime::Event::Exited {
                        id,
                        status,
                        restarting,
                    }) => {
                        if restarting {
                            tracing::warn!(instance = %id, %status, "instance exited; restarting it");
                        } else {
                            tracing::info!(instance = %id, %status, "instance stopped");
                        }
                    }
                    Ok(runtime::Event::Crashing { id, restarts }) => {
                        tracing::error!(instance = %id, restarts, "instance is crashing");
                        let _ = store.set_instance_state(&id, "crashed", None, None);
                    }
                    // An empty id: events were lost on the way (look at every app).
                    Ok(runtime::Event::Endpoints { id }) => match engine.upgrade() {
                        Some(engine) => {
                            engine.follow_tasks(Some(id.as_str()).filter(|i| !i.is_empty()))
                        }
                        None => break,
                    },
                    // Lost events may have been task changes: look at every followed route.
                    Err(RecvError::Lagged(_)) => match engine.upgrade() {
                        Some(engine) => engine.follow_tasks(None),
                        None => break,
                    },
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// A loopback port for a new instance, from a range outside the kernel's ephemeral ports
    /// (32768–60999 by default), so outgoing connections (the proxy's own) never take it
    /// between now and the app's bind. Remembered until the instance is stopped, so two
    /// instances never get the same one.
    pub(crate) fn free_port(&self) -> Result<u16, EngineError> {
        let mut reserved = lock(&self.reserved_ports);
        for _ in 0..500 {
            let port = fastrand::u16(PORTS);
            if reserved.contains(&port) {
                continue;
            }
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                reserved.insert(port);
                return Ok(port);
            }
        }
        Err(EngineError::Internal(format!(
            "no free loopback port in {}-{}",
            PORTS.start, PORTS.end
        )))
    }

    pub(crate) fn reserve_port(&self, port: u16) {
        lock(&self.reserved_ports).insert(port);
    }

    /// An instance's log and its rotated copies, once it is stopped for good.
    pub(crate) fn remove_instance_logs(&self, app: &str, runtime_id: &str) {
        let log = self.instance_log(app, runtime_id);
        let _ = std::fs::remove_file(&log);
        for n in 1..=9 {
            let mut rotated = log.clone().into_os_string();
            rotated.push(format!(".{n}"));
            if std::fs::remove_file(&rotated).is_err() {
                break;
            }
        }
    }

    pub(crate) fn release_port(&self, port: Option<u16>) {
        if let Some(p) = port {
            lock(&self.reserved_ports).remove(&p);
        }
    }
}

/// What a push started.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // a return value, never stored in bulk
pub enum Pushed {
    /// A build of the app (or of its preview, whose app is named in the deploy).
    Deploy(Deploy),
    /// Nothing to deploy, and why (a branch that is neither the deploy branch nor previewed).
    Ignored(String),
}

/// An instance as the API shows it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    pub id: String,
    pub proc_type: String,
    pub index: u32,
    pub release: i64,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub state: String,
}

pub const MAX_REPLICAS: u32 = 100;
/// Ports for instances: below the kernel's default ephemeral range.
pub(crate) const PORTS: std::ops::Range<u16> = 10_000..30_000;
const STOP_GRACE_ON_DESTROY: std::time::Duration = std::time::Duration::from_secs(5);
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Env keys as POSIX shells accept them.
pub fn valid_env_key(k: &str) -> Result<(), String> {
    let mut chars = k.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && k.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid env var name {k:?}: use letters, digits and _, not starting with a digit"
        ))
    }
}

pub(crate) fn not_found_app(name: &str) -> EngineError {
    EngineError::NotFound(format!("app {name} not found"))
}

pub(crate) fn io_err(e: std::io::Error) -> EngineError {
    EngineError::Internal(e.to_string())
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A new secret (webhook and notification signing keys): 32 random bytes as hex. Unlike
/// [`random_hex`], no randomness is an error.
pub(crate) fn new_secret() -> Result<String, EngineError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| EngineError::Internal(format!("no random bytes for a secret: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if getrandom::fill(&mut b).is_err() {
        // Only names temp dirs: the time is unique enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{t:x}");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a deploy that changes a live app without a build records: what triggered it
/// (`rollback`, `env`, `scale`, `restart`) and what it does, so `berth builds` tells them apart.
fn change_meta(trigger: &str, message: String) -> DeployMeta {
    DeployMeta {
        trigger: trigger.to_string(),
        message: Some(message),
        ..DeployMeta::default()
    }
}
