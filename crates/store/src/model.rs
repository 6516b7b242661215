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
