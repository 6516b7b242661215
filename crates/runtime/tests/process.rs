//! ProcessRuntime against real processes. Nothing here sleeps to
//! synchronise: every wait is a poll with a deadline (`eventually`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::{
    proc_start_time, Event, InstanceSpec, InstanceState, Limits, ProcessOptions, ProcessRuntime,
    Runtime, TaskOutcome, TaskSpec,
};
use rustix::process::{kill_process, Pid, Signal};
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, panicking after `DEADLINE`.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Synchronous-condition shorthand for `eventually`.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    eventually(what, || std::future::ready(cond().then_some(()))).await
}

/// Receives events until one matches, with a deadline.
async fn next_event(rx: &mut broadcast::Receiver<Event>, pred: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            let event = rx.recv().await.unwrap();
            if pred(&event) {
                return event;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("timed out waiting for event")
}

/// Running means not a zombie: orphans here are reparented to an init that
/// may never reap them.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next();
    !matches!(state, Some("Z" | "X"))
}

fn kill9(pid: u32) {
    let _ = kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL);
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Ids unique per test process, so parallel runs don't share cgroups.
fn uid(name: &str) -> String {
    format!("t{}-{name}", std::process::id())
}

fn fast_opts() -> ProcessOptions {
    ProcessOptions {
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        crash_after: 3,
        stable_after: Duration::from_secs(5),
        log_check_every: Duration::from_millis(50),
        ..ProcessOptions::default()
    }
}

fn spec(dir: &Path, name: &str, command: &str) -> InstanceSpec {
    InstanceSpec {
        id: uid(name),
        command: command.to_string(),
        dir: dir.to_path_buf(),
        env: vec![("PORT".into(), "5000".into())],
        log_file: dir.join(format!("{name}.log")),
        limits: Limits::default(),
        restart: true,
        image: None,
        container_port: None,
        swarm: None,
        jail: None,
        container: Default::default(),
    }
}

fn task(dir: &Path, name: &str, command: &str, timeout: Duration) -> TaskSpec {
    TaskSpec {
        id: uid(name),
        command: command.to_string(),
        dir: dir.to_path_buf(),
        env: vec![],
        log_file: dir.join(format!("{name}.log")),
        timeout,
        limits: Limits::default(),
        user: None,
        jail: None,
    }
}

fn running_pid(rt: &ProcessRuntime, id: &str) -> Option<u32> {
    match rt.state(id) {
        Some(InstanceState::Running { pid, .. }) => pid,
        _ => None,
    }
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// True if this host lets berth create pids cgroups (root, writable mount).
fn pids_cgroup_dir(id: &str) -> Option<PathBuf> {
    let v2 = Path::new("/sys/fs/cgroup/berth");
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        let enabled = read(v2.join("cgroup.subtree_control"));
        return enabled.contains("pids").then(|| v2.join(id));
    }
    let v1 = Path::new("/sys/fs/cgroup/pids/berth");
    v1.is_dir().then(|| v1.join(id))
}

#[tokio::test]
async fn start_logs_output_with_only_the_given_env() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let s = spec(dir.path(), "env", "echo hi; env > env.txt; exec sleep 1000");
    let id = s.id.clone();
    let log = s.log_file.clone();
    let info = rt.start(s).await.unwrap();
    assert_eq!(rt.name(), "process");
    assert!(info.pid.is_some() && info.pid_start.is_some());
    assert_eq!(info.pid_start, proc_start_time(info.pid.unwrap()));
    assert_eq!(running_pid(&rt, &id), info.pid);

    until("hi in the log", || read(&log).contains("hi")).await;
    let env_file = dir.path().join("env.txt");
    until("env.txt", || read(&env_file).contains("PORT=")).await;
    let env = read(&env_file);
    assert!(env.lines().any(|l| l == "PORT=5000"), "{env}");
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    // Present in the test process (cargo sets it), absent in the app.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    assert!(!env.contains("CARGO_MANIFEST_DIR"), "{env}");

    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert!(!alive(info.pid.unwrap()));
}

