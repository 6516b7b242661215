//! Resource limits without `unsafe`.
//!
//! Moving a child into a cgroup or setting an rlimit between `fork` and
//! `exec` needs `pre_exec`, which is `unsafe`. Instead every instance starts
//! as a tiny shell *prelude* that confines itself and then `exec`s the app:
//!
//! ```sh
//! echo $$ > "${1}/cgroup.procs" || exit 125   # one line per cgroup dir
//! ulimit -v <KiB> || exit 125                  # only in the rlimit fallback
//! exec /bin/sh -c -- "$0"
//! ```
//!
//! run as `/bin/sh -c <prelude> <user command> <cgroup dir>...`. The user's
//! command only ever travels as an argument (`$0`), never spliced into the
//! script, so it cannot inject anything into the prelude. Exit code 125
//! (like `docker run`) means "could not confine", so a process never runs
//! without the limits it was given.
//!
//! cgroups are preferred (they cover the whole process tree and limit pids
//! and cpu); when they are not writable (not root, read-only mount), memory
//! falls back to `ulimit -v`, and pids/cpu limits are not enforced:
//! `ulimit -u` counts every process of the *user*, not of the instance.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::{Limits, RuntimeError};

/// CFS period used for cpu limits; quota = cores × period.
const CPU_PERIOD_US: u64 = 100_000;

/// Which limit mechanisms work on this host, detected once per runtime.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    /// Parent dir for instance cgroups per controller (`.../berth`), `None`
    /// when that controller is not usable. With cgroup v2 all three are the
    /// same dir.
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
    cpu: Option<PathBuf>,
    v2: bool,
}

/// The confinement prepared for one instance or task.
#[derive(Clone, Debug, Default)]
pub(crate) struct Confinement {
    /// cgroup dirs the prelude joins (one per controller with v1).
    pub dirs: Vec<PathBuf>,
    /// `ulimit -v` in KiB, when memory could not be limited by a cgroup.
    pub ulimit_v_kib: Option<u64>,
}

impl Limiter {
    /// Finds the cgroup mount under `root` (default `/sys/fs/cgroup`) and
    /// creates berth's parent cgroup(s). Never fails: whatever does not work
    /// is logged once and left out.
    pub fn detect(root: Option<&Path>) -> Limiter {
        let root = root.unwrap_or(Path::new("/sys/fs/cgroup"));
        let limiter = if root.join("cgroup.controllers").exists() {
            Self::detect_v2(root)
        } else {
            Self::detect_v1(root)
        };
        limiter.log_mechanism(root);
        limiter
    }

    fn detect_v2(root: &Path) -> Limiter {
        let base = root.join("berth");
        if fs::create_dir_all(&base).is_err() {
            return Limiter::default();
        }
        // A v2 controller is usable in berth/<id> only if it is enabled in
        // the subtree_control of every ancestor. Enabling each separately
        // lets one unavailable controller not take the others down.
        for controller in ["memory", "pids", "cpu"] {
            for dir in [root, base.as_path()] {
                let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
            }
        }
        let enabled = fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
        let usable = |c: &str| {
            enabled
                .split_whitespace()
                .any(|e| e == c)
                .then(|| base.clone())
        };
        Limiter {
            memory: usable("memory"),
            pids: usable("pids"),
            cpu: usable("cpu"),
            v2: true,
        }
    }

    fn detect_v1(root: &Path) -> Limiter {
        let usable = |controller: &str| {
            let base = root.join(controller).join("berth");
            let mounted = root.join(controller).join("cgroup.procs").exists();
            (mounted && fs::create_dir_all(&base).is_ok()).then_some(base)
        };
        Limiter {
            memory: usable("memory"),
            pids: usable("pids"),
            cpu: usable("cpu"),
            v2: false,
        }
    }

