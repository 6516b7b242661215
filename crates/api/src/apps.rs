//! Apps, deploys, releases, env, formation, domains and instances.

use crate::render::{app_json, deploy_json, instance_json, release_json};
use crate::{ApiError, Caller, Ctx};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::io::AsyncWriteExt;

type JsonResult = Result<Json<Value>, ApiError>;

/// Parse a JSON object body with a 400 that says what is wrong. Only an object is accepted:
/// serde's derive would also take an array as positional fields (`["x"]` as `{"name":"x"}`).
pub fn json_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bad = |e: String| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}"));
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !v.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

pub async fn list(State(ctx): State<Ctx>, Extension(caller): Extension<Caller>) -> JsonResult {
    let apps = ctx.engine.store().apps().map_err(crate::auth::store_err)?;
    Ok(Json(
        apps.iter()
            .filter(|a| caller.app(&a.name).is_ok())
            .map(|a| app_json(&ctx.engine, a))
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    name: String,
}

pub async fn create(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let req: NewApp = json_body(&body)?;
    let app = ctx.engine.create_app(&req.name, &caller.actor())?;
    Ok((StatusCode::CREATED, Json(app_json(&ctx.engine, &app))).into_response())
}

pub async fn info(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    let a = ctx.engine.app(&app)?;
    Ok(Json(app_json(&ctx.engine, &a)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyQuery {
    #[serde(default)]
    keep_volumes: bool,
}

/// `DELETE /apps/{app}`: everything of the app, its named volumes too unless
/// `?keep_volumes=true`.
pub async fn destroy(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<DestroyQuery>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    // In a task of its own: a client that gives up waiting must not leave the destroy half
    // done (the answer is lost, the app still goes).
    let (engine, actor) = (ctx.engine.clone(), caller.actor());
    tokio::spawn(async move { engine.destroy_app_with(&app, &actor, q.keep_volumes).await })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /apps/{app}/volumes`: the names of the app's named volumes (its services' data).
pub async fn volumes(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    Ok(Json(serde_json::json!(ctx.engine.volumes(&app).await?)))
}

/// `POST /apps/{app}/deploys`: the body is a `.tar.gz` source bundle, streamed to a spool
/// file (never whole in memory) and bounded; the engine then unpacks and checks it before
/// anything is recorded.
///
/// A push (`berth hook`, from `git push`) says which commit it is with query parameters:
/// `trigger=git&sha=…&branch=…&author=…&message=…`; the branch decides whether the app, a
/// preview or nothing is deployed (`200 {"ignored": reason}`).
pub async fn upload(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<PushQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    ctx.engine.app(&app)?;
    let meta = q.meta()?;
    let max = ctx.engine.cfg.max_upload;
    tokio::fs::create_dir_all(&ctx.tmp_dir)
        .await
        .map_err(internal)?;
    let spool = Spool(ctx.tmp_dir.join(format!("upload-{}.tar.gz", unique())));
    let mut file = tokio::fs::File::create(&spool.0).await.map_err(internal)?;
    let mut body = body;
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, format!("upload interrupted: {e}"))
        })?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > max {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the source bundle is larger than the limit ({})", size(max)),
                )
                .hint("add build output and dependencies to .gitignore"));
            }
            file.write_all(&data).await.map_err(internal)?;
        }
    }
    file.flush().await.map_err(internal)?;
    drop(file);
    if total == 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "empty upload")
            .hint("the body is a .tar.gz of the app's source (berth deploy makes one)"));
    }
    let pushed = ctx
        .engine
        .deploy_push(&app, &spool.0, &caller.actor(), meta)
        .await?;
    Ok(match pushed {
        engine::Pushed::Deploy(deploy) => (
            StatusCode::ACCEPTED,
            Json(deploy_json(&ctx.engine, &deploy)),
        )
            .into_response(),
        engine::Pushed::Ignored(reason) => Json(json!({ "ignored": reason })).into_response(),
    })
}

/// What a push tells about its commit (all optional; a plain upload sends none).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PushQuery {
    trigger: Option<String>,
    sha: Option<String>,
    branch: Option<String>,
    author: Option<String>,
    message: Option<String>,
}

impl PushQuery {
    fn meta(self) -> Result<engine::store::DeployMeta, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
        let trigger = self.trigger.unwrap_or_else(|| "upload".into());
        if !matches!(trigger.as_str(), "upload" | "git") {
            return Err(bad(format!(
                "trigger must be upload or git, not {trigger:?}"
            )));
        }
        if let Some(s) = &self.sha {
            if !build::git::valid_sha(s) {
                return Err(bad(format!("sha {s:?} is not a commit id")));
            }
        }
        if let Some(b) = &self.branch {
            if !build::git::valid_branch(b) {
                return Err(bad(format!("branch {b:?} is not a valid branch name")));
            }
        }
        let text = |v: Option<String>, what: &str| -> Result<Option<String>, ApiError> {
            match v {
                Some(t) if t.len() > 1000 || t.chars().any(|c| c.is_control()) => Err(bad(
                    format!("{what} must be one line of at most 1000 bytes"),
                )),
                v => Ok(v),
            }
        };
        Ok(engine::store::DeployMeta {
            trigger,
            sha: self.sha,
            branch: self.branch,
            author: text(self.author, "author")?,
            message: text(self.message, "message")?,
        })
    }
}

/// The spooled upload is removed however the request ends.
struct Spool(std::path::PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `512 MiB`, `64 KiB`, `100 bytes`.
fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

fn internal(e: std::io::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

pub async fn deploys(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<Limit>,
) -> JsonResult {
    caller.app(&app)?;
    ctx.engine.app(&app)?;
    let list = ctx
        .engine
        .store()
        .deploys(&app, q.limit.unwrap_or(50).min(1000))
        .map_err(crate::auth::store_err)?;
    Ok(Json(
        list.iter().map(|d| deploy_json(&ctx.engine, d)).collect(),
    ))
}

/// A deploy of this app (404 for another app's id, so ids do not leak across scopes).
pub fn deploy_of(ctx: &Ctx, app: &str, id: i64) -> Result<engine::store::Deploy, ApiError> {
    ctx.engine.app(app)?;
    match ctx.engine.deploy(id) {
        Ok(d) if d.app == app => Ok(d),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("deploy {id} of {app} not found"),
        )),
    }
}

pub async fn deploy(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((app, id)): Path<(String, i64)>,
) -> JsonResult {
    caller.app(&app)?;
    let d = deploy_of(&ctx, &app, id)?;
    Ok(Json(deploy_json(&ctx.engine, &d)))
}

pub async fn releases(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    let a = ctx.engine.app(&app)?;
    let list = ctx
        .engine
        .store()
        .releases(&app)
        .map_err(crate::auth::store_err)?;
    Ok(Json(
        list.iter()
            .map(|r| release_json(r, a.live_release))
            .collect(),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RollbackReq {
    version: Option<i64>,
}

pub async fn rollback(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    let req: RollbackReq = if body.is_empty() {
        RollbackReq::default()
    } else {
        json_body(&body)?
    };
    let d = ctx
        .engine
        .rollback(&app, req.version, &caller.actor())
        .await?;
    Ok((StatusCode::ACCEPTED, Json(deploy_json(&ctx.engine, &d))).into_response())
}

#[derive(Deserialize)]
pub struct Reveal {
    #[serde(default)]
    reveal: bool,
}

/// Values are masked unless `?reveal=true`.
fn env_json(env: &BTreeMap<String, String>, reveal: bool) -> Value {
    env.iter()
        .map(|(k, v)| {
            let shown = if reveal {
                v.clone()
            } else {
                "••••••".into()
            };
            (k.clone(), Value::String(shown))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub async fn env(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<Reveal>,
) -> JsonResult {
    caller.app(&app)?;
    let env = ctx.engine.env(&app)?;
    Ok(Json(env_json(&env, q.reveal)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPatch {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    unset: Vec<String>,
}

pub async fn update_env(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> JsonResult {
    caller.app(&app)?;
    let req: EnvPatch = json_body(&body)?;
    if req.set.is_empty() && req.unset.is_empty() {
        return Err(
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "nothing to change")
                .hint("{\"set\": {\"KEY\": \"value\"}, \"unset\": [\"OTHER\"]}"),
        );
    }
    let deploy = ctx
        .engine
        .update_env(&app, req.set, req.unset, &caller.actor())
        .await?;
    let env = ctx
        .engine
        .store()
        .env(&app)
        .map_err(crate::auth::store_err)?;
    Ok(Json(json!({
        "env": env_json(&env, false),
        "deploy": deploy.map(|d| deploy_json(&ctx.engine, &d)),
    })))
}

pub async fn scale(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> JsonResult {
    caller.app(&app)?;
    let req: BTreeMap<String, u32> = json_body(&body)?;
    let deploy = ctx.engine.scale(&app, req, &caller.actor()).await?;
    let a = ctx.engine.app(&app)?;
    Ok(Json(json!({
        "formation": a.formation,
        "deploy": deploy.map(|d| deploy_json(&ctx.engine, &d)),
    })))
}

/// `{"deploy": Deploy}` (202), or 422 when nothing is live.
pub async fn restart(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    match ctx.engine.restart(&app, &caller.actor()).await? {
        Some(d) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "deploy": deploy_json(&ctx.engine, &d) })),
        )
            .into_response()),
        None => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{app} has nothing running to restart"),
        )
        .hint("deploy it first: berth deploy")),
    }
}

pub async fn domains(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    ctx.engine.app(&app)?;
    let list = ctx
        .engine
        .store()
        .domains(&app)
        .map_err(crate::auth::store_err)?;
    Ok(Json(json!(list)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    host: String,
}

pub async fn add_domain(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    let req: NewDomain = json_body(&body)?;
    let admin = caller.admin().is_ok();
    ctx.engine
        .add_domain(&app, &req.host, &caller.actor(), admin)?;
    let list = ctx
        .engine
        .store()
        .domains(&app)
        .map_err(crate::auth::store_err)?;
    Ok((StatusCode::CREATED, Json(json!(list))).into_response())
}

pub async fn remove_domain(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((app, host)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.app(&app)?;
    ctx.engine.remove_domain(&app, &host, &caller.actor())?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn instances(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    let list = ctx.engine.instances(&app)?;
    Ok(Json(list.iter().map(instance_json).collect()))
}

/// `GET /apps/{app}/services`: the app's accessory services as Docker reports them.
pub async fn services(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> JsonResult {
    caller.app(&app)?;
    let list = ctx.engine.services(&app).await?;
    Ok(Json(
        list.iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "state": s.state,
                    "health": s.health,
                    "host_port": s.host_port,
                })
            })
            .collect(),
    ))
}

/// `GET /nodes`: the Docker Swarm's nodes (admin); 409 when the daemon is no swarm manager.
pub async fn nodes(State(ctx): State<Ctx>, Extension(caller): Extension<Caller>) -> JsonResult {
    caller.admin()?;
    let nodes = ctx.engine.nodes().await?;
    Ok(Json(json!(nodes)))
}
