//! Apps: creation, lookup, scaling and which release is live.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row};

use crate::{app_id, audit, now_ms, query_all, query_opt, App, Result, Store, StoreError};

const APP_COLS: &str = "id, name, created_at, live_release, formation";

fn app_from_row(r: &Row<'_>) -> Result<App> {
    let name: String = r.get(1)?;
    let formation: String = r.get(4)?;
    let formation = serde_json::from_str(&formation)
        .map_err(|e| StoreError::Corrupt(format!("formation of app {name}: {e}")))?;
    Ok(App {
        id: r.get(0)?,
        name,
        created_at: r.get(2)?,
        live_release: r.get(3)?,
        formation,
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
        self.write(|tx| {
            let exists = tx
                .query_row("SELECT 1 FROM apps WHERE name = ?1", [name], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                return Err(StoreError::Conflict(format!("app {name} already exists")));
            }
            tx.execute(
                "INSERT INTO apps (name, created_at) VALUES (?1, ?2)",
                (name, now_ms()),
            )?;
            audit(tx, actor, "app.create", name, "")?;
            app_by_name(tx, name)?
                .ok_or_else(|| StoreError::NotFound(format!("app {name} not found")))
        })
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
                "UPDATE apps SET live_release = ?1 WHERE id = ?2",
                (version, id),
            )?;
            Ok(())
        })
    }
}
