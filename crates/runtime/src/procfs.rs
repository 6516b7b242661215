//! Just enough of `/proc/<pid>/stat` to tell whether a pid is still the
//! process berth started.
//!
//! Pids are reused, so after a berth restart "pid 4242 exists" proves
//! nothing. The start time (in clock ticks since boot) never changes for a
//! process and differs for any later process that gets the same pid, so the
//! pair (pid, start time) is a stable identity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fields of `/proc/<pid>/stat` berth cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// One-letter state: `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Field 22, `starttime`, in clock ticks since boot.
    pub start: u64,
}

impl ProcStat {
    /// A zombie has finished running; only its exit status is left for the
    /// parent to collect, so for our purposes it is gone.
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Start time of `pid` (field 22 of `/proc/<pid>/stat`), `None` if there is no
/// such process.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|s| s.start)
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// True if `pid` is still the process that started at `start` and has not
/// exited.
pub(crate) fn is_alive(pid: u32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.start == start && s.is_running())
}

/// Process group of `pid` (field 5 of `/proc/<pid>/stat`).
pub(crate) fn pgid(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from 3: state, ppid, pgrp.
    rest.split_whitespace().nth(2)?.parse().ok()
}

/// Running processes whose environment has `owner_var=owner`, with the value of `id_var`.
/// Environments of processes of other users are unreadable and skipped.
pub(crate) fn tagged(owner_var: &str, owner: &str, id_var: &str) -> Vec<(u32, String)> {
    let want = format!("{owner_var}={owner}");
    let id_prefix = format!("{id_var}=");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
        if !vars.contains(&want.as_bytes()) {
            continue;
        }
        let id = vars
            .iter()
            .find_map(|v| v.strip_prefix(id_prefix.as_bytes()))
            .map(|v| String::from_utf8_lossy(v).into_owned());
        if let (Some(id), true) = (id, proc_stat(pid).is_some_and(|s| s.is_running())) {
            out.push((pid, id));
        }
    }
    out
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so the fields
/// are counted from the *last* `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `fields` starts at field 3 (state); starttime is field 22.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start })
}

/// Wall-clock time a process with this start time was started, used to
/// report a sensible `since` for adopted instances. Start times are in
/// `USER_HZ` ticks, which Linux fixes at 100 on every architecture berth
/// runs on.
pub(crate) fn start_time_to_system(start: u64) -> Option<SystemTime> {
    const USER_HZ: u64 = 100;
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let btime: u64 = stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let since_boot = Duration::from_millis(start.saturating_mul(1000 / USER_HZ));
    Some(UNIX_EPOCH + Duration::from_secs(btime) + since_boot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_after_the_last_paren() {
        let line = "4242 (we ird) (x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 3 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 1 2"), None);
    }

    #[test]
    fn own_process_has_a_start_time() {
        let me = std::process::id();
        let start = proc_start_time(me);
        assert!(start.is_some());
        assert!(is_alive(me, start.unwrap_or_default()));
        assert!(!is_alive(me, start.unwrap_or_default() + 1));
        let since = start_time_to_system(start.unwrap_or_default());
        assert!(since.is_some_and(|t| t <= SystemTime::now()));
    }
}
