//! API tokens. Only the SHA-256 of a token is stored: a leaked database (or
//! backup) must not hand out working credentials. Tokens are 256 random bits,
//! so a plain unsalted hash is enough; there is nothing to brute-force.

use std::fmt::Write as _;

use rusqlite::Row;
use sha2::{Digest, Sha256};

use crate::{audit, now_ms, query_all, query_opt, Result, Scope, Store, StoreError, Token};

/// Prefix of every token, so leaked tokens are easy to recognise (and to
/// grep for in secret scanners).
const TOKEN_PREFIX: &str = "berth_";

/// `last_used_at` is informational; updating it at most once a minute keeps
/// every authenticated request from being a disk write.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

const TOKEN_COLS: &str = "id, name, scope, apps, created_at, revoked_at";

fn token_from_row(r: &Row<'_>) -> Result<Token> {
    let id: i64 = r.get(0)?;
    let scope: String = r.get(2)?;
    let apps: String = r.get(3)?;
    let apps = serde_json::from_str(&apps)
        .map_err(|e| StoreError::Corrupt(format!("apps of token {id}: {e}")))?;
    Ok(Token {
        id,
        name: r.get(1)?,
        scope: scope.parse()?,
        apps,
        created_at: r.get(4)?,
        revoked_at: r.get(5)?,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

impl Store {
    /// Creates a token and returns it with its plaintext, which is shown to
    /// the user once and never stored.
    pub fn create_token(
        &self,
        name: &str,
        scope: Scope,
        apps: &[String],
        actor: &str,
    ) -> Result<(Token, String)> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| {
            StoreError::Io(std::io::Error::other(format!(
                "no randomness for token: {e}"
            )))
        })?;
        let secret = format!("{TOKEN_PREFIX}{}", hex(&raw));
        let apps_json = serde_json::to_string(apps)
            .map_err(|e| StoreError::Corrupt(format!("token apps: {e}")))?;
        let detail = match scope {
            Scope::Admin => format!("scope={scope}"),
            Scope::Deploy => format!("scope={scope} apps={}", apps.join(",")),
        };
        let token = self.write(|tx| {
            tx.execute(
                "INSERT INTO tokens (name, hash, scope, apps, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                (
                    name,
                    hash_secret(&secret),
                    scope.as_str(),
                    apps_json.as_str(),
                    now_ms(),
                ),
            )?;
            let id = tx.last_insert_rowid();
            audit(tx, actor, "token.create", name, &detail)?;
            query_opt(
                tx,
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
                [id],
                token_from_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("token {id} not found")))
        })?;
        Ok((token, secret))
    }

    /// The live (not revoked) token whose secret this is, if any.
    pub fn token_by_secret(&self, secret: &str) -> Result<Option<Token>> {
        let conn = self.conn();
        let hash = hash_secret(secret);
        let token = query_opt(
            &conn,
            &format!("SELECT {TOKEN_COLS} FROM tokens WHERE hash = ?1 AND revoked_at IS NULL"),
            [&hash],
            token_from_row,
        )?;
        if let Some(t) = &token {
            let now = now_ms();
            // Informational, and on the path of every call, read-only ones too: a write that
            // fails (a full disk) must not refuse the call.
            let _ = conn.execute(
                "UPDATE tokens SET last_used_at = ?1 \
                 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?3)",
                (now, t.id, now - LAST_USED_GRANULARITY_MS),
            );
        }
        Ok(token)
    }

    /// All tokens, including revoked ones, oldest first. Never includes hashes.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        query_all(
            &self.conn(),
            &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY id"),
            [],
            token_from_row,
        )
    }

    /// Revokes a token. Revoking an already revoked token keeps the original
    /// revocation time and succeeds.
    pub fn revoke_token(&self, id: i64, actor: &str) -> Result<()> {
        self.write(|tx| {
            let name: String = query_opt(tx, "SELECT name FROM tokens WHERE id = ?1", [id], |r| {
                Ok(r.get(0)?)
            })?
            .ok_or_else(|| StoreError::NotFound(format!("token {id} not found")))?;
            tx.execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
                (now_ms(), id),
            )?;
            audit(tx, actor, "token.revoke", &name, &format!("id={id}"))
        })
    }

    /// Whether any token (even a revoked one) was ever created; berth uses
    /// this to decide whether first-run bootstrap is still open.
    pub fn has_tokens(&self) -> Result<bool> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))?;
        Ok(n > 0)
    }
}
