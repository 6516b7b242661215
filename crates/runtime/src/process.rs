//! [`ProcessRuntime`]: instances are plain process groups on this host,
//! each watched by one tokio task (its *supervisor*).
//!
//! Every instance gets its own process group (`process_group(0)`), so one
//! signal reaches the app and everything it forked, and it is never killed
//! when berth exits (`kill_on_drop(false)`): after a berth restart the
//! engine adopts it by `(pid, pid_start)`.
//!
//! The supervisor owns the child, so it is the one that waits on it, stops it
//! (when [`Runtime::stop`] asks through a watch channel) and restarts it.
//! Keeping every state change of an instance in one task avoids races
//! between "the app exited" and "the engine stopped it".

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustix::io::Errno;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::{Child, Command};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::limits::{Confinement, Limiter, Switch};
use crate::procfs::{is_alive, proc_start_time, start_time_to_system};
use crate::{
    check_id, logs, Event, InstanceInfo, InstanceSpec, InstanceState, Runtime, RuntimeError,
    TaskOutcome, TaskSpec,
};

/// Processes (and threads) a jailed instance or task may have when its app sets no `pids`.
pub const JAILED_DEFAULT_PIDS: u64 = 4096;
/// How long a timed-out task gets between SIGTERM and SIGKILL.
const TASK_KILL_GRACE: Duration = Duration::from_secs(2);
/// Poll interval for noticing that an adopted process exited.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// Environment variables inherited from berth unless the app sets them: a
/// shell without `PATH` cannot find anything, and `HOME`/`LANG` are expected
/// by most language runtimes.
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// The PATH of the root part of a task that runs as another user.
const SAFE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// `export K='v'` lines for `sh` (values single-quoted, `'` as `'\''`); names that are not shell
/// identifiers are left out.
fn shell_exports(vars: &[(String, String)]) -> String {
    let mut out = String::new();
    for (k, v) in vars {
        let ident = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ident {
            out.push_str(&format!("export {k}='{}'\n", v.replace('\'', "'\\''")));
        }
    }
    out
}

/// Env vars that tag the processes of one berth (see [`ProcessOptions::owner`]).
const OWNER_VAR: &str = "BERTH_OWNER";
const INSTANCE_VAR: &str = "BERTH_INSTANCE";

/// Tuning for [`ProcessRuntime`]. `Default` gives the production values.
#[derive(Clone, Debug)]
pub struct ProcessOptions {
    /// cgroup mount point; `None` = `/sys/fs/cgroup`.
    pub cgroup_root: Option<std::path::PathBuf>,
    /// First restart delay; doubles with every quick exit.
    pub backoff_base: Duration,
    /// Cap for the restart delay, and the delay while crashing.
    pub backoff_max: Duration,
    /// Restarts without a stable run before the instance counts as crashing.
    pub crash_after: u32,
    /// A run at least this long resets the restart counter.
    pub stable_after: Duration,
    /// Rotate an instance's log file once it is larger than this.
    pub log_max_bytes: u64,
    /// Rotated copies to keep (`<file>.1` … `<file>.<log_keep>`).
    pub log_keep: usize,
    /// How often the supervisor checks the log file size.
    pub log_check_every: Duration,
    /// Tags every process this runtime starts (env `BERTH_OWNER`, with
    /// `BERTH_INSTANCE=<id>`) so [`Runtime::sweep`] can find leftovers of an
    /// earlier run, and only its own (berth's data dir is a good owner).
    /// Empty: no tags, and `sweep` does nothing.
    pub owner: String,
    /// The jail helper: a binary whose `jail` subcommand is `berth_jail::main` (berth itself).
    /// Specs with a jail fail to start without it.
    pub jail_helper: Option<std::path::PathBuf>,
    /// Bytes of memory all the processes of one jailed user (one app, or one build slot) may
    /// use together: their cgroups sit in one parent cgroup with this limit, so that many
    /// instances of one app cannot take the host's memory. `None`: no such limit.
    pub user_memory: Option<u64>,
    /// A binary whose `log-stamp` subcommand is [`crate::logs::stamp`] (berth itself): an
    /// instance's output goes through it, every line stamped with its time. `None`: the
    /// output is appended to the log as it is.
    pub log_stamper: Option<std::path::PathBuf>,
}

impl Default for ProcessOptions {
    fn default() -> Self {
        ProcessOptions {
            cgroup_root: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            crash_after: 5,
            stable_after: Duration::from_secs(10),
            log_max_bytes: 10 << 20,
            log_keep: 3,
            log_check_every: Duration::from_secs(2),
            owner: String::new(),
            user_memory: None,
            jail_helper: None,
            log_stamper: None,
        }
    }
}

