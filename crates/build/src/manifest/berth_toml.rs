//! berth.toml: berth's own app manifest. Unlike app.json it is ours, so unknown keys are errors
//! (a misspelled `drain_timeot` must not be silently ignored).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::values::{line_col, Command, Dur, HealthPath, ProcName, RelDir, Replicas, Size};
use super::ManifestError;

/// Smallest memory limit accepted. Below this hardly any runtime starts, and the failure
/// (an OOM kill at boot) is harder to read than this error.
const MIN_MEMORY: u64 = 4 << 20;
/// Most CPU cores one instance may ask for; a bound against typos like `cpu = 150`.
const MAX_CPU: f64 = 1024.0;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BerthToml {
    /// `"docker"`, `"process"` or `"auto"` (the default: Docker when there is a Dockerfile and
    /// a daemon).
    runtime: Option<Spanned<String>>,
    build: Option<Build>,
    test: Option<Build>,
    health: Option<Spanned<Health>>,
    deploy: Option<Deploy>,
    #[serde(rename = "static")]
    static_site: Option<Spanned<Static>>,
    #[serde(default)]
    formation: BTreeMap<Spanned<ProcName>, Replicas>,
    limits: Option<Limits>,
    #[serde(default)]
    processes: BTreeMap<Spanned<ProcName>, Command>,
    /// Accessory services (containers beside the app; need Docker).
    #[serde(default)]
    services: BTreeMap<Spanned<String>, TomlService>,
    /// Env vars of the app made from its services: `{db.host}`, `{db.port}`.
    #[serde(default)]
    service_env: BTreeMap<String, Spanned<String>>,
    /// Placement of a Swarm app's tasks.
    swarm: Option<Swarm>,
    /// `Strict-Transport-Security` on the app's HTTPS answers: `true` or the whole value.
    hsts: Option<Spanned<HstsValue>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HstsValue {
    On(bool),
    Value(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Swarm {
    #[serde(default)]
    constraints: Vec<Spanned<String>>,
    max_replicas_per_node: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TomlService {
    pub image: Option<String>,
    /// A directory of the app with a Dockerfile.
    pub build: Option<String>,
    pub port: Option<u16>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `name:/path` named volumes.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// A command (exec form) that exits 0 when the service is ready.
    pub healthcheck: Option<Vec<String>>,
    #[serde(default)]
    pub depends_on: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Build {
    command: Command,
    timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    path: Option<HealthPath>,
    tcp: Option<bool>,
    timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deploy {
    drain_timeout: Option<Dur>,
    stop_grace: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Static {
    dir: RelDir,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    memory: Option<Spanned<Size>>,
    pids: Option<Spanned<u64>>,
    cpu: Option<Spanned<f64>>,
}

/// What berth.toml contributes to the [`super::AppSpec`], already checked. Names carry their
/// line for errors found when combining with the Procfile and app.json.
#[derive(Debug, Default)]
pub(crate) struct TomlSettings {
    pub build_command: Option<String>,
    pub build_timeout: Option<Duration>,
    pub runtime: Option<super::RuntimeChoice>,
    pub test_command: Option<String>,
    pub test_timeout: Option<Duration>,
    pub health_path: Option<String>,
    pub health_tcp: Option<bool>,
    pub health_timeout: Option<Duration>,
    pub drain_timeout: Option<Duration>,
    pub stop_grace: Option<Duration>,
    pub static_dir: Option<(PathBuf, usize)>,
    pub formation: Vec<(String, u32, usize)>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    pub cpu: Option<f64>,
    pub processes: Vec<(String, String, usize)>,
    /// (name, definition, line).
    pub services: Vec<(String, TomlService, usize)>,
    /// (var, template, line).
    pub service_env: Vec<(String, String, usize)>,
    pub swarm: super::SwarmSettings,
    pub hsts: Option<String>,
}

pub(crate) fn parse(text: &str) -> Result<TomlSettings, ManifestError> {
    let at = |span: Option<std::ops::Range<usize>>, reason: String| {
        let pos = span.map(|s| line_col(text, s.start));
        ManifestError::at("berth.toml", pos.map(|p| p.0), pos.map(|p| p.1), reason)
    };
    let line = |span: std::ops::Range<usize>| line_col(text, span.start).0;
    let raw: BerthToml = toml::from_str(text).map_err(|e| at(e.span(), e.message().to_string()))?;

    let mut out = TomlSettings::default();
    if let Some(r) = raw.runtime {
        let span = r.span();
        out.runtime = Some(match r.into_inner().as_str() {
            "auto" => super::RuntimeChoice::Auto,
            "process" => super::RuntimeChoice::Process,
            "docker" => super::RuntimeChoice::Docker,
            "swarm" => super::RuntimeChoice::Swarm,
            other => {
                return Err(at(
                    Some(span),
                    format!(
                    "runtime {other:?} is not one of \"auto\", \"process\", \"docker\", \"swarm\""
                ),
                ))
            }
        });
    }
    if let Some(h) = raw.hsts {
        let span = h.span();
        let parsed = match h.into_inner() {
            HstsValue::On(on) => units::parse_hsts(Some(on), None),
            HstsValue::Value(v) => units::parse_hsts(None, Some(v)),
        };
        out.hsts = Some(parsed.map_err(|e| at(Some(span), e))?);
    }
    if let Some(sw) = raw.swarm {
        for c in sw.constraints {
            let text = c.get_ref().trim();
            let ok = (text.contains("==") || text.contains("!="))
                && text.starts_with(|ch: char| ch.is_ascii_alphabetic())
                && !text.chars().any(char::is_control);
            if !ok {
                return Err(at(
                    Some(c.span()),
                    format!("constraint {:?} is not `<attribute> == <value>` or `<attribute> != <value>` (e.g. \"node.role == worker\")", c.get_ref()),
                ));
            }
            out.swarm.constraints.push(text.to_string());
        }
        if let Some(m) = sw.max_replicas_per_node {
            if *m.get_ref() == 0 {
                return Err(at(
                    Some(m.span()),
                    "max_replicas_per_node must be at least 1".to_string(),
                ));
            }
            out.swarm.max_replicas_per_node = Some(*m.get_ref());
        }
    }
    if let Some(b) = raw.build {
        out.build_command = Some(b.command.0);
        out.build_timeout = b.timeout.map(|d| d.0);
    }
    if let Some(t) = raw.test {
        out.test_command = Some(t.command.0);
        out.test_timeout = t.timeout.map(|d| d.0);
    }
    if let Some(h) = raw.health {
        let span = h.span();
        let h = h.into_inner();
        if h.tcp == Some(true) && h.path.is_some() {
            return Err(at(
                Some(span),
                "[health] has both `tcp = true` and a `path`; a TCP check sends no request, so drop one".to_string(),
            ));
        }
        out.health_path = h.path.map(|p| p.0);
        out.health_tcp = h.tcp;
        out.health_timeout = h.timeout.map(|d| d.0);
    }
    if let Some(d) = raw.deploy {
        out.drain_timeout = d.drain_timeout.map(|d| d.0);
        out.stop_grace = d.stop_grace.map(|d| d.0);
    }
    if let Some(s) = raw.static_site {
        out.static_dir = Some((s.get_ref().dir.0.clone(), line(s.span())));
    }
    if let Some(l) = raw.limits {
        if let Some(m) = l.memory {
            if m.get_ref().0 < MIN_MEMORY {
                return Err(at(
                    Some(m.span()),
                    format!(
                        "memory limit {} bytes is below the minimum of 4MiB",
                        m.get_ref().0
                    ),
                ));
            }
            out.memory = Some(m.get_ref().0);
        }
        if let Some(p) = l.pids {
            if *p.get_ref() == 0 {
                return Err(at(Some(p.span()), "pids must be at least 1".to_string()));
            }
            out.pids = Some(*p.get_ref());
        }
        if let Some(c) = l.cpu {
            let cpu = *c.get_ref();
            if !(cpu > 0.0 && cpu <= MAX_CPU) {
                return Err(at(
                    Some(c.span()),
                    format!("cpu must be more than 0 and at most {MAX_CPU} cores"),
                ));
            }
            out.cpu = Some(cpu);
        }
    }
    out.formation = raw
        .formation
        .into_iter()
        .map(|(name, n)| {
            let l = line(name.span());
            (name.into_inner().0, n.0, l)
        })
        .collect();
    out.processes = raw
        .processes
        .into_iter()
        .map(|(name, cmd)| {
            let l = line(name.span());
            (name.into_inner().0, cmd.0, l)
        })
        .collect();
    out.services = raw
        .services
        .into_iter()
        .map(|(name, svc)| {
            let l = line(name.span());
            (name.into_inner(), svc, l)
        })
        .collect();
    out.service_env = raw
        .service_env
        .into_iter()
        .map(|(k, v)| {
            let l = line(v.span());
            (k, v.into_inner(), l)
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_table() {
        let s = parse("runtime = \"swarm\"\n[swarm]\nconstraints = [\"node.role == worker\"]\nmax_replicas_per_node = 1\n").unwrap();
        assert_eq!(s.runtime, Some(super::super::RuntimeChoice::Swarm));
        assert_eq!(s.swarm.constraints, vec!["node.role == worker"]);
        assert_eq!(s.swarm.max_replicas_per_node, Some(1));
        for (bad, line) in [
            ("[swarm]\nconstraints = [\"worker\"]\n", 2),
            ("[swarm]\nmax_replicas_per_node = 0\n", 2),
            ("[swarm]\nreplicas = 2\n", 2),
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.line, Some(line), "{bad}: {e}");
        }
    }

    #[test]
    fn full_example() {
        let text = r#"
[build]
command = "make build"
timeout = "10m"
[test]
command = "make test"
timeout = "2m"
[health]
path = "/healthz"
tcp = false
timeout = "30s"
[deploy]
drain_timeout = "45s"
stop_grace = "10s"
[static]
dir = "public"
[formation]
web = 2
[limits]
memory = "256MiB"
pids = 512
cpu = 1.5
[processes]
web = "python3 app.py"
worker = "  python3 worker.py  "
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.build_command.as_deref(), Some("make build"));
        assert_eq!(s.build_timeout, Some(Duration::from_secs(600)));
        assert_eq!(s.test_command.as_deref(), Some("make test"));
        assert_eq!(s.test_timeout, Some(Duration::from_secs(120)));
        assert_eq!(s.health_path.as_deref(), Some("/healthz"));
        assert_eq!(s.health_tcp, Some(false));
        assert_eq!(s.health_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.drain_timeout, Some(Duration::from_secs(45)));
        assert_eq!(s.stop_grace, Some(Duration::from_secs(10)));
        assert_eq!(s.static_dir, Some((PathBuf::from("public"), 15)));
        assert_eq!(s.formation, vec![("web".to_string(), 2, 18)]);
        assert_eq!(s.memory, Some(256 << 20));
        assert_eq!(s.pids, Some(512));
        assert_eq!(s.cpu, Some(1.5));
        assert_eq!(
            s.processes,
            vec![
                ("web".to_string(), "python3 app.py".to_string(), 24),
                ("worker".to_string(), "python3 worker.py".to_string(), 25),
            ]
        );
    }

    #[test]
    fn integer_memory_is_bytes() {
        let s = parse("[limits]\nmemory = 8388608\n").unwrap();
        assert_eq!(s.memory, Some(8 << 20));
    }

    #[test]
    fn errors_carry_line_and_name_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[build]\ncommand = \"x\"\ncomand = \"y\"\n",
                3,
                "unknown field `comand`",
            ),
            (
                "\n\n[deploy]\ndrain_timeot = \"1s\"\n",
                4,
                "unknown field `drain_timeot`",
            ),
            ("[helth]\npath = \"/\"\n", 1, "unknown field `helth`"),
            ("[health]\npath = \"healthz\"\n", 2, "must start with '/'"),
            ("[health]\npath = \"/a b\"\n", 2, "must not contain spaces"),
            ("[health]\ntimeout = \"0s\"\n", 2, "greater than zero"),
            ("[health]\ntimeout = \"30\"\n", 2, "invalid duration"),
            ("[health]\ntimeout = 30\n", 2, "invalid type: integer `30`"),
            (
                "[health]\ntcp = true\npath = \"/x\"\n",
                1,
                "both `tcp = true` and a `path`",
            ),
            (
                "[deploy]\nstop_grace = \"1d\"\n",
                2,
                "invalid duration \"1d\"",
            ),
            ("[build]\ntimeout = \"1m\"\n", 1, "missing field `command`"),
            ("[build]\ncommand = \"  \"\n", 2, "command is empty"),
            (
                "[formation]\nweb = 101\n",
                2,
                "more than the maximum of 100",
            ),
            ("[formation]\nweb = -1\n", 2, "invalid value"),
            ("[formation]\nWeb = 1\n", 2, "invalid process name \"Web\""),
            (
                "[limits]\nmemory = \"1MiB\"\n",
                2,
                "below the minimum of 4MiB",
            ),
            ("[limits]\nmemory = \"lots\"\n", 2, "invalid size"),
            ("[limits]\npids = 0\n", 2, "at least 1"),
            ("[limits]\ncpu = 0.0\n", 2, "more than 0"),
            ("[limits]\ncpu = -1\n", 2, "more than 0"),
            ("[static]\ndir = \"../up\"\n", 2, "no `..`"),
            ("[static]\ndir = \"/srv/www\"\n", 2, "not absolute"),
            (
                "[processes]\n\"my app\" = \"x\"\n",
                2,
                "invalid process name",
            ),
            ("[processes]\nweb = \"\"\n", 2, "command is empty"),
            ("[processes]\nweb = 1\n", 2, "invalid type"),
            ("formation = 3\n", 1, "invalid type"),
            ("[build\n", 1, ""),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(*line), "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("berth.toml:{line}:")),
                "{err}"
            );
        }
    }
}
