//! One deploy queue per app: deploys of an app run one at a time, in the order they were asked
//! for (a later upload never goes live before an earlier one); apps deploy in parallel, and at
//! most `build_concurrency` builds run at once across apps (`sandbox.rs`).
//!
//! A job names what to run; a rollback or a restart (env or formation change) chooses its
//! source release only when it runs, so it always builds on what is live at that moment.
//!
//! A newer build of an app supersedes its builds still waiting (they never run), and, with the
//! app's `cancel_running` setting (the default), cancels the one running unless it already
//! switched. A build that finds a newer build of its app recorded when its turn comes is
//! superseded too, so the newest push is always the one that ends up live.

use crate::pipeline::DeployLog;
use crate::{lock, Engine, EngineError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use store::{Deploy, DeployStatus, ReleaseStatus};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A queued or running job, for cancelling it.
pub(crate) struct Active {
    app: String,
    build: bool,
    pub(crate) token: CancellationToken,
    /// Holds a build slot (or, for other jobs, is running): cancelling it needs the pipeline.
    started: bool,
    /// Why it was cancelled.
    reason: Option<String>,
    /// It reached the switch: it goes live, a cancel can no longer stop it.
    switching: bool,
}

/// Steps after which a deploy is live and can no longer be cancelled.
const LIVE_STEPS: &[&str] = &["switch", "switched", "drain", "postdeploy", "done"];

#[derive(Debug)]
pub(crate) enum Job {
    /// A new build: its release is recorded with its directory.
    Build { deploy: i64, version: i64 },
    /// Deploy release `source`'s files and config again.
    Rollback { deploy: i64, source: i64 },
    /// Restart whatever is live with the app's current env and formation: as a new release
    /// (an env change: Heroku's config vars make one too), or `in_place`, as new instances of
    /// the live release (`berth restart`).
    Restart {
        deploy: i64,
        description: String,
        in_place: bool,
    },
    /// Bring the live release to the app's formation, in place.
    Scale { deploy: i64, description: String },
}

impl Job {
    fn deploy(&self) -> i64 {
        match self {
            Job::Build { deploy, .. }
            | Job::Rollback { deploy, .. }
            | Job::Restart { deploy, .. }
            | Job::Scale { deploy, .. } => *deploy,
        }
    }
}

pub(crate) struct AppQueue {
    tx: mpsc::UnboundedSender<Job>,
    /// Jobs queued or running.
    pending: Arc<AtomicUsize>,
}

impl Engine {
    pub(crate) fn enqueue(self: &Arc<Self>, app: &str, job: Job) {
        let build = matches!(job, Job::Build { .. });
        lock(&self.active).insert(
            job.deploy(),
            Active {
                app: app.to_string(),
                build,
                token: CancellationToken::new(),
                started: false,
                reason: None,
                switching: false,
            },
        );
        if build {
            self.supersede(app, job.deploy());
        }
        let mut queues = lock(&self.queues);
        let mut job = job;
        // At most twice: a queue whose worker is gone is replaced once.
        for _ in 0..2 {
            let q = queues
                .entry(app.to_string())
                .or_insert_with(|| self.new_queue(app));
            q.pending.fetch_add(1, Ordering::SeqCst);
            match q.tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    q.pending.fetch_sub(1, Ordering::SeqCst);
                    queues.remove(app);
                    job = back;
                }
            }
        }
        lock(&self.active).remove(&job.deploy());
        let _ = self.store.finish_deploy(
            job.deploy(),
            DeployStatus::Failed,
            Some("the app's deploy queue is gone"),
        );
    }

    /// Builds of `app` older than `newer`: the waiting ones are superseded, the running one is
    /// cancelled if the app says so.
    fn supersede(&self, app: &str, newer: i64) {
        let cancel_running = self
            .store
            .app(app)
            .ok()
            .flatten()
            .is_some_and(|a| a.settings.cancel_running);
        let mut active = lock(&self.active);
        for (id, a) in active.iter_mut() {
            if a.app != app || !a.build || *id >= newer || a.token.is_cancelled() || a.switching {
                continue;
            }
            if !a.started {
                a.token.cancel();
                self.end_waiting(
                    *id,
                    DeployStatus::Superseded,
                    &format!("superseded by build {newer}"),
                );
            } else if cancel_running {
                a.reason = Some(format!("cancelled: build {newer} is newer"));
                a.token.cancel();
            }
        }
    }

    /// End a deploy that never started, with a line in its log; its release (if it has one)
    /// never ran, so pruning may drop its files.
    fn end_waiting(&self, id: i64, status: DeployStatus, reason: &str) {
        if let Ok(Some(d)) = self.store.deploy(id) {
            DeployLog::new(&d.log_path).line(&format!("-----> {}: {reason}", status.as_str()));
            self.release_never_ran(&d);
        }
        let _ = self.store.finish_deploy(id, status, Some(reason));
    }

    /// The new release of a build that ended before it ran is failed (not `building` forever).
    fn release_never_ran(&self, d: &Deploy) {
        if let (store::DeployKind::Build, Some(v)) = (d.kind, d.release_version) {
            if let Ok(Some(r)) = self.store.release(&d.app, v) {
                if r.status == ReleaseStatus::Building {
                    let _ = self
                        .store
                        .set_release_status(&d.app, v, ReleaseStatus::Failed);
                }
            }
        }
    }

    /// Cancel a queued or running deploy (`berth builds:cancel`). One that already switched
    /// cannot be cancelled: it is live (roll back instead).
    pub fn cancel_deploy(&self, id: i64, actor: &str) -> Result<Deploy, EngineError> {
        let d = self.deploy(id)?;
        if !d.status.is_active() {
            return Err(EngineError::Conflict(format!(
                "deploy {id} already ended ({})",
                d.status
            )));
        }
        if LIVE_STEPS.contains(&d.step.as_str()) {
            return Err(EngineError::Conflict(format!(
                "deploy {id} of {} is already live (hint: berth rollback -a {})",
                d.app, d.app
            )));
        }
        let reason = format!("cancelled by {actor}");
        {
            let mut active = lock(&self.active);
            match active.get_mut(&id) {
                Some(a) if a.switching => {
                    return Err(EngineError::Conflict(format!(
                        "deploy {id} of {} is already live (hint: berth rollback -a {})",
                        d.app, d.app
                    )));
                }
                Some(a) if a.started => {
                    a.reason = Some(reason.clone());
                    a.token.cancel();
                }
                Some(a) => {
                    a.token.cancel();
                    self.end_waiting(id, DeployStatus::Cancelled, &reason);
                }
                // Recorded, not queued yet (a webhook's fetch): it ends here, and is not queued.
                None => self.end_waiting(id, DeployStatus::Cancelled, &reason),
            }
        }
        let _ = self
            .store
            .audit(actor, "deploy.cancel", &d.app, &id.to_string());
        self.deploy(id)
    }

    /// `app` is being destroyed: every queued or running job of it is cancelled (a running one
    /// at its next step, its command killed), even one about to switch: nothing of the app
    /// may go live again, and destroy must not wait for a build of up to `step_max_timeout`.
    pub(crate) fn cancel_all(&self, app: &str, actor: &str) {
        let reason = format!("cancelled: the app is being destroyed by {actor}");
        let mut waiting = Vec::new();
        {
            let mut active = lock(&self.active);
            for (id, a) in active.iter_mut().filter(|(_, a)| a.app == app) {
                if a.token.is_cancelled() {
                    continue;
                }
                a.reason = Some(reason.clone());
                a.token.cancel();
                if !a.started {
                    waiting.push(*id);
                }
            }
        }
        for id in waiting {
            self.end_waiting(id, DeployStatus::Cancelled, &reason);
        }
    }

    /// The job's cancel token, if it is queued or running.
    pub(crate) fn cancel_token(&self, id: i64) -> CancellationToken {
        lock(&self.active)
            .get(&id)
            .map(|a| a.token.clone())
            .unwrap_or_default()
    }

    /// The job reaches its switch: `false` if it was cancelled (it must not go live), else
    /// from now on a cancel is refused.
    pub(crate) fn enter_switch(&self, id: i64) -> bool {
        match lock(&self.active).get_mut(&id) {
            Some(a) if a.token.is_cancelled() => false,
            Some(a) => {
                a.switching = true;
                true
            }
            None => true,
        }
    }

    /// Why a cancelled job was cancelled.
    pub(crate) fn cancel_reason(&self, id: i64) -> String {
        lock(&self.active)
            .get(&id)
            .and_then(|a| a.reason.clone())
            .unwrap_or_else(|| "cancelled".into())
    }

    /// The job is about to run (it has its build slot): from now on a cancel goes through the
    /// pipeline. `false` if it was cancelled meanwhile.
    fn mark_started(&self, id: i64) -> bool {
        match lock(&self.active).get_mut(&id) {
            Some(a) if !a.token.is_cancelled() => {
                a.started = true;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    fn new_queue(self: &Arc<Self>, app: &str) -> AppQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        tokio::spawn(self.clone().worker(app.to_string(), rx, pending.clone()));
        AppQueue { tx, pending }
    }

    /// Is a deploy of `app` queued or running?
    pub fn deploying(&self, app: &str) -> bool {
        lock(&self.queues)
            .get(app)
            .is_some_and(|q| q.pending.load(Ordering::SeqCst) > 0)
    }

    /// Forget an app's queue (destroy): its worker finishes what it holds, then ends.
    pub(crate) fn drop_queue(&self, app: &str) {
        lock(&self.queues).remove(app);
    }

    async fn worker(
        self: Arc<Self>,
        app: String,
        mut rx: mpsc::UnboundedReceiver<Job>,
        pending: Arc<AtomicUsize>,
    ) {
        while let Some(job) = rx.recv().await {
            let guard = self.lock_for(&app);
            let held = guard.lock().await;
            // Each job in its own task: a panic fails that deploy, not the queue.
            let deploy_id = job.deploy();
            let (this, name) = (self.clone(), app.clone());
            let run = tokio::spawn(async move { this.run_job(&name, job).await }).await;
            if let Err(e) = run {
                tracing::error!(app, deploy = deploy_id, error = %e, "deploy task failed");
                let _ = self.store.finish_deploy(
                    deploy_id,
                    DeployStatus::Failed,
                    Some("internal error (see berth's log)"),
                );
            }
            lock(&self.active).remove(&deploy_id);
            drop(held);
            pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn run_job(self: &Arc<Self>, app: &str, job: Job) {
        let deploy_id = job.deploy();
        let Ok(Some(deploy)) = self.store.deploy(deploy_id) else {
            return; // the app (and its deploys) went away
        };
        if !deploy.status.is_active() {
            // Cancelled or superseded while it waited (maybe before its release was recorded).
            return self.release_never_ran(&deploy);
        }
        let log = DeployLog::new(&deploy.log_path);
        let token = self.cancel_token(deploy_id);
        let mut slot = None;
        if matches!(job, Job::Build { .. }) {
            if let Ok(Some(newer)) = self.store.newer_build(app, deploy_id) {
                return self.end_waiting(
                    deploy_id,
                    DeployStatus::Superseded,
                    &format!("superseded by build {newer}"),
                );
            }
            let family = self
                .store
                .app(app)
                .ok()
                .flatten()
                .and_then(|a| a.settings.preview_of.map(|p| p.app))
                .unwrap_or_else(|| app.to_string());
            tokio::select! {
                s = self.slots.acquire(&family) => match s {
                    Ok(s) => slot = Some(s),
                    Err(reason) => return self.fail_early(deploy_id, &log, &reason),
                },
                () = token.cancelled() => return,
            }
        }
        if !self.mark_started(deploy_id) {
            return;
        }
        let mut run = crate::pipeline::JobRun {
            token,
            slot,
            deploying: false,
            restart: None,
        };
        let (version, build, restore) = match job {
            Job::Build { version, .. } => (version, true, None),
            Job::Rollback { source, .. } => {
                let description = format!("Rollback to v{source}");
                match self.derive(app, deploy_id, Some(source), &description) {
                    Ok(Some(v)) => (v, false, Some(source)),
                    Ok(None) => return,
                    Err(reason) => return self.fail_early(deploy_id, &log, &reason),
                }
            }
            Job::Scale { description, .. } => {
                return self.run_scale(app, deploy_id, &description, &log).await
            }
            Job::Restart {
                description,
                in_place,
                ..
            } => {
                let live = if in_place {
                    // New instances of the live release: the release list does not change.
                    let a = self.store.app(app).ok().flatten();
                    Ok(a.and_then(|a| {
                        let v = a.live_release?;
                        run.restart = Some(a.live_generation + 1);
                        Some(v)
                    }))
                } else {
                    self.derive(app, deploy_id, None, &description)
                };
                match live {
                    Ok(Some(v)) => (v, false, None),
                    Ok(None) => {
                        log.line(
                            "-----> Nothing is live: the new settings apply to the next deploy",
                        );
                        let _ = self.store.set_deploy_step(deploy_id, "done");
                        let _ = self
                            .store
                            .finish_deploy(deploy_id, DeployStatus::Succeeded, None);
                        return;
                    }
                    Err(reason) => return self.fail_early(deploy_id, &log, &reason),
                }
            }
        };
        self.run_pipeline(app, deploy_id, version, build, restore, &log, run)
            .await;
    }

    async fn run_scale(
        self: &Arc<Self>,
        app: &str,
        deploy_id: i64,
        description: &str,
        log: &DeployLog,
    ) {
        let live = self
            .store
            .app(app)
            .ok()
            .flatten()
            .and_then(|a| a.live_release);
        let Some(version) = live else {
            log.line("-----> Nothing is live: the new formation applies to the next deploy");
            let _ = self.store.set_deploy_step(deploy_id, "done");
            let _ = self
                .store
                .finish_deploy(deploy_id, DeployStatus::Succeeded, None);
            return;
        };
        log.line(&format!("-----> {app} v{version}: {description}"));
        let _ = self.store.set_deploy_step(deploy_id, "scale");
        let mut started = crate::pipeline::Started::default();
        match self
            .scale_in_place(app, deploy_id, version, log, &mut started)
            .await
        {
            Ok(()) => {
                log.line(&format!("-----> Done: {}", self.app_url(app)));
                let _ = self.store.set_deploy_step(deploy_id, "done");
                let _ = self
                    .store
                    .finish_deploy(deploy_id, DeployStatus::Succeeded, None);
            }
            Err(crate::pipeline::Failure(reason)) => {
                self.undo(started).await;
                self.fail_early(deploy_id, log, &reason);
            }
        }
    }

    /// Record a new release from `source` (or, for `None`, from the live release); `None` if
    /// nothing is live.
    fn derive(
        &self,
        app: &str,
        deploy_id: i64,
        source: Option<i64>,
        description: &str,
    ) -> Result<Option<i64>, String> {
        let source = match source {
            Some(v) => v,
            None => match self.store.app(app) {
                Ok(Some(a)) => match a.live_release {
                    Some(v) => v,
                    None => return Ok(None),
                },
                _ => return Err(format!("app {app} not found")),
            },
        };
        let src = match self.store.release(app, source) {
            Ok(Some(r)) => r,
            _ => return Err(format!("release v{source} not found")),
        };
        let rel = self
            .store
            .create_release(
                app,
                &src.dir,
                &src.spec,
                description,
                Some(src.version),
                ReleaseStatus::Building,
            )
            .map_err(|e| e.to_string())?;
        self.store
            .set_deploy_release(deploy_id, rel.version)
            .map_err(|e| e.to_string())?;
        Ok(Some(rel.version))
    }

    fn fail_early(self: &Arc<Self>, deploy_id: i64, log: &DeployLog, reason: &str) {
        log.line(&format!("-----> Deploy failed: {reason}"));
        let _ = self
            .store
            .finish_deploy(deploy_id, DeployStatus::Failed, Some(reason));
        self.notify(deploy_id, "deploy.failed");
    }
}
