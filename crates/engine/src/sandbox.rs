//! Where and as whom builds and tests run.
//!
//! A build slot is a permit of the global build semaphore (at most `build_concurrency` builds
//! at once, across apps) plus, when berth runs as root, an unprivileged user of its own:
//! `berth-build-<tag>-<n>` for slot `n` (the tag is a hash of the data dir, so two berths on
//! one machine never share one), created with `useradd --system` the first time the slot
//! builds and removed when berth stops. Two builds running at once never share a uid, so one
//! cannot read the other's `/proc/<pid>/environ`, and before and after each build every
//! process of its user is killed (what a build leaves running dies with it).
//!
//! The source moves out of the data dir (mode 0700, so a build user cannot even reach it) to
//! a scratch dir next to it, `<data>.builds/<id>/src` (the scratch root and each build's dir
//! are berth's, 0711: no listing, and the build cannot replace `src` with a symlink; `src` and
//! `home` are the build user's), with `HOME` at `<id>/home`. When a
//! directory above the data dir is closed to other users (a data dir under `/root`, say), the
//! scratch root is `/var/tmp/berth-builds/<hash of the data dir>` instead, and the source is
//! copied when it cannot be moved. After a successful build the tree is owned by berth's user
//! again and moves back into the release.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// An unprivileged (uid, gid), or none when berth is not root (builds then run as berth's
/// own user: nothing to switch to).
pub(crate) type BuildUser = Option<(u32, u32)>;

pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Indexes of the free slots.
    free: Mutex<Vec<usize>>,
    /// `berth-build-<tag>-`: the tag (from the data dir) keeps two berths on one machine from
    /// sharing build users.
    prefix: Option<String>,
    /// Build users known to exist, by slot.
    users: Mutex<std::collections::HashMap<usize, (u32, u32)>>,
}

/// A held build slot; dropping it frees the slot.
pub(crate) struct Slot {
    pub user: BuildUser,
    index: usize,
    slots: Arc<Slots>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::lock(&self.slots.free).push(self.index);
    }
}

impl Slots {
    /// `n` slots for the berth of `data`; as root, each gets its build user, created the first
    /// time the slot builds.
    pub(crate) fn new(n: usize, data: &Path) -> Arc<Slots> {
        let n = n.max(1);
        let root = rustix::process::getuid().is_root();
        if !root {
            tracing::warn!("berth is not running as root: builds run as berth's own user");
        }
        let prefix = root.then(|| {
            use sha2::Digest;
            let path = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
            let hash = sha2::Sha256::digest(path.to_string_lossy().as_bytes());
            let tag: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
            format!("berth-build-{tag}-")
        });
        // Users an earlier run left (a crash skips their removal) are known from the start, so
        // this run's stop removes them.
        let mut users = std::collections::HashMap::new();
        if let (Some(p), Ok(passwd)) = (&prefix, std::fs::read_to_string("/etc/passwd")) {
            for line in passwd.lines() {
                let Some(index) = line
                    .split(':')
                    .next()
                    .and_then(|name| name.strip_prefix(p.as_str()))
                    .and_then(|i| i.parse::<usize>().ok())
                else {
                    continue;
                };
                if let Some(ids) = lookup(&format!("{p}{index}")) {
                    users.insert(index, ids);
                }
            }
        }
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(n)),
            free: Mutex::new((0..n).rev().collect()),
            prefix,
            users: Mutex::new(users),
        })
    }

    /// Wait for a free slot; an error if its build user cannot be created.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Slot, String> {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                break p;
            }
        };
        let index = crate::lock(&self.free).pop().unwrap_or(0);
        let mut slot = Slot {
            user: None,
            index,
            slots: self.clone(),
            _permit: permit,
        };
        let Some(prefix) = &self.prefix else {
            return Ok(slot);
        };
        let known = crate::lock(&self.users).get(&index).copied();
        let ids = match known {
            Some(ids) => ids,
            None => {
                let name = format!("{prefix}{index}");
                let ids = tokio::task::spawn_blocking(move || ensure_user(&name))
                    .await
                    .map_err(|e| e.to_string())??;
                crate::lock(&self.users).insert(index, ids);
                ids
            }
        };
        slot.user = Some(ids);
        Ok(slot)
    }

    /// Remove the build users (berth stops; no build runs and no file is theirs). They are
    /// created again by the next build.
    pub(crate) fn remove_users(&self) {
        let Some(prefix) = &self.prefix else { return };
        let users: Vec<usize> = crate::lock(&self.users).drain().map(|(i, _)| i).collect();
        for i in users {
            let name = format!("{prefix}{i}");
            let out = std::process::Command::new("userdel").arg(&name).output();
            if !out.is_ok_and(|o| o.status.success()) {
                tracing::warn!(user = name, "could not remove the build user");
            }
        }
    }
}

