//! Accessory services (the docker-compose role): long-lived containers of an app — a
//! database, a cache — that outlive its deploys. They are not instances: no instance label, so
//! [`Runtime::sweep`] and the tracker never touch them; the engine says which should exist
//! ([`DockerRuntime::ensure_service`], [`DockerRuntime::remove_services`]).
//!
//! A service container is `<prefix>-svc-<app>-<name>`, on the app's network with the DNS
//! alias `<name>` (the app's containers reach it as `<name>:<port>`), its port also published
//! on `127.0.0.1:<ephemeral>` for apps running as host processes. Its definition is hashed into
//! a label: the same definition on a running container keeps it untouched; any change replaces
//! the container, never its named volumes (`<prefix>-<app>-<volume>`).

use bollard::models::{
    EndpointSettings, HealthConfig, Mount, MountTypeEnum, NetworkingConfig, VolumeCreateOptions,
};
use bollard::query_parameters::{InspectContainerOptions, ListVolumesOptions, RemoveVolumeOptions};

use super::{
    docker_err, fnv1a, lock, one_line, status_of, unix_now, DockerRuntime, Inner, Managed, Track,
    View, APP_LABEL, OWNER_LABEL, SERVICE_HASH_LABEL, SERVICE_LABEL, SERVICE_STOP_GRACE,
};
use super::{
    Arc, AtomicBool, ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum,
    Duration, HashMap, HostConfig, Instant, ListContainersOptions, Mutex, Ordering, PathBuf,
    PortBinding, RestartPolicy, RestartPolicyNameEnum, StreamExt,
};
use crate::{ContainerConfig, Limits, RuntimeError};

/// How often readiness is checked while a service starts.
const READY_POLL: Duration = Duration::from_millis(200);
/// How long a new service without a healthcheck must keep running (same process, no
/// restart) to count as started: one that exits at once is an error, not a success.
const SETTLE: Duration = Duration::from_secs(1);
/// Lines of a failed service's output quoted in the error.
const TAIL_LINES: usize = 10;
/// Bound on reading that tail.
const TAIL_TIMEOUT: Duration = Duration::from_secs(5);

/// What an app's accessory service runs. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRun {
    pub app: String,
    /// `[a-z0-9][a-z0-9_-]*`: the container's DNS alias on the app's network.
    pub name: String,
    /// A local image (tag or id); its CMD/ENTRYPOINT runs.
    pub image: String,
    pub env: Vec<(String, String)>,
    /// (volume name, absolute path inside): the named volume `<prefix>-<app>-<volume>`,
    /// created on first use and kept across replacements.
    pub volumes: Vec<(String, String)>,
    /// The TCP port it listens on inside; also published on 127.0.0.1 (`host_port`).
    pub port: Option<u16>,
    pub healthcheck: Option<ServiceHealthcheck>,
    pub limits: Limits,
    /// Its output is appended here.
    pub log_file: PathBuf,
    /// How it runs its image, where the app overrides it.
    pub container: ContainerConfig,
    /// When Docker restarts it.
    pub restart: ServiceRestart,
}

/// How Docker checks that a service is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealthcheck {
    /// As compose and Docker spell it (`["CMD", …]`, `["CMD-SHELL", "…"]`); a list without
    /// that first word is a `CMD`.
    pub test: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    /// Failures in this first while do not count.
    pub start_period: Duration,
}

/// When Docker restarts a service container (a compose file's `restart`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceRestart {
    /// Whenever it stops, unless berth stopped it.
    #[default]
    UnlessStopped,
    Always,
    /// When it exits with an error, at most this many times (`None`: no limit).
    OnFailure(Option<u32>),
    /// Never (a one-off container).
    No,
}

/// A service container as the daemon sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceInfo {
    pub name: String,
    /// The container id.
    pub container: String,
    /// Where its port is published on 127.0.0.1 (Docker's pick; it may change when the
    /// container restarts after a daemon restart).
    pub host_port: Option<u16>,
    /// Docker's status: `"running"`, `"restarting"`, `"exited"`, …
    pub state: String,
    /// The healthcheck's verdict (`"starting"`, `"healthy"`, `"unhealthy"`); `None` without one.
    pub health: Option<&'static str>,
}

