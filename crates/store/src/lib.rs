//! berth's desired state, kept in one SQLite file inside the data dir.
//!
//! The deploy engine is the only writer; the HTTP API reads through the
//! engine. Because berth may be `kill -9`ed at any moment, every change that
//! touches more than one row runs in a single transaction, and the database
//! runs in WAL mode with `synchronous=NORMAL`, which is durable across a
//! process crash (only an OS crash / power loss can drop the last commits).
//!
//! Every public method takes `&self` and locks one connection for the length
//! of the call. Calls are short, so a plain `std::sync::Mutex` is enough and
//! keeps all writes serialized.
#![forbid(unsafe_code)]

mod apps;
mod deploys;
mod domains;
mod instances;
mod model;
mod releases;
mod settings;
mod tokens;
mod validate;

pub use model::*;
pub use validate::{valid_app_name, valid_host};

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Params, Row, TransactionBehavior};

/// Everything that can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The file was written by a newer berth. Refusing to run avoids an old
    /// binary silently misreading (or damaging) a schema it doesn't know.
    #[error(
        "database schema version {found} is newer than this berth knows ({known}); upgrade berth"
    )]
    TooNew { found: i64, known: i64 },
    /// A column holds something we could not parse (bad JSON, unknown enum
    /// value, out-of-range number). Means the file was edited by hand or
    /// damaged; we report it instead of guessing.
    #[error("corrupt data in store: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Schema migrations, applied in order. Entry `i` brings the database from