/// Runs instances as supervised process groups on this host.
///
/// Dropping it stops supervision but leaves every instance running, exactly
/// like a berth crash would; that is what lets a new berth adopt them. Call
/// [`Runtime::stop`] to end an instance.
pub struct ProcessRuntime {
    shared: Arc<Shared>,
    instances: Mutex<HashMap<String, Arc<Instance>>>,
}

/// What supervisors need from the runtime. Kept apart from
/// [`ProcessRuntime`] so supervisors do not keep the runtime alive (its
/// `Drop` is what aborts them).
struct Shared {
    opts: ProcessOptions,
    limiter: Limiter,
    /// Prefix of this runtime's cgroup names, from its owner (`o<hash>.`), so two berths on one
    /// machine never share (or clean up) each other's cgroups.
    cgroup_prefix: String,
    events: broadcast::Sender<Event>,
    /// Several instances may share one log file; rotating it twice at once
    /// would shift the copies twice.
    rotate_lock: Mutex<()>,
}

struct Instance {
    spec: InstanceSpec,
    confinement: Confinement,
    state: Mutex<InstanceState>,
    /// `Some(grace)` asks the supervisor to stop the instance.
    stop_tx: watch::Sender<Option<Duration>>,
    /// Becomes true when the supervisor has finished (instance gone).
    done_rx: watch::Receiver<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl ProcessRuntime {
    /// Detects the limit mechanism (logged once at info) and returns an idle
    /// runtime.
    pub fn new(opts: ProcessOptions) -> Arc<ProcessRuntime> {
        let limiter = Limiter::detect(opts.cgroup_root.as_deref());
        let cgroup_prefix = if opts.owner.is_empty() {
            String::new()
        } else {
            // Stable across builds, so a restarted berth finds its cgroups again.
            format!("o{:08x}.", crate::fnv1a(&opts.owner) >> 32)
        };
        // The users' groups of apps destroyed before this start.
        limiter.sweep_groups(&cgroup_prefix);
        Arc::new(ProcessRuntime {
            shared: Arc::new(Shared {
                opts,
                limiter,
                cgroup_prefix,
                events: broadcast::channel(1024).0,
                rotate_lock: Mutex::new(()),
            }),
            instances: Mutex::new(HashMap::new()),
        })
    }

    /// The cgroup name of `name` (an instance id, or `task.<id>`) for this runtime: under the
    /// cgroup of its jail's user, whose limit all that user's processes share
    /// ([`ProcessOptions::user_memory`]).
    fn cgroup(&self, name: &str, jail: Option<&jail::Jail>) -> Result<String, RuntimeError> {
        let p = &self.shared.cgroup_prefix;
        match jail {
            None => Ok(format!("{p}{name}")),
            Some(j) => {
                let group = format!("{p}u{}", j.uid);
                self.shared
                    .limiter
                    .prepare_group(&group, self.shared.opts.user_memory)?;
                Ok(format!("{group}/{p}{name}"))
            }
        }
    }

    fn instance(&self, id: &str) -> Option<Arc<Instance>> {
        lock(&self.instances).get(id).cloned()
    }

    fn ensure_free(&self, id: &str) -> Result<(), RuntimeError> {
        match self.instance(id) {
            Some(inst) if inst.is_active() => Err(RuntimeError::AlreadyRunning(id.to_string())),
            _ => Ok(()),
        }
    }

    /// Records a freshly spawned or adopted instance and starts its
    /// supervisor. Checks the id again under the lock: a concurrent start
    /// of the same id may have won since `ensure_free`.
    fn register(
        &self,
        spec: InstanceSpec,
        confinement: Confinement,
        proc: Proc,
        pid_start: Option<u64>,
        since: SystemTime,
    ) -> Result<InstanceInfo, RuntimeError> {
        let mut instances = lock(&self.instances);
        if instances.get(&spec.id).is_some_and(|i| i.is_active()) {
            signal_group(proc.pid(), Signal::KILL);
            return Err(RuntimeError::AlreadyRunning(spec.id));
        }
        let info = InstanceInfo {
            id: spec.id.clone(),
            pid: Some(proc.pid()),
            pid_start,
            state: InstanceState::Running {
                pid: Some(proc.pid()),
                since,
            },
        };
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        let inst = Arc::new(Instance {
            spec,
            confinement,
            state: Mutex::new(info.state.clone()),
            stop_tx,
            done_rx,
            supervisor: Mutex::new(None),
        });
        // A run that started long ago (adopted) counts as stable.
        let running_for = SystemTime::now().duration_since(since).unwrap_or_default();
        let run_since = Instant::now()
            .checked_sub(running_for)
            .unwrap_or_else(Instant::now);
        let supervisor = Supervisor {
            shared: self.shared.clone(),
            inst: inst.clone(),
            stop_rx,
            done_tx,
        };
        *lock(&inst.supervisor) = Some(tokio::spawn(supervisor.run(proc, run_since)));
        instances.insert(info.id.clone(), inst);
        Ok(info)
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        for inst in lock(&self.instances).values() {
            if let Some(task) = lock(&inst.supervisor).take() {
                task.abort();
            }
        }
    }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: InstanceSpec) -> Result<InstanceInfo, RuntimeError> {
        check_id(&spec.id)?;
        self.ensure_free(&spec.id)?;
        let confinement = self.shared.contain(
            &spec.id,
            &self.cgroup(&spec.id, spec.jail.as_ref())?,
            &spec.limits,
            spec.jail.is_some(),
        )?;
        let (proc, pid_start) = match spawn_instance(&spec, &confinement, &self.shared) {
            Ok(spawned) => spawned,
            Err(e) => {
                confinement.remove().await;
                return Err(e);
            }
        };
        let pid = proc.pid();
        let info = self.register(spec, confinement, proc, pid_start, SystemTime::now())?;
        self.shared.emit(Event::Started {
            id: info.id.clone(),
            pid: Some(pid),
            pid_start,
        });
        Ok(info)
    }

