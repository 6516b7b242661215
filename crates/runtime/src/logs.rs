//! An instance's log: each line stamped with the time it was written, and size-based
//! rotation by copy-and-truncate.
//!
//! The stamp is RFC 3339 UTC to the millisecond and a space before every line
//! (`2026-11-28T09:30:00.123Z GET / 200`), written by [`stamp`]: the app's stdout and stderr
//! are a pipe into a small process of its own (`berth log-stamp`) that appends to the file,
//! so lines of all instances can be merged in time order ([`split_stamp`]).
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
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `2026-11-28T09:30:00.123Z ` (with its space).
pub const STAMP_LEN: usize = 25;

/// A longer line is cut into lines of this many bytes, each stamped.
pub const LINE_MAX: usize = 16 << 10;

/// How long the start of a line waits for its end before it is written as it is (a prompt,
/// a progress bar, a write split in two).
const PARTIAL_WAIT: Duration = Duration::from_millis(100);

/// Copies `input` to `out` until the last writer closes it, every line stamped with the time
/// its first byte was read. A failed write (a full disk) drops what it held and the copy goes
/// on: the app writing its log never blocks or gets EPIPE because of it.
pub fn stamp(mut input: impl Read + AsFd, mut file: impl Write) -> io::Result<()> {
    // What one read gives, stamped, goes out in one write.
    let mut out = Vec::with_capacity(64 << 10);
    let mut buf = vec![0u8; 64 << 10];
    // The start of a line not ended yet, and when it came.
    let mut pending: Vec<u8> = Vec::new();
    let mut since = 0;
    loop {
        if !pending.is_empty() && !readable(&input, PARTIAL_WAIT)? {
            write_line(&mut out, since, &pending);
            pending.clear();
            flush(&mut out, &mut file);
            continue;
        }
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let now = units::now_ms();
        let mut rest = &buf[..n];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if pending.is_empty() {
                write_line(&mut out, now, &rest[..end]);
            } else {
                pending.extend_from_slice(&rest[..end]);
                write_line(&mut out, since, &pending);
                pending.clear();
            }
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            if pending.is_empty() {
                since = now;
            }
            pending.extend_from_slice(rest);
            while pending.len() >= LINE_MAX {
                write_line(&mut out, since, &pending[..LINE_MAX]);
                pending.drain(..LINE_MAX);
            }
        }
        flush(&mut out, &mut file);
    }
    if !pending.is_empty() {
        write_line(&mut out, since, &pending);
    }
    flush(&mut out, &mut file);
    Ok(())
}

/// `line` (no newline), stamped with `ms`, cut at [`LINE_MAX`], added to `out`.
fn write_line(out: &mut Vec<u8>, ms: i64, line: &[u8]) {
    let stamp = units::rfc3339(ms);
    let mut chunks = line.chunks(LINE_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(stamp.as_bytes());
        out.extend_from_slice(b" \n");
    }
    for chunk in chunks {
        out.extend_from_slice(stamp.as_bytes());
        out.push(b' ');
        out.extend_from_slice(chunk);
        out.push(b'\n');
    }
}

/// Writes `out` to `file`; what cannot be written (a full disk) is dropped.
fn flush(out: &mut Vec<u8>, file: &mut impl Write) {
    if !out.is_empty() {
        let _ = file.write_all(out);
        out.clear();
    }
}

/// Whether `fd` has something to read (or is closed) within `wait`.
fn readable(fd: &impl AsFd, wait: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    loop {
        match poll(&mut fds, Some(&timeout)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A stamped line's time (Unix milliseconds) and text; a line without a stamp (written
/// before berth stamped logs) has no time.
pub fn split_stamp(line: &str) -> (Option<i64>, &str) {
    match (
        line.get(..STAMP_LEN - 1),
        line.get(STAMP_LEN - 1..STAMP_LEN),
    ) {
        (Some(stamp), Some(" ")) => match units::parse_rfc3339(stamp) {
            Some(ms) => (Some(ms), &line[STAMP_LEN..]),
            None => (None, line),
        },
        _ => (None, line),
    }
}

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

    /// Lines whole or cut (too long, or waiting too long for their end), each stamped; a
    /// writer that fails (a full disk) does not stop the copy.
    #[test]
    fn stamps_every_line_and_never_stops_reading() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let feed = std::thread::spawn(move || {
            writer.write_all(b"one\ntwo\nhalf").unwrap();
            std::thread::sleep(PARTIAL_WAIT * 3);
            writer.write_all(b" later\n").unwrap();
            writer.write_all(&vec![b'x'; LINE_MAX + 10]).unwrap();
            writer.write_all(b"\n\nend").unwrap();
        });
        let mut out = Vec::new();
        stamp(reader, &mut out).unwrap();
        feed.join().unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<(Option<i64>, &str)> = out.lines().map(split_stamp).collect();
        assert!(lines.iter().all(|(t, _)| t.is_some()), "{out}");
        let texts: Vec<&str> = lines.iter().map(|(_, l)| *l).collect();
        let long = "x".repeat(LINE_MAX);
        assert_eq!(
            texts,
            [
                "one",
                "two",
                "half",
                " later",
                long.as_str(),
                "xxxxxxxxxx",
                "",
                "end"
            ]
        );

        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (reader, mut writer) = std::io::pipe().unwrap();
        let feed = std::thread::spawn(move || {
            for _ in 0..1000 {
                writer.write_all(&[b'y'; 1000]).unwrap();
                writer.write_all(b"\n").unwrap();
            }
        });
        stamp(reader, Full).unwrap();
        feed.join().unwrap();
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
