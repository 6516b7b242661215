//! Releases: numbered, per-app builds plus the spec to run them.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Row};

use crate::{
    app_id, now_ms, path_str, query_all, query_opt, Release, ReleaseStatus, Result, Store,
    StoreError,
};

const RELEASE_SELECT: &str = "SELECT r.id, a.name, r.version, r.created_at, r.status, r.dir, \
     r.spec, r.description, r.source_release, r.config \
     FROM releases r JOIN apps a ON a.id = r.app_id";

fn release_from_row(r: &Row<'_>) -> Result<Release> {
    let status: String = r.get(4)?;
    let dir: String = r.get(5)?;
    Ok(Release {
        id: r.get(0)?,
        app: r.get(1)?,
        version: r.get(2)?,
        created_at: r.get(3)?,
        status: status.parse()?,
        dir: PathBuf::from(dir),
        spec: r.get(6)?,
        description: r.get(7)?,
        source_release: r.get(8)?,
        config: r.get(9)?,
    })
}

pub(crate) fn release_by_version(
    conn: &Connection,
    app: &str,
    version: i64,
) -> Result<Option<Release>> {
    query_opt(
        conn,
        &format!("{RELEASE_SELECT} WHERE a.name = ?1 AND r.version = ?2"),
        (app, version),
        release_from_row,
    )
}

/// The error for a release that doesn't exist, worded the same everywhere.
pub(crate) fn release_not_found(app: &str, version: i64) -> StoreError {
    StoreError::NotFound(format!("release {app} v{version} not found"))
}

impl Store {
    /// Creates the app's next release. The version is `max + 1` computed in
    /// the same write transaction as the insert, so concurrent callers can't
    /// get the same number.
    pub fn create_release(
        &self,
        app: &str,
        dir: &Path,
        spec: &str,
        description: &str,
        source_release: Option<i64>,
        status: ReleaseStatus,
    ) -> Result<Release> {
        let dir = path_str(dir)?;
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let version: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM releases WHERE app_id = ?1",
                [id],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO releases \
                 (app_id, version, created_at, status, dir, spec, description, source_release) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                (
                    id,
                    version,
                    now_ms(),
                    status.as_str(),
                    dir,
                    spec,
                    description,
                    source_release,
                ),
            )?;
            release_by_version(tx, app, version)?.ok_or_else(|| release_not_found(app, version))
        })
    }

    /// Marks a release building/ready/failed.
    pub fn set_release_status(&self, app: &str, version: i64, status: ReleaseStatus) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let n = tx.execute(
                "UPDATE releases SET status = ?1 WHERE app_id = ?2 AND version = ?3",
                (status.as_str(), id, version),
            )?;
            if n == 0 {
                return Err(release_not_found(app, version));
            }
            Ok(())
        })
    }

    /// Sets a release's directory and spec together, e.g. once the build has
    /// produced them, so the two never disagree.
    pub fn set_release_dir_spec(
        &self,
        app: &str,
        version: i64,
        dir: &Path,
        spec: &str,
    ) -> Result<()> {
        let dir = path_str(dir)?;
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let n = tx.execute(
                "UPDATE releases SET dir = ?1, spec = ?2 WHERE app_id = ?3 AND version = ?4",
                (dir, spec, id, version),
            )?;
            if n == 0 {
                return Err(release_not_found(app, version));
            }
            Ok(())
        })
    }

    /// Records the config (env and formation, JSON) a release runs with.
    pub fn set_release_config(&self, app: &str, version: i64, config: &str) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            let n = tx.execute(
                "UPDATE releases SET config = ?1 WHERE app_id = ?2 AND version = ?3",
                (config, id, version),
            )?;
            if n == 0 {
                return Err(release_not_found(app, version));
            }
            Ok(())
        })
    }

    /// One release of an app. `Ok(None)` if the app exists but the release
    /// doesn't; `NotFound` if the app doesn't exist.
    pub fn release(&self, app: &str, version: i64) -> Result<Option<Release>> {
        let conn = self.conn();
        app_id(&conn, app)?;
        release_by_version(&conn, app, version)
    }

    /// All releases of an app, newest first.
    pub fn releases(&self, app: &str) -> Result<Vec<Release>> {
        let conn = self.conn();
        let id = app_id(&conn, app)?;
        query_all(
            &conn,
            &format!("{RELEASE_SELECT} WHERE r.app_id = ?1 ORDER BY r.version DESC"),
            [id],
            release_from_row,
        )
    }
}