    async fn adopt(
        &self,
        spec: InstanceSpec,
        pid: u32,
        pid_start: u64,
    ) -> Result<Option<InstanceInfo>, RuntimeError> {
        check_id(&spec.id)?;
        self.ensure_free(&spec.id)?;
        let Some(adopted) = Adopted::open(pid, pid_start) else {
            return Ok(None);
        };
        // Re-applying the limits is idempotent and recreates the cgroup
        // handle needed for restarts and cleanup.
        let confinement = self
            .shared
            .limiter
            .prepare(&self.cgroup(&spec.id, spec.jail.as_ref())?, &spec.limits)?;
        let since = start_time_to_system(pid_start).unwrap_or_else(SystemTime::now);
        let info = self.register(
            spec,
            confinement,
            Proc::Adopted(adopted),
            Some(pid_start),
            since,
        )?;
        Ok(Some(info))
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let Some(inst) = self.instance(id) else {
            return Ok(());
        };
        inst.stop_tx.send_replace(Some(grace));
        // An error means the supervisor is gone (aborted): nothing to wait for.
        let _ = inst.done_rx.clone().wait_for(|done| *done).await;
        let mut instances = lock(&self.instances);
        if instances.get(id).is_some_and(|i| Arc::ptr_eq(i, &inst)) {
            instances.remove(id);
        }
        Ok(())
    }

    async fn sweep(&self, grace: Duration) -> Result<usize, RuntimeError> {
        let owner = &self.shared.opts.owner;
        if owner.is_empty() {
            return Ok(0);
        }
        // Each managed instance's process group (its leader's pid). A tagged process with a
        // managed id but in another group is a stale copy (its pid was never recorded, and a
        // replacement was started under the same id): it goes too.
        let managed: std::collections::HashMap<String, Option<u32>> = lock(&self.instances)
            .iter()
            .map(|(id, inst)| {
                let pid = match &*lock(&inst.state) {
                    InstanceState::Running { pid, .. } => *pid,
                    _ => None,
                };
                (id.clone(), pid)
            })
            .collect();
        // Process groups (their leader's pid) holding a tagged process we do not manage.
        let mut groups = std::collections::BTreeSet::new();
        for (pid, id) in crate::procfs::tagged(OWNER_VAR, owner, INSTANCE_VAR) {
            let pgid = crate::procfs::pgid(pid);
            if pgid.is_some() && managed.get(&id).is_some_and(|leader| *leader == pgid) {
                continue;
            }
            if let Some(pgid) = pgid {
                tracing::warn!(pid, instance = %id, "stopping a process left from an earlier run");
                groups.insert(pgid);
            }
        }
        let mut stopped = 0;
        for pgid in groups {
            match crate::procfs::proc_start_time(pgid) {
                Some(start) => self.kill_orphan(pgid, start, grace).await?,
                // The leader is gone but members remain: no one to wait for.
                None => {
                    if let Some(p) = rustix::process::Pid::from_raw(pgid as i32) {
                        let _ =
                            rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                    }
                }
            }
            stopped += 1;
        }
        Ok(stopped)
    }

    async fn kill_orphan(
        &self,
        pid: u32,
        pid_start: u64,
        grace: Duration,
    ) -> Result<(), RuntimeError> {
        let Some(adopted) = Adopted::open(pid, pid_start) else {
            return Ok(());
        };
        let confinement = self.shared.limiter.find(pid);
        terminate(&mut Proc::Adopted(adopted), grace, &confinement).await;
        confinement.remove().await;
        Ok(())
    }

    fn state(&self, id: &str) -> Option<InstanceState> {
        self.instance(id).map(|inst| lock(&inst.state).clone())
    }

