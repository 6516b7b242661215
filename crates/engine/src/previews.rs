//! Branch previews and an app's git settings.
//!
//! With previews on, a push to a branch other than the app's deploy branch deploys a preview:
//! an app of its own named `<branch>--<app>` (the branch made a DNS label), so it is served at
//! `<branch>--<app>.<domain>` with everything an app has (queue, instances, logs, rollback).
//! It runs with the app's env plus the app's preview overrides, copied when the preview is
//! created and again before each build of it. Deleting the branch destroys the preview. At
//! most `preview_max` previews exist per app; a push that would make one more is refused.

use crate::{valid_env_key, Engine, EngineError, Pushed};
use std::path::Path;
use std::sync::Arc;
use store::{App, AppSettings, DeployMeta, PreviewOf};

/// A change of an app's git settings (`PATCH /apps/{app}/settings`); `None` keeps a field.
#[derive(Debug, Default, Clone)]
pub struct SettingsChange {
    pub deploy_branch: Option<String>,
    pub cancel_running: Option<bool>,
    pub previews: Option<bool>,
    pub preview_max: Option<u32>,
    pub preview_env: Option<std::collections::BTreeMap<String, String>>,
}

pub const MAX_PREVIEWS: u32 = 50;

/// The preview app of `branch`: the branch lower-cased, runs of anything but letters and
/// digits made one `-`, as `<label>--<app>`, prefixed with `b` when it would not start with a
/// letter. When that does not fit one 63-character DNS label (a long branch, or a long app
/// name), the label is cut and followed by 8 hex digits of a hash of the branch, and the app's
/// name is cut too if it must be, so two long branches never share a preview and every app
/// name length gets a valid one.
pub fn preview_name(app: &str, branch: &str) -> String {
    const MAX: usize = 63;
    let mut label = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.ends_with('-') && !label.is_empty() {
            label.push('-');
        }
    }
    let mut label = label.trim_end_matches('-').to_string();
    if !label.starts_with(|c: char| c.is_ascii_lowercase()) {
        label.insert(0, 'b');
    }
    if label.len() + 2 + app.len() <= MAX {
        return format!("{label}--{app}");
    }
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(branch.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    // "<label>-<hash>--<app>": at least "b<hash>--" before the app, whose name is cut to fit.
    let app_room = MAX - (1 + hash.len() + 2);
    let app_part = app[..app.len().min(app_room)].trim_end_matches('-');
    let label_room = MAX - app_part.len() - 2 - hash.len() - 1;
    let cut = label[..label.len().min(label_room)].trim_end_matches('-');
    let head = if cut.is_empty() {
        format!("b{hash}")
    } else {
        format!("{cut}-{hash}")
    };
    format!("{head}--{app_part}")
}

impl Engine {
    pub fn update_settings(
        &self,
        app: &str,
        change: SettingsChange,
        actor: &str,
    ) -> Result<App, EngineError> {
        let a = self.app(app)?;
        if let Some(p) = &a.settings.preview_of {
            return Err(EngineError::BadInput(format!(
                "{app} is a preview of {} (hint: change the settings of {})",
                p.app, p.app
            )));
        }
        let mut s = a.settings.clone();
        let mut what = Vec::new();
        if let Some(b) = change.deploy_branch {
            if !build::git::valid_branch(&b) {
                return Err(EngineError::BadInput(format!(
                    "{b:?} is not a valid branch name"
                )));
            }
            what.push(format!("deploy_branch={b}"));
            s.deploy_branch = b;
        }
        if let Some(c) = change.cancel_running {
            what.push(format!("cancel_running={c}"));
            s.cancel_running = c;
        }
        if let Some(p) = change.previews {
            what.push(format!("previews={p}"));
            s.previews = p;
        }
        if let Some(n) = change.preview_max {
            if !(1..=MAX_PREVIEWS).contains(&n) {
                return Err(EngineError::BadInput(format!(
                    "preview_max must be 1 to {MAX_PREVIEWS}"
                )));
            }
            what.push(format!("preview_max={n}"));
            s.preview_max = n;
        }
        if let Some(env) = change.preview_env {
            for (k, v) in &env {
                valid_env_key(k).map_err(EngineError::BadInput)?;
                if v.contains('\0') {
                    return Err(EngineError::BadInput(
                        "env values cannot contain NUL bytes".into(),
                    ));
                }
            }
            let keys: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
            what.push(format!("preview_env={}", keys.join(",")));
            s.preview_env = env;
        }
        self.store.set_settings(app, &s, actor, &what.join(" "))?;
        self.app(app)
    }

