use super::*;

/// A release dir with the given files.
fn release(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    tmp
}

fn load_files(files: &[(&str, &str)]) -> Result<AppSpec, ManifestError> {
    load(release(files).path())
}

fn map<V: Clone>(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

#[test]
fn procfile_only_gets_defaults() {
    let spec = load_files(&[(
        "Procfile",
        "web: python3 app.py\nworker: python3 w.py\nrelease: ./migrate\n",
    )])
    .unwrap();
    assert_eq!(
        spec,
        AppSpec {
            kind: AppKind::Process,
            processes: map(&[
                ("web", "python3 app.py".into()),
                ("worker", "python3 w.py".into())
            ]),
            release_command: Some("./migrate".into()),
            postdeploy: None,
            build: None,
            test: None,
            runtime: RuntimeChoice::Auto,
            dockerfile: false,
            image: None,
            docker_build: None,
            services: BTreeMap::new(),
            service_env: BTreeMap::new(),
            container_port: None,
            swarm: Default::default(),
            hsts: None,
            health: HealthSpec {
                check: HealthCheck::Http { path: "/".into() },
                timeout: DEFAULT_HEALTH_TIMEOUT,
            },
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
            static_dir: None,
            formation: map(&[("web", 1), ("worker", 1)]),
            limits: Limits::default(),
            env: vec![],
            container: ContainerSettings::default(),
            warnings: vec![],
        }
    );
}

#[test]
fn everything_together_and_berth_toml_wins() {
    let spec = load_files(&[
        ("Procfile", "web: ./server\n"),
        (
            "app.json",
            r#"{"name": "x",
                "healthchecks": {"web": [{"path": "/from-app-json", "timeout": 7}]},
                "formation": {"web": {"quantity": 3}, "worker": {"quantity": 4}},
                "scripts": {"postdeploy": "./seed"},
                "env": {"SECRET": {"generator": "secret"}}}"#,
        ),
        (
            "berth.toml",
            "[health]\npath = \"/healthz\"\n[formation]\nweb = 2\n[processes]\nworker = \"./work\"\n[build]\ncommand = \"make\"\n[limits]\nmemory = \"1G\"\n",
        ),
    ])
    .unwrap();
    assert_eq!(
        spec.health.check,
        HealthCheck::Http {
            path: "/healthz".into()
        }
    );
    assert_eq!(
        spec.health.timeout,
        Duration::from_secs(7),
        "app.json timeout kept"
    );
    assert_eq!(spec.formation, map(&[("web", 2), ("worker", 4)]));
    assert_eq!(spec.postdeploy.as_deref(), Some("./seed"));
    assert_eq!(
        spec.build,
        Some(BuildSpec {
            command: "make".into(),
            timeout: DEFAULT_BUILD_TIMEOUT
        })
    );
    assert_eq!(spec.limits.memory, Some(1 << 30));
    assert!(spec.env[0].generator_secret);
    assert_eq!(spec.processes.len(), 2);
}

