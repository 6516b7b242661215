//! [`SwarmRuntime`]: each process type of an app is one Docker Swarm service
//! (`<prefix>-<app>-<type>`) with N replicas, for when one machine is not enough.
//!
//! - **One berth instance is one service.** The engine starts `<app>.v<N>.<type>.1` with
//!   [`SwarmOptions`] (replicas, placement); the service is created, or *updated* when it
//!   exists: Swarm then replaces the tasks itself, one at a time, new before old
//!   (`start-first`), and rolls the service back on its own when a new task fails
//!   (`failure_action: rollback`). [`Runtime::start`] returns once the service has converged:
//!   every replica runs the new release (and passes the image's HEALTHCHECK) and the update is
//!   `completed`; a rollback, a pause or the deadline is an error naming the task's error.
//! - **Routing follows the tasks.** Each task publishes its port in `host` mode on an
//!   ephemeral port of its node; a watcher lists the running tasks every [`WATCH_EVERY`],
//!   takes each one's node address and published port, adds a task only once its port
//!   accepts a connection, and sends [`Event::Endpoints`] when the set changes; the engine
//!   then re-routes ([`Runtime::endpoints`]).
//! - **Stop.** Stopping the release a service runs removes the service; stopping any other
//!   release is a no-op (the service moved on already). [`SwarmRuntime::undo`] of a deploy
//!   that failed after the update hands the service back to the release it replaced
//!   (Swarm's rollback).
//!   Swarm supervises the tasks, so they outlive berth, SIGTERM included
//!   ([`Runtime::supervised`] is false); [`SwarmRuntime::remove_app`] removes an app's
//!   services.
//! - **Labels.** Services carry `berth.owner`, `berth.app`, `berth.instance` (the release
//!   they run), `berth.previous` (the one they replaced) and a hash of what berth asked for;
//!   task containers carry `berth.swarm.instance` — not `berth.instance`, so the container
//!   runtime never takes them for its own.
//! - **Images.** With a registry ([`SwarmOptions::registry`]) the release's image is pushed
//!   there (and its local registry tag dropped again), so any node can run the tasks; without
//!   one, the image exists on this node only and the tasks are constrained to it.
//! - **Logs.** The output of the tasks on this node is followed into the instance's log file.
//!   Tasks on other nodes: `docker service logs` on a manager.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, NodeSpecAvailabilityEnum, NodeSpecRoleEnum,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum, TaskSpec,
    TaskSpecContainerSpec, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListNodesOptions, ListServicesOptions, ListTasksOptions,
    UpdateServiceOptions,
};

use super::{
    check_id, docker_err, fnv1a, follow_logs, lock, one_line, sanitize, status_of, unix_now, Inner,
    Managed, Track, APP_LABEL, INSTANCE_LABEL, OWNER_LABEL,
};
use super::{Arc, AtomicBool, Duration, Instant, Mutex, Ordering, PathBuf, StreamExt};
use crate::{
    Event, InstanceInfo, InstanceSpec, InstanceState, Runtime, RuntimeError, TaskOutcome,
    TaskSpec as OneOff,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How often the watcher lists the tasks (and how often `start` looks while converging).
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How long a new task's port gets to accept a connection in one probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Swarm watches each updated task this long for a failure before it moves on.
const MONITOR: Duration = Duration::from_secs(3);
/// Tasks of a new service that may fail before its start is given up.
const MAX_FAILED_TASKS: usize = 3;
/// The port an app listens on inside its task when neither the spec nor the image says.
const DEFAULT_PORT: u16 = 5000;
/// The release a service ran before the current one (what a rollback goes back to).
const PREVIOUS_LABEL: &str = "berth.previous";
/// A hash of what berth asked for: the same hash means the tasks need no update.
const TEMPLATE_LABEL: &str = "berth.template";
/// The owner on task containers (see the module docs).
const TASK_OWNER_LABEL: &str = "berth.swarm.owner";
/// The release on task containers.
const TASK_INSTANCE_LABEL: &str = "berth.swarm.instance";

/// How a process type runs on Swarm ([`InstanceSpec::swarm`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SwarmOptions {
    pub replicas: u32,
    /// Placement constraints as Swarm spells them (`node.role == worker`, `node.labels.x == y`).
    pub constraints: Vec<String>,
    /// At most this many tasks of the service on one node.
    pub max_per_node: Option<u64>,
    /// SIGTERM → SIGKILL for a task Swarm stops.
    pub stop_grace: Duration,
    /// `start` fails when the service has not converged by then (Swarm goes on rolling back).
    pub timeout: Duration,
    /// A registry every node can pull from (`host[:port][/path]`): the image is pushed there
    /// and the service names it there. `None`: the image exists on this node only, so the
    /// tasks are kept on it (`node.id == <this node>`).
    pub registry: Option<String>,
}

