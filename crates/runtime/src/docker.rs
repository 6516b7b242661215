//! [`DockerRuntime`]: instances are containers of a Docker Engine, driven through its API
//! (`bollard`, over the unix socket only).
//!
//! Everything berth creates there (containers, the bridge network, images) is labelled
//! `berth.owner=<owner>` (the data dir) and named with a short stable hash of the owner
//! (`berth-<hash>-…`), so two berths on one daemon never touch each other's.
//!
//! Docker supervises the containers itself (restart policy `unless-stopped`), and they outlive
//! berth like the process runtime's instances do. This runtime only *watches*: one tracker task
//! follows the daemon's event stream (filtered on the owner label) and inspects a container
//! whenever an event names it, plus every [`POLL_EVERY`] for all managed containers in case
//! the stream missed something; [`Runtime::state`] reads the map it keeps. One log follower per
//! container appends the container's output to the instance's log file.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum,
    HostConfig, HostConfigLogConfig, NetworkCreateRequest, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptions, CreateContainerOptions, EventsOptions, ListContainersOptions,
    ListImagesOptions, ListNetworksOptions, LogsOptions, RemoveContainerOptions,
    RemoveImageOptions, StopContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

mod dockerfile;
mod hardening;
mod services;
mod swarm;

pub use dockerfile::{is_image_id, registry_host};
pub use services::{ServiceHealthcheck, ServiceInfo, ServiceRestart, ServiceRun};
pub use swarm::{NodeInfo, SwarmOptions, SwarmRuntime, PROBE_LABEL};

use crate::procfs::{proc_start_time, start_time_to_system};
use crate::{
    check_id, fnv1a, logs, Event, InstanceInfo, InstanceSpec, InstanceState, Runtime, RuntimeError,
    TaskOutcome, TaskSpec,
};

/// The most output of one image build kept in its deploy log.
const IMAGE_OUTPUT_MAX: u64 = 64 << 20;

/// The label naming the berth (its data dir) on everything it creates.
const OWNER_LABEL: &str = "berth.owner";
/// The label naming the instance id on a container.
const INSTANCE_LABEL: &str = "berth.instance";
/// The label naming the app on networks, services and volumes (and on images, set by the
/// engine).
const APP_LABEL: &str = "berth.app";
/// The label naming the service on a service container.
const SERVICE_LABEL: &str = "berth.service";
/// The label holding the hash of a service container's definition.
const SERVICE_HASH_LABEL: &str = "berth.service-hash";
/// How long a service gets to stop (a database flushing its data) before SIGKILL.
const SERVICE_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long `connect` waits for the daemon to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of one API request (a stop gets its grace on top).
const REQUEST_TIMEOUT: u64 = 120;
/// How often the tracker inspects every managed container.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// Restarts without a stable run before an instance counts as crashing (as the process
/// runtime's default).
const CRASH_AFTER: u32 = 5;
/// A run at least this long resets the restart streak.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// Log rotation, as the process runtime's defaults.
const LOG_MAX_BYTES: u64 = 10 << 20;
const LOG_KEEP: usize = 3;
const LOG_CHECK_EVERY: Duration = Duration::from_secs(2);
/// `last_exit` of a container its HEALTHCHECK calls unhealthy.
const UNHEALTHY: &str = "unhealthy (HEALTHCHECK)";

/// Runs instances as Docker containers. See the module docs.
///
/// Dropping it stops watching but leaves every container running, like a berth crash; a new
/// runtime on the same owner adopts them.
pub struct DockerRuntime {
    inner: Arc<Inner>,
    tracker: JoinHandle<()>,
    /// Made on first use ([`DockerRuntime::swarm`]).
    swarm: std::sync::OnceLock<Arc<SwarmRuntime>>,
}

struct Inner {
    docker: Docker,
    /// The socket it talks to, for error messages.
    socket: String,
    owner: String,
    /// `berth-<hash of owner>`: the start of every name this runtime gives.
    prefix: String,
    instances: Mutex<HashMap<String, Arc<Managed>>>,
    events: broadcast::Sender<Event>,
    /// The app networks known to exist; a tokio lock so concurrent starts create each once.
    networks_ready: tokio::sync::Mutex<HashSet<String>>,
    /// Log followers of service containers, by container name.
    services: Mutex<HashMap<String, Arc<Managed>>>,
    rotate_lock: Mutex<()>,
    /// Held shared by every image build and alone by a prune: the classic builder reuses
    /// cached layers of other images, and an image removed while a build reuses its layers
    /// can leave the new image without them (seen as a service whose `/bin/sh` is missing).
    images: tokio::sync::RwLock<()>,
}

/// One container this runtime manages.
struct Managed {
    id: String,
    /// The container's id, to tell it from a later container of the same name.
    container: String,
    restart: bool,
    log_file: PathBuf,
    track: Mutex<Track>,
    /// Set by `stop`: the tracker leaves the instance alone from then on.
    stopping: AtomicBool,
    follower: Mutex<Option<JoinHandle<()>>>,
}

/// What the tracker knows of one container.
struct Track {
    state: InstanceState,
    /// The init pid of the run being watched (`None` between runs).
    pid: Option<u32>,
    restart_count: i64,
    /// Runs since the last stable one.
    streak: u32,
    run_started: Instant,
    crashing_reported: bool,
    health: Option<&'static str>,
    /// The exit code of the last `die` event not yet reported.
    die_code: Option<i64>,
    /// A restart was seen by a poll before its `die` event came: reported at the next look,
    /// which the event triggers (with its exit code) or the next poll does (without).
    deferred: bool,
}

/// The parts of an inspect the tracker uses.
#[derive(Clone, Debug, PartialEq)]
struct View {
    status: ContainerStateStatusEnum,
    pid: Option<u32>,
    exit_code: i64,
    oom_killed: bool,
    restart_count: i64,
    unhealthy: bool,
    /// The HEALTHCHECK's verdict; `None` without a HEALTHCHECK.
    health: Option<&'static str>,
}

impl View {
    fn of(c: &ContainerInspectResponse) -> View {
        let state = c.state.clone().unwrap_or_default();
        View {
            status: state.status.unwrap_or(ContainerStateStatusEnum::EMPTY),
            pid: state
                .pid
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p > 0),
            exit_code: state.exit_code.unwrap_or_default(),
            oom_killed: state.oom_killed.unwrap_or_default(),
            restart_count: c.restart_count.unwrap_or_default(),
            unhealthy: state
                .health
                .as_ref()
                .and_then(|h| h.status)
                .is_some_and(|s| s == HealthStatusEnum::UNHEALTHY),
            health: match state.health.and_then(|h| h.status) {
                Some(HealthStatusEnum::STARTING) => Some("starting"),
                Some(HealthStatusEnum::HEALTHY) => Some("healthy"),
                Some(HealthStatusEnum::UNHEALTHY) => Some("unhealthy"),
                _ => None,
            },
        }
    }

    fn last_exit(&self) -> String {
        if self.oom_killed {
            format!("exit code {} (out of memory)", self.exit_code)
        } else {
            format!("exit code {}", self.exit_code)
        }
    }
}

impl Track {
    fn new(pid: Option<u32>, restart_count: i64) -> Track {
        Track {
            state: InstanceState::Running {
                pid,
                since: since_of(pid),
            },
            pid,
            restart_count,
            streak: 0,
            run_started: Instant::now(),
            crashing_reported: false,
            health: None,
            die_code: None,
            deferred: false,
        }
    }