#[test]
fn tcp_health_check() {
    let spec = load_files(&[
        ("Procfile", "web: ./server\n"),
        ("app.json", r#"{"healthchecks": {"web": [{"path": "/x"}]}}"#),
        ("berth.toml", "[health]\ntcp = true\ntimeout = \"5s\"\n"),
    ])
    .unwrap();
    assert_eq!(
        spec.health,
        HealthSpec {
            check: HealthCheck::Tcp,
            timeout: Duration::from_secs(5)
        }
    );
}

#[test]
fn processes_from_berth_toml_alone() {
    let spec = load_files(&[(
        "berth.toml",
        "[processes]\nweb = \"python3 app.py\"\nrelease = \"./m\"\n",
    )])
    .unwrap();
    assert_eq!(spec.kind, AppKind::Process);
    assert_eq!(
        spec.processes,
        map(&[("web", "python3 app.py".to_string())])
    );
    assert_eq!(spec.release_command.as_deref(), Some("./m"));
}

#[test]
fn worker_only_app_has_no_web() {
    let spec = load_files(&[("Procfile", "worker: ./w\n"), ("index.html", "<p>docs</p>")]).unwrap();
    assert_eq!(spec.kind, AppKind::Process);
    assert_eq!(spec.static_dir, None);
    assert_eq!(spec.formation, map(&[("worker", 1)]));
}

#[test]
fn static_site_detection() {
    let spec = load_files(&[("index.html", "<h1>hi</h1>")]).unwrap();
    assert_eq!(spec.kind, AppKind::Static);
    assert_eq!(spec.static_dir, Some(PathBuf::from(".")));
    assert!(spec.processes.is_empty() && spec.formation.is_empty());

    // An empty Procfile defines nothing, so index.html still makes a static site.
    let spec = load_files(&[("Procfile", "# nothing yet\n"), ("index.html", "x")]).unwrap();
    assert_eq!(spec.kind, AppKind::Static);

    let spec = load_files(&[
        ("berth.toml", "[static]\ndir = \"public\"\n"),
        ("public/index.html", "x"),
        ("Procfile", "worker: ./w\n"),
    ])
    .unwrap();
    assert_eq!(spec.kind, AppKind::Static);
    assert_eq!(spec.static_dir, Some(PathBuf::from("public")));
    assert_eq!(spec.formation, map(&[("worker", 1)]));
}

#[test]
fn static_dir_must_exist_and_stay_inside() {
    let err = load_files(&[("berth.toml", "\n[static]\ndir = \"public\"\n")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "berth.toml:2: static dir \"public\" does not exist"
    );

    let err = load_files(&[
        ("berth.toml", "[static]\ndir = \"index.html\"\n"),
        ("index.html", ""),
    ])
    .unwrap_err();
    assert!(err.reason.contains("not a directory"), "{err}");

    let tmp = release(&[("berth.toml", "[static]\ndir = \"out\"\n")]);
    std::os::unix::fs::symlink("/tmp", tmp.path().join("out")).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(err.reason.contains("outside"), "{err}");
}

#[test]
fn nothing_deployable() {
    for files in [
        vec![],
        vec![("README.md", "hi")],
        vec![("Procfile", "release: ./migrate\n")],
        vec![
            ("app.json", "{}"),
            ("berth.toml", "[health]\npath = \"/\"\n"),
        ],
    ] {
        let err = load_files(&files).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Procfile: no Procfile, no [processes] in berth.toml and no index.html: nothing to run (hint: add a Procfile with `web: <command>`)"
        );
    }
}

#[test]
fn conflicts() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("Procfile", "\nweb: a\n"), ("berth.toml", "[processes]\nworker = \"w\"\nweb = \"b\"\n")],
            "berth.toml:3: process \"web\" is also defined in the Procfile (line 2); define it in one place",
        ),
        (
            &[("Procfile", "release: a\nweb: b\n"), ("berth.toml", "[processes]\nrelease = \"b\"\n")],
            "berth.toml:2: process \"release\" is also defined in the Procfile (line 1); define it in one place",
        ),
        (
            &[("Procfile", "web: a\n"), ("berth.toml", "[static]\ndir = \".\"\n")],
            "berth.toml:1: [static] and a web process both answer HTTP requests; keep one",
        ),
        (
            &[("Procfile", "web: a\n"), ("berth.toml", "[formation]\nweb = 1\nworker = 2\n")],
            "berth.toml:3: formation names process \"worker\", which is not in the Procfile or [processes]",
        ),
        (
            &[("Procfile", "web: a\n"), ("app.json", r#"{"formation": {"worker": {"quantity": 1}}}"#)],
            "app.json: formation names process \"worker\", which is not in the Procfile or [processes]",
        ),
        (
            &[("index.html", ""), ("berth.toml", "[formation]\nweb = 1\n")],
            "berth.toml:2: formation names process \"web\", which is not in the Procfile or [processes]",
        ),
    ];
    for (files, want) in cases {
        assert_eq!(load_files(files).unwrap_err().to_string(), *want);
    }
}