    /// The previews of `app`.
    pub fn previews(&self, app: &str) -> Result<Vec<App>, EngineError> {
        Ok(self
            .store
            .apps()?
            .into_iter()
            .filter(|a| a.settings.preview_of.as_ref().is_some_and(|p| p.app == app))
            .collect())
    }

    pub(crate) async fn deploy_preview(
        self: &Arc<Self>,
        app: &App,
        branch: &str,
        bundle: &Path,
        actor: &str,
        meta: DeployMeta,
    ) -> Result<Pushed, EngineError> {
        if !app.settings.previews {
            return Ok(Pushed::Ignored(format!(
                "{branch} is not {}'s deploy branch ({}): stored, not deployed (hint: berth apps:settings {} --previews on deploys other branches as previews)",
                app.name, app.settings.deploy_branch, app.name
            )));
        }
        let name = preview_name(&app.name, branch);
        let existing = self.store.app(&name)?;
        match &existing {
            Some(p)
                if p.settings.preview_of.as_ref().map(|o| (&o.app, &o.branch))
                    != Some((&app.name, &branch.to_string())) =>
            {
                return Err(EngineError::Conflict(format!(
                    "the preview of {branch} would be {name}, which is another app"
                )));
            }
            Some(_) => {}
            None => {
                let n = self.previews(&app.name)?.len();
                if n >= app.settings.preview_max as usize {
                    return Err(EngineError::Conflict(format!(
                        "{} already has {n} previews, its cap (hint: delete a branch, or raise it with berth apps:settings {} --preview-max N)",
                        app.name, app.name
                    )));
                }
                let settings = AppSettings {
                    preview_of: Some(PreviewOf {
                        app: app.name.clone(),
                        branch: branch.to_string(),
                    }),
                    deploy_branch: branch.to_string(),
                    ..AppSettings::default()
                };
                self.store.create_app_with(&name, &settings, actor)?;
            }
        }
        // The app's env with the preview overrides, as of this push.
        let mut env = self.store.env(&app.name)?;
        env.extend(app.settings.preview_env.clone());
        let current = self.store.env(&name)?;
        let unset: Vec<String> = current
            .keys()
            .filter(|k| !env.contains_key(*k))
            .cloned()
            .collect();
        if current != env {
            self.store.update_env(&name, &env, &unset, actor)?;
        }
        let d = self.deploy_bundle_with(&name, bundle, actor, meta).await;
        if d.is_err() && existing.is_none() {
            // Nothing deployed: no preview left behind.
            let _ = self.destroy_app(&name, actor).await;
        }
        Ok(Pushed::Deploy(d?))
    }

    /// A branch of `app` was deleted: its preview goes. The deploy branch cannot be deleted.
    pub async fn delete_branch(
        &self,
        app: &str,
        branch: &str,
        actor: &str,
    ) -> Result<(), EngineError> {
        let a = self.app(app)?;
        if branch == a.settings.deploy_branch {
            return Err(EngineError::Conflict(format!(
                "{branch} is {app}'s deploy branch and cannot be deleted (hint: berth apps:settings {app} --deploy-branch OTHER first)"
            )));
        }
        let name = preview_name(app, branch);
        let preview = self.store.app(&name)?;
        if let Some(p) = preview {
            if p.settings.preview_of.as_ref().is_some_and(|o| o.app == app) {
                self.destroy_app(&name, actor).await?;
                tracing::info!(app, branch, preview = %name, "branch deleted: preview destroyed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_names_are_app_names() {
        for (branch, want) in [
            ("feature/Login", "feature-login--shop"),
            ("fix__x", "fix-x--shop"),
            ("1.2-hotfix", "b1-2-hotfix--shop"),
            ("--weird--", "weird--shop"),
        ] {
            let got = preview_name("shop", branch);
            assert_eq!(got, want);
            store::valid_app_name(&got).unwrap();
        }
        let long = preview_name("shop", &"x".repeat(100));
        assert!(long.len() <= 63, "{long}");
        store::valid_app_name(&long).unwrap();
    }

    #[test]
    fn every_app_name_length_gets_a_valid_and_distinct_preview_name() {
        for n in 1..=63 {
            let app = format!("a{}", "b".repeat(n - 1));
            let mut seen = std::collections::HashSet::new();
            for branch in [
                "main2",
                "feature/login",
                &"y".repeat(70),
                &"y".repeat(71),
                "9x",
            ] {
                let name = preview_name(&app, branch);
                store::valid_app_name(&name).unwrap_or_else(|e| panic!("{app} {branch}: {e}"));
                assert!(name.contains("--"), "{name}");
                assert!(seen.insert(name.clone()), "{app}: {branch} shares {name}");
            }
        }
    }
}