    /// Folds a fresh inspect (`None`: the container is gone) into the state; returns the
    /// events to emit.
    fn apply(&mut self, id: &str, restart: bool, view: Option<&View>) -> Vec<Event> {
        let mut events = Vec::new();
        let Some(v) = view else {
            if self.state != InstanceState::Stopped {
                self.state = InstanceState::Stopped;
                self.pid = None;
                events.push(Event::Exited {
                    id: id.to_string(),
                    status: "container removed".to_string(),
                    restarting: false,
                });
            }
            return events;
        };
        let running = v.status == ContainerStateStatusEnum::RUNNING;
        self.health = v.health;
        let our_run_ended = self.pid.is_some() && (!running || v.pid != self.pid);
        let delta = u32::try_from(v.restart_count.saturating_sub(self.restart_count)).unwrap_or(0);
        let ended = delta.max(u32::from(our_run_ended));
        // Running again already: only the `die` event knows how the last run ended (an
        // inspect now says exit code 0). Wait one look for it.
        if ended > 0 && running && self.die_code.is_none() && !self.deferred {
            self.deferred = true;
            return events;
        }
        self.deferred = false;
        self.restart_count = self.restart_count.max(v.restart_count);
        let restarting = restart
            && matches!(
                v.status,
                ContainerStateStatusEnum::RESTARTING | ContainerStateStatusEnum::RUNNING
            );
        let last_exit = match self.die_code {
            Some(code) if running => format!("exit code {code}"),
            None if running => "exited (exit code not seen)".to_string(),
            _ => v.last_exit(),
        };
        if ended > 0 {
            self.die_code = None;
            if self.run_started.elapsed() < STABLE_AFTER {
                self.streak = self.streak.saturating_add(ended);
            } else {
                self.streak = ended;
            }
            self.pid = None;
            events.push(Event::Exited {
                id: id.to_string(),
                status: last_exit,
                restarting,
            });
        }
        let restarts = u32::try_from(v.restart_count).unwrap_or(u32::MAX);
        match v.status {
            ContainerStateStatusEnum::RUNNING => {
                if self.pid.is_none() && v.pid.is_some() {
                    self.pid = v.pid;
                    self.run_started = Instant::now();
                    events.push(Event::Started {
                        id: id.to_string(),
                        pid: v.pid,
                        pid_start: v.pid.and_then(proc_start_time),
                    });
                }
                if self.run_started.elapsed() >= STABLE_AFTER && self.streak > 0 {
                    self.streak = 0;
                    self.crashing_reported = false;
                }
                if v.unhealthy {
                    self.state = InstanceState::Crashing {
                        restarts,
                        last_exit: UNHEALTHY.to_string(),
                    };
                    self.report_crashing(id, restarts, &mut events);
                } else {
                    let was_unhealthy = matches!(
                        &self.state,
                        InstanceState::Crashing { last_exit, .. } if last_exit == UNHEALTHY
                    );
                    // Healthy again: a later unhealthy verdict is news.
                    if was_unhealthy && self.streak == 0 {
                        self.crashing_reported = false;
                    }
                    if !matches!(self.state, InstanceState::Running { pid, .. } if pid == v.pid) {
                        self.state = InstanceState::Running {
                            pid: v.pid,
                            since: since_of(v.pid),
                        };
                    }
                }
            }
            ContainerStateStatusEnum::RESTARTING => {
                let last_exit = v.last_exit();
                if self.streak >= CRASH_AFTER {
                    self.state = InstanceState::Crashing {
                        restarts,
                        last_exit,
                    };
                    self.report_crashing(id, restarts, &mut events);
                } else {
                    self.state = InstanceState::Restarting {
                        restarts,
                        last_exit,
                    };
                }
            }
            // Not started yet (or being paused by someone): nothing to say.
            ContainerStateStatusEnum::CREATED
            | ContainerStateStatusEnum::PAUSED
            | ContainerStateStatusEnum::EMPTY => {}
            // Exited with no restart pending, stopped from outside, or being removed.
            ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::REMOVING => {
                if self.state != InstanceState::Stopped {
                    if ended == 0 {
                        events.push(Event::Exited {
                            id: id.to_string(),
                            status: v.last_exit(),
                            restarting: false,
                        });
                    }
                    self.state = InstanceState::Stopped;
                    self.pid = None;
                }
            }
        }
        events
    }

    fn report_crashing(&mut self, id: &str, restarts: u32, events: &mut Vec<Event>) {
        if !self.crashing_reported {
            self.crashing_reported = true;
            tracing::warn!(instance = %id, restarts, "container crashing");
            events.push(Event::Crashing {
                id: id.to_string(),
                restarts,
            });
        }
    }
}

/// When the process `pid` started (its host start time), or now.
fn since_of(pid: Option<u32>) -> SystemTime {
    pid.and_then(proc_start_time)
        .and_then(start_time_to_system)
        .unwrap_or_else(SystemTime::now)
}

