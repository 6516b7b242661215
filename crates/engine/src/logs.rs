//! Reading logs: the last lines of a file, following files as they grow (also across the
//! runtime's copy-and-truncate rotation), and an app's logs as one stream: every instance's
//! lines (stamped with their time as they were written, `runtime::logs`) and berth's deploy
//! events, merged in time order and filtered ([`LogFilter`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// At most this much of a file's end is read for a tail.
const TAIL_BYTES: u64 = 256 * 1024;
/// At most this much of each followed file is read per poll; the rest comes on the next polls.
pub const POLL_BYTES: u64 = 256 * 1024;

/// A whole log file as text (invalid UTF-8 replaced; empty if it does not exist). A file longer
/// than `max` bytes gives only its last `max` bytes (from the first full line), after a first
/// line that says so. Blocking: call it off the async threads.
pub fn read_log(path: &Path, max: u64) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    if start == 0 {
        return String::from_utf8_lossy(&buf).into_owned();
    }
    // Cut: skip the first, probably partial, line.
    let from = buf
        .iter()
        .position(|&b| b == b'\n')
        .map_or(buf.len(), |nl| nl + 1);
    format!(
        "[berth: the log is {len} bytes; only its last {} are shown]\n{}",
        size_text(max),
        String::from_utf8_lossy(&buf[from..])
    )
}

fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// The last `n` lines of a file (none if it does not exist).
pub fn tail_file(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let start = len.saturating_sub(TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    if f.take(TAIL_BYTES).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|s| s.to_string()).collect()
}

/// One line of an app's logs: when (from its stamp; `None` for a line written before berth
/// stamped logs), where from (`web.1`, or `berth` for a deploy event), and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: Option<i64>,
    pub source: String,
    pub text: String,
}

/// Where deploy events come from in an app's logs.
pub const BERTH_SOURCE: &str = "berth";
/// Where the requests the proxy answered come from in an app's logs.
pub const ROUTER_SOURCE: &str = "router";

impl LogLine {
    /// A line of the log file of instance `label`.
    pub fn from_file(label: &str, line: &str) -> LogLine {
        let (time, text) = runtime::logs::split_stamp(line);
        LogLine {
            time,
            source: label.to_string(),
            text: text.to_string(),
        }
    }

    /// `2026-12-08T10:00:00.123Z web.1 | text`, as `berth logs` prints it. A carriage return
    /// in the text is shown as `\r`: a reader (an SSE client, a terminal) that takes it for a
    /// line break would otherwise see the rest as a line of its own, with any time and source
    /// the app cared to print.
    pub fn render(&self) -> String {
        let text = self.text.replace('\r', "\\r");
        match self.time {
            Some(t) => format!("{} {} | {text}", units::rfc3339(t), self.source),
            None => format!("{} | {text}", self.source),
        }
    }
}

/// Which of an app's log lines a reader wants.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Lines at or after this time (Unix ms); a line without a time is then left out.
    pub since: Option<i64>,
    /// Lines at or before this time.
    pub until: Option<i64>,
    /// Only instances of this process type (`web`).
    pub proc_type: Option<String>,
    /// Only this instance (`web.2`).
    pub instance: Option<String>,
}

impl LogFilter {
    /// Whether the instance `label` (`web.2`) is wanted.
    pub fn wants_instance(&self, label: &str) -> bool {
        let ty = label.rsplit_once('.').map_or(label, |(t, _)| t);
        self.instance.as_deref().is_none_or(|i| i == label)
            && self.proc_type.as_deref().is_none_or(|t| t == ty)
    }

