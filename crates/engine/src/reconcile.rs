//! Converge after a start (also after a `kill -9`): the store says what should run; make it so.
//!
//! 1. A deploy that was cut off either reached its commit point (`switch_live`) — it is
//!    finished — or did not — it failed and the previous release keeps serving. A build that
//!    was still waiting for its turn (never started, its files intact) is queued again; a
//!    webhook's build whose fetch was cut off is fetched again.
//! 2. Instances of a release that is not live are killed (only if pid and start time still
//!    match, so a reused pid is never signalled) and forgotten.
//! 3. Each live release is brought up with the config it ran with: a surviving instance is
//!    adopted, a missing one is started again; the app is routed as soon as it is up.
//! 4. Anything else the runtime started in an earlier run (an instance whose pid was never
//!    recorded, a build cut off) is stopped (`Runtime::sweep`).

use crate::pipeline::{formation_of, instance_id, Config, DeployLog, ReleaseRun};
use crate::{lock, Engine, EngineError, Live, Target};
use build::manifest::{AppKind, AppSpec, HealthCheck};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::{DeployKind, DeployStatus, ReleaseStatus};

const ORPHAN_GRACE: Duration = Duration::from_secs(5);

impl Engine {
    pub(crate) async fn reconcile(self: &Arc<Self>) -> Result<(), EngineError> {
        // Builds cut off mid-way lost their scratch dirs' state: they fail below.
        let scratch = self.scratch_root();
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(scratch)).await;
        let mut requeue = Vec::new();
        let mut refetch = Vec::new();
        for d in self.store.unfinished_deploys()? {
            let log = DeployLog::new(&d.log_path);
            let live = self.store.app(&d.app)?.and_then(|a| a.live_release);
            let waiting_build = d.kind == DeployKind::Build
                && d.status == DeployStatus::Queued
                && d.release_version.is_some_and(|v| {
                    self.store
                        .release(&d.app, v)
                        .ok()
                        .flatten()
                        .is_some_and(|r| r.dir.is_dir())
                });
            // A webhook's build cut off before its fetch finished: fetched again.
            let repo = self
                .store
                .app(&d.app)?
                .and_then(|a| a.settings.repo)
                .map(|r| r.url);
            let unfetched = d.kind == DeployKind::Build
                && d.status == DeployStatus::Queued
                && d.release_version.is_none()
                && d.meta.trigger == "webhook";
            if let (true, Some(v)) = (waiting_build, d.release_version) {
                // It never started: it runs now, in its turn (no push is dropped).
                log.line("-----> berth restarted: the build is queued again");
                requeue.push((d.app.clone(), d.id, v));
            } else if let (true, Some(url)) = (unfetched, repo) {
                log.line("-----> berth restarted: fetching again");
                refetch.push((d.clone(), url));
            } else if d.release_version.is_some() && live == d.release_version {
                log.line("-----> berth restarted after the switch: the deploy is complete");
                self.store
                    .finish_deploy(d.id, DeployStatus::Succeeded, None)?;
            } else {
                let reason = "interrupted by a berth restart; the previous release keeps serving";
                log.line(&format!("-----> Deploy failed: {reason}"));
                if let Some(v) = d.release_version {
                    let _ = self
                        .store
                        .set_release_status(&d.app, v, ReleaseStatus::Failed);
                }
                self.store
                    .finish_deploy(d.id, DeployStatus::Failed, Some(reason))?;
                self.notify(d.id, "deploy.failed");
            }
        }

        let apps = self.store.apps()?;
        let all = self.store.all_instances()?;
        // Ports recorded for any instance stay reserved, so a restarted instance never takes
        // the port of one that is alive but not adopted yet.
        for port in all.iter().filter_map(|i| i.port) {
            self.reserve_port(port);
        }
        let mut kills = tokio::task::JoinSet::new();
        for inst in all {
            // The live release's instances of the live generation (a restart cut off before its
            // switch leaves a newer one, after it an older one).
            let live = apps
                .iter()
                .find(|a| a.name == inst.app)
                .and_then(|a| Some((a.live_release?, a.live_generation)));
            let this = (
                inst.release_version,
                crate::pipeline::generation_of(&inst.runtime_id),
            );
            if live != Some(this) {
                if let (Some(pid), Some(start)) = (inst.pid, inst.pid_start) {
                    let rt = self.runtime.clone();
                    kills.spawn(async move { rt.kill_orphan(pid, start, ORPHAN_GRACE).await });
                }
                self.store.delete_instance(&inst.runtime_id)?;
                self.release_port(inst.port);
                self.remove_instance_logs(&inst.app, &inst.runtime_id);
            }
        }
        while kills.join_next().await.is_some() {}