impl DockerRuntime {
    /// Connects to the daemon at `socket` (`None`: `$DOCKER_HOST` if it is `unix://…`, else
    /// `/var/run/docker.sock`) and checks that it answers. `owner` is berth's data dir.
    pub async fn connect(
        socket: Option<&Path>,
        owner: &str,
    ) -> Result<Arc<DockerRuntime>, RuntimeError> {
        let socket = match socket {
            Some(path) => path.to_path_buf(),
            None => default_socket(),
        };
        let unreachable = |why: String| {
            RuntimeError::Docker(format!(
                "cannot reach the Docker daemon at {}: {}",
                socket.display(),
                one_line(&why)
            ))
        };
        let path = socket
            .to_str()
            .ok_or_else(|| unreachable("the socket path is not UTF-8".to_string()))?;
        let docker = Docker::connect_with_unix(path, REQUEST_TIMEOUT, bollard::API_DEFAULT_VERSION)
            .map_err(|e| unreachable(e.to_string()))?;
        // The daemon may speak an older API than bollard's default: use the lower of the two.
        let docker = tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable(format!("no answer within {PING_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(PING_TIMEOUT, docker.ping())
            .await
            .map_err(|_| unreachable(format!("no answer within {PING_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let inner = Arc::new(Inner {
            docker,
            socket: path.to_string(),
            owner: owner.to_string(),
            prefix: format!("berth-{:08x}", fnv1a(owner) >> 32),
            instances: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            networks_ready: tokio::sync::Mutex::new(HashSet::new()),
            services: Mutex::new(HashMap::new()),
            rotate_lock: Mutex::new(()),
            images: tokio::sync::RwLock::new(()),
        });
        let tracker = tokio::spawn(track(inner.clone()));
        Ok(Arc::new(DockerRuntime {
            inner,
            tracker,
            swarm: std::sync::OnceLock::new(),
        }))
    }

    /// Adds berth's probe (Debian's static busybox, from `busybox` on this host) to image
    /// `from` as one more layer, labelled [`swarm::PROBE_LABEL`], tagged `tag`: Swarm
    /// tasks of an image without a HEALTHCHECK then get the app's health check, run by it.
    pub async fn add_probe(
        &self,
        from: &str,
        tag: &str,
        labels: &[(String, String)],
        busybox: &Path,
        log: &Path,
    ) -> Result<(), RuntimeError> {
        // The build context: removed when `dir` is dropped.
        let dir = tempfile::Builder::new().prefix("berth-probe-").tempdir()?;
        std::fs::copy(busybox, dir.path().join("busybox"))?;
        std::fs::write(
            dir.path().join("Dockerfile"),
            format!(
                "FROM {from}\nCOPY busybox {}\nLABEL {}=1\n",
                swarm::PROBE_PATH,
                swarm::PROBE_LABEL
            ),
        )?;
        self.build_image(
            dir.path(),
            "Dockerfile",
            tag,
            labels,
            log,
            Duration::from_secs(120),
        )
        .await
        .map(drop)
    }

    /// The Swarm runtime on this daemon's connection (always the same one). It works once
    /// the daemon is a swarm manager; until then its calls say so. Call it inside tokio.
    pub fn swarm(&self) -> Arc<SwarmRuntime> {
        self.swarm
            .get_or_init(|| SwarmRuntime::new(self.inner.clone(), self.inner.owner.clone()))
            .clone()
    }

    /// Makes the Swarm runtime label what it creates with `owner` instead of the data dir
    /// (call it before [`DockerRuntime::swarm`]): a swarm spans machines, and two berths on two
    /// of them may well have the same data dir path. berth passes `<data dir>#<its id>`.
    pub fn swarm_owned_by(&self, owner: &str) -> Arc<SwarmRuntime> {
        self.swarm
            .get_or_init(|| SwarmRuntime::new(self.inner.clone(), owner.to_string()))
            .clone()
    }

    /// `berth-<hash of the owner>`: the prefix of every container, network and image name
    /// of this berth.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The images the Dockerfile `dockerfile` in `context` names (`FROM`, `COPY --from`), or
    /// why it may not be built for the app whose images are tagged `tag` (see `dockerfile.rs`).
    pub async fn dockerfile_images(
        &self,
        context: &Path,
        dockerfile: &str,
        tag: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let name = if dockerfile.is_empty() {
            "Dockerfile"
        } else {
            dockerfile
        };
        let (dir, file) = (context.to_path_buf(), name.to_string());
        let text = tokio::task::spawn_blocking(move || read_dockerfile(&dir, &file))
            .await
            .map_err(|e| RuntimeError::Docker(e.to_string()))?
            .map_err(RuntimeError::Docker)?;
        let own = tag.rsplit_once(':').map_or(tag, |(repo, _)| repo);
        dockerfile::check(&text, &own.to_ascii_lowercase()).map_err(RuntimeError::Docker)
    }

    /// `Err` when `image`, as the daemon resolves it (any spelling: a tag, `docker.io/…`, a
    /// short ID), is another app's (or another berth's) image: its labels say so. An image the
    /// daemon does not have is not refused here (it would be pulled from its registry).
    pub async fn check_image(&self, image: &str, app: &str) -> Result<(), String> {
        let inspected = match self.inner.docker.inspect_image(image).await {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => return Ok(()),
            Err(e) => {
                return Err(format!(
                    "cannot inspect the image {image}: {}",
                    one_line(&e.to_string())
                ))
            }
        };
        let labels = inspected.config.and_then(|c| c.labels).unwrap_or_default();
        let owner = labels.get(OWNER_LABEL);
        let of_app = labels.get(APP_LABEL);
        if owner.is_some_and(|o| o != &self.inner.owner) {
            return Err(format!(
                "{image} is an image of another berth on this server (hint: name a public image, or build it from your source)"
            ));
        }
        if of_app.is_some_and(|a| a != app) {
            return Err(format!(
                "{image} is another app's image (berth-built images can only be built on by their own app)"
            ));
        }
        Ok(())
    }

    /// A tag for an app's release image: `<prefix>/<app>:v<release>`.
    pub fn image_tag(&self, app: &str, release: u64) -> String {
        format!(
            "{}/{}:v{release}",
            self.inner.prefix,
            app.to_ascii_lowercase()
        )
    }

    /// The verdict of the image's HEALTHCHECK on the instance (`"starting"`, `"healthy"`,
    /// `"unhealthy"`), as of the tracker's last look; `None` for an image without one or an
    /// unknown id. An unhealthy container is also reported as `Crashing`.
    pub fn health(&self, id: &str) -> Option<&'static str> {
        self.inner.managed(id).and_then(|m| lock(&m.track).health)
    }

    /// The name of the app's bridge network (`<prefix>-app-<app>`): its instances and services
    /// join it, and only they do, so apps never reach each other's containers directly.
    pub fn app_network(&self, app: &str) -> String {
        self.inner.app_network(app)
    }

    /// Removes the app's network, once its containers and services are gone. A network still
    /// in use, or already gone, is left as it is; any other failure is logged.
    pub async fn remove_app_network(&self, app: &str) {
        let name = self.inner.app_network(app);
        let mut ready = self.inner.networks_ready.lock().await;
        ready.remove(&name);
        match self.inner.docker.remove_network(&name).await {
            Ok(()) => tracing::info!(network = %name, "removed the app's container network"),
            // 403/409: still has endpoints; 404: gone.
            Err(e) if matches!(status_of(&e), Some(403 | 404 | 409)) => {
                tracing::debug!(network = %name, "network not removed: {}", one_line(&e.to_string()));
            }
            Err(e) => {
                tracing::warn!(network = %name, "cannot remove the app's network: {}", one_line(&e.to_string()));
            }
        }
    }

    /// `docker build` of `context` (streamed as a tar) with `dockerfile` (a path inside the
    /// context; `""`: `Dockerfile`), tagged `tag`, labelled with `labels` and the owner; every
    /// line of output is appended to `log`. Returns the image id.
    ///
    /// Tried twice when the daemon loses an image it was looking at in its layer cache (an
    /// image removed while another build probed the cache: a race of the classic builder).
    pub async fn build_image(
        &self,
        context: &Path,
        dockerfile: &str,
        tag: &str,
        labels: &[(String, String)],
        log: &Path,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        let _building = self.inner.images.read().await;
        let started = Instant::now();
        match self
            .build_image_once(context, dockerfile, tag, labels, log, timeout)
            .await
        {
            Err(RuntimeError::Docker(msg))
                if msg.contains("unable to find image") && started.elapsed() < timeout =>
            {
                tracing::warn!(%tag, "build lost a cached image, building again: {msg}");
                if let Ok(mut file) = open_append(log).await {
                    let _ = file
                        .write_all(
                            b"-----> A cached layer vanished during the build; building again\n",
                        )
                        .await;
                }
                self.build_image_once(
                    context,
                    dockerfile,
                    tag,
                    labels,
                    log,
                    timeout.saturating_sub(started.elapsed()),
                )
                .await
            }
            built => built,
        }
    }

    async fn build_image_once(
        &self,
        context: &Path,
        dockerfile: &str,
        tag: &str,
        labels: &[(String, String)],
        log: &Path,
        timeout: Duration,
    ) -> Result<String, RuntimeError> {
        // What the Dockerfile may not ask of the shared daemon (`dockerfile.rs`).
        let images = self.dockerfile_images(context, dockerfile, tag).await?;
        // The images it builds on, as the daemon resolves them (the caller has checked their
        // registries against its egress rule).
        let app = labels
            .iter()
            .find(|(k, _)| k == APP_LABEL)
            .map(|(_, a)| a.clone());
        if let Some(app) = &app {
            for image in &images {
                self.check_image(image, app)
                    .await
                    .map_err(RuntimeError::Docker)?;
            }
        }
        // `RUN` steps on the app's own network, as its containers: never on Docker's default
        // bridge, where other tenants' builds (and Swarm tasks) would be their neighbours.
        let network = match &app {
            Some(app) => Some(self.inner.ensure_network(app).await?),
            None => None,
        };
        let mut log_file = open_append(log).await?;
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let dir = context.to_path_buf();
        let packer = tokio::task::spawn_blocking(move || pack_context(&dir, tx));
        let body = bollard::body_stream(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
        let mut all_labels: HashMap<String, String> = labels.iter().cloned().collect();
        all_labels.insert(OWNER_LABEL.to_string(), self.inner.owner.clone());
        let options = BuildImageOptions {
            dockerfile: if dockerfile.is_empty() {
                "Dockerfile".to_string()
            } else {
                dockerfile.to_string()
            },
            t: Some(tag.to_string()),
            rm: true,
            forcerm: true,
            labels: Some(all_labels),
            networkmode: network,
            // The classic builder, always: `dockerfile.rs` reads the file as it does (BuildKit
            // would also run a `# syntax=` frontend image, as root).
            version: bollard::query_parameters::BuilderVersion::BuilderV1,
            ..Default::default()
        };
        let docker = &self.inner.docker;
        let build = async {
            let mut stream = docker.build_image(options, None, Some(body));
            let mut image_id = None;
            let mut last_step: Option<String> = None;
            let mut kept = 0u64;
            while let Some(item) = stream.next().await {
                let info = match item {
                    Ok(info) => info,
                    Err(e) => {
                        let msg = one_line(&e.to_string());
                        let _ = log_file
                            .write_all(format!("ERROR: {msg}\n").as_bytes())
                            .await;
                        return Err(build_error(last_step.as_deref(), &msg));
                    }
                };
                for text in [&info.stream, &info.status].into_iter().flatten() {
                    // The daemon sends a bare newline between steps: no blank lines.
                    if text.trim().is_empty() {
                        continue;
                    }
                    // A step that prints without end must not fill the disk with the log.
                    if kept < IMAGE_OUTPUT_MAX {
                        kept += text.len() as u64;
                        let _ = log_file.write_all(text.as_bytes()).await;
                        if !text.ends_with('\n') {
                            let _ = log_file.write_all(b"\n").await;
                        }
                        if kept >= IMAGE_OUTPUT_MAX {
                            let _ = log_file
                                .write_all(b"[berth: the image build wrote more than 64 MiB of output; the rest is not kept]\n")
                                .await;
                        }
                    }
                    if text.starts_with("Step ") {
                        last_step = Some(text.trim().to_string());
                    }
                }
                let error = info
                    .error_detail
                    .and_then(|d| d.message)
                    .or(info.error)
                    .filter(|e| !e.is_empty());
                if let Some(error) = error {
                    let msg = one_line(&error);
                    let _ = log_file
                        .write_all(format!("ERROR: {msg}\n").as_bytes())
                        .await;
                    return Err(build_error(last_step.as_deref(), &msg));
                }
                if let Some(id) = info.aux.and_then(|aux| aux.id) {
                    image_id = Some(id);
                }
            }
            Ok(image_id)
        };
        let built = tokio::time::timeout(timeout, build).await;
        let _ = log_file.flush().await;
        // A context that could not be read explains a failed build better than the daemon.
        let packed = match packer.await {
            Ok(packed) => packed,
            Err(e) => Err(std::io::Error::other(e.to_string())),
        };
        let built = match built {
            Err(_) => {
                let msg = format!("build timed out after {}s", timeout.as_secs());
                let _ = log_file
                    .write_all(format!("ERROR: {msg}\n").as_bytes())
                    .await;
                return Err(RuntimeError::Docker(msg));
            }
            Ok(built) => built,
        };
        let built = match packed {
            Ok(()) => built,
            // A broken pipe only means the daemon stopped reading: its own error says why.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe && built.is_err() => built,
            Err(e) => {
                return Err(RuntimeError::Docker(format!(
                    "cannot send the build context {}: {e}",
                    context.display()
                )))
            }
        };
        match built? {
            Some(id) => Ok(id),
            None => docker
                .inspect_image(tag)
                .await
                .map_err(|e| docker_err(&format!("build of {tag} left no image"), e))?
                .id
                .ok_or_else(|| RuntimeError::Docker(format!("build of {tag} left no image"))),
        }
    }

    /// Removes this owner's images labelled `berth.app=<app>` except those tagged with one of
    /// `keep`; an image still in use stays. Returns how many were removed.
    /// Waits until no image build runs (see `Inner::images`).
    pub async fn prune_images(&self, app: &str, keep: &[String]) -> Result<usize, RuntimeError> {
        let _pruning = self.inner.images.write().await;
        let docker = &self.inner.docker;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{OWNER_LABEL}={}", self.inner.owner),
                format!("berth.app={app}"),
            ],
        )]);
        let images = docker
            .list_images(Some(ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_err("cannot list images", e))?;
        let ours = format!("{}/{}:", self.inner.prefix, app.to_ascii_lowercase());
        let mut removed = 0;
        for image in images {
            let tags: Vec<&String> = image
                .repo_tags
                .iter()
                .filter(|t| t.as_str() != "<none>:<none>")
                .collect();
            if tags.iter().any(|t| keep.contains(t)) {
                continue;
            }
            // Labels are inherited: an image built FROM ours, or ours tagged by someone else,
            // is not ours to remove.
            if tags.is_empty() || tags.iter().any(|t| !t.starts_with(&ours)) {
                continue;
            }
            // By tag (an image with several tags cannot be removed by id without force),
            // or by id when it has none left.
            let names: Vec<String> = if tags.is_empty() {
                vec![image.id.clone()]
            } else {
                tags.into_iter().cloned().collect()
            };
            let mut ok = true;
            for name in names {
                match docker
                    .remove_image(&name, Some(RemoveImageOptions::default()), None)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if status_of(&e) == Some(404) => {}
                    Err(e) => {
                        tracing::debug!(image = %name, "image not pruned: {}", one_line(&e.to_string()));
                        ok = false;
                    }
                }
            }
            if ok {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// [`Runtime::kill_orphan`] that says whether `pid` was one of this owner's containers.
    pub async fn kill_orphan_container(
        &self,
        pid: u32,
        pid_start: u64,
        grace: Duration,
    ) -> Result<bool, RuntimeError> {
        if proc_start_time(pid) != Some(pid_start) {
            return Ok(false);
        }
        for c in self.inner.list_owned(false).await? {
            let Some(cid) = c.id else { continue };
            let Ok(inspected) = self
                .inner
                .docker
                .inspect_container(
                    &cid,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            else {
                continue;
            };
            if View::of(&inspected).pid != Some(pid) {
                continue;
            }
            let managed_id = self
                .inner
                .instances()
                .into_iter()
                .find(|m| m.container == cid)
                .map(|m| m.id.clone());
            match managed_id {
                Some(id) => self.stop(&id, grace).await?,
                None => {
                    tracing::warn!(pid, container = %cid, "stopping an orphan container");
                    self.inner.stop_and_remove(&cid, grace).await?;
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Starts following the logs of `m` (from `since`, unix seconds; 0: from the start) and
    /// records it as managed.
    fn register(&self, m: Arc<Managed>, since: i64) -> Result<(), RuntimeError> {
        let mut instances = lock(&self.inner.instances);
        if instances.get(&m.id).is_some_and(|i| i.is_active()) {
            return Err(RuntimeError::AlreadyRunning(m.id.clone()));
        }
        let follower = tokio::spawn(follow_logs(self.inner.clone(), m.clone(), since));
        *lock(&m.follower) = Some(follower);
        instances.insert(m.id.clone(), m);
        Ok(())
    }
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.tracker.abort();
        let instances = lock(&self.inner.instances);
        let services = lock(&self.inner.services);
        for m in instances.values().chain(services.values()) {
            if let Some(task) = lock(&m.follower).take() {
                task.abort();
            }
        }
    }
}

impl Managed {
    fn is_active(&self) -> bool {
        lock(&self.track).state != InstanceState::Stopped
    }

    fn state(&self) -> InstanceState {
        lock(&self.track).state.clone()
    }
}

impl Inner {
    fn app_network(&self, app: &str) -> String {
        format!("{}-app-{}", self.prefix, sanitize(app))
    }

    fn container_name(&self, id: &str) -> String {
        format!("{}-{}", self.prefix, sanitize(id))
    }

    fn managed(&self, id: &str) -> Option<Arc<Managed>> {
        lock(&self.instances).get(id).cloned()
    }

    fn instances(&self) -> Vec<Arc<Managed>> {
        lock(&self.instances).values().cloned().collect()
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    /// This owner's containers (`all`: stopped ones too).
    async fn list_owned(
        &self,
        all: bool,
    ) -> Result<Vec<bollard::models::ContainerSummary>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{OWNER_LABEL}={}", self.owner)],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_err("cannot list containers", e))?;
        // Labels are inherited: a container someone ran from one of our images carries our
        // owner label too. Ours also have an instance label and our name prefix, and are no
        // Swarm task (the Swarm runtime's, named with the same prefix).
        let ours = format!("/{}-", self.prefix);
        Ok(listed
            .into_iter()
            .filter(|c| {
                c.labels.as_ref().is_some_and(|l| {
                    l.contains_key(INSTANCE_LABEL) && !l.contains_key("com.docker.swarm.task.id")
                }) && c
                    .names
                    .as_ref()
                    .is_some_and(|n| n.iter().any(|n| n.starts_with(&ours)))
            })
            .collect())
    }

    /// Creates the app's bridge network once (or finds it from an earlier run); returns its
    /// name.
    async fn ensure_network(&self, app: &str) -> Result<String, RuntimeError> {
        self.ensure_named_network(self.app_network(app), "bridge", app)
            .await
    }

    /// The network `name` with `driver` (`bridge`, or `overlay` for Swarm services), labelled
    /// as `app`'s, created once (or found from an earlier run); returns its name.
    async fn ensure_named_network(
        &self,
        name: String,
        driver: &str,
        app: &str,
    ) -> Result<String, RuntimeError> {
        let mut ready = self.networks_ready.lock().await;
        if ready.contains(&name) {
            return Ok(name);
        }
        let filters = HashMap::from([("name".to_string(), vec![name.clone()])]);
        let existing = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| docker_err("cannot list networks", e))?;
        // `name` filters by substring: look for the exact name.
        if !existing.iter().any(|n| n.name.as_deref() == Some(&name)) {
            let created = self
                .docker
                .create_network(NetworkCreateRequest {
                    name: name.clone(),
                    driver: Some(driver.to_string()),
                    labels: Some(HashMap::from([
                        (OWNER_LABEL.to_string(), self.owner.clone()),
                        (APP_LABEL.to_string(), app.to_string()),
                    ])),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => tracing::info!(network = %name, "created the app's container network"),
                // Created meanwhile by someone else (another process on the same owner).
                Err(e) if status_of(&e) == Some(409) => {}
                // Each app has its own network, and Docker's default address pools hold about
                // 30 of them: say what to change.
                Err(e) if out_of_pools(&e.to_string()) => {
                    return Err(RuntimeError::Docker(format!(
                        "cannot create network {name}: Docker has no address pool left for another app network (hint: give dockerd more, smaller pools in /etc/docker/daemon.json, e.g. \"default-address-pools\": [{{\"base\": \"10.200.0.0/16\", \"size\": 24}}], and restart it)"
                    )))
                }
                Err(e) => return Err(docker_err(&format!("cannot create network {name}"), e)),
            }
        }
        ready.insert(name.clone());
        Ok(name)
    }

    /// Creates container `name` from `body` (which names `network`); a network removed from
    /// outside meanwhile is created again.
    async fn create_on_network(
        &self,
        name: &str,
        mut body: ContainerCreateBody,
        app: &str,
        network: &str,
    ) -> Result<bollard::models::ContainerCreateResponse, DockerError> {
        let options = || {
            Some(CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            })
        };
        match self.docker.create_container(options(), body.clone()).await {
            Err(e) if status_of(&e) == Some(404) && e.to_string().contains(network) => {
                self.forget_network(network).await;
                let again = match self.ensure_network(app).await {
                    Ok(again) => again,
                    Err(_) => return Err(e),
                };
                if let Some(host) = body.host_config.as_mut() {
                    host.network_mode = Some(again);
                }
                self.docker.create_container(options(), body).await
            }
            created => created,
        }
    }

    /// Forgets that `network` exists (it was removed from outside): the next use creates it.
    async fn forget_network(&self, network: &str) {
        self.networks_ready.lock().await.remove(network);
    }

    /// `docker stop -t <grace>` then `docker rm -f`; returns once the container is gone.
    /// A container that is already gone is fine.
    async fn stop_and_remove(
        &self,
        name: &str,
        grace: Duration,
    ) -> Result<Option<View>, RuntimeError> {
        let docker = self
            .docker
            .clone()
            .with_timeout(grace + Duration::from_secs(REQUEST_TIMEOUT));
        let t = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        match docker
            .stop_container(
                name,
                Some(StopContainerOptions {
                    t: Some(t),
                    signal: None,
                }),
            )
            .await
        {
            // 304: not running.
            Ok(()) => {}
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => {}
            Err(e) => {
                tracing::warn!(container = %name, "stop failed, removing by force: {}", one_line(&e.to_string()))
            }
        }
        let view = docker
            .inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .map(|c| View::of(&c));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let removed = docker
                .remove_container(
                    name,
                    Some(RemoveContainerOptions {
                        force: true,
                        // Anonymous volumes (a Dockerfile's VOLUME) go with the container;
                        // named ones stay.
                        v: true,
                        ..Default::default()
                    }),
                )
                .await;
            match removed {
                Ok(()) => return Ok(view),
                Err(e) if status_of(&e) == Some(404) => return Ok(view),
                // 409: a removal is already in progress; wait for it.
                Err(e) if status_of(&e) == Some(409) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(docker_err(&format!("cannot remove container {name}"), e)),
            }
        }
    }

    /// Inspects one managed container and folds the result into its state.
    async fn refresh(&self, m: &Managed) {
        if m.stopping.load(Ordering::SeqCst) {
            return;
        }
        let inspected = self
            .docker
            .inspect_container(
                &m.container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await;
        let view = match inspected {
            Ok(c) => Some(View::of(&c)),
            Err(e) if status_of(&e) == Some(404) => None,
            Err(e) => {
                tracing::debug!(instance = %m.id, "inspect failed: {}", one_line(&e.to_string()));
                return;
            }
        };
        if m.stopping.load(Ordering::SeqCst) {
            return;
        }
        let events = lock(&m.track).apply(&m.id, m.restart, view.as_ref());
        for event in events {
            self.emit(event);
        }
    }
}

/// The tracker: events of this owner's containers, plus a poll of every managed one.
async fn track(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{OWNER_LABEL}={}", inner.owner)],
            ),
        ]);
        let mut events = inner.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        loop {
            tokio::select! {
                event = events.next() => {
                    let Some(Ok(event)) = event else { break };
                    let mut attrs = event.actor.and_then(|a| a.attributes).unwrap_or_default();
                    let Some(m) = attrs.remove(INSTANCE_LABEL).and_then(|id| inner.managed(&id))
                    else {
                        continue;
                    };
                    // A restarted container's inspect shows exit code 0: keep the one its
                    // `die` event tells.
                    if event.action.as_deref() == Some("die") {
                        let code = attrs.get("exitCode").and_then(|c| c.parse().ok());
                        lock(&m.track).die_code = code;
                    }
                    inner.refresh(&m).await;
                }
                _ = tick.tick() => {
                    for m in inner.instances() {
                        inner.refresh(&m).await;
                    }
                }
            }
        }
        // The stream broke (daemon restarting?): the poll goes on meanwhile.
        tracing::debug!("docker event stream ended; reconnecting");
        let pause = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = tick.tick() => {
                    for m in inner.instances() {
                        inner.refresh(&m).await;
                    }
                }
            }
        }
    }
}

