//! Where and as whom builds and tests run.
//!
//! A build slot is a permit of the global build semaphore (at most `build_concurrency` builds
//! at once, across apps) plus, when berth runs as root, an unprivileged user of its own:
//! `berth-build-<n>` for slot `n`, created with `useradd --system` when missing. Two builds
//! running at once never share a uid, so one cannot read the other's `/proc/<pid>/environ`.
//!
//! The source moves out of the data dir (mode 0700, so a build user cannot even reach it) to
//! a scratch dir next to it, `<data>.builds/<id>/src` (the scratch root is 0711: no listing;
//! each build's dir is 0700 and owned by its build user), with `HOME` at `<id>/home`. When a
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
    /// Users of free slots.
    free: Mutex<Vec<BuildUser>>,
}

/// A held build slot; dropping it frees the slot.
pub(crate) struct Slot {
    pub user: BuildUser,
    slots: Arc<Slots>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::lock(&self.slots.free).push(self.user);
    }
}

impl Slots {
    /// `n` slots; as root, each gets its build user (created when missing).
    pub(crate) fn new(n: usize) -> Result<Arc<Slots>, String> {
        let n = n.max(1);
        let root = rustix::process::getuid().is_root();
        let mut users = Vec::with_capacity(n);
        for i in (0..n).rev() {
            users.push(if root {
                Some(ensure_user(&format!("berth-build-{i}"))?)
            } else {
                None
            });
        }
        if !root {
            tracing::warn!("berth is not running as root: builds run as berth's own user");
        }
        Ok(Arc::new(Slots {
            permits: Arc::new(Semaphore::new(n)),
            free: Mutex::new(users),
        }))
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        // The semaphore is never closed, so acquiring only waits.
        let permit = loop {
            if let Ok(p) = self.permits.clone().acquire_owned().await {
                break p;
            }
        };
        let user = crate::lock(&self.free).pop().flatten();
        Slot {
            user,
            slots: self.clone(),
            _permit: permit,
        }
    }
}

/// The uid and gid of `name`, created as a system user without a home or a login shell when
/// missing.
fn ensure_user(name: &str) -> Result<(u32, u32), String> {
    if let Some(ids) = lookup(name) {
        return Ok(ids);
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
    // Another berth may have created it meanwhile: look again before failing.
    match lookup(name) {
        Some(ids) => {
            tracing::info!(user = name, "created build user");
            Ok(ids)
        }
        None => Err(format!(
            "could not create the build user {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
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
        for dir in [root.parent(), Some(root)].into_iter().flatten() {
            if dir.starts_with("/var/tmp/berth-builds") || dir == root {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                    .map_err(|e| err("chmod", e))?;
            }
        }
        let dir = root.join(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| err("clear", e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| err("create", e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| err("chmod", e))?;
        let scratch = Scratch {
            src: dir.join("src"),
            home: dir.join("home"),
            dir,
        };
        std::fs::create_dir(&scratch.home).map_err(|e| err("create home", e))?;
        move_tree(source, &scratch.src).map_err(|e| err("moving the source in", e))?;
        if let Some((uid, gid)) = user {
            chown_tree(&scratch.dir, uid, gid).map_err(|e| err("chown", e))?;
        }
        Ok(scratch)
    }

    /// The built tree goes back to `release` (owned by berth's user again); the rest of the
    /// scratch dir is removed.
    pub(crate) fn leave(self, release: &Path, user: BuildUser) -> Result<(), String> {
        let err = |what: &str, e: std::io::Error| format!("build scratch dir: {what}: {e}");
        if user.is_some() {
            let (uid, gid) = (
                rustix::process::getuid().as_raw(),
                rustix::process::getgid().as_raw(),
            );
            chown_tree(&self.src, uid, gid).map_err(|e| err("chown back", e))?;
        }
        move_tree(&self.src, release).map_err(|e| err("moving the build back", e))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }

    /// A failed or cancelled build: its files are dropped.
    pub(crate) fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