#[test]
fn errors_from_each_file_are_positioned() {
    let err = load_files(&[("Procfile", "web: a\nbroken\n")]).unwrap_err();
    assert_eq!(err.to_string(), "Procfile:2: expected `name: command`");
    let err =
        load_files(&[("Procfile", "web: a\n"), ("app.json", "{\n  \"env\": 1\n}")]).unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.line, err.col),
        (Path::new("app.json"), Some(2), Some(10))
    );
    let err = load_files(&[
        ("Procfile", "web: a\n"),
        ("berth.toml", "[deploy]\nstop = \"1s\"\n"),
    ])
    .unwrap_err();
    assert_eq!(
        (err.file.as_path(), err.line),
        (Path::new("berth.toml"), Some(2))
    );
    assert!(err.reason.contains("unknown field `stop`"), "{err}");
    let err = load_files(&[("Procfile", "web: \u{0}\u{ff}"), ("x", "")]).unwrap_err();
    assert_eq!(err.file, Path::new("Procfile"));
}

#[test]
fn non_utf8_and_huge_files_are_refused() {
    let tmp = release(&[]);
    std::fs::write(tmp.path().join("Procfile"), b"web: \xff\n").unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert!(err.to_string().starts_with("Procfile: not UTF-8"), "{err}");

    let tmp = release(&[]);
    std::fs::write(tmp.path().join("app.json"), vec![b' '; 2 << 20]).unwrap();
    let err = load(tmp.path()).unwrap_err();
    assert_eq!(err.to_string(), "app.json: file is larger than 1 MiB");
}

#[test]
fn display_formats() {
    let e = |line, col| ManifestError::at("app.json", line, col, "bad");
    assert_eq!(e(Some(4), Some(7)).to_string(), "app.json:4:7: bad");
    assert_eq!(e(Some(4), None).to_string(), "app.json:4: bad");
    assert_eq!(e(None, None).to_string(), "app.json: bad");
}

