//! An app's accessory services (the docker-compose role): long-lived containers beside the app
//! (a database, a cache) with named volumes, reachable from the app's containers by name on the
//! app's own network. A deploy brings them to the release's definition before its instances
//! start, in `depends_on` order: an unchanged service keeps running untouched (its data with
//! it); a changed one is replaced, its volumes kept. A deploy that then fails leaves the new
//! service definitions in place (a rollback re-applies the old ones, not old data). One the
//! release no longer names is removed after the switch (its volumes stay until the app is
//! destroyed).

use crate::pipeline::{DeployLog, Failure};
use crate::Engine;
use build::manifest::{AppSpec, ContainerSettings, ServiceRestart, ServiceSpec};
use runtime::DockerRuntime;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A service gets this long to run (and pass its healthcheck) after it is (re)started.
const SERVICE_READY: Duration = Duration::from_secs(120);
/// A service's image build gets this long.
const SERVICE_BUILD: Duration = Duration::from_secs(1800);

/// Service names in an order where each comes after what it depends on.
fn start_order(services: &BTreeMap<String, ServiceSpec>) -> Result<Vec<String>, String> {
    let mut order: Vec<String> = Vec::new();
    let mut visiting: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        services: &BTreeMap<String, ServiceSpec>,
        order: &mut Vec<String>,
        visiting: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if visiting.iter().any(|n| n == name) {
            return Err(format!(
                "services depend on each other in a circle: {} → {name}",
                visiting.join(" → ")
            ));
        }
        let Some(spec) = services.get(name) else {
            // The web app itself: started after every service anyway.
            return Ok(());
        };
        visiting.push(name.to_string());
        for dep in &spec.depends_on {
            visit(dep, services, order, visiting)?;
        }
        visiting.pop();
        order.push(name.to_string());
        Ok(())
    }
    for name in services.keys() {
        visit(name, services, &mut order, &mut visiting)?;
    }
    Ok(order)
}

/// `root/rel` as a real directory beneath `root`: no component (nor `root`) may be a symlink.
/// The check runs when the image is built, after the host-side `[build]` step, which could
/// have replaced a directory with a symlink to the data dir.
pub(crate) fn real_dir_beneath(root: &Path, rel: &Path) -> Result<std::path::PathBuf, String> {
    use std::path::Component;
    let mut path = root.to_path_buf();
    let check = |p: &Path| -> Result<(), String> {
        let meta = std::fs::symlink_metadata(p)
            .map_err(|e| format!("build context {}: {e}", rel.display()))?;
        if meta.file_type().is_symlink() || !meta.is_dir() {
            return Err(format!(
                "the build context {} is not a directory of the project (a symlink?)",
                rel.display()
            ));
        }
        Ok(())
    };
    check(&path)?;
    for c in rel.components() {
        match c {
            Component::CurDir => continue,
            Component::Normal(part) => path.push(part),
            _ => {
                return Err(format!(
                    "the build context {} leaves the project",
                    rel.display()
                ))
            }
        }
        check(&path)?;
    }
    Ok(path)
}

/// An image named in a compose file must not be one of berth's own (another app's release or
/// service), nor an image id: an app runs only what it built or a plain local image.
fn check_named_image(docker: &DockerRuntime, image: &str) -> Result<(), String> {
    let ours = format!("{}/", docker.prefix());
    if image.starts_with(&ours) || runtime::is_image_id(image) {
        return Err(format!(
            "image {image:?} is one berth built (or an image id): name a local image by its tag, or build it"
        ));
    }
    Ok(())
}

impl Engine {
    /// An image `app` names (a compose or `[services]` `image:`, a Dockerfile's `FROM` or
    /// `COPY --from`) may be used: not another app's, however it is spelled (the daemon
    /// resolves it and its labels decide), and not pulled from a registry on this machine or
    /// its networks (the daemon pulls as root from the host, outside the app's network rule),
    /// unless it is `[server] registry` or `[server] allow_private_hosts` names it.
    pub(crate) async fn check_image(
        &self,
        docker: &DockerRuntime,
        app: &str,
        image: &str,
    ) -> Result<(), String> {
        self.check_image_source(docker, image).await?;
        docker.check_image(image, app).await
    }

