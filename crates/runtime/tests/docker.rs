//! DockerRuntime against the real daemon. Images are built `FROM scratch` with Debian's static
//! busybox (no registry). Each test has its own owner (a temp dir), so tests never see each
//! other's containers, and a guard removes everything of that owner at the end, even after a
//! failure. Nothing here sleeps to synchronise: every wait is a poll with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_runtime::{
    DockerRuntime, Event, InstanceSpec, InstanceState, Limits, Runtime, RuntimeError,
    ServiceHealthcheck, ServiceRun,
};
use bollard::query_parameters::{
    InspectContainerOptions, InspectNetworkOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, ListVolumesOptions, RemoveContainerOptions, RemoveImageOptions,
    RemoveVolumeOptions,
};
use bollard::Docker;
use tokio::sync::broadcast;

const DEADLINE: Duration = Duration::from_secs(30);
const SOCKET: &str = "/var/run/docker.sock";

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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

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

/// A test's own owner; everything labelled with it is removed on drop.
struct Owner {
    dir: tempfile::TempDir,
}

impl Owner {
    fn new() -> Owner {
        Owner {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn name(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let owner = self.name();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(remove_everything_of(&owner));
        })
        .join();
    }
}

async fn docker() -> Docker {
    Docker::connect_with_unix(SOCKET, 60, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .unwrap()
}

fn owner_filter(owner: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("berth.owner={owner}")])])
}

async fn remove_everything_of(owner: &str) {
    let docker = docker().await;
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(owner_filter(owner)),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for c in containers {
        let _ = docker
            .remove_container(
                c.id.as_deref().unwrap_or_default(),
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
    let images = docker
        .list_images(Some(ListImagesOptions {
            filters: Some(owner_filter(owner)),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for image in images {
        let _ = docker
            .remove_image(
                &image.id,
                Some(RemoveImageOptions {
                    force: true,
                    ..Default::default()
                }),
                None,
            )
            .await;
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(owner_filter(owner)),
        }))
        .await
        .unwrap_or_default();
    for n in networks {
        let _ = docker
            .remove_network(n.id.as_deref().unwrap_or_default())
            .await;
    }
    let volumes = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(owner_filter(owner)),
        }))
        .await
        .ok()
        .and_then(|v| v.volumes)
        .unwrap_or_default();
    for v in volumes {
        let _ = docker
            .remove_volume(&v.name, None::<RemoveVolumeOptions>)
            .await;
    }
}

/// The runtime for `owner`, or `None` (loudly) when this machine has no daemon at all.
async fn connect(owner: &Owner) -> Option<Arc<DockerRuntime>> {
    if !Path::new(SOCKET).exists() {
        eprintln!("SKIPPED: no Docker daemon at {SOCKET}");
        return None;
    }
    Some(
        DockerRuntime::connect(Some(Path::new(SOCKET)), &owner.name())
            .await
            .unwrap(),
    )
}

/// A build context: static busybox and a Dockerfile with `extra` lines at the end.
fn context(owner: &Owner, name: &str, extra: &str) -> PathBuf {
    let owner_name = owner.name();
    let dir = owner.path().join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::copy("/bin/busybox", dir.join("busybox")).unwrap();
    fs::write(
        dir.join("Dockerfile"),
        format!(
            // A layer of its own first: tests never share (or prune) each other's cached
            // layers.
            "FROM scratch\nLABEL berth.test={owner_name:?}\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n{extra}\n"
        ),
    )
    .unwrap();
    dir
}

