//! Size-based log rotation by copy-and-truncate.
//!
//! The app holds its log file open with `O_APPEND` for its whole life, and
//! after a berth restart nobody could even tell it to reopen the file. So the
//! file is never renamed away from under it: its content is copied to
//! `<file>.1` (older copies shift to `.2`, `.3`, …) and the original is
//! truncated. Thanks to `O_APPEND` the app's next write lands at the new end
//! (offset 0) instead of leaving a hole. Lines written between the copy and
//! the truncation are lost; that is the accepted price of copytruncate.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Rotates `path` if it is larger than `max_bytes`, keeping `keep` old
/// copies. Returns whether it rotated. A missing file is not an error.
pub(crate) fn rotate_if_needed(path: &Path, max_bytes: u64, keep: usize) -> io::Result<bool> {
    let len = match fs::metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max_bytes {
        return Ok(false);
    }
    if keep > 0 {
        for n in (1..keep).rev() {
            match fs::rename(numbered(path, n), numbered(path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::copy(path, numbered(path, 1))?;
    }
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// `<path>.<n>`, appended to the whole file name (`web.log` → `web.log.1`).
pub(crate) fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_old_copies_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("web.log");
        for round in 1..=4 {
            fs::write(&log, format!("round {round} ").repeat(10)).unwrap();
            assert!(rotate_if_needed(&log, 10, 3).unwrap());
            assert_eq!(fs::metadata(&log).unwrap().len(), 0);
        }
        let read = |n| fs::read_to_string(numbered(&log, n)).unwrap();
        assert!(read(1).starts_with("round 4"));
        assert!(read(2).starts_with("round 3"));
        assert!(read(3).starts_with("round 2"));
        assert!(!numbered(&log, 4).exists());
    }

    #[test]
    fn small_or_missing_files_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("web.log");
        assert!(!rotate_if_needed(&log, 10, 3).unwrap());
        fs::write(&log, "short").unwrap();
        assert!(!rotate_if_needed(&log, 10, 3).unwrap());
        assert_eq!(fs::read_to_string(&log).unwrap(), "short");
    }
}