    fn log_mechanism(&self, root: &Path) {
        let version = if self.v2 { "v2" } else { "v1" };
        let with = |dir: &Option<PathBuf>, name: &'static str, fallback: &'static str| {
            if dir.is_some() {
                format!("{name}: cgroup {version}")
            } else {
                format!("{name}: {fallback}")
            }
        };
        tracing::info!(
            cgroup_root = %root.display(),
            "resource limits: {}, {}, {}",
            with(&self.memory, "memory", "ulimit -v (cgroup not writable)"),
            with(&self.pids, "pids", "not enforced (cgroup not writable)"),
            with(&self.cpu, "cpu", "not enforced (cgroup not writable)"),
        );
    }

    /// Creates (or reuses) the cgroups for `id` and writes the limits.
    /// Idempotent, so restarts and adoption can call it again.
    pub fn prepare(&self, id: &str, limits: &Limits) -> Result<Confinement, RuntimeError> {
        let mut conf = Confinement::default();
        if let Some(bytes) = limits.memory {
            match &self.memory {
                Some(base) => {
                    let dir = join_dir(&mut conf, base, id)?;
                    if self.v2 {
                        write_limit(&dir, "memory.max", bytes)?;
                    } else {
                        write_limit(&dir, "memory.limit_in_bytes", bytes)?;
                        // Without swap accounting the app could swap past the
                        // limit; the file is absent when accounting is off.
                        let _ =
                            fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
                    }
                }
                None => conf.ulimit_v_kib = Some(bytes.div_ceil(1024)),
            }
        }
        if let (Some(max), Some(base)) = (limits.pids, &self.pids) {
            let dir = join_dir(&mut conf, base, id)?;
            write_limit(&dir, "pids.max", max)?;
        }
        if let (Some(cores), Some(base)) = (limits.cpu, &self.cpu) {
            let dir = join_dir(&mut conf, base, id)?;
            // The kernel refuses quotas below 1ms.
            let quota = ((cores * CPU_PERIOD_US as f64) as u64).max(1000);
            if self.v2 {
                write_limit(&dir, "cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                write_limit(&dir, "cpu.cfs_period_us", CPU_PERIOD_US)?;
                write_limit(&dir, "cpu.cfs_quota_us", quota)?;
            }
        }
        Ok(conf)
    }

    /// Creates (or reuses) the parent cgroup `group` (a jailed user's) with `memory` as the
    /// limit of everything below it; with v2 its children get the controllers too.
    pub fn prepare_group(&self, group: &str, memory: Option<u64>) -> Result<(), RuntimeError> {
        for base in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let dir = base.join(group);
            fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cgroup {
                path: dir.clone(),
                source,
            })?;
            if self.v2 {
                for controller in ["memory", "pids", "cpu"] {
                    let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
                }
            }
        }
        if let (Some(bytes), Some(base)) = (memory, &self.memory) {
            let file = if self.v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            };
            write_limit(&base.join(group), file, bytes)?;
        }
        Ok(())
    }

    /// Removes the groups (`prepare_group`) whose names start with `prefix` and that hold no
    /// cgroup any more (a destroyed app's): at start, before anything is created in them. A
    /// group still in use is refused by the kernel and stays.
    pub fn sweep_groups(&self, prefix: &str) {
        if prefix.is_empty() {
            return;
        }
        for base in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let is_group = name
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('u'))
                    .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()));
                if is_group {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// The berth cgroups `pid` is in. Used for orphans from an earlier run,
    /// whose instance id (and so cgroup name) is not known: scanning
    /// berth's few cgroups is simpler and more robust than interpreting
    /// `/proc/<pid>/cgroup` across v1/v2 and cgroup namespaces.
    pub fn find(&self, pid: u32) -> Confinement {
        let Ok(pid) = i32::try_from(pid) else {
            return Confinement::default();
        };
        let mut conf = Confinement::default();
        for base in [&self.memory, &self.pids, &self.cpu].into_iter().flatten() {
            let Ok(entries) = fs::read_dir(base) else {
                continue;
            };
            // An instance's cgroup, or one under a jailed user's (`prepare_group`).
            let dirs = entries.flatten().map(|e| e.path()).filter(|d| d.is_dir());
            let nested = |d: &PathBuf| -> Vec<PathBuf> {
                fs::read_dir(d)
                    .map(|es| {
                        es.flatten()
                            .map(|e| e.path())
                            .filter(|p| p.is_dir())
                            .collect()
                    })
                    .unwrap_or_default()
            };
            for dir in dirs.flat_map(|d| {
                let mut all = nested(&d);
                all.push(d);
                all
            }) {
                if !conf.dirs.contains(&dir) && read_procs(&dir).contains(&pid) {
                    conf.dirs.push(dir);
                }
            }
        }
        conf
    }
}

