//! Source bundles: the `.tar.gz` that `berth deploy` uploads.
//!
//! A bundle comes from the network, so [`unpack`] treats it as hostile: every entry path is
//! checked before anything is written, files are written with our own `create_new` calls (never
//! tar's `unpack`, which follows symlinks and restores whatever it is told), and the whole tree
//! lands in a sibling `.partial-…` directory that is renamed into place only when every entry was
//! accepted. A refused bundle leaves nothing behind.
//!
//! [`pack`] is the client side: it walks a directory like git would see it (`.gitignore`,
//! `.ignore`, no `.git`) and writes a deterministic archive.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tar::{EntryType, Header};

/// Most entries a bundle may hold. Each entry costs a syscall or three and an inode; a cap keeps
/// a bundle of a million empty files from tying up the unpacker and the disk.
pub const MAX_ENTRIES: u64 = 100_000;

/// Decompressed bytes allowed on top of `max_bytes` for tar's own framing: one MiB up front
/// (end-of-archive padding, a long name or two) plus [`SLACK_PER_ENTRY`] per entry seen.
/// tar reads GNU long names and pax headers into memory without a limit of its own, so the
/// decompressed stream as a whole needs a bound, not just the file data we write.
const SLACK_BASE: u64 = 1 << 20;
/// Header (512) + padding (< 512) + a typical pax or long-name record, per entry.
const SLACK_PER_ENTRY: u64 = 2048;

/// Why a bundle was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The uncompressed contents exceed the caller's limit (a zip bomb, or just too big).
    #[error("bundle is larger than {limit} bytes uncompressed")]
    TooLarge { limit: u64 },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("bundle has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    /// The gzip or tar stream is damaged or truncated; the string is the decoder's reason.
    #[error("bundle is corrupt: {0}")]
    Corrupt(String),
    /// A well-formed archive with nothing in it.
    #[error("bundle is empty")]
    Empty,
    /// An entry that could write outside the destination or create something that is not a
    /// plain file, directory or contained symlink.
    #[error("refusing bundle entry {path:?}: {reason}")]
    Unsafe { path: String, reason: String },
    /// `unpack` never merges into or replaces an existing directory.
    #[error("destination {} already exists", .0.display())]
    DestExists(PathBuf),
    /// A local filesystem error (disk full, permissions, …) while reading or writing.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
        let context = context.into();
        move |source| BundleError::Io { context, source }
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular-file data written.
    pub bytes: u64,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Regular files stored.
    pub files: u64,
    /// Bytes of regular-file data stored (before compression).
    pub bytes: u64,
}

/// Unpacks a gzip'd tar stream into `dest`, which must not exist yet.
///
/// The stream is read once, entry by entry, never held in memory. At most `max_bytes` of file
/// data and [`MAX_ENTRIES`] entries are accepted. Refused: absolute paths, `..`, paths through a
/// symlink, symlinks pointing outside the tree, hard links, devices and fifos. Files keep only
/// their executable bit (0o755 or 0o644) and their mtime; directories are 0o755.
///
/// On any error the partial tree is removed and `dest` is not created.
pub fn unpack(reader: impl Read, dest: &Path, max_bytes: u64) -> Result<UnpackStats, BundleError> {
    if dest.symlink_metadata().is_ok() {
        return Err(BundleError::DestExists(dest.to_path_buf()));
    }
    let partial = partial_path(dest)?;
    fs::create_dir(&partial).map_err(BundleError::io(format!("creating {}", partial.display())))?;
    let result = unpack_into(reader, &partial, max_bytes).and_then(|stats| {
        set_mode(&partial, 0o755)?;
        fs::rename(&partial, dest).map_err(BundleError::io(format!(
            "renaming {} to {}",
            partial.display(),
            dest.display()
        )))?;
        Ok(stats)
    });
    if result.is_err() {
        if let Err(e) = fs::remove_dir_all(&partial) {
            tracing::warn!(path = %partial.display(), error = %e, "could not remove a partial bundle");
        }
    }
    result
}