impl DockerRuntime {
    /// Makes the service run with exactly this definition (see the module docs): kept as is
    /// when a running container has the same definition, else the old container is stopped
    /// and removed (volumes stay) and a new one started. Returns once it runs and, with a
    /// healthcheck, once Docker calls it healthy, within `ready_timeout`; a service that exits
    /// or turns unhealthy is an error naming it, with the tail of its output.
    pub async fn ensure_service(
        &self,
        svc: &ServiceRun,
        ready_timeout: Duration,
    ) -> Result<ServiceInfo, RuntimeError> {
        check_service(svc)?;
        let inner = &self.inner;
        let docker = &inner.docker;
        let what = format!("service {} of app {}", svc.name, svc.app);
        let image = docker
            .inspect_image(&svc.image)
            .await
            .map_err(|e| docker_err(&format!("{what}: no image {}", svc.image), e))?;
        // The image's id, not its tag: a rebuilt `build:` image is a new definition.
        let image_id = image.id.unwrap_or_else(|| svc.image.clone());
        let hash = definition_hash(svc, &image_id);
        let name = inner.service_container(&svc.app, &svc.name);
        let network = inner.ensure_network(&svc.app).await?;
        // A container of the old naming that is this service's gives way to the new one (its
        // data is in its volumes).
        let legacy = inner.legacy_service_container(&svc.app, &svc.name);
        if let Some(c) = inner.inspect(&legacy).await? {
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            if labels.get(OWNER_LABEL) == Some(&inner.owner)
                && labels.get(APP_LABEL) == Some(&svc.app)
                && labels.get(SERVICE_LABEL) == Some(&svc.name)
            {
                inner.unfollow_service(&legacy).await;
                inner.stop_and_remove(&legacy, SERVICE_STOP_GRACE).await?;
            }
        }

        let mut kept = None;
        if let Some(c) = inner.inspect(&name).await? {
            let labels = c
                .config
                .as_ref()
                .and_then(|c| c.labels.clone())
                .unwrap_or_default();
            if labels.get(OWNER_LABEL) != Some(&inner.owner)
                || labels.get(SERVICE_LABEL) != Some(&svc.name)
            {
                return Err(RuntimeError::Docker(format!(
                    "{what}: a container named {name} exists and is not this berth's"
                )));
            }
            let running = View::of(&c).status == ContainerStateStatusEnum::RUNNING;
            if running && labels.get(SERVICE_HASH_LABEL) == Some(&hash) {
                kept = c.id.clone();
            }
        }
        let fresh = kept.is_none();
        let container = match kept {
            Some(id) => {
                // After a berth restart nobody follows its output yet: from now on.
                inner.follow_service(&name, &id, svc, unix_now());
                id
            }
            None => {
                inner.unfollow_service(&name).await;
                inner.stop_and_remove(&name, SERVICE_STOP_GRACE).await?;
                let mut mounts = Vec::new();
                for (volume, target) in &svc.volumes {
                    mounts.push(Mount {
                        target: Some(target.clone()),
                        source: Some(inner.ensure_volume(&svc.app, volume).await?),
                        typ: Some(MountTypeEnum::VOLUME),
                        ..Default::default()
                    });
                }
                let body = service_body(inner, svc, &image_id, &hash, &network, mounts);
                let created = inner
                    .create_on_network(&name, body, &svc.app, &network)
                    .await
                    .map_err(|e| docker_err(&format!("cannot create {what}"), e))?;
                if let Err(e) = docker
                    .start_container(
                        &created.id,
                        None::<bollard::query_parameters::StartContainerOptions>,
                    )
                    .await
                {
                    let _ = inner.stop_and_remove(&created.id, Duration::ZERO).await;
                    return Err(docker_err(&format!("cannot start {what}"), e));
                }
                tracing::info!(app = %svc.app, service = %svc.name, container = %created.id, "service started");
                inner.follow_service(&name, &created.id, svc, 0);
                created.id
            }
        };
        inner
            .wait_service(&container, &svc.name, &what, ready_timeout, fresh)
            .await
    }