    /// The half of [`Engine::check_image`] that needs no daemon: not an image berth built or
    /// an image id, and not from a refused registry.
    async fn check_image_source(&self, docker: &DockerRuntime, image: &str) -> Result<(), String> {
        check_named_image(docker, image)?;
        if let Some(registry) = runtime::registry_host(image) {
            let configured = self
                .cfg
                .registry
                .as_deref()
                .and_then(|r| r.split('/').next());
            if configured != Some(registry) {
                let (host, port) = match registry.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
                        (h.to_string(), p.parse().unwrap_or(443))
                    }
                    _ => (registry.to_string(), 443),
                };
                let policy = self.egress_policy();
                tokio::task::spawn_blocking(move || policy.check(&host, port, true))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("image {image}: its registry is refused: {e}"))?;
            }
        }
        Ok(())
    }

    /// Every image the Dockerfile `dockerfile` in `context` names passes [`Engine::check_image`]:
    /// its source here, its labels in the build itself (`DockerRuntime::build_image` asks the
    /// daemon for each, so it is not asked twice).
    pub(crate) async fn check_dockerfile(
        &self,
        docker: &DockerRuntime,
        context: &Path,
        dockerfile: &str,
        tag: &str,
    ) -> Result<(), String> {
        let images = docker
            .dockerfile_images(context, dockerfile, tag)
            .await
            .map_err(|e| e.to_string())?;
        for image in images {
            self.check_image_source(docker, &image).await?;
        }
        Ok(())
    }
}

/// A manifest's container settings as the runtime takes them.
pub(crate) fn container_cmd(c: &ContainerSettings) -> runtime::ContainerConfig {
    runtime::ContainerConfig {
        entrypoint: c.entrypoint.clone(),
        command: c.command.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        volumes: c.volumes.clone(),
    }
}

/// The tag of a service's image built from the app's source: it moves with each build.
pub(crate) fn service_tag(docker: &DockerRuntime, app: &str, service: &str) -> String {
    format!(
        "{}/{}:svc-{service}",
        docker.prefix(),
        app.to_ascii_lowercase()
    )
}

impl Engine {
    /// Bring `app`'s services to `spec`'s definition (see the module docs).
    pub(crate) async fn ensure_services(
        &self,
        app: &str,
        source: &Path,
        spec: &AppSpec,
        docker: &Arc<DockerRuntime>,
        log: &DeployLog,
    ) -> Result<(), Failure> {
        let order = start_order(&spec.services).map_err(Failure)?;
        for name in &order {
            let Some(s) = spec.services.get(name) else {
                continue;
            };
            let image = match (&s.image, &s.build) {
                (_, Some(b)) => {
                    let tag = service_tag(docker, app, name);
                    log.line(&format!(
                        "-----> Service {name}: building {} ({})",
                        b.context.display(),
                        b.dockerfile
                    ));
                    let labels = vec![
                        ("berth.app".to_string(), app.to_string()),
                        ("berth.service".to_string(), name.clone()),
                    ];
                    // Run by image id: an unchanged build (all layers cached) is the same
                    // image, so the service is not restarted.
                    let context = real_dir_beneath(source, &b.context).map_err(Failure)?;
                    self.check_dockerfile(docker, &context, &b.dockerfile, &tag)
                        .await
                        .map_err(|e| Failure(format!("service {name}: {e}")))?;
                    docker
                        .build_image(
                            &context,
                            &b.dockerfile,
                            &tag,
                            &labels,
                            &log.path,
                            SERVICE_BUILD,
                        )
                        .await
                        .map_err(|e| {
                            Failure(format!("service {name}: the image build failed: {e}"))
                        })?
                }
                (Some(image), None) => {
                    self.check_image(docker, app, image)
                        .await
                        .map_err(|e| Failure(format!("service {name}: {e}")))?;
                    image.clone()
                }
                (None, None) => {
                    return Err(Failure(format!("service {name} has no image and no build")))
                }
            };
            let run = runtime::ServiceRun {
                app: app.to_string(),
                name: name.clone(),
                image,
                env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                volumes: s.volumes.clone(),
                port: s.port,
                healthcheck: s.healthcheck.as_ref().map(|h| runtime::ServiceHealthcheck {
                    test: h.test.clone(),
                    interval: h.interval,
                    timeout: h.timeout,
                    retries: h.retries,
                    start_period: h.start_period,
                }),
                limits: runtime::Limits::default(),
                log_file: self
                    .app_dir(app)
                    .join("logs")
                    .join(format!("svc-{name}.log")),
                container: container_cmd(&s.container),
                restart: match s.restart {
                    ServiceRestart::UnlessStopped => runtime::ServiceRestart::UnlessStopped,
                    ServiceRestart::Always => runtime::ServiceRestart::Always,
                    ServiceRestart::OnFailure(n) => runtime::ServiceRestart::OnFailure(n),
                    ServiceRestart::No => runtime::ServiceRestart::No,
                },
            };
            let info = docker
                .ensure_service(&run, SERVICE_READY)
                .await
                .map_err(|e| Failure(format!("service {name}: {e}")))?;
            log.line(&format!("-----> Service {name} is {}", info.state));
        }
        Ok(())
    }