/// `<dest>.partial-<pid>-<n>` next to `dest`: same filesystem, so the final rename is atomic, and
/// unique per process and call, so concurrent unpacks never share a directory.
fn partial_path(dest: &Path) -> Result<PathBuf, BundleError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().ok_or_else(|| BundleError::Io {
        context: format!("destination {}", dest.display()),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut partial = OsString::from(name);
    partial.push(format!(
        ".partial-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(dest.with_file_name(partial))
}

/// Counts decompressed bytes shared between the tar reader (which owns the stream) and the
/// unpack loop (which raises the allowance per entry and asks, after an error, whether the limit
/// was the cause).
struct Meter {
    read: Cell<u64>,
    allowed: Cell<u64>,
    exceeded: Cell<bool>,
}

struct Metered<R> {
    inner: R,
    meter: Rc<Meter>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = &self.meter;
        let left = m.allowed.get().saturating_sub(m.read.get());
        if left == 0 {
            m.exceeded.set(true);
            return Err(io::Error::other(
                "decompressed bundle exceeds its size limit",
            ));
        }
        let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        m.read.set(m.read.get() + n as u64);
        Ok(n)
    }
}

fn unpack_into(reader: impl Read, root: &Path, max_bytes: u64) -> Result<UnpackStats, BundleError> {
    let meter = Rc::new(Meter {
        read: Cell::new(0),
        allowed: Cell::new(max_bytes.saturating_add(SLACK_BASE)),
        exceeded: Cell::new(false),
    });
    let stream = Metered {
        inner: GzDecoder::new(reader),
        meter: Rc::clone(&meter),
    };
    // A read error is either our size meter tripping or a damaged stream.
    let read_error = |e: io::Error| {
        if meter.exceeded.get() {
            BundleError::TooLarge { limit: max_bytes }
        } else {
            BundleError::Corrupt(printable(&e.to_string()))
        }
    };

    let mut archive = tar::Archive::new(stream);
    let mut stats = UnpackStats::default();
    let mut seen = 0u64;
    let mut content = 0u64;
    for entry in archive.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        seen += 1;
        if seen > MAX_ENTRIES {
            return Err(BundleError::TooManyEntries { limit: MAX_ENTRIES });
        }
        meter
            .allowed
            .set(meter.allowed.get().saturating_add(SLACK_PER_ENTRY));
        if unpack_entry(&mut entry, root, max_bytes, &mut stats, &read_error)? {
            content += 1;
        }
    }
    // Read to the end of the gzip stream: the CRC and length trailer is only checked there, and a
    // bundle cut short right after tar's end marker must still count as truncated.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(read_error)?;
    if content == 0 {
        return Err(BundleError::Empty);
    }
    Ok(stats)
}

/// Writes one entry below `root`. Returns whether it was content (not the root itself or a pax
/// global header), so an archive of only those can be reported as empty.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    root: &Path,
    max_bytes: u64,
    stats: &mut UnpackStats,
    read_error: &dyn Fn(io::Error) -> BundleError,
) -> Result<bool, BundleError> {
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        // `git archive` writes one carrying the commit id; it describes no file.
        return Ok(false);
    }
    let raw = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let refuse = |reason: &str| BundleError::Unsafe {
        path: shown.clone(),
        reason: reason.to_string(),
    };
    let comps = relative_components(&raw).map_err(refuse)?;
    let Some((name, parents)) = comps.split_last() else {
        return if kind.is_dir() {
            Ok(false) // "./": the root, which exists already
        } else {
            Err(refuse("entry has an empty path"))
        };
    };

    match kind {
        EntryType::Directory => {
            make_dirs(root, &comps, &shown)?;
        }
        EntryType::Regular | EntryType::Continuous => {
            let size = entry.size();
            if stats.bytes.saturating_add(size) > max_bytes {
                return Err(BundleError::TooLarge { limit: max_bytes });
            }
            let path = make_dirs(root, parents, &shown)?.join(name);
            let exec = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            let mode = if exec { 0o755 } else { 0o644 };
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => refuse("duplicate entry"),
                    _ => BundleError::Io {
                        context: format!("creating {}", path.display()),
                        source: e,
                    },
                })?;
            let written = copy_entry(entry, &mut file, &path, read_error)?;
            if written != size {
                return Err(BundleError::Corrupt(format!(
                    "entry {shown:?} is truncated ({written} of {size} bytes)"
                )));
            }
            // The mode given to `open` went through the umask; set it exactly.
            set_mode(&path, mode)?;
            let mtime = entry.header().mtime().ok();
            if let Some(t) = mtime.and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))) {
                file.set_modified(t).map_err(BundleError::io(format!(
                    "setting mtime of {}",
                    path.display()
                )))?;
            }
            stats.files += 1;
            stats.bytes += written;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("symlink without a target"))?
                .into_owned();
            check_link_target(parents.len(), &target).map_err(|r| refuse(&r))?;
            let path = make_dirs(root, parents, &shown)?.join(name);
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(|e| {
                match e.kind() {
                    io::ErrorKind::AlreadyExists => refuse("duplicate entry"),
                    _ => BundleError::Io {
                        context: format!("creating symlink {}", path.display()),
                        source: e,
                    },
                }
            })?;
        }
        EntryType::Link => return Err(refuse("hard links are not allowed")),
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            return Err(refuse("devices and fifos are not allowed"));
        }
        other => return Err(refuse(&format!("unsupported entry type {other:?}"))),
    }
    Ok(true)
}

