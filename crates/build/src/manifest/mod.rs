//! The app definition: what to run and how, read from an unpacked release directory.
//!
//! Three inputs, the conventions users already know:
//! - `Procfile`: `name: command` lines. `web` gets the port and the route, `release` runs once
//!   before traffic switches, every other name is a worker without a route.
//! - `app.json` (Heroku's): health check, env declarations, `scripts.postdeploy`, formation.
//! - `berth.toml`: berth's own settings (build, health, deploy timings, static site, formation,
//!   limits, processes). It wins over app.json for the same setting.
//!
//! A directory with no processes but an `index.html` is a static site. [`load`] combines the
//! inputs into one [`AppSpec`], which the engine stores as JSON with the release.

mod app_json;
mod berth_toml;
mod compose;
mod procfile;
mod values;

pub use values::MAX_INSTANCES;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default `[build] timeout`.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time new instances get to become healthy.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time old instances keep serving in-flight requests after traffic moved.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// Largest manifest file read. These are hand-written text files; a bigger one is a mistake
/// (or an attempt to make the server read a huge file).
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

/// The name of the process type that gets the port and the route.
pub const WEB: &str = "web";
/// The Procfile name of the command run once before traffic switches.
pub const RELEASE: &str = "release";

/// Which runtime runs the app's processes (`runtime = ...` in berth.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// Docker when the source has a Dockerfile and a daemon is reachable (or the server's
    /// default says so), else processes.
    #[default]
    Auto,
    Process,
    Docker,
    /// Docker Swarm services (the image is built as for `Docker`): replicas spread over the
    /// swarm's nodes, rolling updates by Swarm.
    Swarm,
}

/// `[swarm]`: where a Swarm app's tasks may run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SwarmSettings {
    /// Placement constraints as Swarm spells them: `node.role == worker`,
    /// `node.labels.disk != hdd`.
    #[serde(default)]
    pub constraints: Vec<String>,
    /// At most this many tasks of one process type on a node.
    #[serde(default)]
    pub max_replicas_per_node: Option<u64>,
}

/// How the app is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    /// Processes from the Procfile or `[processes]`; `web`, if any, gets the route.
    Process,
    /// berth serves [`AppSpec::static_dir`] itself; worker processes may still run.
    Static,
}

