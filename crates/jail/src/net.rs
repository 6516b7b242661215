//! A private network for a build: a network namespace of its own, so the servers a test suite
//! starts are on its own loopback (no other tenant can reach them, or squat their ports first),
//! and the outside world through slirp4netns (user-mode NAT: the build's packets become
//! connections of an ordinary process on the host, under the firewall's rule).
//!
//! slirp4netns must run in the host's namespace and join the new one, so the helper keeps a
//! handle on both: it takes a new namespace, steps back into the host's to start slirp4netns
//! on the new one (`/proc/<pid>/fd/<n>`), waits for it to be ready, and steps in again.
//! slirp4netns runs as root (joining a namespace needs it), sandboxed (`--enable-sandbox`:
//! its own mount namespace, capabilities dropped), with the build's group, which the firewall
//! keys its rule on. It ends with the build: its stdin is the read end of a pipe whose write
//! end every process of the build holds (inherited across `exec` and `fork`), and
//! `--exit-fd=0` makes it exit when the last of them is gone (it is in the build's cgroup,
//! killed with it, too).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;

use crate::{sys, JailError};

/// Where slirp4netns answers DNS inside the namespace.
pub(crate) const DNS: &str = "10.0.2.3";

/// Moves the calling process into a new network namespace with a loopback and a NATed
/// `tap0`, its outside traffic sent by slirp4netns running with group `gid`.
pub(crate) fn enter_private(gid: u32) -> Result<(), JailError> {
    let open = |what: &str| {
        File::open("/proc/self/ns/net")
            .map_err(|e| JailError::Other(format!("open the {what} network namespace: {e}")))
    };
    let host = open("host's")?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare (network namespace)"))?;
    let own = open("new")?;
    nix::sched::setns(&host, CloneFlags::CLONE_NEWNET)
        .map_err(sys("step back into the host's network namespace"))?;
    let target = format!("/proc/{}/fd/{}", std::process::id(), own.as_raw_fd());
    // Close-on-exec while slirp4netns starts (it must not hold the write end itself), then
    // kept across the build's exec.
    let (exit_read, exit_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    let started = Command::new("slirp4netns")
        .args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-sandbox",
            "--netns-type=path",
            "--ready-fd=1",
            "--exit-fd=0",
        ])
        .arg(&target)
        .arg("tap0")
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .current_dir("/")
        .gid(gid)
        .stdin(Stdio::from(exit_read))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut slirp = match started {
        Ok(c) => {
            nix::fcntl::fcntl(
                &exit_write,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .map_err(sys("keep the exit pipe open"))?;
            c
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(JailError::Other(
                "slirp4netns is not installed: a build's private network needs it (Debian: apt install slirp4netns)".into(),
            ))
        }
        Err(e) => return Err(JailError::Other(format!("cannot start slirp4netns: {e}"))),
    };
    // One byte on the ready fd once the namespace's network is configured; end of file if it
    // gave up.
    let mut ready = [0u8; 1];
    let got = slirp
        .stdout
        .take()
        .map(|mut out| out.read(&mut ready))
        .transpose()
        .map_err(|e| JailError::Other(format!("waiting for slirp4netns: {e}")))?;
    if got != Some(1) {
        let status = slirp.wait().map(|s| s.to_string()).unwrap_or_default();
        return Err(JailError::Other(format!(
            "slirp4netns could not set up the build's network ({status})"
        )));
    }
    nix::sched::setns(&own, CloneFlags::CLONE_NEWNET)
        .map_err(sys("enter the build's network namespace"))?;
    // Held open until the last process of the build exits (see the module docs).
    std::mem::forget(exit_write);
    Ok(())
}