#[test]
fn json_round_trip() {
    let spec = load_files(&[
        ("Procfile", "web: ./s\nrelease: ./m\n"),
        ("app.json", r#"{"env": {"A": "1", "B": {"description": "b", "required": false}}}"#),
        (
            "berth.toml",
            "[build]\ncommand = \"make\"\ntimeout = \"90s\"\n[health]\ntcp = true\n[limits]\ncpu = 0.5\npids = 64\nmemory = \"64MiB\"\n[deploy]\nstop_grace = \"250ms\"\n",
        ),
    ])
    .unwrap();
    let json = spec.to_json();
    assert_eq!(AppSpec::from_json(&json).unwrap(), spec);
    assert!(json.contains("\"stop_grace_ms\":250"), "{json}");
    assert!(json.contains("\"check\":{\"type\":\"tcp\"}"), "{json}");

    let spec = load_files(&[("index.html", "")]).unwrap();
    let json = spec.to_json();
    assert_eq!(AppSpec::from_json(&json).unwrap(), spec);
    assert!(json.contains("\"kind\":\"static\""), "{json}");
    assert!(
        json.contains("\"check\":{\"type\":\"http\",\"path\":\"/\"}"),
        "{json}"
    );

    assert!(AppSpec::from_json("{}").is_err());
}

#[test]
fn a_dockerfile_runs_the_image_unless_the_manifest_says_process() {
    // The image's own command as `web`, even with an index.html around.
    let spec = load_files(&[("Dockerfile", "FROM scratch\n"), ("index.html", "x")]).unwrap();
    assert_eq!(spec.kind, AppKind::Process);
    assert!(spec.dockerfile);
    assert_eq!(spec.runtime, RuntimeChoice::Auto);
    assert_eq!(spec.processes, map(&[("web", String::new())]));
    // A Procfile's commands run in the container instead.
    let spec = load_files(&[
        ("Dockerfile", "FROM scratch\n"),
        ("Procfile", "web: ./serve\n"),
    ])
    .unwrap();
    assert_eq!(spec.processes, map(&[("web", "./serve".to_string())]));
    // runtime = "process" ignores the Dockerfile.
    let spec = load_files(&[
        ("Dockerfile", "FROM scratch\n"),
        ("index.html", "x"),
        ("berth.toml", "runtime = \"process\"\n"),
    ])
    .unwrap();
    assert_eq!(spec.kind, AppKind::Static);
    assert_eq!(spec.runtime, RuntimeChoice::Process);
    // runtime = "docker" needs a Dockerfile; an unknown runtime is named with its line.
    let err = load_files(&[
        ("Procfile", "web: x\n"),
        ("berth.toml", "runtime = \"docker\"\n"),
    ])
    .unwrap_err();
    assert!(err.to_string().contains("needs a Dockerfile"), "{err}");
    let err = load_files(&[
        ("Procfile", "web: x\n"),
        ("berth.toml", "\nruntime = \"k8s\"\n"),
    ])
    .unwrap_err();
    assert!(err.to_string().starts_with("berth.toml:2:"), "{err}");
    assert!(err.to_string().contains("\"k8s\""), "{err}");
}

#[test]
fn services_in_berth_toml() {
    let spec = load_files(&[
        ("Procfile", "web: ./serve\n"),
        ("db/Dockerfile", "FROM scratch\n"),
        (
            "berth.toml",
            "[services.db]\nbuild = \"db\"\nport = 5432\nvolumes = [\"pg:/var/lib/pg\"]\nhealthcheck = [\"pg_isready\"]\n[services.cache]\nimage = \"local-redis\"\ndepends_on = [\"db\"]\n[service_env]\nDATABASE_URL = \"postgres://{db.host}:{db.port}/app\"\n",
        ),
    ])
    .unwrap();
    let db = &spec.services["db"];
    assert_eq!(db.port, Some(5432));
    assert_eq!(
        db.volumes,
        vec![("pg".to_string(), "/var/lib/pg".to_string())]
    );
    assert_eq!(db.healthcheck.as_ref().unwrap().test, ["CMD", "pg_isready"]);
    assert_eq!(spec.services["cache"].depends_on, ["db"]);
    assert_eq!(
        spec.service_env["DATABASE_URL"],
        "postgres://{db.host}:{db.port}/app"
    );
    for (toml, want) in [
        ("[services.db]\nport = 1\n", "one of them"),
        (
            "[services.db]\nimage = \"x\"\n[service_env]\nA = \"{db.port}\"\n",
            "has no `port`",
        ),
        (
            "[services.db]\nimage = \"x\"\n[service_env]\nA = \"{nope.host}\"\n",
            "no service named",
        ),
        (
            "[services.db]\nimage = \"x\"\ndepends_on = [\"q\"]\n",
            "no service named",
        ),
        ("[services.db]\nbuild = \"nowhere\"\n", "no Dockerfile"),
        (
            "[services.db]\nimage = \"x\"\nprivileged = true\n",
            "unknown field",
        ),
    ] {
        let err = load_files(&[("Procfile", "web: x\n"), ("berth.toml", toml)])
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{toml}\n→ {err}");
    }
}

/// Every instance is a process and a log stamper on the server: an app has at most
/// `MAX_INSTANCES` in all, however many process types its Procfile names.
#[test]
fn an_app_runs_at_most_a_few_hundred_instances_in_all() {
    let procfile: String = (0..3).map(|i| format!("w{i}: sleep 1000\n")).collect();
    let toml = "[formation]\nw0 = 100\nw1 = 100\nw2 = 1\n";
    let err = load_files(&[("Procfile", procfile.as_str()), ("berth.toml", toml)]).unwrap_err();
    assert!(
        err.to_string()
            .contains("201 instances in all; an app runs at most 200"),
        "{err}"
    );
    let toml = "[formation]\nw0 = 100\nw1 = 99\nw2 = 1\n";
    assert!(load_files(&[("Procfile", procfile.as_str()), ("berth.toml", toml)]).is_ok());
}
