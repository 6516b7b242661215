//! [`SwarmRuntime`]: each process type of an app is one Docker Swarm service
//! (`<prefix>-<app>-<type>-<hash of app and type>`) with N replicas, for when one machine is
//! not enough.
//!
//! - **One berth instance is one service.** The engine starts `<app>.v<N>.<type>.1` with
//!   [`SwarmOptions`] (replicas, placement, health check); the service is created, or
//!   *updated* when it exists: Swarm then replaces the tasks itself, one at a time, new before
//!   old (`start-first`), and rolls the service back on its own when a new task fails
//!   (`failure_action: rollback`). [`Runtime::start`] returns once the service has converged
//!   (every replica runs the new release, the update is `completed`) and every task passes the
//!   app's health check; a rollback, a pause, tasks no node can take, or the deadline is an
//!   error naming the task's error. Starting exactly what runs already (after a berth restart)
//!   changes nothing. A service of that name that berth did not make for this app is refused.
//! - **Ready means healthy.** Swarm stops an old task as soon as a new one is ready, which
//!   without a HEALTHCHECK means running, before the app listens. So an image without its own
//!   HEALTHCHECK that carries berth's probe (a static busybox, [`PROBE_LABEL`], added by the
//!   engine) gets the app's health check as its HEALTHCHECK.
//! - **Routing follows the tasks.** Each task publishes its port in `host` mode on an
//!   ephemeral port of its node; a watcher lists the running tasks every [`WATCH_EVERY`],
//!   takes each one's node address and published port, adds a task once it passes the app's
//!   health check from here (all probes at once), and sends [`Event::Endpoints`] when the set
//!   changes; the engine then re-routes ([`Runtime::endpoints`]).
//! - **Stop.** Stopping the release a service runs removes the service; stopping any other
//!   release is a no-op (the service moved on already). [`SwarmRuntime::undo`] of a deploy
//!   that failed after the update hands the service back to the release it replaced
//!   (Swarm's rollback). Swarm supervises the tasks, so they outlive berth, SIGTERM included
//!   ([`Runtime::supervised`] is false); [`SwarmRuntime::remove_app`] removes an app's
//!   services, and after a restart [`SwarmRuntime::remove_unwanted`] those no live release
//!   runs (the engine knows which; [`Runtime::sweep`] leaves services alone).
//! - **Labels.** Services carry `berth.owner`, `berth.app`, `berth.type`, `berth.instance`
//!   (the release they run), `berth.previous` (the one they replaced) and a hash of what
//!   berth asked for; task containers carry `berth.swarm.*` — not `berth.instance` — and the
//!   container runtime skips Swarm's task containers anyway.
//! - **Images.** With a registry ([`SwarmOptions::registry`]) the release's image is pushed
//!   there (and its local registry tag dropped again), so any node can run the tasks; without
//!   one, the image exists on this node only and the tasks are constrained to it.
//! - **Logs.** The output of this node's tasks of the current release is followed into the
//!   instance's log file. Tasks on other nodes: `docker service logs` on a manager.

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

/// How long destroying a Swarm app waits for Swarm to remove its task containers.
const TASKS_GONE_WAIT: Duration = Duration::from_secs(30);
use crate::{
    Event, InstanceInfo, InstanceSpec, InstanceState, Runtime, RuntimeError, TaskOutcome,
    TaskSpec as OneOff,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

/// How often the watcher lists the tasks (and how often `start` looks while converging).
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How long one probe of a task may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Swarm watches each updated task this long for a failure before it moves on.
const MONITOR: Duration = Duration::from_secs(3);
/// Tasks of a new service that may fail before its start is given up.
const MAX_FAILED_TASKS: usize = 3;
/// How long new tasks may wait for a node that satisfies their placement.
const UNSCHEDULABLE: Duration = Duration::from_secs(5);
/// The port an app listens on inside its task when neither the spec nor the image says.
const DEFAULT_PORT: u16 = 5000;
/// The release a service ran before the current one (what a rollback goes back to).
const PREVIOUS_LABEL: &str = "berth.previous";
/// A hash of what berth asked for: the same hash means the tasks need no update.
const TEMPLATE_LABEL: &str = "berth.template";
/// The process type a service runs.
const TYPE_LABEL: &str = "berth.type";
/// The process type that listens, gets a published port and a health check.
const WEB: &str = "web";
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
    /// The app's health check, for the tasks' HEALTHCHECK (an image with the probe, see
    /// [`PROBE_LABEL`]) and for the watcher: `Some(path)` GET → 2xx/3xx, `None` a TCP check.
    pub health_path: Option<String>,
    /// The `Host` the HTTP check sends (the app's host name).
    pub health_host: String,
    /// How long a new task may take to pass it before failures count.
    pub health_start: Duration,
}