async fn build(rt: &DockerRuntime, owner: &Owner, app: &str, release: u64, extra: &str) -> String {
    let ctx = context(owner, &format!("{app}-{release}"), extra);
    let tag = rt.image_tag(app, release);
    let labels = [
        ("berth.app".to_string(), app.to_string()),
        ("berth.release".to_string(), format!("v{release}")),
    ];
    let log = owner.path().join(format!("build-{app}-{release}.log"));
    rt.build_image(
        &ctx,
        "Dockerfile",
        &tag,
        &labels,
        &log,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    tag
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spec(owner: &Owner, name: &str, image: &str, command: &str, port: u16) -> InstanceSpec {
    InstanceSpec {
        id: format!("{name}.v1.web.1"),
        command: command.to_string(),
        dir: owner.path().to_path_buf(),
        env: vec![
            ("PORT".into(), port.to_string()),
            ("GREETING".into(), "hi there".into()),
        ],
        log_file: owner.path().join(format!("{name}.log")),
        limits: Limits::default(),
        restart: true,
        image: Some(image.to_string()),
        container_port: None,
        swarm: None,
        jail: None,
        container: Default::default(),
    }
}

/// `GET /` on 127.0.0.1:port, the whole response, if anything answered.
fn get(port: u16) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1").then_some(out)
}

async fn wait_get(port: u16) -> String {
    eventually("an answer on the published port", || async move {
        tokio::task::spawn_blocking(move || get(port))
            .await
            .unwrap()
    })
    .await
}

async fn inspect(name: &str) -> Option<bollard::models::ContainerInspectResponse> {
    docker()
        .await
        .inspect_container(name, None::<InspectContainerOptions>)
        .await
        .ok()
}

fn container_name(rt: &DockerRuntime, id: &str) -> String {
    format!("{}-{id}", rt.prefix())
}

const HTTPD: &str = "mkdir -p /www && echo \"hello $GREETING on $PORT\" > /www/index.html \
                     && echo serving on $PORT && exec httpd -f -p $PORT -h /www";

#[tokio::test]
async fn connect_to_a_missing_socket_names_it() {
    let err = DockerRuntime::connect(Some(Path::new("/nonexistent/docker.sock")), "x")
        .await
        .err()
        .expect("connect must fail");
    assert!(matches!(err, RuntimeError::Docker(_)));
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/docker.sock"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
}

#[tokio::test]
async fn builds_log_their_output_fail_naming_the_step_and_prune_keeps_rollbacks() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let ctx = context(&owner, "ok", "CMD [\"/bin/sh\",\"-c\",\"echo hi\"]");
    let log = owner.path().join("build.log");
    let tag = rt.image_tag("app", 1);
    let labels = [("berth.app".to_string(), "app".to_string())];
    let id = rt
        .build_image(&ctx, "", &tag, &labels, &log, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(id.starts_with("sha256:"), "{id}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Step 1/") && text.contains(": FROM scratch"),
        "{text}"
    );
    assert!(text.contains("Successfully built"), "{text}");

    // A Dockerfile elsewhere in the context.
    let bad = context(&owner, "bad", "RUN false");
    fs::create_dir_all(bad.join("build")).unwrap();
    fs::rename(bad.join("Dockerfile"), bad.join("build/bad.Dockerfile")).unwrap();
    let bad_log = owner.path().join("bad.log");
    let err = rt
        .build_image(
            &bad,
            "build/bad.Dockerfile",
            &rt.image_tag("app", 2),
            &labels,
            &bad_log,
            Duration::from_secs(120),
        )
        .await
        .expect_err("RUN false must fail the build");
    let msg = err.to_string();
    assert!(msg.contains("RUN false"), "{msg}");
    assert!(msg.contains("non-zero code: 1"), "{msg}");
    assert!(fs::read_to_string(&bad_log).unwrap().contains("ERROR"));

    // Three releases (distinct images thanks to a distinct CMD); keep v3 and v2.
    let v2 = build(&rt, &owner, "app", 2, "CMD [\"/bin/sh\",\"-c\",\"echo 2\"]").await;
    let v3 = build(&rt, &owner, "app", 3, "CMD [\"/bin/sh\",\"-c\",\"echo 3\"]").await;
    let other = build(
        &rt,
        &owner,
        "other",
        1,
        "CMD [\"/bin/sh\",\"-c\",\"echo o\"]",
    )
    .await;
    let removed = rt
        .prune_images("app", &[v3.clone(), v2.clone()])
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let docker = docker().await;
    assert!(docker.inspect_image(&tag).await.is_err(), "v1 is pruned");
    for kept in [&v2, &v3, &other] {
        assert!(docker.inspect_image(kept).await.is_ok(), "{kept} is kept");
    }
}

