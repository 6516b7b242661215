//! Checked value types shared by app.json and berth.toml.
//!
//! Each check lives in a `Deserialize` impl, so a bad value is reported by serde_json or toml
//! with the position of the value itself (`app.json:4:7`, `berth.toml:3:11`), not of the file.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Implements `Deserialize` for a newtype by reading `$inner` and passing it to `$check`.
macro_rules! checked {
    ($ty:ident, $inner:ty, $check:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = <$inner>::deserialize(d)?;
                $check(raw).map($ty).map_err(de::Error::custom)
            }
        }
    };
}

/// A duration written as a number and a unit: "250ms", "10s", "5m", "1h". Zero is refused: every
/// duration berth reads is a timeout or a grace period, and zero would mean "fail at once".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dur(pub Duration);
checked!(Dur, String, |s: String| parse_duration(&s));

pub(crate) use units::parse_duration;

/// A byte size: a plain integer (bytes) or a string with a unit: "512", "64KiB", "256MiB",
/// "1GiB". K/M/G are binary, as in `docker run --memory 1g`; KB/MB/GB are decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as \"256MiB\" or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {n}: must not be negative")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub(crate) use units::parse_size;

/// Longest process name. Names end up in container names, log prefixes and metrics labels.
pub(crate) const MAX_PROCESS_NAME: usize = 30;

/// A process type name: lowercase letters, digits, '-' and '_', starting with a letter or digit,
/// at most [`MAX_PROCESS_NAME`] characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ProcName(pub String);
checked!(ProcName, String, |s: String| check_process_name(&s)
    .map(|()| s));

pub(crate) fn check_process_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok_first && ok_rest && name.len() <= MAX_PROCESS_NAME {
        Ok(())
    } else {
        Err(format!(
            "invalid process name {name:?}: use lowercase letters, digits, '-' and '_', starting with a letter or digit, at most {MAX_PROCESS_NAME} characters"
        ))
    }
}

/// Most replicas of one process type. A typo like `web = 1000` should fail the deploy, not
/// start a thousand processes.
pub(crate) const MAX_REPLICAS: u32 = 100;

/// The most instances of one app, all process types together: each is a process (and a log
/// stamper) on the server, and a Procfile may name any number of types.
pub const MAX_INSTANCES: u32 = 200;

/// A replica count, 0..=100. Zero is allowed: it keeps a process type defined but not running
/// (`heroku ps:scale worker=0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicas(pub u32);
checked!(Replicas, u32, |n: u32| if n <= MAX_REPLICAS {
    Ok(n)
} else {
    Err(format!(
        "{n} replicas is more than the maximum of {MAX_REPLICAS}"
    ))
});

/// A health-check path: starts with '/', no whitespace or control bytes (it goes verbatim into
/// an HTTP request line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HealthPath(pub String);
checked!(HealthPath, String, |s: String| {
    if !s.starts_with('/') {
        Err(format!("health check path {s:?} must start with '/'"))
    } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err(format!(
            "health check path {s:?} must not contain spaces or control characters"
        ))
    } else {
        Ok(s)
    }
});

/// A shell command: trimmed, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command(pub String);
checked!(Command, String, |s: String| check_command(&s));

pub(crate) fn check_command(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("command is empty".to_string())
    } else if t.contains('\0') {
        Err("command contains a NUL byte".to_string())
    } else {
        Ok(t.to_string())
    }
}

/// A directory relative to the release dir: not absolute, no `..`. Whether it exists (and does
/// not leave the release dir through a symlink) is checked when the manifest is assembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelDir(pub PathBuf);
checked!(RelDir, String, |s: String| {
    let p = Path::new(&s);
    if s.is_empty() {
        return Err("directory is empty".to_string());
    }
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "directory {s:?} must stay inside the app (no `..`)"
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "directory {s:?} must be relative to the app, not absolute"
                ))
            }
        }
    }
    Ok(p.to_path_buf())
});

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, what every shell accepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EnvKey(pub String);
checked!(EnvKey, String, |s: String| {
    let ok_first = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if ok_first && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(s)
    } else {
        Err(format!(
            "invalid environment variable name {s:?}: use letters, digits and '_', not starting with a digit"
        ))
    }
});

/// 1-based line and column of a byte offset, for toml spans.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "1.5s", "-1s", "10 s", "0s", "3d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        for bad in ["", "MiB", "1.5GiB", "1TiB", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn process_names() {
        for good in ["web", "worker-2", "a_b", "0", &"x".repeat(30)] {
            assert!(check_process_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-web", "_x", "we b", "wéb", &"x".repeat(31)] {
            assert!(check_process_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncd\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 4), (2, 2));
        assert_eq!(line_col(text, 99), (3, 1));
    }
}