/// Creates `base/id` and records it in `conf` (once: with v2 all controllers
/// share one dir).
fn join_dir(conf: &mut Confinement, base: &Path, id: &str) -> Result<PathBuf, RuntimeError> {
    let dir = base.join(id);
    if !conf.dirs.contains(&dir) {
        fs::create_dir_all(&dir).map_err(|source| RuntimeError::Cgroup {
            path: dir.clone(),
            source,
        })?;
        conf.dirs.push(dir.clone());
    }
    Ok(dir)
}

fn write_limit(dir: &Path, file: &str, value: impl ToString) -> Result<(), RuntimeError> {
    let path = dir.join(file);
    fs::write(&path, value.to_string()).map_err(|source| RuntimeError::Cgroup { path, source })
}

/// How the prelude hands over to the command.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Switch {
    /// Run it as berth's own user.
    None,
    /// `setsid` + `setpriv` to this (uid, gid) (a build).
    User(u32, u32),
    /// Through the jail helper whose command line follows the cgroup dirs.
    Jail,
}

impl Confinement {
    /// The shell script described in the module docs, ending in the switch `how` asks for.
    pub fn prelude(&self, how: Switch) -> String {
        let mut script = String::new();
        for n in 1..=self.dirs.len() {
            script.push_str(&format!(
                "echo $$ > \"${{{n}}}/cgroup.procs\" || exit 125\n"
            ));
        }
        if let Some(kib) = self.ulimit_v_kib {
            script.push_str(&format!("ulimit -v {kib} || exit 125\n"));
        }
        // After a switch of user, the env arrives on stdin (see `process::spawn`), then the
        // command runs with stdin from /dev/null.
        const ENV_THEN_COMMAND: &str =
            "/bin/sh -c 'eval \"$(cat)\" && exec /bin/sh -c -- \"$0\" </dev/null' \"$0\"";
        match how {
            Switch::None => script.push_str("exec /bin/sh -c -- \"$0\""),
            // A session of its own (no controlling terminal to type into), no privileges to
            // regain (no setuid binaries, no capabilities).
            Switch::User(uid, gid) => script.push_str(&format!(
                "exec /usr/bin/setsid /usr/bin/setpriv --reuid={uid} --regid={gid} --clear-groups \
                 --no-new-privs --inh-caps=-all --bounding-set=-all -- {ENV_THEN_COMMAND}"
            )),
            // The arguments after the cgroup dirs are the jail helper's command line, ending in
            // `--` (see `berth-jail`): it builds the jail, becomes the app's user, then execs.
            Switch::Jail => script.push_str(&format!(
                "shift {}\nexec \"$@\" {ENV_THEN_COMMAND}",
                self.dirs.len()
            )),
        }
        script
    }

