//! Bearer tokens: who is calling, and what they may touch. Tokens are stored hashed (the
//! store never sees a plaintext after creation). Scopes: `admin` (everything) and `deploy`
//! (only the named apps, and not their destruction).

use crate::render::{token_json, ts};
use crate::{ApiError, Ctx};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use engine::store::{Scope, Token};
use serde::Deserialize;

/// The authenticated caller, put in the request's extensions by [`require_token`].
#[derive(Clone, Debug)]
pub struct Caller(pub Token, pub Vec<String>);

impl Caller {
    /// Name for the audit log.
    pub fn actor(&self) -> String {
        format!("token:{}", self.0.name)
    }

    pub fn admin(&self) -> Result<(), ApiError> {
        match self.0.scope {
            Scope::Admin => Ok(()),
            Scope::Deploy => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this needs an admin token; this token may only deploy its apps",
            )),
        }
    }

    /// May this caller work on `app`?
    pub fn app(&self, app: &str) -> Result<(), ApiError> {
        match self.0.scope {
            Scope::Admin => Ok(()),
            // A token of an app also reaches that app's branch previews: the apps whose
            // `preview_of` names it (never a name that merely ends like one: a long app name is
            // cut in its previews' names, so `x--<a>` may be another app's preview).
            Scope::Deploy
                if self.0.apps.iter().any(|a| a == app) || self.1.iter().any(|p| p == app) =>
            {
                Ok(())
            }
            Scope::Deploy => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("this token may not act on app {app}"),
            )),
        }
    }
}

pub async fn require_token(State(ctx): State<Ctx>, mut req: Request, next: Next) -> Response {
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    let Some(secret) = secret else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token")
            .hint("send `Authorization: Bearer <token>`; the admin token is in <data_dir>/admin-token")
            .into_response();
    };
    match caller_for(&ctx, secret) {
        Ok(Some(caller)) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(None) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid or revoked token").into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The caller a token's secret belongs to (`None`: unknown or revoked). The bearer middleware
/// and git's Basic auth (`git.rs`) both check tokens here.
pub(crate) fn caller_for(ctx: &Ctx, secret: &str) -> Result<Option<Caller>, ApiError> {
    let internal = |e: engine::store::StoreError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    };
    let Some(token) = ctx
        .engine
        .store()
        .token_by_secret(secret)
        .map_err(internal)?
    else {
        return Ok(None);
    };
    // The previews of a deploy token's apps, by what they are a preview of.
    let previews = match token.scope {
        Scope::Admin => Vec::new(),
        Scope::Deploy => ctx
            .engine
            .store()
            .apps()
            .map_err(internal)?
            .into_iter()
            .filter(|a| {
                a.settings
                    .preview_of
                    .as_ref()
                    .is_some_and(|p| token.apps.contains(&p.app))
            })
            .map(|a| a.name)
            .collect(),
    };
    Ok(Some(Caller(token, previews)))
}

pub async fn list(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.admin()?;
    let tokens = ctx.engine.store().tokens().map_err(store_err)?;
    Ok(Json(tokens.iter().map(token_json).collect()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
    #[serde(default = "admin_scope")]
    scope: String,
    #[serde(default)]
    apps: Vec<String>,
}

fn admin_scope() -> String {
    "admin".into()
}

pub async fn create(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.admin()?;
    let req: NewToken = crate::apps::json_body(&body)?;
    let scope: Scope = req.scope.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("unknown scope {:?}", req.scope),
        )
        .hint("scope is \"admin\" or \"deploy\"")
    })?;
    if req.name.is_empty() || req.name.len() > 64 || req.name.chars().any(|c| c.is_control()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a token name is 1 to 64 printable characters",
        ));
    }
    if scope == Scope::Deploy && req.apps.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "a deploy token needs the apps it may deploy",
        )
        .hint("\"apps\": [\"hello\"]"));
    }
    for app in &req.apps {
        ctx.engine.app(app)?;
    }
    let (token, secret) = ctx
        .engine
        .store()
        .create_token(&req.name, scope, &req.apps, &caller.actor())
        .map_err(store_err)?;
    let mut body = token_json(&token);
    body["token"] = secret.into();
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub async fn revoke(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    caller.admin()?;
    ctx.engine
        .store()
        .revoke_token(id, &caller.actor())
        .map_err(store_err)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Limit {
    limit: Option<usize>,
}

pub async fn audit(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<Limit>,
) -> Result<Json<serde_json::Value>, ApiError> {
    caller.admin()?;
    let entries = ctx
        .engine
        .store()
        .audit_log(q.limit.unwrap_or(100).min(10_000))
        .map_err(store_err)?;
    Ok(Json(
        entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at": ts(e.at), "actor": e.actor, "action": e.action,
                    "target": e.target, "detail": e.detail,
                })
            })
            .collect(),
    ))
}

pub fn store_err(e: engine::store::StoreError) -> ApiError {
    ApiError::from(engine::EngineError::from(e))
}