#[tokio::test]
async fn an_instance_serves_on_localhost_with_env_logs_limits_and_stops() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(
        &rt,
        &owner,
        "web",
        1,
        "CMD [\"/bin/sh\",\"-c\",\"echo default\"]",
    )
    .await;
    let port = free_port();
    let mut spec = spec(&owner, "web", &image, HTTPD, port);
    spec.limits = Limits {
        memory: Some(64 << 20),
        pids: Some(100),
        cpu: Some(0.5),
    };
    let mut events = rt.subscribe();
    let began = Instant::now();
    let info = rt.start(spec.clone()).await.unwrap();
    eprintln!("start took {:?}", began.elapsed());
    let served = Instant::now();
    let pid = info.pid.expect("a running container has a pid");
    assert!(info.pid_start.is_some());
    let started = next_event(&mut events, |e| matches!(e, Event::Started { .. })).await;
    assert_eq!(
        started,
        Event::Started {
            id: spec.id.clone(),
            pid: Some(pid),
            pid_start: info.pid_start
        }
    );

    let body = wait_get(port).await;
    eprintln!("first answer {:?} after start returned", served.elapsed());
    assert!(
        body.contains(&format!("hello hi there on {port}")),
        "{body}"
    );
    assert!(matches!(
        rt.state(&spec.id),
        Some(InstanceState::Running { pid: Some(p), .. }) if p == pid
    ));
    eventually("the log file to get the output", || async {
        fs::read_to_string(&spec.log_file)
            .ok()
            .filter(|t| t.contains(&format!("serving on {port}")))
    })
    .await;

    let name = container_name(&rt, &spec.id);
    let c = inspect(&name).await.expect("the container exists");
    let host = c.host_config.unwrap();
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(100));
    let bindings = host.port_bindings.unwrap();
    let binding = bindings[&format!("{port}/tcp")].clone().unwrap();
    assert_eq!(binding.len(), 1);
    assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        binding[0].host_port.as_deref(),
        Some(port.to_string().as_str())
    );
    let published = c.network_settings.unwrap().ports.unwrap();
    for b in published.values().flatten().flatten() {
        assert_eq!(b.host_ip.as_deref(), Some("127.0.0.1"), "never 0.0.0.0");
    }
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels["berth.instance"], spec.id);
    assert_eq!(labels["berth.owner"], owner.name());

    assert!(matches!(
        rt.start(spec.clone()).await,
        Err(RuntimeError::AlreadyRunning(_))
    ));
    let stopping = Instant::now();
    rt.stop(&spec.id, Duration::from_secs(2)).await.unwrap();
    eprintln!("stop took {:?}", stopping.elapsed());
    assert!(inspect(&name).await.is_none(), "stop removes the container");
    assert_eq!(rt.state(&spec.id), None);
    next_event(&mut events, |e| {
        matches!(
            e,
            Event::Exited {
                restarting: false,
                ..
            }
        )
    })
    .await;
    rt.stop(&spec.id, Duration::from_secs(1)).await.unwrap();
    rt.stop("never.started", Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_new_runtime_adopts_and_sweep_removes_the_unmanaged() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "adopt", 1, "").await;
    let port = free_port();
    let ticking = format!("(while :; do echo tick; sleep 0.2; done) & {HTTPD}");
    let kept = spec(&owner, "kept", &image, &ticking, port);
    let info = rt.start(kept.clone()).await.unwrap();
    let stray = spec(&owner, "stray", &image, HTTPD, free_port());
    rt.start(stray.clone()).await.unwrap();
    wait_get(port).await;
    drop(rt); // as a berth crash: the containers keep running

    let rt = DockerRuntime::connect(Some(Path::new(SOCKET)), &owner.name())
        .await
        .unwrap();
    let missing = spec(&owner, "missing", &image, HTTPD, free_port());
    assert_eq!(rt.adopt(missing, 1, 1).await.unwrap(), None);
    let adopted = rt
        .adopt(kept.clone(), info.pid.unwrap(), info.pid_start.unwrap())
        .await
        .unwrap()
        .expect("the running container is adopted");
    assert_eq!(adopted.pid, info.pid);
    assert!(matches!(
        rt.state(&kept.id),
        Some(InstanceState::Running { .. })
    ));
    assert_eq!(rt.sweep(Duration::from_secs(1)).await.unwrap(), 1);
    assert!(inspect(&container_name(&rt, &stray.id)).await.is_none());
    assert!(get(port).is_some(), "the adopted one still serves");

    // Logs are followed from the adoption on.
    fs::write(&kept.log_file, "").unwrap();
    eventually("the adopted container's log lines", || {
        let (log, port) = (kept.log_file.clone(), port);
        async move {
            let _ = port;
            fs::read_to_string(&log).ok().filter(|t| t.contains("tick"))
        }
    })
    .await;
    rt.stop(&kept.id, Duration::from_secs(2)).await.unwrap();
    assert!(inspect(&container_name(&rt, &kept.id)).await.is_none());
}

