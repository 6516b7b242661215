//! Deploys: the record of each pipeline run, and the atomic switch that makes
//! a release live.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, Row};

use crate::releases::release_not_found;
use crate::{
    app_id, audit, now_ms, path_str, query_all, query_opt, sql_limit, Deploy, DeployKind,
    DeployMeta, DeployStatus, ReleaseStatus, Result, Step, Store, StoreError,
};

const DEPLOY_SELECT: &str = "SELECT d.id, a.name, d.release_version, d.kind, d.status, d.step, \
     d.reason, d.actor, d.started_at, d.finished_at, d.log_path, \
     d.trigger, d.sha, d.branch, d.author, d.message, d.steps \
     FROM deploys d JOIN apps a ON a.id = d.app_id";

fn deploy_from_row(r: &Row<'_>) -> Result<Deploy> {
    let kind: String = r.get(3)?;
    let status: String = r.get(4)?;
    let log_path: String = r.get(10)?;
    Ok(Deploy {
        id: r.get(0)?,
        app: r.get(1)?,
        release_version: r.get(2)?,
        kind: kind.parse()?,
        status: status.parse()?,
        step: r.get(5)?,
        reason: r.get(6)?,
        actor: r.get(7)?,
        started_at: r.get(8)?,
        finished_at: r.get(9)?,
        log_path: PathBuf::from(log_path),
        meta: DeployMeta {
            trigger: r.get(11)?,
            sha: r.get(12)?,
            branch: r.get(13)?,
            author: r.get(14)?,
            message: r.get(15)?,
        },
        steps: parse_steps(&r.get::<_, String>(16)?)?,
    })
}

fn parse_steps(json: &str) -> Result<Vec<Step>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("deploy steps: {e}")))
}

fn steps_json(steps: &[Step]) -> Result<String> {
    serde_json::to_string(steps).map_err(|e| StoreError::Corrupt(format!("deploy steps: {e}")))
}

/// Ends the running step (if any) with `status`.
fn close_step(steps: &mut [Step], status: &str, at: i64) {
    if let Some(last) = steps.last_mut() {
        if last.status == "running" {
            last.status = status.to_string();
            last.finished_at = Some(at);
        }
    }
}

