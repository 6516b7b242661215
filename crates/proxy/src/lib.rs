//! berth's data plane: listeners, TLS, HTTP/1.1 and HTTP/2 to clients, routing, upstream pools,
//! health checks, static files, limits, access log and metrics.
//!
//! The control plane talks to it only through [`Proxy`]: start it from a [`config::FileConfig`],
//! replace its routes with [`Proxy::set_routes`], read [`Proxy::metrics`], and shut it down.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod config;
mod conn_h1;
mod conn_h2;
pub mod h1;
pub mod metrics;
pub mod request;
mod server;
pub mod static_files;
pub mod table;
pub mod tls;
pub mod upstream;

pub use server::{Bound, Proxy, StartError};
