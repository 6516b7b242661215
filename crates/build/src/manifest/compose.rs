//! The common subset of a Compose file (`compose.yaml`, `docker-compose.yml`, …), so a project
//! that runs with `docker compose up` deploys unchanged: per service `image` or `build`,
//! `environment`, named `volumes`, `depends_on`, `healthcheck`, and the web service's `ports`.
//! Any other key is refused by name, with its line.
//!
//! The web service (the one named `web`, else the only one with `ports`, else the only one with
//! `build`) is the app: its image is built and deployed with zero downtime like any Dockerfile
//! app. The others become the app's accessory services, reachable from the app by their names.

use super::{DockerBuild, ManifestError, ServiceHealth, ServiceSpec};
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

const SUPPORTED: &str = "image, build, environment, volumes, depends_on, healthcheck, ports";

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
                " (berth deploys this subset of Compose: {SUPPORTED} for services; version, name, services and volumes at the top)"
            ));
        }
        at(pos.as_ref().map(|p| p.line()), pos.map(|p| p.column()), reason)
    })?;
    let _ = (raw.version, raw.name);
    let plain = |reason: String| at(None, None, reason);
    if let Some(key) = raw.other.keys().find(|k| !k.starts_with("x-")) {
        return Err(plain(format!(
            "unknown top-level key `{key}` (berth deploys this subset of Compose: version, name, services, volumes and x-* extensions at the top; {SUPPORTED} for services)"
        )));
    }
    let mut declared = Vec::new();
    for (name, options) in raw.volumes.unwrap_or_default() {
        let plain_volume = match &options {
            serde_norway::Value::Null => true,
            serde_norway::Value::Mapping(m) => m.is_empty(),
            _ => false,
        };
        if !plain_volume {
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
        let env = environment(svc.environment)
            .map_err(|r| plain(format!("services.{name}.environment: {r}")))?;
        let mut volumes = Vec::new();
        for v in &svc.volumes {
            volumes.push(
                volume(v, &declared).map_err(|r| plain(format!("services.{name}.volumes: {r}")))?,
            );
        }
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
            if !volumes.is_empty() {
                return Err(plain(format!(
                    "services.{name}.volumes: the web service is replaced on every deploy; keep data in another service's volume"
                )));
            }
            if ports.len() > 1 {
                return Err(plain(format!(
                    "services.{name}.ports: berth routes one port of the web service; list one"
                )));
            }
            out.build = build;
            out.image = if out.build.is_some() { None } else { svc.image };
            out.env = env;
            out.container_port = ports.first().copied();
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
                port: None,
                healthcheck,
                depends_on,
            },
        );
    }
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

fn environment(env: Option<Environment>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    match env {
        None => {}
        Some(Environment::Map(m)) => {
            for (k, v) in m {
                let v = match v {
                    None => {
                        return Err(format!(
                            "{k} has no value (taken from the shell by docker compose; set it with berth env:set instead)"
                        ))
                    }
                    Some(serde_norway::Value::String(s)) => s,
                    Some(serde_norway::Value::Number(n)) => n.to_string(),
                    Some(serde_norway::Value::Bool(b)) => b.to_string(),
                    Some(_) => return Err(format!("{k}: a value is a string, number or boolean")),
                };
                out.insert(k, v);
            }
        }
        Some(Environment::List(l)) => {
            for item in l {
                match item.split_once('=') {
                    Some((k, v)) => {
                        out.insert(k.to_string(), v.to_string());
                    }
                    None => {
                        return Err(format!(
                            "{item} has no value (set it with berth env:set instead)"
                        ))
                    }
                }
            }
        }
    }
    for (k, v) in out.iter_mut() {
        let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || v.contains('\0') {
            return Err(format!("invalid variable {k:?}"));
        }
        *v = unescape(v).map_err(|e| format!("{k}: {e}"))?;
    }
    Ok(out)
}

