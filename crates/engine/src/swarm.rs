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
    Ok(())
}

/// How the runtime runs one process type of `spec` with `replicas` tasks.
pub(crate) fn options(
    spec: &AppSpec,
    replicas: u32,
    registry: Option<&str>,
) -> runtime::SwarmOptions {
    let per_task = spec.health.timeout + spec.stop_grace + PER_TASK_SLACK;
    runtime::SwarmOptions {
        replicas,
        constraints: spec.swarm.constraints.clone(),
        max_per_node: spec.swarm.max_replicas_per_node,
        stop_grace: spec.stop_grace,
        timeout: per_task * replicas.max(1),
        registry: registry.map(str::to_string),
    }
}

/// The instance whose tasks a Swarm release's route follows (its web service).
pub(crate) fn followed(spec: &AppSpec, app: &str, version: i64) -> Option<String> {
    (on_swarm(spec) && spec.processes.contains_key(WEB)).then(|| instance_id(app, version, WEB, 1))
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
        let mut web = Vec::new();
        for proc_type in run.spec.processes.keys() {
            let n = formation_of(run.spec, run.formation, proc_type);
            if n == 0 {
                continue;
            }
            log.line(&format!(
                "-----> Swarm service {proc_type}: {n} replica(s), rolling update (new task first, rollback on failure)"
            ));
            let id = instance_id(run.app, run.version, proc_type, 1);
            let result = self.start_one(run, proc_type, 1, None).await;
            started.instances.push((id.clone(), None));
            result?;
            if proc_type == WEB {
                web.extend(self.task_addrs(&id));
            }
        }
        Ok(web)
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
            let id = instance_id(run.app, run.version, proc_type, 1);
            let fresh = !current.iter().any(|i| i.runtime_id == id);
            let result = self.start_one(run, proc_type, 1, None).await;
            if fresh {
                started.instances.push((id, None));
            }
            result?;
        }
        let removed: Vec<store::Instance> = current
            .into_iter()
            .filter(|i| formation_of(run.spec, run.formation, &i.proc_type) == 0)
            .collect();
        let follow = followed(run.spec, run.app, run.version)
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
        let follow = followed(run.spec, run.app, run.version);
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
            },
        );
        match first_error {
            Some(e) => Err(EngineError::Internal(e)),
            None => Ok(()),
        }
    }

    /// A Swarm service's tasks changed (`Event::Endpoints` for instance `id`): route the app
    /// whose route follows that service to its tasks now.
    pub(crate) fn follow_tasks(self: &Arc<Self>, id: &str) {
        let app = id.split('.').next().unwrap_or_default();
        let changed = {
            let mut live = lock(&self.live);
            let Some(l) = live.get_mut(app) else { return };
            let Some(follow) = l.follow.clone() else {
                return;
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
            if addrs.is_empty() || same {
                false
            } else {
                l.target = Target::Upstreams(addrs);
                true
            }
        };
        if changed {
            if let Err(e) = self.refresh_routes() {
                tracing::error!(app, error = %e, "cannot route the service's tasks");
            }
        }
    }
}