    async fn run_task(&self, task: TaskSpec) -> Result<TaskOutcome, RuntimeError> {
        check_id(&task.id)?;
        // Tasks get their own cgroup name so that a task whose id equals an
        // instance's cannot rewrite (or, on cleanup, kill) that instance.
        let cgroup = self.cgroup(&format!("task.{}", task.id), task.jail.as_ref())?;
        let confinement =
            self.shared
                .contain(&task.id, &cgroup, &task.limits, task.jail.is_some())?;
        let how = match (&task.jail, task.user) {
            (Some(jail), _) => self.shared.jailed(&task.id, jail),
            (None, Some((uid, gid))) => Ok(RunAs::User(uid, gid)),
            (None, None) => self.shared.unjailed(&task.id),
        };
        let spawned = how.and_then(|how| {
            spawn(
                &task.id,
                &task.command,
                &task.dir,
                &task.env,
                Output::Capped(&task.log_file, TASK_OUTPUT_MAX),
                &confinement,
                &self.shared.opts.owner,
                how,
            )
        });
        let (mut proc, copier) = match spawned {
            Ok((proc, _, copier)) => (proc, copier),
            Err(e) => {
                confinement.remove().await;
                return Err(e);
            }
        };
        let mut guard = GroupGuard(Some(proc.pid()), Some(confinement.clone()));
        let outcome = match tokio::time::timeout(task.timeout, proc.wait()).await {
            Ok(status) => task_outcome(status),
            Err(_) => {
                tracing::warn!(task = %task.id, timeout = ?task.timeout, "task timed out; killing it");
                terminate(&mut proc, TASK_KILL_GRACE, &confinement).await;
                TaskOutcome::TimedOut
            }
        };
        // The process is reaped: its pid, and so its group id, may be another process's from
        // now on, so the guard must never signal it.
        guard.0 = None;
        // Background processes the task left behind die with it.
        kill_leftovers(proc.pid(), &confinement).await;
        confinement.remove().await;
        // Every writer is gone now: the copy ends, and the log is whole before the caller
        // writes to it again.
        if let Some(copier) = copier {
            let _ = tokio::task::spawn_blocking(move || copier.join()).await;
        }
        Ok(outcome)
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }
}

impl Shared {
    fn emit(&self, event: Event) {
        // An error only means nobody is subscribed right now.
        let _ = self.events.send(event);
    }

    /// Rotation copies up to `log_max_bytes`, so it runs off the async
    /// workers.
    async fn rotate_log(self: &Arc<Self>, path: &Path) {
        let shared = self.clone();
        let file = path.to_path_buf();
        let rotated = tokio::task::spawn_blocking(move || {
            let _one_at_a_time = lock(&shared.rotate_lock);
            let opts = &shared.opts;
            logs::rotate_if_needed(&file, opts.log_max_bytes, opts.log_keep)
        })
        .await;
        match rotated {
            Ok(Ok(true)) => tracing::debug!(file = %path.display(), "rotated log file"),
            Ok(Err(e)) => tracing::warn!(file = %path.display(), "cannot rotate log file: {e}"),
            _ => {}
        }
    }
}

impl Instance {
    fn is_active(&self) -> bool {
        *lock(&self.state) != InstanceState::Stopped
    }

    fn set_state(&self, state: InstanceState) {
        *lock(&self.state) = state;
    }
}

/// The task watching one instance. See the module docs.
struct Supervisor {
    shared: Arc<Shared>,
    inst: Arc<Instance>,
    stop_rx: watch::Receiver<Option<Duration>>,
    done_tx: watch::Sender<bool>,
}

/// Why [`Supervisor::watch`] returned.
enum RunEnd {
    Exited(Option<ExitStatus>),
    StopRequested(Duration),
}