#[tokio::test]
async fn kill_orphan_stops_a_container_by_its_pid() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "orphan", 1, "").await;
    let s = spec(&owner, "orphan", &image, "exec sleep 600", free_port());
    let info = rt.start(s.clone()).await.unwrap();
    drop(rt);
    let rt = DockerRuntime::connect(Some(Path::new(SOCKET)), &owner.name())
        .await
        .unwrap();
    let (pid, start) = (info.pid.unwrap(), info.pid_start.unwrap());
    assert!(!rt
        .kill_orphan_container(pid, start + 1, Duration::ZERO)
        .await
        .unwrap());
    assert!(rt
        .kill_orphan_container(pid, start, Duration::ZERO)
        .await
        .unwrap());
    assert!(inspect(&container_name(&rt, &s.id)).await.is_none());
}

#[tokio::test]
async fn a_crashing_container_is_reported() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(
        &rt,
        &owner,
        "crash",
        1,
        "CMD [\"/bin/sh\",\"-c\",\"echo boom; exit 3\"]",
    )
    .await;
    let mut events = rt.subscribe();
    let s = spec(&owner, "crash", &image, "", free_port());
    rt.start(s.clone()).await.unwrap();
    let exited = next_event(&mut events, |e| matches!(e, Event::Exited { .. })).await;
    assert!(
        matches!(&exited, Event::Exited { status, restarting: true, .. } if status == "exit code 3"),
        "{exited:?}"
    );
    next_event(&mut events, |e| matches!(e, Event::Crashing { .. })).await;
    eventually("state Crashing", || async {
        matches!(
            rt.state(&s.id),
            Some(InstanceState::Crashing { ref last_exit, restarts }) if last_exit == "exit code 3" && restarts >= 5
        )
        .then_some(())
    })
    .await;
    // Each run's output once: the follower follows again after every restart and skips
    // what it wrote already.
    let booms = eventually("a line per run in the log", || async {
        let n = fs::read_to_string(&s.log_file)
            .unwrap_or_default()
            .matches("boom")
            .count();
        (n >= 3).then_some(n)
    })
    .await;
    let runs = inspect(&container_name(&rt, &s.id))
        .await
        .unwrap()
        .restart_count
        .unwrap()
        + 1;
    assert!(booms as i64 <= runs, "{booms} lines for {runs} runs");
    rt.stop(&s.id, Duration::ZERO).await.unwrap();
    assert!(inspect(&container_name(&rt, &s.id)).await.is_none());
}

#[tokio::test]
async fn a_single_exposed_port_gets_the_traffic_and_port_env() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(
        &rt,
        &owner,
        "exposed",
        1,
        "EXPOSE 8080\nCMD [\"/bin/sh\",\"-c\",\"mkdir -p /www && echo inside $PORT > /www/index.html && exec httpd -f -p 8080 -h /www\"]",
    )
    .await;
    let port = free_port();
    let s = spec(&owner, "exposed", &image, "", port);
    rt.start(s.clone()).await.unwrap();
    let body = wait_get(port).await;
    assert!(body.contains("inside 8080"), "{body}");
    let c = inspect(&container_name(&rt, &s.id)).await.unwrap();
    let env = c.config.unwrap().env.unwrap();
    assert!(env.contains(&"PORT=8080".to_string()), "{env:?}");
    assert!(!env.contains(&format!("PORT={port}")), "{env:?}");
    rt.stop(&s.id, Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn run_task_is_refused() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let task = berth_runtime::TaskSpec {
        id: "t".into(),
        command: "true".into(),
        dir: owner.path().to_path_buf(),
        env: vec![],
        log_file: owner.path().join("t.log"),
        timeout: Duration::from_secs(1),
        limits: Limits::default(),
        user: None,
        jail: None,
    };
    let err = rt.run_task(task).await.err().unwrap();
    assert!(err.to_string().contains("process runtime"), "{err}");
}