/// Appends the container's output to its log file, following it across restarts, until the
/// instance is stopped or the container is gone.
async fn follow_logs(inner: Arc<Inner>, m: Arc<Managed>, mut since: i64) {
    // Timestamps (stripped before writing) let a re-follow skip what was written already.
    let mut last: Option<(String, u32)> = None;
    let mut file = match open_append(&m.log_file).await {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(instance = %m.id, "container logs not followed: {e}");
            return;
        }
    };
    let mut checked = Instant::now();
    loop {
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since: i32::try_from(since).unwrap_or(0),
            timestamps: true,
            ..Default::default()
        };
        let mut stream = inner.docker.logs(&m.container, Some(options));
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(out) => out.into_bytes(),
                Err(e) if status_of(&e) == Some(404) => return,
                Err(e) => {
                    tracing::debug!(instance = %m.id, "log stream broke: {}", one_line(&e.to_string()));
                    break;
                }
            };
            let (key, text) = split_timestamp(&chunk);
            // Docker's time of the line becomes its stamp in the log (`logs.rs`).
            let stamped = chunk
                .split(|&b| b == b' ')
                .next()
                .and_then(|t| std::str::from_utf8(t).ok())
                .and_then(units::parse_rfc3339);
            if let Some(key) = key {
                if last.as_ref().is_some_and(|l| &key <= l) {
                    continue;
                }
                last = Some(key);
                since = unix_now().saturating_sub(1);
            }
            let mut line = Vec::with_capacity(text.len() + crate::logs::STAMP_LEN + 1);
            line.extend_from_slice(
                units::rfc3339(stamped.unwrap_or_else(units::now_ms)).as_bytes(),
            );
            line.push(b' ');
            line.extend_from_slice(text);
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            if let Err(e) = file.write_all(&line).await {
                tracing::warn!(instance = %m.id, "cannot write log file: {e}");
            }
            if checked.elapsed() >= LOG_CHECK_EVERY {
                checked = Instant::now();
                let _ = file.flush().await;
                rotate(&inner, &m.log_file).await;
            }
        }
        let _ = file.flush().await;
        if m.stopping.load(Ordering::SeqCst) || !m.is_active() {
            return;
        }
        // The container exited (a restart follows) or the stream broke: follow again.
        tokio::time::sleep(Duration::from_millis(500)).await;
        if last.is_none() {
            since = 0;
        }
    }
}