/// `user_version = i` to `i + 1`. Never edit an entry once released; append.
const MIGRATIONS: &[&str] = &[
    // 1: initial schema.
    r#"
    CREATE TABLE apps (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        created_at   INTEGER NOT NULL,
        live_release INTEGER NULL,
        formation    TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE releases (
        id             INTEGER PRIMARY KEY,
        app_id         INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        version        INTEGER NOT NULL,
        created_at     INTEGER NOT NULL,
        status         TEXT NOT NULL,
        dir            TEXT NOT NULL,
        spec           TEXT NOT NULL,
        description    TEXT NOT NULL,
        source_release INTEGER NULL,
        UNIQUE (app_id, version)
    );
    CREATE TABLE deploys (
        id              INTEGER PRIMARY KEY,
        app_id          INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release_version INTEGER NULL,
        kind            TEXT NOT NULL,
        status          TEXT NOT NULL,
        step            TEXT NOT NULL,
        reason          TEXT NULL,
        actor           TEXT NOT NULL,
        started_at      INTEGER NOT NULL,
        finished_at     INTEGER NULL,
        log_path        TEXT NOT NULL
    );
    CREATE INDEX deploys_app ON deploys(app_id, id);
    CREATE INDEX deploys_status ON deploys(status);
    CREATE TABLE instances (
        id              INTEGER PRIMARY KEY,
        app_id          INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release_version INTEGER NOT NULL,
        proc_type       TEXT NOT NULL,
        idx             INTEGER NOT NULL,
        port            INTEGER NULL,
        pid             INTEGER NULL,
        pid_start       INTEGER NULL,
        runtime_id      TEXT NOT NULL,
        state           TEXT NOT NULL,
        started_at      INTEGER NOT NULL,
        UNIQUE (app_id, release_version, proc_type, idx)
    );
    CREATE INDEX instances_runtime_id ON instances(runtime_id);
    CREATE TABLE domains (
        app_id     INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        host       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX domains_app ON domains(app_id);
    CREATE TABLE env (
        app_id INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        key    TEXT NOT NULL,
        value  TEXT NOT NULL,
        PRIMARY KEY (app_id, key)
    );
    CREATE TABLE tokens (
        id           INTEGER PRIMARY KEY,
        name         TEXT NOT NULL,
        hash         TEXT NOT NULL UNIQUE,
        scope        TEXT NOT NULL,
        apps         TEXT NOT NULL DEFAULT '[]',
        created_at   INTEGER NOT NULL,
        revoked_at   INTEGER NULL,
        last_used_at INTEGER NULL
    );
    CREATE TABLE audit (
        id     INTEGER PRIMARY KEY,
        at     INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
    // 2: each release keeps the config it runs with (env values and formation, as JSON), so a
    // rollback restores them and a restart after a crash uses what was live.
    r#"
    ALTER TABLE releases ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
    "#,
    // 3: CI/CD. Each deploy records what triggered it, the commit it builds and the status of
    // each step; apps keep their git settings (deploy branch, connected repository, previews);
    // webhook delivery ids (a repeated delivery runs nothing) and notification targets.
    r#"
    ALTER TABLE deploys ADD COLUMN trigger TEXT NOT NULL DEFAULT 'api';
    ALTER TABLE deploys ADD COLUMN sha TEXT NULL;
    ALTER TABLE deploys ADD COLUMN branch TEXT NULL;
    ALTER TABLE deploys ADD COLUMN author TEXT NULL;
    ALTER TABLE deploys ADD COLUMN message TEXT NULL;
    ALTER TABLE deploys ADD COLUMN steps TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE apps ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
    CREATE TABLE hook_deliveries (
        provider TEXT NOT NULL,
        delivery TEXT NOT NULL,
        at       INTEGER NOT NULL,
        PRIMARY KEY (provider, delivery)
    );
    CREATE TABLE notify_targets (
        id         INTEGER PRIMARY KEY,
        app_id     INTEGER NULL REFERENCES apps(id) ON DELETE CASCADE,
        url        TEXT NOT NULL,
        secret     TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    "#,
    // 4: deploy (build) ids are never reused, not even after the app with the newest ones is
    // destroyed (`builds:logs 17` and notification receivers name a build by its id): the
    // table is rebuilt with AUTOINCREMENT, which SQLite only allows at creation.
    r#"
    CREATE TABLE deploys_v4 (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id          INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release_version INTEGER NULL,
        kind            TEXT NOT NULL,
        status          TEXT NOT NULL,
        step            TEXT NOT NULL,
        reason          TEXT NULL,
        actor           TEXT NOT NULL,
        started_at      INTEGER NOT NULL,
        finished_at     INTEGER NULL,
        log_path        TEXT NOT NULL,
        trigger         TEXT NOT NULL DEFAULT 'api',
        sha             TEXT NULL,
        branch          TEXT NULL,
        author          TEXT NULL,
        message         TEXT NULL,
        steps           TEXT NOT NULL DEFAULT '[]'
    );
    INSERT INTO deploys_v4 (id, app_id, release_version, kind, status, step, reason, actor,
        started_at, finished_at, log_path, trigger, sha, branch, author, message, steps)
    SELECT id, app_id, release_version, kind, status, step, reason, actor,
        started_at, finished_at, log_path, trigger, sha, branch, author, message, steps
    FROM deploys;
    DROP TABLE deploys;
    ALTER TABLE deploys_v4 RENAME TO deploys;
    CREATE INDEX deploys_app ON deploys(app_id, id);
    CREATE INDEX deploys_status ON deploys(status);
    "#,
    // 5: server-wide settings kept across restarts (the routes set through the API).
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 6: which generation of the live release's instances serves (a restart starts a new one
    // of the same release instead of making a release).
    r#"
    ALTER TABLE apps ADD COLUMN live_generation INTEGER NOT NULL DEFAULT 0;
    "#,
    // 7: an instance is its runtime id: two generations of one release (a restart) hold the
    // same (release, type, index) slot at once while the new one starts.
    r#"
    CREATE TABLE instances_v7 (
        id              INTEGER PRIMARY KEY,
        app_id          INTEGER NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
        release_version INTEGER NOT NULL,
        proc_type       TEXT NOT NULL,
        idx             INTEGER NOT NULL,
        port            INTEGER NULL,
        pid             INTEGER NULL,
        pid_start       INTEGER NULL,
        runtime_id      TEXT NOT NULL UNIQUE,
        state           TEXT NOT NULL,
        started_at      INTEGER NOT NULL
    );
    INSERT INTO instances_v7 (id, app_id, release_version, proc_type, idx, port, pid,
        pid_start, runtime_id, state, started_at)
    SELECT id, app_id, release_version, proc_type, idx, port, pid, pid_start, runtime_id,
        state, started_at
    FROM instances;
    DROP TABLE instances;
    ALTER TABLE instances_v7 RENAME TO instances;
    CREATE INDEX instances_slot ON instances(app_id, release_version, proc_type, idx);
    "#,
];

/// The schema version this binary migrates to (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Current wall-clock time as unix milliseconds, the unit of every timestamp
/// in the store. A clock before 1970 yields 0 rather than an error: a wrong
/// timestamp is better than failing a deploy.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Handle to the state database. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if missing) the database at `path` and brings its
    /// schema up to date.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // Another berth process (e.g. a CLI command) may hold the write lock
        // briefly; wait for it rather than failing.
        conn.busy_timeout(Duration::from_millis(5000))?;
        // WAL: readers don't block the writer and a crash mid-write leaves
        // the last committed state intact. (In-memory databases answer
        // "memory"; that's fine.)
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        tracing::debug!(journal_mode = %mode, "opened store");
        // NORMAL in WAL mode survives a process crash; only an OS crash can
        // lose the most recent commits, which is an acceptable trade for speed.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    /// Locks the connection. A panic in another thread while holding the lock
    /// can't leave a half-applied change behind (an unfinished transaction is
    /// rolled back when dropped), so a poisoned lock is safe to reuse.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` inside one write transaction and commits it. `IMMEDIATE` takes
    /// the write lock up front, so a read-then-write inside `f` can't fail
    /// with a busy snapshot if another process wrote in between.
    fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Records an audit entry on its own. Changes made by the store's own
    /// methods audit inside their transaction instead, so the entry and the
    /// change are committed together.
    pub fn audit(&self, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
        let conn = self.conn();
        audit(&conn, actor, action, target, detail)
    }

    /// The most recent `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let conn = self.conn();
        query_all(
            &conn,
            "SELECT id, at, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            [sql_limit(limit)],
            |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: r.get(5)?,
                })
            },
        )
    }
}