#[tokio::test]
async fn multi_runtime_routes_by_image_and_merges_events() {
    let owner = Owner::new();
    let Some(docker_rt) = connect(&owner).await else {
        return;
    };
    let image = build(&docker_rt, &owner, "multi", 1, "").await;
    let process = berth_runtime::ProcessRuntime::new(berth_runtime::ProcessOptions {
        owner: owner.name(),
        ..Default::default()
    });
    let multi = berth_runtime::MultiRuntime::new(process.clone(), Some(docker_rt.clone()));
    assert_eq!(multi.name(), "multi");
    let mut events = multi.subscribe();
    let port = free_port();
    let container = spec(&owner, "multic", &image, HTTPD, port);
    let mut proc_spec = spec(&owner, "multip", "", "exec sleep 600", free_port());
    proc_spec.image = None;
    multi.start(container.clone()).await.unwrap();
    multi.start(proc_spec.clone()).await.unwrap();
    for id in [&container.id, &proc_spec.id] {
        next_event(
            &mut events,
            |e| matches!(e, Event::Started { id: i, .. } if i == id),
        )
        .await;
        assert!(matches!(
            multi.state(id),
            Some(InstanceState::Running { .. })
        ));
    }
    assert!(docker_rt.state(&container.id).is_some());
    assert!(process.state(&container.id).is_none());
    assert!(process.state(&proc_spec.id).is_some());
    wait_get(port).await;
    multi
        .stop(&container.id, Duration::from_secs(1))
        .await
        .unwrap();
    multi
        .stop(&proc_spec.id, Duration::from_secs(1))
        .await
        .unwrap();
    multi
        .stop("unknown.id", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(multi.state(&container.id), None);
    assert_eq!(multi.state(&proc_spec.id), None);
    assert!(inspect(&container_name(&docker_rt, &container.id))
        .await
        .is_none());

    let no_docker = berth_runtime::MultiRuntime::new(process, None);
    let err = no_docker.start(container).await.err().unwrap();
    assert!(err.to_string().contains("no Docker daemon"), "{err}");
}

#[tokio::test]
async fn the_images_healthcheck_counts() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let sick = build(
        &rt,
        &owner,
        "sick",
        1,
        "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false\nCMD [\"/bin/sh\",\"-c\",\"exec sleep 600\"]",
    )
    .await;
    let well = build(
        &rt,
        &owner,
        "well",
        1,
        "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD true\nCMD [\"/bin/sh\",\"-c\",\"exec sleep 600\"]",
    )
    .await;
    let plain = build(&rt, &owner, "plain", 1, "").await;
    let mut events = rt.subscribe();
    let sick = spec(&owner, "sick", &sick, "", free_port());
    let well = spec(&owner, "well", &well, "", free_port());
    let plain = spec(&owner, "plain", &plain, "exec sleep 600", free_port());
    for s in [&sick, &well, &plain] {
        rt.start(s.clone()).await.unwrap();
    }
    next_event(
        &mut events,
        |e| matches!(e, Event::Crashing { id, .. } if *id == sick.id),
    )
    .await;
    assert_eq!(rt.health(&sick.id), Some("unhealthy"));
    assert!(matches!(
        rt.state(&sick.id),
        Some(InstanceState::Crashing { last_exit, .. }) if last_exit == "unhealthy (HEALTHCHECK)"
    ));
    eventually("a healthy verdict", || async {
        (rt.health(&well.id) == Some("healthy")).then_some(())
    })
    .await;
    assert!(matches!(
        rt.state(&well.id),
        Some(InstanceState::Running { .. })
    ));
    assert_eq!(rt.health(&plain.id), None);
    for s in [&sick, &well, &plain] {
        rt.stop(&s.id, Duration::ZERO).await.unwrap();
    }
}

/// A service image: appends a fresh line to /data/log at each start, then serves the file to
/// every connection on 6379. With `FAIL=1` it exits at once (code 3).
const SERVICE_CMD: &str = "CMD [\"/bin/sh\",\"-c\",\"[ ${FAIL:-0} = 1 ] && { echo failing; exit 3; }; mkdir -p /data; cat /proc/sys/kernel/random/uuid >> /data/log; echo started $(wc -l < /data/log); exec nc -ll -p 6379 -e cat /data/log\"]";

