//! The app jail: what a process does, as root, to shut itself in before it runs app code.
//!
//! berth runs every app process (and `release:`, postdeploy) as `berth jail <args> -- <cmd>`
//! (see [`Jail::to_args`]). That helper process starts as root, single-threaded, and before it
//! `exec`s the command it:
//!
//! 1. starts a session of its own (no controlling terminal to type into);
//! 2. takes a mount namespace and an IPC namespace of its own (`unshare`);
//! 3. remounts every mount it sees read-only and `nosuid` (the host file system read-only);
//! 4. mounts private, empty, writable tmpfs on `/tmp`, `/var/tmp` (512 MiB each) and `/dev/shm`
//!    (64 MiB);
//! 5. hides what the app must not see (berth's data dir, other apps' files, `/root`, `/home`,
//!    the Docker socket, …): a directory becomes an empty read-only tmpfs, a file `/dev/null`;
//!    "invisible", not merely unreadable;
//! 6. binds back, at their own paths, the directories the app may see: its release
//!    (read-only) and its storage dir (writable), opened before anything was hidden;
//! 7. mounts a fresh `/proc` with `hidepid=invisible`: the app sees only its own user's
//!    processes, so neither other apps' nor berth's, nor their `environ`;
//! 8. drops to the app's own user: no supplementary groups, an empty capability bounding
//!    set, `no_new_privs` (no setuid binary or file capability gives anything back), and
//!    `RLIMIT_NPROC` when given: the app's process budget, shared by all its processes;
//! 9. restricts itself with Landlock: TCP `bind` only to its given ports (an instance: its own
//!    `PORT`), and, where the kernel can, no abstract unix sockets or signals out of the jail
//!    (`restrict.rs`);
//! 10. installs a seccomp filter in the spirit of Docker's default profile ([`DENIED`]).
//!
//! Any step that fails ends the helper with exit code 125 and one line on stderr naming the
//! step: a process never runs with less of the jail than it was given. The network rule (an
//! app cannot connect to another app's ports or berth's admin listener) is not here: it is a
//! firewall rule keyed by the app's uid, kept by the engine.
//!
//! Every syscall goes through `nix`, `caps` and `seccompiler`: no `unsafe` here.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

mod net;
mod restrict;
mod seccomp;
pub use seccomp::DENIED;

/// Exit code of a jail that could not be built (the same as the cgroup prelude's: "could not
/// confine", as `docker run` uses it).
pub const EXIT_CANNOT_JAIL: i32 = 125;

/// Paths every jail hides, whatever the caller adds: other users' homes, root's, and the
/// Docker daemon (its socket is root on the host; its data holds every image's files).
pub const ALWAYS_HIDDEN: [&str; 6] = [
    "/root",
    "/home",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/var/lib/docker",
    "/etc/berth",
];

/// Directories that get a private, empty, writable tmpfs, and its size: tmpfs is memory, so
/// each is bounded (`/dev/shm` as Docker's default).
const PRIVATE_TMP: [(&str, &str); 3] = [
    ("/tmp", "mode=1777,size=512m"),
    ("/var/tmp", "mode=1777,size=512m"),
    ("/dev/shm", "mode=1777,size=64m"),
];

/// One jail: as whom the command runs and what it sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jail {
    pub uid: u32,
    pub gid: u32,
    /// Made invisible (on top of [`ALWAYS_HIDDEN`]): a directory becomes an empty read-only
    /// tmpfs, anything else `/dev/null`. Paths that do not exist are skipped.
    pub hide: Vec<PathBuf>,
    /// Directories visible again at their own paths, read-only, even inside a hidden one.
    pub read_only: Vec<PathBuf>,
    /// Directories visible again at their own paths, writable.
    pub writable: Vec<PathBuf>,
    /// TCP ports it may `bind` (inclusive ranges; port 0 always).
    pub bind: Vec<(u16, u16)>,
    /// `RLIMIT_NPROC`: how many processes and threads the app's *user* may have at once,
    /// counted by the kernel across every instance, step and job of the app (one user per
    /// app), so that many instances of one app cannot use up the host's pids between them.
    /// A fork over it fails with `EAGAIN`; so does the `exec` of a new process of the app
    /// while it is over.
    pub nproc: Option<u64>,
    /// A network namespace of its own, with the outside reached through slirp4netns (`net.rs`;
    /// builds): its servers are on its own loopback, which no other tenant shares.
    pub private_net: bool,
}

