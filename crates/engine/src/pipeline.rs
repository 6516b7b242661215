//! One deploy, step by step. Every step writes a line to the deploy's log (the CLI streams it);
//! a failure before the switch undoes what this deploy started and leaves the old release
//! serving.

use crate::{lock, Engine, EngineError, Live, Target};
use build::manifest::{AppKind, AppSpec, HealthCheck};
use runtime::{InstanceSpec, TaskOutcome, TaskSpec};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{DeployStatus, NewInstance, ReleaseStatus};

/// An image build gets at least this long (or the manifest's `[build] timeout`, if longer).
const IMAGE_TIMEOUT: Duration = Duration::from_secs(1800);
/// `release:` and postdeploy commands get this long.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(600);
/// After the switch, requests that already picked an old instance get at least this long to
/// be counted before the drain trusts an in-flight count of zero.
const DRAIN_SETTLE: Duration = Duration::from_millis(200);
/// Release directories kept per app (rollback targets); older ones are pruned.
pub const KEEP_RELEASES: usize = 10;

/// Deploys of an app whose logs are kept (see `prune_deploy_logs`).
pub const KEEP_DEPLOY_LOGS: usize = 100;
/// Lines of an instance's log copied into the deploy log when it fails its health check.
const TAIL_LINES: usize = 20;

/// The deploy's log file: the engine's step lines and the build/release command output.
pub(crate) struct DeployLog {
    pub(crate) path: PathBuf,
}

impl DeployLog {
    pub(crate) fn new(path: &Path) -> DeployLog {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        DeployLog {
            path: path.to_path_buf(),
        }
    }

    /// Append one line. Losing a log line must not fail a deploy, so errors are only traced.
    pub(crate) fn line(&self, text: &str) {
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(format!("{text}\n").as_bytes()));
        if let Err(e) = r {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot write the deploy log");
        }
    }
}

/// A failed step: a one-line reason (stored with the deploy).
pub(crate) struct Failure(pub(crate) String);

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure(e.to_string())
    }
}

/// A release being run: what all its instances share.
pub(crate) struct ReleaseRun<'a> {
    pub app: &'a str,
    pub version: i64,
    pub dir: &'a Path,
    pub spec: &'a AppSpec,
    /// The process env without the per-instance vars (`process_env`).
    pub env: &'a [(String, String)],
    /// The formation it runs with (replicas per process type; `formation_of`).
    pub formation: &'a BTreeMap<String, u32>,
    /// The jail its processes run in (`jails.rs`); `None` for containers or with the jail off.
    pub jail: Option<&'a crate::jails::Prepared>,
    /// Which generation of the release's instances (`instance_id`).
    pub generation: u32,
}

/// A one-off command of a deploy.
struct Task<'a> {
    what: &'static str,
    command: &'a str,
    timeout: Duration,
}

/// What a running job holds: its cancel token and, for a build, its build slot (released once
/// the test and build steps are over).
pub(crate) struct JobRun {
    pub token: tokio_util::sync::CancellationToken,
    pub slot: Option<crate::sandbox::Slot>,
    /// Past the build: a failure from here is a deploy failure (for notifications).
    pub deploying: bool,
    /// A restart: new instances of the live release, this generation of them
    /// (`instance_id`), instead of a new release. `None`: the release's first instances.
    pub restart: Option<u32>,
}

/// What this deploy started, to undo on failure.
#[derive(Default)]
pub(crate) struct Started {
    pub(crate) instances: Vec<(String, Option<u16>)>,
}

