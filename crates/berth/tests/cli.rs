//! Issue 2, item 2: `berth check` (valid and invalid configs, file:line:reason, unknown keys),
//! `berth serve` falling back to defaults for keys a config leaves out, and the local CA (root
//! written to the data dir so `curl --cacert` verifies; a leaf issued per SNI host; reused on
//! restart); the CLI printing app output without terminal control sequences, and refusing a
//! data dir another user could have written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use test_support::{eventually, run, Berth, Reply, Upstream};

/// Run `berth check --config <path>`: (exit ok, stdout, stderr).
fn check(path: &Path) -> (bool, String, String) {
    run(BIN, &["check", "--config", path.to_str().unwrap()])
}

fn write_config(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let (cert, key) = self_signed("files.test");
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/origin.pem"), cert).unwrap();
    std::fs::write(dir.path().join("certs/origin.key"), key).unwrap();
    // The issue's example, verbatim apart from nothing: relative paths resolve against the file.
    let text = r#"
[server]
http = "127.0.0.1:8080"
https = "127.0.0.1:8443"
admin = "127.0.0.1:8081"        # admin API + /metrics, loopback by default
workers = 1                     # proxy worker threads (default: number of cores)
access_log = "stdout"           # or a file path, or "off"

[tls]
certs = [{ cert = "certs/origin.pem", key = "certs/origin.key" }]

[[route]]
host = "ci.example.test"        # exact host
upstreams = ["127.0.0.1:60000"]
https_redirect = true

[[route]]
host = "*.apps.example.test"    # wildcard for one label
upstreams = ["127.0.0.1:9001"]

[[route]]
host = "example.test"
path = "/api/"                  # longest matching prefix wins
strip_prefix = true
upstreams = ["127.0.0.1:8000", "127.0.0.1:8001"]
balance = "least_conn"          # default "round_robin"
health = { path = "/healthz", interval = "2s", timeout = "1s" }
max_body = "10MiB"

[[route]]
host = "example.test"
static = "www"
"#;
    let p = write_config(dir.path(), "berth.toml", text);
    let (ok, out, err) = check(&p);
    assert!(ok, "berth check rejected the issue's example: {out}{err}");
}

#[test]
fn check_rejects_invalid_configs_with_file_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    // (config text, line of the error, words the reason must contain)
    let cases: &[(&str, usize, &[&str])] = &[
        ("[server]\nhttp = \"nope\"\n", 2, &["nope"]),
        (
            "# comment\n[[route]]\nhost = \"a.test\"\nupstreams = [\"1.2.3.4\"]\n",
            4,
            &["upstream", "1.2.3.4"],
        ),
        (
            "[[route]]\nhost = \"a..test\"\nupstreams = [\"127.0.0.1:9\"]\n",
            2,
            &["host", "a..test"],
        ),
        ("\n\n[limits]\nupstream_timeout = \"ten\"\n", 4, &["ten"]),
        ("[limits]\nmax_body = \"10 parsecs\"\n", 2, &["10 parsecs"]),
        (
            "[[route]]\nhost = \"a.test\"\nupstreams = [\"127.0.0.1:9\"]\nbalance = \"random\"\n",
            4,
            &["random"],
        ),
        (
            "[[route]]\nhost = \"a.test\"\npath = \"api\"\nupstreams = [\"127.0.0.1:9\"]\n",
            3,
            &["api"],
        ),
        // TOML syntax error.
        ("[server\nhttp = 1\n", 1, &[]),
    ];
    for (i, (text, line, words)) in cases.iter().enumerate() {
        let name = format!("bad{i}.toml");
        let p = write_config(dir.path(), &name, text);
        let (ok, out, err) = check(&p);
        assert!(!ok, "berth check accepted {text:?}: {out}");
        let msg = format!("{out}{err}");
        let at = format!("{}:{line}", p.display());
        assert!(
            msg.contains(&at),
            "error for {text:?} does not name {at}: {msg}"
        );
        for w in *words {
            assert!(
                msg.contains(w),
                "error for {text:?} does not say {w:?}: {msg}"
            );
        }
    }
}