/// The uid and gid of `name`, created as a system user without a home or a login shell when
/// missing (retried: another berth may hold the lock on /etc/passwd).
fn ensure_user(name: &str) -> Result<(u32, u32), String> {
    let mut last = String::new();
    for attempt in 0..20 {
        if let Some(ids) = lookup(name) {
            return Ok(ids);
        }
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50));
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
                name,
            ])
            .output()
            .map_err(|e| format!("cannot run useradd to create the build user {name}: {e}"))?;
        if out.status.success() {
            tracing::info!(user = name, "created build user");
        } else {
            last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        }
    }
    lookup(name).ok_or_else(|| format!("could not create the build user {name}: {last}"))
}

/// `name`'s uid and gid from /etc/passwd.
fn lookup(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let (_pw, uid, gid) = (f.next()?, f.next()?, f.next()?);
        Some((uid.parse().ok()?, gid.parse().ok()?))
    })
}

/// Where builds run for the data dir `data` (see the module docs).
pub(crate) fn scratch_root(data: &Path) -> PathBuf {
    let mut preferred = data.as_os_str().to_owned();
    preferred.push(".builds");
    let preferred = PathBuf::from(preferred);
    let parent = data
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf));
    let open = parent.is_some_and(|p| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
    });
    if open {
        return preferred;
    }
    use sha2::Digest;
    let hash = sha2::Sha256::digest(data.to_string_lossy().as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    PathBuf::from("/var/tmp/berth-builds").join(hex)
}

/// `rename`, or a copy and a removal when `from` and `to` are on different filesystems.
fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            copy_tree(from, to)?;
            std::fs::remove_dir_all(from)
        }
        r => r,
    }
}

/// Files, directories (with their modes) and symlinks (as links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// One build's scratch dir: `src` (the source, moved in) and `home`.
pub(crate) struct Scratch {
    pub dir: PathBuf,
    pub src: PathBuf,
    pub home: PathBuf,
}