/// Splits an entry path into its normal components, dropping `.` and empty ones. Refuses what
/// could land outside the root; the caller reports the reason with the path.
fn relative_components(raw: &[u8]) -> Result<Vec<&OsStr>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut comps = Vec::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path contains `..`"),
            name => comps.push(OsStr::from_bytes(name)),
        }
    }
    Ok(comps)
}

/// A symlink at depth `depth` (number of directories between the root and the link) may point
/// to `../` × k followed by plain names, with k ≤ depth.
///
/// This is stricter than lexical resolution on purpose: `..` after a name is refused, because
/// that name may itself be a symlink (now or later in the archive), and the kernel resolves
/// `link/..` from the link's target, not lexically. With `..` only in front, every `..` climbs a
/// real directory (entry paths never go through symlinks), and every name that is a symlink is
/// itself contained, so resolution can never leave the tree.
fn check_link_target(depth: usize, target: &[u8]) -> Result<(), String> {
    if target.is_empty() {
        return Err("symlink has an empty target".into());
    }
    let shown = String::from_utf8_lossy(target);
    if target[0] == b'/' {
        return Err(format!("symlink target {shown:?} is absolute"));
    }
    let mut ups = 0;
    let mut seen_name = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if seen_name => {
                return Err(format!(
                    "symlink target {shown:?} has `..` after a name; use a path with `..` only at the start"
                ));
            }
            b".." => ups += 1,
            _ => seen_name = true,
        }
    }
    if ups > depth {
        return Err(format!(
            "symlink target {shown:?} points outside the bundle"
        ));
    }
    Ok(())
}

/// Makes sure each of `comps` below `root` is a real directory, creating missing ones (0o755).
/// An existing symlink or file on the way is refused: that is how archives smuggle writes out of
/// the tree (`link -> /etc`, then `link/passwd`).
fn make_dirs(root: &Path, comps: &[&OsStr], shown: &str) -> Result<PathBuf, BundleError> {
    let mut path = root.to_path_buf();
    for comp in comps {
        path.push(comp);
        match path.symlink_metadata() {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "a file"
                };
                let inside = path.strip_prefix(root).unwrap_or(&path);
                return Err(BundleError::Unsafe {
                    path: shown.to_string(),
                    reason: format!("path goes through {what} ({})", inside.display()),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&path)
                    .map_err(BundleError::io(format!("creating {}", path.display())))?;
                set_mode(&path, 0o755)?;
            }
            Err(e) => {
                return Err(BundleError::Io {
                    context: format!("checking {}", path.display()),
                    source: e,
                })
            }
        }
    }
    Ok(path)
}