    /// The app's service containers, running or not, by name.
    pub async fn services(&self, app: &str) -> Result<Vec<ServiceInfo>, RuntimeError> {
        let mut out = Vec::new();
        for (name, id) in self.inner.list_services(app).await? {
            if let Some(c) = self.inner.inspect(&id).await? {
                out.push(info_of(&c, &name));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the app's named volumes (the data of its services).
    pub async fn volumes(&self, app: &str) -> Result<Vec<String>, RuntimeError> {
        self.inner.app_volumes(app).await
    }

    /// Stops and removes the app's services not named in `keep`; with `volumes` (the app is
    /// destroyed) also the app's named volumes. Returns how many containers were removed.
    pub async fn remove_services(
        &self,
        app: &str,
        keep: &[String],
        volumes: bool,
    ) -> Result<usize, RuntimeError> {
        let inner = &self.inner;
        let mut removed = 0;
        for (name, id) in inner.list_services(app).await? {
            if keep.contains(&name) {
                continue;
            }
            let container_name = inner.service_container(app, &name);
            inner.unfollow_service(&container_name).await;
            inner.stop_and_remove(&id, SERVICE_STOP_GRACE).await?;
            tracing::info!(%app, service = %name, "service removed");
            removed += 1;
        }
        if volumes {
            inner.remove_volumes(app).await?;
        }
        Ok(removed)
    }
}

impl Inner {
    /// `<prefix>-svc-<app>_<service>`: an app name has no `_`, so no other app's service
    /// (`shop` + `x-db` against `shop-x` + `db`) can take this name first.
    fn service_container(&self, app: &str, name: &str) -> String {
        format!("{}-svc-{app}_{name}", self.prefix)
    }

    /// The name berth gave service containers before ([`Inner::service_container`]).
    fn legacy_service_container(&self, app: &str, name: &str) -> String {
        format!("{}-svc-{app}-{name}", self.prefix)
    }

    /// `<prefix>-<app>_<volume>` (see [`Inner::service_container`] for the `_`).
    fn volume_name(&self, app: &str, volume: &str) -> String {
        format!("{}-{app}_{volume}", self.prefix)
    }

    /// The name berth gave volumes before: one of this app's keeps it (its data).
    fn legacy_volume_name(&self, app: &str, volume: &str) -> String {
        format!("{}-{app}-{volume}", self.prefix)
    }

    /// Inspects a container; `None` when there is none of that name or id.
    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        match self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_err(&format!("cannot inspect {name}"), e)),
        }
    }

