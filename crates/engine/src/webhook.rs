//! Pushes announced by a repository's webhook (`POST /hooks/{github,gitea,gitlab}`, checked
//! and parsed by the API): the deploy is recorded at once (queued, trigger `webhook`), so the
//! provider gets its answer within its timeout, and a background task fetches the branch with
//! the system's git into the app's bare repository `<data>/git/<app>.git` (under
//! `refs/berth/fetched/*`), exports the pushed commit with `git archive` and hands the bundle
//! to the usual checks and queue (`check_and_record` with the recorded deploy).
//!
//! The repository is always fetched from the URL the app was connected to, never from a URL
//! in the payload. A push is built only if its commit (`after`) is still the tip of its branch
//! when berth fetches: the signature covers the body alone, so a captured delivery sent again
//! under a new delivery id must not roll an app back to an old commit. A push whose branch
//! moved on ends `superseded` (the newer push's own delivery builds the tip), and a push whose
//! commit is already being built is not recorded again (a replay cannot supersede that build).

use crate::pipeline::DeployLog;
use crate::{lock, Engine, EngineError, Pushed};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use store::{App, Deploy, DeployKind, DeployMeta, DeployStatus};

/// One verified push, as the API read it from the payload.
#[derive(Debug, Clone)]
pub struct HookPush {
    pub branch: String,
    /// The pushed commit (`after`).
    pub sha: String,
    pub author: Option<String>,
    /// The commit message's first line.
    pub message: Option<String>,
}

/// What a push did for one connected app.
#[derive(Debug, Clone)]
pub enum HookOutcome {
    /// A build of the app, recorded and queued; the fetch runs in the background.
    Deploy(Box<Deploy>),
    /// Another branch with previews on: fetched in the background, then the preview logic
    /// (`deploy_push`) decides.
    Preview { branch: String },
    /// A deleted branch: its preview is being removed in the background.
    BranchDeleted { branch: String },
    /// Nothing to do, and why.
    Ignored(String),
}

/// Fetches into one bare repository run one at a time (a fresh repository is created by the
/// first; two fetches of the same ref would race for its lock).
static FETCH_LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn fetch_lock(git_dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    lock(&FETCH_LOCKS)
        .entry(git_dir.to_path_buf())
        .or_default()
        .clone()
}

/// A new webhook secret: 32 random bytes as hex.
pub fn new_webhook_secret() -> Result<String, EngineError> {
    crate::new_secret()
}

/// `url` without credentials (`https://user:token@host/x` → `https://host/x`), for logs and
/// every API answer. The authority ends at the first `/`, `?` or `#`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => return url.to_string(),
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Why a pushed commit was not exported.
enum FetchError {
    /// The fetch or the export failed: git's message (credentials redacted).
    Failed(String),
    /// The branch's fetched tip is another commit: the push is stale (or replayed).
    NotTip(String),
}

/// The first 12 characters of a commit id.
fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

impl Engine {
    /// Where berth may connect on a user's behalf (`egress.rs`).
    pub fn egress_policy(&self) -> crate::egress::Policy {
        crate::egress::Policy::new(&self.cfg.allow_private_hosts)
    }

    /// Check a remote repository URL before it is connected: `https://` to a public host (or
    /// one `[server] allow_private_hosts` names). Local repositories are the caller's to
    /// check (admin only).
    pub async fn check_repo_url(&self, url: &str) -> Result<(), EngineError> {
        let (policy, url) = (self.egress_policy(), url.to_string());
        tokio::task::spawn_blocking(move || policy.check_repo_url(&url, true))
            .await
            .map_err(|e| EngineError::Internal(format!("the URL check failed: {e}")))?
            .map(|_| ())
            .map_err(EngineError::BadInput)
    }

    /// The bare repository berth keeps for an app's git pushes and webhook fetches.
    fn hook_git_dir(&self, app: &str) -> PathBuf {
        self.cfg.data_dir.join("git").join(format!("{app}.git"))
    }

    /// Where the webhooks of `provider` (`github`, `gitea`, `gitlab`) reach this berth: the
    /// API host behind the proxy (HTTPS), with `?app=` so only that app's secret is tried.
    /// Without an HTTPS listener the API is served on the admin listener only.
    pub fn webhook_url(&self, provider: &str, app: &str) -> String {
        let host = self.api_host();
        let base = match (self.cfg.https_port, self.cfg.admin) {
            (Some(443), _) => format!("https://{host}"),
            (Some(p), _) => format!("https://{host}:{p}"),
            (None, Some(a)) => format!("http://{a}"),
            (None, None) => format!("https://{host}"),
        };
        format!("{base}/hooks/{provider}?app={app}")
    }

