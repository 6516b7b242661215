//! The build queue across apps (`berth builds`): every deploy with its trigger, commit and
//! steps; cancel; an app's git settings (deploy branch, previews, cancel-running) and branch
//! deletion (a pushed branch deleted: its preview goes).

use crate::apps::json_body;
use crate::render::{app_json, deploy_json};
use crate::stream::LogQuery;
use crate::{ApiError, Caller, Ctx};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

type JsonResult = Result<Json<Value>, ApiError>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildsQuery {
    app: Option<String>,
    /// Only queued and running ones.
    #[serde(default)]
    active: bool,
    limit: Option<usize>,
}

/// `GET /builds`: newest first, across the apps the caller may see.
pub async fn list(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<BuildsQuery>,
) -> JsonResult {
    if let Some(a) = &q.app {
        caller.app(a)?;
        ctx.engine.app(a)?;
    }
    let list = ctx
        .engine
        .store()
        .all_deploys(q.app.as_deref(), q.active, q.limit.unwrap_or(50).min(1000))
        .map_err(crate::auth::store_err)?;
    Ok(Json(
        list.iter()
            .filter(|d| caller.app(&d.app).is_ok())
            .map(|d| deploy_json(&ctx.engine, d))
            .collect(),
    ))
}

/// A build the caller may see (404 otherwise, so ids do not leak across scopes).
fn build_of(ctx: &Ctx, caller: &Caller, id: i64) -> Result<engine::store::Deploy, ApiError> {
    match ctx.engine.deploy(id) {
        Ok(d) if caller.app(&d.app).is_ok() => Ok(d),
        _ => Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("build {id} not found"))
                .hint("berth builds lists them"),
        ),
    }
}

pub async fn get(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> JsonResult {
    let d = build_of(&ctx, &caller, id)?;
    Ok(Json(deploy_json(&ctx.engine, &d)))
}

/// `GET /builds/{id}/log[?follow=true]`: as the app's deploy log.
pub async fn log(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    q: Query<LogQuery>,
) -> Result<Response, ApiError> {
    let d = build_of(&ctx, &caller, id)?;
    crate::stream::deploy_log(State(ctx), Extension(caller), Path((d.app, id)), q).await
}

/// `POST /builds/{id}/cancel`: a queued build never runs; a running one stops (its test or
/// build command is killed, its new instances stopped); a live one is refused (409).
pub async fn cancel(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> JsonResult {
    build_of(&ctx, &caller, id)?;
    let d = ctx.engine.cancel_deploy(id, &caller.actor())?;
    Ok(Json(deploy_json(&ctx.engine, &d)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    deploy_branch: Option<String>,
    cancel_running: Option<bool>,
    previews: Option<bool>,
    preview_max: Option<u32>,
    /// Replaces the preview env overrides.
    preview_env: Option<BTreeMap<String, String>>,
}

/// `PATCH /apps/{app}/settings`.
pub async fn settings(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> JsonResult {
    caller.app(&app)?;
    let p: SettingsPatch = json_body(&body)?;
    // Each preview is an app with budgets of its own (processes, memory, a build slot share):
    // how many a tenant may run is the operator's decision, not its deploy token's.
    if (p.previews == Some(true) || p.preview_max.is_some()) && caller.admin().is_err() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "turning previews on, or changing how many may run, needs an admin token (each preview is an app with its own process, memory and build budgets)",
        )
        .hint(format!(
            "ask an admin: berth apps:settings {app} --previews on --preview-max N"
        )));
    }
    let change = engine::SettingsChange {
        deploy_branch: p.deploy_branch,
        cancel_running: p.cancel_running,
        previews: p.previews,
        preview_max: p.preview_max,
        preview_env: p.preview_env,
    };
    let a = ctx.engine.update_settings(&app, change, &caller.actor())?;
    Ok(Json(app_json(&ctx.engine, &a)))
}

/// `DELETE /apps/{app}/branches/{*branch}`: a branch was deleted (by a push or a webhook).
pub async fn delete_branch(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((app, branch)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.app(&app)?;
    ctx.engine
        .delete_branch(&app, &branch, &caller.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
