//! What every container berth starts gets, whatever its image asks for (the jail's promise for
//! containers): no new privileges (a setuid binary gives nothing), capabilities cut to fewer
//! than Docker's default set, a pids limit, and Docker's default seccomp profile (never turned
//! off). Containers are on their app's own bridge network and only named volumes are mounted
//! (never the Docker socket nor berth's data: compose bind mounts are refused when parsed).

use bollard::models::HostConfig;

/// Docker's default set without `NET_RAW` (raw sockets: spoofing on the bridge), `MKNOD`,
/// `AUDIT_WRITE` and `SETFCAP`; what is kept is what images commonly need to start as root and
/// drop to their own user (postgres, nginx, redis).
pub(crate) const KEPT_CAPABILITIES: [&str; 10] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
];

/// Processes (and threads) a container may have when its app sets no `pids` limit: a fork
/// bomb stays inside it.
pub(crate) const DEFAULT_PIDS: i64 = 4096;

/// The pids limit for `limit` (the app's, if any).
pub(crate) fn pids(limit: Option<u64>) -> Option<i64> {
    Some(
        limit
            .and_then(|p| i64::try_from(p).ok())
            .unwrap_or(DEFAULT_PIDS),
    )
}

/// `host` with the hardening applied.
pub(crate) fn harden(host: HostConfig) -> HostConfig {
    HostConfig {
        security_opt: Some(vec!["no-new-privileges:true".to_string()]),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        privileged: Some(false),
        ..host
    }
}
