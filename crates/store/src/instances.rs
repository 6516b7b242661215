//! Instances: the processes the engine started, so that after a restart it
//! can find (and adopt or clean up) what was running.

use rusqlite::Row;

use crate::{
    app_id, now_ms, opt_uint, query_all, query_opt, to_i64, Instance, NewInstance, Result, Store,
    StoreError,
};

const INSTANCE_SELECT: &str = "SELECT i.id, a.name, i.release_version, i.proc_type, i.idx, \
     i.port, i.pid, i.pid_start, i.runtime_id, i.state, i.started_at \
     FROM instances i JOIN apps a ON a.id = i.app_id";

fn instance_from_row(r: &Row<'_>) -> Result<Instance> {
    let index: i64 = r.get(4)?;
    Ok(Instance {
        id: r.get(0)?,
        app: r.get(1)?,
        release_version: r.get(2)?,
        proc_type: r.get(3)?,
        index: u32::try_from(index)
            .map_err(|_| StoreError::Corrupt(format!("instance index out of range: {index}")))?,
        port: opt_uint(r, 5, "port")?,
        pid: opt_uint(r, 6, "pid")?,
        pid_start: opt_uint(r, 7, "pid_start")?,
        runtime_id: r.get(8)?,
        state: r.get(9)?,
        started_at: r.get(10)?,
    })
}

impl Store {
    /// Inserts or updates the instance with this runtime id (a restart's new generation of a
    /// slot is an instance of its own, beside the one it replaces until that one is retired).
    pub fn upsert_instance(&self, inst: &NewInstance) -> Result<Instance> {
        let pid_start = inst.pid_start.map(|v| to_i64(v, "pid_start")).transpose()?;
        self.write(|tx| {
            let app_id = app_id(tx, &inst.app)?;
            tx.execute(
                "INSERT INTO instances (app_id, release_version, proc_type, idx, port, pid, \
                     pid_start, runtime_id, state, started_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (runtime_id) DO UPDATE SET \
                     port = excluded.port, pid = excluded.pid, pid_start = excluded.pid_start, \
                     state = excluded.state",
                (
                    app_id,
                    inst.release_version,
                    inst.proc_type.as_str(),
                    inst.index,
                    inst.port,
                    inst.pid,
                    pid_start,
                    inst.runtime_id.as_str(),
                    inst.state.as_str(),
                    now_ms(),
                ),
            )?;
            query_opt(
                tx,
                &format!("{INSTANCE_SELECT} WHERE i.runtime_id = ?1"),
                [inst.runtime_id.as_str()],
                instance_from_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("instance {} not found", inst.runtime_id)))
        })
    }

    /// Updates an instance's state and process identity, found by runtime id.
    pub fn set_instance_state(
        &self,
        runtime_id: &str,
        state: &str,
        pid: Option<u32>,
        pid_start: Option<u64>,
    ) -> Result<()> {
        let pid_start = pid_start.map(|v| to_i64(v, "pid_start")).transpose()?;
        let n = self.conn().execute(
            "UPDATE instances SET state = ?1, pid = ?2, pid_start = ?3 WHERE runtime_id = ?4",
            (state, pid, pid_start, runtime_id),
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!(
                "instance {runtime_id} not found"
            )));
        }
        Ok(())
    }

    /// The app's instances, ordered by release, process type and index.
    pub fn instances(&self, app: &str) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let id = app_id(&conn, app)?;
        query_all(
            &conn,
            &format!(
                "{INSTANCE_SELECT} WHERE i.app_id = ?1 \
                 ORDER BY i.release_version, i.proc_type, i.idx"
            ),
            [id],
            instance_from_row,
        )
    }

    /// Every instance of every app (used when reconciling after a restart).
    pub fn all_instances(&self) -> Result<Vec<Instance>> {
        query_all(
            &self.conn(),
            &format!("{INSTANCE_SELECT} ORDER BY a.name, i.release_version, i.proc_type, i.idx"),
            [],
            instance_from_row,
        )
    }

    /// Forgets an instance. Deleting one that is already gone is not an
    /// error, so cleanup can be retried after a crash.
    pub fn delete_instance(&self, runtime_id: &str) -> Result<()> {
        self.conn()
            .execute("DELETE FROM instances WHERE runtime_id = ?1", [runtime_id])?;
        Ok(())
    }

    /// Forgets all instances of one release (after it has been drained).
    pub fn delete_release_instances(&self, app: &str, version: i64) -> Result<()> {
        self.write(|tx| {
            let id = app_id(tx, app)?;
            tx.execute(
                "DELETE FROM instances WHERE app_id = ?1 AND release_version = ?2",
                (id, version),
            )?;
            Ok(())
        })
    }
}
