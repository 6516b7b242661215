//! The duration, size and HSTS notation of every file berth reads (the server config, app
//! manifests): one parser each, so `"10s"`, `"256MiB"` or `hsts = true` mean the same
//! everywhere.
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

/// A `Strict-Transport-Security` setting as berth's files write it (a route's or an app's
/// `hsts`): `true` for `max-age=31536000`, or the whole header value, which must start with
/// `max-age=<seconds>`. `false` is refused: leaving the key out is how to send none.
pub fn parse_hsts(on: Option<bool>, value: Option<String>) -> Result<String, String> {
    let value = match (on, value) {
        (Some(true), _) => return Ok("max-age=31536000".into()),
        (Some(false), _) => {
            return Err(
                "hsts = false: leave the key out to send no Strict-Transport-Security".into(),
            )
        }
        (None, Some(v)) => v,
        (None, None) => return Err("hsts needs true or a header value".into()),
    };
    let first = value.split(';').next().unwrap_or_default().trim();
    let age_ok = first
        .strip_prefix("max-age=")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !age_ok || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(format!(
            "hsts {value:?} must start with max-age=<seconds> (e.g. \"max-age=31536000; includeSubDomains\")"
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_values() {
        assert_eq!(
            parse_hsts(Some(true), None).as_deref(),
            Ok("max-age=31536000")
        );
        let v = "max-age=63072000; includeSubDomains; preload";
        assert_eq!(parse_hsts(None, Some(v.into())).as_deref(), Ok(v));
        assert!(parse_hsts(Some(false), None).is_err());
        for bad in [
            "31536000",
            "max-age=abc",
            "includeSubDomains",
            "max-age=1\n",
        ] {
            assert!(parse_hsts(None, Some(bad.into())).is_err(), "{bad:?}");
        }
    }

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
