#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bad input always gets a clear error — a 4xx status and a JSON `{"error": ...}` body — and
//! never loses data or leaves something half-written: API input checks (table-driven), hostile
//! and broken upload bundles, the CLI's exit codes and error lines, token scopes, and the
//! OpenAPI document against docs/api.md.

mod common;

use common::apps::*;
use common::BIN;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use test_support::{eventually, write_file, Berth};

// ---------------------------------------------------------------------------------------------
// Helpers (the ones the deploy tests share are in common::apps)
// ---------------------------------------------------------------------------------------------

/// `None` when (`st`, `v`) is an error answer with status `want` and a JSON body with a
/// non-empty one-line "error"; else a description of what is wrong.
fn error_problem(st: u16, v: &Value, want: u16) -> Option<String> {
    let msg = v.get("error").and_then(Value::as_str).unwrap_or("");
    if st != want {
        return Some(format!("status {st}, want {want}: {v}"));
    }
    if !v.is_object() {
        return Some(format!("body is not a JSON object: {v}"));
    }
    if msg.trim().is_empty() || msg.contains('\n') {
        return Some(format!("no one-line \"error\" message: {v}"));
    }
    if msg.chars().any(|c| c.is_control() || c == '\u{fffd}') {
        return Some(format!("the message has control or undecodable bytes: {v}"));
    }
    None
}

fn assert_error(st: u16, v: &Value, want: u16, what: &str) -> String {
    if let Some(p) = error_problem(st, v, want) {
        panic!("{what}: {p}");
    }
    v["error"].as_str().unwrap().to_string()
}