    pub fn wants_time(&self, time: Option<i64>) -> bool {
        match time {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }

    /// Nothing after `until` can come any more: a follow ends.
    pub fn is_past(&self, now: i64) -> bool {
        self.until.is_some_and(|u| now > u)
    }
}

/// The last `n` lines of the instance logs `files` (label, path) and of `events`, those that
/// `filter` wants, in time order (lines without a time first). Blocking file I/O.
pub fn merged_tail(
    files: &[(String, PathBuf)],
    events: Vec<LogLine>,
    filter: &LogFilter,
    n: usize,
) -> Vec<LogLine> {
    // With `until`, the wanted lines may sit before many later ones: scan the whole tail.
    let per_file = if filter.until.is_some() {
        usize::MAX
    } else {
        n
    };
    let mut lines: Vec<LogLine> = files
        .iter()
        .filter(|(label, _)| filter.wants_instance(label))
        .flat_map(|(label, path)| {
            tail_file(path, per_file)
                .into_iter()
                .map(|l| LogLine::from_file(label, &l))
                .collect::<Vec<_>>()
        })
        .chain(events)
        .filter(|l| filter.wants_time(l.time))
        .collect();
    // Stable: lines of one file (and events) keep their order within one millisecond.
    lines.sort_by_key(|l| l.time.unwrap_or(i64::MIN));
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

/// The requests to `hosts` in the end of the access log at `path` (its JSON lines), as
/// `GET /path 200 1234B 3.2ms upstream=127.0.0.1:10001 id=…`. Blocking file I/O.
pub fn router_events(path: &Path, hosts: &[String]) -> Vec<LogLine> {
    tail_file(path, usize::MAX)
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|a| {
            // The Host header as sent: with a port, and in any case.
            let host = a["host"].as_str().unwrap_or_default();
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
        })
        .map(|a| {
            let text = |key: &str| a[key].as_str().unwrap_or("-").to_string();
            LogLine {
                time: a["time"].as_str().and_then(units::parse_rfc3339),
                source: ROUTER_SOURCE.into(),
                text: format!(
                    "{} {} {} {}B {:.1}ms upstream={} id={}",
                    text("method"),
                    text("path"),
                    a["status"].as_u64().unwrap_or(0),
                    a["bytes"].as_u64().unwrap_or(0),
                    a["duration_ms"].as_f64().unwrap_or(0.0),
                    text("upstream"),
                    text("request_id"),
                ),
            }
        })
        .collect()
}

/// An app's deploys as events in its logs: each one's start and end.
pub fn deploy_events(deploys: &[store::Deploy]) -> Vec<LogLine> {
    let mut out = Vec::new();
    for d in deploys {
        let kind = d.kind.as_str();
        let mut what = format!("{}{} {}", kind[..1].to_uppercase(), &kind[1..], d.id);
        let about = d.meta.message.as_deref().unwrap_or(&d.meta.trigger);
        out.push(LogLine {
            time: Some(d.started_at),
            source: BERTH_SOURCE.into(),
            text: format!("{what} started by {}: {about}", d.actor),
        });
        if let Some(end) = d.finished_at {
            what.push(' ');
            what.push_str(d.status.as_str());
            match (d.status, d.release_version, &d.reason) {
                (store::DeployStatus::Succeeded, Some(v), _) => {
                    what.push_str(&format!(": v{v} is live"));
                }
                (_, _, Some(reason)) => what.push_str(&format!(": {reason}")),
                _ => {}
            }
            out.push(LogLine {
                time: Some(end),
                source: BERTH_SOURCE.into(),
                text: what,
            });
        }
    }
    out
}

/// Follows a set of files, returning the complete lines added since the last poll.
#[derive(Default)]
pub struct Follower {
    files: Vec<Followed>,
}

struct Followed {
    label: String,
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Start following `path` from its current end (`from_start`: from its beginning).
    pub fn add(&mut self, label: &str, path: &Path, from_start: bool) {
        if self.files.iter().any(|f| f.path == path) {
            return;
        }
        let offset = if from_start {
            0
        } else {
            std::fs::metadata(path).map_or(0, |m| m.len())
        };
        self.files.push(Followed {
            label: label.to_string(),
            path: path.to_path_buf(),
            offset,
            partial: Vec::new(),
        });
    }

    /// Keep only the files in `keep` (instances that went away stop being followed).
    pub fn retain(&mut self, keep: &[PathBuf]) {
        self.files.retain(|f| keep.contains(&f.path));
    }

    /// New complete lines as (label, line), from at most [`POLL_BYTES`] of each file (a file
    /// that grew more is caught up on the next polls). Blocking file I/O: call it off the async
    /// threads.
    pub fn poll(&mut self) -> Vec<(String, String)> {
        self.poll_at_most(POLL_BYTES)
    }

