//! Apps: creation, lookup, scaling and which release is live.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row};

use crate::{
    app_id, audit, now_ms, query_all, query_opt, App, AppSettings, NotifyTarget, Result, Store,
    StoreError,
};

const NOTIFY_SELECT: &str = "SELECT n.id, a.name, n.url, n.secret, n.created_at \
     FROM notify_targets n LEFT JOIN apps a ON a.id = n.app_id";

fn notify_from_row(r: &Row<'_>) -> Result<NotifyTarget> {
    Ok(NotifyTarget {
        id: r.get(0)?,
        app: r.get(1)?,
        url: r.get(2)?,
        secret: r.get(3)?,
        created_at: r.get(4)?,
    })
}

fn notify_target_by_id(conn: &Connection, id: i64) -> Result<Option<NotifyTarget>> {
    query_opt(
        conn,
        &format!("{NOTIFY_SELECT} WHERE n.id = ?1"),
        [id],
        notify_from_row,
    )
}

const APP_COLS: &str = "id, name, created_at, live_release, formation, settings, live_generation";

fn app_from_row(r: &Row<'_>) -> Result<App> {
    let name: String = r.get(1)?;
    let formation: String = r.get(4)?;
    let formation = serde_json::from_str(&formation)
        .map_err(|e| StoreError::Corrupt(format!("formation of app {name}: {e}")))?;
    let settings: String = r.get(5)?;
    let settings = serde_json::from_str(&settings)
        .map_err(|e| StoreError::Corrupt(format!("settings of app {name}: {e}")))?;
    Ok(App {
        id: r.get(0)?,
        name,
        created_at: r.get(2)?,
        live_release: r.get(3)?,
        formation,
        settings,
        live_generation: r.get(6)?,
    })
}

fn app_by_name(conn: &Connection, name: &str) -> Result<Option<App>> {
    query_opt(
        conn,
        &format!("SELECT {APP_COLS} FROM apps WHERE name = ?1"),
        [name],
        app_from_row,
    )
}

impl Store {
    /// Creates an app. The name is not validated here (see
    /// [`crate::valid_app_name`]); the store only enforces uniqueness.
    pub fn create_app(&self, name: &str, actor: &str) -> Result<App> {
        self.create_app_with(name, &AppSettings::default(), actor)
    }

    /// The app called `name`, if it exists.
    pub fn app(&self, name: &str) -> Result<Option<App>> {
        app_by_name(&self.conn(), name)
    }

    /// All apps, sorted by name.
    pub fn apps(&self) -> Result<Vec<App>> {
        query_all(
            &self.conn(),
            &format!("SELECT {APP_COLS} FROM apps ORDER BY name"),
            [],
            app_from_row,
        )
    }

