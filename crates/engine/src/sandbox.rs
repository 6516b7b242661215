//! Where and as whom builds and tests run.
//!
//! A build slot is a permit of the global build semaphore (at most `build_concurrency` builds
//! at once, across apps), and of its app's own: an app and its previews hold at most
//! `build_concurrency - 1` slots at once (all of them when there is one), so one tenant's
//! builds, each up to `step_max_timeout` long, never shut every other app out; plus, when berth runs as root, an unprivileged user of its own:
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
pub(crate) type BuildUser = Option<crate::users::Account>;

pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// Per app family (an app and its previews): at most `per_app` slots each.
    families: Mutex<std::collections::HashMap<String, Arc<Semaphore>>>,
    per_app: usize,
    /// Indexes of the free slots.
    free: Mutex<Vec<usize>>,
    /// `berth-build-<tag>-`: the tag (from the data dir) keeps two berths on one machine from
    /// sharing build users.
    prefix: Option<String>,
    /// Build users known to exist, by slot.
    users: Mutex<std::collections::HashMap<usize, (u32, u32)>>,
    /// The jail's network rule, which build users are under too (`firewall.rs`).
    firewall: Option<Arc<crate::firewall::Firewall>>,
}

/// A held build slot; dropping it frees the slot.
pub(crate) struct Slot {
    pub user: BuildUser,
    index: usize,
    slots: Arc<Slots>,
    _permit: OwnedSemaphorePermit,
    _family: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::lock(&self.slots.free).push(self.index);
    }
}

impl Slots {
    /// `n` slots for the berth of `data`; as root, each gets its build user, created the first
    /// time the slot builds.
    pub(crate) fn new(
        n: usize,
        data: &Path,
        firewall: Option<Arc<crate::firewall::Firewall>>,
    ) -> Arc<Slots> {
        let n = n.max(1);
        let root = rustix::process::getuid().is_root();
        if !root {
            tracing::warn!("berth is not running as root: builds run as berth's own user");
        }
        let prefix = root.then(|| {
            let path = data.canonicalize().unwrap_or_else(|_| data.to_path_buf());
            format!("berth-build-{}-", crate::users::data_tag(&path))
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
                if let Some(ids) = crate::users::lookup(&format!("{p}{index}")) {
                    users.insert(index, ids);
                }
            }
        }
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(n)),
            families: Mutex::new(std::collections::HashMap::new()),
            per_app: (n - 1).max(1),
            free: Mutex::new((0..n).rev().collect()),
            prefix,
            users: Mutex::new(users),
            firewall,
        })
    }

    /// Wait for a free slot that `family` (an app, or the app a preview is of) may take; an
    /// error if its build user cannot be created.
    pub(crate) async fn acquire(self: &Arc<Self>, family: &str) -> Result<Slot, String> {
        let own = crate::lock(&self.families)
            .entry(family.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_app)))
            .clone();
        // The semaphores are never closed, so acquiring only waits. The family's permit comes
        // first: waiting for it holds nothing another app could use.
        let family_permit = loop {
            if let Ok(p) = own.clone().acquire_owned().await {
                break p;
            }
        };
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
            _family: family_permit,
        };
        let Some(prefix) = &self.prefix else {
            return Ok(slot);
        };
        let known = crate::lock(&self.users).get(&index).copied();
        let ids = match known {
            Some(ids) => ids,
            None => {
                let name = format!("{prefix}{index}");
                let ids = tokio::task::spawn_blocking(move || crate::users::ensure(&name, ""))
                    .await
                    .map_err(|e| e.to_string())??;
                crate::lock(&self.users).insert(index, ids);
                ids
            }
        };
        if let Some(fw) = &self.firewall {
            fw.allow(ids.0, &Default::default())
                .await
                .map_err(|e| format!("the build user's network rule: {e}"))?;
            fw.allow_gid(ids.1)
                .await
                .map_err(|e| format!("the build group's network rule: {e}"))?;
        }
        slot.user = Some(crate::users::Account {
            name: format!("{prefix}{index}").into(),
            uid: ids.0,
            gid: ids.1,
        });
        Ok(slot)
    }

    /// Remove the users of the free slots (berth stops; they are created again by the next
    /// build). A slot still building keeps its user, which the next start finds (and its
    /// stop removes): the build still acts as that uid, and a uid `userdel` frees goes to the
    /// next `useradd` at once, maybe another berth's.
    pub(crate) fn remove_users(&self) {
        let Some(prefix) = &self.prefix else { return };
        let users: Vec<usize> = {
            let free = crate::lock(&self.free);
            let mut users = crate::lock(&self.users);
            let gone: Vec<usize> = users.keys().copied().filter(|i| free.contains(i)).collect();
            for i in &gone {
                users.remove(i);
            }
            gone
        };
        for i in users {
            let name = format!("{prefix}{i}");
            if !crate::users::remove(&name) {
                tracing::warn!(user = name, "could not remove the build user");
            }
        }
    }
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

