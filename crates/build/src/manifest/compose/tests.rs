use super::*;

fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    tmp
}

#[test]
fn the_common_subset() {
    let dir = project(&[
        ("Dockerfile", "FROM scratch\n"),
        ("db/Dockerfile", "FROM scratch\n"),
    ]);
    let text = r#"
services:
  web:
    build: .
    ports: ["8080:80"]
    environment:
      DB_HOST: db
      DEBUG: 1
    depends_on: [db]
  db:
    build: { context: db }
    environment: ["MODE=persist"]
    volumes: ["data:/data"]
    healthcheck:
      test: ["CMD", "nc", "-z", "127.0.0.1", "6379"]
      interval: 1s
      timeout: 1m30s
      retries: 5
volumes:
  data: {}
"#;
    let c = parse("compose.yaml", text, dir.path()).unwrap();
    assert_eq!(c.web, "web");
    assert_eq!(c.build.unwrap().context, PathBuf::from("."));
    assert_eq!(c.container_port, Some(80));
    assert_eq!(c.env.get("DEBUG").map(String::as_str), Some("1"));
    let db = &c.services["db"];
    assert_eq!(db.build.as_ref().unwrap().context, PathBuf::from("db"));
    assert_eq!(db.volumes, vec![("data".to_string(), "/data".to_string())]);
    assert_eq!(db.env["MODE"], "persist");
    let h = db.healthcheck.as_ref().unwrap();
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_secs(90));
    assert_eq!(h.retries, 5);
}

/// The keys of real compose files: applied where they mean something under berth,
/// ignored with a warning where they do not.
#[test]
fn commands_users_env_files_restart_expose_and_ignored_keys() {
    let dir = project(&[
        ("Dockerfile", "FROM scratch\n"),
        (
            "web.env",
            "# settings\nA=from-file\nB=\"quoted value\"\n\nC='single'\n",
        ),
        ("db.env", "POSTGRES_PASSWORD=pw\n"),
    ]);
    let text = r#"
services:
  web:
    build: .
    container_name: my-web
    restart: unless-stopped
    command: bundle exec "rails server" -b 0.0.0.0
    entrypoint: ["/docker-entrypoint.sh"]
    working_dir: /app
    user: "1000:1000"
    env_file: [web.env, { path: optional.env, required: false }]
    environment:
      A: from-environment
    expose: ["3000"]
    labels:
      traefik.enable: "true"
    networks: [default]
    volumes: [".:/app", "uploads:/app/public/uploads"]
  db:
    image: postgres:16
    restart: on-failure:3
    env_file: db.env
    expose: [5432]
    user: 999
    networks:
      default:
  job:
    image: busybox
    restart: "no"
networks:
  default:
volumes:
  uploads:
"#;
    let c = parse("compose.yaml", text, dir.path()).unwrap();
    assert_eq!(
        c.container,
        ContainerSettings {
            entrypoint: Some(vec!["/docker-entrypoint.sh".into()]),
            command: Some(
                ["bundle", "exec", "rails server", "-b", "0.0.0.0"]
                    .map(String::from)
                    .to_vec()
            ),
            working_dir: Some("/app".into()),
            user: Some("1000:1000".into()),
            volumes: vec![("uploads".into(), "/app/public/uploads".into())],
        }
    );
    assert_eq!(c.env["A"], "from-environment");
    assert_eq!(c.env["B"], "quoted value");
    assert_eq!(c.env["C"], "single");
    assert_eq!(c.container_port, Some(3000));
    let db = &c.services["db"];
    assert_eq!(db.env["POSTGRES_PASSWORD"], "pw");
    assert_eq!(db.port, Some(5432));
    assert_eq!(db.restart, ServiceRestart::OnFailure(Some(3)));
    assert_eq!(db.container.user.as_deref(), Some("999"));
    assert_eq!(c.services["job"].restart, ServiceRestart::No);
    let warnings = c.warnings.join("\n");
    for want in [
        "services.web.container_name is ignored",
        "services.web.labels are ignored",
        "services.web.volumes: the bind mount \".:/app\" is ignored",
    ] {
        assert!(warnings.contains(want), "{want}: {warnings}");
    }
}

#[test]
fn dollars_and_extensions() {
    let dir = project(&[("Dockerfile", "FROM scratch\n")]);
    let text =
        "x-common: &c {}\nservices:\n  web:\n    build: .\n    environment:\n      PASS: a$$b\n";
    let c = parse("compose.yaml", text, dir.path()).unwrap();
    assert_eq!(c.env["PASS"], "a$b");
}

#[test]
fn what_berth_does_not_support_is_named() {
    let dir = project(&[
        ("Dockerfile", "FROM scratch\n"),
        ("bad.env", "A=1\nnot a pair\n"),
    ]);
    for (text, want) in [
            (
                "services:\n  web:\n    build: .\n    privileged: true\n",
                "compose.yaml:4:5: services.web: unknown field `privileged`",
            ),
            (
                "services:\n  web:\n    build: .\nconfigs: {}\n",
                "unknown top-level key `configs`",
            ),
            (
                "services:\n  web:\n    build: .\nnetworks:\n  front: {}\n",
                "networks.front: berth puts every service",
            ),
            (
                "services:\n  web:\n    build: .\n    networks: [front]\n",
                "services.web.networks: berth puts every service",
            ),
            (
                "services:\n  web:\n    build: .\n    restart: sometimes\n",
                "services.web.restart: \"sometimes\": expected",
            ),
            (
                "services:\n  web:\n    build: .\n    working_dir: app\n",
                "must be an absolute path",
            ),
            (
                "services:\n  web:\n    build: .\n    command: echo 'open\n",
                "a quote is not closed",
            ),
            (
                "services:\n  web:\n    build: .\n    env_file: missing.env\n",
                "services.web.env_file: \"missing.env\" does not exist",
            ),
            (
                "services:\n  web:\n    build: .\n    env_file: ../../etc/passwd\n",
                "must stay inside the project",
            ),
            (
                "services:\n  web:\n    build: .\n    env_file: bad.env\n",
                "bad.env:2: expected KEY=VALUE",
            ),
            (
                "services:\n  web:\n    build: .\n    user: [1, 2]\n",
                "services.web.user: a name or uid[:gid]",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: x\n    healthcheck:\n      test: [\"CMD\", \"true\"]\n      interval: 18446744073709551615h18446744073709551615h\n",
                "is too long",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    volumes: [\"./data:/d\"]\n",
                "bind mounts are not supported",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    volumes: [\"d:/d\"]\n",
                "not declared",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: pg\n    ports: [\"5432:5432\"]\n",
                "only the web service is published",
            ),
            ("services:\n  a:\n    image: x\n  b:\n    image: y\n", "name it `web`"),
            (
                "services:\n  web:\n    build: ../elsewhere\n",
                "must stay inside the project",
            ),
            (
                "services:\n  web:\n    image: x\n    environment:\n      A: ${B}\n",
                "interpolation",
            ),
            (
                "services:\n  web:\n    build: { context: ., target: prod }\n",
                "no target",
            ),
            (
                "services:\n  web:\n    build: .\nvolumes:\n  d: { external: true }\n",
                "volume options",
            ),
            (
                "services:\n  web:\n    build: .\n    depends_on:\n      m: { condition: service_completed_successfully }\n  m:\n    image: x\n",
                "not supported",
            ),
            (
                "services:\n  web:\n    build: .\n  db:\n    image: x\n    volumes: [\"d:/d:ro\"]\nvolumes:\n  d: {}\n",
                "volume mode",
            ),
        ] {
            let err = parse("compose.yaml", text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n→ {err}");
        }
}
