//! Apps on Docker Swarm (`runtime = "swarm"` in berth.toml, or `[server] runtime = "swarm"`).
//!
//! The image is built as for a Docker app; then each process type with replicas is one Swarm
//! service, created or updated through the runtime (`SwarmRuntime`: Swarm replaces the tasks
//! itself, new before old, and rolls back on a failing task). The engine's part:
//!
//! - one instance row per process type (`<app>.v<N>.<type>.1`), with no port;
//! - the web route follows the service's tasks: `Live::follow` names the instance, and every
//!   `Event::Endpoints` re-reads `Runtime::endpoints` and re-routes (an empty set keeps the
//!   last one: better a 502 from a dead task than the app's host unrouted);
//! - a deploy that fails after a service took the new release hands the service back to the
//!   previous one (`SwarmRuntime::undo`); a scale updates the replicas in place.

use crate::pipeline::{formation_of, instance_id, Config, DeployLog, Failure, ReleaseRun, Started};
use crate::{lock, Engine, EngineError, Live, Target};
use build::manifest::{AppSpec, RuntimeChoice, WEB};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Swarm's monitor period per updated task (`SwarmRuntime`), plus slack, in a start's deadline.
const PER_TASK_SLACK: Duration = Duration::from_secs(15);

/// Does this release run as Swarm services?
pub(crate) fn on_swarm(spec: &AppSpec) -> bool {
    spec.runtime == RuntimeChoice::Swarm && spec.image.is_some()
}

/// A new build of an app that leaves the runtime to the server, on a server whose default is
/// Swarm, runs on Swarm from now on (kept in the release's spec, so a change of the server's
/// default never moves a release that runs). Returns whether the spec changed.
pub(crate) fn pin(spec: &mut AppSpec, default: RuntimeChoice) -> bool {
    let containers = spec.dockerfile || spec.docker_build.is_some() || spec.image.is_some();
    if spec.runtime == RuntimeChoice::Auto && default == RuntimeChoice::Swarm && containers {
        spec.runtime = RuntimeChoice::Swarm;
        return true;
    }
    false
}

/// Why a Swarm release cannot run, if it cannot.
pub(crate) fn check(spec: &AppSpec) -> Result<(), Failure> {
    if spec.runtime == RuntimeChoice::Swarm && !spec.services.is_empty() {
        return Err(Failure(
            "accessory services ([services] or a compose file's other services) are not supported for a Swarm app yet (hint: deploy the database as its own app or run it outside, and set its URL with `berth env:set`)".into(),
        ));
    }
    if spec.runtime == RuntimeChoice::Swarm && !spec.container.volumes.is_empty() {
        return Err(Failure(
            "the web service's volumes are not supported for a Swarm app: a volume lives on one node and the tasks run on several (hint: keep the data in a database outside, and set its URL with `berth env:set`)".into(),
        ));
    }
    Ok(())
}

/// How the runtime runs one process type of `spec` with `replicas` tasks; `host` is the app's
/// host name (its health check sends it).
pub(crate) fn options(
    spec: &AppSpec,
    replicas: u32,
    registry: Option<&str>,
    host: String,
) -> runtime::SwarmOptions {
    let per_task = spec.health.timeout + spec.stop_grace + PER_TASK_SLACK;
    runtime::SwarmOptions {
        replicas,
        constraints: spec.swarm.constraints.clone(),
        max_per_node: spec.swarm.max_replicas_per_node,
        stop_grace: spec.stop_grace,
        timeout: per_task * replicas.max(1),
        registry: registry.map(str::to_string),
        health_path: match &spec.health.check {
            build::manifest::HealthCheck::Http { path } => Some(path.clone()),
            build::manifest::HealthCheck::Tcp => None,
        },
        health_host: host,
        health_start: spec.health.timeout,
    }
}

/// Debian's static busybox on this host (`busybox-static`), for the probe layer: a dynamic one
/// would not run in an image without a libc.
pub(crate) fn probe_busybox() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from("/bin/busybox");
    let elf = std::fs::read(&path).ok()?;
    is_static_elf64(&elf).then_some(path)
}

/// A 64-bit little-endian ELF executable without a program interpreter (`PT_INTERP`): it runs
/// without a dynamic loader, so in an image without a libc too.
fn is_static_elf64(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    // "\x7fELF", 64-bit, little-endian.
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        // PT_INTERP = 3.
        u32_at(phoff + i * usize::from(phentsize)).is_some_and(|t| t != 3)
    })
}

/// The instance whose tasks a Swarm release's route follows (its web service).
pub(crate) fn followed(spec: &AppSpec, app: &str, version: i64, generation: u32) -> Option<String> {
    (on_swarm(spec) && spec.processes.contains_key(WEB))
        .then(|| instance_id(app, version, generation, WEB, 1))
}