    fn poll_at_most(&mut self, max: u64) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for f in &mut self.files {
            let Ok(mut file) = std::fs::File::open(&f.path) else {
                continue;
            };
            let len = file.metadata().map_or(0, |m| m.len());
            if len < f.offset {
                // Rotated (copied and truncated): start over at the top.
                f.offset = 0;
                f.partial.clear();
            }
            if len == f.offset || file.seek(SeekFrom::Start(f.offset)).is_err() {
                continue;
            }
            let mut buf = Vec::new();
            if file
                .take((len - f.offset).min(max))
                .read_to_end(&mut buf)
                .is_err()
            {
                continue;
            }
            f.offset += buf.len() as u64;
            f.partial.extend_from_slice(&buf);
            while let Some(nl) = f.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = f.partial.drain(..=nl).collect();
                let text = String::from_utf8_lossy(&line[..nl]);
                out.push((f.label.clone(), text.trim_end_matches('\r').to_string()));
            }
            if f.partial.len() > 64 * 1024 {
                // A very long line without a newline: emit what we have.
                let text = String::from_utf8_lossy(&f.partial).to_string();
                f.partial.clear();
                out.push((f.label.clone(), text));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_and_follow() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "1\n2\n3\n").unwrap();
        assert_eq!(tail_file(&p, 2), vec!["2", "3"]);
        assert!(tail_file(&dir.path().join("missing"), 5).is_empty());
        let mut f = Follower::default();
        f.add("web.1", &p, false);
        assert!(f.poll().is_empty());
        std::fs::write(&p, "1\n2\n3\n4\npart").unwrap();
        assert_eq!(f.poll(), vec![("web.1".to_string(), "4".to_string())]);
        // Copy-truncate rotation: the file shrinks, following starts over.
        std::fs::write(&p, "ial\n5\n").unwrap();
        assert_eq!(
            f.poll(),
            vec![
                ("web.1".to_string(), "ial".to_string()),
                ("web.1".to_string(), "5".to_string())
            ]
        );
    }

    #[test]
    fn each_poll_reads_at_most_the_cap_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        // 10 lines of 99 bytes + newline each, in both files.
        let text: String = (0..10)
            .map(|i| format!("{i}{}\n", "x".repeat(98)))
            .collect();
        std::fs::write(&a, &text).unwrap();
        std::fs::write(&b, &text).unwrap();
        let mut f = Follower::default();
        f.add("a", &a, true);
        f.add("b", &b, true);
        // 250 bytes per file and poll: two full lines from each, the rest held back.
        let first = f.poll_at_most(250);
        assert_eq!(first.len(), 4, "{first:?}");
        assert_eq!(first[0].0, "a");
        assert!(first[0].1.starts_with('0') && first[1].1.starts_with('1'));
        assert_eq!(first[2].0, "b");
        let mut a_lines = first.iter().filter(|(l, _)| l == "a").count();
        let mut polls = 1;
        while a_lines < 10 {
            let got = f.poll_at_most(250);
            assert!(got.iter().filter(|(l, _)| l == "a").count() <= 3, "{got:?}");
            a_lines += got.iter().filter(|(l, _)| l == "a").count();
            polls += 1;
            assert!(polls <= 4, "caught up in 4 polls of 250 bytes");
        }
        assert!(f.poll_at_most(250).is_empty());
        // The public poll has the 256 KiB cap: a 1 MiB burst takes 4 polls.
        let c = dir.path().join("c.log");
        let line = format!("{}\n", "y".repeat(1023));
        std::fs::write(&c, line.repeat(1024)).unwrap();
        let mut f = Follower::default();
        f.add("c", &c, true);
        for _ in 0..4 {
            assert_eq!(f.poll().len(), 256);
        }
        assert!(f.poll().is_empty());
    }

    #[test]
    fn read_log_is_lossy_and_keeps_the_end_of_a_big_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.log");
        std::fs::write(&p, b"ok \xff\xfe\nend\n").unwrap();
        assert_eq!(read_log(&p, 1024), "ok \u{fffd}\u{fffd}\nend\n");
        assert_eq!(read_log(&dir.path().join("missing"), 1024), "");
        let text: String = (0..100).map(|i| format!("line {i:03}\n")).collect();
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_log(&p, 900), text);
        let got = read_log(&p, 95); // 9 bytes a line: the last 10 lines and a partial one
        let mut lines = got.lines();
        assert_eq!(
            lines.next(),
            Some("[berth: the log is 900 bytes; only its last 95 bytes are shown]")
        );
        let rest: Vec<&str> = lines.collect();
        assert_eq!(rest.len(), 10, "{got}");
        assert_eq!(rest[0], "line 090");
        assert_eq!(rest[9], "line 099");
    }
}
