#![forbid(unsafe_code)]
//! berth's build inputs: source bundles ([`bundle`]: pack on the client, unpack on the server)
//! and the app definition read from an unpacked release ([`manifest`]: Procfile, app.json,
//! berth.toml).

pub mod bundle;
pub mod git;
pub mod manifest;

pub use bundle::{pack, unpack, BundleError, PackStats, UnpackStats};
pub use manifest::{
    AppKind, AppSpec, BuildSpec, DockerBuild, EnvDecl, HealthCheck, HealthSpec, Limits,
    ManifestError, RuntimeChoice, ServiceHealth, ServiceSpec,
};
