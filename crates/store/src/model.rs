//! The typed rows the store hands out. They deliberately don't derive
//! `Serialize`: the API decides its own wire format (and, e.g., must never
//! expose token hashes), so it maps these into its own types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::StoreError;

/// Defines a string-backed enum with `as_str`, `FromStr` and `Display`, so the
/// text stored in SQLite and the Rust value can't drift apart.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// The text stored in the database (and used on the wire).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(StoreError::Corrupt(format!(
                        concat!("unknown ", stringify!($name), " {:?}"),
                        other
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Whether a release's build is usable.
    ReleaseStatus {
        Building => "building",
        Ready => "ready",
        Failed => "failed",
    }
}

text_enum! {
    /// Why a deploy was started.
    DeployKind {
        /// A new build from uploaded source.
        Build => "build",
        /// Going back to an earlier release's build.
        Rollback => "rollback",
        /// Same build, new config (env change, manual restart).
        Restart => "restart",
    }
}

text_enum! {
    /// Where a deploy is in its life.
    DeployStatus {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        /// Stopped by a user (`berth builds:cancel`) or by a newer push (`cancel_running`).
        Cancelled => "cancelled",
        /// Never ran: a newer push to the same branch came first.
        Superseded => "superseded",
    }
}

impl DeployStatus {
    /// Queued or running.
    pub fn is_active(self) -> bool {
        matches!(self, DeployStatus::Queued | DeployStatus::Running)
    }
}

text_enum! {
    /// What an API token may do.
    Scope {
        /// Everything.
        Admin => "admin",
        /// Deploy (and read) only the apps listed on the token.
        Deploy => "deploy",
    }
}

/// An application.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
    /// The release version currently serving traffic, if any.
    pub live_release: Option<i64>,
    /// Desired replicas per process type.
    pub formation: BTreeMap<String, u32>,
    pub settings: AppSettings,
    /// Which generation of the live release's instances serves: 0 when it went live, one
    /// more with each restart (new instances of the same release).
    pub live_generation: u32,
}

/// One immutable build of an app plus the spec to run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub id: i64,
    pub app: String,
    /// 1, 2, 3… per app.
    pub version: i64,
    pub created_at: i64,
    pub status: ReleaseStatus,
    /// Absolute path of the release directory.
    pub dir: PathBuf,
    /// Opaque JSON owned by the engine (processes, health checks…).
    pub spec: String,
    pub description: String,
    /// For rollbacks/config restarts: the release whose build this reuses.
    pub source_release: Option<i64>,
    /// The config it runs with (env values, formation) as JSON; `{}` until it first starts.
    pub config: String,
}

/// One run of the deploy pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Deploy {
    pub id: i64,
    pub app: String,
    pub release_version: Option<i64>,
    pub kind: DeployKind,
    pub status: DeployStatus,
    /// Free text: 'queued', 'unpack', 'build', 'start', 'health', 'switched', 'done'…
    pub step: String,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    pub actor: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub log_path: PathBuf,
    /// What started it and which commit it builds.
    pub meta: DeployMeta,
    /// The pipeline's steps so far, in order.
    pub steps: Vec<Step>,
}

/// What started a deploy and, for a build from git, which commit.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct DeployMeta {
    /// `upload` (CLI deploy), `git` (push), `webhook`, `rollback`, `env`, `scale`, `restart`,
    /// `api` (a build through the API).
    pub trigger: String,
    pub sha: Option<String>,
    pub branch: Option<String>,
    pub author: Option<String>,
    /// The commit message's first line.
    pub message: Option<String>,
}

/// One step of a deploy's pipeline as recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    pub name: String,
    /// `running`, `succeeded`, `failed`, `cancelled`, `superseded`.
    pub status: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// An app's git and CI settings (stored as JSON; every field has a default).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AppSettings {
    /// A push to this branch deploys the app.
    pub deploy_branch: String,
    /// A repository whose push webhooks deploy the app (`berth apps:connect`).
    pub repo: Option<RepoLink>,
    /// A newer push cancels the app's running build (a queued one is always superseded).
    pub cancel_running: bool,
    /// Pushes to other branches deploy previews at `<branch>--<app>.<domain>`.
    pub previews: bool,
    /// At most this many previews at once.
    pub preview_max: u32,
    /// Env overrides for previews, on top of the app's env.
    pub preview_env: BTreeMap<String, String>,
    /// For a preview app: the app it previews and the branch.
    pub preview_of: Option<PreviewOf>,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            deploy_branch: "main".into(),
            repo: None,
            cancel_running: true,
            previews: false,
            preview_max: 5,
            preview_env: BTreeMap::new(),
            preview_of: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RepoLink {
    /// As given; webhooks are matched on [`normalize_repo_url`] of it.
    pub url: String,
    pub branch: String,
    /// The webhook secret (never empty). Shown once, when connecting.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreviewOf {
    pub app: String,
    pub branch: String,
}

/// A repository URL reduced to compare webhook payloads with connected apps: no scheme, no
/// credentials, no trailing `.git` or `/`, lower case (`https://GitHub.com/a/b.git` and
/// `git@github.com:a/b` are the same repository).
pub fn normalize_repo_url(url: &str) -> String {
    let mut u = url.trim();
    if let Some(i) = u.find("://") {
        u = &u[i + 3..];
    }
    if let Some(i) = u.find('@') {
        if !u[..i].contains('/') {
            u = &u[i + 1..];
        }
    }
    let u = u.trim_end_matches('/');
    let u = u.strip_suffix(".git").unwrap_or(u);
    let mut out = u.to_ascii_lowercase();
    // scp-like `host:path`
    if let Some(i) = out.find(':') {
        if !out[..i].contains('/') && !out[i + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            out.replace_range(i..=i, "/");
        }
    }
    out
}

/// An outgoing webhook target (`berth notify:add`).
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyTarget {
    pub id: i64,
    /// `None`: every app.
    pub app: Option<String>,
    pub url: String,
    pub secret: String,
    pub created_at: i64,
}

/// A running (or recently running) process of an app.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: i64,
    pub app: String,
    pub release_version: i64,
    pub proc_type: String,
    pub index: u32,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    /// Process start time in clock ticks (from /proc), so after a berth
    /// restart we can tell our process from an unrelated one that reused the pid.
    pub pid_start: Option<u64>,
    pub runtime_id: String,
    /// 'starting', 'running', 'crashed', 'stopping', 'stopped'.
    pub state: String,
    pub started_at: i64,
}

/// What the engine knows when it records an instance; the store adds the id
/// and timestamps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewInstance {
    pub app: String,
    pub release_version: i64,
    pub proc_type: String,
    pub index: u32,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    pub runtime_id: String,
    pub state: String,
}

/// An API token as listed; the secret and its hash are never part of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    /// Apps a deploy-scoped token may act on (empty for admin tokens).
    pub apps: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    /// Never contains secret values (env values, tokens) by construction.
    pub detail: String,
}