/// A node of the swarm, for `berth nodes`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct NodeInfo {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    pub addr: String,
    pub leader: bool,
    pub engine: String,
    /// Tasks of this berth's services running there.
    pub tasks: usize,
}

/// Runs process types as Swarm services. See the module docs.
pub struct SwarmRuntime {
    inner: Arc<Inner>,
    state: Arc<State>,
    watcher: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    /// The services this berth manages, by service name.
    services: Mutex<HashMap<String, Arc<Svc>>>,
    events: Option<broadcast::Sender<Event>>,
}

/// One managed service.
struct Svc {
    /// Swarm's id of the service (tasks name it).
    service_id: Mutex<String>,
    /// The instance id it runs now.
    current: Mutex<String>,
    log_file: Mutex<PathBuf>,
    /// Its routable tasks as of the watcher's last look.
    endpoints: Mutex<Vec<SocketAddr>>,
    /// Running tasks of `current` as of the watcher's last look.
    running: Mutex<usize>,
    /// Tasks whose port accepted a connection (they stay routable while they run).
    probed: Mutex<HashSet<String>>,
    /// Log followers of this node's task containers, by container id.
    followers: Mutex<HashMap<String, Arc<Managed>>>,
    since: Mutex<std::time::SystemTime>,
}

impl SwarmRuntime {
    pub(super) fn new(inner: Arc<Inner>) -> Arc<SwarmRuntime> {
        let state = Arc::new(State {
            services: Mutex::default(),
            events: Some(broadcast::channel(256).0),
        });
        let watcher = tokio::spawn(watch(inner.clone(), state.clone()));
        Arc::new(SwarmRuntime {
            inner,
            state,
            watcher,
        })
    }

    /// This node's id, or why berth cannot run services here (not in a swarm, not a manager).
    pub async fn check_manager(&self) -> Result<String, RuntimeError> {
        let info = self
            .inner
            .docker
            .info()
            .await
            .map_err(|e| docker_err("cannot ask the Docker daemon about its swarm", e))?;
        let swarm = info.swarm.unwrap_or_default();
        let active = swarm
            .local_node_state
            .is_some_and(|s| s.to_string() == "active");
        if !active || swarm.control_available != Some(true) {
            return Err(RuntimeError::Docker(format!(
                "the Docker daemon at {} is not a Swarm manager (hint: `docker swarm init` on it, or point [server] docker_socket at a manager)",
                self.inner.socket
            )));
        }
        Ok(swarm.node_id.unwrap_or_default())
    }

