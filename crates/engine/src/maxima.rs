//! What an app may ask of the server, whoever deploys it. An app sets its own `[limits]` and
//! step timeouts in its berth.toml, so without a ceiling a tenant could lift its own limits
//! (`pids = 4000000`, a `[build] timeout` of days holding a shared build slot). Each is checked
//! against the server's maximum when the source is unpacked, before anything is recorded or
//! runs: over it, the deploy is refused naming the key, the value and the server's setting.

use std::time::Duration;

use build::manifest::AppSpec;

/// The server's maxima (`[server] app_max_memory`, `app_max_pids`, `step_max_timeout`).
#[derive(Debug, Clone)]
pub struct Maxima {
    /// Bytes of memory per instance or step; default: the host's memory.
    pub memory: u64,
    /// Processes per instance or step; default 4096 (an app that sets none gets that many).
    pub pids: u64,
    /// Processes and threads of all of one app's jailed processes together (its user's
    /// `RLIMIT_NPROC`, see `berth-jail`); default [`Maxima::default_app_pids`].
    pub app_pids: u64,
    /// The longest `[test]`/`[build]` timeout; default one hour.
    pub step_timeout: Duration,
}

impl Default for Maxima {
    fn default() -> Self {
        Maxima {
            memory: host_memory().unwrap_or(u64::MAX),
            pids: DEFAULT_PIDS,
            app_pids: Self::default_app_pids(DEFAULT_PIDS),
            step_timeout: Duration::from_secs(3600),
        }
    }
}

const DEFAULT_PIDS: u64 = 4096;

impl Maxima {
    /// A quarter of the kernel's `pid_max` (32768 on many hosts), so that no one app's
    /// instances together can take every pid; never less than one instance's `pids`.
    pub fn default_app_pids(pids: u64) -> u64 {
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(32768);
        (pid_max / 4).max(pids)
    }

    /// Half the host's memory: what all of one app's processes may use together unless
    /// `[server] app_memory_budget` says otherwise.
    pub fn default_app_memory() -> u64 {
        host_memory().map_or(u64::MAX, |m| m / 2)
    }

    /// The limits `spec`'s instances and its `release:`/postdeploy steps run with: the app's
    /// own, and where it sets none, the server's maxima, so that an app that asks nothing does
    /// not get more than one that asks the most it may.
    pub(crate) fn instance_limits(&self, spec: &AppSpec) -> runtime::Limits {
        runtime::Limits {
            memory: Some(spec.limits.memory.unwrap_or(self.memory)),
            pids: Some(spec.limits.pids.unwrap_or(self.pids)),
            cpu: spec.limits.cpu,
        }
    }

    /// A test or build step: the app's limits, and where it sets none, enough for a compiler
    /// or a bundler (4 GiB), within the maxima.
    pub(crate) fn step_limits(&self, spec: &AppSpec) -> runtime::Limits {
        runtime::Limits {
            memory: Some(spec.limits.memory.unwrap_or(BUILD_MEMORY.min(self.memory))),
            ..self.instance_limits(spec)
        }
    }
}

const BUILD_MEMORY: u64 = 4 << 30;

/// MemTotal from /proc/meminfo, in bytes.
fn host_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

impl Maxima {
    /// `Err`: what `spec` asks over the maxima, and how to change either side.
    pub fn check(&self, spec: &AppSpec) -> Result<(), String> {
        let over = |key: &str, asked: String, max: String, setting: &str| {
            Err(format!(
                "{key} = {asked} is over this server's maximum of {max} (hint: ask for less in berth.toml, or raise [server] {setting})"
            ))
        };
        if let Some(m) = spec.limits.memory.filter(|m| *m > self.memory) {
            return over(
                "[limits] memory",
                format!("{m} bytes"),
                format!("{} bytes", self.memory),
                "app_max_memory",
            );
        }
        if let Some(p) = spec.limits.pids.filter(|p| *p > self.pids) {
            return over(
                "[limits] pids",
                p.to_string(),
                self.pids.to_string(),
                "app_max_pids",
            );
        }
        for (key, step) in [
            ("[test] timeout", &spec.test),
            ("[build] timeout", &spec.build),
        ] {
            if let Some(t) = step
                .as_ref()
                .map(|s| s.timeout)
                .filter(|t| *t > self.step_timeout)
            {
                return over(
                    key,
                    format!("{t:?}"),
                    format!("{:?}", self.step_timeout),
                    "step_max_timeout",
                );
            }
        }
        Ok(())
    }
}