/// Files, directories (with their modes) and symlinks (as links); anything else (a FIFO, a
/// socket, a device) is refused, so a copy never blocks on one.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if kind.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, meta.permissions())
    } else if kind.is_file() {
        std::fs::copy(from, to).map(|_| ())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a file, directory or symlink", from.display()),
        ))
    }
}

/// One build's scratch dir: `src` (the source, moved in), `home` and `tmp` (`TMPDIR`).
pub(crate) struct Scratch {
    pub dir: PathBuf,
    pub src: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
}

/// Create `dir` if missing (one level, never through a symlink) and require it to be berth's own
/// real directory, mode 0711.
fn own_level(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("build scratch dir {}: {e}", dir.display())),
    }
    owned_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("build scratch dir {}: {e}", dir.display()))
}

impl Scratch {
    /// Move `source` into a new scratch dir under `root`, its `src`, `home` and `tmp` owned by
    /// `user`.
    pub(crate) fn enter(
        root: &Path,
        id: &str,
        source: &Path,
        user: &BuildUser,
    ) -> Result<Scratch, String> {
        let err = |what: &str, e: std::io::Error| format!("build scratch dir: {what}: {e}");
        // Every level berth makes must be berth's own real directory: a local user who created
        // (or symlinked) one first would control where the builds' files go.
        if let Some(shared) = root
            .parent()
            .filter(|p| *p == Path::new("/var/tmp/berth-builds"))
        {
            own_level(shared)?;
        }
        own_level(root)?;
        // Nothing of the slot's user may still run: it could read this build's env or race
        // the chown below.
        kill_user(user)?;
        let dir = root.join(id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            std::fs::remove_dir_all(&dir).map_err(|e| err("clear", e))?;
        }
        // The build's own dir stays berth's (0711), so the build cannot rename `src` away and
        // put a symlink in its place; only what is inside is the build user's.
        std::fs::create_dir(&dir).map_err(|e| err("create", e))?;
        let scratch = Scratch {
            src: dir.join("src"),
            home: dir.join("home"),
            tmp: dir.join("tmp"),
            dir,
        };
        let filled = (|| {
            std::fs::set_permissions(&scratch.dir, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| err("chmod", e))?;
            for d in [&scratch.home, &scratch.tmp] {
                std::fs::create_dir(d).map_err(|e| err("create", e))?;
            }
            move_tree(source, &scratch.src).map_err(|e| err("moving the source in", e))?;
            // No other local user reads the source or what the build writes.
            for d in [&scratch.src, &scratch.home, &scratch.tmp] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| err("chmod", e))?;
                if let Some(u) = user {
                    chown_tree(d, (u.uid, u.gid), None).map_err(|e| err("chown", e))?;
                }
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
    /// scratch dir is removed. Refused when the build replaced `src`, or left in it a file it
    /// does not own (a hard link to someone else's file).
    pub(crate) fn leave(self, release: &Path, user: &BuildUser) -> Result<(), String> {
        let err = |what: &str, e: std::io::Error| format!("build scratch dir: {what}: {e}");
        // What the build left running dies first, so nothing changes the tree from here on.
        let back = kill_user(user).and_then(|()| {
            let is_dir = std::fs::symlink_metadata(&self.src)
                .map_err(|e| err("the built source", e))?
                .is_dir();
            if !is_dir {
                return Err("the build replaced its source directory with something else".into());
            }
            if let Some(u) = user {
                let me = (
                    rustix::process::getuid().as_raw(),
                    rustix::process::getgid().as_raw(),
                );
                chown_tree(&self.src, me, Some(u.uid)).map_err(|e| err("chown back", e))?;
            }
            move_tree(&self.src, release).map_err(|e| err("moving the build back", e))
        });
        self.discard(user);
        back
    }

    /// A failed or cancelled build: what it left running is killed, its files are dropped
    /// (also what it left in the shared temp dirs).
    pub(crate) fn discard(self, user: &BuildUser) {
        if let Err(e) = kill_user(user) {
            tracing::error!(error = %e, "a build's processes survive it");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(u) = user {
            remove_owned_temp_files(u.uid);
        }
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

/// SIGKILL every process of the build user `user` (none: nothing to do; see
/// `users::kill_all`).
fn kill_user(user: &BuildUser) -> Result<(), String> {
    match user {
        Some(u) => crate::users::kill_all(u),
        None => Ok(()),
    }
}

/// What a build user left in the machine's shared temp dirs (top level: its own files and
/// dirs there), so the slot's next build, maybe another app's, does not find it.
fn remove_owned_temp_files(uid: u32) {
    use std::os::unix::fs::MetadataExt;
    for dir in ["/tmp", "/var/tmp", "/dev/shm"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != uid {
                continue;
            }
            let _ = if meta.file_type().is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// `chown -hR` by file descriptor: each directory is opened `O_NOFOLLOW` and its entries are
/// changed relative to it (`fchownat(AT_SYMLINK_NOFOLLOW)`), so a path swapped for a symlink
/// midway is never followed. With `only_from`, every entry must be owned by that uid (an entry
/// owned by someone else is a hard link to their file, or a mistake): an error.
fn chown_tree(root: &Path, to: (u32, u32), only_from: Option<u32>) -> std::io::Result<()> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
    let (uid, gid) = (
        Some(rustix::fs::Uid::from_raw(to.0)),
        Some(rustix::fs::Gid::from_raw(to.1)),
    );
    let check = |st: &rustix::fs::Stat, name: &dyn std::fmt::Debug| match only_from {
        Some(owner) if st.st_uid != owner => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{name:?} is not the build's own file"),
        )),
        _ => Ok(()),
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    fn walk(
        dir: &std::os::fd::OwnedFd,
        uid: Option<rustix::fs::Uid>,
        gid: Option<rustix::fs::Gid>,
        flags: OFlags,
        check: &dyn Fn(&rustix::fs::Stat, &dyn std::fmt::Debug) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(dir)? {
            let name = entry?.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                names.push(name);
            }
        }
        for name in names {
            let st = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)?;
            check(&st, &name)?;
            rustix::fs::chownat(dir, name.as_c_str(), uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                let sub = rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty())?;
                walk(&sub, uid, gid, flags, check)?;
            }
        }
        Ok(())
    }
    let st = rustix::fs::statat(CWD, root, AtFlags::SYMLINK_NOFOLLOW)?;
    check(&st, &root)?;
    rustix::fs::chownat(CWD, root, uid, gid, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        let fd = rustix::fs::openat(CWD, root, dir_flags, Mode::empty())?;
        walk(&fd, uid, gid, dir_flags, &check)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots without build users (as when berth is not root).
    fn unprivileged(n: usize) -> Arc<Slots> {
        Arc::new(Slots {
            permits: Arc::new(Semaphore::new(n)),
            families: Mutex::new(std::collections::HashMap::new()),
            per_app: (n - 1).max(1),
            free: Mutex::new((0..n).rev().collect()),
            prefix: None,
            users: Mutex::new(std::collections::HashMap::new()),
            firewall: None,
        })
    }

    #[tokio::test]
    async fn one_app_never_holds_every_slot() {
        let slots = unprivileged(3);
        let a1 = slots.acquire("a").await.unwrap();
        let _a2 = slots.acquire("a").await.unwrap();
        // A third build of `a` waits although a slot is free; another app takes that slot.
        let mut a3 = Box::pin(slots.acquire("a"));
        tokio::select! {
            biased;
            _ = &mut a3 => panic!("app a holds every slot"),
            () = std::future::ready(()) => {}
        }
        let _b = slots.acquire("b").await.unwrap();
        drop(a1);
        let _a3 = a3.await.unwrap();

        // With one slot, an app may take it.
        let one = unprivileged(1);
        let _only = one.acquire("a").await.unwrap();
    }

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
    fn chown_tree_never_follows_symlinks_and_refuses_foreign_files() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::getuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/f"), "f").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("sub/link")).unwrap();
        std::os::unix::fs::symlink(tmp.path(), tree.join("dirlink")).unwrap();
        chown_tree(&tree, (65534, 65534), None).unwrap();
        assert_eq!(std::fs::metadata(tree.join("sub/f")).unwrap().uid(), 65534);
        assert_eq!(
            std::fs::symlink_metadata(tree.join("sub/link"))
                .unwrap()
                .uid(),
            65534
        );
        assert_eq!(
            std::fs::metadata(&outside).unwrap().uid(),
            0,
            "followed a symlink"
        );
        assert_eq!(
            std::fs::metadata(tmp.path()).unwrap().uid(),
            0,
            "followed a symlink"
        );
        // Back to root, only from the build user: a file of someone else (a hard link) is refused.
        std::fs::hard_link(&outside, tree.join("sub/hard")).unwrap();
        let err = chown_tree(&tree, (0, 0), Some(65534)).unwrap_err();
        assert!(
            err.to_string().contains("not the build's own file"),
            "{err}"
        );
    }

    #[test]
    fn copy_tree_refuses_a_fifo() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("from");
        std::fs::create_dir(&from).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            from.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(copy_tree(&from, &tmp.path().join("to")).is_err());
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
