//! Signed push webhooks from GitHub, Gitea/Forgejo and GitLab (`POST /hooks/{provider}`, no
//! bearer token: the signature is the authentication), and connecting an app to a repository
//! (`/api/v1/apps/{app}/repo`).
//!
//! A delivery is checked before anything else is read from it: the raw body against the secret
//! of every connected app (or of the one `?app=` names), each comparison in constant time.
//! The apps whose secret matches are the candidates; none → 401 and nothing runs. Only then is
//! the delivery id recorded (a redelivery answers `{"duplicate": true}` and builds nothing) and
//! the JSON read: a push to a candidate's repository (matched on `normalize_repo_url`) builds it.

use crate::render::deploy_json;
use crate::{ApiError, Caller, Ctx};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use engine::store::{normalize_repo_url, App, RepoLink};
use engine::webhook::{HookOutcome, HookPush};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// GitHub caps its payloads at 25 MB.
const MAX_PAYLOAD: usize = 25 << 20;
/// A secret given by the user must be at least this long (bytes).
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 256;

/// The webhook routes (outside the token middleware).
pub fn routes() -> Router<Ctx> {
    Router::new()
        .route("/hooks/github", post(github))
        .route("/hooks/gitea", post(gitea))
        .route("/hooks/forgejo", post(gitea))
        .route("/hooks/gitlab", post(gitlab))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Provider {
    GitHub,
    Gitea,
    GitLab,
}

impl Provider {
    fn name(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::Gitea => "gitea",
            Provider::GitLab => "gitlab",
        }
    }
}

#[derive(Deserialize, Default)]
pub struct HookQuery {
    /// Check only this app's secret.
    app: Option<String>,
}