/// An image label saying that the image holds a static busybox at `PROBE_PATH` (added by
/// [`DockerRuntime::add_probe`](super::DockerRuntime::add_probe)), so that its tasks can have a
/// HEALTHCHECK although the app's image has no tools.
pub const PROBE_LABEL: &str = "berth.probe";
/// Where that busybox is in the image.
pub const PROBE_PATH: &str = "/.berth/busybox";

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
    /// The owner label of its services and tasks (see [`DockerRuntime::swarm_owned_by`](super::DockerRuntime::swarm_owned_by)).
    owner: String,
    /// `berth-<hash of the owner>`: the start of its service names and registry paths (the
    /// container runtime's prefix hashes the data dir alone, which two berths may share).
    prefix: String,
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
    app: String,
    /// Swarm's id of the service (tasks name it); empty until known.
    service_id: Mutex<String>,
    /// The release it runs now (as berth last set or found it).
    run: Mutex<Run>,
    /// The log file of each release started on it.
    logs: Mutex<HashMap<String, PathBuf>>,
    /// How the watcher checks a task of each release before routing it (`None`: a process
    /// type that does not listen; running is ready).
    probes: Mutex<HashMap<String, Option<Probe>>>,
    /// Its routable tasks as of the watcher's last look.
    endpoints: Mutex<Vec<SocketAddr>>,
    /// Running tasks of the current release, and how many of them passed the probe.
    running: Mutex<(usize, usize)>,
    /// Tasks that passed the probe (they stay routable while they run).
    healthy: Mutex<HashSet<String>>,
    /// Log followers of this node's task containers, by container id.
    followers: Mutex<HashMap<String, Arc<Managed>>>,
}

#[derive(Clone)]
struct Run {
    id: String,
    since: std::time::SystemTime,
}

#[derive(Clone, Default)]
struct Probe {
    path: Option<String>,
    host: String,
}

impl SwarmRuntime {
    pub(super) fn new(inner: Arc<Inner>, owner: String) -> Arc<SwarmRuntime> {
        let state = Arc::new(State {
            services: Mutex::default(),
            events: Some(broadcast::channel(256).0),
        });
        let watcher = tokio::spawn(watch(inner.clone(), owner.clone(), state.clone()));
        Arc::new(SwarmRuntime {
            inner,
            prefix: format!("berth-{:08x}", fnv1a(&owner) >> 32),
            owner,
            state,
            watcher,
        })
    }

    /// This node's id, or why berth cannot run services here (not in a swarm, not a manager).
    pub async fn check_manager(&self) -> Result<String, RuntimeError> {
        self.manager().await?.ok_or_else(|| {
            RuntimeError::Docker(format!(
                "the Docker daemon at {} is not a Swarm manager (hint: `docker swarm init` on it, or point [server] docker_socket at a manager)",
                self.inner.socket
            ))
        })
    }

    /// `Some(node id)` when the daemon is a swarm manager, `None` when it is not; an error
    /// when it cannot be asked.
    async fn manager(&self) -> Result<Option<String>, RuntimeError> {
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
        Ok((active && swarm.control_available == Some(true))
            .then(|| swarm.node_id.unwrap_or_default()))
    }