    /// (service name, container id) of the app's service containers.
    async fn list_services(&self, app: &str) -> Result<Vec<(String, String)>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{OWNER_LABEL}={}", self.owner),
                format!("{APP_LABEL}={app}"),
                SERVICE_LABEL.to_string(),
            ],
        )]);
        let listed = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| docker_err("cannot list containers", e))?;
        let mut out = Vec::new();
        for c in listed {
            let (Some(id), Some(labels)) = (c.id, c.labels) else {
                continue;
            };
            let Some(name) = labels.get(SERVICE_LABEL) else {
                continue;
            };
            // Labels are inherited by containers of images built from ours: the name says
            // it is ours.
            let ours = [
                format!("/{}", self.service_container(app, name)),
                format!("/{}", self.legacy_service_container(app, name)),
            ];
            if c.names.is_some_and(|n| n.iter().any(|n| ours.contains(n))) {
                out.push((name.clone(), id));
            }
        }
        Ok(out)
    }

    /// Creates the named volume (or finds it) and checks that it is this app's.
    pub(super) async fn ensure_volume(
        &self,
        app: &str,
        volume: &str,
    ) -> Result<String, RuntimeError> {
        // A volume of the old naming that is this app's holds its data: it stays in use.
        let legacy = self.legacy_volume_name(app, volume);
        if let Ok(v) = self.docker.inspect_volume(&legacy).await {
            if v.labels.get(OWNER_LABEL) == Some(&self.owner)
                && v.labels.get(APP_LABEL).map(String::as_str) == Some(app)
            {
                return Ok(legacy);
            }
        }
        let name = self.volume_name(app, volume);
        let created = self
            .docker
            .create_volume(VolumeCreateOptions {
                name: Some(name.clone()),
                labels: Some(HashMap::from([
                    (OWNER_LABEL.to_string(), self.owner.clone()),
                    (APP_LABEL.to_string(), app.to_string()),
                ])),
                ..Default::default()
            })
            .await
            .map_err(|e| docker_err(&format!("cannot create volume {name}"), e))?;
        // Creating an existing volume returns it as it is: `a-b` + `c` and `a` + `b-c` must
        // never share data.
        if created.labels.get(OWNER_LABEL) != Some(&self.owner)
            || created.labels.get(APP_LABEL).map(String::as_str) != Some(app)
        {
            return Err(RuntimeError::Docker(format!(
                "volume {name} exists and belongs to another app (or not to this berth)"
            )));
        }
        Ok(name)
    }

    /// The names of the app's named volumes (this berth's, labelled with the app).
    async fn app_volumes(&self, app: &str) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{OWNER_LABEL}={}", self.owner),
                format!("{APP_LABEL}={app}"),
            ],
        )]);
        let listed = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| docker_err("cannot list volumes", e))?;
        // Named as berth names them (now, or before: `volume_name`, `legacy_volume_name`).
        let ours = [
            format!("{}-{app}_", self.prefix),
            format!("{}-{app}-", self.prefix),
        ];
        let mut names: Vec<String> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| {
                ours.iter().any(|o| v.name.starts_with(o))
                    && v.labels.get(OWNER_LABEL) == Some(&self.owner)
                    && v.labels.get(APP_LABEL).map(String::as_str) == Some(app)
            })
            .map(|v| v.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes the app's named volumes (one still in use stays, with a warning).
    async fn remove_volumes(&self, app: &str) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for name in self.app_volumes(app).await? {
            match self
                .docker
                .remove_volume(&name, None::<RemoveVolumeOptions>)
                .await
            {
                Ok(()) => removed += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) if status_of(&e) == Some(409) => {
                    tracing::warn!(volume = %name, "volume still in use, kept: {}", one_line(&e.to_string()));
                }
                Err(e) => return Err(docker_err(&format!("cannot remove volume {name}"), e)),
            }
        }
        Ok(removed)
    }

    /// Follows the output of service container `container` (named `name`) into its log file,
    /// unless that container is followed already.
    fn follow_service(self: &Arc<Self>, name: &str, container: &str, svc: &ServiceRun, since: i64) {
        let mut services = lock(&self.services);
        if let Some(old) = services.get(name) {
            let alive = lock(&old.follower)
                .as_ref()
                .is_some_and(|f| !f.is_finished());
            if old.container == container && alive {
                return;
            }
            old.stopping.store(true, Ordering::SeqCst);
            if let Some(f) = lock(&old.follower).take() {
                f.abort();
            }
        }
        let m = Arc::new(Managed {
            id: format!("{}/{}", svc.app, svc.name),
            container: container.to_string(),
            restart: true,
            log_file: svc.log_file.clone(),
            track: Mutex::new(Track::new(None, 0)),
            stopping: AtomicBool::new(false),
            follower: Mutex::new(None),
        });
        let follower = tokio::spawn(super::follow_logs(self.clone(), m.clone(), since));
        *lock(&m.follower) = Some(follower);
        services.insert(name.to_string(), m);
    }

    /// Stops following service container `name`: its follower writes what is left once the
    /// container is gone (a moment at most), then ends.
    async fn unfollow_service(&self, name: &str) {
        let Some(m) = lock(&self.services).remove(name) else {
            return;
        };
        m.stopping.store(true, Ordering::SeqCst);
        let follower = lock(&m.follower).take();
        if let Some(follower) = follower {
            // It ends with the container; the caller removes that next, so do not wait here.
            tokio::spawn(async move {
                let abort = follower.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2) + SERVICE_STOP_GRACE, follower)
                    .await
                    .is_err()
                {
                    abort.abort();
                }
            });
        }
    }

    /// Waits until the container runs (a `fresh` one for [`SETTLE`]) and, with a healthcheck,
    /// is healthy.
    async fn wait_service(
        &self,
        container: &str,
        name: &str,
        what: &str,
        timeout: Duration,
        fresh: bool,
    ) -> Result<ServiceInfo, RuntimeError> {
        let deadline = Instant::now() + timeout;
        let settle = SETTLE.min(timeout / 2);
        let mut restarts = None;
        // (pid, first seen running) of the current run.
        let mut running: Option<(Option<u32>, Instant)> = None;
        loop {
            let Some(c) = self.inspect(container).await? else {
                return Err(RuntimeError::Docker(format!(
                    "{what} is gone (its container was removed)"
                )));
            };
            let view = View::of(&c);
            let baseline = *restarts.get_or_insert(view.restart_count);
            let failed = match view.status {
                // Running again after a restart: its exit code is the new run's (0), not
                // the one that ended.
                ContainerStateStatusEnum::RUNNING if view.restart_count > baseline => {
                    Some("exited and was restarted".to_string())
                }
                _ if view.restart_count > baseline => {
                    Some(format!("exited ({}) and is restarting", view.last_exit()))
                }
                ContainerStateStatusEnum::RUNNING => match view.health {
                    Some("healthy") => return Ok(info_of(&c, name)),
                    None => {
                        let since = match running {
                            Some((pid, since)) if pid == view.pid => since,
                            _ => running.insert((view.pid, Instant::now())).1,
                        };
                        if !fresh || since.elapsed() >= settle {
                            return Ok(info_of(&c, name));
                        }
                        None
                    }
                    Some("unhealthy") => {
                        Some(format!("is unhealthy (healthcheck: {})", health_output(&c)))
                    }
                    _ => None,
                },
                ContainerStateStatusEnum::RESTARTING => {
                    Some(format!("exited ({}) and is restarting", view.last_exit()))
                }
                ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD => {
                    Some(format!("exited ({})", view.last_exit()))
                }
                _ => None,
            };
            let failed = failed.or_else(|| {
                (Instant::now() >= deadline).then(|| match view.health {
                    Some(_) => format!(
                        "is not healthy after {}s (healthcheck: {})",
                        timeout.as_secs(),
                        health_output(&c)
                    ),
                    None => format!("is not running after {}s", timeout.as_secs()),
                })
            });
            if let Some(failed) = failed {
                let tail = self.tail(container).await;
                let tail = if tail.is_empty() {
                    "no output".to_string()
                } else {
                    format!("its last output: {tail}")
                };
                return Err(RuntimeError::Docker(format!("{what} {failed}; {tail}")));
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The container's last lines of output, on one line (`" | "` between them).
    async fn tail(&self, container: &str) -> String {
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: TAIL_LINES.to_string(),
            ..Default::default()
        };
        let mut stream = self.docker.logs(container, Some(options));
        let mut text = Vec::new();
        let read = async {
            while let Some(Ok(chunk)) = stream.next().await {
                text.extend_from_slice(&chunk.into_bytes());
            }
        };
        let _ = tokio::time::timeout(TAIL_TIMEOUT, read).await;
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let joined = lines.join(" | ");
        // The last 2000 characters.
        match joined.char_indices().rev().nth(2000) {
            Some((cut, _)) => format!("…{}", &joined[cut..]),
            None => joined,
        }
    }
}

/// Names become container and volume names and DNS aliases.
fn check_service(svc: &ServiceRun) -> Result<(), RuntimeError> {
    let bad = |why: String| Err(RuntimeError::Docker(why));
    let name_ok = |s: &str, extra: &[char]| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
            && s.len() <= 63
    };
    if !name_ok(&svc.name, &['_', '-']) {
        return bad(format!(
            "invalid service name {:?}: [a-z0-9][a-z0-9_-]*, at most 63 characters",
            svc.name
        ));
    }
    let app_ok = !svc.app.is_empty()
        && svc.app.len() <= 100
        && !svc.app.starts_with(['-', '_'])
        && svc
            .app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !app_ok {
        return bad(format!("invalid app name {:?} for a service", svc.app));
    }
    for (volume, target) in &svc.volumes {
        let vol_ok = volume
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && volume
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            && volume.len() <= 100;
        if !vol_ok {
            return bad(format!(
                "service {}: invalid volume name {volume:?}: [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                svc.name
            ));
        }
        if !target.starts_with('/') {
            return bad(format!(
                "service {}: volume {volume} must be mounted at an absolute path, not {target:?}",
                svc.name
            ));
        }
    }
    if svc.port == Some(0) {
        return bad(format!("service {}: port 0", svc.name));
    }
    Ok(())
}