impl Engine {
    /// Create or update the release's services (one per process type with replicas), each
    /// converged before the next; the web service's tasks as (instance, address).
    pub(crate) async fn start_services(
        &self,
        run: &ReleaseRun<'_>,
        started: &mut Started,
        log: &DeployLog,
    ) -> Result<Vec<(String, SocketAddr)>, Failure> {
        for proc_type in run.spec.processes.keys() {
            let n = formation_of(run.spec, run.formation, proc_type);
            if n == 0 {
                continue;
            }
            log.line(&format!(
                "-----> Swarm service {proc_type}: {n} replica(s), rolling update (rollback on failure){}",
                if proc_type == WEB { "; each task must pass the health check" } else { "" }
            ));
            let id = instance_id(run.app, run.version, run.generation, proc_type, 1);
            let result = self.start_one(run, proc_type, 1, None).await;
            started.instances.push((id.clone(), None));
            result?;
        }
        // The runtime returned once every web task passed the health check from here; the
        // switch routes the tasks as they are then (`Live::follow`).
        Ok(Vec::new())
    }

    /// The routable tasks of instance `id`'s service.
    fn task_addrs(&self, id: &str) -> Vec<(String, SocketAddr)> {
        self.runtime
            .endpoints(id)
            .unwrap_or_default()
            .into_iter()
            .map(|a| (id.to_string(), a))
            .collect()
    }

    /// `berth scale` of a Swarm release: the services' replicas change in place (Swarm adds
    /// or removes tasks); a process type scaled to 0 loses its service.
    pub(crate) async fn scale_services(
        &self,
        run: &ReleaseRun<'_>,
        deploy_id: i64,
        current: Vec<store::Instance>,
        mut config: Config,
        log: &DeployLog,
        started: &mut Started,
    ) -> Result<(), Failure> {
        for proc_type in run.spec.processes.keys() {
            let want = formation_of(run.spec, run.formation, proc_type);
            if want == 0 {
                continue;
            }
            log.line(&format!(
                "-----> Swarm service {proc_type}: {want} replica(s)"
            ));
            let id = instance_id(run.app, run.version, run.generation, proc_type, 1);
            let fresh = !current.iter().any(|i| i.runtime_id == id);
            let result = self.start_one(run, proc_type, 1, None).await;
            if fresh {
                started.instances.push((id, None));
            } else if let Err(f) = result {
                // Back to the replicas it had, best effort: the formation stays as recorded.
                let before = ReleaseRun {
                    formation: &config.formation,
                    ..*run
                };
                if let Err(again) = self.start_one(&before, proc_type, 1, None).await {
                    tracing::warn!(app = run.app, proc_type, reason = %again.0, "cannot restore the replicas");
                }
                return Err(f);
            }
            result?;
        }
        let removed: Vec<store::Instance> = current
            .into_iter()
            .filter(|i| formation_of(run.spec, run.formation, &i.proc_type) == 0)
            .collect();
        let follow = followed(run.spec, run.app, run.version, run.generation)
            .filter(|_| formation_of(run.spec, run.formation, WEB) > 0);
        let addrs: Vec<SocketAddr> = follow
            .iter()
            .flat_map(|id| self.task_addrs(id))
            .map(|(_, a)| a)
            .collect();
        let target = if addrs.is_empty() {
            Target::None
        } else {
            Target::Upstreams(addrs)
        };
        let health_path = lock(&self.live)
            .get(run.app)
            .and_then(|l| l.health_path.clone());
        config.formation = run.formation.clone();
        let (app, version) = (run.app, run.version);
        self.set_live(
            app,
            Live {
                version,
                target,
                health_path,
                follow,
                hsts: run.spec.hsts.clone(),
            },
            || {
                self.store
                    .set_release_config(app, version, &config.to_json())
                    .and_then(|()| self.store.set_deploy_release(deploy_id, version))
                    .map_err(EngineError::from)
            },
        )?;
        started.instances.clear();
        if !removed.is_empty() {
            log.line(&format!("-----> Removing {} service(s)", removed.len()));
            self.retire(
                app,
                removed,
                run.spec.drain_timeout,
                run.spec.stop_grace,
                log,
            )
            .await;
        }
        Ok(())
    }