async fn rotate(inner: &Arc<Inner>, path: &Path) {
    let shared = inner.clone();
    let file = path.to_path_buf();
    let rotated = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = lock(&shared.rotate_lock);
        logs::rotate_if_needed(&file, LOG_MAX_BYTES, LOG_KEEP)
    })
    .await;
    if let Ok(Err(e)) = rotated {
        tracing::warn!(file = %path.display(), "cannot rotate log file: {e}");
    }
}

/// Splits Docker's `2024-01-02T03:04:05.123456789Z ` prefix off a log entry; the key orders
/// entries (seconds part, nanoseconds).
fn split_timestamp(entry: &[u8]) -> (Option<(String, u32)>, &[u8]) {
    let Some(space) = entry.iter().position(|&b| b == b' ') else {
        return (None, entry);
    };
    let Ok(stamp) = std::str::from_utf8(&entry[..space]) else {
        return (None, entry);
    };
    let looks_like = stamp.len() >= 20
        && stamp.as_bytes().get(4) == Some(&b'-')
        && stamp.as_bytes().get(10) == Some(&b'T');
    if !looks_like {
        return (None, entry);
    }
    let secs = stamp.get(..19).unwrap_or_default().to_string();
    let frac = stamp
        .get(19..)
        .unwrap_or_default()
        .trim_start_matches('.')
        .trim_end_matches('Z');
    let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
    let nanos = format!("{digits:0<9}")
        .get(..9)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    (Some((secs, nanos)), &entry[space + 1..])
}