#[tokio::test]
async fn stop_kills_the_whole_group_and_does_not_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let mut events = rt.subscribe();
    let s = spec(
        dir.path(),
        "group",
        "sleep 1000 & echo $! > grandchild.pid; exec sleep 1000",
    );
    let id = s.id.clone();
    let pid = rt.start(s).await.unwrap().pid.unwrap();
    let gc_file = dir.path().join("grandchild.pid");
    let grandchild = eventually("grandchild pid", || std::future::ready(read_pid(&gc_file))).await;
    assert!(alive(grandchild));

    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert!(!alive(pid));
    until("grandchild gone", || !alive(grandchild)).await;
    assert_eq!(rt.state(&id), None);

    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert!(
        matches!(
            exited,
            Event::Exited {
                restarting: false,
                ..
            }
        ),
        "{exited:?}"
    );
    // The supervisor has finished, so nothing can start it again.
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event, Event::Started { .. }), "{event:?}");
    }
    // Stopping an unknown (or already stopped) id is fine.
    rt.stop(&id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn sigterm_ignoring_command_is_killed_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let s = spec(
        dir.path(),
        "stubborn",
        "trap '' TERM; echo ready; sleep 1000",
    );
    let (id, log) = (s.id.clone(), s.log_file.clone());
    let pid = rt.start(s).await.unwrap().pid.unwrap();
    // The trap must be installed before we signal.
    until("ready", || read(&log).contains("ready")).await;

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    rt.stop(&id, grace).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace ran out"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(!alive(pid));
}

#[tokio::test]
async fn crashing_command_is_restarted_with_backoff_then_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(ProcessOptions {
        backoff_max: Duration::from_secs(2),
        ..fast_opts()
    });
    let mut events = rt.subscribe();
    let mut s = spec(dir.path(), "crash", "echo start >> \"$LOG\"; exit 3");
    let starts = dir.path().join("starts");
    s.env
        .push(("LOG".into(), starts.to_string_lossy().into_owned()));
    let id = s.id.clone();
    rt.start(s).await.unwrap();

    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert_eq!(
        exited,
        Event::Exited {
            id: id.clone(),
            status: "exit code 3".into(),
            restarting: true
        }
    );
    let restarted = next_event(&mut events, |e| matches!(e, Event::Started { .. })).await;
    assert!(matches!(restarted, Event::Started { pid: Some(_), .. }));
    // crash_after = 3: three quick restarts, then the fourth exit is a crash.
    let crashing = next_event(&mut events, |e| matches!(e, Event::Crashing { .. })).await;
    assert_eq!(
        crashing,
        Event::Crashing {
            id: id.clone(),
            restarts: 4
        }
    );
    // The state was set before the event and lasts for backoff_max.
    match rt.state(&id) {
        Some(InstanceState::Crashing {
            restarts,
            last_exit,
        }) => {
            assert_eq!(restarts, 4);
            assert_eq!(last_exit, "exit code 3");
        }
        other => panic!("expected Crashing, got {other:?}"),
    }
    assert_eq!(read(&starts).lines().count(), 4);
    // Heroku keeps retrying crashed dynos, at the maximum backoff.
    until("a retry while crashing", || {
        read(&starts).lines().count() >= 5
    })
    .await;

    rt.stop(&id, Duration::from_secs(1)).await.unwrap();
    assert_eq!(rt.state(&id), None);
}