#[test]
fn check_rejects_routes_without_exactly_one_action() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let cases = [
        // Neither upstreams nor static.
        "[[route]]\nhost = \"a.test\"\n",
        // Both.
        "[[route]]\nhost = \"a.test\"\nupstreams = [\"127.0.0.1:9\"]\nstatic = \"www\"\n",
    ];
    for text in cases {
        let p = write_config(dir.path(), "b.toml", text);
        let (ok, out, err) = check(&p);
        assert!(!ok, "berth check accepted {text:?}: {out}");
        assert!(
            err.contains(&format!("{}:1", p.display())),
            "error for {text:?} does not name the route's line: {err}"
        );
        assert!(err.contains("static") && err.contains("upstreams"), "{err}");
    }
}

#[test]
fn check_rejects_unknown_keys_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, usize, &str)] = &[
        ("[bogus]\nx = 1\n", 1, "bogus"),
        ("[server]\nhttp = \"127.0.0.1:0\"\nlisten = \"x\"\n", 3, "listen"),
        ("[limits]\nheader_timeout = \"1s\"\nheader_timout = \"1s\"\n", 3, "header_timout"),
        ("[tls]\nlocal_ca = true\nacme_email = \"a@b.c\"\n", 3, "acme_email"),
        (
            "[tls.acme]\ndirectory = \"https://ca.test/dir\"\nemial = \"a@b.c\"\n",
            3,
            "emial",
        ),
        (
            "[[route]]\nhost = \"a.test\"\nupstream = [\"127.0.0.1:9\"]\n",
            3,
            "upstream",
        ),
        (
            "[[route]]\nhost = \"a.test\"\nupstreams = [\"127.0.0.1:9\"]\nhealth = { path = \"/h\", intervall = \"2s\" }\n",
            4,
            "intervall",
        ),
        ("top_level = 1\n", 1, "top_level"),
    ];
    for (text, line, key) in cases {
        let p = write_config(dir.path(), "u.toml", text);
        let (ok, out, err) = check(&p);
        assert!(!ok, "berth check accepted unknown key {key:?}: {out}");
        assert!(
            err.contains(&format!("{}:{line}", p.display())),
            "unknown key {key:?}: error does not name line {line}: {err}"
        );
        assert!(
            err.contains(&format!("`{key}`")) || err.contains(&format!("\"{key}\"")),
            "unknown key {key:?} not named: {err}"
        );
    }
}

#[test]
fn check_rejects_a_missing_file_and_a_missing_static_dir() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let (ok, _, err) = check(&missing);
    assert!(!ok);
    assert!(err.contains("nope.toml"), "{err}");

    let p = write_config(
        dir.path(),
        "s.toml",
        "[server]\n\n[[route]]\nhost = \"a.test\"\nstatic = \"no-such-dir\"\n",
    );
    let (ok, out, err) = check(&p);
    assert!(
        !ok,
        "berth check accepted a static root that does not exist: {out}"
    );
    assert!(err.contains("no-such-dir"), "{err}");
    // Where: file:line:col of the route.
    assert!(err.contains("s.toml:3:1"), "{err}");
}

#[test]
fn serve_refuses_an_invalid_config_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(
        dir.path(),
        "berth.toml",
        "[server]\nhttp = \"127.0.0.1:0\"\nhttps = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\n[[route]]\nhost = \"a.test\"\nupstreamz = [\"127.0.0.1:9\"]\n",
    );
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", p.to_str().unwrap()])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started on an invalid config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:8", p.display())), "{err}");
    assert!(err.contains("upstreamz"), "{err}");
}