    /// Moves `pid` (a process berth started for the instance: its log stamper) into the
    /// instance's cgroups, so what it uses counts against the instance's limits and its app's
    /// budgets.
    pub fn join(&self, pid: u32) -> io::Result<()> {
        for dir in &self.dirs {
            fs::write(dir.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Waits, up to `wait`, for the cgroups to empty on their own (the log stamper copying
    /// the last lines, then leaving at the end of its input).
    pub async fn settle(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && self.dirs.iter().any(|d| !read_procs(d).is_empty()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL everything still in the instance's cgroups: processes that
    /// left the process group (`setsid`, daemons) are still caught here.
    /// With cgroup v2's `cgroup.kill` (Linux 5.14) in one step that nothing forking escapes
    /// and no reused pid confuses; else pid by pid from `cgroup.procs`.
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for pid in read_procs(dir) {
                if let Some(pid) = Pid::from_raw(pid) {
                    let _ = kill_process(pid, Signal::KILL);
                }
            }
        }
    }

    /// Kills what is left and removes the cgroup dirs. A cgroup can only be
    /// removed once its last process has fully exited, which lags SIGKILL a
    /// little, so EBUSY is retried for a short while.
    pub async fn remove(&self) {
        for dir in &self.dirs {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline =>
                    {
                        self.kill_all();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => {
                        tracing::warn!(cgroup = %dir.display(), "cannot remove cgroup: {e}");
                        break;
                    }
                }
            }
        }
    }
}

fn read_procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_joins_every_dir_then_execs_the_command_argument() {
        let conf = Confinement {
            dirs: vec!["/a".into(), "/b".into()],
            ulimit_v_kib: Some(1024),
        };
        assert_eq!(
            conf.prelude(Switch::None),
            "echo $$ > \"${1}/cgroup.procs\" || exit 125\n\
             echo $$ > \"${2}/cgroup.procs\" || exit 125\n\
             ulimit -v 1024 || exit 125\n\
             exec /bin/sh -c -- \"$0\""
        );
    }

    #[test]
    fn without_cgroups_memory_falls_back_to_ulimit() {
        let limiter = Limiter::default();
        let conf = limiter
            .prepare(
                "x",
                &Limits {
                    memory: Some(32 << 20),
                    pids: Some(10),
                    cpu: Some(0.5),
                },
            )
            .unwrap();
        assert!(conf.dirs.is_empty());
        assert_eq!(conf.ulimit_v_kib, Some(32 << 10));
    }

    #[test]
    fn writes_v1_limit_files() {
        let root = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu"] {
            fs::create_dir_all(root.path().join(c)).unwrap();
            fs::write(root.path().join(c).join("cgroup.procs"), "").unwrap();
        }
        let limiter = Limiter::detect(Some(root.path()));
        let limits = Limits {
            memory: Some(1 << 20),
            pids: Some(7),
            cpu: Some(1.5),
        };
        let conf = limiter.prepare("app-1", &limits).unwrap();
        assert_eq!(conf.dirs.len(), 3);
        let read = |p: &str| fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("memory/berth/app-1/memory.limit_in_bytes"), "1048576");
        assert_eq!(read("pids/berth/app-1/pids.max"), "7");
        assert_eq!(read("cpu/berth/app-1/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu/berth/app-1/cpu.cfs_period_us"), "100000");
    }

    #[test]
    fn writes_v2_limit_files_into_one_dir() {
        let root = tempfile::tempdir().unwrap();
        // A plain directory cannot play cgroupfs for detection (enabling
        // controllers), so build the detected state by hand.
        let limiter = Limiter {
            memory: Some(root.path().join("berth")),
            pids: Some(root.path().join("berth")),
            cpu: Some(root.path().join("berth")),
            v2: true,
        };
        let limits = Limits {
            memory: Some(1 << 20),
            pids: Some(7),
            cpu: Some(0.5),
        };
        let conf = limiter.prepare("app-1", &limits).unwrap();
        assert_eq!(conf.dirs, vec![root.path().join("berth/app-1")]);
        let read = |p: &str| fs::read_to_string(root.path().join("berth/app-1").join(p)).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("pids.max"), "7");
        assert_eq!(read("cpu.max"), "50000 100000");
    }
}