impl Supervisor {
    async fn run(mut self, mut proc: Proc, mut run_since: Instant) {
        let (inst, shared) = (self.inst.clone(), self.shared.clone());
        let (spec, opts) = (&inst.spec, &shared.opts);
        // Restarts since the last stable run.
        let mut streak: u32 = 0;
        'supervise: loop {
            let status = match self.watch(&mut proc).await {
                RunEnd::Exited(status) => status,
                RunEnd::StopRequested(grace) => {
                    let status = terminate(&mut proc, grace, &inst.confinement).await;
                    shared.emit(Event::Exited {
                        id: spec.id.clone(),
                        status: describe(status),
                        restarting: false,
                    });
                    break;
                }
            };
            // Like a container: when the main process is gone, whatever it
            // left behind goes too (a leftover child could hold the port the
            // restarted app needs).
            kill_leftovers(proc.pid(), &inst.confinement).await;
            let mut last_exit = describe(status);
            tracing::info!(instance = %spec.id, "exited: {last_exit}");
            shared.emit(Event::Exited {
                id: spec.id.clone(),
                status: last_exit.clone(),
                restarting: spec.restart,
            });
            if !spec.restart {
                break;
            }

            let mut ran_for = run_since.elapsed();
            let (new_proc, pid_start) = loop {
                if ran_for >= opts.stable_after {
                    streak = 0;
                }
                let crashing = streak >= opts.crash_after;
                let delay = if crashing {
                    opts.backoff_max
                } else {
                    backoff(opts.backoff_base, streak, opts.backoff_max)
                };
                streak = streak.saturating_add(1);
                let state = if crashing {
                    InstanceState::Crashing {
                        restarts: streak,
                        last_exit: last_exit.clone(),
                    }
                } else {
                    InstanceState::Restarting {
                        restarts: streak,
                        last_exit: last_exit.clone(),
                    }
                };
                inst.set_state(state);
                if crashing && streak == opts.crash_after.saturating_add(1) {
                    tracing::warn!(instance = %spec.id, restarts = streak, "crashing: {last_exit}");
                    shared.emit(Event::Crashing {
                        id: spec.id.clone(),
                        restarts: streak,
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(&mut self.stop_rx) => break 'supervise,
                }
                match spawn_instance(spec, &inst.confinement, &shared) {
                    Ok(spawned) => break spawned,
                    Err(e) => {
                        tracing::warn!(instance = %spec.id, "restart failed: {e}");
                        last_exit = e.to_string();
                        ran_for = Duration::ZERO;
                    }
                }
            };
            proc = new_proc;
            run_since = Instant::now();
            let pid = Some(proc.pid());
            let since = SystemTime::now();
            inst.set_state(InstanceState::Running { pid, since });
            shared.emit(Event::Started {
                id: spec.id.clone(),
                pid,
                pid_start,
            });
        }
        inst.confinement.remove().await;
        inst.set_state(InstanceState::Stopped);
        let _ = self.done_tx.send(true);
    }

    /// Waits until the process exits or a stop is requested, rotating the
    /// log file meanwhile.
    async fn watch(&mut self, proc: &mut Proc) -> RunEnd {
        let mut rotation = tokio::time::interval(self.shared.opts.log_check_every);
        rotation.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                status = proc.wait() => return RunEnd::Exited(status),
                grace = stop_requested(&mut self.stop_rx) => return RunEnd::StopRequested(grace),
                // A stamper rotates its file itself, as it writes.
                _ = rotation.tick(), if self.shared.opts.log_stamper.is_none() => {
                    self.shared.rotate_log(&self.inst.spec.log_file).await;
                }
            }
        }
    }
}

/// Resolves once [`Runtime::stop`] has asked for a stop, with its grace.
async fn stop_requested(rx: &mut watch::Receiver<Option<Duration>>) -> Duration {
    let requested = rx
        .wait_for(Option::is_some)
        .await
        .map(|grace| grace.unwrap_or_default());
    match requested {
        Ok(grace) => grace,
        // The sender lives in the instance the supervisor holds, so this
        // cannot happen; never treat it as a stop request.
        Err(_) => std::future::pending().await,
    }
}

/// `base * 2^n`, capped at `max`.
fn backoff(base: Duration, n: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max)
}

/// A running instance process: our own child, or one adopted from an
/// earlier berth (not our child, so it cannot be `wait`ed for).
enum Proc {
    Child { child: Child, pid: u32 },
    Adopted(Adopted),
}

impl Proc {
    /// Process id, which is also the process group id.
    fn pid(&self) -> u32 {
        match self {
            Proc::Child { pid, .. } => *pid,
            Proc::Adopted(adopted) => adopted.pid,
        }
    }

    /// Waits for the process to exit. The status is unknown for adopted
    /// processes (their parent, init, collects it). Cancel safe.
    async fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            Proc::Child { child, .. } => match child.wait().await {
                Ok(status) => Some(status),
                Err(e) => {
                    tracing::warn!("waiting for child failed: {e}");
                    None
                }
            },
            Proc::Adopted(adopted) => {
                adopted.wait().await;
                None
            }
        }
    }
}

/// A process from an earlier berth run, identified by pid and start time.
///
/// Its exit is noticed by polling `/proc`. A pidfd would avoid the polling,
/// but tokio offers no safe way to register one (`AsyncFd::new` is
/// deprecated as unsound), and a read of `/proc/<pid>/stat` twice a second
/// per adopted instance costs nothing. Polling also copes with the zombie
/// case: `is_alive` treats a zombie as exited.
struct Adopted {
    pid: u32,
    start: u64,
}

impl Adopted {
    /// `None` unless `pid` is alive and still the process that started at
    /// `start`.
    fn open(pid: u32, start: u64) -> Option<Adopted> {
        is_alive(pid, start).then_some(Adopted { pid, start })
    }

    async fn wait(&self) {
        while is_alive(self.pid, self.start) {
            tokio::time::sleep(ADOPTED_POLL).await;
        }
    }
}

