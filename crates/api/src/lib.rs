//! berth's control-plane HTTP API (`/api/v1`, JSON), served on the admin listener and through
//! the proxy at `berth.<domain>`. The contract is `docs/api.md`; `GET /api/v1/openapi.json`
//! describes it.
//!
//! Every endpoint but `GET /api/v1/health` needs a bearer token (`auth.rs`). Handlers are thin:
//! they check input and scope, call the engine, and render JSON (`render.rs`; the engine's and
//! store's types are not `Serialize`, the wire format lives here).
#![forbid(unsafe_code)]

mod apps;
mod auth;
mod builds;
mod git;
mod listener;
mod notify;
mod openapi;
mod render;
mod stream;
mod webhooks;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Extension, Json, Router};
use engine::Engine;
use proxy::config::RouteSpec;
use proxy::Proxy;
use std::path::PathBuf;
use std::sync::Arc;

pub use auth::Caller;
pub use listener::{serve, ListenerLimits};

/// The one error type of the API: a status, a message and maybe a hint, rendered as
/// `{"error": "...", "hint": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub hint: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(h) = self.hint {
            body["hint"] = h.into();
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<engine::EngineError> for ApiError {
    fn from(e: engine::EngineError) -> Self {
        use engine::EngineError as E;
        // Messages may carry a hint as " (hint: ...)": split it out for the CLI.
        let (status, msg) = match e {
            E::NotFound(m) => (StatusCode::NOT_FOUND, m),
            E::Conflict(m) => (StatusCode::CONFLICT, m),
            E::BadInput(m) => (StatusCode::UNPROCESSABLE_ENTITY, m),
            E::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m),
            E::Internal(m) => {
                tracing::error!(error = %m, "internal error in the API");
                (StatusCode::INTERNAL_SERVER_ERROR, m)
            }
        };
        match msg.split_once(" (hint: ") {
            Some((m, h)) => ApiError::new(status, m).hint(h.trim_end_matches(')')),
            None => ApiError::new(status, msg),
        }
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct Ctx {
    pub proxy: Arc<Proxy>,
    pub engine: Arc<Engine>,
    /// The ACME client, with `[tls.acme]`.
    pub acme: Option<Arc<acme::Manager>>,
    /// Where uploads are spooled before they are unpacked.
    pub tmp_dir: PathBuf,
    /// The followed streams open, per token (`stream::Streams`).
    pub streams: stream::Streams,
}

pub fn router(ctx: Ctx) -> Router {
    let v1 = Router::new()
        .route("/apps", get(apps::list).post(apps::create))
        .route("/apps/{app}", get(apps::info).delete(apps::destroy))
        .route("/apps/{app}/deploys", get(apps::deploys).post(apps::upload))
        .route("/apps/{app}/deploys/{id}", get(apps::deploy))
        .route("/apps/{app}/deploys/{id}/log", get(stream::deploy_log))
        .route("/apps/{app}/releases", get(apps::releases))
        .route("/apps/{app}/rollback", post(apps::rollback))
        .route("/apps/{app}/env", get(apps::env).patch(apps::update_env))
        .route("/apps/{app}/formation", put(apps::scale))
        .route("/apps/{app}/restart", post(apps::restart))
        .route(
            "/apps/{app}/domains",
            get(apps::domains).post(apps::add_domain),
        )
        .route("/apps/{app}/domains/{host}", delete(apps::remove_domain))
        .route("/apps/{app}/instances", get(apps::instances))
        .route(
            "/apps/{app}/repo",
            get(webhooks::repo)
                .put(webhooks::connect)
                .delete(webhooks::disconnect),
        )
        .route("/apps/{app}/logs", get(stream::app_logs))
        .route("/apps/{app}/services", get(apps::services))
        .route("/apps/{app}/volumes", get(apps::volumes))
        .route("/apps/{app}/settings", patch(builds::settings))
        .route(
            "/apps/{app}/branches/{*branch}",
            delete(builds::delete_branch),
        )
        .route("/builds", get(builds::list))
        .route("/builds/{id}", get(builds::get))
        .route("/builds/{id}/log", get(builds::log))
        .route("/builds/{id}/cancel", post(builds::cancel))
        .route("/tokens", get(auth::list).post(auth::create))
        .route("/tokens/{id}", delete(auth::revoke))
        .route("/audit", get(auth::audit))
        .route("/notifications", get(notify::list).post(notify::create))
        .route("/notifications/{id}", delete(notify::remove))
        .route("/routes", get(get_routes).put(put_routes))
        .route("/nodes", get(apps::nodes))
        .route("/certs", get(certs))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .nest("/api/v1", v1)
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            auth::require_token,
        ))
        // Registered after the auth layer, so it is the one route without a token.
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        // Signed by the repository's host instead of a token (`webhooks.rs`).
        .merge(webhooks::routes())
        // git's smart HTTP, with its own (Basic) authentication: `git.rs`.
        .route("/git/{repo}/{*rest}", get(git::handle).post(git::handle))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
                .hint("see GET /api/v1/openapi.json")
        })
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(ctx)
}