/// Copies an entry's data, telling read errors (a damaged stream, the size meter) from write
/// errors (local disk). Returns the byte count so the caller can spot a truncated entry: tar
/// ends an entry's data quietly when the stream ends early.
fn copy_entry(
    entry: &mut impl Read,
    file: &mut File,
    path: &Path,
    read_error: &dyn Fn(io::Error) -> BundleError,
) -> Result<u64, BundleError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_error(e)),
        };
        file.write_all(&buf[..n])
            .map_err(BundleError::io(format!("writing {}", path.display())))?;
        total += n as u64;
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BundleError> {
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(BundleError::io(format!(
        "setting permissions of {}",
        path.display()
    )))
}

/// Packs `dir` into a gzip'd tar written to `writer`, as `berth deploy` uploads it.
///
/// Walks like git sees the tree: `.gitignore` (also outside a git repository), `.ignore`,
/// `.git/info/exclude` and the global gitignore are honoured, `.git` is skipped, other hidden
/// files (`.env.example`, `.python-version`) are kept. Symlinks are stored as symlinks. Entries
/// are sorted by name, paths are relative, permission bits and mtimes are kept, owners are 0.
pub fn pack(dir: &Path, writer: impl Write) -> Result<PackStats, BundleError> {
    let mut builder = tar::Builder::new(GzEncoder::new(writer, Compression::default()));
    let walker = ignore::WalkBuilder::new(dir)
        .hidden(false)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .sort_by_file_name(|a, b| a.cmp(b))
        .build();
    let mut stats = PackStats::default();
    for item in walker {
        let item = item.map_err(|e| BundleError::Io {
            context: format!("walking {}", dir.display()),
            source: io::Error::other(e.to_string()),
        })?;
        if item.depth() == 0 {
            continue;
        }
        let path = item.path();
        let rel = path.strip_prefix(dir).unwrap_or(path);
        let meta = path
            .symlink_metadata()
            .map_err(BundleError::io(format!("reading {}", path.display())))?;
        let written = format!("adding {} to the bundle", path.display());
        let mut header = Header::new_gnu();
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(meta.mode() & 0o777);
        let ft = meta.file_type();
        if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, rel, io::empty())
                .map_err(BundleError::io(written))?;
        } else if ft.is_file() {
            let size = meta.len();
            header.set_entry_type(EntryType::Regular);
            header.set_size(size);
            let file =
                File::open(path).map_err(BundleError::io(format!("opening {}", path.display())))?;
            let data = Exact {
                inner: file.take(size),
                left: size,
            };
            builder
                .append_data(&mut header, rel, data)
                .map_err(BundleError::io(written))?;
            stats.files += 1;
            stats.bytes += size;
        } else if ft.is_symlink() {
            let target = fs::read_link(path)
                .map_err(BundleError::io(format!("reading link {}", path.display())))?;
            header.set_entry_type(EntryType::Symlink);
            header.set_size(0);
            builder
                .append_link(&mut header, rel, &target)
                .map_err(BundleError::io(written))?;
        } else {
            tracing::warn!(path = %path.display(), "skipping a socket, fifo or device");
        }
    }
    let gz = builder
        .into_inner()
        .map_err(BundleError::io("finishing the bundle"))?;
    gz.finish()
        .map_err(BundleError::io("finishing the bundle"))?;
    Ok(stats)
}

/// Yields exactly the size promised in the tar header. tar's builder copies whatever the reader
/// gives, so a file that shrank while packing would corrupt the archive; here it is an error.
/// (A file that grew is cut at its `take`.)
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while it was being packed",
            ));
        }
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

/// The tar crate's messages can quote raw header bytes: keep what a terminal can show safely,
/// so an upload cannot put escape sequences into the user's terminal through an error.
fn printable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(300)
        .collect();
    if s.chars().count() > 300 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests;