#[async_trait::async_trait]
impl Runtime for DockerRuntime {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<InstanceInfo, RuntimeError> {
        check_id(&spec.id)?;
        let image = spec
            .image
            .clone()
            .ok_or_else(|| RuntimeError::Docker(format!("instance {} has no image", spec.id)))?;
        if self.inner.managed(&spec.id).is_some_and(|m| m.is_active()) {
            return Err(RuntimeError::AlreadyRunning(spec.id));
        }
        let docker = &self.inner.docker;
        let network = self.inner.ensure_network(app_of(&spec.id)).await?;
        let inspected = docker
            .inspect_image(&image)
            .await
            .map_err(|e| docker_err(&format!("no image {image}"), e))?;
        let exposed: Vec<String> = inspected
            .config
            .and_then(|c| c.exposed_ports)
            .map(|ports| ports.into_keys().collect())
            .unwrap_or_default();
        let host_port = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PORT")
            .and_then(|(_, v)| v.parse::<u16>().ok());
        // The spec's container port, else the image's single EXPOSEd port: the app inside
        // listens there.
        let exposed_port = spec.container_port.or(match exposed.as_slice() {
            [one] => one.strip_suffix("/tcp").and_then(|p| p.parse::<u16>().ok()),
            _ => None,
        });
        let container_port = exposed_port.or(host_port);
        // The app inside learns the port it listens on from PORT.
        let port_env = spec
            .container_port
            .or(exposed_port.filter(|_| host_port.is_some()));
        let mut env: Vec<String> = spec
            .env
            .iter()
            .filter(|(k, _)| !(k == "PORT" && port_env.is_some()))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Some(port) = port_env {
            env.push(format!("PORT={port}"));
        }
        let mut exposed_ports = HashMap::new();
        let mut port_bindings = HashMap::new();
        if let (Some(host), Some(inside)) = (host_port, container_port) {
            let key = format!("{inside}/tcp");
            exposed_ports.insert(key.clone(), HashMap::new());
            port_bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".to_string()),
                    host_port: Some(host.to_string()),
                }]),
            );
        }
        let name = self.inner.container_name(&spec.id);
        // A container of that name is a leftover (a crash between create and record).
        self.inner.stop_and_remove(&name, Duration::ZERO).await?;
        let mut mounts = Vec::new();
        for (volume, target) in &spec.container.volumes {
            mounts.push(bollard::models::Mount {
                target: Some(target.clone()),
                source: Some(self.inner.ensure_volume(app_of(&spec.id), volume).await?),
                typ: Some(bollard::models::MountTypeEnum::VOLUME),
                ..Default::default()
            });
        }
        let limits = &spec.limits;
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            env: Some(env),
            cmd: if spec.command.trim().is_empty() {
                spec.container.command.clone()
            } else {
                Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    spec.command.clone(),
                ])
            },
            entrypoint: spec.container.entrypoint.clone(),
            working_dir: spec.container.working_dir.clone(),
            user: spec.container.user.clone(),
            labels: Some(HashMap::from([
                (OWNER_LABEL.to_string(), self.inner.owner.clone()),
                (INSTANCE_LABEL.to_string(), spec.id.clone()),
            ])),
            exposed_ports: Some(exposed_ports),
            host_config: Some(hardening::harden(HostConfig {
                port_bindings: Some(port_bindings),
                mounts: Some(mounts),
                memory: limits.memory.and_then(|m| i64::try_from(m).ok()),
                nano_cpus: limits.cpu.map(|c| (c * 1e9) as i64),
                pids_limit: hardening::pids(limits.pids),
                restart_policy: Some(RestartPolicy {
                    name: Some(if spec.restart {
                        RestartPolicyNameEnum::UNLESS_STOPPED
                    } else {
                        RestartPolicyNameEnum::NO
                    }),
                    maximum_retry_count: None,
                }),
                log_config: Some(bounded_logs()),
                network_mode: Some(network.clone()),
                // An init (docker-init, i.e. tini) as pid 1 passes SIGTERM on and reaps
                // zombies: an app as pid 1 ignores SIGTERM and every stop would take the
                // whole grace.
                init: Some(true),
                ..Default::default()
            })),
            ..Default::default()
        };
        let created = self
            .inner
            .create_on_network(&name, body, app_of(&spec.id), &network)
            .await
            .map_err(|e| docker_err(&format!("cannot create container for {}", spec.id), e))?;
        if let Err(e) = docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = self
                .inner
                .stop_and_remove(&created.id, Duration::ZERO)
                .await;
            return Err(docker_err(
                &format!("cannot start container for {}", spec.id),
                e,
            ));
        }
        let view = docker
            .inspect_container(
                &created.id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map(|c| View::of(&c))
            .map_err(|e| docker_err(&format!("cannot inspect container for {}", spec.id), e))?;
        let pid = view.pid;
        let pid_start = pid.and_then(proc_start_time);
        let mut track = Track::new(pid, view.restart_count);
        // An image with a HEALTHCHECK is `starting` from the first look, not unknown until
        // the tracker's next one.
        track.health = view.health;
        let managed = Arc::new(Managed {
            id: spec.id.clone(),
            container: created.id.clone(),
            restart: spec.restart,
            log_file: spec.log_file.clone(),
            track: Mutex::new(track),
            stopping: AtomicBool::new(false),
            follower: Mutex::new(None),
        });
        let state = managed.state();
        if let Err(e) = self.register(managed, 0) {
            let _ = self
                .inner
                .stop_and_remove(&created.id, Duration::ZERO)
                .await;
            return Err(e);
        }
        self.inner.emit(Event::Started {
            id: spec.id.clone(),
            pid,
            pid_start,
        });
        Ok(InstanceInfo {
            id: spec.id,
            pid,
            pid_start,
            state,
        })
    }

    async fn adopt(
        &self,
        spec: InstanceSpec,
        pid: u32,
        _pid_start: u64,
    ) -> Result<Option<InstanceInfo>, RuntimeError> {
        check_id(&spec.id)?;
        if self.inner.managed(&spec.id).is_some_and(|m| m.is_active()) {
            return Err(RuntimeError::AlreadyRunning(spec.id));
        }
        let name = self.inner.container_name(&spec.id);
        let inspected = match self
            .inner
            .docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(docker_err(&format!("cannot inspect {name}"), e)),
        };
        let labels = inspected
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        if labels.get(OWNER_LABEL) != Some(&self.inner.owner)
            || labels.get(INSTANCE_LABEL) != Some(&spec.id)
        {
            return Ok(None);
        }
        let view = View::of(&inspected);
        if !matches!(
            view.status,
            ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING
        ) {
            return Ok(None);
        }
        let Some(container) = inspected.id.clone() else {
            return Ok(None);
        };
        let mut track = Track::new(view.pid, view.restart_count);
        // Starts the state off right (a container that is restarting, unhealthy, …).
        let _ = track.apply(&spec.id, spec.restart, Some(&view));
        let state = track.state.clone();
        let managed = Arc::new(Managed {
            id: spec.id.clone(),
            container,
            restart: spec.restart,
            log_file: spec.log_file.clone(),
            track: Mutex::new(track),
            stopping: AtomicBool::new(false),
            follower: Mutex::new(None),
        });
        self.register(managed, unix_now())?;
        let pid_start = view.pid.and_then(proc_start_time);
        // Restarted by Docker while berth was away: the engine records the new pid.
        if view.pid.is_some() && view.pid != Some(pid) {
            self.inner.emit(Event::Started {
                id: spec.id.clone(),
                pid: view.pid,
                pid_start,
            });
        }
        Ok(Some(InstanceInfo {
            id: spec.id,
            pid: view.pid,
            pid_start,
            state,
        }))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(m) = self.inner.managed(id) else {
            return Ok(());
        };
        m.stopping.store(true, Ordering::SeqCst);
        let view = self.inner.stop_and_remove(&m.container, grace).await?;
        lock(&m.track).state = InstanceState::Stopped;
        self.inner.emit(Event::Exited {
            id: id.to_string(),
            status: view.map_or_else(|| "container removed".to_string(), |v| v.last_exit()),
            restarting: false,
        });
        // The follower ends with the container's output; give it a moment to write the rest.
        let follower = lock(&m.follower).take();
        if let Some(mut follower) = follower {
            if tokio::time::timeout(Duration::from_secs(2), &mut follower)
                .await
                .is_err()
            {
                follower.abort();
            }
        }
        let mut instances = lock(&self.inner.instances);
        if instances.get(id).is_some_and(|i| Arc::ptr_eq(i, &m)) {
            instances.remove(id);
        }
        Ok(())
    }

    async fn kill_orphan(
        &self,
        pid: u32,
        pid_start: u64,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        self.kill_orphan_container(pid, pid_start, grace).await?;
        Ok(())
    }

    fn state(&self, id: &str) -> Option<InstanceState> {
        self.inner.managed(id).map(|m| m.state())
    }

    async fn run_task(&self, _task: TaskSpec) -> Result<TaskOutcome, RuntimeError> {
        Err(RuntimeError::Docker(
            "one-off tasks run with the process runtime".to_string(),
        ))
    }

    async fn sweep(&self, grace: Duration) -> Result<usize, RuntimeError> {
        let managed: HashSet<String> = self
            .inner
            .instances()
            .iter()
            .map(|m| m.container.clone())
            .collect();
        let mut stopped = 0;
        for c in self.inner.list_owned(true).await? {
            let Some(cid) = c.id else { continue };
            if managed.contains(&cid) {
                continue;
            }
            let instance = c
                .labels
                .as_ref()
                .and_then(|l| l.get(INSTANCE_LABEL))
                .cloned()
                .unwrap_or_default();
            tracing::warn!(container = %cid, %instance, "removing a container left from an earlier run");
            self.inner.stop_and_remove(&cid, grace).await?;
            stopped += 1;
        }
        Ok(stopped)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }
}