/// SIGTERM to the group, SIGKILL after `grace` (and to anything left in the
/// cgroups); returns once the main process has exited.
async fn terminate(
    proc: &mut Proc,
    grace: Duration,
    confinement: &Confinement,
) -> Option<ExitStatus> {
    signal_group(proc.pid(), Signal::TERM);
    match tokio::time::timeout(grace, proc.wait()).await {
        // Gone (and reaped): what it left is found by its cgroup, never by its old pid.
        Ok(status) => {
            kill_leftovers(proc.pid(), confinement).await;
            status
        }
        // Still running, so its pid is still its own.
        Err(_) => {
            signal_group(proc.pid(), Signal::KILL);
            confinement.kill_all();
            proc.wait().await
        }
    }
}

/// SIGKILL what a process that has exited (and been reaped) left running. Its cgroup holds
/// all of it and cannot be mistaken for another's. Its process group id is only used without
/// a cgroup (berth unprivileged): once the leader is reaped and its group empties, the kernel
/// may hand that number to a new process (pids wrap around at `pid_max`, 32768 here, within
/// seconds on a busy machine), which a signal to the old group would kill: most likely how a
/// build that had just started (itself a group leader) got a SIGKILL in CI.
///
/// The cgroup first gets a moment to empty on its own: the instance's log stamper is in it,
/// copying the last lines the process wrote (a crash's message) before it leaves.
async fn kill_leftovers(pgid: u32, confinement: &Confinement) {
    if confinement.dirs.is_empty() {
        signal_group(pgid, Signal::KILL);
    } else {
        confinement.settle(LEFTOVER_WAIT).await;
        confinement.kill_all();
    }
}

/// How long what a process left gets to end on its own before it is killed.
const LEFTOVER_WAIT: Duration = Duration::from_millis(300);

/// Signals a process group; a group that is already gone is fine.
fn signal_group(pgid: u32, signal: Signal) {
    let Some(pgid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return;
    };
    match kill_process_group(pgid, signal) {
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => tracing::warn!(pgid = pgid.as_raw_pid(), "cannot signal process group: {e}"),
    }
}

/// Kills a task's process group if `run_task` is dropped midway (the caller
/// gave up), so an abandoned build does not keep running.
/// Kills a task's process group when the task is dropped before its end (a cancelled build),
/// and everything in its cgroup too: a build task's command runs in a session of its own
/// (`setsid`), so its group is not the task's.
struct GroupGuard(Option<u32>, Option<crate::limits::Confinement>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            signal_group(pgid, Signal::KILL);
            if let Some(confinement) = self.1.take() {
                confinement.kill_all();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { confinement.remove().await });
                }
            }
        }
    }
}

fn spawn_instance(
    spec: &InstanceSpec,
    confinement: &Confinement,
    shared: &Shared,
) -> Result<(Proc, Option<u64>), RuntimeError> {
    let how = match &spec.jail {
        Some(jail) => shared.jailed(&spec.id, jail)?,
        None => shared.unjailed(&spec.id)?,
    };
    let output = match &shared.opts.log_stamper {
        Some(stamper) => Output::Stamped(
            &spec.log_file,
            stamper,
            (shared.opts.log_max_bytes, shared.opts.log_keep),
        ),
        None => Output::Append(&spec.log_file),
    };
    spawn(
        &spec.id,
        &spec.command,
        &spec.dir,
        &spec.env,
        output,
        confinement,
        &shared.opts.owner,
        how,
    )
    .map(|(proc, start, _)| (proc, start))
}

/// Where a process's stdout and stderr go.
#[derive(Clone, Copy)]
enum Output<'a> {
    /// Appended to this file directly (instances: their log is rotated by size).
    Append(&'a Path),
    /// As `Append`, through the log stamper at this path (`<stamper> log-stamp <file> <cap>
    /// <keep>`), which stamps every line with its time and rotates the file by rename at its
    /// cap (`logs::LogFile`). It is a process of its own, so it lives as long as
    /// the command's output does, across berth restarts too. It runs as berth's user, never
    /// as the app's: a process of the app's user outside the jail could be taken over by the
    /// jailed app (signalled, or written through `/proc/<pid>/mem`). It only copies bytes.
    Stamped(&'a Path, &'a Path, (u64, usize)),
    /// Through a pipe, appended to this file up to this many bytes, the rest read and dropped
    /// (tasks: their deploy log is never rotated, and a build must not fill the disk with it).
    Capped(&'a Path, u64),
}

/// The thread copying a task's output into its log ([`copy_capped`]).
type Copier = std::thread::JoinHandle<()>;

/// The most output of one task (a test, build, release or postdeploy step) kept in its
/// deploy log.
const TASK_OUTPUT_MAX: u64 = 64 << 20;

/// Copies `from` to `to` until every writer has closed it, keeping the first `cap` bytes.
fn copy_capped(mut from: std::io::PipeReader, mut to: std::fs::File, cap: u64) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    let mut kept = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if kept >= cap {
            continue;
        }
        let take = usize::try_from(cap - kept).map_or(n, |room| n.min(room));
        if to.write_all(&buf[..take]).is_err() {
            return;
        }
        kept += take as u64;
        if kept >= cap {
            let _ = write!(
                to,
                "\n[berth: this step wrote more than {} MiB of output; the rest is not kept]\n",
                cap >> 20
            );
        }
    }
}