fn service(owner: &Owner, app: &str, name: &str, image: &str) -> ServiceRun {
    ServiceRun {
        app: app.to_string(),
        name: name.to_string(),
        image: image.to_string(),
        env: vec![("V".into(), "1".into())],
        volumes: vec![("data".into(), "/data".into())],
        port: Some(6379),
        healthcheck: None,
        limits: Limits::default(),
        log_file: owner.path().join(format!("svc-{app}-{name}.log")),
        container: Default::default(),
        restart: Default::default(),
    }
}

/// Everything 127.0.0.1:port sends before closing, if it sent anything.
fn read_port(port: u16) -> Option<String> {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

/// The lines the service serves through its published port, once it serves `n` of them.
async fn served_lines(port: u16, n: usize) -> Vec<String> {
    eventually("the service's lines on its host port", || async move {
        let text = tokio::task::spawn_blocking(move || read_port(port))
            .await
            .unwrap()?;
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

async fn log_containing(path: &Path, needle: &str) -> String {
    eventually(&format!("{needle:?} in {}", path.display()), || async {
        fs::read_to_string(path).ok().filter(|t| t.contains(needle))
    })
    .await
}

#[tokio::test]
async fn a_service_keeps_its_data_and_is_reached_only_from_its_own_app() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "shop", 1, SERVICE_CMD).await;
    let ready = Duration::from_secs(30);
    let mut db = service(&owner, "shop", "db", &image);
    let first = rt.ensure_service(&db, ready).await.unwrap();
    assert_eq!(first.name, "db");
    assert_eq!(first.state, "running");
    assert_eq!(first.health, None);
    let host_port = first.host_port.expect("published on the host");
    let lines = served_lines(host_port, 1).await;
    let line = lines[0].clone();
    log_containing(&db.log_file, "started 1").await;

    let name = format!("{}-svc-shop_db", rt.prefix());
    let c = inspect(&name).await.unwrap();
    assert_eq!(c.id.as_deref(), Some(first.container.as_str()));
    let labels = c.config.unwrap().labels.unwrap();
    assert_eq!(labels["berth.owner"], owner.name());
    assert_eq!(labels["berth.app"], "shop");
    assert_eq!(labels["berth.service"], "db");
    assert!(labels.contains_key("berth.service-hash"));
    assert!(!labels.contains_key("berth.instance"));
    let host = c.host_config.unwrap();
    assert_eq!(
        host.restart_policy.unwrap().name,
        Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    let ports = c.network_settings.as_ref().unwrap().ports.clone().unwrap();
    let bound: Vec<_> = ports.values().flatten().flatten().collect();
    assert_eq!(bound.len(), 1, "{ports:?}");
    assert_eq!(bound[0].host_ip.as_deref(), Some("127.0.0.1"));
    let networks = c.network_settings.unwrap().networks.unwrap();
    let shop_net = rt.app_network("shop");
    assert_eq!(networks.keys().collect::<Vec<_>>(), vec![&shop_net]);
    let service_ip = networks[&shop_net].ip_address.clone().unwrap();
    assert!(networks[&shop_net]
        .aliases
        .as_ref()
        .unwrap()
        .contains(&"db".to_string()));

    // The same definition: the same container, not restarted.
    let again = rt.ensure_service(&db, ready).await.unwrap();
    assert_eq!(again.container, first.container);
    assert_eq!(served_lines(host_port, 1).await, vec![line.clone()]);
    // Services are not instances: a sweep leaves them alone.
    assert_eq!(rt.sweep(Duration::from_secs(1)).await.unwrap(), 0);
    assert!(inspect(&name).await.is_some());

    // A changed definition: a new container on the same volume.
    db.env = vec![("V".into(), "2".into())];
    let changed = rt.ensure_service(&db, ready).await.unwrap();
    assert_ne!(changed.container, first.container);
    assert!(
        inspect(&first.container).await.is_none(),
        "the old one is gone"
    );
    let port2 = changed.host_port.unwrap();
    let lines = served_lines(port2, 2).await;
    assert_eq!(lines[0], line, "the volume kept the first run's line");
    assert_ne!(lines[1], line);
    log_containing(&db.log_file, "started 2").await;

    // An instance of the app reaches it by its alias ...
    let mine = InstanceSpec {
        id: "shop.v1.web.1".into(),
        command: "until nc db 6379; do sleep 0.2; done; echo REACHED; exec sleep 600".into(),
        ..spec(&owner, "shop", &image, "", free_port())
    };
    // ... another app's instance neither by name nor by address.
    let theirs = InstanceSpec {
        id: "other.v1.web.1".into(),
        command: format!(
            "nc -w 2 db 6379 || echo NO-NAME; nc -w 2 {service_ip} 6379 || echo NO-ROUTE; \
             echo DONE; exec sleep 600"
        ),
        log_file: owner.path().join("other.log"),
        ..spec(&owner, "other", &image, "", free_port())
    };
    rt.start(mine.clone()).await.unwrap();
    rt.start(theirs.clone()).await.unwrap();
    let out = log_containing(&mine.log_file, "REACHED").await;
    assert!(out.contains(&line), "{out}");
    let out = log_containing(&theirs.log_file, "DONE").await;
    assert!(out.contains("NO-NAME") && out.contains("NO-ROUTE"), "{out}");
    assert!(!out.contains(&line), "{out}");
    let other_c = inspect(&container_name(&rt, &theirs.id)).await.unwrap();
    let other_nets = other_c.network_settings.unwrap().networks.unwrap();
    assert_eq!(
        other_nets.keys().collect::<Vec<_>>(),
        vec![&rt.app_network("other")]
    );

    let listed = rt.services("shop").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].container, changed.container);
    assert_eq!(listed[0].host_port, Some(port2));
    assert!(rt.services("other").await.unwrap().is_empty());

    // The app is destroyed: instances, services, volumes, network.
    rt.stop(&mine.id, Duration::ZERO).await.unwrap();
    rt.stop(&theirs.id, Duration::ZERO).await.unwrap();
    let volume = format!("{}-shop_data", rt.prefix());
    let docker = docker().await;
    assert!(docker.inspect_volume(&volume).await.is_ok());
    assert_eq!(rt.remove_services("shop", &[], true).await.unwrap(), 1);
    assert!(inspect(&name).await.is_none());
    assert!(
        docker.inspect_volume(&volume).await.is_err(),
        "volume removed"
    );
    assert!(rt.services("shop").await.unwrap().is_empty());
    for app in ["shop", "other"] {
        rt.remove_app_network(app).await;
        assert!(docker
            .inspect_network(&rt.app_network(app), None::<InspectNetworkOptions>)
            .await
            .is_err());
    }
    // Twice is fine.
    rt.remove_app_network("shop").await;
}

#[tokio::test]
async fn a_service_must_run_and_pass_its_healthcheck() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "hc", 1, SERVICE_CMD).await;
    let ready = Duration::from_secs(30);
    let ms = Duration::from_millis;

    let mut well = service(&owner, "hc", "well", &image);
    well.healthcheck = Some(ServiceHealthcheck {
        test: vec!["CMD-SHELL".into(), "test -s /data/log".into()],
        interval: ms(200),
        timeout: ms(2000),
        retries: 3,
        start_period: ms(0),
    });
    let info = rt.ensure_service(&well, ready).await.unwrap();
    assert_eq!(info.health, Some("healthy"));

    let mut sick = service(&owner, "hc", "sick", &image);
    sick.volumes.clear();
    sick.healthcheck = Some(ServiceHealthcheck {
        test: vec!["false".into()],
        interval: ms(200),
        timeout: ms(2000),
        retries: 1,
        start_period: ms(0),
    });
    let err = rt.ensure_service(&sick, ready).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("service sick of app hc"), "{msg}");
    assert!(msg.contains("unhealthy"), "{msg}");
    assert!(msg.contains("started 1"), "the tail of its output: {msg}");

    let mut crash = service(&owner, "hc", "crash", &image);
    crash.env.push(("FAIL".into(), "1".into()));
    let err = rt.ensure_service(&crash, ready).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("service crash of app hc"), "{msg}");
    // The code when Docker has not restarted it yet.
    assert!(
        msg.contains("exited (exit code 3)") || msg.contains("exited and was restarted"),
        "{msg}"
    );
    assert!(msg.contains("failing"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");

    let mut names: Vec<String> = rt
        .services("hc")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(names, ["crash", "sick", "well"]);
    assert_eq!(
        rt.remove_services("hc", &["well".to_string()], false)
            .await
            .unwrap(),
        2
    );
    let left = rt.services("hc").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, "well");
    assert_eq!(left[0].state, "running");
    let volume = format!("{}-hc_data", rt.prefix());
    let docker = docker().await;
    assert!(docker.inspect_volume(&volume).await.is_ok(), "volumes kept");
    assert_eq!(rt.remove_services("hc", &[], true).await.unwrap(), 1);
    assert!(docker.inspect_volume(&volume).await.is_err());

    // Names that would not make a DNS alias are refused before anything happens.
    let mut bad = service(&owner, "hc", "Bad.Name", &image);
    bad.volumes.clear();
    assert!(rt.ensure_service(&bad, ready).await.is_err());
    rt.remove_app_network("hc").await;
}