/// The app of an instance id (`<app>.v<N>.<type>.<i>`): the part before the first `.`.
fn app_of(id: &str) -> &str {
    id.split('.').next().unwrap_or(id)
}

/// The most bytes of a Dockerfile berth reads.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// The Dockerfile `name` of `context`, read as berth's user: every part of the path a real
/// directory and the file a regular one (a build step may have left symlinks anywhere, to
/// `/dev/zero` or to a file only root may read), at most [`MAX_DOCKERFILE`] bytes.
fn read_dockerfile(context: &Path, name: &str) -> Result<String, String> {
    use std::io::Read;
    use std::path::Component;
    let refused = |why: &str| Err(format!("cannot read {name}: {why}"));
    let parts: Vec<Component<'_>> = Path::new(name)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect();
    let mut path = context.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let Component::Normal(p) = part else {
            return refused("it is not a path inside the build context");
        };
        path.push(p);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) => return Err(format!("cannot read {name}: {e}")),
        };
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() || (last && !meta.is_file()) || (!last && !meta.is_dir()) {
            return refused("it (or a directory on its way) is not a regular file of the source: a symlink, a device or a FIFO is not followed");
        }
    }
    if parts.is_empty() {
        return refused("no file named");
    }
    let mut text = String::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_DOCKERFILE + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if text.len() as u64 > MAX_DOCKERFILE {
        return refused("it is larger than 1 MiB");
    }
    Ok(text)
}

