//! The duration and size notation of every file berth reads (the server config, app
//! manifests): one parser, so `"10s"` or `"256MiB"` mean the same everywhere.
#![forbid(unsafe_code)]

use std::time::Duration;

/// A duration: a number and a unit, `"250ms"`, `"10s"`, `"5m"`, `"1h"`. Zero is refused: every
/// duration berth reads is a timeout or a grace period, and zero would mean "fail at once".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || {
        format!(
            "invalid duration {s:?}: expected a number and a unit, such as \"250ms\", \"10s\", \"5m\" or \"1h\""
        )
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(err()),
    };
    if ms == 0 {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(Duration::from_millis(ms))
}

/// A byte size: a number and an optional unit, `"512"`, `"64KiB"`, `"256MiB"`, `"1GiB"`. K/M/G
/// are binary, as in `docker run --memory 1g`; KB/MB/GB are decimal.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let err = || {
        format!("invalid size {s:?}: expected a number and an optional unit, such as \"512\", \"64KiB\" or \"256MiB\"")
    };
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| err())?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, ms) in [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in ["", "10", "s", "0s", "1.5s", "-1s", "10 s", "10sec"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        for (s, n) in [
            ("512", 512),
            ("64KiB", 64 << 10),
            ("256MiB", 256 << 20),
            ("1G", 1 << 30),
            ("10MB", 10_000_000),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in ["", "MiB", "-1", "1.5MiB", "1TiB", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }
}