pub async fn github(
    State(ctx): State<Ctx>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&ctx, Provider::GitHub, q, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn gitea(
    State(ctx): State<Ctx>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&ctx, Provider::Gitea, q, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub async fn gitlab(
    State(ctx): State<Ctx>,
    Query(q): Query<HookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    hook(&ctx, Provider::GitLab, q, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// What the delivery proves: an HMAC-SHA256 of the body (GitHub, Gitea) or the secret itself
/// (GitLab's token).
enum Proof {
    Hmac(Vec<u8>),
    Token(Vec<u8>),
}

fn proof(provider: Provider, headers: &HeaderMap) -> Result<Proof, ApiError> {
    let sha256 = |v: &str| -> Result<Proof, ApiError> {
        let hex = v
            .strip_prefix("sha256=")
            .ok_or_else(|| unauthorized("signature does not match"))?;
        decode_hex(hex)
            .map(Proof::Hmac)
            .ok_or_else(|| unauthorized("signature does not match"))
    };
    match provider {
        Provider::GitHub => match header(headers, "x-hub-signature-256") {
            Some(v) => sha256(v),
            None if headers.contains_key("x-hub-signature") => Err(unauthorized(
                "missing X-Hub-Signature-256: SHA-1 signatures are not accepted",
            )
            .hint("berth checks the SHA-256 signature GitHub sends with every delivery")),
            None => Err(unauthorized("missing X-Hub-Signature-256 header")
                .hint("set the webhook's secret to the one `berth apps:connect` printed")),
        },
        Provider::Gitea => {
            match header(headers, "x-forgejo-signature").or(header(headers, "x-gitea-signature")) {
                Some(v) => decode_hex(v)
                    .map(Proof::Hmac)
                    .ok_or_else(|| unauthorized("signature does not match")),
                None => match header(headers, "x-hub-signature-256") {
                    Some(v) => sha256(v),
                    None => Err(unauthorized("missing X-Gitea-Signature header")
                        .hint("set the webhook's secret to the one `berth apps:connect` printed")),
                },
            }
        }
        Provider::GitLab => match headers.get("x-gitlab-token") {
            Some(v) if !v.is_empty() => Ok(Proof::Token(v.as_bytes().to_vec())),
            _ => Err(unauthorized("missing X-Gitlab-Token header")
                .hint("set the webhook's secret token to the one `berth apps:connect` printed")),
        },
    }
}

/// Does `body` carry `proof` for `secret`? Constant time in the compared values.
fn verify(proof: &Proof, secret: &str, body: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    match proof {
        Proof::Hmac(sig) => match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
            Ok(mut mac) => {
                mac.update(body);
                mac.verify_slice(sig).is_ok()
            }
            Err(_) => false,
        },
        // Digests first, so the comparison does not depend on the token's length either.
        Proof::Token(token) => Sha256::digest(token)
            .ct_eq(&Sha256::digest(secret.as_bytes()))
            .into(),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The connected apps whose secret `body` was signed with (previews never: they follow their
/// app). None → 401.
fn candidates(
    ctx: &Ctx,
    provider: Provider,
    only: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<App>, ApiError> {
    let proof = proof(provider, headers)?;
    let apps = ctx.engine.store().apps().map_err(crate::auth::store_err)?;
    let matched: Vec<App> = apps
        .into_iter()
        .filter(|a| only.is_none_or(|n| a.name == n) && a.settings.preview_of.is_none())
        .filter(|a| {
            a.settings
                .repo
                .as_ref()
                .is_some_and(|r| verify(&proof, &r.secret, body))
        })
        .collect();
    if matched.is_empty() {
        return Err(unauthorized("signature does not match")
            .hint("the webhook's secret must be the one `berth apps:connect` printed"));
    }
    Ok(matched)
}

/// The delivery id, for redeliveries.
fn delivery(provider: Provider, headers: &HeaderMap) -> Option<String> {
    let names: &[&str] = match provider {
        Provider::GitHub => &["x-github-delivery"],
        Provider::Gitea => &["x-forgejo-delivery", "x-gitea-delivery"],
        // The idempotency key stays the same across GitLab's retries.
        Provider::GitLab => &["idempotency-key", "x-gitlab-event-uuid"],
    };
    names
        .iter()
        .find_map(|n| header(headers, n))
        .filter(|v| v.len() <= 200)
        .map(str::to_string)
}

/// What the event header says the delivery is.
enum Event {
    Push,
    /// Gitea's `delete` event (a branch or tag removed).
    Delete,
    Other(String),
}

fn event(provider: Provider, headers: &HeaderMap) -> Event {
    let name = match provider {
        Provider::GitHub => header(headers, "x-github-event"),
        Provider::Gitea => header(headers, "x-forgejo-event").or(header(headers, "x-gitea-event")),
        Provider::GitLab => header(headers, "x-gitlab-event"),
    };
    match (provider, name) {
        (Provider::GitLab, Some("Push Hook" | "System Hook")) => Event::Push,
        (Provider::GitLab, _) => Event::Other(name.unwrap_or("unnamed").to_string()),
        (_, Some("push")) => Event::Push,
        (Provider::Gitea, Some("delete")) => Event::Delete,
        (_, other) => Event::Other(other.unwrap_or("unnamed").to_string()),
    }
}

async fn hook(
    ctx: &Ctx,
    provider: Provider,
    q: HookQuery,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let apps = candidates(ctx, provider, q.app.as_deref(), headers, body)?;
    let store = ctx.engine.store();
    let id = delivery(provider, headers);
    if let Some(id) = &id {
        if !store
            .record_delivery(provider.name(), id)
            .map_err(crate::auth::store_err)?
        {
            return Ok(Json(json!({ "duplicate": true })).into_response());
        }
    }
    let result = handle(ctx, provider, apps, headers, body).await;
    if result.is_err() {
        if let Some(id) = &id {
            // Nothing was started: a redelivery must run.
            let _ = store.forget_delivery(provider.name(), id);
        }
    }
    result
}

/// The parts of a push payload berth reads (GitHub, Gitea/Forgejo and GitLab name them alike;
/// unknown fields are ignored, and anything may be missing or null).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Payload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    /// Gitea's delete event: `branch` or `tag`.
    ref_type: Option<String>,
    after: Option<String>,
    deleted: Option<bool>,
    object_kind: Option<String>,
    repository: Option<Repo>,
    /// GitLab.
    project: Option<Repo>,
    head_commit: Option<Commit>,
    commits: Option<Vec<Commit>>,
    /// GitLab: who pushed.
    user_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Repo {
    clone_url: Option<String>,
    html_url: Option<String>,
    ssh_url: Option<String>,
    git_url: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
    homepage: Option<String>,
    url: Option<String>,
}

impl Repo {
    fn urls(&self) -> impl Iterator<Item = &String> {
        [
            &self.clone_url,
            &self.html_url,
            &self.ssh_url,
            &self.git_url,
            &self.git_http_url,
            &self.git_ssh_url,
            &self.web_url,
            &self.homepage,
            &self.url,
        ]
        .into_iter()
        .flatten()
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Commit {
    id: Option<String>,
    message: Option<String>,
    author: Option<Author>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Author {
    name: Option<String>,
    email: Option<String>,
}

/// One line of at most 1000 bytes, without control characters.
fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").trim();
    let mut out = String::new();
    for c in first.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > 1000 {
            break;
        }
        out.push(c);
    }
    out
}

fn ignored(reason: impl Into<String>) -> Response {
    Json(json!({ "ignored": reason.into() })).into_response()
}

async fn handle(
    ctx: &Ctx,
    provider: Provider,
    apps: Vec<App>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let event = event(provider, headers);
    if let Event::Other(name) = &event {
        return Ok(ignored(format!(
            "{name} events are not deployed (only pushes)"
        )));
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON payload: {e}")))?;
    if !v.is_object() {
        return Err(bad("invalid JSON payload: expected an object".into()));
    }
    let p: Payload =
        serde_json::from_value(v).map_err(|e| bad(format!("unexpected payload: {e}")))?;
    if provider == Provider::GitLab && p.object_kind.as_deref().is_some_and(|k| k != "push") {
        return Ok(ignored(format!(
            "{} events are not deployed (only pushes)",
            p.object_kind.as_deref().unwrap_or("")
        )));
    }
    let git_ref = p.git_ref.clone().unwrap_or_default();
    let (branch, deleted) = match event {
        Event::Delete if p.ref_type.as_deref() == Some("branch") => (git_ref.clone(), true),
        Event::Delete => return Ok(ignored("only deleted branches are handled")),
        _ => match git_ref.strip_prefix("refs/heads/") {
            Some(b) => (
                b.to_string(),
                p.deleted == Some(true) || p.after.as_deref().is_some_and(build::git::is_zero_sha),
            ),
            None => return Ok(ignored(format!("{git_ref:?} is not a branch"))),
        },
    };
    if !build::git::valid_branch(&branch) {
        return Err(bad(format!("{branch:?} is not a valid branch name")));
    }
    // Which candidates is this repository connected to?
    let urls: Vec<String> = p
        .repository
        .iter()
        .chain(p.project.iter())
        .flat_map(Repo::urls)
        .map(|u| normalize_repo_url(u))
        .filter(|u| !u.is_empty())
        .collect();
    let apps: Vec<App> = apps
        .into_iter()
        .filter(|a| {
            a.settings
                .repo
                .as_ref()
                .is_some_and(|r| urls.contains(&normalize_repo_url(&r.url)))
        })
        .collect();
    if apps.is_empty() {
        return Ok(ignored(
            "no app whose secret signed this delivery is connected to this repository",
        ));
    }
    let actor = format!("webhook:{}", provider.name());
    if deleted {
        let mut removing = Vec::new();
        let mut skipped = Vec::new();
        for app in &apps {
            match ctx.engine.webhook_delete(app, &branch, &actor) {
                HookOutcome::Ignored(reason) => skipped.push(reason),
                _ => removing.push(app.name.clone()),
            }
        }
        if removing.is_empty() {
            return Ok(ignored(skipped.join("; ")));
        }
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "deleted_branch": branch, "apps": removing })),
        )
            .into_response());
    }
    let sha = p.after.clone().unwrap_or_default();
    if !(sha.len() == 40 || sha.len() == 64) || !build::git::valid_sha(&sha) {
        return Err(bad(format!("{sha:?} is not a commit id")));
    }
    let sha = sha.to_ascii_lowercase();
    let commits = p.commits.as_deref().unwrap_or_default();
    let head = p
        .head_commit
        .as_ref()
        .or_else(|| commits.iter().rev().find(|c| c.id.as_deref() == Some(&sha)))
        .or(commits.last());
    let author = head
        .and_then(|c| c.author.as_ref())
        .and_then(|a| {
            let name = a.name.as_deref().filter(|n| !n.is_empty())?;
            Some(match a.email.as_deref().filter(|e| !e.is_empty()) {
                Some(e) => format!("{name} <{e}>"),
                None => name.to_string(),
            })
        })
        .or(p.user_name.clone())
        .map(|a| one_line(&a))
        .filter(|a| !a.is_empty());
    let message = head
        .and_then(|c| c.message.as_deref())
        .map(one_line)
        .filter(|m| !m.is_empty());
    let push = HookPush {
        branch: branch.clone(),
        sha,
        author,
        message,
    };
    let (mut deploys, mut previews, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = None;
    for app in &apps {
        match ctx.engine.webhook_push(app, push.clone(), &actor) {
            Ok(HookOutcome::Deploy(d)) => deploys.push(deploy_json(&ctx.engine, &d)),
            Ok(HookOutcome::Preview { branch }) => {
                previews.push(json!({ "app": app.name, "branch": branch }))
            }
            Ok(HookOutcome::Ignored(reason)) => {
                skipped.push(json!({ "app": app.name, "reason": reason }))
            }
            Ok(HookOutcome::BranchDeleted { .. }) => {}
            Err(e) => {
                tracing::error!(app = app.name, error = %e, "webhook: cannot record the build");
                skipped.push(json!({ "app": app.name, "reason": e.to_string() }));
                failed = Some(e);
            }
        }
    }
    if deploys.is_empty() && previews.is_empty() {
        if let Some(e) = failed {
            return Err(e.into());
        }
        let reasons: Vec<&str> = skipped
            .iter()
            .filter_map(|s| s["reason"].as_str())
            .collect();
        return Ok(ignored(reasons.join("; ")));
    }
    tracing::info!(
        provider = provider.name(),
        branch,
        builds = deploys.len(),
        "webhook push accepted"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "deploys": deploys, "previews": previews, "skipped": skipped })),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------------
// /api/v1/apps/{app}/repo
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    url: String,
    branch: Option<String>,
    secret: Option<String>,
}

fn unprocessable(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    if url.is_empty() || url.len() > 2000 {
        return Err(unprocessable("the repository URL is empty or too long")
            .hint("\"url\": \"https://github.com/you/app.git\""));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.starts_with('-') {
        return Err(unprocessable(format!(
            "{url:?} is not a repository URL (no spaces, control characters or leading -)"
        )));
    }
    // git's `<transport>::<address>` form runs helpers (ext::, fd::): never.
    if engine::egress::is_transport_helper(url) {
        return Err(unprocessable(format!(
            "{url:?}: transport helpers (<transport>::<address>) are not accepted"
        )));
    }
    Ok(())
}

/// `branch`: the app's deploy branch, which the connected branch became (it may have been
/// changed since with `PATCH …/settings`). The URL without its credentials, for every scope.
fn repo_json(ctx: &Ctx, app: &str, r: &RepoLink, branch: &str) -> Value {
    let e = &ctx.engine;
    json!({
        "url": engine::webhook::redact_url(&r.url),
        "branch": branch,
        "webhook_urls": {
            "github": e.webhook_url("github", app),
            "gitea": e.webhook_url("gitea", app),
            "gitlab": e.webhook_url("gitlab", app),
        },
    })
}

/// `PUT /api/v1/apps/{app}/repo`: connect the app to a repository and branch (which also
/// becomes its deploy branch). The answer carries the webhook secret, this once.
pub async fn connect(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    caller.app(&app)?;
    let req: Connect = crate::apps::json_body(&body)?;
    let a = ctx.engine.app(&app)?;
    if a.settings.preview_of.is_some() {
        return Err(unprocessable(format!(
            "{app} is a preview: connect the app it previews"
        )));
    }
    let url = req.url.trim().to_string();
    check_url(&url)?;
    if engine::egress::is_local_repo(&url) {
        if caller.admin().is_err() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "only an admin token may connect a repository on this server's disk",
            ));
        }
    } else {
        // https:// to a public host (or one [server] allow_private_hosts names), for every
        // scope.
        ctx.engine.check_repo_url(&url).await?;
    }
    let branch = req
        .branch
        .unwrap_or_else(|| a.settings.deploy_branch.clone());
    if !build::git::valid_branch(&branch) {
        return Err(unprocessable(format!(
            "{branch:?} is not a valid branch name"
        )));
    }
    let secret = match req.secret {
        Some(s) if s.len() < MIN_SECRET || s.len() > MAX_SECRET => {
            return Err(unprocessable(format!(
                "a webhook secret is {MIN_SECRET} to {MAX_SECRET} bytes"
            ))
            .hint("leave \"secret\" out and berth generates one"))
        }
        Some(s) if s.chars().any(|c| c.is_control()) => {
            return Err(unprocessable(
                "a webhook secret cannot contain control characters",
            ))
        }
        Some(s) => s,
        None => engine::webhook::new_webhook_secret()?,
    };
    let link = RepoLink {
        url,
        branch: branch.clone(),
        secret: secret.clone(),
    };
    let mut settings = a.settings.clone();
    settings.repo = Some(link.clone());
    settings.deploy_branch = branch.clone();
    let what = format!(
        "connect {} branch {branch}",
        engine::webhook::redact_url(&link.url)
    );
    ctx.engine
        .store()
        .set_settings(&app, &settings, &caller.actor(), &what)
        .map_err(crate::auth::store_err)?;
    let mut out = repo_json(&ctx, &app, &link, &branch);
    out["secret"] = secret.into();
    Ok(Json(out))
}

/// `GET /api/v1/apps/{app}/repo`: the connected repository (never the secret).
pub async fn repo(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.app(&app)?;
    let a = ctx.engine.app(&app)?;
    match &a.settings.repo {
        Some(r) => Ok(Json(repo_json(&ctx, &app, r, &a.settings.deploy_branch))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{app} is not connected to a repository"),
        )
        .hint(format!(
            "berth apps:connect {app} --repo https://github.com/you/{app}.git"
        ))),
    }
}