    /// The swarm's nodes, with how many of this berth's tasks each runs.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RuntimeError> {
        self.check_manager().await?;
        let docker = &self.inner.docker;
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| docker_err("cannot list the swarm's nodes", e))?;
        let tasks = self.inner.running_tasks().await?;
        let mut out: Vec<NodeInfo> = nodes
            .into_iter()
            .map(|n| {
                let id = n.id.clone().unwrap_or_default();
                let spec = n.spec.clone().unwrap_or_default();
                let desc = n.description.clone().unwrap_or_default();
                NodeInfo {
                    tasks: tasks
                        .iter()
                        .filter(|t| t.node_id.as_deref() == Some(id.as_str()))
                        .count(),
                    hostname: desc.hostname.unwrap_or_default(),
                    role: spec.role.unwrap_or(NodeSpecRoleEnum::EMPTY).to_string(),
                    availability: spec
                        .availability
                        .unwrap_or(NodeSpecAvailabilityEnum::EMPTY)
                        .to_string(),
                    state: n
                        .status
                        .as_ref()
                        .and_then(|s| s.state)
                        .map(|s| s.to_string())
                        .unwrap_or_default(),
                    addr: node_addr(&n).map(|a| a.to_string()).unwrap_or_default(),
                    leader: n
                        .manager_status
                        .as_ref()
                        .and_then(|m| m.leader)
                        .unwrap_or(false),
                    engine: desc
                        .engine
                        .and_then(|e| e.engine_version)
                        .unwrap_or_default(),
                    id,
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.hostname, &a.id).cmp(&(&b.hostname, &b.id)));
        Ok(out)
    }

    /// Removes every service of `app` (the app is destroyed). Returns how many. Nothing to do
    /// on a daemon that is no swarm manager.
    pub async fn remove_app(&self, app: &str) -> Result<usize, RuntimeError> {
        if self.check_manager().await.is_err() {
            return Ok(0);
        }
        let mut removed = 0;
        for (name, _) in self.inner.owned_services(Some(app)).await? {
            self.remove(&name).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// A deploy that failed after service `id` took its release: the service goes back to
    /// the release it ran before (Swarm's rollback), or is removed when it ran none. A service
    /// that runs another release already is left alone.
    pub async fn undo(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.hand_back(id, grace, true).await
    }

    /// Stop or undo (see [`SwarmRuntime::undo`]) release `id` on its service.
    async fn hand_back(&self, id: &str, grace: Duration, undo: bool) -> Result<(), RuntimeError> {
        let name = self.name_of(id);
        let s = match self
            .inner
            .docker
            .inspect_service(&name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => s,
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(docker_err(&format!("cannot inspect service {name}"), e)),
        };
        let labels = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        if labels.get(INSTANCE_LABEL).map(String::as_str) != Some(id) {
            return Ok(());
        }
        match labels
            .get(PREVIOUS_LABEL)
            .filter(|p| undo && p.as_str() != id)
        {
            Some(previous) => {
                let version = s
                    .version
                    .and_then(|v| v.index)
                    .and_then(|v| i32::try_from(v).ok())
                    .unwrap_or_default();
                self.inner
                    .docker
                    .update_service(
                        &name,
                        s.spec.clone().unwrap_or_default(),
                        UpdateServiceOptions {
                            version,
                            rollback: Some("previous".to_string()),
                            ..Default::default()
                        },
                        None,
                    )
                    .await
                    .map_err(|e| docker_err(&format!("cannot roll back service {name}"), e))?;
                tracing::info!(service = %name, from = %id, to = %previous, "swarm service rolled back");
                if let Some(svc) = lock(&self.state.services).get(&name) {
                    *lock(&svc.current) = previous.clone();
                }
            }
            None => self.remove(&name).await?,
        }
        // Until the release's tasks are gone (bounded).
        let deadline = Instant::now() + grace + Duration::from_secs(10);
        while Instant::now() < deadline {
            let tasks = self.inner.tasks_of(&name).await.unwrap_or_default();
            if !tasks.iter().any(|t| {
                task_instance(t) == Some(id)
                    && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
            }) {
                break;
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
        Ok(())
    }

    fn name_of(&self, id: &str) -> String {
        service_name(&self.inner.prefix, id)
    }

    /// Deletes service `name` and forgets it; waits (bounded) until its tasks are gone.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let forgotten = lock(&self.state.services).remove(name);
        match self.inner.docker.delete_service(name).await {
            Ok(()) => tracing::info!(service = %name, "swarm service removed"),
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => return Err(docker_err(&format!("cannot remove service {name}"), e)),
        }
        if let Some(svc) = forgotten {
            svc.unfollow_all();
        }
        self.emit_for(name);
        Ok(())
    }

    fn emit_for(&self, service: &str) {
        if let Some(tx) = &self.state.events {
            let _ = tx.send(Event::Endpoints {
                id: service.to_string(),
            });
        }
    }

    /// What berth asks Swarm to run for `spec`, and its hash.
    async fn service_spec(
        &self,
        spec: &InstanceSpec,
        opts: &SwarmOptions,
        previous: Option<&str>,
        local_node: &str,
    ) -> Result<(ServiceSpec, String), RuntimeError> {
        let local = spec
            .image
            .clone()
            .ok_or_else(|| RuntimeError::Docker(format!("instance {} has no image", spec.id)))?;
        let inspected = self
            .inner
            .docker
            .inspect_image(&local)
            .await
            .map_err(|e| docker_err(&format!("no image {local}"), e))?;
        let mut constraints = opts.constraints.clone();
        let image = match &opts.registry {
            Some(registry) => self.push(&local, registry).await?,
            None => {
                constraints.push(format!("node.id == {local_node}"));
                local
            }
        };
        let exposed: Vec<String> = inspected
            .config
            .and_then(|c| c.exposed_ports)
            .map(|ports| ports.into_keys().collect())
            .unwrap_or_default();
        let inside = spec
            .container_port
            .or(match exposed.as_slice() {
                [one] => one.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()),
                _ => None,
            })
            .unwrap_or(DEFAULT_PORT);
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k != "PORT")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("PORT={inside}"));
        let app = super::app_of(&spec.id).to_string();
        let command = (!spec.command.trim().is_empty()).then(|| {
            vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                spec.command.clone(),
            ]
        });
        let grace = i64::try_from(opts.stop_grace.as_nanos()).unwrap_or(i64::MAX);
        let limits = &spec.limits;
        let hash = {
            let mut sorted = env.clone();
            sorted.sort();
            format!(
                "{:016x}",
                fnv1a(&format!(
                    "{image}\n{:?}\n{sorted:?}\n{inside}\n{limits:?}\n{:?}\n{:?}\n{grace}\n{}",
                    command, constraints, opts.max_per_node, spec.id
                ))
            )
        };
        let mut labels = HashMap::from([
            (OWNER_LABEL.to_string(), self.inner.owner.clone()),
            (APP_LABEL.to_string(), app.clone()),
            (INSTANCE_LABEL.to_string(), spec.id.clone()),
            (TEMPLATE_LABEL.to_string(), hash.clone()),
        ]);
        if let Some(p) = previous {
            labels.insert(PREVIOUS_LABEL.to_string(), p.to_string());
        }
        let template = TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(image),
                labels: Some(HashMap::from([
                    (TASK_OWNER_LABEL.to_string(), self.inner.owner.clone()),
                    (TASK_INSTANCE_LABEL.to_string(), spec.id.clone()),
                    (APP_LABEL.to_string(), app),
                ])),
                command,
                env: Some(env),
                stop_grace_period: Some(grace),
                // docker-init as pid 1 passes SIGTERM on (see the container runtime).
                init: Some(true),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: limits.cpu.map(|c| (c * 1e9) as i64),
                    memory_bytes: limits.memory.and_then(|m| i64::try_from(m).ok()),
                    pids: limits.pids.and_then(|p| i64::try_from(p).ok()),
                }),
                reservations: None,
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(1_000_000_000),
                max_attempts: Some(0),
                window: None,
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(constraints),
                max_replicas: opts.max_per_node.and_then(|m| i64::try_from(m).ok()),
                ..Default::default()
            }),
            log_driver: Some(TaskSpecLogDriver {
                name: Some("json-file".to_string()),
                options: super::bounded_logs().config,
            }),
            ..Default::default()
        };
        let monitor = i64::try_from(MONITOR.as_nanos()).unwrap_or(i64::MAX);
        Ok((
            ServiceSpec {
                name: Some(self.name_of(&spec.id)),
                labels: Some(labels),
                task_template: Some(template),
                mode: Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated {
                        replicas: Some(i64::from(opts.replicas)),
                    }),
                    ..Default::default()
                }),
                update_config: Some(ServiceSpecUpdateConfig {
                    parallelism: Some(1),
                    delay: Some(0),
                    failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
                    monitor: Some(monitor),
                    max_failure_ratio: Some(0.0),
                    order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
                }),
                rollback_config: Some(ServiceSpecRollbackConfig {
                    parallelism: Some(1),
                    delay: Some(0),
                    failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                    monitor: Some(monitor),
                    max_failure_ratio: Some(0.0),
                    order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
                }),
                // No VIP and no ingress: berth routes to each task's host port itself.
                endpoint_spec: Some(EndpointSpec {
                    mode: Some(EndpointSpecModeEnum::DNSRR),
                    ports: Some(vec![EndpointPortConfig {
                        protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                        target_port: Some(i64::from(inside)),
                        published_port: None,
                        publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                        name: None,
                    }]),
                }),
                ..Default::default()
            },
            hash,
        ))
    }

    /// Pushes local image `local` (`<repo>:<tag>`) to `registry`; returns the name there.
    async fn push(&self, local: &str, registry: &str) -> Result<String, RuntimeError> {
        let docker = &self.inner.docker;
        let (repo, tag) = local.rsplit_once(':').unwrap_or((local, "latest"));
        let remote_repo = format!("{}/{repo}", registry.trim_end_matches('/'));
        let remote = format!("{remote_repo}:{tag}");
        docker
            .tag_image(
                local,
                Some(bollard::query_parameters::TagImageOptions {
                    repo: Some(remote_repo.clone()),
                    tag: Some(tag.to_string()),
                }),
            )
            .await
            .map_err(|e| docker_err(&format!("cannot tag {local} as {remote}"), e))?;
        let mut pushed = docker.push_image(
            &remote_repo,
            Some(bollard::query_parameters::PushImageOptions {
                tag: Some(tag.to_string()),
                ..Default::default()
            }),
            // An anonymous push still sends the header (some daemons require it).
            Some(bollard::auth::DockerCredentials::default()),
        );
        let mut failure = None;
        while let Some(item) = pushed.next().await {
            let message = match item {
                Ok(info) => info.error_detail.and_then(|d| d.message).or(info.error),
                Err(e) => Some(e.to_string()),
            };
            if let Some(m) = message {
                failure = Some(m);
                break;
            }
        }
        // The registry's copy is what the service names; the local extra tag would only
        // keep the image from being pruned.
        let _ = docker
            .remove_image(
                &remote,
                Some(bollard::query_parameters::RemoveImageOptions {
                    noprune: true,
                    force: false,
                }),
                None,
            )
            .await;
        match failure {
            Some(m) => Err(RuntimeError::Docker(format!(
                "cannot push {remote} to the registry {registry}: {} (hint: check [server] registry; every swarm node must reach it)",
                one_line(&m)
            ))),
            None => {
                tracing::info!(image = %remote, "image pushed for the swarm");
                Ok(remote)
            }
        }
    }

    /// Waits until service `name` runs `replicas` tasks of `id` and nothing else. `update`:
    /// the update status before berth's update, when the tasks change (Swarm runs an
    /// update, whose outcome counts).
    async fn converge(
        &self,
        name: &str,
        id: &str,
        replicas: u32,
        update: Option<Option<String>>,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let docker = &self.inner.docker;
        let mut last_error = String::new();
        loop {
            let s = docker
                .inspect_service(name, None::<InspectServiceOptions>)
                .await
                .map_err(|e| docker_err(&format!("cannot inspect service {name}"), e))?;
            let labels = s.spec.as_ref().and_then(|s| s.labels.clone());
            let runs = labels.as_ref().and_then(|l| l.get(INSTANCE_LABEL));
            let status = s.update_status.clone().unwrap_or_default();
            let ours = update
                .as_ref()
                .is_some_and(|before| s.update_status.is_some() && status.started_at != *before);
            let tasks = self.inner.tasks_of(name).await?;
            for t in &tasks {
                let state = t.status.as_ref().and_then(|s| s.state);
                if matches!(state, Some(TaskState::FAILED | TaskState::REJECTED))
                    && task_instance(t) == Some(id)
                {
                    if let Some(err) = t.status.as_ref().and_then(|s| s.err.clone()) {
                        last_error = err;
                    }
                }
            }
            let why = |what: &str| {
                let mut msg = format!("service {name}: {what}");
                if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
                    msg.push_str(&format!(" ({m})"));
                }
                if !last_error.is_empty() {
                    msg.push_str(&format!("; last task error: {}", one_line(&last_error)));
                }
                RuntimeError::Docker(msg)
            };
            if runs.map(String::as_str) != Some(id) {
                return Err(why(
                    "Swarm rolled the update back; the previous release keeps running",
                ));
            }
            use ServiceUpdateStatusStateEnum as U;
            let state = status.state.unwrap_or(U::EMPTY);
            if ours && matches!(state, U::PAUSED | U::ROLLBACK_PAUSED) {
                return Err(why("Swarm paused the update"));
            }
            if ours && matches!(state, U::ROLLBACK_STARTED | U::ROLLBACK_COMPLETED) {
                return Err(why(
                    "a new task failed and Swarm rolls the service back to the previous release",
                ));
            }
            let desired: Vec<_> = tasks
                .iter()
                .filter(|t| t.desired_state == Some(TaskState::RUNNING))
                .collect();
            let ready = desired
                .iter()
                .filter(|t| task_instance(t) == Some(id))
                .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
                .count();
            let others = desired
                .iter()
                .filter(|t| task_instance(t) != Some(id))
                .count();
            let update_done = update.is_none() || (ours && state == U::COMPLETED);
            if update_done && ready >= replicas as usize && others == 0 {
                return Ok(());
            }
            let failed = tasks
                .iter()
                .filter(|t| task_instance(t) == Some(id))
                .filter(|t| {
                    matches!(
                        t.status.as_ref().and_then(|s| s.state),
                        Some(TaskState::FAILED | TaskState::REJECTED)
                    )
                })
                .count();
            if update.is_none() && failed >= MAX_FAILED_TASKS {
                return Err(why(&format!("{failed} tasks failed")));
            }
            if Instant::now() >= deadline {
                return Err(why(&format!(
                    "not converged in time: {ready} of {replicas} replicas of the new release running"
                )));
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }
}

