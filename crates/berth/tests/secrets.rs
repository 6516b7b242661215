//! berth's own secrets stay its own: the admin token never appears in its output, and the
//! modes of the token, the store, the CA key and their directories are restored at every start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::BIN;
use std::os::unix::fs::PermissionsExt;
use test_support::Berth;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn secrets_are_never_printed_and_their_modes_come_back_at_start() {
    let mut b = Berth::start(BIN, "");
    assert!(!b.token.is_empty());
    assert!(
        !b.stderr().contains(&b.token),
        "the admin token is in berth's output:\n{}",
        b.stderr()
    );
    let data = b.path("data");
    // A careless copy or chmod loosens everything.
    let loosen = [
        ("admin-token", 0o644),
        ("berth.db", 0o664),
        ("ca/root.key", 0o644),
        ("ca", 0o755),
    ];
    for (rel, m) in loosen {
        std::fs::set_permissions(data.join(rel), std::fs::Permissions::from_mode(m)).unwrap();
    }
    b.crash_and_restart(BIN);
    for (rel, want) in [
        ("admin-token", 0o600),
        ("berth.db", 0o600),
        ("ca/root.key", 0o600),
        ("ca", 0o700),
    ] {
        assert_eq!(
            mode(&data.join(rel)),
            want,
            "{rel} is {:o}",
            mode(&data.join(rel))
        );
    }
    // The same token still works: nothing was replaced, only tightened.
    let (st, _) = common::apps::api(&b, "GET", "/api/v1/apps", "");
    assert_eq!(st, 200);
}
