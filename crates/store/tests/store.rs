#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_store::*;
use rusqlite::Connection;

fn temp_store() -> (tempfile::TempDir, PathBuf, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("berth.db");
    let store = Store::open(&path).unwrap();
    (dir, path, store)
}

/// Every text value in every table, for "this string is stored nowhere" checks.
fn all_text(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let cols = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            for i in 0..cols {
                if let rusqlite::types::ValueRef::Text(b) = row.get_ref(i).unwrap() {
                    out.push(String::from_utf8_lossy(b).into_owned());
                }
            }
        }
    }
    out
}

fn count(path: &Path, table: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn reopen_keeps_data_and_migrations_are_idempotent() {
    let (_dir, path, store) = temp_store();
    store.create_app("web", "admin").unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert!(store.app("web").unwrap().is_some());
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.apps().unwrap().len(), 1);
    let v: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, berth_store::SCHEMA_VERSION);
}

#[test]
fn wal_mode_is_set() {
    let (_dir, path, _store) = temp_store();
    let mode: String = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path, store) = temp_store();
    drop(store);
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match Store::open(&path) {
        Err(StoreError::TooNew { found: 99, known }) if known == berth_store::SCHEMA_VERSION => {}
        other => panic!("expected TooNew, got {other:?}"),
    }
}