impl Drop for SwarmRuntime {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Svc {
    fn unfollow_all(&self) {
        for (_, m) in lock(&self.followers).drain() {
            m.stopping.store(true, Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// This owner's services (name, the instance each runs), of `app` or of all apps.
    async fn owned_services(
        &self,
        app: Option<&str>,
    ) -> Result<Vec<(String, String)>, RuntimeError> {
        let mut labels = vec![format!("{OWNER_LABEL}={}", self.owner)];
        if let Some(app) = app {
            labels.push(format!("{APP_LABEL}={app}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
        let listed = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_err("cannot list swarm services", e))?;
        let ours = format!("{}-", self.prefix);
        Ok(listed
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                let name = spec.name?;
                let id = spec.labels?.get(INSTANCE_LABEL)?.clone();
                name.starts_with(&ours).then_some((name, id))
            })
            .collect())
    }

    async fn tasks_of(&self, service: &str) -> Result<Vec<bollard::models::Task>, RuntimeError> {
        let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
        self.docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| docker_err(&format!("cannot list the tasks of {service}"), e))
    }

    /// Every task of this owner's services that should be running.
    async fn running_tasks(&self) -> Result<Vec<bollard::models::Task>, RuntimeError> {
        // Tasks carry no labels of the service: its containers' labels tell they are ours.
        let filters = HashMap::from([("desired-state".to_string(), vec!["running".to_string()])]);
        let tasks = self
            .docker
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| docker_err("cannot list swarm tasks", e))?;
        Ok(tasks
            .into_iter()
            .filter(|t| {
                t.spec
                    .as_ref()
                    .and_then(|s| s.container_spec.as_ref())
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get(TASK_OWNER_LABEL))
                    .is_some_and(|o| *o == self.owner)
            })
            .collect())
    }
}

/// The release a task runs (its container label).
fn task_instance(t: &bollard::models::Task) -> Option<&str> {
    t.spec
        .as_ref()
        .and_then(|s| s.container_spec.as_ref())
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(TASK_INSTANCE_LABEL))
        .map(String::as_str)
}