/// A config that sets only listeners, data dir and one route: everything else (TLS with the local
/// CA, the `localhost` base domain, limits, path "/", round robin) comes from the defaults.
#[test]
fn a_partial_config_falls_back_to_defaults() {
    let up = Upstream::start(Reply::Ok("app"));
    let b = Berth::start(
        BIN,
        &format!(
            "[[route]]\nhost = \"app.localhost\"\nupstreams = [\"{}\"]\n",
            up.addr
        ),
    );

    // [tls] omitted: the local CA is on, and curl verifies against its root.
    let (ok, out, err) = curl_https(&b, "app.localhost", "/x", &[]);
    assert!(ok, "curl --cacert failed: {err}");
    assert_eq!(out, "app");

    // `path` omitted: "/" matches every path.
    assert_eq!(
        get(b.http, "app.localhost", "/deep/er/path?q=1").status,
        200
    );

    // `domain` omitted: "localhost", so any *.localhost name gets a local-CA leaf even without a
    // route (and then berth's 404).
    let (ok, out, err) = curl_https(
        &b,
        "unrouted.localhost",
        "/",
        &["-o", "/dev/null", "-w", "%{http_code}"],
    );
    assert!(
        ok,
        "TLS for a *.localhost name without a route failed: {err}"
    );
    assert_eq!(out, "404");

    // [limits] omitted: documented defaults (32 KiB of headers → a 20 KiB header passes, a
    // 40 KiB one gets 431).
    let small = "a".repeat(20 * 1024);
    assert_eq!(
        get_with(b.http, "app.localhost", "/", &[("X-Big", &small)]).status,
        200
    );
    let big = "a".repeat(40 * 1024);
    assert_eq!(
        get_with(b.http, "app.localhost", "/", &[("X-Big", &big)]).status,
        431
    );

    // The route as berth understood it: defaults filled in.
    let r = admin_get(&b, "/api/v1/routes");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v[0]["path"], "/", "{v}");
    assert_eq!(v[0]["balance"], "round_robin", "{v}");
}

#[test]
fn local_ca_root_is_written_and_curl_verifies_against_it() {
    let up = Upstream::start(Reply::Ok("hello over tls"));
    let b = Berth::start(BIN, &route("app.localhost", &[up.addr], ""));
    let pem = std::fs::read_to_string(b.ca()).expect("local CA root written to the data dir");
    assert!(pem.contains("-----BEGIN CERTIFICATE-----"), "{pem}");
    let ca_text = {
        let (ok, out, err) = run(
            "openssl",
            &["x509", "-noout", "-text", "-in", b.ca().to_str().unwrap()],
        );
        assert!(ok, "{err}");
        out
    };
    assert!(ca_text.contains("CA:TRUE"), "root is not a CA: {ca_text}");

    let (ok, out, err) = curl_https(&b, "app.localhost", "/", &[]);
    assert!(ok, "curl --cacert <root> failed: {err}");
    assert_eq!(out, "hello over tls");

    // Without the root, the same request does not verify: it really is berth's own CA.
    let port = b.https.port();
    let (ok, _, _) = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "10",
            "--resolve",
            &format!("app.localhost:{port}:127.0.0.1"),
            &format!("https://app.localhost:{port}/"),
        ],
    );
    assert!(!ok, "curl verified berth's leaf without --cacert");
}

#[test]
fn local_ca_issues_a_leaf_per_sni_host() {
    let up = Upstream::start(Reply::Ok("x"));
    let b = Berth::start(
        BIN,
        &format!(
            "{}{}",
            route("one.localhost", &[up.addr], ""),
            route("two.localhost", &[up.addr], "")
        ),
    );
    let one = presented_cert(&b, "one.localhost");
    let two = presented_cert(&b, "two.localhost");
    assert!(
        one.contains("DNS:one.localhost"),
        "leaf for one.localhost: {one}"
    );
    assert!(
        !one.contains("two.localhost"),
        "leaf for one.localhost: {one}"
    );
    assert!(
        two.contains("DNS:two.localhost"),
        "leaf for two.localhost: {two}"
    );
    assert!(
        !two.contains("one.localhost"),
        "leaf for two.localhost: {two}"
    );
    assert!(!one.contains("CA:TRUE"), "leaf is a CA: {one}");
    // Both are issued by the root in the data dir.
    let (_, root, _) = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-subject",
            "-in",
            b.ca().to_str().unwrap(),
        ],
    );
    let root_subject = root
        .trim()
        .trim_start_matches("subject=")
        .trim()
        .to_string();
    for leaf in [&one, &two] {
        let issuer = leaf
            .lines()
            .find_map(|l| l.trim().strip_prefix("Issuer:"))
            .unwrap()
            .trim()
            .to_string();
        assert_eq!(
            issuer.replace(' ', ""),
            root_subject.replace(' ', ""),
            "leaf not issued by the local root"
        );
    }
    for host in ["one.localhost", "two.localhost"] {
        let (ok, out, err) = curl_https(&b, host, "/", &[]);
        assert!(ok && out == "x", "{host}: {err}");
    }
}

