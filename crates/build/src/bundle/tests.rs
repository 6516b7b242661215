use super::*;
use std::collections::BTreeMap;

/// One archive member, written with a raw header so tests can express what `tar::Builder`'s
/// safe setters refuse (`..`, absolute paths).
enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Fifo(&'a str),
    CharDev(&'a str),
    /// A pax global header with this much data (what `git archive` writes first).
    Global(usize),
}

fn raw_header(path: &str, kind: EntryType, size: u64, mode: u32, link: &str) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    let old = h.as_old_mut();
    old.name = [0; 100];
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname = [0; 100];
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    h
}

fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (h, data): (Header, Vec<u8>) = match *e {
            E::File(p, d, m) => (
                raw_header(p, EntryType::Regular, d.len() as u64, m, ""),
                d.to_vec(),
            ),
            E::Dir(p) => (raw_header(p, EntryType::Directory, 0, 0o755, ""), vec![]),
            E::Symlink(p, t) => (raw_header(p, EntryType::Symlink, 0, 0o777, t), vec![]),
            E::Hardlink(p, t) => (raw_header(p, EntryType::Link, 0, 0o644, t), vec![]),
            E::Fifo(p) => (raw_header(p, EntryType::Fifo, 0, 0o644, ""), vec![]),
            E::CharDev(p) => (raw_header(p, EntryType::Char, 0, 0o644, ""), vec![]),
            E::Global(n) => (
                raw_header(
                    "pax_global_header",
                    EntryType::XGlobalHeader,
                    n as u64,
                    0o644,
                    "",
                ),
                vec![b'\n'; n],
            ),
        };
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn targz(entries: &[E]) -> Vec<u8> {
    gz(&tar_bytes(entries))
}

/// Unpacks into `<tmp>/app` and checks that a refusal leaves the parent directory empty.
fn unpack_refused(archive: &[u8], max_bytes: u64) -> BundleError {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("app");
    let err = unpack(archive, &dest, max_bytes).expect_err("bundle should be refused");
    let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind after {err}: {left:?}");
    err
}