/// Applies pending migrations, one transaction each, so a crash mid-upgrade
/// leaves the database at a consistent earlier version that the next start
/// picks up from.
fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read inside the transaction: another process may have migrated
        // while we waited for the lock.
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > known {
            return Err(StoreError::TooNew {
                found: version,
                known,
            });
        }
        let Some(sql) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(());
        };
        tracing::info!(from = version, to = version + 1, "migrating store schema");
        tx.execute_batch(sql)?;
        // user_version lives in the database header and is transactional.
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
}

/// Inserts an audit row using whatever connection/transaction the caller has.
fn audit(conn: &Connection, actor: &str, action: &str, target: &str, detail: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO audit (at, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        (now_ms(), actor, action, target, detail),
    )?;
    Ok(())
}

/// Looks up an app's row id; every app-scoped method starts here so a missing
/// app gives the same `NotFound` message everywhere.
fn app_id(conn: &Connection, name: &str) -> Result<i64> {
    conn.query_row("SELECT id FROM apps WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::NotFound(format!("app {name} not found")))
}

/// Runs a query and converts every row with `f`. `f` returns our own error
/// type so parse failures surface as `Corrupt` rather than a SQLite error.
fn query_all<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(f(row)?);
    }
    Ok(out)
}

/// Like [`query_all`] for at most one row.
fn query_opt<T, P: Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Option<T>> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query(params)?;
    match rows.next()? {
        Some(row) => Ok(Some(f(row)?)),
        None => Ok(None),
    }
}

/// SQLite's LIMIT takes an i64; anything bigger means "no limit" anyway.
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Paths are stored as TEXT. A non-UTF-8 path would not round-trip, so it is
/// rejected instead of being stored lossily.
fn path_str(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("path is not valid UTF-8: {}", path.display()),
        ))
    })
}

/// Reads an optional integer column into a narrower unsigned type, reporting
/// out-of-range values as corruption.
fn opt_uint<T: TryFrom<i64>>(row: &Row<'_>, idx: usize, what: &str) -> Result<Option<T>> {
    match row.get::<_, Option<i64>>(idx)? {
        None => Ok(None),
        Some(v) => T::try_from(v)
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("{what} out of range: {v}"))),
    }
}

/// Converts an unsigned value for storage in an INTEGER column.
fn to_i64<T: TryInto<i64> + Copy + std::fmt::Display>(v: T, what: &str) -> Result<i64> {
    v.try_into().map_err(|_| {
        StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} too large to store: {v}"),
        ))
    })
}
