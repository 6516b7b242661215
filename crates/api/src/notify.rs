//! Outgoing notifications: webhook targets that get build and deploy events (`notify.rs` of
//! the engine sends them). A target's signing secret is shown once, when it is added.

use crate::auth::store_err;
use crate::render::ts;
use crate::{ApiError, Caller, Ctx};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engine::store::{NotifyTarget, Scope};
use serde::Deserialize;
use serde_json::{json, Value};

/// A target as listed; credentials in its URL are never shown.
fn target_json(t: &NotifyTarget) -> Value {
    json!({
        "id": t.id,
        "app": t.app,
        "url": engine::webhook::redact_url(&t.url),
        "created_at": ts(t.created_at),
    })
}

#[derive(Deserialize)]
pub struct ListQuery {
    app: Option<String>,
}

/// Every target (admin), or with `?app=NAME` those that get that app's events (its own and
/// the global ones; a deploy token of the app may ask). Never the secrets.
pub async fn list(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    match &q.app {
        Some(a) => caller.app(a)?,
        None => caller.admin()?,
    }
    let targets = ctx.engine.notify_targets(q.app.as_deref())?;
    Ok(Json(targets.iter().map(target_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    url: String,
    #[serde(default)]
    app: Option<String>,
}

/// Add a target: `{"url"}` (every app; admin) or `{"url","app"}` (admin, or a deploy token of
/// the app). 201 with the signing secret, shown only here.
pub async fn create(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NewTarget = crate::apps::json_body(&body)?;
    match &req.app {
        Some(a) => caller.app(a)?,
        None if caller.0.scope == Scope::Deploy => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a target for every app needs an admin token",
            )
            .hint("name one of this token's apps: {\"url\": \"...\", \"app\": \"hello\"}"))
        }
        None => {}
    }
    let target = ctx
        .engine
        .add_notify_target(req.app.as_deref(), &req.url, &caller.actor())
        .await?;
    let mut body = target_json(&target);
    body["secret"] = target.secret.clone().into();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Remove a target: admin, or a deploy token of the target's app.
pub async fn remove(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if caller.admin().is_err() {
        let targets = ctx.engine.store().notify_targets(None).map_err(store_err)?;
        match targets.iter().find(|t| t.id == id) {
            // A deploy token learns nothing about other apps' targets.
            None => return Err(not_found(id)),
            Some(t) => match &t.app {
                Some(a) if caller.app(a).is_ok() => {}
                Some(_) => return Err(not_found(id)),
                None => caller.admin()?,
            },
        }
    }
    ctx.engine.remove_notify_target(id, &caller.actor())?;
    Ok(StatusCode::NO_CONTENT)
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("notification target {id} not found"),
    )
    .hint("`berth notify` lists them")
}