/// `<prefix>-<app>-<type>` for instance `<app>.v<N>.<type>.<i>`: Swarm service names are DNS
/// labels (63 characters at most), so a longer one is cut and ends with a hash.
fn service_name(prefix: &str, id: &str) -> String {
    let mut parts = id.split('.');
    let app = parts.next().unwrap_or(id);
    let proc_type = parts.nth(1).unwrap_or("web");
    let name = format!("{prefix}-{}-{}", sanitize(app), sanitize(proc_type))
        .replace(['_', '.'], "-")
        .to_ascii_lowercase();
    if name.len() <= 63 {
        return name;
    }
    let cut: String = name.chars().take(54).collect();
    format!("{}-{:08x}", cut.trim_end_matches('-'), fnv1a(&name) >> 32)
}

/// Where other machines reach a node: its status address, or its manager address (a manager's
/// status address may read `0.0.0.0`).
fn node_addr(n: &bollard::models::Node) -> Option<IpAddr> {
    let status = n
        .status
        .as_ref()
        .and_then(|s| s.addr.as_deref())
        .and_then(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_unspecified());
    status.or_else(|| {
        n.manager_status
            .as_ref()
            .and_then(|m| m.addr.as_deref())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| a.ip())
    })
}

/// The task's published host port for its (single) target port.
fn task_port(t: &bollard::models::Task) -> Option<u16> {
    t.status
        .as_ref()?
        .port_status
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find_map(|p| p.published_port.and_then(|p| u16::try_from(p).ok()))
}

