//! How berth runs app processes: the runtime-neutral [`Runtime`] trait and
//! [`ProcessRuntime`], which runs each instance as a supervised process group
//! on this host.
//!
//! The deploy engine only talks to the trait, so a Docker or Swarm runtime can
//! be slotted in later. That is why the types below speak of instance *ids*
//! chosen by the engine and mention pids only as optional information: a
//! container runtime has no meaningful host pid to offer.
//!
//! Instances must survive a crash of berth (a control plane that dies must not
//! take the apps with it). The process runtime therefore never kills its
//! children on drop; after a restart the engine hands each recorded
//! `(pid, pid_start)` back to [`Runtime::adopt`], or to
//! [`Runtime::kill_orphan`] when the instance is no longer wanted, and
//! [`Runtime::sweep`] stops what was never recorded. A deliberate stop of berth
//! (SIGTERM) stops the apps through the engine, as stopping a supervisor does.
#![forbid(unsafe_code)]

mod docker;
mod limits;
pub mod logs;
mod multi;
mod process;
mod procfs;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

pub use docker::{
    is_image_id, registry_host, DockerRuntime, NodeInfo, ServiceHealthcheck, ServiceInfo,
    ServiceRestart, ServiceRun, SwarmOptions, SwarmRuntime, PROBE_LABEL,
};
pub use multi::MultiRuntime;
pub use process::{ProcessOptions, ProcessRuntime};
pub use procfs::proc_start_time;

/// Resource limits for one instance or task. `None` means unlimited.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// Maximum number of processes/threads in the instance.
    pub pids: Option<u64>,
    /// CPU time as a number of cores (0.5 = half a core).
    pub cpu: Option<f64>,
}

/// A long-running app process (one line of the Procfile, one replica).
#[derive(Clone, Debug)]
pub struct InstanceSpec {
    /// Unique runtime id chosen by the engine, e.g. `hello-v3-web-1`. Used as
    /// a path component (cgroup name), so it must not contain `/`.
    pub id: String,
    /// Shell command line (a Procfile line), run with `/bin/sh -c`.
    pub command: String,
    /// Working directory (the release dir).
    pub dir: PathBuf,
    /// The app's whole environment (the engine includes `PORT`). The child
    /// gets only these, plus `PATH`/`HOME`/`LANG` from berth's own
    /// environment when not given, so berth's secrets never leak into apps.
    pub env: Vec<(String, String)>,
    /// stdout and stderr are appended here; the runtime rotates it.
    pub log_file: PathBuf,
    pub limits: Limits,
    /// Supervise and restart on exit (true for app processes).
    pub restart: bool,
    /// `Some(image)`: run as a container of that image ([`DockerRuntime`]). `command` `""`
    /// then means the image's own CMD/ENTRYPOINT, anything else runs with `/bin/sh -c`;
    /// `dir` is ignored. `None`: a process on this host.
    pub image: Option<String>,
    /// Containers only: the port the app listens on inside the container. `Some(p)`: the host
    /// port (`PORT` in `env`) is published to `p` and the container's `PORT` is `p`. `None`: the
    /// image's single `EXPOSE`d port, else `PORT` itself.
    pub container_port: Option<u16>,
    /// `Some`: the process type runs as one Docker Swarm service with these replicas and
    /// placement ([`SwarmRuntime`]); the spec then stands for the whole service (its id ends
    /// in `.1`), and the engine's `PORT` is not used: [`Runtime::endpoints`] says where its
    /// tasks are.
    pub swarm: Option<SwarmOptions>,
    /// Processes only: run inside this jail (`berth jail`, see the `berth-jail` crate), as the
    /// app's own user. `None`: as berth's own user (the server turned the jail off).
    pub jail: Option<jail::Jail>,
    /// Containers only: how the image runs where the app overrides it (with `command` `""`).
    pub container: ContainerConfig,
}

/// How a container runs its image where the app overrides it (a compose file's `entrypoint`,
/// `command`, `working_dir` and `user`; `None`: as the image says), and the named volumes it
/// mounts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerConfig {
    /// Replaces the image's `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `CMD`.
    pub command: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    /// `(volume, path in the container)`: the app's named volumes, shared by all its
    /// containers (the same volumes as its services', `DockerRuntime::app_volumes`).
    pub volumes: Vec<(String, String)>,
}

/// A one-off command: a build step, the `release:` command, postdeploy.
#[derive(Clone, Debug)]
pub struct TaskSpec {
    pub id: String,
    pub command: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Output is appended here (never rotated: tasks are short).
    pub log_file: PathBuf,
    /// The whole process group is killed when the task runs longer.
    pub timeout: Duration,
    pub limits: Limits,
    /// Run as this (uid, gid), with no supplementary groups (berth must be root); `None`: as
    /// berth's own user.
    pub user: Option<(u32, u32)>,
    /// Run inside this jail (as its user; `user` is then ignored), like an instance.
    pub jail: Option<jail::Jail>,
}

/// How a [`TaskSpec`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    Success,
    /// Non-zero exit (`code`) or death by a signal (`signal`).
    Failed {
        code: Option<i32>,
        signal: Option<i32>,
    },
    TimedOut,
}