/// `$DOCKER_HOST` when it names a unix socket, else Docker's default socket.
fn default_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; anything else becomes `-`.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Does dockerd's answer say that its address pools are used up?
fn out_of_pools(msg: &str) -> bool {
    msg.contains("non-overlapping IPv4 address pool")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn docker_err(context: &str, e: DockerError) -> RuntimeError {
    RuntimeError::Docker(format!("{context}: {}", one_line(&e.to_string())))
}

fn build_error(step: Option<&str>, msg: &str) -> RuntimeError {
    match step {
        Some(step) => RuntimeError::Docker(format!("build failed at {step}: {msg}")),
        None => RuntimeError::Docker(format!("build failed: {msg}")),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0)
}

async fn open_append(path: &Path) -> Result<tokio::fs::File, RuntimeError> {
    tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|source| RuntimeError::LogFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes the build context as a tar into `tx`, 64 KiB at a time (never the whole context in
/// memory). Symlinks are sent as links, never followed; owners and times are normalised so an
/// unchanged file hits the layer cache from release to release.
fn pack_context(dir: &Path, tx: mpsc::Sender<Bytes>) -> std::io::Result<()> {
    let writer = ChunkWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", dir)?;
    let mut writer = tar.into_inner()?;
    writer.flush()
}

const CHUNK: usize = 64 << 10;

struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "build ended"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Docker keeps its own bounded copy of a container's output (json-file, 2 × 10 MB), which
/// the log follower reads.
pub(crate) fn bounded_logs() -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some("json-file".to_string()),
        config: Some(HashMap::from([
            ("max-size".to_string(), "10m".to_string()),
            ("max-file".to_string(), "2".to_string()),
        ])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_up_address_pools_are_recognised() {
        // dockerd 20.10's words.
        assert!(out_of_pools("Error response from daemon: could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network"));
        assert!(!out_of_pools("network with name x already exists"));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("hello.v3.web.1"), "hello.v3.web.1");
        assert_eq!(sanitize("a b/c:d"), "a-b-c-d");
    }

    /// A build step may replace the Dockerfile (or a directory on its way) with a symlink to
    /// `/dev/zero` or to a file only root reads: berth does not follow it.
    #[test]
    fn a_dockerfile_is_read_only_as_a_regular_file_of_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path();
        std::fs::create_dir_all(ctx.join("sub")).unwrap();
        std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(ctx.join("sub/Dockerfile"), "FROM scratch\n").unwrap();
        assert_eq!(
            read_dockerfile(ctx, "Dockerfile").unwrap(),
            "FROM scratch\n"
        );
        assert!(read_dockerfile(ctx, "./sub/Dockerfile").is_ok());
        std::os::unix::fs::symlink("/dev/zero", ctx.join("zero")).unwrap();
        std::os::unix::fs::symlink("/etc", ctx.join("etc")).unwrap();
        std::os::unix::fs::symlink("sub/Dockerfile", ctx.join("inner")).unwrap();
        std::fs::write(ctx.join("big"), vec![b'#'; (MAX_DOCKERFILE + 1) as usize]).unwrap();
        for (name, why) in [
            ("zero", "symlink"),
            ("etc/shadow", "symlink"),
            ("inner", "symlink"),
            ("sub", "regular file"),
            ("../Dockerfile", "inside the build context"),
            ("/etc/passwd", "inside the build context"),
            ("big", "larger than 1 MiB"),
        ] {
            let err = read_dockerfile(ctx, name).unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn timestamps_are_split_and_ordered() {
        let (key, text) = split_timestamp(b"2024-01-02T03:04:05.12Z hello world\n");
        assert_eq!(text, b"hello world\n");
        let key = key.unwrap_or_default();
        assert_eq!(key, ("2024-01-02T03:04:05".to_string(), 120_000_000));
        let (later, _) = split_timestamp(b"2024-01-02T03:04:05.3Z x\n");
        assert!(later.unwrap_or_default() > key);
        let (none, text) = split_timestamp(b"no stamp here\n");
        assert!(none.is_none());
        assert_eq!(text, b"no stamp here\n");
    }

    fn view(status: ContainerStateStatusEnum, pid: Option<u32>, restarts: i64) -> View {
        View {
            status,
            pid,
            exit_code: 3,
            oom_killed: false,
            restart_count: restarts,
            unhealthy: false,
            health: None,
        }
    }

    #[test]
    fn a_restart_loop_becomes_crashing() {
        use ContainerStateStatusEnum::*;
        let mut t = Track::new(Some(10), 0);
        let mut crashing = 0;
        for n in 1..=6 {
            let events = t.apply("x", true, Some(&view(RESTARTING, None, n)));
            assert!(events.iter().any(|e| matches!(
                e,
                Event::Exited {
                    restarting: true,
                    ..
                }
            )));
            crashing += events
                .iter()
                .filter(|e| matches!(e, Event::Crashing { .. }))
                .count();
            let events = t.apply("x", true, Some(&view(RUNNING, Some(100 + n as u32), n)));
            assert!(events.iter().any(|e| matches!(e, Event::Started { .. })));
        }
        t.apply("x", true, Some(&view(RESTARTING, None, 7)));
        assert!(
            matches!(t.state, InstanceState::Crashing { restarts: 7, .. }),
            "{:?}",
            t.state
        );
        assert_eq!(crashing, 1);
        let events = t.apply("x", true, None);
        assert_eq!(t.state, InstanceState::Stopped);
        assert!(matches!(
            events.as_slice(),
            [Event::Exited {
                restarting: false,
                ..
            }]
        ));
    }

    #[test]
    fn unhealthy_is_crashing() {
        use ContainerStateStatusEnum::*;
        let mut t = Track::new(Some(10), 0);
        let mut v = view(RUNNING, Some(10), 0);
        v.unhealthy = true;
        let events = t.apply("x", true, Some(&v));
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&t.state, InstanceState::Crashing { last_exit, .. } if last_exit == UNHEALTHY)
        );
    }
}