/// `DELETE /api/v1/apps/{app}/repo`: webhooks no longer deploy the app (its deploy branch
/// stays).
pub async fn disconnect(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.app(&app)?;
    let a = ctx.engine.app(&app)?;
    if a.settings.repo.is_some() {
        let mut settings = a.settings.clone();
        settings.repo = None;
        ctx.engine
            .store()
            .set_settings(&app, &settings, &caller.actor(), "disconnect")
            .map_err(crate::auth::store_err)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_test_vector() {
        // https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
        let sig =
            decode_hex("757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17").unwrap();
        let p = Proof::Hmac(sig);
        assert!(verify(&p, "It's a Secret to Everybody", b"Hello, World!"));
        assert!(!verify(&p, "It's a Secret to Everybody", b"Hello, World?"));
        assert!(!verify(&p, "", b"Hello, World!"));
    }

    #[test]
    fn gitlab_tokens() {
        let p = Proof::Token(b"0123456789abcdef".to_vec());
        assert!(verify(&p, "0123456789abcdef", b"x"));
        assert!(!verify(&p, "0123456789abcdeF", b"x"));
        assert!(!verify(&p, "0123456789abcdef0", b"x"));
        assert!(!verify(&Proof::Token(Vec::new()), "", b"x"));
    }

    #[test]
    fn hex() {
        assert_eq!(decode_hex("00ff"), Some(vec![0, 255]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
        assert_eq!(decode_hex("é1"), None);
    }

    #[test]
    fn urls() {
        assert!(check_url("https://github.com/a/b.git").is_ok());
        assert!(check_url("git@github.com:a/b.git").is_ok());
        assert!(check_url("-uhttps://x").is_err());
        assert!(check_url("ext::sh -c touch% /tmp/x").is_err());
        assert!(check_url("ext::sh").is_err());
        assert!(check_url("https://x/a b").is_err());
        assert!(check_url("").is_err());
        // IPv6 literals are not transport helpers.
        assert!(check_url("https://[::1]/x.git").is_ok());
    }
}
