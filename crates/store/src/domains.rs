//! Custom domains and environment variables of an app.

use std::collections::BTreeMap;

use rusqlite::OptionalExtension;

use crate::{app_id, audit, now_ms, query_all, Result, Store, StoreError};

impl Store {
    /// Attaches a custom domain. A host can belong to only one app (routing
    /// must be unambiguous), so a taken host is a `Conflict`. The host is not
    /// validated here (see [`crate::valid_host`]).
    pub fn add_domain(&self, app: &str, host: &str, actor: &str) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT a.name FROM domains d JOIN apps a ON a.id = d.app_id WHERE d.host = ?1",
                    [host],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(owner) = owner {
                return Err(StoreError::Conflict(format!(
                    "domain {host} is already attached to app {owner}"
                )));
            }
            tx.execute(
                "INSERT INTO domains (app_id, host, created_at) VALUES (?1, ?2, ?3)",
                (id, host, now_ms()),
            )?;
            audit(tx, actor, "domain.add", app, host)
        })
    }

    /// Detaches a custom domain from the app.
    pub fn remove_domain(&self, app: &str, host: &str, actor: &str) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let n = tx.execute(
                "DELETE FROM domains WHERE app_id = ?1 AND host = ?2",
                (id, host),
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "domain {host} not found on app {app}"
                )));
            }
            audit(tx, actor, "domain.remove", app, host)
        })
    }

    /// The app's custom domains, sorted.
    pub fn domains(&self, app: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let id = app_id(&conn, app)?;
        query_all(
            &conn,
            "SELECT host FROM domains WHERE app_id = ?1 ORDER BY host",
            [id],
            |r| Ok(r.get(0)?),
        )
    }

    /// Every (app, host) pair, for building the routing table.
    pub fn all_domains(&self) -> Result<Vec<(String, String)>> {
        query_all(
            &self.conn(),
            "SELECT a.name, d.host FROM domains d JOIN apps a ON a.id = d.app_id \
             ORDER BY a.name, d.host",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// The app's environment variables.
    pub fn env(&self, app: &str) -> Result<BTreeMap<String, String>> {
        let conn = self.conn();
        let id = app_id(&conn, app)?;
        let pairs = query_all(
            &conn,
            "SELECT key, value FROM env WHERE app_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(pairs.into_iter().collect())
    }

    /// Sets and unsets variables in one transaction, so a restart never sees
    /// half of a change. Unsetting a missing key is not an error. The audit
    /// log gets the keys only: values are often secrets.
    pub fn update_env(
        &self,
        app: &str,
        set: &BTreeMap<String, String>,
        unset: &[String],
        actor: &str,
    ) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            for (key, value) in set {
                tx.execute(
                    "INSERT INTO env (app_id, key, value) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (app_id, key) DO UPDATE SET value = excluded.value",
                    (id, key, value),
                )?;
            }
            for key in unset {
                tx.execute("DELETE FROM env WHERE app_id = ?1 AND key = ?2", (id, key))?;
            }
            if !set.is_empty() {
                let keys: Vec<&str> = set.keys().map(String::as_str).collect();
                audit(tx, actor, "env.set", app, &keys.join(","))?;
            }
            if !unset.is_empty() {
                audit(tx, actor, "env.unset", app, &unset.join(","))?;
            }
            Ok(())
        })
    }
}