/// The watcher: every [`WATCH_EVERY`], the running tasks of the managed services → their
/// endpoints (probed), log followers for this node's tasks, and an event when a service's
/// endpoints change.
async fn watch(inner: Arc<Inner>, state: Arc<State>) {
    let mut nodes: HashMap<String, IpAddr> = HashMap::new();
    let mut nodes_at = Instant::now();
    let mut local_node = String::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let services: Vec<(String, Arc<Svc>)> = lock(&state.services)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if services.is_empty() {
            continue;
        }
        let tasks = match inner.running_tasks().await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "cannot list swarm tasks");
                continue;
            }
        };
        let unknown_node = tasks
            .iter()
            .filter_map(|t| t.node_id.as_ref())
            .any(|n| !nodes.contains_key(n));
        if unknown_node || nodes_at.elapsed() > Duration::from_secs(10) || local_node.is_empty() {
            if let Ok(listed) = inner.docker.list_nodes(None::<ListNodesOptions>).await {
                nodes = listed
                    .iter()
                    .filter_map(|n| Some((n.id.clone()?, node_addr(n)?)))
                    .collect();
                nodes_at = Instant::now();
            }
            if let Ok(info) = inner.docker.info().await {
                local_node = info.swarm.and_then(|s| s.node_id).unwrap_or_default();
            }
        }
        for (_, svc) in services {
            let current = lock(&svc.current).clone();
            let service_id = lock(&svc.service_id).clone();
            let mine: Vec<&bollard::models::Task> = tasks
                .iter()
                .filter(|t| t.service_id.as_deref() == Some(service_id.as_str()))
                .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
                .collect();
            let mut endpoints = Vec::new();
            let mut alive = HashSet::new();
            for t in &mine {
                let (Some(task_id), Some(port), Some(ip)) = (
                    t.id.clone(),
                    task_port(t),
                    t.node_id.as_ref().and_then(|n| nodes.get(n)).copied(),
                ) else {
                    continue;
                };
                let addr = SocketAddr::new(ip, port);
                alive.insert(task_id.clone());
                let probed = lock(&svc.probed).contains(&task_id);
                if !probed {
                    let ok =
                        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
                            .await
                            .is_ok_and(|r| r.is_ok());
                    if !ok {
                        continue;
                    }
                    lock(&svc.probed).insert(task_id.clone());
                }
                endpoints.push(addr);
                // Follow the output of this node's tasks of the current release.
                if t.node_id.as_deref() == Some(local_node.as_str())
                    && task_instance(t) == Some(current.as_str())
                {
                    if let Some(cid) = t
                        .status
                        .as_ref()
                        .and_then(|s| s.container_status.as_ref())
                        .and_then(|c| c.container_id.clone())
                    {
                        svc.follow(&inner, &cid, &current);
                    }
                }
            }
            endpoints.sort();
            lock(&svc.probed).retain(|t| alive.contains(t));
            *lock(&svc.running) = mine
                .iter()
                .filter(|t| task_instance(t) == Some(current.as_str()))
                .count();
            let changed = {
                let mut e = lock(&svc.endpoints);
                let changed = *e != endpoints;
                *e = endpoints;
                changed
            };
            if changed {
                if let Some(tx) = &state.events {
                    let _ = tx.send(Event::Endpoints {
                        id: current.clone(),
                    });
                }
            }
        }
    }
}