#[test]
fn hostile_archives_are_refused_and_leave_nothing_behind() {
    let good = targz(&[E::File("a.txt", b"hello", 0o644), E::Dir("d/")]);
    let cases: Vec<(&str, Vec<u8>, u64, &str)> = vec![
        (
            "parent",
            targz(&[E::File("../evil", b"x", 0o644)]),
            1 << 20,
            "unsafe",
        ),
        (
            "absolute",
            targz(&[E::File("/abs", b"x", 0o644)]),
            1 << 20,
            "unsafe",
        ),
        (
            "nested parent",
            targz(&[E::File("a/../../evil", b"x", 0o644)]),
            1 << 20,
            "unsafe",
        ),
        (
            "dir parent",
            targz(&[E::Dir("ok/"), E::Dir("ok/../../x/")]),
            1 << 20,
            "unsafe",
        ),
        (
            "absolute symlink then through it",
            targz(&[
                E::Symlink("link", "/etc"),
                E::File("link/passwd", b"x", 0o644),
            ]),
            1 << 20,
            "unsafe",
        ),
        (
            "through a contained symlink",
            targz(&[
                E::Dir("sub/"),
                E::Symlink("link", "sub"),
                E::File("link/f", b"x", 0o644),
            ]),
            1 << 20,
            "unsafe",
        ),
        (
            "symlink up and out",
            targz(&[E::Symlink("link", "../..")]),
            1 << 20,
            "unsafe",
        ),
        (
            "symlink one up",
            targz(&[E::Symlink("link", "..")]),
            1 << 20,
            "unsafe",
        ),
        (
            "nested symlink escapes",
            targz(&[E::Symlink("a/b/link", "../../../x")]),
            1 << 20,
            "unsafe",
        ),
        (
            "symlink dotdot after a name",
            targz(&[E::Symlink("a/l", "x/../../y")]),
            1 << 20,
            "unsafe",
        ),
        (
            "empty symlink",
            targz(&[E::Symlink("l", "")]),
            1 << 20,
            "unsafe",
        ),
        (
            "hard link",
            targz(&[E::File("a", b"x", 0o644), E::Hardlink("b", "a")]),
            1 << 20,
            "unsafe",
        ),
        ("fifo", targz(&[E::Fifo("f")]), 1 << 20, "unsafe"),
        (
            "char device",
            targz(&[E::CharDev("null")]),
            1 << 20,
            "unsafe",
        ),
        (
            "duplicate file",
            targz(&[E::File("a", b"x", 0o644), E::File("a", b"y", 0o644)]),
            1 << 20,
            "unsafe",
        ),
        (
            "file over a symlink",
            targz(&[E::Symlink("a", "b"), E::File("a", b"y", 0o644)]),
            1 << 20,
            "unsafe",
        ),
        (
            "file too big",
            targz(&[E::File("big", &[7; 2000], 0o644)]),
            1000,
            "too large",
        ),
        (
            "files too big together",
            targz(&[
                E::File("a", &[7; 600], 0o644),
                E::File("b", &[7; 600], 0o644),
            ]),
            1000,
            "too large",
        ),
        (
            "huge pax header",
            targz(&[E::Global(3 << 20)]),
            1000,
            "too large",
        ),
        (
            "not gzip",
            b"this is not a bundle".to_vec(),
            1 << 20,
            "corrupt",
        ),
        ("gzip of garbage", gz(&[0x55; 1024]), 1 << 20, "corrupt"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            1 << 20,
            "corrupt",
        ),
        (
            "trailer cut",
            good[..good.len() - 4].to_vec(),
            1 << 20,
            "corrupt",
        ),
        (
            "tar cut inside an entry",
            gz(&tar_bytes(&[E::File("f", &[1; 1000], 0o644)])[..700]),
            1 << 20,
            "corrupt",
        ),
        ("zero bytes", Vec::new(), 1 << 20, "corrupt"),
        ("empty archive", targz(&[]), 1 << 20, "empty"),
        (
            "only a global header",
            targz(&[E::Global(30), E::Dir("./")]),
            1 << 20,
            "empty",
        ),
    ];
    for (name, archive, max, want) in cases {
        let err = unpack_refused(&archive, max);
        let got = match &err {
            BundleError::Unsafe { .. } => "unsafe",
            BundleError::TooLarge { .. } => "too large",
            BundleError::Corrupt(_) => "corrupt",
            BundleError::Empty => "empty",
            _ => "other",
        };
        assert_eq!(got, want, "{name}: {err}");
    }
}