    /// The swarm's nodes, with how many of this berth's tasks each runs.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RuntimeError> {
        self.check_manager().await?;
        let docker = &self.inner.docker;
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| docker_err("cannot list the swarm's nodes", e))?;
        let tasks = self.inner.running_tasks(&self.owner).await?;
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
        if self.manager().await?.is_none() {
            return Ok(0);
        }
        let mut removed = 0;
        for s in self
            .inner
            .owned_services(&self.owner, &self.prefix, Some(app))
            .await?
        {
            self.remove(&s.name).await?;
            removed += 1;
        }
        self.wait_tasks_gone(app).await;
        let overlay = self.overlay_name(app);
        self.inner.networks_ready.lock().await.remove(&overlay);
        if let Err(e) = self.inner.docker.remove_network(&overlay).await {
            if !matches!(status_of(&e), Some(403 | 404 | 409)) {
                tracing::warn!(network = %overlay, "cannot remove the app's overlay network: {}", one_line(&e.to_string()));
            }
        }
        Ok(removed)
    }

    /// The app's overlay network, which its services' tasks join.
    fn overlay_name(&self, app: &str) -> String {
        format!("{}-swarm-{app}", self.inner.prefix)
    }

    /// Swarm removes a deleted service's task containers in the background, and while one
    /// exists its image cannot be removed: wait (up to [`TASKS_GONE_WAIT`]) until no task
    /// container of `app` is left. (Its services may have gone before, with its instances.)
    async fn wait_tasks_gone(&self, app: &str) {
        // Task containers carry the labels of their image, which berth built; Docker ANDs
        // label filters.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{OWNER_LABEL}={}", self.inner.owner),
                format!("{APP_LABEL}={app}"),
                "com.docker.swarm.task.id".to_string(),
            ],
        )]);
        let deadline = Instant::now() + TASKS_GONE_WAIT;
        loop {
            let left = self
                .inner
                .docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await
                .map(|l| l.len())
                .unwrap_or(0);
            if left == 0 {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    app,
                    left,
                    "swarm task containers still there; the app's images may stay"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After a restart: removes this berth's services that no live release runs any more
    /// (its app destroyed, or the process type gone or scaled to 0 while berth was down).
    /// `keep`: (app, process type) of every live release on Swarm. Returns how many.
    pub async fn remove_unwanted(
        &self,
        keep: &HashSet<(String, String)>,
    ) -> Result<usize, RuntimeError> {
        if self.manager().await?.is_none() {
            return Ok(0);
        }
        let mut removed = 0;
        for s in self
            .inner
            .owned_services(&self.owner, &self.prefix, None)
            .await?
        {
            if keep.contains(&(s.app.clone(), s.proc_type.clone())) {
                continue;
            }
            tracing::warn!(service = %s.name, instance = %s.instance, "removing a swarm service no live release runs");
            self.remove(&s.name).await?;
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
            Err(e) if status_of(&e) == Some(404) => {
                lock(&self.state.services).remove(&name);
                return Ok(());
            }
            Err(e) => return Err(docker_err(&format!("cannot inspect service {name}"), e)),
        };
        let labels = s
            .spec
            .as_ref()
            .and_then(|s| s.labels.clone())
            .unwrap_or_default();
        if labels.get(INSTANCE_LABEL).map(String::as_str) != Some(id) || !self.ours(&labels) {
            return Ok(());
        }
        match labels
            .get(PREVIOUS_LABEL)
            .filter(|p| undo && p.as_str() != id)
        {
            Some(previous) => {
                let version = version_of(&s, &name)?;
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
                    svc.set_run(previous);
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

    /// Do these service labels say this berth made the service?
    fn ours(&self, labels: &HashMap<String, String>) -> bool {
        labels.get(OWNER_LABEL) == Some(&self.owner)
    }

    fn name_of(&self, id: &str) -> String {
        let (app, proc_type) = parts(id);
        service_name(&self.prefix, app, proc_type)
    }

    /// The service's entry, made (for release `id`) when new: before anything that can fail,
    /// so that a failed start is still known to `stop` and `undo`.
    fn register(&self, name: &str, spec: &InstanceSpec, opts: &SwarmOptions) -> Arc<Svc> {
        let (app, _) = parts(&spec.id);
        let svc = lock(&self.state.services)
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Svc {
                    app: app.to_string(),
                    service_id: Mutex::default(),
                    run: Mutex::new(Run {
                        id: spec.id.clone(),
                        since: std::time::SystemTime::now(),
                    }),
                    logs: Mutex::default(),
                    probes: Mutex::default(),
                    endpoints: Mutex::default(),
                    running: Mutex::new((0, 0)),
                    healthy: Mutex::default(),
                    followers: Mutex::default(),
                })
            })
            .clone();
        lock(&svc.logs).insert(spec.id.clone(), spec.log_file.clone());
        let probe = (parts(&spec.id).1 == WEB).then(|| Probe {
            path: opts.health_path.clone(),
            host: opts.health_host.clone(),
        });
        lock(&svc.probes).insert(spec.id.clone(), probe);
        svc
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
        // With a registry the image is pushed (only when the service changes; `start`), else
        // it exists on this node only.
        if opts.registry.is_none() {
            constraints.push(format!("node.id == {local_node}"));
        }
        let image_id = inspected.id.clone().unwrap_or_default();
        let (app, proc_type) = parts(&spec.id);
        let web = proc_type == WEB;
        let exposed: Vec<String> = inspected
            .config
            .clone()
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
        let config = inspected.config.clone().unwrap_or_default();
        // Swarm's start-first update waits for a new task to be *healthy* before it stops an
        // old one: without a HEALTHCHECK "running" would do, before the app even listens. An
        // image without its own gets the app's health check, run by the probe berth added.
        let has_probe = config
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(PROBE_LABEL));
        let own_check = config
            .healthcheck
            .as_ref()
            .and_then(|h| h.test.as_ref())
            .is_some_and(|t| t.first().is_some_and(|w| w != "NONE"));
        // Only `web` listens (and has a port to publish and a health check).
        let health_check = (web && has_probe && !own_check).then(|| health_config(opts, inside));
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| k != "PORT")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.push(format!("PORT={inside}"));
        let app = app.to_string();
        // Swarm's `command` replaces the image's ENTRYPOINT and `args` its CMD.
        let (command, args) = if spec.command.trim().is_empty() {
            (
                spec.container.entrypoint.clone(),
                spec.container.command.clone(),
            )
        } else {
            let shell = vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                spec.command.clone(),
            ];
            (Some(shell), None)
        };
        let (dir, user) = (
            spec.container.working_dir.clone(),
            spec.container.user.clone(),
        );
        let grace = i64::try_from(opts.stop_grace.as_nanos()).unwrap_or(i64::MAX);
        let limits = &spec.limits;
        let hash = {
            let mut sorted = env.clone();
            sorted.sort();
            format!(
                "{:016x}",
                fnv1a(&format!(
                    "{image_id}\n{:?}\n{:?}\n{sorted:?}\n{inside}\n{limits:?}\n{:?}\n{:?}\n{grace}\n{}\n{:?}\n{:?}",
                    opts.registry, command, constraints, opts.max_per_node, spec.id, health_check.as_ref().map(|h| &h.test), (&args, &dir, &user)
                ))
            )
        };
        let mut labels = HashMap::from([
            (OWNER_LABEL.to_string(), self.owner.clone()),
            (APP_LABEL.to_string(), app.clone()),
            (INSTANCE_LABEL.to_string(), spec.id.clone()),
            (TYPE_LABEL.to_string(), proc_type.to_string()),
            (TEMPLATE_LABEL.to_string(), hash.clone()),
        ]);
        if let Some(p) = previous {
            labels.insert(PREVIOUS_LABEL.to_string(), p.to_string());
        }
        // The app's own overlay network: without one a task sits on Docker's default bridge,
        // where every other tenant's containers and image builds could reach its ports.
        let network = self
            .inner
            .ensure_named_network(self.overlay_name(&app), "overlay", &app)
            .await?;
        let template = TaskSpec {
            networks: Some(vec![bollard::models::NetworkAttachmentConfig {
                target: Some(network),
                ..Default::default()
            }]),
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(local),
                labels: Some(HashMap::from([
                    (TASK_OWNER_LABEL.to_string(), self.owner.clone()),
                    (TASK_INSTANCE_LABEL.to_string(), spec.id.clone()),
                    (APP_LABEL.to_string(), app),
                ])),
                command,
                args,
                dir,
                user,
                env: Some(env),
                stop_grace_period: Some(grace),
                health_check,
                // docker-init as pid 1 passes SIGTERM on (see the container runtime).
                init: Some(true),
                // The same hardening as a container's (`hardening.rs`).
                capability_drop: Some(vec!["ALL".to_string()]),
                capability_add: Some(
                    super::hardening::KEPT_CAPABILITIES
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                ),
                privileges: Some(bollard::models::TaskSpecContainerSpecPrivileges {
                    no_new_privileges: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus: limits.cpu.map(|c| (c * 1e9) as i64),
                    memory_bytes: limits.memory.and_then(|m| i64::try_from(m).ok()),
                    pids: super::hardening::pids(limits.pids),
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
        // New before old needs room for one more task; with a cap per node there may be none
        // (the new task would wait for a node forever): old before new, then.
        let start_first = opts.max_per_node.is_none();
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
                    order: Some(if start_first {
                        ServiceSpecUpdateConfigOrderEnum::START_FIRST
                    } else {
                        ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
                    }),
                }),
                rollback_config: Some(ServiceSpecRollbackConfig {
                    parallelism: Some(1),
                    delay: Some(0),
                    failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
                    monitor: Some(monitor),
                    max_failure_ratio: Some(0.0),
                    order: Some(if start_first {
                        ServiceSpecRollbackConfigOrderEnum::START_FIRST
                    } else {
                        ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
                    }),
                }),
                // No VIP and no ingress: berth routes to each task's host port itself.
                endpoint_spec: Some(EndpointSpec {
                    mode: Some(EndpointSpecModeEnum::DNSRR),
                    ports: Some(
                        web.then(|| EndpointPortConfig {
                            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                            target_port: Some(i64::from(inside)),
                            published_port: None,
                            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                            name: None,
                        })
                        .into_iter()
                        .collect(),
                    ),
                }),
                ..Default::default()
            },
            hash,
        ))
    }

    /// Pushes local image `local` (`<prefix>/<app>:<tag>`) to `registry` as
    /// `<registry>/<this berth's swarm prefix>/<app>:<tag>`; returns that name pinned to the
    /// pushed digest, so a later push of the same tag can never change what the service runs.
    async fn push(&self, local: &str, registry: &str) -> Result<String, RuntimeError> {
        let docker = &self.inner.docker;
        let (repo, tag) = local.rsplit_once(':').unwrap_or((local, "latest"));
        let name = repo.rsplit('/').next().unwrap_or(repo);
        let remote_repo = format!("{}/{}/{name}", registry.trim_end_matches('/'), self.prefix);
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
        let mut digest = None;
        while let Some(item) = pushed.next().await {
            let message = match item {
                Ok(info) => {
                    // The last status line: "<tag>: digest: sha256:… size: …".
                    if let Some(d) = info
                        .status
                        .as_deref()
                        .and_then(|st| st.split_whitespace().find(|w| w.starts_with("sha256:")))
                    {
                        digest = Some(d.to_string());
                    }
                    info.error_detail.and_then(|d| d.message).or(info.error)
                }
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
                tracing::info!(image = %remote, ?digest, "image pushed for the swarm");
                Ok(match digest {
                    Some(d) => format!("{remote}@{d}"),
                    None => remote,
                })
            }
        }
    }

    /// Waits until service `name` runs `replicas` tasks of `id` and nothing else, each past
    /// the image's HEALTHCHECK. `update`: the update status before berth's update, when the
    /// tasks change (Swarm runs an update, whose outcome counts). `baseline`: the service's
    /// `UpdatedAt` after berth's change (daemon time): only tasks created since count.
    async fn converge(
        &self,
        name: &str,
        id: &str,
        replicas: u32,
        update: Option<Option<String>>,
        baseline: &str,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        let docker = &self.inner.docker;
        let baseline = timestamp_key(baseline);
        let mut unschedulable_since: Option<Instant> = None;
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
            // This start's tasks: of `id`, created since berth's change.
            let new: Vec<&bollard::models::Task> = tasks
                .iter()
                .filter(|t| task_instance(t) == Some(id))
                .filter(|t| timestamp_key(t.created_at.as_deref().unwrap_or_default()) >= baseline)
                .collect();
            let state_of = |t: &bollard::models::Task| t.status.as_ref().and_then(|s| s.state);
            let err_of = |t: &bollard::models::Task| {
                t.status
                    .as_ref()
                    .and_then(|s| s.err.clone().or_else(|| s.message.clone()))
                    .unwrap_or_default()
            };
            let failed: Vec<&&bollard::models::Task> = new
                .iter()
                .filter(|t| matches!(state_of(t), Some(TaskState::FAILED | TaskState::REJECTED)))
                .collect();
            let pending: Vec<&&bollard::models::Task> = new
                .iter()
                .filter(|t| {
                    t.desired_state == Some(TaskState::RUNNING)
                        && state_of(t) == Some(TaskState::PENDING)
                        && err_of(t).contains("no suitable node")
                })
                .collect();
            let why = |what: &str| {
                let mut msg = what.to_string();
                if let Some(m) = status.message.as_deref().filter(|m| !m.is_empty()) {
                    msg.push_str(&format!(" ({m})"));
                }
                if let Some(t) = failed.last().or(pending.last()) {
                    msg.push_str(&format!("; task error: {}", one_line(&err_of(t))));
                }
                msg.push_str(&format!(" [service {name}]"));
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
                    "a new task failed, and Swarm rolls the service back to the previous release",
                ));
            }
            if pending.is_empty() {
                unschedulable_since = None;
            } else if unschedulable_since
                .get_or_insert_with(Instant::now)
                .elapsed()
                > UNSCHEDULABLE
            {
                return Err(why(
                    "no node can run the tasks (hint: check [swarm] constraints and max_replicas_per_node against `berth nodes`)",
                ));
            }
            let desired: Vec<_> = tasks
                .iter()
                .filter(|t| t.desired_state == Some(TaskState::RUNNING))
                .collect();
            let ready = desired
                .iter()
                .filter(|t| task_instance(t) == Some(id))
                .filter(|t| state_of(t) == Some(TaskState::RUNNING))
                .count();
            let others = desired
                .iter()
                .filter(|t| task_instance(t) != Some(id))
                .count();
            let update_done = update.is_none() || (ours && state == U::COMPLETED);
            if update_done && ready >= replicas as usize && others == 0 {
                return Ok(());
            }
            if update.is_none() && failed.len() >= MAX_FAILED_TASKS {
                return Err(why(&format!("{} new tasks failed", failed.len())));
            }
            if Instant::now() >= deadline {
                return Err(why(&format!(
                    "not converged in time: {ready} of {replicas} replicas of the new release running"
                )));
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }

    /// Is service `name` at rest on release `id`: no update or rollback under way, and every
    /// task that should run is of `id`?
    async fn settled(
        &self,
        service: Option<&bollard::models::Service>,
        name: &str,
        id: &str,
    ) -> bool {
        use ServiceUpdateStatusStateEnum as U;
        let state = service
            .and_then(|s| s.update_status.as_ref())
            .and_then(|u| u.state)
            .unwrap_or(U::EMPTY);
        if !matches!(state, U::EMPTY | U::COMPLETED | U::ROLLBACK_COMPLETED) {
            return false;
        }
        match self.inner.tasks_of(name).await {
            Ok(tasks) => tasks
                .iter()
                .filter(|t| t.desired_state == Some(TaskState::RUNNING))
                .all(|t| task_instance(t) == Some(id)),
            Err(_) => false,
        }
    }

    /// Waits until `n` tasks of the release `svc` runs passed the watcher's probe.
    async fn wait_routable(
        &self,
        svc: &Svc,
        n: u32,
        deadline: Instant,
    ) -> Result<(), RuntimeError> {
        loop {
            let (running, healthy) = *lock(&svc.running);
            if healthy >= n as usize {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let run = lock(&svc.run).id.clone();
                let what = match lock(&svc.probes).get(&run).cloned().flatten() {
                    Some(Probe { path: Some(p), .. }) => format!("GET {p} → 2xx/3xx"),
                    Some(Probe { path: None, .. }) => "a TCP check".to_string(),
                    None => "running".to_string(),
                };
                return Err(RuntimeError::Docker(format!(
                    "{healthy} of {n} tasks pass the health check ({what}) on their published port ({running} running)"
                )));
            }
            tokio::time::sleep(WATCH_EVERY / 2).await;
        }
    }
}