    /// The app's `[service_env]`, resolved: `{db.host}` is the service's name for an app in
    /// a container (its alias on the app's network) and 127.0.0.1 for processes; `{db.port}`
    /// its own port, or for processes the 127.0.0.1 port Docker published it on.
    pub(crate) async fn service_env(
        &self,
        app: &str,
        spec: &AppSpec,
        docker: &Arc<DockerRuntime>,
        in_container: bool,
    ) -> Result<Vec<(String, String)>, String> {
        if spec.service_env.is_empty() {
            return Ok(Vec::new());
        }
        let running = docker
            .services(app)
            .await
            .map_err(|e| format!("cannot read the app's services: {e}"))?;
        let mut out = Vec::new();
        for (key, template) in &spec.service_env {
            let mut value = String::new();
            let mut rest = template.as_str();
            while let Some(open) = rest.find('{') {
                value.push_str(&rest[..open]);
                let Some(close) = rest[open..].find('}') else {
                    break;
                };
                let reference = &rest[open + 1..open + close];
                let (name, what) = reference.split_once('.').unwrap_or((reference, ""));
                let declared = spec.services.get(name);
                let resolved = match (what, in_container) {
                    ("host", true) => Some(name.to_string()),
                    ("host", false) => Some("127.0.0.1".to_string()),
                    ("port", true) => declared.and_then(|s| s.port).map(|p| p.to_string()),
                    ("port", false) => running
                        .iter()
                        .find(|s| s.name == name)
                        .and_then(|s| s.host_port)
                        .map(|p| p.to_string()),
                    _ => None,
                };
                let Some(resolved) = resolved else {
                    return Err(format!(
                        "service_env.{key}: {{{reference}}} has no value (is service {name} running with a port?)"
                    ));
                };
                value.push_str(&resolved);
                rest = &rest[open + close + 1..];
            }
            value.push_str(rest);
            out.push((key.clone(), value));
        }
        Ok(out)
    }

    /// The process env of a release that is already live (a restart of berth, a scale), with
    /// its `[service_env]` resolved as it is now; an error there is logged, not fatal.
    pub(crate) async fn live_env(
        &self,
        app: &str,
        spec: &AppSpec,
        vars: &BTreeMap<String, String>,
    ) -> Vec<(String, String)> {
        let mut env = crate::pipeline::process_env(app, spec, vars);
        if let (false, Ok(docker)) = (spec.service_env.is_empty(), &self.docker) {
            match self
                .service_env(app, spec, docker, spec.image.is_some())
                .await
            {
                Ok(extra) => env.extend(extra),
                Err(e) => tracing::error!(app, error = %e, "cannot resolve the app's service_env"),
            }
        }
        env
    }

    /// After the switch: the services the live release no longer names go (their volumes
    /// stay until the app is destroyed). Before it, the old release might still use them.
    pub(crate) async fn remove_dropped_services(
        &self,
        app: &str,
        spec: &AppSpec,
        docker: &Arc<DockerRuntime>,
        log: &DeployLog,
    ) {
        let keep: Vec<String> = spec.services.keys().cloned().collect();
        match docker.remove_services(app, &keep, false).await {
            Ok(0) => {}
            Ok(n) => log.line(&format!(
                "-----> Removed {n} service(s) this release no longer has (their volumes stay)"
            )),
            Err(e) => log.line(&format!("-----> Warning: cannot remove old services: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            image: Some("x".into()),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..ServiceSpec::default()
        }
    }

    #[test]
    fn services_start_after_what_they_depend_on() {
        let services = BTreeMap::from([
            ("api".to_string(), svc(&["db", "cache"])),
            ("cache".to_string(), svc(&[])),
            ("db".to_string(), svc(&["web"])),
        ]);
        let order = start_order(&services).unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert!(
            pos("db") < pos("api") && pos("cache") < pos("api"),
            "{order:?}"
        );
        let circle = BTreeMap::from([
            ("a".to_string(), svc(&["b"])),
            ("b".to_string(), svc(&["a"])),
        ]);
        assert!(start_order(&circle).unwrap_err().contains("circle"));
    }
}