#[test]
fn local_ca_is_generated_once_and_reused_on_restart() {
    let up = Upstream::start(Reply::Ok("again"));
    let cfg = route("app.localhost", &[up.addr], "");
    let first = Berth::start(BIN, &cfg);
    let ca_dir = first.path("data/ca");
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                format!("data/ca/{}", e.file_name().to_string_lossy()),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let root = std::fs::read(first.ca()).unwrap();
    drop(first);

    // A second berth whose data dir already holds that CA keeps it.
    let refs: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_slice()))
        .collect();
    let second = Berth::start_with(BIN, "", &refs, &cfg);
    assert_eq!(
        std::fs::read(second.ca()).unwrap(),
        root,
        "the local CA was regenerated although the data dir had one"
    );
    let saved = second.path("old-root.pem");
    std::fs::write(&saved, &root).unwrap();
    let (ok, out, err) = curl_https_ca(&second, &saved, "app.localhost", "/", &[]);
    assert!(ok, "the old root no longer verifies: {err}");
    assert_eq!(out, "again");
}

/// The first terminal control in `out` other than plain SGR colour (`ESC [` digits/`;` `m`),
/// with what follows it, or None: ESC sequences, BEL, CR, other C0, DEL, C1 (UTF-8 `C2 80..9F`).
fn terminal_control(out: &[u8]) -> Option<String> {
    let around = |i: usize| String::from_utf8_lossy(&out[i..out.len().min(i + 24)]).into_owned();
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            0x1b => {
                let params = out[i + 1..]
                    .iter()
                    .skip(1)
                    .take_while(|b| b.is_ascii_digit() || **b == b';')
                    .count();
                let sgr = out.get(i + 1) == Some(&b'[') && out.get(i + 2 + params) == Some(&b'm');
                if !sgr {
                    return Some(format!("ESC at {i}: {:?}", around(i)));
                }
                i += 3 + params;
                continue;
            }
            b'\n' | b'\t' => {}
            b if b < 0x20 || b == 0x7f => return Some(format!("{b:#04x} at {i}: {:?}", around(i))),
            0xc2 if out.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b)) => {
                return Some(format!("C1 {:#04x} at {i}: {:?}", out[i + 1], around(i)))
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// An app whose release command and web process print a window title (OSC 0), a clear screen
/// and cursor home (CSI), a clipboard write (OSC 52), a bare CR and a C1 CSI: `berth deploy`,
/// `berth logs` and `berth builds:logs` print their text without any of it, colour kept.
#[test]
fn app_output_reaches_the_terminal_without_control_sequences() {
    use common::apps::{api, cli, deploy, python_app, text, tmpdir, wait_body};
    let b = Berth::start(BIN, "");
    let src = tmpdir(&b, "src");
    python_app(&src, "esc", 200);
    let evil = |tag: &str, colour: &str| {
        format!(
            r"printf '{tag}-start \033]0;{tag}-title\007 \033[2J\033[H over\rwrite \302\2332J \033]52;c;ZXZpbA==\033\\ \033[{colour}m{tag}-colour\033[0m {tag}-end\n'"
        )
    };
    std::fs::write(
        src.join("Procfile"),
        format!(
            "web: {}; exec python3 app.py\nrelease: {}\n",
            evil("web", "32"),
            evil("rel", "31")
        ),
    )
    .unwrap();

    let out = deploy(&b, "esc", &src);
    assert!(out.status.success(), "{}", text(&out));
    wait_body(&b, "esc", "esc v1");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("rel-start") && printed.contains("rel-end"),
        "the release command's line is not in the deploy's output: {}",
        text(&out)
    );
    assert!(
        printed.contains("\x1b[31mrel-colour\x1b[0m"),
        "SGR colour was dropped: {printed:?}"
    );
    if let Some(bad) = terminal_control(&out.stdout) {
        panic!("berth deploy printed {bad}; stdout: {printed:?}");
    }

    let (st, builds) = api(&b, "GET", "/api/v1/builds?app=esc", "");
    assert_eq!(st, 200, "{builds}");
    let id = builds[0]["id"].to_string();
    for args in [
        vec!["logs", "-a", "esc"],
        vec!["builds:logs", id.as_str()],
        vec!["builds:logs", id.as_str(), "-f"],
    ] {
        let want = if args[0] == "logs" {
            "web-end"
        } else {
            "rel-end"
        };
        let out = eventually(
            Duration::from_secs(30),
            &format!("{want} in {args:?}"),
            || {
                let out = cli(&b, &args);
                String::from_utf8_lossy(&out.stdout)
                    .contains(want)
                    .then_some(out)
            },
        );
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        if let Some(bad) = terminal_control(&out.stdout) {
            panic!(
                "berth {args:?} printed {bad}; stdout: {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

/// A `berth-data/listen.json` another user could have written — its directory owned by someone
/// else, or either writable by everyone — names a server the CLI must not trust: `berth apps`
/// run there with `BERTH_TOKEN` set fails with a clear error, and the server it names never hears
/// from the CLI (no token, no request). The same files owned by the user, not writable by
/// others, are used (the check is not merely refusing every data dir).
#[test]
fn a_listen_json_another_user_could_write_gets_no_token() {
    use std::os::unix::fs::PermissionsExt;
    const TOKEN: &str = "berth_secret_token_4711";
    const NOBODY: u32 = 65534;
    let fake = Upstream::start(Reply::Ok("[]"));
    // (case, data dir mode, listen.json mode, owner of both)
    let cases: &[(&str, u32, u32, Option<u32>)] = &[
        ("owned by nobody", 0o700, 0o600, Some(NOBODY)),
        ("data dir mode 0777", 0o777, 0o644, None),
        ("listen.json mode 0666", 0o755, 0o666, None),
        ("data dir group-writable", 0o770, 0o600, None),
        ("the user's own", 0o700, 0o600, None),
    ];
    for (case, dir_mode, file_mode, owner) in cases {
        let cwd = tempfile::tempdir().unwrap();
        let data = cwd.path().join("berth-data");
        std::fs::create_dir(&data).unwrap();
        let listen = data.join("listen.json");
        std::fs::write(
            &listen,
            format!(
                r#"{{"http":null,"https":null,"admin":"{}","pid":1}}"#,
                fake.addr
            ),
        )
        .unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(*dir_mode)).unwrap();
        std::fs::set_permissions(&listen, std::fs::Permissions::from_mode(*file_mode)).unwrap();
        if let Some(uid) = owner {
            std::os::unix::fs::chown(&listen, Some(*uid), Some(*uid)).unwrap();
            std::os::unix::fs::chown(&data, Some(*uid), Some(*uid)).unwrap();
        }
        let before = fake.count();
        let out = std::process::Command::new(BIN)
            .arg("apps")
            .current_dir(cwd.path())
            .env_remove("BERTH_URL")
            .env_remove("BERTH_DATA")
            .env_remove("BERTH_APP")
            .env("BERTH_TOKEN", TOKEN)
            .env("XDG_CONFIG_HOME", cwd.path().join("no-config"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let requests: Vec<String> = fake.requests.lock().unwrap()[before..]
            .iter()
            .map(|r| String::from_utf8_lossy(r).to_ascii_lowercase())
            .collect();
        if *case == "the user's own" {
            assert!(out.status.success(), "{case}: {stderr}");
            assert!(
                requests
                    .iter()
                    .any(|r| r.contains(&format!("authorization: bearer {TOKEN}"))),
                "{case}: the server was not asked with the token: {requests:?}"
            );
            continue;
        }
        assert!(
            requests.iter().all(|r| !r.contains("authorization")),
            "{case}: the token went to a server named by a listen.json another user could write: {requests:?}"
        );
        assert!(requests.is_empty(), "{case}: {requests:?}");
        assert_eq!(out.status.code(), Some(3), "{case}: {stderr}");
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("berth: ") && first.contains("listen.json"),
            "{case}: no clear error naming listen.json: {stderr}"
        );
        assert!(
            stderr.contains("hint: ") && stderr.contains("berth login"),
            "{case}: no hint: {stderr}"
        );
    }
}

/// Every `apps:*` command takes the app as its argument or with `-a`; naming two different
/// apps is refused with a hint, before anything is sent.
#[test]
fn apps_commands_take_the_app_as_argument_or_flag() {
    let b = Berth::start(BIN, "");
    let out = common::apps::cli(&b, &["apps:create", "hello"]);
    assert!(out.status.success(), "{}", common::apps::text(&out));
    for args in [
        &["apps:info", "hello"][..],
        &["apps:info", "-a", "hello"][..],
        &["apps:settings", "hello"][..],
        &["apps:settings", "-a", "hello"][..],
    ] {
        let out = common::apps::cli(&b, args);
        assert!(
            out.status.success(),
            "berth {args:?}: {}",
            common::apps::text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("hello"),
            "berth {args:?}"
        );
    }
    let out = common::apps::cli(&b, &["apps:info", "hello", "-a", "other"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::apps::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("two apps named"),
        "{}",
        common::apps::text(&out)
    );
}

/// A first deploy that fails keeps the app it created, and says so with how to remove it.
#[test]
fn a_failed_first_deploy_says_the_app_it_created_stays() {
    let b = Berth::start(BIN, "");
    let src = b.path("fresh");
    test_support::write_file(&src.join("Procfile"), b"web python3 app.py\n");
    let out = common::apps::cli(&b, &["deploy", src.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", common::apps::text(&out));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("Procfile"), "{said}");
    assert!(
        said.contains("fresh was created by this deploy and stays")
            && said.contains("berth apps:destroy fresh --confirm fresh"),
        "{said}"
    );
    let out = common::apps::cli(&b, &["apps"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("fresh"));
}

/// The CLI finds a local server from a project's subdirectory (the nearest `berth-data`
/// above), and `berth login https://berth.localhost:PORT` works with berth's CA although the
/// system resolver knows no `*.localhost` (the CLI maps them to loopback itself).
#[test]
fn the_cli_finds_the_server_upwards_and_logs_in_at_berth_localhost() {
    let b = Berth::start(BIN, "");
    let project = b.path("project");
    let deep = project.join("src/deep");
    std::fs::create_dir_all(&deep).unwrap();
    std::os::unix::fs::symlink(b.path("data"), project.join("berth-data")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let run = |dir: &Path, args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env_remove("BERTH_DATA")
            .env_remove("BERTH_URL")
            .env_remove("BERTH_TOKEN")
            .output()
            .unwrap()
    };
    let out = run(&deep, &["apps:create", "upwards"]);
    assert!(out.status.success(), "{}", common::apps::text(&out));
    let out = run(&deep, &["apps"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("upwards"),
        "{}",
        common::apps::text(&out)
    );

    let url = format!("https://berth.localhost:{}", b.https.port());
    let ca = b.ca().display().to_string();
    let out = run(
        home.path(),
        &["login", &url, "--token", &b.token, "--ca", &ca],
    );
    assert!(out.status.success(), "{}", common::apps::text(&out));
    // Saved: the next command in any directory talks to that server.
    let out = run(home.path(), &["apps"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("upwards"),
        "{}",
        common::apps::text(&out)
    );
}
