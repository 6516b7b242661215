//! Server-wide settings (one text value per key), kept across restarts.

use crate::{audit, Result, Store};

impl Store {
    /// The value of setting `key`, if it was ever set.
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT value FROM settings WHERE key = ?1")?;
        let mut rows = stmt.query([key])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    /// Sets `key` to `value` (audited as `actor`).
    pub fn set_setting(&self, key: &str, value: &str, actor: &str) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )?;
            audit(tx, actor, "setting.set", key, "")
        })
    }
}