/// A stable hash of everything that shapes the container (the log file does not).
fn definition_hash(svc: &ServiceRun, image_id: &str) -> String {
    let health = svc.healthcheck.as_ref().map(|h| {
        (
            &h.test,
            h.interval.as_millis(),
            h.timeout.as_millis(),
            h.retries,
            h.start_period.as_millis(),
        )
    });
    // Debug quotes and escapes every string: no two definitions print alike.
    let text = format!(
        "v1 {:?}",
        (
            &svc.app,
            &svc.name,
            image_id,
            &svc.env,
            &svc.volumes,
            svc.port,
            health,
            (svc.limits.memory, svc.limits.pids, svc.limits.cpu),
            (&svc.container, svc.restart),
        )
    );
    format!("{:016x}", fnv1a(&text))
}

fn health_test(test: &[String]) -> Vec<String> {
    match test.first().map(String::as_str) {
        Some("CMD" | "CMD-SHELL" | "NONE") => test.to_vec(),
        _ => std::iter::once("CMD".to_string())
            .chain(test.iter().cloned())
            .collect(),
    }
}

fn nanos(d: Duration) -> Option<i64> {
    i64::try_from(d.as_nanos()).ok().filter(|n| *n > 0)
}

fn service_body(
    inner: &Inner,
    svc: &ServiceRun,
    image_id: &str,
    hash: &str,
    network: &str,
    mounts: Vec<Mount>,
) -> ContainerCreateBody {
    let mut exposed_ports = HashMap::new();
    let mut port_bindings = HashMap::new();
    if let Some(port) = svc.port {
        let key = format!("{port}/tcp");
        exposed_ports.insert(key.clone(), HashMap::new());
        port_bindings.insert(
            key,
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_string()),
                // Docker picks a free ephemeral port.
                host_port: Some(String::new()),
            }]),
        );
    }
    let limits = &svc.limits;
    ContainerCreateBody {
        image: Some(image_id.to_string()),
        env: Some(svc.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        cmd: svc.container.command.clone(),
        entrypoint: svc.container.entrypoint.clone(),
        working_dir: svc.container.working_dir.clone(),
        user: svc.container.user.clone(),
        labels: Some(HashMap::from([
            (OWNER_LABEL.to_string(), inner.owner.clone()),
            (APP_LABEL.to_string(), svc.app.clone()),
            (SERVICE_LABEL.to_string(), svc.name.clone()),
            (SERVICE_HASH_LABEL.to_string(), hash.to_string()),
        ])),
        exposed_ports: Some(exposed_ports),
        healthcheck: svc.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(health_test(&h.test)),
            interval: nanos(h.interval),
            timeout: nanos(h.timeout),
            retries: Some(i64::from(h.retries)),
            start_period: nanos(h.start_period),
            ..Default::default()
        }),
        host_config: Some(super::hardening::harden(HostConfig {
            port_bindings: Some(port_bindings),
            mounts: Some(mounts),
            memory: limits.memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: limits.cpu.map(|c| (c * 1e9) as i64),
            pids_limit: super::hardening::pids(limits.pids),
            restart_policy: Some(match svc.restart {
                ServiceRestart::UnlessStopped => RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                },
                ServiceRestart::Always => RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                },
                ServiceRestart::OnFailure(n) => RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ON_FAILURE),
                    maximum_retry_count: n.map(i64::from),
                },
                ServiceRestart::No => RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                },
            }),
            log_config: Some(super::bounded_logs()),
            network_mode: Some(network.to_string()),
            init: Some(true),
            ..Default::default()
        })),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(vec![svc.name.clone()]),
                    ..Default::default()
                },
            )])),
        }),
        ..Default::default()
    }
}