/// What the kernel enforced beyond the hard requirements (`berth jail --report` prints it).
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// The kernel's Landlock ABI.
    pub landlock_abi: i32,
    /// Abstract unix sockets and signals are scoped to the jail (Landlock ABI 6).
    pub scopes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{step}: {source}")]
    Sys { step: String, source: nix::Error },
    #[error("{0}")]
    Other(String),
}

fn sys(step: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let step = step.into();
    move |source| JailError::Sys { step, source }
}

impl Jail {
    /// A jail for `(uid, gid)` that hides nothing beyond [`ALWAYS_HIDDEN`] yet.
    pub fn new(uid: u32, gid: u32) -> Jail {
        Jail {
            uid,
            gid,
            hide: Vec::new(),
            read_only: Vec::new(),
            writable: Vec::new(),
            bind: Vec::new(),
            nproc: None,
            private_net: false,
        }
    }

    /// The arguments of `berth jail` for this jail, ending with `--` (the command follows).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--uid".into(),
            self.uid.to_string().into(),
            "--gid".into(),
            self.gid.to_string().into(),
        ];
        for (flag, paths) in [
            ("--hide", &self.hide),
            ("--ro", &self.read_only),
            ("--rw", &self.writable),
        ] {
            for p in paths {
                args.push(flag.into());
                args.push(p.clone().into_os_string());
            }
        }
        for (a, b) in &self.bind {
            args.push("--bind".into());
            args.push(
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
                .into(),
            );
        }
        if let Some(n) = self.nproc {
            args.push("--nproc".into());
            args.push(n.to_string().into());
        }
        if self.private_net {
            args.push("--private-net".into());
        }
        args.push("--".into());
        args
    }

    /// Reads what [`Jail::to_args`] wrote; returns the jail and the command after `--`.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
    ) -> Result<(Jail, Vec<OsString>), JailError> {
        let bad = |m: String| JailError::Other(format!("bad arguments: {m}"));
        let mut it = args.into_iter();
        let (mut uid, mut gid) = (None, None);
        let mut jail = Jail::new(0, 0);
        loop {
            let Some(flag) = it.next() else {
                return Err(bad("no `--` before the command".into()));
            };
            if flag == "--" {
                break;
            }
            if flag == "--private-net" {
                jail.private_net = true;
                continue;
            }
            let value = it
                .next()
                .ok_or_else(|| bad(format!("{} needs a value", flag.to_string_lossy())))?;
            let id = |v: &OsStr| -> Result<u32, JailError> {
                v.to_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad(format!("not an id: {}", v.to_string_lossy())))
            };
            match flag.to_str() {
                Some("--uid") => uid = Some(id(&value)?),
                Some("--gid") => gid = Some(id(&value)?),
                Some("--hide") => jail.hide.push(absolute(value)?),
                Some("--ro") => jail.read_only.push(absolute(value)?),
                Some("--rw") => jail.writable.push(absolute(value)?),
                Some("--nproc") => {
                    jail.nproc = Some(
                        value
                            .to_str()
                            .and_then(|s| s.parse().ok())
                            .filter(|n| *n > 0)
                            .ok_or_else(|| {
                                bad(format!("not a process count: {}", value.to_string_lossy()))
                            })?,
                    )
                }
                Some("--bind") => {
                    let v = value.to_str().unwrap_or_default();
                    let (a, b) = v.split_once('-').unwrap_or((v, v));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) if a <= b => jail.bind.push((a, b)),
                        _ => return Err(bad(format!("not a port or range: {v}"))),
                    }
                }
                _ => return Err(bad(format!("unknown flag {}", flag.to_string_lossy()))),
            }
        }
        jail.uid = uid.ok_or_else(|| bad("--uid is required".into()))?;
        jail.gid = gid.ok_or_else(|| bad("--gid is required".into()))?;
        if jail.uid == 0 || jail.gid == 0 {
            return Err(bad("an app never runs as root (uid or gid 0)".into()));
        }
        let cmd: Vec<OsString> = it.collect();
        if cmd.is_empty() {
            return Err(bad("no command after `--`".into()));
        }
        Ok((jail, cmd))
    }

    /// Builds the jail around the calling process (steps 1–9 of the module docs). The caller
    /// must be root and single-threaded; on success it is the app's user, in the jail, and
    /// should `exec` at once.
    pub fn enter(&self) -> Result<Report, JailError> {
        if !Uid::effective().is_root() {
            return Err(JailError::Other(
                "the jail needs root (it switches to the app's own user)".into(),
            ));
        }
        // Already a group leader (started with a process group of its own) is fine.
        let _ = nix::unistd::setsid();
        // The working directory is entered again by its path once the mounts are done: the
        // old handle points into the mounts as they were (read-only, or hidden).
        let cwd = std::env::current_dir()
            .map_err(|e| JailError::Other(format!("the working directory: {e}")))?;
        if self.private_net {
            net::enter_private(self.gid)?;
        }
        nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
            .map_err(sys("unshare (mount and IPC namespaces)"))?;
        mount_flags(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )
        .map_err(sys("make / private"))?;
        remount_all_read_only()?;
        // What is bound back is opened before anything is hidden or covered (and in this namespace: a bind
        // from a mount of another namespace is refused).
        let keep: Vec<(PathBuf, OwnedFd, bool)> = self
            .read_only
            .iter()
            .map(|p| (p, false))
            .chain(self.writable.iter().map(|p| (p, true)))
            .map(|(p, rw)| {
                let fd = nix::fcntl::open(
                    p.as_path(),
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(sys(format!("open {}", p.display())))?;
                Ok((p.clone(), fd, rw))
            })
            .collect::<Result<_, JailError>>()?;

        for (dir, options) in PRIVATE_TMP {
            if Path::new(dir).is_dir() {
                mount_flags(
                    Some("tmpfs"),
                    Path::new(dir),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(options),
                )
                .map_err(sys(format!("private tmpfs on {dir}")))?;
            }
        }
        if self.private_net {
            private_resolv_conf()?;
        }
        let hidden = self.hide_all()?;
        for (path, fd, rw) in &keep {
            bind_back(path, fd, *rw)?;
        }
        for dir in &hidden {
            remount_read_only(dir, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
                .map_err(sys(format!("read-only {}", dir.display())))?;
        }
        mount_flags(
            Some("proc"),
            Path::new("/proc"),
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("hidepid=invisible"),
        )
        .map_err(sys("mount /proc with hidepid=invisible"))?;
        drop(keep);
        nix::unistd::chdir(&cwd).map_err(sys(format!("enter {}", cwd.display())))?;
        self.drop_privileges()?;
        let enforced = restrict::install(&self.bind)?;
        seccomp::install()?;
        Ok(Report {
            landlock_abi: enforced.abi,
            scopes: enforced.scopes,
        })
    }

    /// Step 5: hides every existing path of `hide` and [`ALWAYS_HIDDEN`], outermost first;
    /// returns the directories that got a tmpfs (still writable, for the mount points of
    /// what is bound back).
    fn hide_all(&self) -> Result<Vec<PathBuf>, JailError> {
        let mut paths: Vec<PathBuf> = ALWAYS_HIDDEN
            .iter()
            .map(PathBuf::from)
            .chain(self.hide.iter().cloned())
            .collect();
        paths.sort_by_key(|p| p.components().count());
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut done: Vec<PathBuf> = Vec::new();
        for path in paths {
            if done.iter().any(|d| path.starts_with(d)) {
                continue;
            }
            // Never follow a symlink: /var/run is one, and its target is hidden by its path.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                continue;
            }
            if meta.is_dir() {
                mount_flags(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    Some("mode=0755,size=1m"),
                )
                .map_err(sys(format!("hide {}", path.display())))?;
                dirs.push(path.clone());
            } else {
                mount_flags(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None)
                    .map_err(sys(format!("hide {}", path.display())))?;
                remount_read_only(&path, MsFlags::MS_NOSUID)
                    .map_err(sys(format!("hide {}", path.display())))?;
            }
            done.push(path);
        }
        Ok(dirs)
    }

    /// Step 8.
    fn drop_privileges(&self) -> Result<(), JailError> {
        caps::clear(None, caps::CapSet::Bounding)
            .map_err(|e| JailError::Other(format!("clear the capability bounding set: {e}")))?;
        caps::clear(None, caps::CapSet::Inheritable)
            .map_err(|e| JailError::Other(format!("clear inheritable capabilities: {e}")))?;
        nix::unistd::setgroups(&[]).map_err(sys("setgroups([])"))?;
        if let Some(n) = self.nproc {
            // Soft and hard: without CAP_SYS_RESOURCE the app cannot raise it again.
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n)
                .map_err(sys(format!("setrlimit(RLIMIT_NPROC, {n})")))?;
        }
        let (uid, gid) = (Uid::from_raw(self.uid), Gid::from_raw(self.gid));
        nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("setresgid({gid})")))?;
        nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("setresuid({uid})")))?;
        nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
        // setresuid away from root clears the permitted and effective sets; check it did.
        let left = caps::read(None, caps::CapSet::Permitted)
            .map_err(|e| JailError::Other(format!("read capabilities: {e}")))?;
        let root = Uid::from_raw(0);
        if !left.is_empty() || nix::unistd::setresuid(root, root, root).is_ok() {
            return Err(JailError::Other("privileges were not dropped".into()));
        }
        Ok(())
    }
}

