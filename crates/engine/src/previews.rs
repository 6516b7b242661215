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
/// digits made one `-`, cut so that `<label>--<app>` fits a 63-character DNS label.
pub fn preview_name(app: &str, branch: &str) -> String {
    let mut label = String::new();
    for c in branch.chars() {
        if c.is_ascii_alphanumeric() {
            label.push(c.to_ascii_lowercase());
        } else if !label.ends_with('-') && !label.is_empty() {
            label.push('-');
        }
    }
    let room = 63usize.saturating_sub(app.len() + 2);
    label.truncate(room);
    let label = label.trim_end_matches('-');
    // An app name starts with a letter.
    let label = if label.starts_with(|c: char| c.is_ascii_lowercase()) {
        label.to_string()
    } else {
        let mut l = format!("b{label}");
        l.truncate(room);
        l.trim_end_matches('-').to_string()
    };
    format!("{label}--{app}")
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
}