fn info_of(c: &ContainerInspectResponse, name: &str) -> ServiceInfo {
    let host_port = c
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
        .into_iter()
        .flat_map(|ports| ports.values())
        .flatten()
        .flatten()
        .filter(|b| b.host_ip.as_deref() == Some("127.0.0.1"))
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()));
    ServiceInfo {
        name: name.to_string(),
        container: c.id.clone().unwrap_or_default(),
        host_port,
        state: c
            .state
            .as_ref()
            .and_then(|s| s.status)
            .map_or_else(|| "unknown".to_string(), |s| s.to_string()),
        health: View::of(c).health,
    }
}

/// The last healthcheck's output, on one line.
fn health_output(c: &ContainerInspectResponse) -> String {
    let out = c
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.log.as_ref())
        .and_then(|log| log.last())
        .map(|r| {
            let text = one_line(r.output.as_deref().unwrap_or_default());
            match r.exit_code {
                Some(code) if text.is_empty() => format!("exit code {code}"),
                Some(code) => format!("exit code {code}: {text}"),
                None => text,
            }
        })
        .unwrap_or_default();
    if out.is_empty() {
        "no result yet".to_string()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceRun {
        ServiceRun {
            app: "shop".into(),
            name: "db".into(),
            image: "img".into(),
            env: vec![("A".into(), "1".into())],
            volumes: vec![("data".into(), "/data".into())],
            port: Some(5432),
            healthcheck: None,
            limits: Limits::default(),
            log_file: PathBuf::from("/tmp/x.log"),
            container: ContainerConfig::default(),
            restart: ServiceRestart::default(),
        }
    }

    #[test]
    fn the_hash_follows_the_definition_not_the_log_file() {
        let a = svc();
        let h = definition_hash(&a, "sha256:1");
        let mut b = a.clone();
        b.log_file = PathBuf::from("/elsewhere.log");
        assert_eq!(definition_hash(&b, "sha256:1"), h);
        assert_ne!(definition_hash(&a, "sha256:2"), h);
        b.env.push(("B".into(), "2".into()));
        assert_ne!(definition_hash(&b, "sha256:1"), h);
        let mut c = a.clone();
        c.container.command = Some(vec!["--flag".into()]);
        assert_ne!(definition_hash(&c, "sha256:1"), h);
        let mut d = a.clone();
        d.restart = ServiceRestart::No;
        assert_ne!(definition_hash(&d, "sha256:1"), h);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_service(&svc()).is_ok());
        for bad in ["", "DB", "-db", "d.b", "d b"] {
            let mut s = svc();
            s.name = bad.into();
            assert!(check_service(&s).is_err(), "{bad:?}");
        }
        let mut s = svc();
        s.volumes = vec![("../x".into(), "/data".into())];
        assert!(check_service(&s).is_err());
        s.volumes = vec![("x".into(), "data".into())];
        assert!(check_service(&s).is_err());
    }

    #[test]
    fn health_tests_default_to_cmd() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(health_test(&v(&["CMD-SHELL", "x"])), v(&["CMD-SHELL", "x"]));
        assert_eq!(health_test(&v(&["pg_isready"])), v(&["CMD", "pg_isready"]));
    }
}