#[test]
fn apps_create_conflict_list_formation() {
    let store = Store::open_in_memory().unwrap();
    let a = store.create_app("web", "admin").unwrap();
    assert_eq!(a.name, "web");
    assert_eq!(a.live_release, None);
    assert!(a.formation.is_empty());
    assert!(matches!(
        store.create_app("web", "admin"),
        Err(StoreError::Conflict(_))
    ));
    store.create_app("api2", "admin").unwrap();
    let names: Vec<_> = store.apps().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["api2", "web"]);

    let f = BTreeMap::from([("web".to_string(), 3), ("worker".to_string(), 1)]);
    store.set_formation("web", &f, "admin").unwrap();
    assert_eq!(store.app("web").unwrap().unwrap().formation, f);
    let log = store.audit_log(1).unwrap();
    assert_eq!(log[0].action, "app.scale");
    assert_eq!(log[0].detail, "web=3 worker=1");

    assert!(matches!(
        store.set_formation("nope", &f, "admin"),
        Err(StoreError::NotFound(m)) if m == "app nope not found"
    ));
    assert!(store.app("nope").unwrap().is_none());
    assert!(matches!(
        store.set_live_release("web", Some(1)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn release_versions_increment_per_app() {
    let store = Store::open_in_memory().unwrap();
    store.create_app("a", "x").unwrap();
    store.create_app("b", "x").unwrap();
    let dir = Path::new("/data/releases/a/1");
    let r1 = store
        .create_release("a", dir, "{}", "first", None, ReleaseStatus::Building)
        .unwrap();
    let r2 = store
        .create_release("a", dir, "{}", "second", Some(1), ReleaseStatus::Ready)
        .unwrap();
    let b1 = store
        .create_release("b", dir, "{}", "b first", None, ReleaseStatus::Building)
        .unwrap();
    assert_eq!((r1.version, r2.version, b1.version), (1, 2, 1));
    assert_eq!(r2.source_release, Some(1));
    assert_eq!(r1.dir, dir);

    store
        .set_release_status("a", 1, ReleaseStatus::Failed)
        .unwrap();
    store
        .set_release_dir_spec("a", 1, Path::new("/elsewhere"), r#"{"p":1}"#)
        .unwrap();
    let r1 = store.release("a", 1).unwrap().unwrap();
    assert_eq!(r1.status, ReleaseStatus::Failed);
    assert_eq!(r1.dir, Path::new("/elsewhere"));
    assert_eq!(r1.spec, r#"{"p":1}"#);
    assert!(store.release("a", 9).unwrap().is_none());
    assert!(matches!(
        store.set_release_status("a", 9, ReleaseStatus::Ready),
        Err(StoreError::NotFound(_))
    ));
    let versions: Vec<_> = store
        .releases("a")
        .unwrap()
        .into_iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, [2, 1]);
}

#[test]
fn parallel_releases_do_not_collide() {
    let (_dir, path, store) = temp_store();
    store.create_app("web", "x").unwrap();
    let shared = Arc::new(store);
    // Half the threads share one handle, half use their own connection, to
    // cover both the mutex and SQLite's locking.
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let path = path.clone();
            std::thread::spawn(move || {
                let own = if i % 2 == 0 {
                    None
                } else {
                    Some(Store::open(&path).unwrap())
                };
                let store = own.as_ref().unwrap_or(&shared);
                (0..10)
                    .map(|_| {
                        store
                            .create_release(
                                "web",
                                Path::new("/r"),
                                "{}",
                                "",
                                None,
                                ReleaseStatus::Building,
                            )
                            .unwrap()
                            .version
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<i64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort();
    assert_eq!(all, (1..=80).collect::<Vec<_>>());
}

#[test]
fn deploy_lifecycle() {
    let store = Store::open_in_memory().unwrap();
    store.create_app("web", "x").unwrap();
    let d = store
        .create_deploy("web", DeployKind::Build, "alice", Path::new("/logs"))
        .unwrap();
    assert_eq!(d.status, DeployStatus::Queued);
    assert_eq!(d.step, "queued");
    assert_eq!(d.meta.trigger, "api");
    assert!(d.steps.is_empty());
    assert_eq!(d.log_path, PathBuf::from(format!("/logs/{}.log", d.id)));
    assert_eq!(store.unfinished_deploys().unwrap(), vec![d.clone()]);

    store.set_deploy_step(d.id, "test").unwrap();
    assert_eq!(
        store.deploy(d.id).unwrap().unwrap().status,
        DeployStatus::Running
    );
    store.set_deploy_step(d.id, "build").unwrap();
    store.set_deploy_release(d.id, 1).unwrap();
    assert!(store
        .finish_deploy(d.id, DeployStatus::Failed, Some("build failed"))
        .unwrap());
    // The first outcome stays.
    assert!(!store
        .finish_deploy(d.id, DeployStatus::Cancelled, None)
        .unwrap());
    let d = store.deploy(d.id).unwrap().unwrap();
    let steps: Vec<_> = d
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.status.as_str(), s.finished_at.is_some()))
        .collect();
    assert_eq!(
        steps,
        [("test", "succeeded", true), ("build", "failed", true)]
    );
    assert_eq!(d.step, "build");
    assert_eq!(d.release_version, Some(1));
    assert_eq!(d.status, DeployStatus::Failed);
    assert_eq!(d.reason.as_deref(), Some("build failed"));
    assert!(d.finished_at.is_some());
    assert!(store.unfinished_deploys().unwrap().is_empty());

    let d2 = store
        .create_deploy("web", DeployKind::Restart, "bob", Path::new("/logs"))
        .unwrap();
    let ids: Vec<_> = store
        .deploys("web", 10)
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, [d2.id, d.id]);
    assert_eq!(store.deploys("web", 1).unwrap().len(), 1);
    assert!(matches!(
        store.set_deploy_step(999, "x"),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn switch_live_is_atomic() {
    let store = Store::open_in_memory().unwrap();
    store.create_app("web", "x").unwrap();
    store.create_app("other", "x").unwrap();
    let r = store
        .create_release(
            "web",
            Path::new("/r"),
            "{}",
            "",
            None,
            ReleaseStatus::Building,
        )
        .unwrap();
    let d = store
        .create_deploy("web", DeployKind::Build, "alice", Path::new("/l"))
        .unwrap();
    let other_d = store
        .create_deploy("other", DeployKind::Build, "alice", Path::new("/l"))
        .unwrap();

    // Failures change nothing: missing release, deploy of another app.
    assert!(matches!(
        store.switch_live("web", d.id, 7),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.switch_live("web", other_d.id, r.version),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.app("web").unwrap().unwrap().live_release, None);
    assert_eq!(
        store.release("web", 1).unwrap().unwrap().status,
        ReleaseStatus::Building
    );
    assert_eq!(store.deploy(d.id).unwrap().unwrap().step, "queued");

    store.switch_live("web", d.id, r.version).unwrap();
    assert_eq!(store.app("web").unwrap().unwrap().live_release, Some(1));
    assert_eq!(
        store.release("web", 1).unwrap().unwrap().status,
        ReleaseStatus::Ready
    );
    let d = store.deploy(d.id).unwrap().unwrap();
    assert_eq!(d.step, "switched");
    assert_eq!(d.release_version, Some(1));
    let log = store.audit_log(1).unwrap();
    assert_eq!(
        (
            log[0].action.as_str(),
            log[0].actor.as_str(),
            log[0].detail.as_str()
        ),
        ("deploy.switch", "alice", "v1")
    );

    store.set_live_release("web", None).unwrap();
    assert_eq!(store.app("web").unwrap().unwrap().live_release, None);
}

#[test]
fn instances_upsert_and_delete() {
    let store = Store::open_in_memory().unwrap();
    store.create_app("web", "x").unwrap();
    let mut n = NewInstance {
        app: "web".into(),
        release_version: 1,
        proc_type: "web".into(),
        index: 0,
        port: Some(40001),
        pid: Some(1234),
        pid_start: Some(u64::from(u32::MAX) + 5),
        runtime_id: "web-1-web-0-a".into(),
        state: "starting".into(),
    };
    let i1 = store.upsert_instance(&n).unwrap();
    assert_eq!(i1.pid_start, Some(u64::from(u32::MAX) + 5));
    assert_eq!(i1.port, Some(40001));
    n.state = "running".into();
    let i2 = store.upsert_instance(&n).unwrap();
    assert_eq!((i2.id, i2.state.as_str()), (i1.id, "running"));
    assert_eq!(i2.started_at, i1.started_at);

    store
        .set_instance_state("web-1-web-0-a", "crashed", None, None)
        .unwrap();
    let i = &store.instances("web").unwrap()[0];
    assert_eq!((i.state.as_str(), i.pid), ("crashed", None));
    assert!(matches!(
        store.set_instance_state("nope", "running", None, None),
        Err(StoreError::NotFound(_))
    ));

    n.index = 1;
    n.runtime_id = "web-1-web-1-b".into();
    store.upsert_instance(&n).unwrap();
    n.release_version = 2;
    n.runtime_id = "web-2-web-1-c".into();
    store.upsert_instance(&n).unwrap();
    assert_eq!(store.all_instances().unwrap().len(), 3);
    store.delete_release_instances("web", 1).unwrap();
    assert_eq!(store.instances("web").unwrap().len(), 1);
    store.delete_instance("web-2-web-1-c").unwrap();
    store.delete_instance("web-2-web-1-c").unwrap();
    assert!(store.all_instances().unwrap().is_empty());
}

#[test]
fn domains() {
    let store = Store::open_in_memory().unwrap();
    store.create_app("a", "x").unwrap();
    store.create_app("b", "x").unwrap();
    store.add_domain("a", "a.example.com", "x").unwrap();
    store.add_domain("a", "www.a.example.com", "x").unwrap();
    assert!(matches!(
        store.add_domain("b", "a.example.com", "x"),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.add_domain("a", "a.example.com", "x"),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store.domains("a").unwrap(),
        ["a.example.com", "www.a.example.com"]
    );
    assert!(matches!(
        store.remove_domain("b", "a.example.com", "x"),
        Err(StoreError::NotFound(_))
    ));
    store.remove_domain("a", "a.example.com", "x").unwrap();
    store.add_domain("b", "a.example.com", "x").unwrap();
    assert_eq!(
        store.all_domains().unwrap(),
        [
            ("a".to_string(), "www.a.example.com".to_string()),
            ("b".to_string(), "a.example.com".to_string())
        ]
    );
}

#[test]
fn destroy_cascades() {
    let (_dir, path, store) = temp_store();
    store.create_app("web", "x").unwrap();
    store.create_app("keep", "x").unwrap();
    for app in ["web", "keep"] {
        store
            .create_release(app, Path::new("/r"), "{}", "", None, ReleaseStatus::Ready)
            .unwrap();
        store
            .create_deploy(app, DeployKind::Build, "x", Path::new("/l"))
            .unwrap();
        store
            .upsert_instance(&NewInstance {
                app: app.into(),
                release_version: 1,
                proc_type: "web".into(),
                runtime_id: format!("{app}-rt"),
                state: "running".into(),
                ..Default::default()
            })
            .unwrap();
        store
            .add_domain(app, &format!("{app}.example.com"), "x")
            .unwrap();
        store
            .update_env(
                app,
                &BTreeMap::from([("K".to_string(), "v".to_string())]),
                &[],
                "x",
            )
            .unwrap();
    }
    store.destroy_app("web", "x").unwrap();
    for t in ["apps", "releases", "deploys", "instances", "domains", "env"] {
        assert_eq!(count(&path, t), 1, "{t}");
    }
    assert!(store.app("web").unwrap().is_none());
    assert!(matches!(
        store.destroy_app("web", "x"),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.audit_log(1).unwrap()[0].action, "app.destroy");
}

#[test]
fn env_update_is_atomic_and_audit_has_no_values() {
    let (_dir, path, store) = temp_store();
    store.create_app("web", "x").unwrap();
    let secret = "s3cr3t-VALUE-do-not-log";
    let set = BTreeMap::from([
        ("DATABASE_URL".to_string(), secret.to_string()),
        ("PORT_HINT".to_string(), "8080".to_string()),
    ]);
    store.update_env("web", &set, &[], "alice").unwrap();
    store
        .update_env(
            "web",
            &BTreeMap::from([("NEW".to_string(), format!("{secret}-2"))]),
            &["PORT_HINT".to_string(), "MISSING".to_string()],
            "alice",
        )
        .unwrap();
    let env = store.env("web").unwrap();
    assert_eq!(
        env.keys().map(String::as_str).collect::<Vec<_>>(),
        ["DATABASE_URL", "NEW"]
    );
    assert_eq!(env["DATABASE_URL"], secret);

    let log = store.audit_log(10).unwrap();
    assert!(log
        .iter()
        .any(|e| e.action == "env.set" && e.detail == "DATABASE_URL,PORT_HINT"));
    assert!(log
        .iter()
        .any(|e| e.action == "env.unset" && e.detail == "PORT_HINT,MISSING"));
    let audit_text: Vec<String> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT actor || action || target || detail FROM audit")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!audit_text.is_empty());
    assert!(audit_text.iter().all(|t| !t.contains(secret)));

    // A failure part-way through (forced by a trigger) rolls everything back.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON env WHEN NEW.key = 'ZZZ' \
             BEGIN SELECT RAISE(ABORT, 'boom'); END;",
        )
        .unwrap();
    let before_audit = count(&path, "audit");
    let bad = BTreeMap::from([
        ("AAA".to_string(), "1".to_string()),
        ("ZZZ".to_string(), "2".to_string()),
    ]);
    assert!(store
        .update_env("web", &bad, &["NEW".to_string()], "alice")
        .is_err());
    assert_eq!(store.env("web").unwrap(), env);
    assert_eq!(count(&path, "audit"), before_audit);
}

#[test]
fn tokens() {
    let (dir, path, store) = temp_store();
    assert!(!store.has_tokens().unwrap());
    let (admin, admin_secret) = store
        .create_token("laptop", Scope::Admin, &[], "setup")
        .unwrap();
    let (ci, ci_secret) = store
        .create_token("ci", Scope::Deploy, &["web".to_string()], "laptop")
        .unwrap();
    assert!(store.has_tokens().unwrap());
    assert!(admin_secret.starts_with("berth_"));
    assert_eq!(admin_secret.len(), "berth_".len() + 64);
    assert!(admin_secret[6..]
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_ne!(admin_secret, ci_secret);

    assert_eq!(
        store.token_by_secret(&admin_secret).unwrap(),
        Some(admin.clone())
    );
    let found = store.token_by_secret(&ci_secret).unwrap().unwrap();
    assert_eq!(
        (found.scope, found.apps.clone()),
        (Scope::Deploy, vec!["web".to_string()])
    );
    assert_eq!(store.token_by_secret("berth_wrong").unwrap(), None);
    assert_eq!(store.token_by_secret("").unwrap(), None);

    store.revoke_token(ci.id, "laptop").unwrap();
    assert_eq!(store.token_by_secret(&ci_secret).unwrap(), None);
    store.revoke_token(ci.id, "laptop").unwrap();
    assert!(matches!(
        store.revoke_token(999, "laptop"),
        Err(StoreError::NotFound(_))
    ));
    let listed = store.tokens().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed[1].revoked_at.is_some());

    // The plaintext is stored nowhere: not in any column, not in the files.
    for secret in [&admin_secret, &ci_secret] {
        let hex = &secret[6..];
        assert!(all_text(&path).iter().all(|t| !t.contains(hex)));
        for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(hex.len()).any(|w| w == hex.as_bytes()));
        }
    }
    drop(dir);
}

#[test]
fn destroying_an_app_takes_it_out_of_deploy_tokens() {
    let (_dir, _path, store) = temp_store();
    store.create_app("a", "t").unwrap();
    store.create_app("b", "t").unwrap();
    let (_, both) = store
        .create_token("both", Scope::Deploy, &["a".into(), "b".into()], "t")
        .unwrap();
    let (_, only_a) = store
        .create_token("only-a", Scope::Deploy, &["a".into()], "t")
        .unwrap();
    store.destroy_app("a", "t").unwrap();
    // A new app named `a` is out of reach of the old tokens.
    store.create_app("a", "t").unwrap();
    assert_eq!(
        store.token_by_secret(&both).unwrap().unwrap().apps,
        vec!["b".to_string()]
    );
    assert!(store.token_by_secret(&only_a).unwrap().is_none(), "revoked");
}

/// A deploy id names one build forever: destroying the app with the newest ones (or reopening
/// the store) never hands them out again.
#[test]
fn deploy_ids_are_never_reused() {
    let (_dir, path, store) = temp_store();
    store.create_app("old", "x").unwrap();
    let mut last = 0;
    for _ in 0..3 {
        last = store
            .create_deploy("old", DeployKind::Build, "x", Path::new("/logs"))
            .unwrap()
            .id;
    }
    store.destroy_app("old", "x").unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    store.create_app("new", "x").unwrap();
    let d = store
        .create_deploy("new", DeployKind::Build, "x", Path::new("/logs"))
        .unwrap();
    assert!(
        d.id > last,
        "id {} was handed out again (last {last})",
        d.id
    );
}