fn read_steps(conn: &Connection, id: i64) -> Result<Vec<Step>> {
    let json: String = conn
        .query_row("SELECT steps FROM deploys WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?
        .ok_or_else(|| deploy_not_found(id))?;
    parse_steps(&json)
}

fn deploy_by_id(conn: &Connection, id: i64) -> Result<Option<Deploy>> {
    query_opt(
        conn,
        &format!("{DEPLOY_SELECT} WHERE d.id = ?1"),
        [id],
        deploy_from_row,
    )
}

fn deploy_not_found(id: i64) -> StoreError {
    StoreError::NotFound(format!("deploy {id} not found"))
}

/// Fails with `NotFound` if an UPDATE touched no deploy row.
fn touched(n: usize, id: i64) -> Result<()> {
    if n == 0 {
        Err(deploy_not_found(id))
    } else {
        Ok(())
    }
}

impl Store {
    /// Records a new deploy (status running, step 'queued'). Its log file is
    /// `log_dir/<id>.log`; the id is only known after the insert, so the row
    /// is inserted and then given its path in the same transaction.
    pub fn create_deploy(
        &self,
        app: &str,
        kind: DeployKind,
        actor: &str,
        log_dir: &Path,
    ) -> Result<Deploy> {
        let meta = DeployMeta {
            trigger: "api".into(),
            ..DeployMeta::default()
        };
        self.create_deploy_with(app, kind, actor, log_dir, &meta)
    }

    /// [`Store::create_deploy`] with what triggered it (and the commit it builds).
    pub fn create_deploy_with(
        &self,
        app: &str,
        kind: DeployKind,
        actor: &str,
        log_dir: &Path,
        meta: &DeployMeta,
    ) -> Result<Deploy> {
        // Validate up front so a non-UTF-8 dir fails before touching the db.
        path_str(log_dir)?;
        self.write(|tx| {
            let app_id = app_id(tx, app)?;
            tx.execute(
                "INSERT INTO deploys (app_id, kind, status, step, actor, started_at, log_path, \
                 trigger, sha, branch, author, message) \
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, '', ?6, ?7, ?8, ?9, ?10)",
                (
                    app_id,
                    kind.as_str(),
                    DeployStatus::Queued.as_str(),
                    actor,
                    now_ms(),
                    meta.trigger.as_str(),
                    meta.sha.as_deref(),
                    meta.branch.as_deref(),
                    meta.author.as_deref(),
                    meta.message.as_deref(),
                ),
            )?;
            let id = tx.last_insert_rowid();
            let log_path = log_dir.join(format!("{id}.log"));
            tx.execute(
                "UPDATE deploys SET log_path = ?1 WHERE id = ?2",
                (path_str(&log_path)?, id),
            )?;
            deploy_by_id(tx, id)?.ok_or_else(|| deploy_not_found(id))
        })
    }

    /// Records which pipeline step a deploy is in (shown in the UI, and used
    /// after a crash to know how far it got).
    /// The previous step, if still running, is recorded as succeeded; a queued deploy becomes
    /// running.
    pub fn set_deploy_step(&self, id: i64, step: &str) -> Result<()> {
        self.write(|tx| {
            let mut steps = read_steps(tx, id)?;
            let at = now_ms();
            if steps.last().is_none_or(|s| s.name != step) {
                close_step(&mut steps, "succeeded", at);
                if step != "done" {
                    steps.push(Step {
                        name: step.to_string(),
                        status: "running".into(),
                        started_at: at,
                        finished_at: None,
                    });
                }
            }
            let n = tx.execute(
                "UPDATE deploys SET step = ?1, steps = ?2, \
                 status = CASE status WHEN 'queued' THEN 'running' ELSE status END WHERE id = ?3",
                (step, steps_json(&steps)?, id),
            )?;
            touched(n, id)
        })
    }

    /// Records the release a deploy produced or targets.
    pub fn set_deploy_release(&self, id: i64, version: i64) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE deploys SET release_version = ?1 WHERE id = ?2",
            (version, id),
        )?;
        touched(n, id)
    }

    /// Ends a deploy with its final status (and a reason if it failed).
    /// A deploy that already ended keeps its first outcome (a cancel racing the pipeline's own
    /// end): the return value says whether this call ended it.
    pub fn finish_deploy(
        &self,
        id: i64,
        status: DeployStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        self.write(|tx| {
            let current: String = tx
                .query_row("SELECT status FROM deploys WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?
                .ok_or_else(|| deploy_not_found(id))?;
            if !current.parse::<DeployStatus>()?.is_active() {
                return Ok(false);
            }
            let mut steps = read_steps(tx, id)?;
            let at = now_ms();
            close_step(&mut steps, status.as_str(), at);
            tx.execute(
                "UPDATE deploys SET status = ?1, reason = ?2, finished_at = ?3, steps = ?4 \
                 WHERE id = ?5",
                (status.as_str(), reason, at, steps_json(&steps)?, id),
            )?;
            Ok(true)
        })
    }

    /// A build of `app` recorded after deploy `id` that is queued, running or went live: the
    /// newest push wins, so build `id` should not run.
    pub fn newer_build(&self, app: &str, id: i64) -> Result<Option<i64>> {
        let conn = self.conn();
        let app_id = app_id(&conn, app)?;
        Ok(conn
            .query_row(
                "SELECT id FROM deploys WHERE app_id = ?1 AND kind = 'build' AND id > ?2 \
                 AND status IN ('queued', 'running', 'succeeded') ORDER BY id DESC LIMIT 1",
                (app_id, id),
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Deploys of every app (or of one), newest first, optionally only queued and running ones.
    pub fn all_deploys(
        &self,
        app: Option<&str>,
        active_only: bool,
        limit: usize,
    ) -> Result<Vec<Deploy>> {
        let conn = self.conn();
        let active = if active_only {
            " AND d.status IN ('queued', 'running')"
        } else {
            ""
        };
        match app {
            Some(a) => {
                let id = app_id(&conn, a)?;
                query_all(
                    &conn,
                    &format!(
                        "{DEPLOY_SELECT} WHERE d.app_id = ?1{active} ORDER BY d.id DESC LIMIT ?2"
                    ),
                    (id, sql_limit(limit)),
                    deploy_from_row,
                )
            }
            None => query_all(
                &conn,
                &format!("{DEPLOY_SELECT} WHERE 1 = 1{active} ORDER BY d.id DESC LIMIT ?1"),
                [sql_limit(limit)],
                deploy_from_row,
            ),
        }
    }

    /// One deploy by id.
    pub fn deploy(&self, id: i64) -> Result<Option<Deploy>> {
        deploy_by_id(&self.conn(), id)
    }

    /// The app's most recent `limit` deploys, newest first.
    pub fn deploys(&self, app: &str, limit: usize) -> Result<Vec<Deploy>> {
        self.all_deploys(Some(app), false, limit)
    }

    /// Deploys still queued or running, oldest first. After a crash these
    /// were interrupted and the engine must resolve them (finish or fail).
    pub fn unfinished_deploys(&self) -> Result<Vec<Deploy>> {
        query_all(
            &self.conn(),
            &format!("{DEPLOY_SELECT} WHERE d.status IN ('queued', 'running') ORDER BY d.id"),
            [],
            deploy_from_row,
        )
    }

    /// The commit point of a deploy: in ONE transaction, the release becomes
    /// ready, the app's live release becomes `version`, and the deploy's step
    /// becomes 'switched' (its release_version is set to `version` too). A
    /// crash before this leaves the old release live; after it, the new one.
    /// Either way the engine can tell from the deploy's step which happened.
    pub fn switch_live(&self, app: &str, deploy_id: i64, version: i64) -> Result<()> {
        self.switch_live_with_env(app, deploy_id, (version, 0), None)
    }

    /// [`Store::switch_live`] to `(version, generation)` of its instances, also replacing the
    /// app's env with `env` in the same transaction (a rollback brings back its release's env
    /// only if it goes live).
    pub fn switch_live_with_env(
        &self,
        app: &str,
        deploy_id: i64,
        (version, generation): (i64, u32),
        env: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<()> {
        self.write(|tx| {
            let app_id = app_id(tx, app)?;
            let actor: String = tx
                .query_row(
                    "SELECT actor FROM deploys WHERE id = ?1 AND app_id = ?2",
                    (deploy_id, app_id),
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(|| {
                    StoreError::NotFound(format!("deploy {deploy_id} of app {app} not found"))
                })?;
            let n = tx.execute(
                "UPDATE releases SET status = ?1 WHERE app_id = ?2 AND version = ?3",
                (ReleaseStatus::Ready.as_str(), app_id, version),
            )?;
            if n == 0 {
                return Err(release_not_found(app, version));
            }
            tx.execute(
                "UPDATE apps SET live_release = ?1, live_generation = ?2 WHERE id = ?3",
                (version, generation, app_id),
            )?;
            tx.execute(
                "UPDATE deploys SET step = 'switched', release_version = ?1 WHERE id = ?2",
                (version, deploy_id),
            )?;
            if let Some(env) = env {
                tx.execute("DELETE FROM env WHERE app_id = ?1", [app_id])?;
                for (k, v) in env {
                    tx.execute(
                        "INSERT INTO env (app_id, key, value) VALUES (?1, ?2, ?3)",
                        (app_id, k, v),
                    )?;
                }
                let keys: Vec<&str> = env.keys().map(|k| k.as_str()).collect();
                audit(tx, &actor, "env.restore", app, &keys.join(","))?;
            }
            audit(tx, &actor, "deploy.switch", app, &format!("v{version}"))
        })
    }
}