        for app in &apps {
            self.remove_partial_uploads(&app.name);
            let Some(version) = app.live_release else {
                continue;
            };
            if let Err(e) = self
                .bring_up(&app.name, (version, app.live_generation), &app.formation)
                .await
            {
                tracing::error!(app = app.name, version, error = %e, "cannot bring the live release up");
            }
            // Route each app as soon as it is up (whatever came up, even after an error).
            if let Err(e) = self.refresh_routes() {
                tracing::error!(app = app.name, error = %e, "cannot route the app yet");
            }
        }
        self.remove_unwanted_services(&apps).await;
        self.remove_stray_instance_logs(&apps);
        match self.runtime.sweep(ORPHAN_GRACE).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(stopped = n, "stopped processes left from an earlier run"),
            Err(e) => tracing::error!(error = %e, "cannot sweep processes of an earlier run"),
        }
        self.refresh_routes()?;
        for (app, deploy, version) in requeue {
            self.enqueue(&app, crate::queue::Job::Build { deploy, version });
        }
        for (d, url) in refetch {
            let this = self.clone();
            tokio::spawn(async move {
                this.fetch_and_build(&d.app, &url, d.meta.clone(), &d.actor, d.id)
                    .await;
            });
        }
        Ok(())
    }

    /// The log files of instances berth no longer has (a crash between an instance's end and
    /// its files' removal): without this sweep, each such crash would leave them for good.
    /// Service logs (`svc-*`) are kept.
    fn remove_stray_instance_logs(&self, apps: &[store::App]) {
        let Ok(instances) = self.store.all_instances() else {
            return;
        };
        for app in apps {
            let Ok(entries) = std::fs::read_dir(self.app_dir(&app.name).join("logs")) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // `<id>.log`, or a rotated copy `<id>.log.<n>`.
                let Some(id) = name
                    .rsplit_once(".log")
                    .filter(|(_, rest)| {
                        rest.is_empty()
                            || rest
                                .strip_prefix('.')
                                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .map(|(id, _)| id)
                else {
                    continue;
                };
                let known = instances.iter().any(|i| i.runtime_id == id);
                if !known && !id.starts_with("svc-") && id.starts_with(&format!("{}.", app.name)) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    /// Adopt or start the instances of a live release and record what to route.
    async fn bring_up(
        &self,
        app: &str,
        (version, generation): (i64, u32),
        app_formation: &BTreeMap<String, u32>,
    ) -> Result<(), EngineError> {
        let release = self
            .store
            .release(app, version)?
            .ok_or_else(|| EngineError::Internal(format!("live release v{version} missing")))?;
        let spec = AppSpec::from_json(&release.spec).map_err(EngineError::Internal)?;
        let health_path = match &spec.health.check {
            HealthCheck::Http { path } => Some(path.clone()),
            HealthCheck::Tcp => None,
        };
        if spec.kind == AppKind::Static {
            let dir = release
                .dir
                .join(spec.static_dir.clone().unwrap_or_default());
            lock(&self.live).insert(
                app.to_string(),
                Live {
                    version,
                    target: Target::Static(dir),
                    health_path: None,
                    follow: None,
                    hsts: spec.hsts.clone(),
                },
            );
            return Ok(());
        }
        // The config it ran with; a release recorded before configs were kept uses today's.
        let config = match Config::parse(&release.config) {
            Some(c) => c,
            None => Config {
                env: self
                    .app_env(app, &spec, None)
                    .map_err(|f| EngineError::Internal(f.0))?,
                formation: app_formation.clone(),
            },
        };
        let mut env = self.live_env(app, &spec, &config.env).await;
        // Without its jail no instance of the app starts (the runtime refuses app code without
        // one); instances that survived the restart are adopted all the same.
        let (jail, jail_error) = match self.jail_for(app, &release.dir, &spec, &mut env).await {
            Ok(j) => (j, None),
            Err(e) => (None, Some(e)),
        };
        let run = ReleaseRun {
            app,
            version,
            dir: &release.dir,
            spec: &spec,
            env: &env,
            formation: &config.formation,
            jail: jail.as_ref(),
            generation,
        };
        let existing = self.store.instances(app)?;
        if crate::swarm::on_swarm(&spec) && self.docker.is_ok() {
            return self.bring_up_services(&run, &existing, health_path).await;
        }
        let mut web = Vec::new();
        let mut first_error = None;
        if spec.image.is_some() {
            if let Err(e) = &self.docker {
                // Containers outlive berth, and Docker restarts them: without the daemon they
                // are left as they are and routed where they were.
                for row in existing.iter().filter(|r| r.release_version == version) {
                    if let (Some(p), "web") = (row.port, row.proc_type.as_str()) {
                        self.reserve_port(p);
                        web.push(SocketAddr::from(([127, 0, 0, 1], p)));
                    }
                }
                lock(&self.live).insert(
                    app.to_string(),
                    Live {
                        version,
                        target: if web.is_empty() {
                            Target::None
                        } else {
                            Target::Upstreams(web)
                        },
                        health_path,
                        follow: None,
                        hsts: spec.hsts.clone(),
                    },
                );
                return Err(EngineError::Internal(format!(
                    "{app} runs on Docker, which is not reachable ({e}): its containers are routed as they were, unsupervised"
                )));
            }
        }
        for proc_type in spec.processes.keys() {
            let n = formation_of(&spec, &config.formation, proc_type);
            for index in 1..=n {
                let id = instance_id(app, version, generation, proc_type, index);
                let row = existing.iter().find(|i| i.runtime_id == id);
                let mut port = row.and_then(|r| r.port);
                let mut adopted = false;
                if let Some((pid, start)) = row.and_then(|r| Some((r.pid?, r.pid_start?))) {
                    let inst = self.instance_spec(&run, proc_type, index, port);
                    match self.runtime.adopt(inst, pid, start).await {
                        Ok(Some(_)) => adopted = true,
                        Ok(None) => {}
                        Err(e) => {
                            // Never leave it running unsupervised next to its replacement.
                            tracing::warn!(instance = id, error = %e, "cannot adopt; replacing it");
                            let _ = self.runtime.kill_orphan(pid, start, ORPHAN_GRACE).await;
                        }
                    }
                }
                if adopted {
                    tracing::info!(instance = id, "adopted a running instance");
                } else {
                    if let Some(e) = &jail_error {
                        tracing::error!(instance = id, reason = %e, "cannot start again");
                        first_error.get_or_insert(e.clone());
                        continue;
                    }
                    if proc_type == "web" {
                        self.release_port(port);
                        port = Some(self.free_port()?);
                    }
                    let started = self.start_one(&run, proc_type, index, port).await;
                    if let Err(f) = started {
                        tracing::error!(instance = id, reason = %f.0, "cannot start again");
                        self.release_port(port);
                        first_error.get_or_insert(f.0);
                        continue;
                    }
                    tracing::info!(instance = id, "started again after a berth restart");
                }
                if let (Some(p), "web") = (port, proc_type.as_str()) {
                    web.push(SocketAddr::from(([127, 0, 0, 1], p)));
                }
            }
        }
        // Instances beyond the formation (a scale cut off by a crash) go away.
        for row in existing.iter().filter(|r| r.release_version == version) {
            if formation_of(&spec, &config.formation, &row.proc_type) < row.index {
                if let (Some(pid), Some(start)) = (row.pid, row.pid_start) {
                    let _ = self.runtime.kill_orphan(pid, start, ORPHAN_GRACE).await;
                }
                self.store.delete_instance(&row.runtime_id)?;
                self.release_port(row.port);
                self.remove_instance_logs(app, &row.runtime_id);
            }
        }
        let target = if web.is_empty() {
            Target::None
        } else {
            Target::Upstreams(web)
        };
        lock(&self.live).insert(
            app.to_string(),
            Live {
                version,
                target,
                health_path,
                follow: None,
                hsts: spec.hsts.clone(),
            },
        );
        match first_error {
            Some(e) => Err(EngineError::Internal(e)),
            None => Ok(()),
        }
    }

    /// Uploads unpacked when berth died, before their release was recorded.
    fn remove_partial_uploads(&self, app: &str) {
        let dir = self.app_dir(app).join("releases");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".upload-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}