    /// A verified push that deleted `branch` of `app`'s repository: its preview (if any) is
    /// destroyed in the background; the deploy branch's deletion changes nothing.
    pub fn webhook_delete(self: &Arc<Self>, app: &App, branch: &str, actor: &str) -> HookOutcome {
        if branch == app.settings.deploy_branch {
            return HookOutcome::Ignored(format!(
                "{branch} is {}'s deploy branch: the app keeps running",
                app.name
            ));
        }
        let (this, name, b, actor) = (
            self.clone(),
            app.name.clone(),
            branch.to_string(),
            actor.to_string(),
        );
        tokio::spawn(async move {
            if let Err(e) = this.delete_branch(&name, &b, &actor).await {
                tracing::warn!(app = name, branch = b, error = %e, "webhook: deleted branch");
            }
        });
        HookOutcome::BranchDeleted {
            branch: branch.to_string(),
        }
    }

    /// A verified push of `push.branch` for `app`, which is connected to the pushed repository.
    /// The app's deploy branch (the connected one, unless changed since) records a queued build
    /// now and fetches and builds it in the background; another branch goes to the preview
    /// logic when previews are on, and is ignored otherwise.
    pub fn webhook_push(
        self: &Arc<Self>,
        app: &App,
        push: HookPush,
        actor: &str,
    ) -> Result<HookOutcome, EngineError> {
        let Some(repo) = app.settings.repo.clone() else {
            return Ok(HookOutcome::Ignored(format!(
                "{} is not connected to a repository",
                app.name
            )));
        };
        let meta = DeployMeta {
            trigger: "webhook".into(),
            sha: Some(push.sha.clone()),
            branch: Some(push.branch.clone()),
            author: push.author.clone(),
            message: push.message.clone(),
        };
        if push.branch != app.settings.deploy_branch {
            if !app.settings.previews {
                return Ok(HookOutcome::Ignored(format!(
                    "{} is not {}'s deploy branch ({}) and previews are off",
                    push.branch, app.name, app.settings.deploy_branch
                )));
            }
            let (this, name, actor) = (self.clone(), app.name.clone(), actor.to_string());
            let branch = push.branch.clone();
            tokio::spawn(async move {
                this.fetch_and_push(&name, &repo.url, meta, &actor).await;
            });
            return Ok(HookOutcome::Preview { branch });
        }
        // The same push again (a replayed delivery, or a provider's retry) while its build is
        // still queued or running: building it again would only supersede that build, and a
        // stream of replays would keep the app from ever finishing one.
        if let Some(d) = self.store.deploys(&app.name, 50)?.into_iter().find(|d| {
            d.status.is_active()
                && d.meta
                    .sha
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case(&push.sha))
        }) {
            return Ok(HookOutcome::Ignored(format!(
                "commit {} is already being built as deploy {}",
                short(&push.sha),
                d.id
            )));
        }
        let deploy = self.store.create_deploy_with(
            &app.name,
            DeployKind::Build,
            actor,
            &self.app_dir(&app.name).join("deploys"),
            &meta,
        )?;
        let (this, name, actor, id) =
            (self.clone(), app.name.clone(), actor.to_string(), deploy.id);
        tokio::spawn(async move {
            this.fetch_and_build(&name, &repo.url, meta, &actor, id)
                .await;
        });
        Ok(HookOutcome::Deploy(Box::new(deploy)))
    }

    /// Fetch `meta.branch` of `url` and export commit `meta.sha`, which must be the fetched
    /// tip of the branch, as a `.tar.gz` in `<data>/tmp`; the bundle's path, or why not.
    async fn fetch_bundle(
        &self,
        app: &str,
        url: &str,
        meta: &DeployMeta,
    ) -> Result<PathBuf, FetchError> {
        let (Some(branch), Some(sha)) = (meta.branch.clone(), meta.sha.clone()) else {
            return Err(FetchError::Failed(
                "the push names no branch or commit".into(),
            ));
        };
        let git_dir = self.hook_git_dir(app);
        let tmp = self.cfg.data_dir.join("tmp");
        let bundle = tmp.join(format!("webhook-{app}-{}.tar.gz", crate::random_hex(8)));
        let gate = fetch_lock(&git_dir);
        let _held = gate.lock().await;
        let (url, out) = (url.to_string(), bundle.clone());
        let policy = self.egress_policy();
        tokio::task::spawn_blocking(move || -> Result<PathBuf, FetchError> {
            let redact = |e: build::git::GitError| {
                let m = e.to_string();
                FetchError::Failed(m.replace(&url, &redact_url(&url)))
            };
            // Checked again now (the URL may predate the rules, DNS may have changed), and
            // the fetch pinned to the checked addresses.
            let opts = if crate::egress::is_local_repo(&url) {
                build::git::FetchOptions {
                    allow_protocol: "file".into(),
                    resolve: None,
                }
            } else {
                let checked = policy
                    .check_repo_url(&url, false)
                    .map_err(FetchError::Failed)?;
                build::git::FetchOptions {
                    allow_protocol: "https".into(),
                    resolve: checked.curl_resolve(),
                }
            };
            std::fs::create_dir_all(&tmp).map_err(|e| FetchError::Failed(e.to_string()))?;
            let tip = build::git::fetch(&git_dir, &url, &branch, &opts).map_err(redact)?;
            if !tip.eq_ignore_ascii_case(&sha) {
                return Err(FetchError::NotTip(format!(
                    "not built: commit {} is no longer the tip of {branch} ({} is): a newer push, or a replayed delivery",
                    short(&sha),
                    short(&tip)
                )));
            }
            if let Err(e) = build::git::archive(&git_dir, &sha, &out) {
                let _ = std::fs::remove_file(&out);
                return Err(redact(e));
            }
            Ok(out)
        })
        .await
        .map_err(|e| FetchError::Failed(format!("the fetch task failed: {e}")))?
    }

    /// The background half of a build recorded by [`Engine::webhook_push`]: a failure ends the
    /// recorded deploy as failed, with the reason in its log.
    pub(crate) async fn fetch_and_build(
        self: &Arc<Self>,
        app: &str,
        url: &str,
        meta: DeployMeta,
        actor: &str,
        deploy_id: i64,
    ) {
        let Ok(deploy) = self.deploy(deploy_id) else {
            return;
        };
        let log = DeployLog::new(&deploy.log_path);
        let branch = meta.branch.clone().unwrap_or_default();
        let sha = meta.sha.clone().unwrap_or_default();
        log.line(&format!(
            "-----> Fetching {branch} ({}) from {}",
            sha.get(..12).unwrap_or(&sha),
            redact_url(url)
        ));
        let end = |status: DeployStatus, reason: &str| {
            log.line(&format!("-----> {reason}"));
            let _ = self.store.finish_deploy(deploy_id, status, Some(reason));
        };
        let fail = |reason: &str| end(DeployStatus::Failed, reason);
        let bundle = match self.fetch_bundle(app, url, &meta).await {
            Ok(b) => b,
            Err(FetchError::Failed(reason)) => return fail(&reason),
            Err(FetchError::NotTip(reason)) => {
                tracing::info!(app, deploy = deploy_id, reason, "webhook: push not built");
                return end(DeployStatus::Superseded, &reason);
            }
        };
        // Cancelled or superseded while it was fetched: nothing more to do.
        let active = self.deploy(deploy_id).is_ok_and(|d| d.status.is_active());
        if active {
            match self
                .check_and_record(app, &bundle, actor, &meta, Some(deploy_id))
                .await
            {
                Ok(d) if d.status == DeployStatus::Failed => {
                    log.line(&format!("-----> {}", d.reason.unwrap_or_default()));
                }
                Ok(_) => {}
                Err(e) => fail(&e.to_string()),
            }
        }
        let _ = std::fs::remove_file(&bundle);
    }

    /// Another branch with previews on: fetch it, then let [`Engine::deploy_push`] decide.
    async fn fetch_and_push(self: &Arc<Self>, app: &str, url: &str, meta: DeployMeta, actor: &str) {
        let bundle = match self.fetch_bundle(app, url, &meta).await {
            Ok(b) => b,
            Err(FetchError::Failed(reason)) => {
                tracing::warn!(app, reason, "webhook: cannot fetch the pushed branch");
                return;
            }
            Err(FetchError::NotTip(reason)) => {
                tracing::info!(app, reason, "webhook: push not built");
                return;
            }
        };
        match self.deploy_push(app, &bundle, actor, meta).await {
            Ok(Pushed::Deploy(d)) => {
                tracing::info!(app = d.app, deploy = d.id, "webhook: preview deploy queued")
            }
            Ok(Pushed::Ignored(reason)) => tracing::info!(app, reason, "webhook: push ignored"),
            Err(e) => tracing::warn!(app, error = %e, "webhook: push not deployed"),
        }
        let _ = std::fs::remove_file(&bundle);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact_url("https://u:tok@github.com/a/b.git"),
            "https://github.com/a/b.git"
        );
        assert_eq!(
            redact_url("https://github.com/a/b"),
            "https://github.com/a/b"
        );
        assert_eq!(redact_url("git@github.com:a/b"), "git@github.com:a/b");
        assert_eq!(redact_url("https://u:t@h"), "https://h");
        assert_eq!(redact_url("https://u:t@h?x=1"), "https://h?x=1");
        assert_eq!(redact_url("https://h?q=a@b"), "https://h?q=a@b");
        assert_eq!(redact_url("https://h/@scope/x"), "https://h/@scope/x");
        assert_eq!(redact_url("file:///srv/x@y"), "file:///srv/x@y");
    }

    #[test]
    fn secrets_are_64_hex() {
        let s = new_webhook_secret().unwrap();
        assert_eq!(s.len(), 64);
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