/// (method, path, body, wanted status).
type Case = (&'static str, String, String, u16);

/// A table of (method, path, body, wanted status): run every case, then fail once listing
/// every case that went wrong.
fn run_table(b: &Berth, cases: &[Case]) {
    let mut failures = Vec::new();
    for (method, path, body, want) in cases {
        let (st, v) = api(b, method, path, body);
        eprintln!("{method} {path} {body} -> {st} {v}");
        if let Some(p) = error_problem(st, &v, *want) {
            failures.push(format!("{method} {path} {body}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn case(method: &'static str, path: &str, body: &str, want: u16) -> Case {
    (method, path.to_string(), body.to_string(), want)
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every path below `dir` (not following symlinks) whose file name is `name`.
fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_name() == name {
            out.push(p.clone());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(find_named(&p, name));
        }
    }
    out
}

/// After a refused upload: no deploy, no release, no files in the releases dir, no deploy log,
/// no leftover spool file.
fn assert_nothing_recorded(b: &Berth, app: &str, what: &str) {
    let (st, rels) = api(b, "GET", &format!("/api/v1/apps/{app}/releases"), "");
    assert_eq!((st, rels.clone()), (200, json!([])), "{what}: releases");
    let (st, deps) = api(b, "GET", &format!("/api/v1/apps/{app}/deploys"), "");
    assert_eq!((st, deps.clone()), (200, json!([])), "{what}: deploys");
    let left = entries(&b.path(&format!("data/apps/{app}/releases")));
    assert!(left.is_empty(), "{what}: left in releases/: {left:?}");
    let logs = entries(&b.path(&format!("data/apps/{app}/deploys")));
    assert!(logs.is_empty(), "{what}: deploy logs: {logs:?}");
    let spool = entries(&b.path("data/tmp"));
    assert!(spool.is_empty(), "{what}: left in tmp/: {spool:?}");
}

// ---------------------------------------------------------------------------------------------
// 1. API input errors
// ---------------------------------------------------------------------------------------------

#[test]
fn api_errors_have_a_status_and_a_json_message() {
    let b = Berth::start(BIN, "");
    for app in ["a", "c"] {
        create_app(&b, app);
    }
    // `a` is a live static site (for scale and another app's deploy id); `c` never deployed.
    let bundle = static_site(&b, "site");
    let a_deploy = deploy_ok(&b, &b.token, "a", &bundle);
    eventually(T, "a to be live", || {
        let (_, v) = api(&b, "GET", "/api/v1/apps/a", "");
        (v["live_release"] == 1).then_some(())
    });

    // Unknown app on every app endpoint: 404.
    let n = "/api/v1/apps/nope";
    let mut cases = vec![
        case("GET", n, "", 404),
        case("DELETE", n, "", 404),
        case("GET", &format!("{n}/deploys"), "", 404),
        case("GET", &format!("{n}/deploys/{a_deploy}"), "", 404),
        case("GET", &format!("{n}/deploys/{a_deploy}/log"), "", 404),
        case("GET", &format!("{n}/releases"), "", 404),
        case("POST", &format!("{n}/rollback"), "{}", 404),
        case("POST", &format!("{n}/rollback"), r#"{"version":1}"#, 404),
        case("GET", &format!("{n}/env"), "", 404),
        case("PATCH", &format!("{n}/env"), r#"{"set":{"A":"1"}}"#, 404),
        case("PUT", &format!("{n}/formation"), r#"{"web":1}"#, 404),
        case("GET", &format!("{n}/domains"), "", 404),
        case(
            "POST",
            &format!("{n}/domains"),
            r#"{"host":"x.example.com"}"#,
            404,
        ),
        case("DELETE", &format!("{n}/domains/x.example.com"), "", 404),
        case("GET", &format!("{n}/instances"), "", 404),
        case("GET", &format!("{n}/logs"), "", 404),
        // A token for an unknown app, an unknown token.
        case(
            "POST",
            "/api/v1/tokens",
            r#"{"name":"t","scope":"deploy","apps":["nope"]}"#,
            404,
        ),
        case("DELETE", "/api/v1/tokens/9999", "", 404),
    ];
    // Invalid app names: 422.
    let long = format!("a{}", "b".repeat(63));
    for name in [
        "",
        "UPPER",
        "-x",
        "x-",
        "a_b",
        "berth",
        long.as_str(),
        "../x",
    ] {
        cases.push(case(
            "POST",
            "/api/v1/apps",
            &json!({ "name": name }).to_string(),
            422,
        ));
    }
    // Duplicate app: 409.
    cases.push(case("POST", "/api/v1/apps", r#"{"name":"a"}"#, 409));
    // Malformed JSON bodies: 400.
    for body in ["{", "[]", r#"{"name":"x","bogus":1}"#, "", r#"{"name":5}"#] {
        cases.push(case("POST", "/api/v1/apps", body, 400));
    }
    for body in ["{", "5", r#"{"set":{},"bogus":1}"#, r#"{"set":{"A":1}}"#] {
        cases.push(case("PATCH", "/api/v1/apps/a/env", body, 400));
    }
    for body in ["{", "[]", r#"{"web":"x"}"#, r#"{"web":-1}"#] {
        cases.push(case("PUT", "/api/v1/apps/c/formation", body, 400));
    }
    for body in ["{", "[]", r#"{"host":"a.example.com","bogus":1}"#] {
        cases.push(case("POST", "/api/v1/apps/a/domains", body, 400));
    }
    for body in ["{", "[]", r#"{"versoin":1}"#, r#"{"version":"x"}"#] {
        cases.push(case("POST", "/api/v1/apps/a/rollback", body, 400));
    }
    for body in ["{", "[]", r#"{"name":"x","bogus":1}"#] {
        cases.push(case("POST", "/api/v1/tokens", body, 400));
    }
    // Env keys: 422, in `set` and in `unset`; and a patch with nothing in it.
    for key in ["1A", "A-B", "", "A B", "A=B"] {
        let body = json!({ "set": { "GOOD": "1", key: "v" } }).to_string();
        cases.push(case("PATCH", "/api/v1/apps/c/env", &body, 422));
        let body = json!({ "unset": [key] }).to_string();
        cases.push(case("PATCH", "/api/v1/apps/c/env", &body, 422));
    }
    cases.push(case("PATCH", "/api/v1/apps/c/env", "{}", 422));
    // Scale: an unknown process type of a live app, more than 100, nothing.
    cases.push(case(
        "PUT",
        "/api/v1/apps/a/formation",
        r#"{"nope":1}"#,
        422,
    ));
    cases.push(case(
        "PUT",
        "/api/v1/apps/c/formation",
        r#"{"web":101}"#,
        422,
    ));
    cases.push(case(
        "PUT",
        "/api/v1/apps/c/formation",
        r#"{"web":1,"worker":4000000}"#,
        422,
    ));
    cases.push(case("PUT", "/api/v1/apps/c/formation", "{}", 422));
    // Rollback: a missing version is 404; no earlier release is 422.
    cases.push(case(
        "POST",
        "/api/v1/apps/a/rollback",
        r#"{"version":99}"#,
        404,
    ));
    cases.push(case(
        "POST",
        "/api/v1/apps/c/rollback",
        r#"{"version":1}"#,
        404,
    ));
    cases.push(case("POST", "/api/v1/apps/a/rollback", "{}", 422));
    // Custom domains: invalid hosts 422, berth's own names 409.
    for host in [
        "nodot", "-a.com", "a..b", "", "a.com:80", "*.a.com", "a_b.com", "a b.com",
    ] {
        let body = json!({ "host": host }).to_string();
        cases.push(case("POST", "/api/v1/apps/a/domains", &body, 422));
    }
    cases.push(case(
        "POST",
        "/api/v1/apps/a/domains",
        r#"{"host":"berth.localhost"}"#,
        409,
    ));
    cases.push(case(
        "POST",
        "/api/v1/apps/a/domains",
        r#"{"host":"c.localhost"}"#,
        409,
    ));
    cases.push(case(
        "DELETE",
        "/api/v1/apps/a/domains/never.example.com",
        "",
        404,
    ));
    // A deploy id of another app: 404 (ids do not leak across apps), and an unknown id.
    cases.push(case(
        "GET",
        &format!("/api/v1/apps/c/deploys/{a_deploy}"),
        "",
        404,
    ));
    cases.push(case(
        "GET",
        &format!("/api/v1/apps/c/deploys/{a_deploy}/log"),
        "",
        404,
    ));
    cases.push(case("GET", "/api/v1/apps/a/deploys/99999", "", 404));
    // Tokens: a bad scope, a deploy token without apps, an empty name.
    cases.push(case(
        "POST",
        "/api/v1/tokens",
        r#"{"name":"t","scope":"root"}"#,
        422,
    ));
    cases.push(case(
        "POST",
        "/api/v1/tokens",
        r#"{"name":"t","scope":"deploy"}"#,
        422,
    ));
    cases.push(case("POST", "/api/v1/tokens", r#"{"name":""}"#, 422));
    // An unknown endpoint.
    cases.push(case("GET", "/api/v1/nope", "", 404));
    run_table(&b, &cases);

    // Nothing of the refused requests was written.
    let (_, apps) = api(&b, "GET", "/api/v1/apps", "");
    let names: Vec<&str> = apps
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"], "{apps}");
    let (_, env) = api(&b, "GET", "/api/v1/apps/c/env", "");
    assert_eq!(env, json!({}), "no half-applied env patch");
    let (_, c) = api(&b, "GET", "/api/v1/apps/c", "");
    let (_, a) = api(&b, "GET", "/api/v1/apps/a", "");
    assert!(
        c["formation"].get("web").is_none() && c["formation"].get("worker").is_none(),
        "no half-applied scale: {c}"
    );
    assert!(a["formation"].get("nope").is_none(), "{a}");
    assert_eq!(a["domains"], json!([]), "{a}");
    let (_, rels) = api(&b, "GET", "/api/v1/apps/a/releases", "");
    assert_eq!(
        rels.as_array().unwrap().len(),
        1,
        "no rollback release: {rels}"
    );
    let (_, deps) = api(&b, "GET", "/api/v1/apps/a/deploys", "");
    assert_eq!(
        deps.as_array().unwrap().len(),
        1,
        "no rollback deploy: {deps}"
    );
    let (_, toks) = api(&b, "GET", "/api/v1/tokens", "");
    assert_eq!(
        toks.as_array().unwrap().len(),
        1,
        "only the admin token: {toks}"
    );

    // Upper case is normalised, not refused: host names are case-insensitive, and berth stores
    // the lower-case form (as it does a trailing dot).
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/a/domains",
        r#"{"host":"UPPER.com"}"#,
    );
    assert_eq!((st, v.clone()), (201, json!(["upper.com"])), "{v}");
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/c/domains",
        r#"{"host":"upper.COM."}"#,
    );
    assert_error(st, &v, 409, "the same host in another spelling is taken");
    let (st, _) = api(&b, "DELETE", "/api/v1/apps/a/domains/upper.com", "");
    assert_eq!(st, 204);
}

/// Path and query parameters that do not parse, and a wrong method, must answer like every other
/// error: a status and `{"error": ...}` (docs/api.md: "Errors are {"error": ...}").
#[test]
fn unparsable_path_and_query_parameters_answer_json_errors() {
    let b = Berth::start(BIN, "");
    create_app(&b, "a");
    run_table(
        &b,
        &[
            case("GET", "/api/v1/apps/a/deploys/abc", "", 400),
            case("GET", "/api/v1/apps/a/deploys/abc/log", "", 400),
            case("DELETE", "/api/v1/tokens/abc", "", 400),
            case("GET", "/api/v1/apps/a/deploys?limit=x", "", 400),
            case("GET", "/api/v1/apps/a/logs?lines=-1", "", 400),
            case("GET", "/api/v1/apps/a/env?reveal=maybe", "", 400),
            case("PUT", "/api/v1/apps", "{}", 405),
        ],
    );
}

/// Removing a domain must accept the spelling that adding it accepted.
#[test]
fn a_domain_is_removed_by_any_spelling_that_added_it() {
    let b = Berth::start(BIN, "");
    create_app(&b, "a");
    let (st, v) = api(
        &b,
        "POST",
        "/api/v1/apps/a/domains",
        r#"{"host":"UPPER.com"}"#,
    );
    assert_eq!((st, v.clone()), (201, json!(["upper.com"])), "{v}");
    let (st, v) = api(&b, "DELETE", "/api/v1/apps/a/domains/UPPER.com", "");
    assert_eq!(st, 204, "{v}");
    let (_, v) = api(&b, "GET", "/api/v1/apps/a/domains", "");
    assert_eq!(v, json!([]));
}

// ---------------------------------------------------------------------------------------------
// 2. Upload errors: refused, and nothing recorded or written
// ---------------------------------------------------------------------------------------------

/// Hostile and broken tarballs, written with Python's `tarfile` (which writes whatever it is
/// given). Every one also holds a valid `index.html`, so only the bad entry can be the reason.
const EVIL_TARS: &str = r#"
import io, os, sys, tarfile
out, outside = sys.argv[1], sys.argv[2]
def mk(name, entries):
    with tarfile.open(os.path.join(out, name + ".tar.gz"), "w:gz", format=tarfile.GNU_FORMAT) as t:
        for kind, path, arg in [("file", "index.html", "<h1>ok</h1>")] + entries:
            ti = tarfile.TarInfo(path)
            ti.mode = 0o644
            if kind == "file":
                data = arg.encode()
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {"sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
                       "char": tarfile.CHRTYPE}[kind]
            ti.linkname = arg
            t.addfile(ti)
mk("dotdot", [("file", "../evil", "pwned")])
mk("dotdot_deep", [("file", "../../../evil", "pwned")])
mk("absolute", [("file", "/abs/path", "pwned")])
mk("absolute_outside", [("file", outside + "/evil", "pwned")])
mk("dotdot_inner", [("file", "a/../../evil", "pwned")])
mk("symlink_etc", [("sym", "link", "/etc"), ("file", "link/passwd", "pwned")])
mk("symlink_outside", [("sym", "link", outside), ("file", "link/evil", "pwned")])
mk("symlink_up", [("sym", "up", "../.."), ("file", "up/evil", "pwned")])
mk("symlink_dot_then_through", [("sym", "d", "."), ("file", "d/evil", "pwned")])
mk("hardlink", [("hard", "hl", "/etc/passwd")])
mk("fifo", [("fifo", "f", "")])
mk("chardev", [("char", "null", "")])
"#;

fn file_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// `data` compressed by the system gzip.
fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut v).unwrap();
    v
}

#[test]
fn refused_uploads_record_nothing_and_write_nothing() {
    let b = Berth::start(BIN, "");
    create_app(&b, "u");
    let passwd = file_bytes("/etc/passwd");
    let outside = tmpdir(&b, "outside");
    let evil = tmpdir(&b, "evil-tars");
    let out = Command::new("python3")
        .arg("-c")
        .arg(EVIL_TARS)
        .arg(&evil)
        .arg(&outside)
        .output()
        .unwrap();
    assert!(out.status.success(), "python: {}", text(&out));

    // A real bundle, for the truncated case.
    let real = tmpdir(&b, "real");
    python_app(&real, "real", 200);
    write_file(&real.join("data.bin"), &random_bytes(16 * 1024));
    let real_bundle = targz(&real);
    let half = real_bundle[..real_bundle.len() / 2].to_vec();

    let mut failures = Vec::new();
    let mut check = |what: &str, bytes: &[u8], want: Option<u16>, needle: &[&str]| {
        let (st, v) = upload_file(&b, "u", bytes);
        eprintln!("{what}: {st} {v}");
        let problem = match want {
            Some(w) => error_problem(st, &v, w),
            // Any 4xx (422 expected) with a JSON error.
            None if (400..500).contains(&st) => error_problem(st, &v, st),
            None => Some(format!("status {st}, want a 4xx: {v}")),
        };
        if let Some(p) = problem {
            failures.push(format!("{what}: {p}"));
        } else {
            let msg = v["error"].as_str().unwrap_or("");
            for n in needle {
                if !msg.contains(n) {
                    failures.push(format!("{what}: the error does not name {n:?}: {v}"));
                }
            }
        }
        assert_nothing_recorded(&b, "u", what);
    };

    check("empty body", b"", Some(400), &[]);
    check("not gzip", b"hello", Some(422), &["corrupt"]);
    check(
        "gzip of garbage",
        &gzip(&b"garbage! ".repeat(1000)),
        Some(422),
        &["corrupt"],
    );
    check("truncated bundle", &half, Some(422), &[]);
    for name in [
        "dotdot",
        "dotdot_deep",
        "absolute",
        "absolute_outside",
        "dotdot_inner",
        "symlink_etc",
        "symlink_outside",
        "symlink_up",
        "symlink_dot_then_through",
        "hardlink",
        "fifo",
        "chardev",
    ] {
        let bytes = std::fs::read(evil.join(format!("{name}.tar.gz"))).unwrap();
        check(name, &bytes, None, &[]);
    }

    // Broken manifests: 422 naming the file and the line.
    let m = tmpdir(&b, "manifests");
    let bundle_of = |name: &str, files: &[(&str, &str)]| {
        let d = m.join(name);
        for (f, content) in files {
            write_file(&d.join(f), content.as_bytes());
        }
        targz(&d)
    };
    let procfile = bundle_of(
        "procfile",
        &[
            ("Procfile", "# the web process\nweb python app.py\n"),
            ("app.py", "print(1)\n"),
        ],
    );
    check("broken Procfile", &procfile, Some(422), &["Procfile:2"]);
    let app_json = bundle_of(
        "appjson",
        &[
            ("Procfile", "web: python3 app.py\n"),
            ("app.json", r#"{"env": 5}"#),
        ],
    );
    check("broken app.json", &app_json, Some(422), &["app.json"]);
    let toml = bundle_of(
        "toml",
        &[
            ("Procfile", "web: python3 app.py\n"),
            (
                "berth.toml",
                "[deploy]\ndrain_timeout = \"5s\"\ndrain_timeot = \"1s\"\n",
            ),
        ],
    );
    check(
        "berth.toml unknown key",
        &toml,
        Some(422),
        &["berth.toml:3", "drain_timeot"],
    );
    let nothing = bundle_of("nothing", &[("README.md", "# hello\n")]);
    let (st, v) = upload_file(&b, "u", &nothing);
    eprintln!("nothing deployable: {st} {v}");
    if let Some(p) = error_problem(st, &v, 422) {
        failures.push(format!("nothing deployable: {p}"));
    } else if v["hint"].as_str().is_none_or(|h| !h.contains("Procfile")) {
        failures.push(format!("nothing deployable: no hint: {v}"));
    }
    assert_nothing_recorded(&b, "u", "nothing deployable");

    // Nothing escaped the release dir, anywhere.
    let found = find_named(b.dir.path(), "evil");
    assert!(found.is_empty(), "written outside: {found:?}");
    assert!(
        entries(&outside).is_empty(),
        "written outside: {:?}",
        entries(&outside)
    );
    assert!(!Path::new("/abs/path").exists(), "/abs/path was written");
    for p in ["/evil", "/tmp/evil"] {
        assert!(!Path::new(p).exists(), "{p} exists");
    }
    assert_eq!(file_bytes("/etc/passwd"), passwd, "/etc/passwd changed");
    assert!(
        failures.is_empty(),
        "{} uploads were not refused properly:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The app still deploys afterwards.
    deploy_ok(&b, &b.token, "u", &static_site(&b, "site"));
}

/// The hint of "nothing to run" is the manifest's hint, nothing more.
#[test]
fn nothing_deployable_has_a_clean_hint() {
    let b = Berth::start(BIN, "");
    create_app(&b, "u");
    let d = tmpdir(&b, "readme");
    write_file(&d.join("README.md"), b"# hello\n");
    let (st, v) = upload_file(&b, "u", &targz(&d));
    let msg = assert_error(st, &v, 422, "nothing deployable");
    assert!(msg.contains("nothing to run"), "{v}");
    assert_nothing_recorded(&b, "u", "nothing deployable");
    assert_eq!(
        v["hint"], "add a Procfile with `web: <command>`",
        "garbled hint: {v}"
    );
}

#[test]
fn an_upload_over_max_upload_is_413_and_leaves_nothing() {
    let b = Berth::start_with(BIN, "max_upload = \"64KiB\"", &[], "");
    create_app(&b, "big");
    let d = tmpdir(&b, "big");
    write_file(&d.join("index.html"), b"<h1>big</h1>\n");
    write_file(&d.join("noise.bin"), &random_bytes(200 * 1024));
    let bundle = targz(&d);
    assert!(
        bundle.len() > 200 * 1024,
        "incompressible: {}",
        bundle.len()
    );
    let (st, v) = upload_file(&b, "big", &bundle);
    let msg = assert_error(st, &v, 413, "oversized upload");
    assert_nothing_recorded(&b, "big", "oversized upload");
    // A bundle under the limit still deploys.
    deploy_ok(&b, &b.token, "big", &static_site(&b, "small"));
    assert!(
        msg.contains("64") && !msg.contains(" 0 MiB"),
        "the message names the limit: {msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The CLI
// ---------------------------------------------------------------------------------------------

/// stderr is `berth: <message>` and maybe `hint: <hint>` lines: exactly one `berth:` line.
fn error_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("berth: ")).collect();
    assert_eq!(lines.len(), 1, "one error line: {}", text(o));
    lines[0].to_string()
}

#[test]
fn cli_errors_have_exit_codes_and_one_line() {
    let b = Berth::start(BIN, "");
    // A broken Procfile: exit 1, one `berth: ...Procfile:2...` line, nothing deployed.
    let src = tmpdir(&b, "broken");
    write_file(
        &src.join("Procfile"),
        b"# the web process\nweb python app.py\n",
    );
    write_file(&src.join("app.py"), b"print(1)\n");
    let out = cli(&b, &["deploy", src.to_str().unwrap(), "-a", "cli"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("Procfile:2"), "{}", text(&out));
    let (st, rels) = api(&b, "GET", "/api/v1/apps/cli/releases", "");
    assert_eq!((st, rels), (200, json!([])));

    // env:set without '=': a usage error with a hint, nothing sent.
    let out = cli(&b, &["env:set", "NOEQUALS", "-a", "cli"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("NOEQUALS"), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\nhint: "),
        "{}",
        text(&out)
    );
    let (_, env) = api(&b, "GET", "/api/v1/apps/cli/env", "");
    assert_eq!(env, json!({}));

    // apps:destroy without --confirm refuses; so does a wrong --confirm.
    for args in [
        &["apps:destroy", "cli"][..],
        &["apps:destroy", "cli", "--confirm", "other"][..],
    ] {
        let out = cli(&b, args);
        assert_ne!(out.status.code(), Some(0), "{}", text(&out));
        error_line(&out);
        let (st, v) = api(&b, "GET", "/api/v1/apps/cli", "");
        assert_eq!(st, 200, "the app still exists: {v}");
    }

    // An unknown app: exit 1 with the server's message.
    let out = cli(&b, &["releases", "-a", "nope"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let line = error_line(&out);
    let (_, v) = api(&b, "GET", "/api/v1/apps/nope/releases", "");
    let server = v["error"].as_str().unwrap();
    assert!(line.contains(server), "{line:?} vs {server:?}");

    // An unreachable server: exit 3, one line.
    let out = cli(&b, &["apps", "--url", "http://127.0.0.1:1", "--token", "x"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let line = error_line(&out);
    assert!(line.contains("127.0.0.1:1"), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .all(|l| l.starts_with("berth: ") || l.starts_with("hint: ")),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Tokens and scopes
// ---------------------------------------------------------------------------------------------

#[test]
fn a_deploy_token_is_confined_to_its_apps_and_stored_hashed() {
    let b = Berth::start(BIN, "");
    for app in ["a", "b"] {
        create_app(&b, app);
    }
    let (st, tok) = api(
        &b,
        "POST",
        "/api/v1/tokens",
        r#"{"name":"ci","scope":"deploy","apps":["a"]}"#,
    );
    assert_eq!(st, 201, "{tok}");
    let secret = tok["token"].as_str().unwrap().to_string();
    let id = tok["id"].as_i64().unwrap();
    assert!(secret.len() > 20, "{tok}");
    assert_eq!(tok["scope"], "deploy");
    assert_eq!(tok["apps"], json!(["a"]));

    // It deploys its app.
    let site = static_site(&b, "site");
    deploy_ok(&b, &secret, "a", &site);
    let r = common::get(b.http, "a.localhost", "/");
    assert_eq!((r.status, r.text()), (200, "<h1>hi</h1>\n".to_string()));
    // It sees only its app.
    let (st, v) = api_as(&b, &secret, "GET", "/api/v1/apps", "application/json", b"");
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a"], "{v}");

    // Everything else: 403 with a JSON error.
    let mut forbidden: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", "/api/v1/apps".into(), br#"{"name":"x"}"#.to_vec()),
        ("DELETE", "/api/v1/apps/a".into(), vec![]),
        ("GET", "/api/v1/tokens".into(), vec![]),
        (
            "POST",
            "/api/v1/tokens".into(),
            br#"{"name":"x","scope":"admin"}"#.to_vec(),
        ),
        ("DELETE", format!("/api/v1/tokens/{id}"), vec![]),
        ("GET", "/api/v1/audit".into(), vec![]),
        ("GET", "/api/v1/routes".into(), vec![]),
        ("PUT", "/api/v1/routes".into(), b"[]".to_vec()),
        ("GET", "/metrics".into(), vec![]),
    ];
    let bapp = "/api/v1/apps/b";
    for (m, p, body) in [
        ("GET", "", ""),
        ("DELETE", "", ""),
        ("GET", "/deploys", ""),
        ("GET", "/deploys/1", ""),
        ("GET", "/deploys/1/log", ""),
        ("GET", "/releases", ""),
        ("POST", "/rollback", "{}"),
        ("GET", "/env", ""),
        ("GET", "/env?reveal=true", ""),
        ("PATCH", "/env", r#"{"set":{"A":"1"}}"#),
        ("PUT", "/formation", r#"{"web":2}"#),
        ("GET", "/domains", ""),
        ("POST", "/domains", r#"{"host":"b.example.com"}"#),
        ("DELETE", "/domains/b.example.com", ""),
        ("GET", "/instances", ""),
        ("GET", "/logs", ""),
    ] {
        forbidden.push((m, format!("{bapp}{p}"), body.as_bytes().to_vec()));
    }
    forbidden.push(("POST", format!("{bapp}/deploys"), site.clone()));
    let mut failures = Vec::new();
    for (m, p, body) in &forbidden {
        let ctype = if p.ends_with("/deploys") {
            "application/gzip"
        } else {
            "application/json"
        };
        let (st, v) = api_as(&b, &secret, m, p, ctype, body);
        if let Some(problem) = error_problem(st, &v, 403) {
            failures.push(format!("{m} {p}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "a deploy token got through:\n{}",
        failures.join("\n")
    );
    // Nothing changed for b, and a still exists.
    let (_, v) = api(&b, "GET", "/api/v1/apps/b/deploys", "");
    assert_eq!(v, json!([]));
    let (_, v) = api(&b, "GET", "/api/v1/apps/b/env", "");
    assert_eq!(v, json!({}));
    let (st, _) = api(&b, "GET", "/api/v1/apps/a", "");
    assert_eq!(st, 200);
    let (_, v) = api(&b, "GET", "/api/v1/tokens", "");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");

    // Revoked: 401 from then on.
    let (st, v) = api(&b, "DELETE", &format!("/api/v1/tokens/{id}"), "");
    assert_eq!(st, 204, "{v}");
    for (m, p) in [("GET", "/api/v1/apps/a"), ("GET", "/api/v1/apps")] {
        let (st, v) = api_as(&b, &secret, m, p, "application/json", b"");
        assert_error(st, &v, 401, "a revoked token");
    }
    let (st, v) = api_as(
        &b,
        &secret,
        "POST",
        "/api/v1/apps/a/deploys",
        "application/gzip",
        &site,
    );
    assert_error(st, &v, 401, "a revoked token deploys");
    let (_, v) = api(&b, "GET", "/api/v1/apps/a/deploys", "");
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // No token, a bad token.
    let r = common::get(b.admin, "127.0.0.1", "/api/v1/apps");
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    assert_error(r.status, &v, 401, "no token");
    let (st, v) = api_as(
        &b,
        "berth_nope",
        "GET",
        "/api/v1/apps",
        "application/json",
        b"",
    );
    assert_error(st, &v, 401, "a bad token");

    // The store holds hashes, never a plaintext token.
    for file in ["data/berth.db", "data/berth.db-wal"] {
        let Ok(bytes) = std::fs::read(b.path(file)) else {
            continue;
        };
        for s in [secret.as_str(), b.token.as_str()] {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{file} contains a plaintext token"
            );
        }
    }

    // The audit log.
    let (st, audit) = api(&b, "GET", "/api/v1/audit", "");
    assert_eq!(st, 200, "{audit}");
    for (action, target) in [
        ("app.create", "a"),
        ("app.create", "b"),
        ("token.create", "ci"),
        ("token.revoke", "ci"),
    ] {
        let found =
            audit.as_array().unwrap().iter().any(|e| {
                e["action"] == action && e["target"] == target && e["actor"] == "token:admin"
            });
        assert!(found, "no {action} {target} by token:admin in {audit:#}");
    }
    assert!(
        !audit.to_string().contains(&secret),
        "secret in the audit log"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. OpenAPI against docs/api.md
// ---------------------------------------------------------------------------------------------

/// (method, path) of every row of docs/api.md's endpoint table. "`GET`/`PUT /api/v1/routes`"
/// gives two.
fn documented_operations() -> Vec<(String, String)> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let mut ops = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cell = line[1..].split(" |").next().unwrap();
        let mut methods = Vec::new();
        for (i, seg) in cell.split('`').enumerate() {
            if i % 2 == 0 {
                continue;
            }
            match seg.split_once(' ') {
                None => methods.push(seg.to_string()),
                Some((m, p)) => {
                    methods.push(m.to_string());
                    for m in methods.drain(..) {
                        ops.push((m.to_ascii_lowercase(), p.trim().to_string()));
                    }
                }
            }
        }
        assert!(methods.is_empty(), "a method without a path: {line}");
    }
    ops
}

#[test]
fn openapi_lists_every_documented_endpoint() {
    let b = Berth::start(BIN, "");
    let (st, v) = api(&b, "GET", "/api/v1/openapi.json", "");
    assert_eq!(st, 200, "{v}");
    assert!(v.is_object(), "not JSON: {v}");
    assert!(
        v["openapi"].as_str().is_some_and(|s| s.starts_with("3.")),
        "{}",
        v["openapi"]
    );
    let ops = documented_operations();
    assert!(ops.len() >= 25, "parsed the table: {ops:?}");
    assert!(
        ops.contains(&("put".into(), "/api/v1/routes".into())),
        "{ops:?}"
    );
    assert!(
        ops.contains(&("get".into(), "/api/v1/routes".into())),
        "{ops:?}"
    );
    let paths = v["paths"].as_object().unwrap();
    let missing: Vec<String> = ops
        .iter()
        .filter(|(m, p)| paths.get(p).and_then(|o| o.get(m)).is_none())
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "documented but not in openapi.json: {missing:?}"
    );
    // And the other way round: nothing undocumented.
    let mut extra = Vec::new();
    for (p, item) in paths {
        for m in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "patch", "delete"].contains(&m.as_str())
                && !ops.contains(&(m.clone(), p.clone()))
            {
                extra.push(format!("{m} {p}"));
            }
        }
    }
    assert!(
        extra.is_empty(),
        "in openapi.json but not in docs/api.md: {extra:?}"
    );
    // The document needs a token like the rest.
    let r = common::get(b.admin, "127.0.0.1", "/api/v1/openapi.json");
    assert_eq!(r.status, 401);
}

// ---------------------------------------------------------------------------------------------
// Bugs found while writing the above (each fails until fixed)
// ---------------------------------------------------------------------------------------------

/// A corrupt bundle's error is a readable line, not the bundle's bytes.
#[test]
fn binary_garbage_gets_a_readable_error() {
    let b = Berth::start(BIN, "");
    create_app(&b, "u");
    let (st, v) = upload_file(&b, "u", &gzip(&b"\xff\n\x1b[31m".repeat(1000)));
    eprintln!("{st} {v}");
    assert_nothing_recorded(&b, "u", "binary garbage");
    if let Some(p) = error_problem(st, &v, 422) {
        panic!("binary garbage: {p}");
    }
}

/// A JSON array is not an object: `["hello"]` is not `{"name": "hello"}`.
#[test]
fn json_arrays_are_not_accepted_for_object_bodies() {
    let b = Berth::start(BIN, "");
    create_app(&b, "a");
    run_table(
        &b,
        &[
            case("PATCH", "/api/v1/apps/a/env", "[]", 400),
            case("PATCH", "/api/v1/apps/a/env", r#"[{"K":"v"}]"#, 400),
            case("POST", "/api/v1/apps", r#"["arr"]"#, 400),
            case(
                "POST",
                "/api/v1/apps/a/domains",
                r#"["x.example.com"]"#,
                400,
            ),
            case("POST", "/api/v1/tokens", r#"["t","deploy",["a"]]"#, 400),
        ],
    );
    let (_, apps) = api(&b, "GET", "/api/v1/apps", "");
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
}
