//! Issue 22, disk pressure: with berth's data dir on a small file system filled to the last
//! byte, the read-only API and the CLI's read commands still answer (no write on their path
//! may fail them), and all is well again once space is freed. Needs root (a tmpfs of its own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::*;
use common::BIN;
use std::io::Write;
use test_support::{eventually, write_file, Berth};

/// Fills the file system of `path`'s directory: writes `path` until it is full.
fn fill(path: &std::path::Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while f.write_all(&chunk).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.write_all(&[0u8]);
}

#[test]
fn read_only_calls_answer_on_a_full_disk() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let b = Berth::start_on_small_disk(BIN, 30, "");
    create_app(&b, "full");
    // A token never used yet: its first use records when (a write, which will fail).
    let token = deploy_token(&b, "full");
    fill(&b.path("data/filler"));

    let (st, v) = api(&b, "GET", "/api/v1/apps", "");
    assert_eq!(st, 200, "{v}");
    let (st, v) = api_as(&b, &token, "GET", "/api/v1/apps/full", "", b"");
    assert_eq!(st, 200, "{v}");
    let out = cli(&b, &["apps"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("full"));

    // Space again: writes work again.
    std::fs::remove_file(b.path("data/filler")).unwrap();
    create_app(&b, "after");
}

/// An app that floods its output fills its log files to their cap (`<file>` and 3 rotated
/// copies of 10 MiB), never the disk, and keeps answering.
#[test]
fn an_app_flooding_its_log_stays_under_its_cap_and_keeps_answering() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let b = Berth::start_on_small_disk(BIN, 120, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "flood", 200);
    write_file(
        &src.join("Procfile"),
        b"web: python3 app.py\nflood: yes 'a line that an app prints over and over, as fast as it can'\n",
    );
    let out = deploy(&b, "flood", &src);
    assert!(out.status.success(), "{}", text(&out));
    let logs = b.path("data/apps/flood/logs");
    let total = || -> u64 {
        std::fs::read_dir(&logs)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".flood."))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    // Until it has been rotated three times over: its whole cap is in use.
    eventually(
        std::time::Duration::from_secs(120),
        "the flood's log to fill its cap",
        || logs.join("flood.v1.flood.1.log.3").exists().then_some(()),
    );
    // While it goes on flooding.
    for _ in 0..50 {
        assert!(total() <= 4 * (10 << 20), "{} bytes", total());
        assert_eq!(app_get(&b, "flood", "/").0, 200);
    }
}

/// Log files of instances berth no longer has (left by a crash between an instance's end and
/// the removal of its files) are removed at the next start; the live ones and services' stay.
#[test]
fn stray_instance_logs_are_swept_at_start() {
    let mut b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "kept", 200);
    let out = deploy(&b, "kept", &src);
    assert!(out.status.success(), "{}", text(&out));
    let logs = b.path("data/apps/kept/logs");
    for stray in [
        "kept.v9.web.1.log",
        "kept.v9.web.1.log.2",
        "kept.v1.r3.web.2.log",
    ] {
        write_file(&logs.join(stray), b"old\n");
    }
    write_file(&logs.join("svc-db.log"), b"a service's\n");
    b.crash_and_restart(BIN);
    let mut left: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["kept.v1.web.1.log", "svc-db.log"]);
}
