//! The duration, size and HSTS notation of every file berth reads (the server config, app
//! manifests): one parser each, so `"10s"`, `"256MiB"` or `hsts = true` mean the same
//! everywhere; and the one way berth writes and reads a point in time (RFC 3339 UTC, to the
//! millisecond: the API, notifications, the access log and app logs).
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

/// Unix milliseconds as RFC 3339 UTC, `2026-11-28T09:30:00.123Z` (always 24 characters for
/// years 0 to 9999).
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Unix milliseconds of an RFC 3339 time: `2026-11-28T09:30:00Z`, with any fraction of a
/// second (kept to the millisecond) and `Z` or a `+hh:mm`/`-hh:mm` offset. `None` if it is
/// not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && matches!(b.get(10), Some(b'T' | b't' | b' '))) {
        return None;
    }
    if !(sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let first3 = format!("{:0<3}", frac.get(..digits.min(3))?);
        millis = first3.parse::<i64>().ok()?;
        rest = frac.get(digits..)?;
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            let o = rest.get(1..)?;
            if o.len() != 5 || o.as_bytes().get(2) != Some(&b':') {
                return None;
            }
            let (oh, om): (i64, i64) = (o.get(..2)?.parse().ok()?, o.get(3..)?.parse().ok()?);
            if oh > 23 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    // Howard Hinnant's days_from_civil.
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
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

    #[test]
    fn times() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_857_000_000, "2026-11-28T09:10:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339(ms), text);
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
        for (text, ms) in [
            ("2026-11-28T09:10:00Z", 1_795_857_000_000),
            ("2026-11-28T09:10:00.5Z", 1_795_857_000_500),
            ("2026-11-28T09:10:00.123456789Z", 1_795_857_000_123),
            ("2026-11-28T10:10:00+01:00", 1_795_857_000_000),
            ("2026-11-28T08:40:00.000-00:30", 1_795_857_000_000),
        ] {
            assert_eq!(parse_rfc3339(text), Some(ms), "{text}");
        }
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T09:10:00",
            "2026-13-28T09:10:00Z",
            "2026-11-28T09:10:00.Z",
            "2026-11-28T09:10:00+0100",
            "2026-11-28T09:10:00Zjunk",
            "+026-11-28T09:10:00Z",
            "2026-11-28T09:1a:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