/// As whom [`spawn`] runs a command.
enum RunAs<'a> {
    /// berth's own user.
    Berth,
    /// This unprivileged (uid, gid), through `setpriv` (builds).
    User(u32, u32),
    /// Inside this jail, through the helper (`<helper> jail <args> -- …`).
    Jail {
        helper: &'a Path,
        jail: &'a jail::Jail,
    },
}

impl Shared {
    /// The cgroups of `id` (named `cgroup`) with `limits`. A jailed process always gets one,
    /// with [`JAILED_DEFAULT_PIDS`] when its app sets no `pids`: no process can leave a cgroup
    /// (a `setsid` daemon leaves only the process group), so stopping the instance or
    /// destroying the app kills everything it started.
    fn contain(
        &self,
        id: &str,
        cgroup: &str,
        limits: &crate::Limits,
        jailed: bool,
    ) -> Result<Confinement, RuntimeError> {
        let mut limits = limits.clone();
        if jailed && limits.pids.is_none() {
            limits.pids = Some(JAILED_DEFAULT_PIDS);
        }
        let confinement = self.limiter.prepare(cgroup, &limits)?;
        if jailed && confinement.dirs.is_empty() {
            return Err(RuntimeError::Jail {
                id: id.to_string(),
                why: "no writable pids cgroup to hold its processes (is /sys/fs/cgroup mounted read-write?)".into(),
            });
        }
        Ok(confinement)
    }

    /// With a jail helper (the jail is on), app code never runs without a jail: a spec
    /// without one is a bug or a jail that could not be prepared, never a reason to run it
    /// as berth.
    fn unjailed(&self, id: &str) -> Result<RunAs<'static>, RuntimeError> {
        match &self.opts.jail_helper {
            None => Ok(RunAs::Berth),
            Some(_) => Err(RuntimeError::Jail {
                id: id.to_string(),
                why: "the jail is on and this process has none; refusing to run it as berth".into(),
            }),
        }
    }

    fn jailed<'a>(&'a self, id: &str, jail: &'a jail::Jail) -> Result<RunAs<'a>, RuntimeError> {
        match &self.opts.jail_helper {
            Some(helper) => Ok(RunAs::Jail { helper, jail }),
            None => Err(RuntimeError::Jail {
                id: id.to_string(),
                why: "this runtime has no jail helper".into(),
            }),
        }
    }
}