#[test]
fn refusal_names_the_entry() {
    let err = unpack_refused(&targz(&[E::File("a/../../evil", b"x", 0o644)]), 1 << 20);
    assert_eq!(
        err.to_string(),
        r#"refusing bundle entry "a/../../evil": path contains `..`"#
    );
    let err = unpack_refused(
        &targz(&[
            E::Symlink("link", "/etc"),
            E::File("link/passwd", b"x", 0o644),
        ]),
        1 << 20,
    );
    assert!(err.to_string().contains(r#""link""#), "{err}");
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[test]
fn too_many_entries() {
    let entries: Vec<E> = (0..=MAX_ENTRIES).map(|_| E::Global(0)).collect();
    let err = unpack_refused(&targz(&entries), 1 << 20);
    assert!(matches!(err, BundleError::TooManyEntries { .. }), "{err}");
}

#[test]
fn existing_dest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("app");
    fs::create_dir(&dest).unwrap();
    let err = unpack(
        targz(&[E::File("a", b"x", 0o644)]).as_slice(),
        &dest,
        1 << 20,
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::DestExists(_)), "{err}");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

fn mode_of(p: &Path) -> u32 {
    p.symlink_metadata().unwrap().permissions().mode() & 0o7777
}

#[test]
fn good_archive_unpacks_with_modes_and_safe_symlinks() {
    let archive = targz(&[
        E::Global(52),
        E::Dir("./"),
        E::Dir("./app/"),
        E::File("./app/run.sh", b"#!/bin/sh\necho hi\n", 0o775),
        E::File("app/lib/x/y.txt", b"data", 0o600),
        E::Dir("app/locked/"),
        E::Symlink("app/current", "lib/x"),
        E::Symlink("app/lib/x/up", "../../run.sh"),
        E::Symlink("top", "./app/./run.sh"),
        E::Symlink("dangling", "missing"),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("release");
    let stats = unpack(archive.as_slice(), &dest, 1 << 20).unwrap();
    assert_eq!(
        stats,
        UnpackStats {
            files: 2,
            bytes: 22
        }
    );
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no .partial left"
    );

    assert_eq!(mode_of(&dest), 0o755);
    assert_eq!(mode_of(&dest.join("app")), 0o755);
    assert_eq!(mode_of(&dest.join("app/lib/x")), 0o755);
    assert_eq!(mode_of(&dest.join("app/run.sh")), 0o755);
    assert_eq!(mode_of(&dest.join("app/lib/x/y.txt")), 0o644);
    assert_eq!(fs::read(dest.join("app/lib/x/y.txt")).unwrap(), b"data");
    assert_eq!(
        fs::read_link(dest.join("app/current")).unwrap(),
        Path::new("lib/x")
    );
    assert_eq!(fs::read(dest.join("app/current/y.txt")).unwrap(), b"data");
    assert_eq!(
        fs::read(dest.join("app/lib/x/up")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(fs::read(dest.join("top")).unwrap(), b"#!/bin/sh\necho hi\n");
    let mtime = dest.join("app/run.sh").metadata().unwrap().mtime();
    assert_eq!(mtime, 1_700_000_000);
}

/// Relative paths of everything below `root`, with what each is: a file's bytes and exec bit,
/// a directory, or a symlink's target.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = p.symlink_metadata().unwrap();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                let exec = m.permissions().mode() & 0o111 != 0;
                format!(
                    "{:?} exec={exec}",
                    String::from_utf8_lossy(&fs::read(&p).unwrap())
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

#[test]
fn pack_then_unpack_round_trips_minus_ignored_files() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let write = |rel: &str, data: &str| {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    write(".gitignore", "target/\n*.log\n");
    write(".ignore", "secret.txt\n");
    write(".env.example", "PORT=\n");
    write("Procfile", "web: ./run.sh\n");
    write("run.sh", "#!/bin/sh\n");
    fs::set_permissions(src.join("run.sh"), Permissions::from_mode(0o755)).unwrap();
    write("sub/.hidden", "h");
    write("sub/deep/file.txt", "deep");
    write("sub/.gitignore", "local-only\n");
    write("sub/local-only", "no");
    write("target/big.bin", "built");
    write("debug.log", "log");
    write("secret.txt", "s3cret");
    write(".git/config", "[core]\n");
    write(".git/HEAD", "ref: refs/heads/main\n");
    fs::create_dir_all(src.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("sub/deep", src.join("link")).unwrap();

    let mut first = Vec::new();
    let stats = pack(&src, &mut first).unwrap();
    let mut second = Vec::new();
    pack(&src, &mut second).unwrap();
    assert_eq!(first, second, "packing is deterministic");

    let dest = tmp.path().join("dest");
    let unpacked = unpack(first.as_slice(), &dest, 1 << 20).unwrap();
    assert_eq!(
        unpacked,
        UnpackStats {
            files: stats.files,
            bytes: stats.bytes
        }
    );

    let mut want = tree(&src);
    for gone in [
        ".git",
        ".git/config",
        ".git/HEAD",
        "target",
        "target/big.bin",
        "debug.log",
        "secret.txt",
        "sub/local-only",
    ] {
        assert!(want.remove(gone).is_some(), "{gone} was in the source");
    }
    assert_eq!(tree(&dest), want);
    assert_eq!(stats.files, 8);
    assert!(want.contains_key(".env.example"));
    assert_eq!(want["link"], "-> sub/deep");
}

#[test]
fn pack_stores_relative_sorted_paths() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("b"), "b").unwrap();
    fs::write(tmp.path().join("a"), "a").unwrap();
    fs::create_dir(tmp.path().join("c")).unwrap();
    fs::write(tmp.path().join("c/d"), "d").unwrap();
    let mut out = Vec::new();
    pack(tmp.path(), &mut out).unwrap();
    let mut archive = tar::Archive::new(GzDecoder::new(out.as_slice()));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a", "b", "c", "c/d"]);
}