#[tokio::test]
async fn externally_killed_instance_is_restarted_with_a_new_pid() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let mut events = rt.subscribe();
    let s = spec(dir.path(), "kill9", "exec sleep 1000");
    let id = s.id.clone();
    let first = rt.start(s).await.unwrap().pid.unwrap();

    kill9(first);
    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert!(
        matches!(&exited, Event::Exited { status, restarting: true, .. } if status == "killed by signal 9"),
        "{exited:?}"
    );
    let Event::Started { pid, pid_start, .. } =
        next_event(&mut events, |e| matches!(e, Event::Started { .. })).await
    else {
        unreachable!()
    };
    let second = pid.unwrap();
    assert_ne!(second, first);
    assert_eq!(pid_start, proc_start_time(second));
    assert_eq!(running_pid(&rt, &id), Some(second));

    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert!(!alive(second));
}

#[tokio::test]
async fn instance_without_restart_just_stops() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let mut events = rt.subscribe();
    let mut s = spec(dir.path(), "once", "exit 0");
    s.restart = false;
    let id = s.id.clone();
    rt.start(s).await.unwrap();
    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert!(matches!(
        exited,
        Event::Exited {
            restarting: false,
            ..
        }
    ));
    until("stopped", || rt.state(&id) == Some(InstanceState::Stopped)).await;
    // The id is free again.
    rt.start(spec(dir.path(), "once", "exec sleep 1000"))
        .await
        .unwrap();
    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn starting_a_running_id_again_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let s = spec(dir.path(), "twice", "exec sleep 1000");
    let id = s.id.clone();
    rt.start(s.clone()).await.unwrap();
    assert!(rt.start(s).await.is_err());
    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
}

/// Starts an instance and drops the runtime without stopping it, like a
/// berth crash. Returns (spec, pid, pid_start).
async fn orphaned_instance(dir: &Path, name: &str, command: &str) -> (InstanceSpec, u32, u64) {
    let rt = ProcessRuntime::new(fast_opts());
    let s = spec(dir, name, command);
    let info = rt.start(s.clone()).await.unwrap();
    assert_eq!(Arc::strong_count(&rt), 1);
    drop(rt);
    let pid = info.pid.unwrap();
    assert!(alive(pid), "instance died with its runtime");
    (s, pid, info.pid_start.unwrap())
}

#[tokio::test]
async fn adopt_after_a_berth_restart_then_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (s, pid, pid_start) = orphaned_instance(
        dir.path(),
        "adopt",
        "sleep 1000 & echo $! > grandchild.pid; exec sleep 1000",
    )
    .await;
    let gc_file = dir.path().join("grandchild.pid");
    let grandchild = eventually("grandchild pid", || std::future::ready(read_pid(&gc_file))).await;

    let rt = ProcessRuntime::new(fast_opts());
    assert_eq!(rt.adopt(s.clone(), pid, pid_start + 1).await.unwrap(), None);
    let info = rt.adopt(s.clone(), pid, pid_start).await.unwrap().unwrap();
    assert_eq!(info.pid, Some(pid));
    assert_eq!(info.pid_start, Some(pid_start));
    assert_eq!(running_pid(&rt, &s.id), Some(pid));

    rt.stop(&s.id, Duration::from_secs(5)).await.unwrap();
    assert!(!alive(pid));
    until("grandchild gone", || !alive(grandchild)).await;
    assert_eq!(rt.state(&s.id), None);
    // Gone now, so there is nothing to adopt.
    assert_eq!(rt.adopt(s, pid, pid_start).await.unwrap(), None);
}

#[tokio::test]
async fn adopted_instance_that_exits_is_restarted_as_a_child() {
    let dir = tempfile::tempdir().unwrap();
    let (s, pid, pid_start) =
        orphaned_instance(dir.path(), "adopt-restart", "exec sleep 1000").await;

    let rt = ProcessRuntime::new(fast_opts());
    let mut events = rt.subscribe();
    rt.adopt(s.clone(), pid, pid_start).await.unwrap().unwrap();
    kill9(pid);
    let Event::Started { pid: new_pid, .. } =
        next_event(&mut events, |e| matches!(e, Event::Started { .. })).await
    else {
        unreachable!()
    };
    let new_pid = new_pid.unwrap();
    assert_ne!(new_pid, pid);
    assert!(alive(new_pid));
    rt.stop(&s.id, Duration::from_secs(5)).await.unwrap();
    assert!(!alive(new_pid));
}