impl Scratch {
    /// Move `source` into a new scratch dir under `root`, owned by `user`.
    pub(crate) fn enter(
        root: &Path,
        id: &str,
        source: &Path,
        user: BuildUser,
    ) -> Result<Scratch, String> {
        let err = |what: &str, e: std::io::Error| format!("build scratch dir: {what}: {e}");
        std::fs::create_dir_all(root).map_err(|e| err("create", e))?;
        // Every level berth made must be berth's own real directory: a local user who created
        // (or symlinked) one first would control where the builds' files go.
        for dir in root
            .ancestors()
            .take_while(|d| *d == root || d.starts_with("/var/tmp/berth-builds"))
        {
            owned_dir(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| err("chmod", e))?;
        }
        // Nothing of the slot's user may still run: it could read this build's env or race
        // the chown below.
        kill_user(user);
        let dir = root.join(id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir).map_err(|e| err("clear", e))?;
        }
        // The build's own dir stays berth's (0711), so the build cannot rename `src` away and
        // put a symlink in its place; only `src` and `home` are the build user's.
        std::fs::create_dir(&dir).map_err(|e| err("create", e))?;
        let scratch = Scratch {
            src: dir.join("src"),
            home: dir.join("home"),
            dir,
        };
        let filled = (|| {
            std::fs::set_permissions(&scratch.dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| err("chmod", e))?;
            std::fs::create_dir(&scratch.home).map_err(|e| err("create home", e))?;
            std::fs::set_permissions(&scratch.home, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err("chmod", e))?;
            move_tree(source, &scratch.src).map_err(|e| err("moving the source in", e))?;
            if let Some((uid, gid)) = user {
                // Safe top-down: no process of `uid` runs (killed above) to swap a path.
                chown_tree(&scratch.src, uid, gid).map_err(|e| err("chown", e))?;
                chown_tree(&scratch.home, uid, gid).map_err(|e| err("chown", e))?;
            }
            Ok(())
        })();
        match filled {
            Ok(()) => Ok(scratch),
            Err(e) => {
                scratch.discard(user);
                Err(e)
            }
        }
    }

    /// The built tree goes back to `release` (owned by berth's user again); the rest of the
    /// scratch dir is removed.
    pub(crate) fn leave(self, release: &Path, user: BuildUser) -> Result<(), String> {
        let err = |what: &str, e: std::io::Error| format!("build scratch dir: {what}: {e}");
        // What the build left running dies first, so nothing changes the tree from here on.
        kill_user(user);
        let back = (|| {
            let is_dir = std::fs::symlink_metadata(&self.src)
                .map_err(|e| err("the built source", e))?
                .is_dir();
            if !is_dir {
                return Err("the build replaced its source directory with something else".into());
            }
            if user.is_some() {
                let (uid, gid) = (
                    rustix::process::getuid().as_raw(),
                    rustix::process::getgid().as_raw(),
                );
                chown_tree(&self.src, uid, gid).map_err(|e| err("chown back", e))?;
            }
            move_tree(&self.src, release).map_err(|e| err("moving the build back", e))
        })();
        let _ = std::fs::remove_dir_all(&self.dir);
        back
    }

    /// A failed or cancelled build: what it left running is killed, its files are dropped.
    pub(crate) fn discard(self, user: BuildUser) {
        kill_user(user);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `dir` must be a real directory (not a symlink) owned by berth's user.
fn owned_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| format!("build scratch dir {}: {e}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.file_type().is_dir() || meta.uid() != me {
        return Err(format!(
            "refusing to build in {}: it is not a directory owned by berth's user (remove it)",
            dir.display()
        ));
    }
    Ok(())
}

/// SIGKILL every process running as the build user `user` (none: nothing to do), until none
/// is left (a process may fork while it is being killed).
fn kill_user(user: BuildUser) {
    let Some((uid, _)) = user else { return };
    for _ in 0..200 {
        let mut found = false;
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
                continue;
            };
            // `Uid:\treal\teffective\tsaved\tfs`
            let runs_as_user = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| {
                    ids.split_whitespace()
                        .any(|id| id.parse::<u32>().ok() == Some(uid))
                });
            if runs_as_user {
                found = true;
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        if !found {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    tracing::warn!(uid, "processes of a build user survive SIGKILL");
}

/// `chown -hR`: symlinks themselves, never what they point to.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_root_is_next_to_the_data_dir_unless_others_cannot_reach_it() {
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        let closed = tmp.path().join("closed");
        for (d, mode) in [(&open, 0o755), (&closed, 0o700)] {
            std::fs::create_dir_all(d.join("data")).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(scratch_root(&open.join("data")), open.join("data.builds"));
        let fallback = scratch_root(&closed.join("data"));
        assert!(
            fallback.starts_with("/var/tmp/berth-builds"),
            "{fallback:?}"
        );
        assert_ne!(fallback, scratch_root(&open.join("data")));
    }

    #[test]
    fn copy_tree_keeps_modes_and_symlinks() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("sub/run.sh"), "echo hi").unwrap();
        std::fs::set_permissions(
            from.join("sub/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        symlink("sub/run.sh", from.join("link")).unwrap();
        let to = tmp.path().join("to");
        copy_tree(&from, &to).unwrap();
        let meta = std::fs::metadata(to.join("sub/run.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o750);
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            PathBuf::from("sub/run.sh")
        );
        assert_eq!(std::fs::read_to_string(to.join("link")).unwrap(), "echo hi");
    }
}