impl Svc {
    /// Follows container `cid`'s output into the service's log file, once.
    fn follow(&self, inner: &Arc<Inner>, cid: &str, id: &str) {
        let mut followers = lock(&self.followers);
        if followers.contains_key(cid) {
            return;
        }
        let since = lock(&self.since)
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or_else(|_| unix_now());
        let m = Arc::new(Managed {
            id: id.to_string(),
            container: cid.to_string(),
            restart: false,
            log_file: lock(&self.log_file).clone(),
            track: Mutex::new(Track::new(None, 0)),
            stopping: AtomicBool::new(false),
            follower: Mutex::new(None),
        });
        let follower = tokio::spawn(follow_logs(inner.clone(), m.clone(), since));
        *lock(&m.follower) = Some(follower);
        followers.insert(cid.to_string(), m);
    }
}

#[async_trait::async_trait]
impl Runtime for SwarmRuntime {
    fn name(&self) -> &'static str {
        "swarm"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<InstanceInfo, RuntimeError> {
        check_id(&spec.id)?;
        let opts = spec.swarm.clone().ok_or_else(|| {
            RuntimeError::Docker(format!("instance {} has no swarm options", spec.id))
        })?;
        let local_node = self.check_manager().await?;
        let docker = &self.inner.docker;
        let name = self.name_of(&spec.id);
        let existing = match docker
            .inspect_service(&name, None::<InspectServiceOptions>)
            .await
        {
            Ok(s) => Some(s),
            Err(e) if status_of(&e) == Some(404) => None,
            Err(e) => return Err(docker_err(&format!("cannot inspect service {name}"), e)),
        };
        let labels = existing
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        let running = labels.get(INSTANCE_LABEL).cloned();
        // The release this one replaces; the same release started again keeps its own.
        let previous = match &running {
            Some(r) if *r != spec.id => Some(r.clone()),
            _ => labels.get(PREVIOUS_LABEL).cloned(),
        };
        let (body, hash) = self
            .service_spec(&spec, &opts, previous.as_deref(), &local_node)
            .await?;
        // Managed from now on, so that a sweep never removes a service being deployed.
        let svc = {
            let mut services = lock(&self.state.services);
            let svc = services.entry(name.clone()).or_insert_with(|| {
                Arc::new(Svc {
                    service_id: Mutex::default(),
                    current: Mutex::new(spec.id.clone()),
                    log_file: Mutex::new(spec.log_file.clone()),
                    endpoints: Mutex::default(),
                    running: Mutex::new(0),
                    probed: Mutex::default(),
                    followers: Mutex::default(),
                    since: Mutex::new(std::time::SystemTime::now()),
                })
            });
            svc.clone()
        };
        let update = match existing {
            None => {
                let created = docker
                    .create_service(body, None)
                    .await
                    .map_err(|e| docker_err(&format!("cannot create service {name}"), e))?;
                *lock(&svc.service_id) = created.id.unwrap_or_default();
                tracing::info!(service = %name, instance = %spec.id, replicas = opts.replicas, "swarm service created");
                None
            }
            Some(s) => {
                *lock(&svc.service_id) = s.id.clone().unwrap_or_default();
                let version = s
                    .version
                    .and_then(|v| v.index)
                    .and_then(|v| i32::try_from(v).ok())
                    .unwrap_or_default();
                let before = s.update_status.and_then(|u| u.started_at);
                docker
                    .update_service(
                        &name,
                        body,
                        UpdateServiceOptions {
                            version,
                            ..Default::default()
                        },
                        None,
                    )
                    .await
                    .map_err(|e| docker_err(&format!("cannot update service {name}"), e))?;
                let changed = labels.get(TEMPLATE_LABEL) != Some(&hash);
                tracing::info!(service = %name, instance = %spec.id, replicas = opts.replicas, changed, "swarm service updated");
                changed.then_some(before)
            }
        };
        if *lock(&svc.current) != spec.id {
            // Followers of the release being replaced end with its tasks.
            svc.unfollow_all();
            *lock(&svc.log_file) = spec.log_file.clone();
            *lock(&svc.current) = spec.id.clone();
            *lock(&svc.since) = std::time::SystemTime::now();
        }
        self.converge(
            &name,
            &spec.id,
            opts.replicas,
            update,
            Instant::now() + opts.timeout,
        )
        .await?;
        // Routable at once: the endpoints the engine reads next are this release's.
        let deadline = Instant::now() + PROBE_TIMEOUT * 10;
        while lock(&svc.endpoints).len() < opts.replicas as usize && Instant::now() < deadline {
            tokio::time::sleep(WATCH_EVERY / 2).await;
        }
        Ok(InstanceInfo {
            id: spec.id,
            pid: None,
            pid_start: None,
            state: InstanceState::Running {
                pid: None,
                since: std::time::SystemTime::now(),
            },
        })
    }