/// Starts `/bin/sh -c <prelude> <command> <cgroup dirs>` in its own process
/// group with only the given environment and output appended to `log_file`.
/// Returns the process and its start time.
#[allow(clippy::too_many_arguments)]
fn spawn(
    id: &str,
    command: &str,
    dir: &Path,
    env: &[(String, String)],
    output: Output<'_>,
    confinement: &Confinement,
    owner: &str,
    how: RunAs<'_>,
) -> Result<(Proc, Option<u64>, Option<Copier>), RuntimeError> {
    let (Output::Append(log_file) | Output::Stamped(log_file, ..) | Output::Capped(log_file, _)) =
        output;
    let log_err = |source| RuntimeError::LogFile {
        path: log_file.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(log_err)?;
    let (stdout, stderr, copier): (Stdio, Stdio, _) = match output {
        Output::Append(_) => {
            let stderr = file.try_clone().map_err(log_err)?;
            (file.into(), stderr.into(), None)
        }
        Output::Stamped(path, stamper, (cap, keep)) => {
            // Opened above only to check it can be: the stamper owns the file (it rotates it).
            drop(file);
            let (reader, writer) = std::io::pipe().map_err(log_err)?;
            let stderr = writer.try_clone().map_err(log_err)?;
            let mut cmd = Command::new(stamper);
            cmd.arg("log-stamp")
                .arg(path)
                .arg(cap.to_string())
                .arg(keep.to_string())
                .env_clear()
                .current_dir("/")
                .stdin(reader)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                // Its own group: a signal to the command's group leaves it to read to the end.
                .process_group(0)
                .kill_on_drop(false);
            // Not waited for: tokio reaps a child it no longer has a handle on.
            let stamper = cmd.spawn().map_err(|source| RuntimeError::Spawn {
                id: format!("{id} (its log stamper)"),
                source,
            })?;
            // In the instance's cgroups: its CPU, memory and pid count against the instance's
            // limits and its app's budgets, not the host's (an app with a thousand instances
            // would otherwise have a thousand stampers outside every limit).
            if let Some(pid) = stamper.id() {
                confinement
                    .join(pid)
                    .map_err(|source| RuntimeError::Spawn {
                        id: format!("{id} (its log stamper's cgroup)"),
                        source,
                    })?;
            }
            (writer.into(), stderr.into(), None)
        }
        Output::Capped(_, cap) => {
            let (reader, writer) = std::io::pipe().map_err(log_err)?;
            let stderr = writer.try_clone().map_err(log_err)?;
            let copier = std::thread::Builder::new()
                .name(format!("log {id}"))
                .spawn(move || copy_capped(reader, file, cap))
                .map_err(log_err)?;
            (writer.into(), stderr.into(), Some(copier))
        }
    };

    let switch = match how {
        RunAs::Berth => Switch::None,
        RunAs::User(uid, gid) => Switch::User(uid, gid),
        RunAs::Jail { .. } => Switch::Jail,
    };
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(confinement.prelude(switch))
        .arg(command)
        .args(&confinement.dirs);
    if let RunAs::Jail { helper, jail } = how {
        cmd.arg(helper).arg("jail").args(jail.to_args());
    }
    cmd.current_dir(dir)
        .env_clear()
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(false);
    // The process env: berth's PATH, HOME and LANG unless the task sets them, then the task's.
    let mut vars: Vec<(String, String)> = INHERITED_ENV
        .iter()
        .filter(|key| !env.iter().any(|(k, _)| k == *key))
        .filter_map(|key| std::env::var(key).ok().map(|v| (key.to_string(), v)))
        .collect();
    vars.extend(env.iter().cloned());
    let env_script = match how {
        RunAs::Berth => {
            cmd.stdin(Stdio::null()).process_group(0).envs(vars);
            None
        }
        // The part that runs as root (the prelude) never sees the task's env: an `LD_PRELOAD`
        // or `PATH` from an app must not run code as root. It gets a fixed PATH; the env goes
        // through stdin to the command, after the switch to the user. (`setsid` in the prelude
        // or the jail makes the process its own group: no `process_group` here, or setsid would
        // fork.)
        RunAs::User(..) | RunAs::Jail { .. } => {
            cmd.stdin(Stdio::piped()).env("PATH", SAFE_PATH);
            Some(shell_exports(&vars))
        }
    };
    if !owner.is_empty() {
        cmd.env(OWNER_VAR, owner).env(INSTANCE_VAR, id);
    }

    let spawn_err = |source| RuntimeError::Spawn {
        id: id.to_string(),
        source,
    };
    let spawned = cmd.spawn();
    // The pipe's write ends now belong to the child alone: the copy ends when it (and all it
    // started) is gone.
    drop(cmd);
    let mut child = spawned.map_err(spawn_err)?;
    if let (Some(script), Some(mut stdin)) = (env_script, child.stdin.take()) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // An error means the process is gone already: its outcome says why.
            let _ = stdin.write_all(script.as_bytes()).await;
        });
    }
    // `id()` is only `None` once the child has been reaped, which cannot
    // have happened yet.
    let pid = child
        .id()
        .ok_or_else(|| spawn_err(std::io::Error::other("child exited before it was seen")))?;
    // The child is not reaped until we wait for it, so /proc/<pid> exists.
    let pid_start = proc_start_time(pid);
    Ok((Proc::Child { child, pid }, pid_start, copier))
}

fn task_outcome(status: Option<ExitStatus>) -> TaskOutcome {
    match status {
        Some(status) if status.success() => TaskOutcome::Success,
        Some(status) => TaskOutcome::Failed {
            code: status.code(),
            signal: status.signal(),
        },
        None => TaskOutcome::Failed {
            code: None,
            signal: None,
        },
    }
}

/// Human-readable exit status for events and `berth ps`.
fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(status) => match (status.code(), status.signal()) {
            (Some(125), _) => "exit code 125 (could not apply resource limits)".to_string(),
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => status.to_string(),
        },
        None => "exited (status unknown)".to_string(),
    }
}

/// Locks a mutex, ignoring poisoning: the data behind these locks stays
/// consistent even if a holder panicked (every update is one assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(30);
        assert_eq!(backoff(base, 0, max), base);
        assert_eq!(backoff(base, 3, max), Duration::from_millis(800));
        assert_eq!(backoff(base, 20, max), max);
        assert_eq!(backoff(base, 40, max), max);
    }

    #[test]
    fn describes_exit_statuses() {
        assert_eq!(describe(Some(ExitStatus::from_raw(3 << 8))), "exit code 3");
        assert_eq!(
            describe(Some(ExitStatus::from_raw(9))),
            "killed by signal 9"
        );
        assert_eq!(describe(None), "exited (status unknown)");
    }
}
