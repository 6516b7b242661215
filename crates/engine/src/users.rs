//! System users berth makes for code it runs: build users (`sandbox.rs`) and app users
//! (`jail.rs`). Through `useradd`/`userdel` (the distribution's own tools keep /etc/passwd,
//! /etc/shadow and /etc/group consistent and locked), retried: another berth may hold the
//! lock on /etc/passwd. Blocking: call from `spawn_blocking`.

use std::time::Duration;

/// A user of /etc/passwd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub uid: u32,
    pub gid: u32,
    /// The comment (GECOS) field: berth writes what the user is for.
    pub comment: String,
}

/// The uid and gid of `name`, created as a system user (own group, no home, no login shell)
/// with `comment` when missing. An existing user must carry the same comment: a user berth
/// did not make for this purpose is never taken over.
pub(crate) fn ensure(name: &str, comment: &str) -> Result<(u32, u32), String> {
    let mut last = String::new();
    for attempt in 0..20 {
        if let Some(e) = entry(name) {
            if e.comment != comment {
                return Err(format!(
                    "the system user {name} exists and is not berth's ({:?}, expected {comment:?}); \
                     remove it (userdel {name}) or use another data dir",
                    e.comment
                ));
            }
            return Ok((e.uid, e.gid));
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = std::process::Command::new("useradd")
            .args([
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                comment,
                name,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd to create the user {name}: {e}"))?;
        if out.status.success() {
            tracing::info!(user = name, comment, "created system user");
        } else {
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
    }
    match entry(name) {
        Some(e) => Ok((e.uid, e.gid)),
        None => Err(format!("could not create the system user {name}: {last}")),
    }
}

/// Removes `name` (and its group); true when it is gone.
pub(crate) fn remove(name: &str) -> bool {
    for attempt in 0..20 {
        if entry(name).is_none() {
            return true;
        }
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::process::Command::new("userdel").arg(name).output();
    }
    entry(name).is_none()
}

/// `name`'s uid and gid from /etc/passwd.
pub(crate) fn lookup(name: &str) -> Option<(u32, u32)> {
    entry(name).map(|e| (e.uid, e.gid))
}

/// `name`'s line of /etc/passwd.
pub(crate) fn entry(name: &str) -> Option<Entry> {
    all()
        .into_iter()
        .find_map(|(n, e)| (n == name).then_some(e))
}

/// Every user of /etc/passwd, by name.
pub(crate) fn all() -> Vec<(String, Entry)> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_string();
            let (_pw, uid, gid, comment) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((
                name,
                Entry {
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                    comment: comment.to_string(),
                },
            ))
        })
        .collect()
}

/// 8 hex digits of SHA-256 of `path` (the canonical data dir, in user names, cgroup-free tags
/// and the firewall's table name).
pub(crate) fn data_tag(path: &std::path::Path) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
    hash.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A system user berth made, as it was when berth looked it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: std::sync::Arc<str>,
    pub uid: u32,
    pub gid: u32,
}

/// SIGKILL every process of `user`: `kill -KILL -1` run *as that user*, which the kernel
/// delivers to all of its processes in one pass (a process forking in a loop cannot slip
/// through), repeated until /proc shows none. Blocking.
///
/// Only while the name still has that uid: `userdel` frees a uid and the next `useradd`
/// (another berth's, say) takes it at once (system uids are handed out highest free first),
/// so a uid remembered from before must never be killed blindly. (`userdel` refuses a user
/// with processes, so a user that is gone has nothing left to kill.)
pub(crate) fn kill_all(user: &Account) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let (uid, gid) = (user.uid, user.gid);
    for _ in 0..100 {
        if lookup(&user.name) != Some((uid, gid)) || !runs_as(uid) {
            return Ok(());
        }
        // procps' kill takes `-KILL -- -1`; with `-s KILL -- -1` it only prints its usage.
        let _ = std::process::Command::new("/bin/kill")
            .args(["-KILL", "--", "-1"])
            .uid(uid)
            .gid(gid)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(format!("processes of user {uid} survive SIGKILL"))
}

/// Does any live process (zombies are dead: only their exit status is left) run as `uid`
/// (real, effective, saved or filesystem uid)?
pub(crate) fn runs_as(uid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        let numeric = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
        numeric
            && std::fs::read_to_string(entry.path().join("status")).is_ok_and(|status| {
                let dead = status
                    .lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .is_some_and(|st| matches!(st.trim_start().chars().next(), Some('Z' | 'X')));
                !dead
                    && status
                        .lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .is_some_and(|ids| {
                            ids.split_whitespace()
                                .any(|id| id.parse::<u32>().ok() == Some(uid))
                        })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A uid remembered for a user that was removed since, and handed to a new user (useradd
    /// reuses the highest free system uid at once): killing "the old user's processes" must
    /// leave the new user's alone.
    #[test]
    fn a_removed_users_uid_taken_by_another_user_is_not_killed() {
        if !rustix::process::getuid().is_root() {
            eprintln!("skipped: needs root to create users");
            return;
        }
        let tag = format!("{:x}", std::process::id());
        let (old, new) = (format!("berth-t-old-{tag}"), format!("berth-t-new-{tag}"));
        let (uid, gid) = ensure(&old, "berth test").unwrap();
        let stale = Account {
            name: old.as_str().into(),
            uid,
            gid,
        };
        assert!(remove(&old));
        let taken = ensure(&new, "berth test").unwrap();
        let mut child = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("30")
                .uid(taken.0)
                .gid(taken.1)
                .spawn()
                .unwrap()
        };
        let killed = kill_all(&stale);
        let alive = child.try_wait().unwrap().is_none();
        // The user's own processes are killed, by its current name.
        let own = kill_all(&Account {
            name: new.as_str().into(),
            uid: taken.0,
            gid: taken.1,
        });
        let status = child.wait().unwrap();
        remove(&new);
        killed.unwrap();
        own.unwrap();
        if taken.0 == uid {
            assert!(alive, "the new owner of uid {uid} was killed");
        }
        assert!(!status.success(), "{status}");
    }
}