/// In a private network the host's resolver may be on its loopback, which the namespace does
/// not share: `/etc/resolv.conf` names slirp4netns's DNS forwarder instead, from a read-only
/// file of root's on the private `/tmp` (mounted just before).
fn private_resolv_conf() -> Result<(), JailError> {
    let file = Path::new("/tmp/.berth-resolv.conf");
    std::fs::write(file, format!("nameserver {}\n", net::DNS))
        .map_err(|e| JailError::Other(format!("write {}: {e}", file.display())))?;
    let target = Path::new("/etc/resolv.conf");
    if std::fs::metadata(target).is_err() {
        return Ok(());
    }
    nix::mount::mount(
        Some(file),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys("bind the build's resolv.conf"))?;
    remount_read_only(target, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)
        .map_err(sys("read-only resolv.conf"))
}

fn absolute(value: OsString) -> Result<PathBuf, JailError> {
    let p = PathBuf::from(value);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(JailError::Other(format!(
            "bad arguments: not an absolute path: {}",
            p.display()
        )))
    }
}

fn mount_flags(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// A per-mount read-only remount that keeps the mount's other flags (and adds `extra`).
fn remount_read_only(target: &Path, extra: MsFlags) -> nix::Result<()> {
    let kept = current_flags(target)?;
    mount_flags(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | kept | extra,
        None,
    )
}

/// The per-mount flags a bind remount must repeat, or it clears them.
fn current_flags(target: &Path) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let st = nix::sys::statvfs::statvfs(target)?;
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    Ok(out)
}

