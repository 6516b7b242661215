//! berth's control-plane HTTP API, served on the admin listener (loopback by default).
//!
//! `GET /api/v1/routes` and `PUT /api/v1/routes` read and replace the proxy's whole route table
//! (the API the deploy engine uses); `GET /metrics` is the Prometheus exposition;
//! `GET /api/v1/health` answers while the process is up.
#![forbid(unsafe_code)]

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use proxy::config::RouteSpec;
use proxy::Proxy;
use std::sync::Arc;

/// The one error type of the API: a status and a message, rendered as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

pub fn router(proxy: Arc<Proxy>) -> Router {
    Router::new()
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({ "status": "ok" })) }),
        )
        .route("/api/v1/routes", get(get_routes).put(put_routes))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn(local_host_only))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1/routes",
            )
        })
        .with_state(proxy)
}

/// The admin API has no token yet (it listens on loopback): refuse requests whose Host is not
/// an IP literal or `localhost`, so that a web page cannot reach it through DNS rebinding
/// (a name that resolves to 127.0.0.1 still sends its own name as Host).
async fn local_host_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let local = name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok();
    if !local {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "the admin API answers only to an IP address or localhost as Host",
        ));
    }
    Ok(next.run(req).await)
}

async fn get_routes(State(proxy): State<Arc<Proxy>>) -> Json<Vec<RouteSpec>> {
    Json(proxy.routes())
}

/// Replace every route. The body is the full JSON list, as `GET` returns it. Nothing changes
/// unless the whole list is valid.
async fn put_routes(
    State(proxy): State<Arc<Proxy>>,
    body: Bytes,
) -> Result<Json<Vec<RouteSpec>>, ApiError> {
    let specs: Vec<RouteSpec> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid route list: {e}")))?;
    proxy
        .set_routes(specs)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    tracing::info!(
        routes = proxy.routes().len(),
        "routes replaced through the admin API"
    );
    Ok(Json(proxy.routes()))
}

async fn metrics(State(proxy): State<Arc<Proxy>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        proxy.metrics(),
    )
}