/// Everything berth needs to run one release of an app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    pub kind: AppKind,
    /// Process type → shell command. Excludes `release`.
    pub processes: BTreeMap<String, String>,
    /// Run once in the new release before traffic switches; a failure aborts the deploy.
    pub release_command: Option<String>,
    /// app.json `scripts.postdeploy`: run once after the deploy succeeded.
    pub postdeploy: Option<String>,
    pub build: Option<BuildSpec>,
    /// `[test]`: runs before the build; a failure stops the pipeline.
    #[serde(default)]
    pub test: Option<BuildSpec>,
    pub health: HealthSpec,
    /// How long old instances keep serving in-flight requests after traffic moved.
    #[serde(rename = "drain_timeout_ms", with = "millis")]
    pub drain_timeout: Duration,
    /// SIGTERM → SIGKILL.
    #[serde(rename = "stop_grace_ms", with = "millis")]
    pub stop_grace: Duration,
    /// Relative to the release dir (`.` for the dir itself). `Some` exactly for [`AppKind::Static`].
    pub static_dir: Option<PathBuf>,
    /// Replicas per process type. Every process type defaults to 1 (Heroku starts non-web types
    /// at 0, which surprises people whose worker silently never runs).
    pub formation: BTreeMap<String, u32>,
    pub limits: Limits,
    /// Environment variables app.json declares, sorted by key.
    pub env: Vec<EnvDecl>,
    /// berth.toml's `runtime`.
    #[serde(default)]
    pub runtime: RuntimeChoice,
    /// The source has a `Dockerfile` at its top.
    #[serde(default)]
    pub dockerfile: bool,
    /// The image this release runs (set by the engine once it is built): the release then runs
    /// in containers; `None`: processes.
    #[serde(default)]
    pub image: Option<String>,
    /// Where the image is built from: the Dockerfile's directory and file, relative to the
    /// source (`.` and `Dockerfile` unless a compose file says otherwise).
    #[serde(default)]
    pub docker_build: Option<DockerBuild>,
    /// Accessory services (a database, a cache): containers that live across releases, with
    /// named volumes (`[services.<name>]` in berth.toml, or a compose file's other services).
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Env vars set in the app from its services, as templates: `{db.host}`, `{db.port}`
    /// (e.g. `DATABASE_URL = "postgres://u:p@{db.host}:{db.port}/app"`).
    #[serde(default)]
    pub service_env: BTreeMap<String, String>,
    /// The port the app's container listens on (a compose file's `ports`), else its single
    /// `EXPOSE`, else `$PORT`.
    #[serde(default)]
    pub container_port: Option<u16>,
    /// `[swarm]`: placement, for a release that runs on Swarm.
    #[serde(default)]
    pub swarm: SwarmSettings,
    /// berth.toml's `hsts`: `Strict-Transport-Security` on the app's HTTPS answers.
    #[serde(default)]
    pub hsts: Option<String>,
    /// How the web container runs its image when a compose file says (`entrypoint`,
    /// `command`, `working_dir`, `user`); empty: as the image says.
    #[serde(default, skip_serializing_if = "ContainerSettings::is_empty")]
    pub container: ContainerSettings,
    /// What was read but has no effect under berth (a compose file's `container_name`), for
    /// the deploy log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// How a container runs its image, where a compose file overrides it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerSettings {
    /// Replaces the image's `ENTRYPOINT` (exec form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's `CMD` (exec form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as Docker takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The web service's named volumes `(volume, path in the container)`: mounted into every
    /// web container, old and new alike during a deploy (as Dokku's storage mounts; a
    /// service's volumes are in its [`ServiceSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<(String, String)>,
}

impl ContainerSettings {
    pub fn is_empty(&self) -> bool {
        *self == ContainerSettings::default()
    }
}

/// When Docker restarts an accessory service's container (compose's `restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceRestart {
    /// Whenever it stops, unless berth stopped it (the default).
    #[default]
    UnlessStopped,
    Always,
    /// When it exits with an error, at most this many times (none: no limit).
    OnFailure(Option<u32>),
    /// Never: a one-off container (a migration, a seed).
    No,
}

/// `docker build` of the app: `context` (a directory of the source) with `dockerfile` in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerBuild {
    pub context: PathBuf,
    pub dockerfile: String,
}

/// One accessory service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceSpec {
    /// A local image (there may be no registry), or
    pub image: Option<String>,
    /// a directory of the source with a Dockerfile (relative), built like the app.
    pub build: Option<DockerBuild>,
    pub env: BTreeMap<String, String>,
    /// `(volume name, path in the container)`: named volumes, kept across deploys and restarts.
    pub volumes: Vec<(String, String)>,
    /// The port it listens on (what `{name.port}` gives the app).
    pub port: Option<u16>,
    /// A command run in the container (exec form) that exits 0 when the service is ready.
    pub healthcheck: Option<ServiceHealth>,
    /// Services started (and ready) before this one.
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "ContainerSettings::is_empty")]
    pub container: ContainerSettings,
    #[serde(default)]
    pub restart: ServiceRestart,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    pub test: Vec<String>,
    #[serde(with = "millis")]
    pub interval: Duration,
    #[serde(with = "millis")]
    pub timeout: Duration,
    pub retries: u32,
    /// Failures in this first while do not count (the service is still starting).
    #[serde(default, with = "millis")]
    pub start_period: Duration,
}

/// `[build]` (or `[test]`): a command run in the source dir before the processes start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildSpec {
    pub command: String,
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
}