/// What an instance is doing right now.
#[derive(Clone, Debug, PartialEq)]
pub enum InstanceState {
    Running {
        pid: Option<u32>,
        since: SystemTime,
    },
    /// Exited and waiting for its backoff delay before the next start.
    Restarting {
        restarts: u32,
        last_exit: String,
    },
    /// Like `Restarting`, but it keeps exiting quickly: retried only at the
    /// maximum backoff until a run lasts long enough (Heroku's "crashed").
    Crashing {
        restarts: u32,
        last_exit: String,
    },
    Stopped,
}

/// An instance as the runtime sees it after `start`/`adopt`.
#[derive(Clone, Debug, PartialEq)]
pub struct InstanceInfo {
    pub id: String,
    pub pid: Option<u32>,
    /// Start time of `pid` (see [`proc_start_time`]); with `pid` it
    /// identifies the process across a berth restart, since pids get reused.
    pub pid_start: Option<u64>,
    pub state: InstanceState,
}

/// Things the engine wants to record (pids for adoption, crash reports).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A process was spawned for the instance (first start or a restart).
    Started {
        id: String,
        pid: Option<u32>,
        pid_start: Option<u64>,
    },
    /// The instance's process ended; `restarting` says whether the runtime
    /// will start it again.
    Exited {
        id: String,
        status: String,
        restarting: bool,
    },
    /// The instance keeps exiting soon after starting.
    Crashing { id: String, restarts: u32 },
    /// Where the instance is reached changed ([`Runtime::endpoints`]; Swarm tasks came or
    /// went). `id` is the instance, or for a service just removed, the service's name.
    Endpoints { id: String },
}

/// Everything a runtime call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Ids become file names (cgroups), so they are restricted.
    #[error("invalid id {0:?}: must be non-empty, without '/', NUL or leading '.'")]
    InvalidId(String),
    #[error("instance {0} is already running")]
    AlreadyRunning(String),
    #[error("cannot open log file {path}: {source}")]
    LogFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {id}: {source}")]
    Spawn { id: String, source: std::io::Error },
    #[error("cannot set up cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Anything the Docker daemon refused or could not be asked (one line; a connection
    /// failure names the socket tried).
    #[error("docker: {0}")]
    Docker(String),
    /// A spec asks for a jail this runtime cannot build.
    #[error("cannot jail {id}: {why}")]
    Jail { id: String, why: String },
}

/// The interface between the deploy engine and whatever runs app code.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Short name for logs and `berth status` (`"process"`, `"docker"`).
    fn name(&self) -> &'static str;

    /// Start an instance; with `spec.restart` it is supervised and restarted
    /// whenever it exits until [`Runtime::stop`] is called.
    async fn start(&self, spec: InstanceSpec) -> Result<InstanceInfo, RuntimeError>;

    /// After a berth restart: take over an instance that is still running
    /// (pid + pid_start identify it; a reused pid has a different start
    /// time). `Ok(None)` if it is gone — the caller then starts a new one.
    async fn adopt(
        &self,
        spec: InstanceSpec,
        pid: u32,
        pid_start: u64,
    ) -> Result<Option<InstanceInfo>, RuntimeError>;

    /// SIGTERM to the instance's whole process group, SIGKILL after `grace`;
    /// waits until it is gone. Unknown id → `Ok(())`. Also stops supervision
    /// (no restart).
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Kill a process group left from an earlier berth run that is NOT being
    /// adopted (pid + pid_start must match, else do nothing).
    async fn kill_orphan(
        &self,
        pid: u32,
        pid_start: u64,
        grace: Duration,
    ) -> Result<(), RuntimeError>;

    /// Current state, `None` for an unknown (or stopped and forgotten) id.
    fn state(&self, id: &str) -> Option<InstanceState>;

    /// One-off command with a timeout; output appended to the task's log
    /// file; on timeout the whole process group is killed.
    async fn run_task(&self, task: TaskSpec) -> Result<TaskOutcome, RuntimeError>;

    /// After a berth restart, once every instance to keep has been adopted or
    /// started: stop everything this runtime's owner started earlier that it
    /// does not manage now (an instance whose pid was never recorded because
    /// berth died right after spawning it, a build cut off by the crash).
    /// Returns how many were stopped.
    async fn sweep(&self, grace: Duration) -> Result<usize, RuntimeError>;

    /// Lifecycle events; the engine persists pids and crash reports from
    /// these. A slow receiver may miss events (`RecvError::Lagged`).
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;

    /// Where the instance serves, for a runtime that decides it (Swarm: its running tasks'
    /// published ports, on their nodes); `None`: on `127.0.0.1:$PORT`, the port the engine
    /// gave it.
    fn endpoints(&self, _id: &str) -> Option<Vec<std::net::SocketAddr>> {
        None
    }

    /// Whether berth supervises the instance, so that stopping berth (SIGTERM) stops it. A
    /// Swarm service is supervised by the swarm and keeps running.
    fn supervised(&self, _id: &str) -> bool {
        true
    }
}

/// FNV-1a of `s`: a hash that stays the same across builds and Rust versions, for names a
/// restarted berth must find again (its cgroups, its containers).
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Ids end up as directory names, so refuse anything that could escape or
/// collide with the cgroup files around it.
fn check_id(id: &str) -> Result<(), RuntimeError> {
    if id.is_empty() || id.starts_with('.') || id.contains('/') || id.contains('\0') {
        return Err(RuntimeError::InvalidId(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_would_escape_the_cgroup_dir_are_refused() {
        assert!(check_id("hello-v3-web-1").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a\0b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}
