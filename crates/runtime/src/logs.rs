//! An instance's log: each line stamped with the time it was written, the file capped as it
//! is written and rotated by rename.
//!
//! The stamp is RFC 3339 UTC to the millisecond and a space before every line
//! (`2026-11-28T09:30:00.123Z GET / 200`), written by [`stamp`]: the app's stdout and stderr
//! are a pipe into a small process of its own (`berth log-stamp`) that appends to the file,
//! so lines of all instances can be merged in time order ([`split_stamp`]). That process
//! owns the file ([`LogFile`]): before a write would take it past its cap it renames it to
//! `<file>.1` (older copies shift to `.2`, `.3`, …) and starts a new one, which needs no free
//! space and never lets one app's output grow past `cap × (keep + 1)`.
//!
//! Output that does not go through a stamper (a container's, which berth follows; an instance
//! of a runtime configured without one) is rotated by copy-and-truncate instead
//! ([`rotate_if_needed`]): whoever holds the file open with `O_APPEND` cannot be told to reopen
//! it, so its content is copied to `<file>.1` and the original truncated; lines written between
//! the copy and the truncation are lost.

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
            write_line(&mut out, &units::rfc3339(since), &pending);
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
        // One stamp for all that one read gave (formatting it per line is most of the cost).
        let stamp_now = units::rfc3339(now);
        let mut rest = &buf[..n];
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            if pending.is_empty() {
                write_line(&mut out, &stamp_now, &rest[..end]);
            } else {
                pending.extend_from_slice(&rest[..end]);
                write_line(&mut out, &units::rfc3339(since), &pending);
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
                write_line(&mut out, &units::rfc3339(since), &pending[..LINE_MAX]);
                pending.drain(..LINE_MAX);
            }
        }
        flush(&mut out, &mut file);
    }
    if !pending.is_empty() {
        write_line(&mut out, &units::rfc3339(since), &pending);
    }
    flush(&mut out, &mut file);
    Ok(())
}

/// An instance's log file as the stamper writes it: appended to; when the next write would
/// take it past `cap` bytes it is renamed to `<file>.1` (the older copies shift, the oldest
/// beyond `keep` goes) and a new one is started. One write longer than `cap` is cut to it. A
/// write that fails (a full disk) is dropped, never retried.
pub struct LogFile {
    path: PathBuf,
    file: Option<fs::File>,
    size: u64,
    cap: u64,
    keep: usize,
}

impl LogFile {
    pub fn open(path: &Path, cap: u64, keep: usize) -> LogFile {
        let mut log = LogFile {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            cap: cap.max(1),
            keep,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        self.file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
    }

    fn rotate(&mut self) {
        self.file = None;
        if self.keep == 0 {
            let _ = fs::remove_file(&self.path);
        } else {
            for n in (1..self.keep).rev() {
                let _ = fs::rename(numbered(&self.path, n), numbered(&self.path, n + 1));
            }
            let _ = fs::rename(&self.path, numbered(&self.path, 1));
        }
        self.reopen();
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = u64::try_from(buf.len()).unwrap_or(u64::MAX);
        if self.size > 0 && self.size.saturating_add(len) > self.cap {
            self.rotate();
        }
        let room = usize::try_from(self.cap.saturating_sub(self.size)).unwrap_or(usize::MAX);
        let part = &buf[..buf.len().min(room)];
        if let Some(f) = &mut self.file {
            if f.write_all(part).is_ok() {
                self.size += part.len() as u64;
            }
        }
        // All of it is taken: what did not fit or could not be written is dropped.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `line` (no newline), stamped with `stamp`, cut at [`LINE_MAX`], added to `out`.
fn write_line(out: &mut Vec<u8>, stamp: &str, line: &[u8]) {
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

/// Rotates `path` by copy-and-truncate if it is larger than `max_bytes`, keeping `keep` old
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

    /// The file never passes its cap: it is renamed away (no free space needed) and the
    /// oldest copy beyond `keep` goes.
    #[test]
    fn a_log_file_is_capped_as_it_is_written_and_rotated_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        let mut log = LogFile::open(&path, 100, 2);
        for i in 0..30 {
            log.write_all(format!("line {i:02} of the log\n").as_bytes())
                .unwrap();
        }
        // One write longer than the cap is cut to it.
        log.write_all(&[b'x'; 250]).unwrap();
        for n in [0, 1, 2] {
            let p = if n == 0 {
                path.clone()
            } else {
                numbered(&path, n)
            };
            let len = fs::metadata(&p).unwrap().len();
            assert!(len <= 100, "{} is {len} bytes", p.display());
        }
        assert!(!numbered(&path, 3).exists());
        assert_eq!(fs::read(&path).unwrap(), vec![b'x'; 100]);
        assert!(fs::read_to_string(numbered(&path, 1))
            .unwrap()
            .ends_with("line 29 of the log\n"));
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