/// How new instances prove they are ready for traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub check: HealthCheck,
    /// How long new instances get to become healthy.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthCheck {
    /// GET `path`; a 2xx or 3xx answer is healthy.
    Http { path: String },
    /// The port accepts a connection.
    Tcp,
}

/// Per-instance resource limits; `None` means no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes.
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// Cores, fractions allowed.
    pub cpu: Option<f64>,
}

/// One environment variable app.json declares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvDecl {
    pub key: String,
    /// `"KEY": "value"` or `{"value": …}`.
    pub default: Option<String>,
    /// `"generator": "secret"`: berth makes up a random value on the first deploy.
    pub generator_secret: bool,
    /// Must have a value at deploy time (Heroku's default: true). A default or a generator
    /// satisfies it.
    pub required: bool,
    pub description: Option<String>,
}

impl AppSpec {
    /// The JSON the engine stores with the release.
    pub fn to_json(&self) -> String {
        // Cannot fail: only strings, integers, finite floats and maps with string keys.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// Durations as integer milliseconds: plain JSON numbers any reader understands.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A problem in one manifest file, positioned as precisely as the file format allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    /// Relative to the release dir: "Procfile", "app.json" or "berth.toml".
    pub file: PathBuf,
    pub line: Option<usize>,
    pub col: Option<usize>,
    pub reason: String,
}

impl ManifestError {
    fn at(file: &str, line: Option<usize>, col: Option<usize>, reason: impl Into<String>) -> Self {
        ManifestError {
            file: PathBuf::from(file),
            line,
            col,
            reason: reason.into(),
        }
    }
}

/// `Procfile:3: reason`, `app.json:4:7: reason`, `berth.toml: reason`: the format compilers
/// use, which editors and terminals turn into links.
impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.col {
                write!(f, ":{col}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

/// Reads the app definition from an unpacked release directory.
pub fn load(dir: &Path) -> Result<AppSpec, ManifestError> {
    let procfile = match read_optional(dir, "Procfile")? {
        Some(text) => procfile::parse(&text)?,
        None => Vec::new(),
    };
    let app = match read_optional(dir, "app.json")? {
        Some(text) => app_json::parse(&text)?,
        None => app_json::AppJsonSettings::default(),
    };
    let toml = match read_optional(dir, "berth.toml")? {
        Some(text) => berth_toml::parse(&text)?,
        None => berth_toml::TomlSettings::default(),
    };
    let compose = match compose::FILES.iter().find(|f| dir.join(f).is_file()) {
        Some(file) => match read_optional(dir, file)? {
            Some(text) => Some(compose::parse(file, &text, dir)?),
            None => None,
        },
        None => None,
    };
    let Some(compose) = compose else {
        return assemble(dir, procfile, app, toml);
    };
    if !procfile.is_empty() || !toml.processes.is_empty() {
        return Err(ManifestError::at(
            "Procfile",
            None,
            None,
            "both a compose file and a Procfile (or [processes]) say what runs: keep one",
        ));
    }
    if toml.runtime == Some(RuntimeChoice::Process) {
        return Err(ManifestError::at(
            "berth.toml",
            None,
            None,
            "runtime = \"process\", but a compose file runs containers",
        ));
    }
    if !toml.services.is_empty() || !toml.service_env.is_empty() {
        return Err(ManifestError::at(
            "berth.toml",
            None,
            None,
            "[services] and a compose file: declare the services in the compose file",
        ));
    }
    let mut toml = toml;
    if toml.runtime != Some(RuntimeChoice::Swarm) {
        toml.runtime = Some(RuntimeChoice::Docker);
    }
    // The web service's command is its image's own.
    let web = vec![procfile::ProcLine {
        name: WEB.to_string(),
        command: String::new(),
        line: 0,
    }];
    let mut spec = assemble_with(dir, web, app, toml, true)?;
    spec.dockerfile = compose.build.is_some();
    spec.docker_build = compose.build;
    spec.image = compose.image;
    spec.container_port = compose.container_port;
    spec.services = compose.services;
    spec.container = compose.container;
    spec.warnings = compose.warnings;
    for (key, value) in compose.env {
        if !spec.env.iter().any(|d| d.key == key) {
            spec.env.push(EnvDecl {
                key,
                default: Some(value),
                generator_secret: false,
                required: false,
                description: None,
            });
        }
    }
    spec.env.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(spec)
}

/// The file's text, or `None` if it does not exist.
fn read_optional(dir: &Path, name: &str) -> Result<Option<String>, ManifestError> {
    let err = |reason: String| ManifestError::at(name, None, None, reason);
    let file = match std::fs::File::open(dir.join(name)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(format!("cannot open: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(err("file is larger than 1 MiB".to_string()));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| err(format!("not UTF-8 text: {e}")))
}

fn assemble(
    dir: &Path,
    procfile: Vec<procfile::ProcLine>,
    app: app_json::AppJsonSettings,
    toml: berth_toml::TomlSettings,
) -> Result<AppSpec, ManifestError> {
    assemble_with(dir, procfile, app, toml, false)
}

/// `compose`: the app comes from a compose file (its image, not a Dockerfile at the top).
fn assemble_with(
    dir: &Path,
    procfile: Vec<procfile::ProcLine>,
    app: app_json::AppJsonSettings,
    toml: berth_toml::TomlSettings,
    compose: bool,
) -> Result<AppSpec, ManifestError> {
    let toml_err =
        |line: usize, reason: String| ManifestError::at("berth.toml", Some(line), None, reason);

    // Processes: Procfile and [processes] together; a name in both is an error (which one would
    // the user expect to win?).
    let mut processes = BTreeMap::new();
    let mut release_command = None;
    for p in &procfile {
        if p.name == RELEASE {
            release_command = Some(p.command.clone());
        } else {
            processes.insert(p.name.clone(), p.command.clone());
        }
    }
    for (name, command, line) in toml.processes {
        if let Some(p) = procfile.iter().find(|p| p.name == name) {
            return Err(toml_err(
                line,
                format!(
                    "process {name:?} is also defined in the Procfile (line {}); define it in one place",
                    p.line
                ),
            ));
        }
        if name == RELEASE {
            release_command = Some(command);
        } else {
            processes.insert(name, command);
        }
    }

    // A Dockerfile app runs the image's own command as `web` unless a Procfile says otherwise.
    let runtime = toml.runtime.unwrap_or_default();
    let dockerfile = dir.join("Dockerfile").is_file();
    if matches!(runtime, RuntimeChoice::Docker | RuntimeChoice::Swarm) && !dockerfile && !compose {
        return Err(ManifestError::at(
            "berth.toml",
            None,
            None,
            format!(
                "runtime = \"{}\" needs a Dockerfile at the top of the app",
                if runtime == RuntimeChoice::Swarm {
                    "swarm"
                } else {
                    "docker"
                }
            ),
        ));
    }
    let docker = dockerfile && runtime != RuntimeChoice::Process;
    if docker && processes.is_empty() && toml.static_dir.is_none() {
        processes.insert(WEB.to_string(), String::new());
    }

    // Static site: `[static] dir`, or an index.html at the top when nothing else runs.
    let static_dir = match toml.static_dir {
        Some((rel, line)) => {
            if processes.contains_key(WEB) {
                return Err(toml_err(
                    line,
                    "[static] and a web process both answer HTTP requests; keep one".to_string(),
                ));
            }
            check_static_dir(dir, &rel).map_err(|r| toml_err(line, r))?;
            Some(rel)
        }
        None if processes.is_empty() && dir.join("index.html").is_file() => {
            Some(PathBuf::from("."))
        }
        None => None,
    };
    if processes.is_empty() && static_dir.is_none() {
        return Err(ManifestError::at(
            "Procfile",
            None,
            None,
            "no Procfile, no [processes] in berth.toml and no index.html: nothing to run (hint: add a Procfile with `web: <command>`)",
        ));
    }

    // Formation: 1 each, then app.json, then berth.toml.
    let mut formation: BTreeMap<String, u32> = processes.keys().map(|n| (n.clone(), 1)).collect();
    let unknown = |name: &str| {
        format!("formation names process {name:?}, which is not in the Procfile or [processes]")
    };
    for (name, n) in app.formation {
        match formation.get_mut(&name) {
            Some(slot) => *slot = n,
            None => return Err(ManifestError::at("app.json", None, None, unknown(&name))),
        }
    }
    for (name, n, line) in toml.formation {
        match formation.get_mut(&name) {
            Some(slot) => *slot = n,
            None => return Err(toml_err(line, unknown(&name))),
        }
    }
    let total: u64 = formation.values().map(|n| u64::from(*n)).sum();
    if total > u64::from(MAX_INSTANCES) {
        return Err(ManifestError::at(
            "berth.toml",
            None,
            None,
            format!(
                "the formation asks for {total} instances in all; an app runs at most {MAX_INSTANCES}"
            ),
        ));
    }

    // Health: defaults, then app.json's first web check, then berth.toml.
    let mut path = app.health_path.unwrap_or_else(|| "/".to_string());
    if let Some(p) = toml.health_path {
        path = p;
    }
    let check = if toml.health_tcp == Some(true) {
        HealthCheck::Tcp
    } else {
        HealthCheck::Http { path }
    };
    let timeout = toml
        .health_timeout
        .or(app.health_timeout_secs.map(Duration::from_secs))
        .unwrap_or(DEFAULT_HEALTH_TIMEOUT);

    let (services, service_env) = services_from_toml(dir, toml.services, toml.service_env)?;
    if !services.is_empty() && static_dir.is_some() {
        return Err(ManifestError::at(
            "berth.toml",
            None,
            None,
            "[services] run beside an app's processes, not a static site",
        ));
    }

    Ok(AppSpec {
        kind: if static_dir.is_some() {
            AppKind::Static
        } else {
            AppKind::Process
        },
        processes,
        release_command,
        postdeploy: app.postdeploy,
        build: toml.build_command.map(|command| BuildSpec {
            command,
            timeout: toml.build_timeout.unwrap_or(DEFAULT_BUILD_TIMEOUT),
        }),
        test: toml.test_command.map(|command| BuildSpec {
            command,
            timeout: toml.test_timeout.unwrap_or(DEFAULT_BUILD_TIMEOUT),
        }),
        health: HealthSpec { check, timeout },
        drain_timeout: toml.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        stop_grace: toml.stop_grace.unwrap_or(DEFAULT_STOP_GRACE),
        static_dir,
        formation,
        limits: Limits {
            memory: toml.memory,
            pids: toml.pids,
            cpu: toml.cpu,
        },
        env: app.env,
        runtime,
        dockerfile,
        image: None,
        docker_build: None,
        services,
        service_env,
        container_port: None,
        swarm: toml.swarm,
        hsts: toml.hsts,
        container: ContainerSettings::default(),
        warnings: Vec::new(),
    })
}

/// berth.toml's `[services.<name>]` and `[service_env]`, checked.
#[allow(clippy::type_complexity)]
fn services_from_toml(
    dir: &Path,
    raw: Vec<(String, berth_toml::TomlService, usize)>,
    env: Vec<(String, String, usize)>,
) -> Result<(BTreeMap<String, ServiceSpec>, BTreeMap<String, String>), ManifestError> {
    let err =
        |line: usize, reason: String| ManifestError::at("berth.toml", Some(line), None, reason);
    let mut services = BTreeMap::new();
    let names: Vec<String> = raw.iter().map(|(n, _, _)| n.clone()).collect();
    for (name, s, line) in raw {
        if !compose::valid_service_name(&name) {
            return Err(err(
                line,
                format!("service name {name:?}: use lowercase letters, digits, '-' and '_'"),
            ));
        }
        let build = match (&s.image, &s.build) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(err(line, format!("services.{name}: give `image` (a local image) or `build` (a directory with a Dockerfile), one of them")))
            }
            (None, Some(b)) => {
                let context = compose::inside(b).map_err(|r| err(line, format!("services.{name}.build: {r}")))?;
                if !dir.join(&context).join("Dockerfile").is_file() {
                    return Err(err(line, format!("services.{name}.build: no Dockerfile in {b}")));
                }
                Some(DockerBuild { context, dockerfile: "Dockerfile".into() })
            }
            (Some(_), None) => None,
        };
        let mut volumes = Vec::new();
        for v in &s.volumes {
            let declared: Vec<String> = v
                .split(':')
                .next()
                .map(|n| vec![n.to_string()])
                .unwrap_or_default();
            volumes.push(
                compose::volume(v, &declared)
                    .map_err(|r| err(line, format!("services.{name}.volumes: {r}")))?,
            );
        }
        for d in &s.depends_on {
            if !names.contains(d) {
                return Err(err(
                    line,
                    format!("services.{name}.depends_on: no service named {d:?}"),
                ));
            }
        }
        let healthcheck = match &s.healthcheck {
            None => None,
            Some(cmd) if cmd.is_empty() => {
                return Err(err(line, format!("services.{name}.healthcheck is empty")))
            }
            Some(cmd) => {
                let test = match cmd[0].as_str() {
                    "CMD" | "CMD-SHELL" => cmd.clone(),
                    _ => std::iter::once("CMD".to_string())
                        .chain(cmd.iter().cloned())
                        .collect(),
                };
                Some(ServiceHealth {
                    test,
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                    retries: 60,
                    start_period: Duration::ZERO,
                })
            }
        };
        services.insert(
            name,
            ServiceSpec {
                image: s.image,
                build,
                env: s.env,
                volumes,
                port: s.port,
                healthcheck,
                depends_on: s.depends_on,
                container: ContainerSettings::default(),
                restart: ServiceRestart::default(),
            },
        );
    }
    let mut service_env = BTreeMap::new();
    for (key, template, line) in env {
        for part in template.split('{').skip(1) {
            let Some((reference, _)) = part.split_once('}') else {
                return Err(err(line, format!("service_env.{key}: unclosed `{{`")));
            };
            let (svc, what) = reference.split_once('.').unwrap_or((reference, ""));
            let Some(spec) = services.get(svc) else {
                return Err(err(
                    line,
                    format!("service_env.{key}: no service named {svc:?}"),
                ));
            };
            match what {
                "host" => {}
                "port" if spec.port.is_some() => {}
                "port" => return Err(err(line, format!("service_env.{key}: services.{svc} has no `port`"))),
                _ => return Err(err(line, format!("service_env.{key}: {{{reference}}} is not {{{svc}.host}} or {{{svc}.port}}"))),
            }
        }
        service_env.insert(key, template);
    }
    Ok((services, service_env))
}

/// The static dir must exist, be a directory, and stay inside the release dir once symlinks
/// are resolved (the path itself has no `..`; a symlink could still point out).
fn check_static_dir(dir: &Path, rel: &Path) -> Result<(), String> {
    let shown = rel.display();
    let root = dir
        .canonicalize()
        .map_err(|e| format!("cannot resolve the release dir: {e}"))?;
    let full = match dir.join(rel).canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("static dir {shown:?} does not exist"))
        }
        Err(e) => return Err(format!("static dir {shown:?}: {e}")),
    };
    if !full.starts_with(&root) {
        return Err(format!("static dir {shown:?} leads outside the app"));
    }
    if !full.is_dir() {
        return Err(format!("static dir {shown:?} is not a directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
