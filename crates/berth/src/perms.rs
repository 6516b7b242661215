//! At every start, the secrets in the data dir get their modes back (a restore from a backup, a
//! `cp -r`, an editor or a hand-made `chmod` may have loosened them): the admin token, the
//! store (env values in clear), the local CA's key and the ACME account and certificate keys
//! are 0600, their directories 0700. Only group and other bits are taken away; a file that is
//! missing is skipped, and anything that cannot be fixed is logged.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Files (relative to the data dir) that must be the owner's only.
const SECRET_FILES: [&str; 5] = [
    "admin-token",
    "berth.db",
    "berth.db-wal",
    "berth.db-shm",
    "ca/root.key",
];

/// Directories (relative to the data dir) that must be the owner's only.
const SECRET_DIRS: [&str; 3] = ["ca", "acme", "acme/certs"];

/// Tightens the data dir's secrets (see the module docs).
pub fn tighten(data: &Path) {
    for rel in SECRET_DIRS {
        restrict(&data.join(rel), 0o700);
    }
    for rel in SECRET_FILES {
        restrict(&data.join(rel), 0o600);
    }
    // ACME: account-<hash>.json and every certificate's directory and key.pem.
    let acme = data.join("acme");
    for entry in std::fs::read_dir(&acme).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("account-") && name.ends_with(".json") {
            restrict(&entry.path(), 0o600);
        }
    }
    for entry in std::fs::read_dir(acme.join("certs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        restrict(&entry.path(), 0o700);
        restrict(&entry.path().join("key.pem"), 0o600);
    }
}

/// Takes the bits outside `max` away from `path` (never through a symlink).
fn restrict(path: &Path, max: u32) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        tracing::warn!(path = %path.display(), "a secret of berth's is a symlink; left alone");
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !max == 0 {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & max)) {
        Ok(()) => tracing::warn!(
            path = %path.display(),
            "was mode {mode:o}, readable by others; changed it to {:o}",
            mode & max
        ),
        Err(e) => tracing::error!(path = %path.display(), "cannot tighten its mode {mode:o}: {e}"),
    }
}
