//! Reading logs: the last lines of a file, and following files as they grow (also across
//! the runtime's copy-and-truncate rotation).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// At most this much of a file's end is read for a tail.
const TAIL_BYTES: u64 = 256 * 1024;

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

    /// New complete lines as (label, line).
    pub fn poll(&mut self) -> Vec<(String, String)> {
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
            if file.take(len - f.offset).read_to_end(&mut buf).is_err() {
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
}
