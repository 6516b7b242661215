//! The common subset of a Compose file (`compose.yaml`, `docker-compose.yml`, …), so a project
//! that runs with `docker compose up` deploys unchanged: per service `image` or `build`,
//! `environment` and `env_file`, named `volumes`, `depends_on`, `healthcheck`, `command`,
//! `entrypoint`, `working_dir`, `user`, `restart`, `expose`, `networks: [default]`, and the web
//! service's `ports`. Keys that mean nothing under berth (`container_name`, `labels`, a bind
//! mount of the source into a service built from it) are read and ignored with a warning in
//! the deploy log. Any other key is refused by name, with its line.
//!
//! The web service (the one named `web`, else the only one with `ports`, else the only one with
//! `build`) is the app: its image is built and deployed with zero downtime like any Dockerfile
//! app. The others become the app's accessory services, reachable from the app by their names.

mod env;

use super::{
    ContainerSettings, DockerBuild, ManifestError, ServiceHealth, ServiceRestart, ServiceSpec,
};
use env::{env_files, environment, unescape};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// The file names `docker compose` looks for, in its order.
pub const FILES: &[&str] = &[
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// What a compose file contributes to the app.
#[derive(Debug, Default)]
pub(crate) struct ComposeSettings {
    pub web: String,
    pub build: Option<DockerBuild>,
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The port the web service listens on in its container (`ports: ["8080:80"]` → 80).
    pub container_port: Option<u16>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// The web service's `entrypoint`, `command`, `working_dir` and `user`.
    pub container: ContainerSettings,
    /// Keys read and ignored, for the deploy log.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    version: Option<serde_norway::Value>,
    #[serde(default)]
    name: Option<String>,
    services: BTreeMap<String, Service>,
    /// Named volumes: declared here, created by berth.
    #[serde(default)]
    volumes: Option<BTreeMap<String, serde_norway::Value>>,
    /// Only `default` (every service of an app shares one network of its own).
    #[serde(default)]
    networks: Option<BTreeMap<String, Option<serde_norway::Value>>>,
    /// `x-*` extension keys are allowed (and ignored); anything else is refused below.
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    image: Option<String>,
    build: Option<Build>,
    #[serde(default)]
    environment: Option<Environment>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    depends_on: Option<DependsOn>,
    healthcheck: Option<Healthcheck>,
    #[serde(default)]
    ports: Vec<serde_norway::Value>,
    command: Option<CommandLine>,
    entrypoint: Option<CommandLine>,
    working_dir: Option<String>,
    user: Option<serde_norway::Value>,
    env_file: Option<EnvFiles>,
    #[serde(default)]
    expose: Vec<serde_norway::Value>,
    restart: Option<String>,
    networks: Option<Networks>,
    /// Ignored, with a warning.
    labels: Option<serde_norway::Value>,
    /// Ignored, with a warning.
    container_name: Option<String>,
}

/// `command: npm start` (split as a shell would, without one) or `command: ["npm", "start"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnvFiles {
    One(String),
    Many(Vec<EnvFile>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EnvFile {
    Path(String),
    Full(EnvFileFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvFileFull {
    path: String,
    #[serde(default = "yes")]
    required: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Networks {
    List(Vec<String>),
    Map(BTreeMap<String, Option<serde_norway::Value>>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Build {
    Context(String),
    Full(BuildFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildFull {
    context: Option<String>,
    dockerfile: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Environment {
    Map(BTreeMap<String, Option<serde_norway::Value>>),
    List(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DependsOn {
    List(Vec<String>),
    Map(BTreeMap<String, serde_norway::Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Healthcheck {
    test: Option<Test>,
    interval: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    start_period: Option<String>,
    #[serde(default)]
    disable: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Test {
    Shell(String),
    List(Vec<String>),
}

const SUPPORTED: &str = "image, build, environment, env_file, volumes, depends_on, healthcheck, ports, expose, command, entrypoint, working_dir, user, restart, networks ([default]), labels and container_name (ignored)";

pub(crate) fn parse(file: &str, text: &str, dir: &Path) -> Result<ComposeSettings, ManifestError> {
    let at = |line: Option<usize>, col: Option<usize>, reason: String| {
        ManifestError::at(file, line, col, reason)
    };
    let raw: File = serde_norway::from_str(text).map_err(|e| {
        let pos = e.location();
        let mut reason = e.to_string();
        // serde_norway appends " at line L column C": the position is ours to print.
        if let Some(i) = reason.find(" at line ") {
            reason.truncate(i);
        }
        if reason.contains("untagged enum Build") {
            reason = "build: berth builds `build: <dir>` or `build: {context, dockerfile}` (no target, args or other build options)".into();
        }
        if reason.contains("unknown field") {
            reason.push_str(&format!(
                " (berth deploys this subset of Compose: {SUPPORTED} for services; version, name, services, volumes and networks at the top)"
            ));
        }
        at(pos.as_ref().map(|p| p.line()), pos.map(|p| p.column()), reason)
    })?;
    let _ = (raw.version, raw.name);
    let plain = |reason: String| at(None, None, reason);
    if let Some(key) = raw.other.keys().find(|k| !k.starts_with("x-")) {
        return Err(plain(format!(
            "unknown top-level key `{key}` (berth deploys this subset of Compose: version, name, services, volumes, networks and x-* extensions at the top; {SUPPORTED} for services)"
        )));
    }
    for (name, options) in raw.networks.unwrap_or_default() {
        if name != "default" || !is_empty_value(options.as_ref()) {
            return Err(plain(format!(
                "networks.{name}: berth puts every service of an app on one network of its own (the default); declare no other network"
            )));
        }
    }
    let mut declared = Vec::new();
    for (name, options) in raw.volumes.unwrap_or_default() {
        if !is_empty_value(Some(&options)) {
            return Err(plain(format!(
                "volumes.{name}: volume options (external, driver, …) are not supported: berth creates and keeps a local volume"
            )));
        }
        declared.push(name);
    }

    let web = pick_web(&raw.services).map_err(plain)?;
    let mut out = ComposeSettings {
        web: web.clone(),
        ..ComposeSettings::default()
    };
    for (name, svc) in raw.services {
        let here = |key: &str| format!("services.{name}.{key}");
        if svc.container_name.is_some() {
            out.warnings.push(format!(
                "{} is ignored: berth names containers itself (the app reaches a service by its service name)",
                here("container_name")
            ));
        }
        if svc.labels.is_some() {
            out.warnings.push(format!(
                "{} are ignored: berth routes and supervises by its own settings (other tools' labels, such as Traefik's, have no effect)",
                here("labels")
            ));
        }
        match &svc.networks {
            None => {}
            Some(Networks::List(l)) if l.iter().all(|n| n == "default") => {}
            Some(Networks::Map(m))
                if m.iter().all(|(n, o)| n == "default" && is_empty_value(o.as_ref())) => {}
            Some(_) => {
                return Err(plain(format!(
                    "{}: berth puts every service of an app on one network of its own; list only `default` (or leave networks out)",
                    here("networks")
                )))
            }
        }
        let restart = restart(svc.restart.as_deref())
            .map_err(|r| plain(format!("{}: {r}", here("restart"))))?;
        let container = ContainerSettings {
            entrypoint: svc
                .entrypoint
                .map(command_line)
                .transpose()
                .map_err(|r| plain(format!("{}: {r}", here("entrypoint"))))?,
            command: svc
                .command
                .map(command_line)
                .transpose()
                .map_err(|r| plain(format!("{}: {r}", here("command"))))?,
            working_dir: match svc.working_dir {
                Some(d) if !d.starts_with('/') => {
                    return Err(plain(format!(
                        "{}: {d:?} must be an absolute path in the container",
                        here("working_dir")
                    )))
                }
                d => d,
            },
            user: svc
                .user
                .map(|u| {
                    scalar(&u)
                        .ok_or_else(|| plain(format!("{}: a name or uid[:gid]", here("user"))))
                })
                .transpose()?,
            volumes: Vec::new(),
        };
        let file_env = match svc.env_file {
            None => BTreeMap::new(),
            Some(files) => {
                env_files(files, dir).map_err(|r| plain(format!("{}: {r}", here("env_file"))))?
            }
        };
        if !valid_service_name(&name) {
            return Err(plain(format!(
                "service name {name:?}: use lowercase letters, digits, '-' and '_'"
            )));
        }
        let build = svc
            .build
            .map(|b| docker_build(b, dir))
            .transpose()
            .map_err(|r| plain(format!("services.{name}.build: {r}")))?;
        if build.is_none() && svc.image.is_none() {
            return Err(plain(format!(
                "services.{name} has neither image nor build"
            )));
        }
        let env = environment(svc.environment, file_env)
            .map_err(|r| plain(format!("services.{name}.environment: {r}")))?;
        let mut volumes = Vec::new();
        for v in &svc.volumes {
            // The source mounted into a service built from it (a dev setup's live reload):
            // the image has the source, built anew on every deploy.
            if build.is_some() && is_source_bind(v, dir) {
                out.warnings.push(format!(
                    "{}: the bind mount {v:?} is ignored: berth builds the source into the image on every deploy",
                    here("volumes")
                ));
                continue;
            }
            volumes.push(
                volume(v, &declared).map_err(|r| plain(format!("services.{name}.volumes: {r}")))?,
            );
        }
        let exposed: Vec<u16> = svc
            .expose
            .iter()
            .map(container_port)
            .collect::<Result<_, _>>()
            .map_err(|r| plain(format!("{}: {r}", here("expose"))))?;
        let depends_on = match svc.depends_on {
            None => Vec::new(),
            Some(DependsOn::List(l)) => l,
            Some(DependsOn::Map(m)) => {
                for (dep, cond) in &m {
                    let condition = cond.get("condition").and_then(|c| c.as_str());
                    if !matches!(
                        condition,
                        None | Some("service_started" | "service_healthy")
                    ) {
                        return Err(plain(format!(
                            "services.{name}.depends_on.{dep}: condition {:?} is not supported (service_started or service_healthy: berth waits for a service's healthcheck when it has one)",
                            condition.unwrap_or_default()
                        )));
                    }
                }
                m.into_keys().collect()
            }
        };
        let healthcheck = svc
            .healthcheck
            .map(healthcheck)
            .transpose()
            .map_err(|r| plain(format!("services.{name}.healthcheck: {r}")))?
            .flatten();
        let ports: Vec<u16> = svc
            .ports
            .iter()
            .map(container_port)
            .collect::<Result<_, _>>()
            .map_err(|r| plain(format!("services.{name}.ports: {r}")))?;
        if name == web {
            if healthcheck.is_some() {
                return Err(plain(format!(
                    "services.{name}.healthcheck: berth checks the web service over HTTP ([health] path in berth.toml) and honours its image's HEALTHCHECK"
                )));
            }
            if ports.len() > 1 || (ports.is_empty() && exposed.len() > 1) {
                return Err(plain(format!(
                    "services.{name}.ports: berth routes one port of the web service; list one"
                )));
            }
            if restart == ServiceRestart::No {
                out.warnings.push(format!(
                    "{}: \"no\" is not honoured: berth restarts the web service whenever it stops",
                    here("restart")
                ));
            }
            out.build = build;
            out.image = if out.build.is_some() { None } else { svc.image };
            out.env = env;
            out.container_port = ports.first().or(exposed.first()).copied();
            out.container = ContainerSettings {
                volumes,
                ..container
            };
            continue;
        }
        if !ports.is_empty() {
            return Err(plain(format!(
                "services.{name}.ports: only the web service is published (berth routes it); others are reached by name from the app"
            )));
        }
        out.services.insert(
            name,
            ServiceSpec {
                image: if build.is_some() { None } else { svc.image },
                build,
                env,
                volumes,
                // What `{name.port}` gives the app.
                port: exposed.first().copied(),
                healthcheck,
                depends_on,
                container,
                restart,
            },
        );
    }
    out.warnings = out
        .warnings
        .iter()
        .map(|w| format!("{file}: {w}"))
        .collect();
    for (name, s) in &out.services {
        for d in &s.depends_on {
            if !out.services.contains_key(d) && *d != out.web {
                return Err(plain(format!(
                    "services.{name}.depends_on: no service named {d:?}"
                )));
            }
        }
    }
    Ok(out)
}

pub(crate) fn valid_service_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn pick_web(services: &BTreeMap<String, Service>) -> Result<String, String> {
    if services.contains_key("web") {
        return Ok("web".into());
    }
    let with = |f: &dyn Fn(&Service) -> bool| -> Vec<&String> {
        services
            .iter()
            .filter(|(_, s)| f(s))
            .map(|(n, _)| n)
            .collect()
    };
    for candidates in [with(&|s| !s.ports.is_empty()), with(&|s| s.build.is_some())] {
        if let [one] = candidates.as_slice() {
            return Ok((*one).clone());
        }
    }
    Err("cannot tell which service is the web app: name it `web` (berth routes that one)".into())
}

/// A path of the source (relative, no `..`).
pub(crate) fn inside(rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "{rel:?} must stay inside the project (no absolute path or ..)"
        ));
    }
    Ok(p.to_path_buf())
}

fn docker_build(b: Build, dir: &Path) -> Result<DockerBuild, String> {
    let (context, dockerfile) = match b {
        Build::Context(c) => (c, None),
        Build::Full(BuildFull {
            context,
            dockerfile,
        }) => (context.unwrap_or_else(|| ".".into()), dockerfile),
    };
    let context = inside(&context)?;
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".into());
    inside(&dockerfile)?;
    if !dir.join(&context).join(&dockerfile).is_file() {
        return Err(format!("no {dockerfile} in {}", context.display()));
    }
    Ok(DockerBuild {
        context,
        dockerfile,
    })
}

/// A volume option or network option that says nothing (`data:`, `data: {}`).
fn is_empty_value(v: Option<&serde_norway::Value>) -> bool {
    match v {
        None | Some(serde_norway::Value::Null) => true,
        Some(serde_norway::Value::Mapping(m)) => m.is_empty(),
        _ => false,
    }
}

/// A string, number or boolean as text.
fn scalar(v: &serde_norway::Value) -> Option<String> {
    match v {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `command`/`entrypoint` as an argument list: a string is split as a POSIX shell splits
/// words (quotes, backslashes), as Compose does, and no shell runs it.
fn command_line(c: CommandLine) -> Result<Vec<String>, String> {
    match c {
        CommandLine::Exec(argv) => Ok(argv),
        CommandLine::Shell(line) => {
            shlex::split(&line).ok_or_else(|| format!("{line:?}: a quote is not closed"))
        }
    }
}

/// Compose's `restart` values.
fn restart(value: Option<&str>) -> Result<ServiceRestart, String> {
    Ok(match value {
        None | Some("unless-stopped") => ServiceRestart::UnlessStopped,
        Some("always") => ServiceRestart::Always,
        Some("no") => ServiceRestart::No,
        Some("on-failure") => ServiceRestart::OnFailure(None),
        Some(other) => match other.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => ServiceRestart::OnFailure(Some(n)),
            _ => {
                return Err(format!(
                    "{other:?}: expected \"no\", always, unless-stopped, on-failure or on-failure:<times>"
                ))
            }
        },
    })
}

/// A bind mount of the project or of a part of it that is in the source (`.:/app`,
/// `./src:/app/src`); not one of a directory the source does not have (`./data`: that one
/// holds data, and is refused as any bind mount is).
fn is_source_bind(v: &str, dir: &Path) -> bool {
    let src = v.split(':').next().unwrap_or_default();
    let Some(rel) = src.strip_prefix("./").or((src == ".").then_some("")) else {
        return false;
    };
    rel.is_empty() || inside(rel).is_ok_and(|r| std::fs::symlink_metadata(dir.join(r)).is_ok())
}

/// `name:/path[:ro]` with a declared named volume; bind mounts are refused.
pub(crate) fn volume(v: &str, declared: &[String]) -> Result<(String, String), String> {
    let mut parts = v.splitn(3, ':');
    if let Some(mode) = v.splitn(3, ':').nth(2) {
        return Err(format!(
            "{v:?}: volume mode {mode:?} is not supported (berth mounts named volumes read-write)"
        ));
    }
    let (Some(src), Some(dst)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "{v:?}: berth keeps data in named volumes: `name:/path`"
        ));
    };
    if src.starts_with(['.', '/', '~']) {
        return Err(format!(
            "{v:?}: bind mounts are not supported (the project is rebuilt on every deploy); use a named volume `name:{dst}`"
        ));
    }
    if !declared.iter().any(|d| d == src) {
        return Err(format!(
            "{v:?}: volume {src:?} is not declared under the top-level volumes"
        ));
    }
    if !dst.starts_with('/') {
        return Err(format!("{v:?}: the path in the container must be absolute"));
    }
    Ok((src.to_string(), dst.to_string()))
}

/// The container side of a `ports` entry: `"8080:80"`, `"127.0.0.1:8080:80"`, `"80"`, `80`.
fn container_port(p: &serde_norway::Value) -> Result<u16, String> {
    let text = match p {
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::String(s) => s.clone(),
        _ => return Err("use the short form, \"8080:80\"".into()),
    };
    let inner = text.rsplit(':').next().unwrap_or_default();
    let inner = inner.strip_suffix("/tcp").unwrap_or(inner);
    inner
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{text:?} is not a port mapping berth understands (\"8080:80\")"))
}

/// The longest healthcheck interval, timeout or start period taken.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Go-style durations as Compose writes them: `"10s"`, `"1m30s"`, `"500ms"`.
fn duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        total = total
            .checked_add(units::parse_duration(&rest[..unit_end])?)
            .ok_or_else(|| format!("duration {s:?} is too long"))?;
        rest = &rest[unit_end..];
    }
    if total.is_zero() {
        return Err(format!("invalid duration {s:?}"));
    }
    if total > MAX_DURATION {
        return Err(format!("duration {s:?} is too long (at most 24h)"));
    }
    Ok(total)
}

fn healthcheck(h: Healthcheck) -> Result<Option<ServiceHealth>, String> {
    if h.disable {
        return Ok(None);
    }
    let test = match h.test {
        None => return Err("test is missing".into()),
        Some(Test::Shell(s)) => vec!["CMD-SHELL".to_string(), s],
        Some(Test::List(l)) => l,
    };
    let test: Vec<String> = test.iter().map(|t| unescape(t)).collect::<Result<_, _>>()?;
    match test.first().map(String::as_str) {
        Some("NONE") => return Ok(None),
        Some("CMD" | "CMD-SHELL") if test.len() > 1 => {}
        _ => return Err("test is [\"CMD\", ...], [\"CMD-SHELL\", \"...\"] or a string".into()),
    }
    let d = |v: Option<String>, default: u64| match v {
        Some(s) => duration(&s),
        None => Ok(Duration::from_secs(default)),
    };
    Ok(Some(ServiceHealth {
        test,
        interval: d(h.interval, 30)?,
        timeout: d(h.timeout, 30)?,
        retries: h.retries.unwrap_or(3),
        start_period: match h.start_period {
            Some(s) => duration(&s)?,
            None => Duration::ZERO,
        },
    }))
}

#[cfg(test)]
mod tests;