impl Engine {
    /// Run one deploy of `version` to its end, recording the outcome. Called by the app's queue
    /// worker, which holds the app's lock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_pipeline(
        self: &Arc<Self>,
        app: &str,
        deploy_id: i64,
        version: i64,
        build: bool,
        restore: Option<i64>,
        log: &DeployLog,
        mut job: JobRun,
    ) {
        let t0 = Instant::now();
        let mut started = Started::default();
        if build {
            self.notify(deploy_id, "build.started");
        } else {
            job.deploying = true;
            self.notify(deploy_id, "deploy.started");
        }
        let result = self
            .run(
                app,
                deploy_id,
                version,
                build,
                restore,
                log,
                &mut started,
                &mut job,
            )
            .await;
        job.slot = None;
        match result {
            Ok(()) => {
                // Old release files (and images) go before the deploy is reported done, so
                // what a finished deploy leaves on disk is what stays.
                self.prune_releases(app).await;
                log.line(&format!(
                    "-----> Done in {:.1}s: v{version} is live at {}",
                    t0.elapsed().as_secs_f64(),
                    self.app_url(app)
                ));
                let _ = self.store.set_deploy_step(deploy_id, "done");
                let _ = self
                    .store
                    .finish_deploy(deploy_id, DeployStatus::Succeeded, None);
                tracing::info!(app, version, deploy = deploy_id, "deploy succeeded");
                self.notify(deploy_id, "deploy.succeeded");
            }
            Err(Failure(reason)) => {
                let status = if job.token.is_cancelled() {
                    log.line(&format!("-----> Deploy cancelled: {reason}"));
                    DeployStatus::Cancelled
                } else {
                    log.line(&format!("-----> Deploy failed: {reason}"));
                    DeployStatus::Failed
                };
                self.undo(started).await;
                let _ = self
                    .store
                    .set_release_status(app, version, ReleaseStatus::Failed);
                let _ = self.store.finish_deploy(deploy_id, status, Some(&reason));
                self.notify(
                    deploy_id,
                    if job.deploying {
                        "deploy.failed"
                    } else {
                        "build.failed"
                    },
                );
                tracing::warn!(app, version, deploy = deploy_id, %reason, "deploy failed");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        self: &Arc<Self>,
        app: &str,
        deploy_id: i64,
        version: i64,
        build: bool,
        restore: Option<i64>,
        log: &DeployLog,
        started: &mut Started,
        job: &mut JobRun,
    ) -> Result<(), Failure> {
        let token = job.token.clone();
        // Every step starts with a look at the cancel token, up to the switch.
        let step = |name: &str, text: &str| {
            if token.is_cancelled() {
                return Err(Failure(self.cancel_reason(deploy_id)));
            }
            let _ = self.store.set_deploy_step(deploy_id, name);
            log.line(&format!("-----> {text}"));
            Ok(())
        };
        let a = self.app(app)?;
        let release = self
            .store
            .release(app, version)
            .map_err(EngineError::from)?
            .ok_or_else(|| Failure(format!("release v{version} disappeared")))?;
        let mut spec = AppSpec::from_json(&release.spec)
            .map_err(|e| Failure(format!("release v{version} has a bad spec: {e}")))?;
        if build && crate::swarm::pin(&mut spec, self.cfg.default_runtime) {
            self.store
                .set_release_dir_spec(app, version, &release.dir, &spec.to_json())
                .map_err(EngineError::from)?;
        }
        crate::swarm::check(&spec)?;
        // Which runtime: checked first, so an unreachable Docker fails before any build.
        let docker = self.docker_for(&spec).map_err(Failure)?;
        // Services run on Docker whatever runs the app.
        let svc_docker = match (&docker, spec.services.is_empty()) {
            (Some(d), _) => Some(d.clone()),
            (None, true) => None,
            (None, false) => Some(self.docker.clone().map_err(|e| {
                Failure(format!(
                    "this app's [services] need Docker, which is not reachable: {e}"
                ))
            })?),
        };
        step(
            "prepare",
            &format!("{app} v{version}: {}", release.description),
        )?;
        if build {
            for w in &spec.warnings {
                log.line(&format!("-----> Warning: {w}"));
            }
        }
        // The config this release runs with: a rollback brings back its source's env (as
        // Heroku does), written to the store only when it goes live (in the switch); anything
        // else runs with the app's current env. It is kept with the release, so a restart
        // after a crash runs exactly what was live.
        let restored = restore
            .and_then(|v| self.store.release(app, v).ok().flatten())
            .and_then(|r| Config::parse(&r.config))
            .map(|c| c.env);
        if restored.is_some() {
            log.line("-----> With the env of that release");
        }
        let restoring = restored.is_some();
        let vars = self.app_env(app, &spec, restored)?;
        let config = Config {
            env: vars.clone(),
            formation: a.formation.clone(),
        };
        self.store
            .set_release_config(app, version, &config.to_json())
            .map_err(EngineError::from)?;
        let mut env = process_env(app, &spec, &vars);
        // Steps (test, build, release, postdeploy) know which release they make, as instances do.
        env.push(("BERTH_RELEASE".into(), format!("v{version}")));

        if build && (spec.test.is_some() || spec.build.is_some()) {
            let user = job.slot.as_ref().and_then(|s| s.user.clone());
            let (root, id, dir, u) = (
                self.scratch_root(),
                format!("{app}-{deploy_id}"),
                release.dir.clone(),
                user.clone(),
            );
            let scratch = tokio::task::spawn_blocking(move || {
                crate::sandbox::Scratch::enter(&root, &id, &dir, &u)
            })
            .await
            .map_err(|e| Failure(e.to_string()))?
            .map_err(Failure)?;
            let mut build_env = env.clone();
            build_env.push(("HOME".into(), scratch.home.display().to_string()));
            build_env.push(("TMPDIR".into(), scratch.tmp.display().to_string()));
            let build_jail = self.jails.for_build(&user, &scratch.dir);
            let mut outcome = Ok(());
            for (name, what, cmd) in [
                ("test", "tests", &spec.test),
                ("build", "build", &spec.build),
            ] {
                let Some(cmd) = cmd else { continue };
                let text = match name {
                    "test" => format!("Running tests: {}", cmd.command),
                    _ => format!("Building: {}", cmd.command),
                };
                let ready = step(name, &text).and_then(|()| build_jail.clone().map_err(Failure));
                outcome = match ready {
                    Ok(jail) => {
                        let task = Task {
                            what,
                            command: &cmd.command,
                            timeout: cmd.timeout,
                        };
                        self.run_command(
                            &task,
                            deploy_id,
                            &scratch.src,
                            &build_env,
                            &spec,
                            log,
                            &user,
                            jail,
                            &token,
                        )
                        .await
                    }
                    Err(f) => Err(f),
                };
                if outcome.is_err() {
                    break;
                }
            }
            let dir = release.dir.clone();
            let back = tokio::task::spawn_blocking(move || match outcome {
                Ok(()) => scratch.leave(&dir, &user).map_err(Failure),
                Err(f) => {
                    scratch.discard(&user);
                    Err(f)
                }
            })
            .await
            .map_err(|e| Failure(e.to_string()))?;
            back?;
        }
        let builds_image = spec.dockerfile || spec.docker_build.is_some();
        if let (true, true, Some(docker)) = (build, builds_image, &docker) {
            // The image: the release's source as the context, layers cached across releases.
            let tag = docker.image_tag(app, u64::try_from(version).unwrap_or_default());
            let (context, dockerfile) = match &spec.docker_build {
                Some(b) => (
                    crate::services::real_dir_beneath(&release.dir, &b.context).map_err(Failure)?,
                    b.dockerfile.clone(),
                ),
                None => (
                    crate::services::real_dir_beneath(&release.dir, Path::new("."))
                        .map_err(Failure)?,
                    "Dockerfile".to_string(),
                ),
            };
            step("image", &format!("Building image {tag} ({dockerfile})"))?;
            let labels = vec![
                ("berth.app".to_string(), app.to_string()),
                ("berth.release".to_string(), format!("v{version}")),
            ];
            let timeout = spec
                .build
                .as_ref()
                .map_or(IMAGE_TIMEOUT, |b| b.timeout.max(IMAGE_TIMEOUT));
            self.check_dockerfile(docker, &context, &dockerfile, &tag)
                .await
                .map_err(|e| Failure(format!("the image build was refused: {e}")))?;
            let built =
                docker.build_image(&context, &dockerfile, &tag, &labels, &log.path, timeout);
            tokio::select! {
                r = built => r.map_err(|e| Failure(format!("the image build failed: {e}")))?,
                () = token.cancelled() => return Err(Failure(self.cancel_reason(deploy_id))),
            };
            spec.image = Some(tag);
            self.store
                .set_release_dir_spec(app, version, &release.dir, &spec.to_json())
                .map_err(EngineError::from)?;
        }
        if let (Some(_), Some(_)) = (&spec.image, &spec.release_command) {
            return Err(Failure(
                "a Docker app's release: command would run on the host, not in its image (hint: run it from the image's entrypoint, or remove the release: line)".into(),
            ));
        }
        if spec.image.is_some() && docker.is_none() {
            return Err(Failure(
                "this release runs in containers and no Docker daemon is reachable".into(),
            ));
        }
        if let (true, false, Some(image), Some(docker)) =
            (build, builds_image, &spec.image, &docker)
        {
            // A compose web service's `image:`, used as it is.
            self.check_image(docker, app, image)
                .await
                .map_err(Failure)?;
        }
        if let (true, true, Some(image), Some(docker)) = (
            build,
            crate::swarm::on_swarm(&spec),
            spec.image.clone(),
            &docker,
        ) {
            // Swarm stops an old task once a new one is healthy: the probe gives an image
            // without tools a HEALTHCHECK that is the app's own health check.
            match crate::swarm::probe_busybox() {
                Some(busybox) => {
                    step("probe", "Adding berth's health probe to the image (Swarm waits for it before stopping an old task)")?;
                    let tag = docker.image_tag(app, u64::try_from(version).unwrap_or_default());
                    let labels = [
                        ("berth.app".to_string(), app.to_string()),
                        ("berth.release".to_string(), format!("v{version}")),
                    ];
                    docker
                        .add_probe(&image, &tag, &labels, &busybox, &log.path)
                        .await
                        .map_err(|e| Failure(format!("cannot add the health probe: {e}")))?;
                    spec.image = Some(tag);
                    self.store
                        .set_release_dir_spec(app, version, &release.dir, &spec.to_json())
                        .map_err(EngineError::from)?;
                }
                None => log.line("-----> Warning: no static /bin/busybox on this host (apt install busybox-static): without a HEALTHCHECK in the image, Swarm takes a task that runs for ready, and a rolling update can drop requests while new tasks start"),
            }
        }
        if build {
            // The build slot is free for the next app as soon as the build is done.
            job.slot = None;
            self.notify(deploy_id, "build.succeeded");
            job.deploying = true;
            self.notify(deploy_id, "deploy.started");
        }
        // Services (their waits can be long) run outside the build slot.
        if let Some(sd) = &svc_docker {
            if !spec.services.is_empty() {
                let names: Vec<&str> = spec.services.keys().map(String::as_str).collect();
                step("services", &format!("Services: {}", names.join(", ")))?;
            }
            let services = self.ensure_services(app, &release.dir, &spec, sd, log);
            tokio::select! {
                r = services => r?,
                () = token.cancelled() => return Err(Failure(self.cancel_reason(deploy_id))),
            }
            env.extend(
                self.service_env(app, &spec, sd, docker.is_some())
                    .await
                    .map_err(Failure)?,
            );
        }

        let jail = self
            .jail_for(app, &release.dir, &spec, &mut env)
            .await
            .map_err(Failure)?;
        let generation = job.restart.unwrap_or(0);
        let run = ReleaseRun {
            app,
            version,
            dir: &release.dir,
            spec: &spec,
            env: &env,
            formation: &a.formation,
            jail: jail.as_ref(),
            generation,
        };
        let (target, health_path) = match spec.kind {
            AppKind::Static => {
                let dir = release
                    .dir
                    .join(spec.static_dir.clone().unwrap_or_default());
                step("start", &format!("Static site from {}", dir.display()))?;
                // The build may have replaced the directory with a symlink: it must still be
                // a directory inside the release.
                let inside = match (dir.canonicalize(), release.dir.canonicalize()) {
                    (Ok(d), Ok(root)) => d.is_dir() && d.starts_with(root),
                    _ => false,
                };
                if !inside {
                    return Err(Failure(format!(
                        "static directory {} does not exist inside the release",
                        dir.display()
                    )));
                }
                (Target::Static(dir), None)
            }
            AppKind::Process => {
                let web = if crate::swarm::on_swarm(&spec) {
                    self.start_services(&run, started, log).await?
                } else {
                    self.start_instances(&run, &a.formation, started, log)
                        .await?
                };
                if !web.is_empty() {
                    step(
                        "health",
                        &format!(
                            "Waiting for {} web instance(s) to pass {} (timeout {:?})",
                            web.len(),
                            describe(&spec.health.check),
                            spec.health.timeout
                        ),
                    )?;
                    tokio::select! {
                        r = self.wait_healthy(app, &web, &spec, log) => r?,
                        () = token.cancelled() => return Err(Failure(self.cancel_reason(deploy_id))),
                    }
                }
                let path = match &spec.health.check {
                    HealthCheck::Http { path } => Some(path.clone()),
                    HealthCheck::Tcp => None,
                };
                let addrs = web.iter().map(|(_, a)| *a).collect::<Vec<_>>();
                let target = if addrs.is_empty() {
                    Target::None
                } else {
                    Target::Upstreams(addrs)
                };
                (target, path)
            }
        };

        // A restart runs the release as it is: its release phase ran when it went live.
        if let (Some(cmd), None) = (&spec.release_command, job.restart) {
            step("release", &format!("Running release command: {cmd}"))?;
            let task = Task {
                what: "release command",
                command: cmd,
                timeout: RELEASE_TIMEOUT,
            };
            self.run_command(
                &task,
                deploy_id,
                &release.dir,
                &env,
                &spec,
                log,
                &None,
                jail.as_ref().and_then(|j| j.jail.clone()),
                &token,
            )
            .await?;
        }

        // The last chance to cancel: from the switch on, the release is live.
        if !self.enter_switch(deploy_id) {
            return Err(Failure(self.cancel_reason(deploy_id)));
        }
        step("switch", "Switching traffic")?;
        let first_deploy = a.live_release.is_none();
        self.switch(
            app,
            deploy_id,
            Live {
                version,
                target,
                health_path,
                follow: crate::swarm::followed(&spec, app, version, generation),
                hsts: spec.hsts.clone(),
            },
            generation,
            restoring.then_some(&config.env),
        )?;
        // From here the new release is live: a failure no longer undoes it.
        started.instances.clear();
        if let Some(sd) = &svc_docker {
            self.remove_dropped_services(app, &spec, sd, log).await;
        }

        let step = |name: &str, text: &str| {
            let _ = self.store.set_deploy_step(deploy_id, name);
            log.line(&format!("-----> {text}"));
        };
        if !first_deploy {
            step(
                "drain",
                match job.restart {
                    Some(_) => "Draining the instances before the restart",
                    None => "Draining the previous release",
                },
            );
        }
        self.retire_old(
            app,
            (version, generation),
            spec.drain_timeout,
            spec.stop_grace,
            log,
        )
        .await;

        if let (true, Some(cmd)) = (first_deploy, &spec.postdeploy) {
            step("postdeploy", &format!("Running postdeploy: {cmd}"));
            let task = Task {
                what: "postdeploy",
                command: cmd,
                timeout: RELEASE_TIMEOUT,
            };
            let outcome = self
                .run_command(
                    &task,
                    deploy_id,
                    &release.dir,
                    &env,
                    &spec,
                    log,
                    &None,
                    jail.as_ref().and_then(|j| j.jail.clone()),
                    &Default::default(),
                )
                .await;
            if outcome.is_err() {
                log.line("-----> Warning: the postdeploy script failed; the release stays live");
            }
        }
        Ok(())
    }

    /// Stop and forget the instances a failed deploy started.
    pub(crate) async fn undo(&self, started: Started) {
        let mut stops = tokio::task::JoinSet::new();
        let swarm = self.docker.as_ref().ok().map(|d| d.swarm());
        for (id, _) in &started.instances {
            let (rt, id) = (self.runtime.clone(), id.clone());
            match (&swarm, rt.supervised(&id)) {
                // A Swarm service that took this release goes back to the one it replaced.
                (Some(swarm), false) => {
                    let swarm = swarm.clone();
                    stops.spawn(async move { swarm.undo(&id, Duration::from_secs(2)).await });
                }
                _ => {
                    stops.spawn(async move { rt.stop(&id, Duration::from_secs(2)).await });
                }
            }
        }
        while stops.join_next().await.is_some() {}
        for (id, port) in started.instances {
            let _ = self.store.delete_instance(&id);
            self.release_port(port);
            // What it printed is in the deploy log (its tail, when it failed its check); the
            // files go with it, or every failed deploy would leave its instances' logs behind.
            if let Some(app) = id.split('.').next() {
                self.remove_instance_logs(app, &id);
            }
        }
    }

    /// Keep the logs of the newest [`KEEP_DEPLOY_LOGS`] deploys of the app; older ones (up to
    /// 64 MiB a step) are removed, so that disk use does not grow with every deploy. Their rows
    /// stay, as history; their log reads empty.
    async fn prune_deploy_logs(&self, app: &str) {
        let Ok(deploys) = self.store.deploys(app, usize::MAX) else {
            return;
        };
        let old: Vec<PathBuf> = deploys
            .into_iter()
            .skip(KEEP_DEPLOY_LOGS)
            .filter(|d| !d.status.is_active())
            .map(|d| d.log_path)
            .filter(|p| p.is_file())
            .collect();
        if old.is_empty() {
            return;
        }
        tracing::info!(app, logs = old.len(), "pruning old deploy logs");
        let _ = tokio::task::spawn_blocking(move || {
            for p in old {
                let _ = std::fs::remove_file(p);
            }
        })
        .await;
    }

    /// Keep the files of the newest `KEEP_RELEASES` releases that ran, of the live one, and of
    /// builds still queued (and of the builds they reuse); older release directories are
    /// removed, so disk use does not grow with every deploy. Their rows stay, as history; a
    /// rollback to one says its files are gone.
    async fn prune_releases(&self, app: &str) {
        self.prune_deploy_logs(app).await;
        let Ok(releases) = self.store.releases(app) else {
            return;
        };
        let live = self
            .store
            .app(app)
            .ok()
            .flatten()
            .and_then(|a| a.live_release);
        let kept: Vec<&store::Release> = releases
            .iter()
            .filter(|r| r.status == ReleaseStatus::Ready)
            .take(KEEP_RELEASES)
            .chain(
                releases
                    .iter()
                    .filter(|r| Some(r.version) == live || r.status == ReleaseStatus::Building),
            )
            .collect();
        // Images: those of the kept releases stay (rollback targets), older ones go.
        if let Ok(docker) = &self.docker {
            let specs: Vec<AppSpec> = kept
                .iter()
                .filter_map(|r| AppSpec::from_json(&r.spec).ok())
                .collect();
            // The releases' images and the services' (one moving tag per service).
            let images: Vec<String> = specs
                .iter()
                .filter_map(|s| s.image.clone())
                .chain(specs.iter().flat_map(|s| {
                    s.services
                        .keys()
                        .map(|n| crate::services::service_tag(docker, app, n))
                }))
                .collect();
            // In the background: a prune waits for every running image build.
            let (docker, app) = (docker.clone(), app.to_string());
            tokio::spawn(async move {
                match docker.prune_images(&app, &images).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(app, images = n, "pruned old images"),
                    Err(e) => tracing::warn!(app, error = %e, "cannot prune old images"),
                }
            });
        }
        let keep: std::collections::HashSet<PathBuf> = kept.iter().map(|r| r.dir.clone()).collect();
        let root = self.app_dir(app).join("releases");
        let mut old: Vec<PathBuf> = releases
            .iter()
            .map(|r| r.dir.clone())
            .filter(|d| !keep.contains(d) && d.starts_with(&root) && d.is_dir())
            .collect();
        old.dedup();
        if old.is_empty() {
            return;
        }
        tracing::info!(app, dirs = old.len(), "pruning old release files");
        let _ = tokio::task::spawn_blocking(move || {
            for d in old {
                let _ = std::fs::remove_dir_all(d);
            }
        })
        .await;
    }

    /// Run a one-off command of the deploy (test, build, `release:`, postdeploy) in `dir` as
    /// `user`, its output appended to the deploy log. A cancel kills it (its process group).
    #[allow(clippy::too_many_arguments)]
    async fn run_command(
        &self,
        task: &Task<'_>,
        deploy_id: i64,
        dir: &Path,
        env: &[(String, String)],
        spec: &AppSpec,
        log: &DeployLog,
        user: &crate::sandbox::BuildUser,
        jail: Option<::jail::Jail>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), Failure> {
        let jailed = jail.is_some();
        let run = self.runtime.run_task(TaskSpec {
            id: format!("{}.{deploy_id}", task.what.replace(' ', "-")),
            command: task.command.to_string(),
            dir: dir.to_path_buf(),
            env: env.to_vec(),
            log_file: log.path.clone(),
            timeout: task.timeout,
            limits: if matches!(task.what, "tests" | "build") {
                self.cfg.maxima.step_limits(spec)
            } else {
                self.cfg.maxima.instance_limits(spec)
            },
            user: user.as_ref().map(|u| (u.uid, u.gid)),
            jail,
        });
        let outcome = tokio::select! {
            r = run => r.map_err(|e| Failure(format!("{} could not start: {e}", task.what)))?,
            () = cancel.cancelled() => return Err(Failure(self.cancel_reason(deploy_id))),
        };
        let checked = check_task(task.what, outcome, task.timeout);
        if let (Err(Failure(why)), true) = (&checked, jailed) {
            let tail = crate::logs::tail_file(&log.path, TAIL_LINES);
            if let Some(hint) = crate::jails::read_only_hint(&tail) {
                return Err(Failure(format!("{why} ({hint})")));
            }
        }
        checked
    }

    /// The app's env (`base`, else the stored one), plus app.json's generated secrets (stored,
    /// so they stay the same across releases); a required var without a value fails the deploy.
    pub(crate) fn app_env(
        &self,
        app: &str,
        spec: &AppSpec,
        base: Option<BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, String>, Failure> {
        let mut vars = match base {
            Some(b) => b,
            None => self.store.env(app).map_err(EngineError::from)?,
        };
        let mut generated = BTreeMap::new();
        for decl in &spec.env {
            if vars.contains_key(&decl.key) || decl.default.is_some() {
                continue;
            }
            if decl.generator_secret {
                generated.insert(decl.key.clone(), crate::random_hex(32));
            } else if decl.required {
                return Err(Failure(format!(
                    "env var {} is required by app.json and not set (hint: berth env:set {}=... -a {app})",
                    decl.key, decl.key
                )));
            }
        }
        if !generated.is_empty() {
            self.store
                .update_env(app, &generated, &[], "berth")
                .map_err(EngineError::from)?;
            vars.extend(generated);
        }
        Ok(vars)
    }

    /// Start the formation's instances of a release; returns the web ones (id, address).
    async fn start_instances(
        &self,
        run: &ReleaseRun<'_>,
        overrides: &BTreeMap<String, u32>,
        started: &mut Started,
        log: &DeployLog,
    ) -> Result<Vec<(String, SocketAddr)>, Failure> {
        let mut web = Vec::new();
        for (proc_type, command) in &run.spec.processes {
            let n = formation_of(run.spec, overrides, proc_type);
            if n == 0 {
                continue;
            }
            let what = if command.is_empty() {
                "the image's own command".to_string()
            } else {
                command.clone()
            };
            let plural = if n == 1 { "" } else { "s" };
            log.line(&format!(
                "-----> Starting {n} {proc_type} instance{plural}: {what}"
            ));
            for index in 1..=n {
                web.extend(self.start_new(run, proc_type, index, started).await?);
            }
        }
        Ok(web)
    }

    /// Start a new instance (a free port for `web`), recorded in `started` so that a failure
    /// of the deploy can undo it; the web one's (id, address).
    pub(crate) async fn start_new(
        &self,
        run: &ReleaseRun<'_>,
        proc_type: &str,
        index: u32,
        started: &mut Started,
    ) -> Result<Option<(String, SocketAddr)>, Failure> {
        let port = if proc_type == "web" {
            Some(self.free_port()?)
        } else {
            None
        };
        let id = instance_id(run.app, run.version, run.generation, proc_type, index);
        let result = self.start_one(run, proc_type, index, port).await;
        started.instances.push((id.clone(), port));
        result?;
        Ok(port.map(|p| (id, SocketAddr::from(([127, 0, 0, 1], p)))))
    }

    /// Start (or restart after a berth restart) one instance and record it.
    pub(crate) async fn start_one(
        &self,
        run: &ReleaseRun<'_>,
        proc_type: &str,
        index: u32,
        port: Option<u16>,
    ) -> Result<(), Failure> {
        let inst = self.instance_spec(run, proc_type, index, port);
        let id = inst.id.clone();
        if let Some(logs) = inst.log_file.parent() {
            std::fs::create_dir_all(logs).map_err(crate::io_err)?;
        }
        self.store
            .upsert_instance(&NewInstance {
                app: run.app.to_string(),
                release_version: run.version,
                proc_type: proc_type.to_string(),
                index,
                port,
                pid: None,
                pid_start: None,
                runtime_id: id.clone(),
                state: "starting".into(),
            })
            .map_err(EngineError::from)?;
        let info = self
            .runtime
            .start(inst)
            .await
            .map_err(|e| Failure(format!("{proc_type}.{index} could not start: {e}")))?;
        self.store
            .set_instance_state(&id, "running", info.pid, info.pid_start)
            .map_err(EngineError::from)?;
        Ok(())
    }

    pub(crate) fn instance_spec(
        &self,
        run: &ReleaseRun<'_>,
        proc_type: &str,
        index: u32,
        port: Option<u16>,
    ) -> InstanceSpec {
        let id = instance_id(run.app, run.version, run.generation, proc_type, index);
        let mut env = run.env.to_vec();
        if let Some(p) = port {
            env.push(("PORT".into(), p.to_string()));
        }
        env.retain(|(k, _)| k != "BERTH_RELEASE");
        env.push(("BERTH_RELEASE".into(), format!("v{}", run.version)));
        env.push(("DYNO".into(), format!("{proc_type}.{index}")));
        InstanceSpec {
            image: run.spec.image.clone(),
            container_port: run.spec.container_port,
            log_file: self.instance_log(run.app, &id),
            id,
            command: run
                .spec
                .processes
                .get(proc_type)
                .cloned()
                .unwrap_or_default(),
            dir: run.dir.to_path_buf(),
            env,
            limits: self.cfg.maxima.instance_limits(run.spec),
            restart: true,
            // An instance may listen on its own PORT only (the jail's Landlock bind rule).
            jail: run
                .jail
                .filter(|_| run.spec.image.is_none())
                .and_then(|j| j.jail.clone())
                .map(|mut jail| {
                    jail.bind = port.map(|p| vec![(p, p)]).unwrap_or_default();
                    jail
                }),
            container: crate::services::container_cmd(&run.spec.container),
            swarm: crate::swarm::on_swarm(run.spec).then(|| {
                crate::swarm::options(
                    run.spec,
                    formation_of(run.spec, run.formation, proc_type),
                    self.cfg.registry.as_deref(),
                    format!("{}.{}", run.app, self.cfg.domain),
                )
            }),
        }
    }

    /// Every new web instance must pass the health check within the spec's timeout; an
    /// instance that keeps crashing fails at once.
    pub(crate) async fn wait_healthy(
        &self,
        app: &str,
        web: &[(String, SocketAddr)],
        spec: &AppSpec,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let deadline = Instant::now() + spec.health.timeout;
        let checks = web.iter().map(|(id, addr)| {
            let rt = self.runtime.clone();
            let (id, addr, check) = (id.clone(), *addr, spec.health.check.clone());
            let host = format!("{app}.{}", self.cfg.domain);
            let docker = self.docker.as_ref().ok().cloned();
            async move {
                let r = crate::health::wait(addr, &host, &check, deadline, || {
                    match rt.state(&id) {
                        Some(runtime::InstanceState::Crashing { last_exit, .. }) => {
                            return Err(format!("keeps crashing ({last_exit})"))
                        }
                        Some(runtime::InstanceState::Stopped) | None => {
                            return Err("stopped".into())
                        }
                        _ => {}
                    }
                    // A container's HEALTHCHECK counts along with berth's own check.
                    match docker.as_ref().and_then(|d| d.health(&id)) {
                        Some("unhealthy") => Err("is unhealthy by the image's HEALTHCHECK".into()),
                        Some("starting") => Ok(false),
                        _ => Ok(true),
                    }
                })
                .await;
                (id, r)
            }
        });
        let mut set = tokio::task::JoinSet::new();
        for c in checks {
            set.spawn(c);
        }
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            if let Ok((id, Err(why))) = joined {
                if first_err.is_none() {
                    first_err = Some((id, why));
                }
                set.abort_all();
            }
        }
        if let Some((id, why)) = first_err {
            let label = dyno_of(&id).to_string();
            log.line(&format!("-----> {label} log (last {TAIL_LINES} lines):"));
            let tail = crate::logs::tail_file(&self.instance_log(app, &id), TAIL_LINES);
            for line in &tail {
                log.line(&format!("       {line}"));
            }
            if let Some(hint) = crate::jails::read_only_hint(&tail) {
                log.line(&format!("-----> {hint}"));
            }
            return Err(Failure(format!(
                "health check failed: {label} {why}; the previous release keeps serving"
            )));
        }
        Ok(())
    }

    /// Wait for in-flight requests to the app's instances other than the live `(version,
    /// generation)` to finish (up to `drain`), then stop them.
    async fn retire_old(
        &self,
        app: &str,
        (live, generation): (i64, u32),
        drain: Duration,
        grace: Duration,
        log: &DeployLog,
    ) {
        let old: Vec<store::Instance> = match self.store.instances(app) {
            Ok(list) => list
                .into_iter()
                .filter(|i| i.release_version != live || generation_of(&i.runtime_id) != generation)
                .collect(),
            Err(_) => return,
        };
        self.retire(app, old, drain, grace, log).await;
    }

    /// Instances already out of the route table: wait for their in-flight requests (up to
    /// `drain`), then stop them and forget them.
    pub(crate) async fn retire(
        &self,
        app: &str,
        old: Vec<store::Instance>,
        drain: Duration,
        grace: Duration,
        log: &DeployLog,
    ) {
        if old.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddr> = old
            .iter()
            .filter_map(|i| i.port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let t0 = Instant::now();
        loop {
            let busy: usize = addrs.iter().map(|a| self.proxy.in_flight(*a)).sum();
            if (busy == 0 && t0.elapsed() >= DRAIN_SETTLE) || t0.elapsed() >= drain {
                if busy > 0 {
                    log.line(&format!(
                        "-----> Drain timeout ({drain:?}): {busy} request(s) still in flight"
                    ));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut stops = tokio::task::JoinSet::new();
        for i in &old {
            let rt = self.runtime.clone();
            let id = i.runtime_id.clone();
            stops.spawn(async move { rt.stop(&id, grace).await });
        }
        while stops.join_next().await.is_some() {}
        for i in old {
            let _ = self.store.delete_instance(&i.runtime_id);
            self.release_port(i.port);
            self.remove_instance_logs(app, &i.runtime_id);
        }
    }

    /// The commit point: check the new route table, record the switch in one store
    /// transaction, then install the table. A crash after the store commit finishes the
    /// deploy at the next start; before it, the deploy is failed and the old release serves.
    pub(crate) fn switch(
        &self,
        app: &str,
        deploy_id: i64,
        live: Live,
        generation: u32,
        env: Option<&BTreeMap<String, String>>,
    ) -> Result<(), Failure> {
        let version = live.version;
        self.set_live(app, live, || {
            self.store
                .switch_live_with_env(app, deploy_id, (version, generation), env)
                .map_err(EngineError::from)
        })
    }

    /// Route `live` for `app`: build and check the new table, run `commit` (the store change
    /// that makes it so), then install the table. Any error leaves routes and state as they were.
    pub(crate) fn set_live(
        &self,
        app: &str,
        live: Live,
        commit: impl FnOnce() -> Result<(), EngineError>,
    ) -> Result<(), Failure> {
        let _routes = lock(&self.routes_lock);
        // A route that follows Swarm tasks takes them as they are now, not as they were when
        // the deploy looked (tasks may have come or gone since).
        let mut live = live;
        if let Some(addrs) = live.follow.as_ref().and_then(|f| self.runtime.endpoints(f)) {
            if !addrs.is_empty() {
                live.target = Target::Upstreams(addrs);
            }
        }
        let previous = lock(&self.live).insert(app.to_string(), live);
        let undo = || {
            let mut map = lock(&self.live);
            match &previous {
                Some(p) => map.insert(app.to_string(), p.clone()),
                None => map.remove(app),
            };
        };
        let table = match self.prepare_table() {
            Ok(t) => t,
            Err(e) => {
                undo();
                return Err(e.into());
            }
        };
        if let Err(e) = commit() {
            undo();
            return Err(e.into());
        }
        self.proxy.install_routes(table);
        Ok(())
    }
}

/// `<app>.v<N>.<type>.<i>`, or `<app>.v<N>.r<G>.<type>.<i>` for generation `G` > 0 (the
/// instances a restart starts for the same release): app names and process types cannot
/// contain `.`, so ids of different apps never collide.
pub(crate) fn instance_id(
    app: &str,
    version: i64,
    generation: u32,
    proc_type: &str,
    index: u32,
) -> String {
    match generation {
        0 => format!("{app}.v{version}.{proc_type}.{index}"),
        g => format!("{app}.v{version}.r{g}.{proc_type}.{index}"),
    }
}

/// The generation in an instance id ([`instance_id`]): its five-part form has one (a process
/// type may itself be named `r1`, so the count of parts tells).
pub(crate) fn generation_of(id: &str) -> u32 {
    let parts: Vec<&str> = id.split('.').collect();
    match parts.as_slice() {
        [_, _, g, _, _] => g
            .strip_prefix('r')
            .and_then(|g| g.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The `<type>.<i>` of an instance id, what its `DYNO` says ([`instance_id`]).
pub(crate) fn dyno_of(id: &str) -> &str {
    let skip = if id.split('.').count() == 5 { 3 } else { 2 };
    id.splitn(skip + 1, '.').nth(skip).unwrap_or(id)
}

/// What a process sees: the app's vars over app.json's defaults, and berth's own
/// (`PORT`, `DYNO` and `BERTH_RELEASE` are added per instance).
pub(crate) fn process_env(
    app: &str,
    spec: &AppSpec,
    vars: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut all: BTreeMap<String, String> = spec
        .env
        .iter()
        .filter_map(|d| Some((d.key.clone(), d.default.clone()?)))
        .collect();
    all.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.insert("BERTH_APP".into(), app.to_string());
    all.into_iter().collect()
}

/// A release's config, kept with it as JSON.
#[derive(Debug, Clone, Default)]
pub(crate) struct Config {
    pub env: BTreeMap<String, String>,
    pub formation: BTreeMap<String, u32>,
}

impl Config {
    /// `None` for a release that never started (`{}`) or a config that does not parse.
    pub(crate) fn parse(text: &str) -> Option<Config> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let env = serde_json::from_value(v.get("env")?.clone()).ok()?;
        let formation = serde_json::from_value(v.get("formation")?.clone()).ok()?;
        Some(Config { env, formation })
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::json!({ "env": self.env, "formation": self.formation }).to_string()
    }
}

/// Replicas of a process type: the app's override (`berth scale`), else the manifest's.
pub(crate) fn formation_of(
    spec: &AppSpec,
    overrides: &BTreeMap<String, u32>,
    proc_type: &str,
) -> u32 {
    overrides
        .get(proc_type)
        .or_else(|| spec.formation.get(proc_type))
        .copied()
        .unwrap_or(1)
}

fn describe(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { path } => format!("GET {path}"),
        HealthCheck::Tcp => "a TCP connect".into(),
    }
}

fn check_task(what: &str, outcome: TaskOutcome, timeout: Duration) -> Result<(), Failure> {
    match outcome {
        TaskOutcome::Success => Ok(()),
        TaskOutcome::Failed { code: Some(c), .. } => {
            Err(Failure(format!("{what} failed with exit code {c}")))
        }
        TaskOutcome::Failed { signal, .. } => Err(Failure(format!(
            "{what} was killed by signal {}",
            signal.unwrap_or(0)
        ))),
        TaskOutcome::TimedOut => Err(Failure(format!("{what} timed out after {timeout:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_carry_the_generation_of_a_restart() {
        assert_eq!(instance_id("shop", 3, 0, "web", 1), "shop.v3.web.1");
        assert_eq!(instance_id("shop", 3, 2, "web", 1), "shop.v3.r2.web.1");
        for (id, generation, dyno) in [
            ("shop.v3.web.1", 0, "web.1"),
            ("shop.v3.r2.web.1", 2, "web.1"),
            // A process type named like a generation.
            ("shop.v3.r1.4", 0, "r1.4"),
            ("shop.v3.r7.r1.4", 7, "r1.4"),
        ] {
            assert_eq!(generation_of(id), generation, "{id}");
            assert_eq!(dyno_of(id), dyno, "{id}");
        }
    }
}