/// Step 3: every mount point of this namespace, read-only and `nosuid`. Mounts under `/proc`
/// are left (a new `/proc` covers them all); one that vanished meanwhile is skipped.
fn remount_all_read_only() -> Result<(), JailError> {
    let info = std::fs::read("/proc/self/mountinfo")
        .map_err(|e| JailError::Other(format!("read /proc/self/mountinfo: {e}")))?;
    let mut seen: Vec<PathBuf> = Vec::new();
    for line in info.split(|b| *b == b'\n') {
        let Some(field) = line.split(|b| *b == b' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(OsStr::from_bytes(&unescape(field)));
        if mp.starts_with("/proc") || seen.contains(&mp) {
            continue;
        }
        match remount_read_only(&mp, MsFlags::MS_NOSUID) {
            Ok(()) => {}
            Err(nix::Error::ENOENT) => {}
            Err(e) => {
                return Err(JailError::Sys {
                    step: format!("read-only {}", mp.display()),
                    source: e,
                })
            }
        }
        seen.push(mp);
    }
    Ok(())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if let Some(v) = std::str::from_utf8(oct)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Step 6: `path` (opened as `fd` before it was hidden) is mounted at its own path again,
/// its mount point made inside whichever hiding tmpfs covers it.
fn bind_back(path: &Path, fd: &OwnedFd, writable: bool) -> Result<(), JailError> {
    if !path.is_dir() {
        std::fs::create_dir_all(path).map_err(|e| {
            JailError::Other(format!("make the mount point {}: {e}", path.display()))
        })?;
    }
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    nix::mount::mount(
        Some(source.as_path()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("bind {}", path.display())))?;
    let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let flags = if writable {
        flags
    } else {
        flags | MsFlags::MS_RDONLY
    };
    mount_flags(None, path, None, flags, None).map_err(sys(format!(
        "{} {}",
        if writable { "writable" } else { "read-only" },
        path.display()
    )))
}

/// `berth jail <args> -- <cmd>`: parse, enter, exec. Returns only on failure, with the exit
/// code to end with (the one line on stderr is printed here).
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!(
            "berth jail: {e} (the app's jail could not be built; nothing ran. Hint: the jail needs \
             root and a Linux kernel with mount namespaces and seccomp; `[server] jail = false` \
             turns it off for the whole server)"
        );
        EXIT_CANNOT_JAIL
    };
    let mut args: Vec<OsString> = args.into_iter().collect();
    let report = args.first().is_some_and(|a| a == "--report");
    if report {
        args.remove(0);
    }
    let (jail, cmd) = match Jail::parse(args) {
        Ok(parsed) => parsed,
        Err(e) => return fail(&e),
    };
    match jail.enter() {
        Ok(r) if report => println!(
            "landlock-abi={} scopes={}",
            r.landlock_abi,
            if r.scopes { "on" } else { "off" }
        ),
        Ok(_) => {}
        Err(e) => return fail(&e),
    }
    let mut command = std::process::Command::new(&cmd[0]);
    command.args(&cmd[1..]);
    // Only returns on failure.
    let e = command.exec();
    eprintln!("berth jail: cannot run {}: {e}", cmd[0].to_string_lossy());
    EXIT_CANNOT_JAIL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let jail = Jail {
            uid: 1001,
            gid: 1002,
            hide: vec!["/data".into(), "/data.builds".into()],
            read_only: vec!["/data/apps/a/releases/v1".into()],
            writable: vec!["/data/apps/a/storage".into()],
            bind: vec![(12345, 12345), (1, 9999)],
            nproc: Some(8192),
            private_net: true,
        };
        let mut args = jail.to_args();
        args.extend(["/bin/sh".into(), "-c".into(), "echo hi".into()]);
        let (back, cmd) = Jail::parse(args).unwrap();
        assert_eq!(back, jail);
        assert_eq!(
            cmd,
            vec![OsString::from("/bin/sh"), "-c".into(), "echo hi".into()]
        );
    }

    #[test]
    fn refuses_root_relative_paths_and_missing_parts() {
        for (args, why) in [
            (vec!["--uid", "0", "--gid", "5", "--", "x"], "root"),
            (vec!["--uid", "5", "--gid", "0", "--", "x"], "root"),
            (vec!["--uid", "5", "--", "x"], "--gid"),
            (
                vec!["--uid", "5", "--gid", "5", "--ro", "rel", "--", "x"],
                "absolute",
            ),
            (vec!["--uid", "5", "--gid", "5", "--"], "no command"),
            (vec!["--uid", "5", "--gid", "5", "x"], "needs a value"),
            (vec!["--uid", "x", "--gid", "5", "--", "x"], "not an id"),
            (vec!["--bogus", "1", "--", "x"], "unknown flag"),
            (
                vec!["--uid", "5", "--gid", "5", "--nproc", "0", "--", "x"],
                "not a process count",
            ),
            (
                vec!["--uid", "5", "--gid", "5", "--bind", "9-1", "--", "x"],
                "not a port",
            ),
            (
                vec!["--uid", "5", "--gid", "5", "--bind", "x", "--", "x"],
                "not a port",
            ),
        ] {
            let err = Jail::parse(args.into_iter().map(OsString::from))
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(br"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(unescape(br"/x\134y"), b"/x\\y");
        assert_eq!(unescape(br"/plain"), b"/plain");
        assert_eq!(unescape(br"/end\04"), br"/end\04");
    }
}