    async fn adopt(
        &self,
        _spec: InstanceSpec,
        _pid: u32,
        _pid_start: u64,
    ) -> Result<Option<InstanceInfo>, RuntimeError> {
        // Services have no pid: the engine starts them again, which finds them unchanged.
        Ok(None)
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.hand_back(id, grace, false).await
    }

    async fn kill_orphan(
        &self,
        _pid: u32,
        _pid_start: u64,
        _grace: Duration,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }

    fn state(&self, id: &str) -> Option<InstanceState> {
        let svc = lock(&self.state.services).get(&self.name_of(id)).cloned()?;
        if *lock(&svc.current) != id {
            return None;
        }
        let running = *lock(&svc.running);
        let since = *lock(&svc.since);
        Some(match running {
            0 => InstanceState::Restarting {
                restarts: 0,
                last_exit: "no task running".to_string(),
            },
            _ => InstanceState::Running { pid: None, since },
        })
    }

    async fn run_task(&self, task: OneOff) -> Result<TaskOutcome, RuntimeError> {
        Err(RuntimeError::Docker(format!(
            "one-off task {} cannot run on Swarm",
            task.id
        )))
    }

    async fn sweep(&self, _grace: Duration) -> Result<usize, RuntimeError> {
        let managed: HashSet<String> = lock(&self.state.services).keys().cloned().collect();
        let mut removed = 0;
        for (name, instance) in self.inner.owned_services(None).await? {
            if managed.contains(&name) {
                continue;
            }
            tracing::warn!(service = %name, %instance, "removing a swarm service left from an earlier run");
            self.remove(&name).await?;
            removed += 1;
        }
        Ok(removed)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &self.state.events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    fn endpoints(&self, id: &str) -> Option<Vec<SocketAddr>> {
        let svc = lock(&self.state.services).get(&self.name_of(id)).cloned()?;
        let endpoints = lock(&svc.endpoints).clone();
        Some(endpoints)
    }

    fn supervised(&self, _id: &str) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_dns_labels() {
        assert_eq!(
            service_name("berth-0123abcd", "shop.v3.web.1"),
            "berth-0123abcd-shop-web"
        );
        assert_eq!(
            service_name("berth-0123abcd", "shop.v3.big_worker.1"),
            "berth-0123abcd-shop-big-worker"
        );
        let long = format!("{}.v1.web.1", "a".repeat(80));
        let name = service_name("berth-0123abcd", &long);
        assert!(name.len() <= 63, "{name}");
        assert_ne!(
            name,
            service_name("berth-0123abcd", &format!("{}.v1.web.1", "a".repeat(81)))
        );
    }
}