#[tokio::test]
async fn container_port_gets_the_traffic_and_port_env() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "cport", 1, "EXPOSE 9999").await;
    let port = free_port();
    let s = InstanceSpec {
        container_port: Some(8080),
        ..spec(
            &owner,
            "cport",
            &image,
            "mkdir -p /www && echo inside $PORT > /www/index.html && exec httpd -f -p $PORT -h /www",
            port,
        )
    };
    rt.start(s.clone()).await.unwrap();
    let body = wait_get(port).await;
    assert!(body.contains("inside 8080"), "{body}");
    let c = inspect(&container_name(&rt, &s.id)).await.unwrap();
    let env = c.config.unwrap().env.unwrap();
    assert!(env.contains(&"PORT=8080".to_string()), "{env:?}");
    assert!(!env.contains(&format!("PORT={port}")), "{env:?}");
    let bindings = c.host_config.unwrap().port_bindings.unwrap();
    let binding = bindings["8080/tcp"].clone().unwrap();
    assert_eq!(binding[0].host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        binding[0].host_port.as_deref(),
        Some(port.to_string().as_str())
    );
    rt.stop(&s.id, Duration::from_secs(1)).await.unwrap();
    rt.remove_app_network("cport").await;
}

/// Apps whose names start alike (`sq` + service `x-db`, `sq-x` + service `db`) never get the
/// same container or volume name: one cannot take the other's first and make its deploys fail.
/// A volume of the old naming (`<prefix>-<app>-<volume>`) that is the app's own keeps serving
/// it (its data).
#[tokio::test]
async fn service_and_volume_names_of_two_apps_never_meet_and_old_volumes_are_kept() {
    let owner = Owner::new();
    let Some(rt) = connect(&owner).await else {
        return;
    };
    let image = build(&rt, &owner, "sq", 1, SERVICE_CMD).await;
    let ready = Duration::from_secs(30);
    let mut first = service(&owner, "sq", "x-db", &image);
    first.volumes = vec![("x-data".into(), "/data".into())];
    rt.ensure_service(&first, ready).await.unwrap();
    let second = service(&owner, "sq-x", "db", &image);
    rt.ensure_service(&second, ready).await.unwrap();
    assert_eq!(rt.services("sq").await.unwrap().len(), 1);
    assert_eq!(rt.services("sq-x").await.unwrap().len(), 1);

    // An old-named volume of app `lg`, with its data, is the one its service mounts.
    let docker = docker().await;
    let legacy = format!("{}-lg-data", rt.prefix());
    docker
        .create_volume(bollard::models::VolumeCreateOptions {
            name: Some(legacy.clone()),
            labels: Some(HashMap::from([
                ("berth.owner".to_string(), owner.name()),
                ("berth.app".to_string(), "lg".to_string()),
            ])),
            ..Default::default()
        })
        .await
        .unwrap();
    let lg = service(&owner, "lg", "db", &image);
    let info = rt.ensure_service(&lg, ready).await.unwrap();
    let c = docker
        .inspect_container(&info.container, None::<InspectContainerOptions>)
        .await
        .unwrap();
    let mounts: Vec<String> = c
        .mounts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.name)
        .collect();
    assert_eq!(mounts, vec![legacy], "the old volume is kept");
    for app in ["sq", "sq-x", "lg"] {
        rt.remove_services(app, &[], true).await.unwrap();
    }
    remove_everything_of(&owner.name()).await;
}