/// axum's own rejections (a path or query parameter that does not parse, a wrong method) are
/// plain text or empty: give every error the API's JSON shape, keeping headers such as `Allow`.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut out = ApiError::new(status, message).into_response();
    for name in [header::ALLOW, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct RoutesQuery {
    #[serde(default)]
    all: bool,
}

/// The operator's routes (config file, or the last `PUT`); `?all=true`: the whole live table,
/// apps and the API host included.
async fn get_routes(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    axum::extract::Query(q): axum::extract::Query<RoutesQuery>,
) -> Result<Json<Vec<RouteSpec>>, ApiError> {
    caller.admin()?;
    Ok(Json(if q.all {
        ctx.proxy.routes()
    } else {
        ctx.engine.base_routes()
    }))
}

/// `GET /certs` (admin): each routed host's certificate: where it comes from (`file`, `acme`,
/// `local`), its issuer and expiry, and for ACME hosts the manager's status (pending, valid,
/// failed with the reason and the next attempt).
async fn certs(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    caller.admin()?;
    let acme: std::collections::BTreeMap<String, acme::HostStatus> = ctx
        .acme
        .as_ref()
        .map(|m| {
            m.status()
                .into_iter()
                .map(|s| (s.host.clone(), s))
                .collect()
        })
        .unwrap_or_default();
    let mut hosts = ctx.proxy.route_hosts();
    hosts.extend(acme.keys().cloned());
    hosts.sort();
    hosts.dedup();
    let resolver = ctx.proxy.resolver();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    let list = hosts
        .into_iter()
        .map(|host| {
            let serving = resolver.as_ref().and_then(|r| r.serving(&host));
            let info = serving
                .as_ref()
                .and_then(|(_, c)| c.cert.first())
                .and_then(|leaf| proxy::tls::cert_info(leaf));
            let a = acme.get(&host);
            serde_json::json!({
                "host": host,
                "source": serving.as_ref().map(|(s, _)| *s),
                "issuer": info.as_ref().map(|i| i.issuer.clone()),
                "not_after": info.as_ref().map(|i| secs(i.not_after)),
                "acme": a,
            })
        })
        .collect();
    Ok(Json(list))
}

/// Replace the operator's routes; the apps' routes are added to them as always. The body is
/// the full JSON list, as `GET` returns it. Nothing changes unless the whole table is valid.
async fn put_routes(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Vec<RouteSpec>>, ApiError> {
    caller.admin()?;
    let specs: Vec<RouteSpec> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid route list: {e}")))?;
    proxy::config::validate_routes(&specs)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let n = specs.len();
    ctx.engine.set_api_routes(specs, &caller.actor())?;
    tracing::info!(routes = n, actor = %caller.actor(), "routes replaced through the admin API");
    Ok(Json(ctx.engine.base_routes()))
}

async fn metrics(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.admin()?;
    // ACME's families go before the proxy's exposition (which ends in the one `# EOF`).
    let mut text = ctx.acme.as_ref().map(|a| a.metrics()).unwrap_or_default();
    text.push_str(&ctx.proxy.metrics());
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