/// An RFC 3339 time from the daemon as a key that sorts by time: the fraction padded to
/// nanoseconds (Go trims trailing zeros).
fn timestamp_key(t: &str) -> String {
    let t = t.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    format!("{secs}.{frac:0<9}")
}

/// The service's version, for an update (bollard takes an `i32`).
fn version_of(s: &bollard::models::Service, name: &str) -> Result<i32, RuntimeError> {
    let index = s.version.as_ref().and_then(|v| v.index).unwrap_or_default();
    i32::try_from(index).map_err(|_| {
        RuntimeError::Docker(format!(
            "service {name}: the swarm's version index {index} is beyond what berth's Docker client can send (2^31)"
        ))
    })
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

    /// The service runs release `id` from now on (its tasks' logs follow).
    fn set_run(&self, id: &str) {
        let mut run = lock(&self.run);
        if run.id != id {
            *run = Run {
                id: id.to_string(),
                since: std::time::SystemTime::now(),
            };
            drop(run);
            self.unfollow_all();
            *lock(&self.running) = (0, 0);
        }
    }
}

/// One of this berth's services as listed.
struct Owned {
    name: String,
    app: String,
    proc_type: String,
    instance: String,
}

impl Inner {
    /// This owner's services, of `app` or of all apps.
    async fn owned_services(
        &self,
        owner: &str,
        prefix: &str,
        app: Option<&str>,
    ) -> Result<Vec<Owned>, RuntimeError> {
        let mut labels = vec![format!("{OWNER_LABEL}={owner}")];
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
        let ours = format!("{prefix}-");
        Ok(listed
            .into_iter()
            .filter_map(|s| {
                let spec = s.spec?;
                let name = spec.name?;
                let labels = spec.labels?;
                name.starts_with(&ours).then(|| Owned {
                    app: labels.get(APP_LABEL).cloned().unwrap_or_default(),
                    proc_type: labels.get(TYPE_LABEL).cloned().unwrap_or_default(),
                    instance: labels.get(INSTANCE_LABEL).cloned().unwrap_or_default(),
                    name,
                })
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
    async fn running_tasks(&self, owner: &str) -> Result<Vec<bollard::models::Task>, RuntimeError> {
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
                    .is_some_and(|o| o == owner)
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

/// The app and process type of instance `<app>.v<N>.<type>.<i>`.
/// The app and process type of an instance id: `<app>.v<N>.<type>.<i>`, or with a generation
/// `<app>.v<N>.r<G>.<type>.<i>` (five parts).
fn parts(id: &str) -> (&str, &str) {
    let all: Vec<&str> = id.split('.').collect();
    let app = all.first().copied().unwrap_or(id);
    let ty = if all.len() == 5 {
        all.get(3)
    } else {
        all.get(2)
    };
    (app, ty.copied().unwrap_or("web"))
}

/// `<prefix>-<app>-<type>-<hash>`: Swarm service names are DNS labels (63 characters at most),
/// and the hash of (app, type) keeps `shop` + `api-web` apart from `shop-api` + `web`.
fn service_name(prefix: &str, app: &str, proc_type: &str) -> String {
    let hash = format!("{:06x}", fnv1a(&format!("{app}\0{proc_type}")) >> 40);
    let mut body = format!("{}-{}", sanitize(app), sanitize(proc_type))
        .replace(['_', '.'], "-")
        .to_ascii_lowercase();
    let room = 63 - prefix.len() - hash.len() - 2;
    if body.len() > room {
        body = body.chars().take(room).collect();
    }
    format!("{prefix}-{}-{hash}", body.trim_end_matches('-'))
}

/// The HEALTHCHECK of a `web` task whose image has berth's probe: the app's health check on
/// its port inside the container. The status line is read as is (busybox wget would follow a
/// redirect, and use a proxy from the app's env): 2xx/3xx passes, as for berth's own check.
/// Every second (Swarm waits for the first pass), but a task is unhealthy only after five
/// failures in a row of up to 10 s each: a busy app is not killed for one slow answer.
fn health_config(opts: &SwarmOptions, port: u16) -> bollard::models::HealthConfig {
    let b = PROBE_PATH;
    let script = match &opts.health_path {
        Some(path) => format!(
            "printf 'GET %s HTTP/1.0\\r\\nHost: %s\\r\\nUser-Agent: berth-health\\r\\n\\r\\n' {} {} | {b} timeout 9 {b} nc 127.0.0.1 {port} | {b} head -n 1 | {b} grep -q '^HTTP/1\\.[01] [23]'",
            shell_quote(path),
            shell_quote(&opts.health_host)
        ),
        // nc waits for the app to close: a connection still open after a second passed
        // (only a refused connect exits 1).
        None => format!("{b} timeout 1 {b} nc 127.0.0.1 {port} </dev/null; test $? -ne 1"),
    };
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    bollard::models::HealthConfig {
        test: Some(vec![
            "CMD".to_string(),
            PROBE_PATH.to_string(),
            "sh".to_string(),
            "-c".to_string(),
            script,
        ]),
        interval: Some(nanos(Duration::from_secs(1))),
        timeout: Some(nanos(Duration::from_secs(10))),
        retries: Some(5),
        start_period: Some(nanos(opts.health_start)),
        // Docker 25+: checks during the start period this often (older daemons ignore it).
        start_interval: Some(nanos(Duration::from_secs(1))),
    }
}

/// `s` as one word for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
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
/// endpoints (each probed with the app's health check until it first passes), log followers
/// for this node's tasks, and an event when a service's endpoints change.
async fn watch(inner: Arc<Inner>, owner: String, state: Arc<State>) {
    let mut nodes: HashMap<String, IpAddr> = HashMap::new();
    let mut nodes_at = Instant::now();
    let mut local_node = String::new();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let services: Vec<Arc<Svc>> = lock(&state.services).values().cloned().collect();
        if services.is_empty() {
            continue;
        }
        let tasks = match inner.running_tasks(&owner).await {
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
        // Every running task of every service: (service, task id, address, of the current
        // release?), probed at once where not yet healthy.
        let mut looks = Vec::new();
        for svc in &services {
            let service_id = lock(&svc.service_id).clone();
            let current = lock(&svc.run).id.clone();
            let probes = lock(&svc.probes).clone();
            let mut containers = HashSet::new();
            for t in tasks.iter().filter(|t| {
                t.service_id.as_deref() == Some(service_id.as_str())
                    && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)
            }) {
                let is_current = task_instance(t) == Some(current.as_str());
                // Follow the output of this node's tasks of the current release.
                if let (true, true, Some(cid)) = (
                    is_current,
                    t.node_id.as_deref() == Some(local_node.as_str()),
                    t.status
                        .as_ref()
                        .and_then(|s| s.container_status.as_ref())
                        .and_then(|c| c.container_id.clone()),
                ) {
                    svc.follow(&inner, &cid, &current);
                    containers.insert(cid);
                }
                let Some(task_id) = t.id.clone() else {
                    continue;
                };
                let addr = task_port(t)
                    .zip(t.node_id.as_ref().and_then(|n| nodes.get(n)).copied())
                    .map(|(port, ip)| SocketAddr::new(ip, port));
                let probe = task_instance(t)
                    .and_then(|release| probes.get(release).cloned())
                    .flatten();
                let known = lock(&svc.healthy).contains(&task_id);
                let svc = svc.clone();
                looks.push(async move {
                    let (ok, routable) = match (&probe, addr) {
                        // Not a listening process type: running is ready, nothing to route.
                        (None, _) => (true, None),
                        (Some(p), Some(a)) => (known || probe_task(a, p).await, Some(a)),
                        (Some(_), None) => (false, None),
                    };
                    (svc, task_id, routable, is_current, ok)
                });
            }
            // Followers of containers that stopped running end.
            lock(&svc.followers).retain(|cid, m| {
                let keep = containers.contains(cid);
                if !keep {
                    m.stopping.store(true, Ordering::SeqCst);
                }
                keep
            });
        }
        let looked = futures_util::future::join_all(looks).await;
        for svc in &services {
            let mine: Vec<_> = looked.iter().filter(|l| Arc::ptr_eq(&l.0, svc)).collect();
            let mut endpoints: Vec<SocketAddr> =
                mine.iter().filter(|l| l.4).filter_map(|l| l.2).collect();
            endpoints.sort();
            *lock(&svc.healthy) = mine.iter().filter(|l| l.4).map(|l| l.1.clone()).collect();
            *lock(&svc.running) = (
                mine.iter().filter(|l| l.3).count(),
                mine.iter().filter(|l| l.3 && l.4).count(),
            );
            let changed = {
                let mut e = lock(&svc.endpoints);
                let changed = *e != endpoints;
                *e = endpoints;
                changed
            };
            if changed {
                if let Some(tx) = &state.events {
                    let id = lock(&svc.run).id.clone();
                    let _ = tx.send(Event::Endpoints { id });
                }
            }
        }
    }
}

/// Is the task at `addr` serving? The app's HTTP check (2xx/3xx), or for a TCP check a
/// connection that stays open: Docker's port proxy accepts on a task's port before the app
/// listens, and then closes at once.
async fn probe_task(addr: SocketAddr, probe: &Probe) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) =
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let mut buf = [0u8; 512];
    match &probe.path {
        Some(path) => {
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n",
                probe.host
            );
            let answer = async {
                s.write_all(head.as_bytes()).await.ok()?;
                let mut got = Vec::new();
                while !got.windows(2).any(|w| w == b"\r\n") && got.len() < 512 {
                    let n = s.read(&mut buf).await.ok()?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let line = String::from_utf8_lossy(&got).into_owned();
                let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(code)
            };
            matches!(
                tokio::time::timeout(PROBE_TIMEOUT, answer).await,
                Ok(Some(200..=399))
            )
        }
        None => !matches!(
            tokio::time::timeout(PROBE_TIMEOUT, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        ),
    }
}

impl Svc {
    /// Follows container `cid`'s output into the log file of release `id`, once.
    fn follow(&self, inner: &Arc<Inner>, cid: &str, id: &str) {
        let mut followers = lock(&self.followers);
        if followers.contains_key(cid) {
            return;
        }
        let Some(log_file) = lock(&self.logs).get(id).cloned() else {
            return;
        };
        let since = lock(&self.run)
            .since
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or_else(|_| unix_now());
        let m = Arc::new(Managed {
            id: id.to_string(),
            container: cid.to_string(),
            restart: false,
            log_file,
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
        let name = self.name_of(&spec.id);
        let svc = self.register(&name, &spec, &opts);
        let local_node = self.check_manager().await?;
        let docker = &self.inner.docker;
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
        if existing.is_some()
            && (!self.ours(&labels)
                || labels.get(APP_LABEL).map(String::as_str) != Some(svc.app.as_str()))
        {
            return Err(RuntimeError::Docker(format!(
                "a swarm service named {name} exists that berth did not make for this app (hint: remove it with `docker service rm {name}` if it is stale)"
            )));
        }
        if let Some(s) = &existing {
            // Known at once: the watcher follows its tasks even if this start fails below.
            *lock(&svc.service_id) = s.id.clone().unwrap_or_default();
        }
        let running = labels.get(INSTANCE_LABEL).cloned();
        // The release this one replaces; the same release started again keeps its own.
        let previous = match &running {
            Some(r) if *r != spec.id => Some(r.clone()),
            _ => labels.get(PREVIOUS_LABEL).cloned(),
        };
        let (mut body, hash) = self
            .service_spec(&spec, &opts, previous.as_deref(), &local_node)
            .await?;
        let replicas_now = existing
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.mode.as_ref())
            .and_then(|m| m.replicated.as_ref())
            .and_then(|r| r.replicas);
        let started = |svc: &Svc| InstanceInfo {
            id: spec.id.clone(),
            pid: None,
            pid_start: None,
            state: InstanceState::Running {
                pid: None,
                since: lock(&svc.run).since,
            },
        };
        let same = existing.is_some()
            && running.as_deref() == Some(spec.id.as_str())
            && labels.get(TEMPLATE_LABEL) == Some(&hash)
            && replicas_now == Some(i64::from(opts.replicas))
            && self.settled(existing.as_ref(), &name, &spec.id).await;
        if same {
            // Exactly what runs already (a berth restart), nothing moving: nothing to change,
            // nothing to wait for but the watcher's first look at the tasks.
            svc.set_run(&spec.id);
            let first_look = Instant::now() + Duration::from_secs(3);
            let _ = self.wait_routable(&svc, opts.replicas, first_look).await;
            return Ok(started(&svc));
        }
        if let Some(registry) = &opts.registry {
            let remote = self
                .push(spec.image.as_deref().unwrap_or_default(), registry)
                .await?;
            if let Some(c) = body
                .task_template
                .as_mut()
                .and_then(|t| t.container_spec.as_mut())
            {
                c.image = Some(remote);
            }
        }
        // From here on (a push may take long): the time Swarm gets.
        let deadline = Instant::now() + opts.timeout;
        let was = lock(&svc.run).id.clone();
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
                let version = version_of(&s, &name)?;
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
        svc.set_run(&spec.id);
        // Daemon time of the change: the tasks created since are this start's.
        let baseline = docker
            .inspect_service(&name, None::<InspectServiceOptions>)
            .await
            .ok()
            .and_then(|s| s.updated_at)
            .unwrap_or_default();
        let mut result = self
            .converge(&name, &spec.id, opts.replicas, update, &baseline, deadline)
            .await;
        if result.is_ok() {
            result = self.wait_routable(&svc, opts.replicas, deadline).await;
        }
        if let Err(e) = result {
            // What the service runs now: Swarm may have rolled back already.
            let now = docker
                .inspect_service(&name, None::<InspectServiceOptions>)
                .await
                .ok()
                .and_then(|s| s.spec?.labels?.get(INSTANCE_LABEL).cloned())
                .unwrap_or(was);
            svc.set_run(&now);
            return Err(e);
        }
        Ok(started(&svc))
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
        let run = lock(&svc.run).clone();
        if run.id != id {
            return None;
        }
        let (running, _) = *lock(&svc.running);
        Some(match running {
            0 => InstanceState::Restarting {
                restarts: 0,
                last_exit: "no task running".to_string(),
            },
            _ => InstanceState::Running {
                pid: None,
                since: run.since,
            },
        })
    }

    async fn run_task(&self, task: OneOff) -> Result<TaskOutcome, RuntimeError> {
        Err(RuntimeError::Docker(format!(
            "one-off task {} cannot run on Swarm",
            task.id
        )))
    }

    async fn sweep(&self, _grace: Duration) -> Result<usize, RuntimeError> {
        // Which services to keep is the store's knowledge, not the runtime's: the engine
        // calls `remove_unwanted` with the live releases' process types.
        Ok(0)
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
    fn service_names_are_dns_labels_and_never_shared() {
        let p = "berth-0123abcd";
        let name = |id: &str| {
            let (app, t) = parts(id);
            service_name(p, app, t)
        };
        assert!(name("shop.v3.web.1").starts_with("berth-0123abcd-shop-web-"));
        assert!(name("shop.v3.big_worker.1").starts_with("berth-0123abcd-shop-big-worker-"));
        // The same name once `-`, `_` and `.` are folded: still two services.
        assert_ne!(name("shop.v1.api-web.1"), name("shop-api.v1.web.1"));
        assert_ne!(name("shop.v1.big_worker.1"), name("shop.v1.big-worker.1"));
        assert_eq!(name("shop.v1.web.1"), name("shop.v9.web.1"));
        // A restart's instances (a generation) are the same service.
        assert_eq!(name("shop.v1.web.1"), name("shop.v1.r2.web.1"));
        assert_eq!(parts("shop.v1.r1.1"), ("shop", "r1"));
        let long = format!("{}.v1.web.1", "a".repeat(80));
        assert!(name(&long).len() <= 63, "{}", name(&long));
        assert_ne!(name(&long), name(&format!("{}.v1.web.1", "a".repeat(81))));
    }
}