/// Compose's `$`: `$$` is a literal `$`; any other `$` is an interpolation from the shell of
/// whoever runs `docker compose`, which berth does not have.
fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
        } else if chars.peek() == Some(&'$') {
            chars.next();
            out.push('$');
        } else {
            return Err(format!(
                "{s:?}: $ interpolation is not supported (write $$ for a literal $; set values with berth env:set)"
            ));
        }
    }
    Ok(out)
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
        total += units::parse_duration(&rest[..unit_end])?;
        rest = &rest[unit_end..];
    }
    if total.is_zero() {
        return Err(format!("invalid duration {s:?}"));
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
    if h.start_period.is_some() {
        return Err("start_period is not supported yet (raise retries or interval instead)".into());
    }
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        for (rel, text) in files {
            let p = tmp.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        tmp
    }

    #[test]
    fn the_common_subset() {
        let dir = project(&[
            ("Dockerfile", "FROM scratch\n"),
            ("db/Dockerfile", "FROM scratch\n"),
        ]);
        let text = r#"
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      DB_HOST: db
      DEBUG: 1
    depends_on: [db]
  db:
    build: { context: db }
    environment: ["MODE=persist"]
    volumes: ["data:/data"]
    healthcheck:
      test: ["CMD", "nc", "-z", "127.0.0.1", "6379"]
      interval: 1s
      timeout: 1m30s
      retries: 5
volumes:
  data: {}
"#;
        let c = parse("compose.yaml", text, dir.path()).unwrap();
        assert_eq!(c.web, "web");
        assert_eq!(c.build.unwrap().context, PathBuf::from("."));
        assert_eq!(c.container_port, Some(80));
        assert_eq!(c.env.get("DEBUG").map(String::as_str), Some("1"));
        let db = &c.services["db"];
        assert_eq!(db.build.as_ref().unwrap().context, PathBuf::from("db"));
        assert_eq!(db.volumes, vec![("data".to_string(), "/data".to_string())]);
        assert_eq!(db.env["MODE"], "persist");
        let h = db.healthcheck.as_ref().unwrap();
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_secs(90));
        assert_eq!(h.retries, 5);
    }

    #[test]
    fn dollars_and_extensions() {
        let dir = project(&[("Dockerfile", "FROM scratch\n")]);
        let text = "x-common: &c {}\nservices:\n  web:\n    build: .\n    environment:\n      PASS: a$$b\n";
        let c = parse("compose.yaml", text, dir.path()).unwrap();
        assert_eq!(c.env["PASS"], "a$b");
    }

    #[test]
    fn what_berth_does_not_support_is_named() {
        let dir = project(&[("Dockerfile", "FROM scratch\n")]);
        for (text, want) in [
            (
                "services:\n  web:\n    build: .\n    restart: always\n",
                "compose.yaml:4:5: services.web: unknown field `restart`",
            ),
            (
                "services:\n  web:\n    build: .\nnetworks: {}\n",
                "unknown top-level key `networks`",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    volumes: [\"./data:/d\"]\n",
                "bind mounts are not supported",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    volumes: [\"d:/d\"]\n",
                "not declared",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    ports: [\"5432:5432\"]\n",
                "only the web service is published",
            ),
            ("services:\n  a:\n    image: x\n  b:\n    image: y\n", "name it `web`"),
            (
                "services:\n  web:\n    build: ../elsewhere\n",
                "must stay inside the project",
            ),
            (
                "services:\n  web:\n    image: x\n    environment:\n      A: ${B}\n",
                "interpolation",
            ),
            (
                "services:\n  web:\n    build: { context: ., target: prod }\n",
                "no target",
            ),
            (
                "services:\n  web:\n    build: .\nvolumes:\n  d: { external: true }\n",
                "volume options",
            ),
            (
                "services:\n  web:\n    build: .\n    depends_on:\n      m: { condition: service_completed_successfully }\n  m:\n    image: x\n",
                "not supported",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: x\n    volumes: [\"d:/d:ro\"]\nvolumes:\n  d: {}\n",
                "volume mode",
            ),
        ] {
            let err = parse("compose.yaml", text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n→ {err}");
        }
    }
}