    /// Deletes an app and, through `ON DELETE CASCADE`, its releases,
    /// deploys, instances, domains and env. Stopping processes and removing
    /// files is the engine's job.
    pub fn destroy_app(&self, name: &str, actor: &str) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, name)?;
            tx.execute("DELETE FROM apps WHERE id = ?1", [id])?;
            // Deploy tokens name apps: one for this app must not reach a new app that gets
            // the same name later. A token left with no app is revoked.
            let mut stmt = tx.prepare(
                "SELECT id, apps FROM tokens WHERE scope = 'deploy' AND revoked_at IS NULL",
            )?;
            let rows: Vec<(i64, String)> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<std::result::Result<_, _>>()?;
            drop(stmt);
            for (token, apps) in rows {
                let list: Vec<String> = serde_json::from_str(&apps)
                    .map_err(|e| StoreError::Corrupt(format!("token {token} apps: {e}")))?;
                if !list.iter().any(|a| a == name) {
                    continue;
                }
                let rest: Vec<&String> = list.iter().filter(|a| *a != name).collect();
                let json = serde_json::to_string(&rest)
                    .map_err(|e| StoreError::Corrupt(format!("token {token} apps: {e}")))?;
                tx.execute("UPDATE tokens SET apps = ?1 WHERE id = ?2", (json, token))?;
                if rest.is_empty() {
                    tx.execute(
                        "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2",
                        (crate::now_ms(), token),
                    )?;
                }
            }
            audit(tx, actor, "app.destroy", name, "")
        })
    }

    /// Replaces the app's formation (replicas per process type).
    pub fn set_formation(
        &self,
        app: &str,
        formation: &BTreeMap<String, u32>,
        actor: &str,
    ) -> Result<()> {
        // BTreeMap<String, u32> always serializes; the error path is unreachable
        // but cheaper to map than to argue about.
        let json = serde_json::to_string(formation)
            .map_err(|e| StoreError::Corrupt(format!("formation: {e}")))?;
        let detail = formation
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        self.write(|tx| {
            let id = app_id(tx, app)?;
            tx.execute(
                "UPDATE apps SET formation = ?1 WHERE id = ?2",
                (json.as_str(), id),
            )?;
            audit(tx, actor, "app.scale", app, &detail)
        })
    }

    /// Replaces the app's git/CI settings; `what` goes to the audit log (never a secret).
    pub fn set_settings(
        &self,
        app: &str,
        settings: &AppSettings,
        actor: &str,
        what: &str,
    ) -> Result<()> {
        let json = serde_json::to_string(settings)
            .map_err(|e| StoreError::Corrupt(format!("settings: {e}")))?;
        self.write(|tx| {
            let id = app_id(tx, app)?;
            tx.execute(
                "UPDATE apps SET settings = ?1 WHERE id = ?2",
                (json.as_str(), id),
            )?;
            audit(tx, actor, "app.settings", app, what)
        })
    }

    /// Creates an app with its settings in one transaction (a branch preview).
    pub fn create_app_with(&self, name: &str, settings: &AppSettings, actor: &str) -> Result<App> {
        let json = serde_json::to_string(settings)
            .map_err(|e| StoreError::Corrupt(format!("settings: {e}")))?;
        self.write(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM apps WHERE name = ?1", [name], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                return Err(StoreError::Conflict(format!("app {name} already exists")));
            }
            tx.execute(
                "INSERT INTO apps (name, created_at, settings) VALUES (?1, ?2, ?3)",
                (name, now_ms(), json.as_str()),
            )?;
            audit(tx, actor, "app.create", name, "")?;
            app_by_name(tx, name)?
                .ok_or_else(|| StoreError::NotFound(format!("app {name} not found")))
        })
    }

    /// Records a webhook delivery id; `false` if it was seen before (a redelivery runs
    /// nothing). Ids older than 30 days are forgotten.
    pub fn record_delivery(&self, provider: &str, delivery: &str) -> Result<bool> {
        self.write(|tx| {
            let month_ago = now_ms() - 30 * 24 * 3600 * 1000;
            tx.execute("DELETE FROM hook_deliveries WHERE at < ?1", [month_ago])?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO hook_deliveries (provider, delivery, at) VALUES (?1, ?2, ?3)",
                (provider, delivery, now_ms()),
            )?;
            Ok(n == 1)
        })
    }

    /// Forgets a delivery id (its build could not be started, so a redelivery should run).
    pub fn forget_delivery(&self, provider: &str, delivery: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM hook_deliveries WHERE provider = ?1 AND delivery = ?2",
            (provider, delivery),
        )?;
        Ok(())
    }

    /// Adds an outgoing webhook target (for one app, or all with `None`).
    pub fn add_notify_target(
        &self,
        app: Option<&str>,
        url: &str,
        secret: &str,
        actor: &str,
    ) -> Result<NotifyTarget> {
        self.write(|tx| {
            let app_id = match app {
                Some(a) => Some(app_id(tx, a)?),
                None => None,
            };
            tx.execute(
                "INSERT INTO notify_targets (app_id, url, secret, created_at) VALUES (?1, ?2, ?3, ?4)",
                (app_id, url, secret, now_ms()),
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, actor, "notify.add", app.unwrap_or("*"), url)?;
            notify_target_by_id(tx, id)?.ok_or_else(|| StoreError::NotFound(format!("notification target {id} not found")))
        })
    }

    /// Removes a target; `NotFound` if there is none with that id.
    pub fn remove_notify_target(&self, id: i64, actor: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM notify_targets WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "notification target {id} not found"
                )));
            }
            audit(tx, actor, "notify.remove", &id.to_string(), "")
        })
    }

    /// Every target, or those that get `app`'s events (its own and the global ones).
    pub fn notify_targets(&self, app: Option<&str>) -> Result<Vec<NotifyTarget>> {
        let conn = self.conn();
        match app {
            None => query_all(
                &conn,
                &format!("{NOTIFY_SELECT} ORDER BY n.id"),
                [],
                notify_from_row,
            ),
            Some(a) => query_all(
                &conn,
                &format!("{NOTIFY_SELECT} WHERE n.app_id IS NULL OR a.name = ?1 ORDER BY n.id"),
                [a],
                notify_from_row,
            ),
        }
    }

    /// Points the app at a release (or at none). Prefer [`Store::switch_live`]
    /// during a deploy; this is for repairs such as clearing a live release
    /// whose files are gone.
    pub fn set_live_release(&self, app: &str, version: Option<i64>) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            if let Some(v) = version {
                let exists = tx
                    .query_row(
                        "SELECT 1 FROM releases WHERE app_id = ?1 AND version = ?2",
                        (id, v),
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some();
                if !exists {
                    return Err(StoreError::NotFound(format!(
                        "release {app} v{v} not found"
                    )));
                }
            }
            tx.execute(
                "UPDATE apps SET live_release = ?1, live_generation = 0 WHERE id = ?2",
                (version, id),
            )?;
            Ok(())
        })
    }
}