#[tokio::test]
async fn kill_orphan_checks_identity_and_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let (_, pid, pid_start) = orphaned_instance(
        dir.path(),
        "orphan",
        "sleep 1000 & echo $! > grandchild.pid; exec sleep 1000",
    )
    .await;
    let gc_file = dir.path().join("grandchild.pid");
    let grandchild = eventually("grandchild pid", || std::future::ready(read_pid(&gc_file))).await;

    let rt = ProcessRuntime::new(fast_opts());
    let grace = Duration::from_secs(5);
    rt.kill_orphan(pid, pid_start + 1, grace).await.unwrap();
    assert!(alive(pid), "killed a process with a different start time");

    rt.kill_orphan(pid, pid_start, grace).await.unwrap();
    until("orphan gone", || !alive(pid)).await;
    until("grandchild gone", || !alive(grandchild)).await;
}

#[tokio::test]
async fn run_task_reports_success_and_failure() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let minute = Duration::from_secs(60);

    let ok = task(dir.path(), "ok", "echo building; true", minute);
    let log = ok.log_file.clone();
    assert_eq!(rt.run_task(ok).await.unwrap(), TaskOutcome::Success);
    assert_eq!(read(&log), "building\n");

    let failing = task(dir.path(), "fail", "echo oops >&2; exit 7", minute);
    let log = failing.log_file.clone();
    assert_eq!(
        rt.run_task(failing).await.unwrap(),
        TaskOutcome::Failed {
            code: Some(7),
            signal: None
        }
    );
    assert_eq!(read(&log), "oops\n");
}