    /// After a restart: the live release's services are started again (Swarm finds them
    /// unchanged and nothing moves) and routed.
    pub(crate) async fn bring_up_services(
        &self,
        run: &ReleaseRun<'_>,
        existing: &[store::Instance],
        health_path: Option<String>,
    ) -> Result<(), EngineError> {
        let mut first_error = None;
        for proc_type in run.spec.processes.keys() {
            if formation_of(run.spec, run.formation, proc_type) == 0 {
                continue;
            }
            if let Err(f) = self.start_one(run, proc_type, 1, None).await {
                tracing::error!(app = run.app, proc_type, reason = %f.0, "swarm service not converged");
                first_error.get_or_insert(f.0);
            }
        }
        for row in existing.iter().filter(|r| r.release_version == run.version) {
            if formation_of(run.spec, run.formation, &row.proc_type) == 0 || row.index > 1 {
                self.store.delete_instance(&row.runtime_id)?;
            }
        }
        let follow = followed(run.spec, run.app, run.version, run.generation);
        let addrs: Vec<SocketAddr> = follow
            .iter()
            .flat_map(|id| self.task_addrs(id))
            .map(|(_, a)| a)
            .collect();
        lock(&self.live).insert(
            run.app.to_string(),
            Live {
                version: run.version,
                target: if addrs.is_empty() {
                    Target::None
                } else {
                    Target::Upstreams(addrs)
                },
                health_path,
                follow,
                hsts: run.spec.hsts.clone(),
            },
        );
        match first_error {
            Some(e) => Err(EngineError::Internal(e)),
            None => Ok(()),
        }
    }

    /// After a restart: Swarm services that no live release runs go (an app destroyed, a
    /// process type dropped or scaled to 0 while berth was down). Every live release on Swarm
    /// keeps its process types' services, even one whose bring-up failed.
    pub(crate) async fn remove_unwanted_services(&self, apps: &[store::App]) {
        let Ok(docker) = &self.docker else { return };
        let mut keep = std::collections::HashSet::new();
        for a in apps {
            let Some(v) = a.live_release else { continue };
            // An app that cannot be looked at might run on Swarm: remove nothing at all.
            let Ok(Some(release)) = self.store.release(&a.name, v) else {
                tracing::warn!(
                    app = a.name,
                    "cannot read the live release: no swarm service is removed"
                );
                return;
            };
            let Ok(spec) = AppSpec::from_json(&release.spec) else {
                tracing::warn!(
                    app = a.name,
                    "cannot read the live release's spec: no swarm service is removed"
                );
                return;
            };
            if !on_swarm(&spec) {
                continue;
            }
            let formation = Config::parse(&release.config)
                .map(|c| c.formation)
                .unwrap_or_else(|| a.formation.clone());
            for t in spec.processes.keys() {
                if formation_of(&spec, &formation, t) > 0 {
                    keep.insert((a.name.clone(), t.clone()));
                }
            }
        }
        match docker.swarm().remove_unwanted(&keep).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(removed = n, "removed swarm services no live release runs"),
            Err(e) => tracing::error!(error = %e, "cannot look for unwanted swarm services"),
        }
    }

    /// A Swarm service's tasks changed (`Event::Endpoints` for instance `id`; `None`: events
    /// were lost, look at every app): route the apps whose route follows a service to its
    /// tasks now. Under `routes_lock`, like every change of the routed state.
    pub(crate) fn follow_tasks(self: &Arc<Self>, id: Option<&str>) {
        let _routes = lock(&self.routes_lock);
        let app = id.map(|id| id.split('.').next().unwrap_or_default());
        let mut changed = false;
        {
            let mut live = lock(&self.live);
            for (name, l) in live.iter_mut() {
                if app.is_some_and(|a| a != name.as_str()) {
                    continue;
                }
                let Some(follow) = l.follow.clone() else {
                    continue;
                };
                let mut addrs = self.runtime.endpoints(&follow).unwrap_or_default();
                addrs.sort();
                let same = match &l.target {
                    Target::Upstreams(old) => {
                        let mut old = old.clone();
                        old.sort();
                        old == addrs
                    }
                    _ => false,
                };
                // An empty set keeps the last one: a 502 from a task that just went beats the
                // app's host unrouted.
                if !addrs.is_empty() && !same {
                    l.target = Target::Upstreams(addrs);
                    changed = true;
                }
            }
        }
        if changed {
            match self.prepare_table() {
                Ok(table) => self.proxy.install_routes(table),
                Err(e) => tracing::error!(error = %e, "cannot route the swarm tasks"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_static_elf_makes_a_probe() {
        // This host's own binaries: `sh` is dynamic everywhere berth runs.
        if let Ok(sh) = std::fs::read("/bin/sh") {
            assert!(!super::is_static_elf64(&sh));
        }
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            // Debian's busybox-static (the CI installs it).
            assert!(super::is_static_elf64(&bb));
        }
        assert!(!super::is_static_elf64(b"#!/bin/sh\n"));
        assert!(!super::is_static_elf64(b"\x7fELF\x02\x01"));
    }
}