/// As root, a task with a user runs as that uid and gid with no supplementary groups.
#[tokio::test]
async fn run_task_as_another_user() {
    if !rustix::process::getuid().is_root() {
        eprintln!("skipped: needs root to switch user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let mut t = task(
        dir.path(),
        "user",
        "echo $(id -u) $(id -g) $(id -G)",
        Duration::from_secs(60),
    );
    t.user = Some((65534, 65533));
    let log = t.log_file.clone();
    assert_eq!(rt.run_task(t).await.unwrap(), TaskOutcome::Success);
    assert_eq!(read(&log), "65534 65533 65533\n");

    // The task's env reaches the command (quotes and all), never the part that runs as root:
    // a PATH with a fake `setpriv`, `setsid` and `cat` first changes nothing there.
    let fake = dir.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    for tool in ["setpriv", "setsid", "cat"] {
        let p = fake.join(tool);
        std::fs::write(
            &p,
            format!("#!/bin/sh\ntouch {}/pwned\n", dir.path().display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut t = task(
        dir.path(),
        "env",
        "echo \"$(/usr/bin/id -u) $X\"",
        Duration::from_secs(60),
    );
    t.user = Some((65534, 65533));
    t.env = vec![
        ("PATH".into(), format!("{}:/usr/bin:/bin", fake.display())),
        ("X".into(), "a'b \"c\" $HOME `x`".into()),
    ];
    let log = t.log_file.clone();
    assert_eq!(rt.run_task(t).await.unwrap(), TaskOutcome::Success);
    assert_eq!(read(&log), "65534 a'b \"c\" $HOME `x`\n");
    assert!(!dir.path().join("pwned").exists());
}

#[tokio::test]
async fn run_task_timeout_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let t = task(
        dir.path(),
        "slow",
        "sleep 1000 & echo $! > grandchild.pid; sleep 1000",
        Duration::from_millis(500),
    );
    let started = Instant::now();
    assert_eq!(rt.run_task(t).await.unwrap(), TaskOutcome::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(10));
    let grandchild = read_pid(&dir.path().join("grandchild.pid")).unwrap();
    until("grandchild gone", || !alive(grandchild)).await;
}

/// Works with either mechanism: a cgroup OOM-kills the task, `ulimit -v`
/// makes the allocation fail.
#[tokio::test]
async fn memory_limited_task_cannot_allocate_past_the_limit() {
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("note: no python3; skipping the memory limit test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let command = format!(
        "{python} -c \"b = bytearray(200*1024*1024); b[::4096] = b'x' * len(b[::4096]); print('allocated')\""
    );
    let mut t = task(dir.path(), "mem", &command, Duration::from_secs(60));
    t.limits.memory = Some(32 << 20);
    let log = t.log_file.clone();
    let outcome = rt.run_task(t).await.unwrap();
    assert!(matches!(outcome, TaskOutcome::Failed { .. }), "{outcome:?}");
    assert!(!read(&log).contains("allocated"), "{}", read(&log));

    // The same command without the limit succeeds (so the limit did it).
    let free = task(dir.path(), "nomem", &command, Duration::from_secs(60));
    let log = free.log_file.clone();
    assert_eq!(rt.run_task(free).await.unwrap(), TaskOutcome::Success);
    assert!(read(&log).contains("allocated"));
}

#[tokio::test]
async fn pids_limited_task_cannot_fork_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    if pids_cgroup_dir("x").is_none() {
        eprintln!("note: pids cgroup not writable here; skipping the pids limit test");
        return;
    }
    let command = "i=0; while [ $i -lt 50 ]; do sleep 100 & echo $! >> started; i=$((i+1)); done; echo all-started";
    let mut t = task(dir.path(), "pids", command, Duration::from_secs(60));
    t.limits.pids = Some(20);
    let log = t.log_file.clone();
    let outcome = rt.run_task(t).await.unwrap();
    assert!(matches!(outcome, TaskOutcome::Failed { .. }), "{outcome:?}");
    assert!(!read(&log).contains("all-started"), "{}", read(&log));
    let started: Vec<u32> = read(dir.path().join("started"))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(started.len() < 20, "started {} sleeps", started.len());
    for pid in started {
        until("background sleep gone", || !alive(pid)).await;
    }
}

#[tokio::test]
async fn limited_instance_lives_in_its_cgroup_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(fast_opts());
    let mut s = spec(dir.path(), "cg", "exec sleep 1000");
    let Some(cgroup) = pids_cgroup_dir(&s.id) else {
        eprintln!("note: pids cgroup not writable here; skipping the cgroup test");
        return;
    };
    s.limits.pids = Some(50);
    let id = s.id.clone();
    let pid = rt.start(s).await.unwrap().pid.unwrap();
    assert_eq!(read(cgroup.join("pids.max")).trim(), "50");
    // The prelude moves itself into the cgroup right after the spawn.
    until("instance in its cgroup", || {
        read(cgroup.join("cgroup.procs"))
            .lines()
            .any(|l| l == pid.to_string())
    })
    .await;
    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
    assert!(!cgroup.exists(), "cgroup left behind");
}

#[tokio::test]
async fn chatty_log_is_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new(ProcessOptions {
        log_max_bytes: 1000,
        log_keep: 2,
        ..fast_opts()
    });
    let s = spec(
        dir.path(),
        "chatty",
        "while true; do echo 0123456789abcdef; sleep 0.01; done",
    );
    let (id, log) = (s.id.clone(), s.log_file.clone());
    rt.start(s).await.unwrap();
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    until("rotated copy", || read(&rotated).len() > 1000).await;
    // The app keeps writing to the truncated original at its new end, not
    // at its old offset (which would leave a hole of NULs).
    until("original shrunk and still written", || {
        let now = read(&log);
        !now.is_empty() && now.len() < read(&rotated).len()
    })
    .await;
    assert!(!read(&log).contains('\0'));
    rt.stop(&id, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn proc_start_time_handles_odd_command_names() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a b) (c");
    // comm is taken from the name the binary was executed by.
    std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
    let mut child = std::process::Command::new(&odd)
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = child.id();
    let stat = read(format!("/proc/{pid}/stat"));
    assert!(stat.contains("(a b) (c)"), "{stat}");
    let start = proc_start_time(pid).unwrap();
    assert!(start >= proc_start_time(std::process::id()).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(proc_start_time(pid), None);
}

#[tokio::test]
async fn sweep_stops_only_this_owners_unmanaged_processes() {
    let dir = tempfile::tempdir().unwrap();
    let owner = |o: &str| ProcessOptions {
        owner: o.to_string(),
        ..fast_opts()
    };
    let (mine, theirs) = (uid("sweep-owner"), uid("sweep-other"));
    // A crashed berth left two instances (one with a grandchild) and another berth runs one.
    let old = ProcessRuntime::new(owner(&mine));
    let cmd = "sleep 1000 & echo $! > gc.pid; exec sleep 1000";
    let kept = old
        .start(spec(dir.path(), "kept", "exec sleep 1000"))
        .await
        .unwrap();
    let lost = old.start(spec(dir.path(), "lost", cmd)).await.unwrap();
    let other = ProcessRuntime::new(owner(&theirs));
    let foreign = other
        .start(spec(dir.path(), "foreign", "exec sleep 1000"))
        .await
        .unwrap();
    let gc = eventually("grandchild pid", || {
        std::future::ready(read_pid(&dir.path().join("gc.pid")))
    })
    .await;
    drop(old);

    // The restarted berth adopts one of its two, then sweeps.
    let new = ProcessRuntime::new(owner(&mine));
    let keep_spec = spec(dir.path(), "kept", "exec sleep 1000");
    let (kpid, kstart) = (kept.pid.unwrap(), kept.pid_start.unwrap());
    new.adopt(keep_spec, kpid, kstart).await.unwrap().unwrap();
    assert_eq!(new.sweep(Duration::from_secs(2)).await.unwrap(), 1);
    until("the lost instance and its grandchild to be gone", || {
        !alive(lost.pid.unwrap()) && !alive(gc)
    })
    .await;
    assert!(alive(kpid), "the adopted instance stays");
    assert!(alive(foreign.pid.unwrap()), "another owner's process stays");
    new.stop(&kept.id, Duration::from_secs(2)).await.unwrap();
    other
        .stop(&foreign.id, Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn sweep_stops_a_stale_copy_of_a_managed_id() {
    let dir = tempfile::tempdir().unwrap();
    let mine = uid("sweep-stale-owner");
    let opts = || ProcessOptions {
        owner: mine.clone(),
        ..fast_opts()
    };
    // A crashed berth left `web` running, but its pid was never recorded: the new berth
    // starts a replacement under the same id.
    let old = ProcessRuntime::new(opts());
    let stale = old
        .start(spec(dir.path(), "stale-web", "exec sleep 1000"))
        .await
        .unwrap();
    // The sweep knows berth's processes by their environment, which is theirs only once the
    // child has exec'd (a crashed berth's leftovers did long ago).
    let environ = format!("/proc/{}/environ", stale.pid.unwrap());
    until("the stale copy to carry its owner tag", || {
        fs::read(&environ).is_ok_and(|e| e.windows(mine.len()).any(|w| w == mine.as_bytes()))
    })
    .await;
    drop(old);
    let new = ProcessRuntime::new(opts());
    let fresh = new
        .start(spec(dir.path(), "stale-web", "exec sleep 1000"))
        .await
        .unwrap();
    assert_eq!(new.sweep(Duration::from_secs(2)).await.unwrap(), 1);
    until("the stale copy to be gone", || !alive(stale.pid.unwrap())).await;
    assert!(alive(fresh.pid.unwrap()), "the managed one stays");
    new.stop(&fresh.id, Duration::from_secs(2)).await.unwrap();
}
