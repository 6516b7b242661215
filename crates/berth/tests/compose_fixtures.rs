//! Compose files as real projects document them (`tests/fixtures/compose/`: Docker's Compose
//! quickstart, its WordPress and Django samples, the Ghost image's docs, Miniflux's docs)
//! deploy unchanged on a real `dockerd`, and the keys they use take effect: `command` reaches
//! the database, `restart`, `expose`, `environment` as a list or a map, named volumes on the
//! web service and on the database (kept across a redeploy), `depends_on` with
//! `service_healthy`, a healthcheck, a source bind mount ignored with a warning. The images
//! they name are busybox stand-ins built here under the same names (no registry on this
//! machine; `fixtures/compose/standins/README.md`). Skipped, loudly, only when no daemon
//! answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::apps::{api, app_get, create_app, upload};
use common::docker::{deploy_ok, docker_available, serial};
use common::BIN;
use std::path::{Path, PathBuf};
use test_support::{write_file, Berth};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose")
}

/// `docker build -t <tag>` of a Dockerfile whose context is `dir`.
fn docker_build(dir: &Path, tag: &str, dockerfile: &str) {
    write_file(&dir.join("Dockerfile"), dockerfile.as_bytes());
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stand-in images, under the names the fixtures use.
fn build_standins(work: &Path) {
    let base = work.join("standin-base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy("/bin/busybox", base.join("busybox")).unwrap();
    for f in [
        "server",
        "answer",
        "web",
        "python",
        "flask",
        "noop",
        "pg_isready",
    ] {
        std::fs::copy(fixtures().join("standins").join(f), base.join(f)).unwrap();
    }
    docker_build(
        &base,
        "standin/base:1",
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         COPY server /bin/standin-server\n\
         COPY answer /bin/standin-answer\n\
         COPY web /bin/standin-web\n\
         COPY python /usr/local/bin/python\n\
         COPY flask /usr/local/bin/flask\n\
         COPY noop /usr/local/bin/pip\n\
         COPY noop /sbin/apk\n\
         COPY pg_isready /usr/local/bin/pg_isready\n\
         ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n",
    );
    let db = |port: &str, name: &str, data: &str, cmd: &str| {
        format!(
            "FROM standin/base:1\nENTRYPOINT [\"/bin/standin-server\", \"{port}\", \"{name}\", \"{data}\", \"--\"]\nCMD [\"{cmd}\"]\n"
        )
    };
    let web = |port: &str, name: &str, db: &str, db_port: &str, data: &str| {
        format!(
            "FROM standin/base:1\nENTRYPOINT [\"/bin/standin-web\", \"{port}\", \"{name}\", \"{db}\", \"{db_port}\", \"{data}\"]\n"
        )
    };
    let images = [
        ("redis:alpine", db("6379", "redis", "/data", "redis-server")),
        (
            "mysql:8.0.27",
            db("3306", "mysql", "/var/lib/mysql", "mysqld"),
        ),
        ("mysql:8.0", db("3306", "mysql", "/var/lib/mysql", "mysqld")),
        (
            "postgres",
            db("5432", "postgres", "/var/lib/postgresql/data", "postgres"),
        ),
        (
            "postgres:17-alpine",
            db("5432", "postgres", "/var/lib/postgresql/data", "postgres"),
        ),
        (
            "wordpress:latest",
            web("80", "wordpress", "db", "3306", "/var/www/html"),
        ),
        (
            "ghost:5-alpine",
            web("2368", "ghost", "db", "3306", "/var/lib/ghost/content"),
        ),
        (
            "miniflux/miniflux:latest",
            web("8080", "miniflux", "db", "5432", "/tmp/miniflux"),
        ),
        (
            "python:3.10-alpine",
            "FROM standin/base:1\nCMD [\"python\"]\n".to_string(),
        ),
        (
            "python:3",
            "FROM standin/base:1\nCMD [\"python\"]\n".to_string(),
        ),
    ];
    for (tag, dockerfile) in images {
        let dir = work.join(tag.replace(['/', ':'], "_"));
        std::fs::create_dir_all(&dir).unwrap();
        docker_build(&dir, tag, &dockerfile);
    }
}

/// A copy of fixture `name` to deploy from.
fn source(b: &Berth, name: &str) -> PathBuf {
    let dst = b.path(&format!("{name}-src"));
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(fixtures().join(name))
        .arg(&dst)
        .status()
        .unwrap();
    assert!(out.success());
    dst
}

/// The deploy log of deploy `d`.
fn log_of(b: &Berth, app: &str, d: &serde_json::Value) -> String {
    let (_, log) = api(
        b,
        "GET",
        &format!("/api/v1/apps/{app}/deploys/{}/log", d["id"]),
        "",
    );
    log.as_str().unwrap_or_default().to_string()
}

fn destroy(b: &Berth, app: &str) {
    let (st, v) = api(b, "DELETE", &format!("/api/v1/apps/{app}"), "");
    assert_eq!(st, 204, "{v}");
}

#[test]
fn compose_files_of_real_projects_deploy_unchanged() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    build_standins(&b.path("standins"));

    // Docker's Compose quickstart: a Flask app counting its visits in Redis. Its Dockerfile
    // starts with `# syntax=`, and builds with RUN steps.
    create_app(&b, "flask");
    let d = deploy_ok(&b, "flask", &source(&b, "flask-redis"));
    assert_eq!(app_get(&b, "flask", "/"), (200, "Hello World!\n".into()));
    for n in 1..=3 {
        let (st, body) = app_get(&b, "flask", "/cgi-bin/hello");
        assert_eq!(
            (st, body.trim()),
            (
                200,
                format!("Hello World! I have been seen {n} times.").as_str()
            ),
            "{}",
            log_of(&b, "flask", &d)
        );
    }
    destroy(&b, "flask");

    // WordPress and MySQL: the db's `command` reaches its entrypoint, `environment` as a list,
    // `expose` (two ports), `restart: always`, the data in a named volume.
    create_app(&b, "wp");
    let d = deploy_ok(&b, "wp", &source(&b, "wordpress"));
    let (st, status) = app_get(&b, "wp", "/cgi-bin/status");
    assert_eq!(st, 200, "{status}\n{}", log_of(&b, "wp", &d));
    for want in [
        "wordpress starts=1",
        "WORDPRESS_DB_HOST=db",
        "WORDPRESS_DB_NAME=wordpress",
        "db: mysql ok starts=1 args=--default-authentication-plugin=mysql_native_password db=wordpress",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    destroy(&b, "wp");

    // Ghost and MySQL: `version`, `environment` as a map (keys with `__`), a named volume on
    // the web service itself, kept across a redeploy (a new container mounts the same data).
    create_app(&b, "ghost");
    let src = source(&b, "ghost");
    deploy_ok(&b, "ghost", &src);
    let (_, status) = app_get(&b, "ghost", "/cgi-bin/status");
    for want in [
        "ghost starts=1",
        "database__connection__host=db",
        "url=http://localhost:8080",
        "db: mysql ok starts=1 args=mysqld db=",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    write_file(&src.join("NOTES"), b"a new release\n");
    deploy_ok(&b, "ghost", &src);
    let (_, status) = app_get(&b, "ghost", "/cgi-bin/status");
    assert!(status.contains("ghost starts=2"), "{status}");
    destroy(&b, "ghost");

    // Django and PostgreSQL: the web service's `command` (Django's dev server) replaces the
    // image's; the bind mount of the source is ignored, with a warning in the deploy log.
    create_app(&b, "polls");
    let src = source(&b, "django");
    let d = deploy_ok(&b, "polls", &src);
    let log = log_of(&b, "polls", &d);
    assert!(
        log.contains(
            "Warning: compose.yaml: services.web.volumes: the bind mount \".:/code\" is ignored"
        ),
        "{log}"
    );
    let (st, body) = app_get(&b, "polls", "/cgi-bin/polls");
    assert_eq!(st, 200, "{body}\n{log}");
    assert!(
        body.contains("NAME=postgres USER=postgres")
            && body.contains("db: postgres ok starts=1 args=postgres db=postgres"),
        "{body}"
    );
    // The sample as published keeps the database in a bind mount: refused, saying what to
    // write instead; the running release is untouched.
    let compose = std::fs::read_to_string(src.join("compose.yaml")).unwrap();
    write_file(
        &src.join("compose.yaml"),
        compose
            .replace("- db-data:/var/lib", "- ./data/db:/var/lib")
            .as_bytes(),
    );
    let (st, v) = upload(&b, "polls", &src);
    assert_eq!(st, 422, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("services.db.volumes") && err.contains("use a named volume"),
        "{err}"
    );
    assert_eq!(app_get(&b, "polls", "/cgi-bin/polls").0, 200);
    destroy(&b, "polls");

    // Miniflux and PostgreSQL: the web starts once the database's healthcheck passes
    // (`depends_on` with `condition: service_healthy`, `start_period`).
    create_app(&b, "rss");
    let d = deploy_ok(&b, "rss", &source(&b, "miniflux"));
    let log = log_of(&b, "rss", &d);
    assert!(log.contains("Service db is running"), "{log}");
    let (_, status) = app_get(&b, "rss", "/cgi-bin/status");
    assert!(
        status.contains("DATABASE_URL=postgres://miniflux:secret@db/miniflux?sslmode=disable")
            && status.contains("db: postgres ok starts=1 args=postgres db=miniflux"),
        "{status}"
    );
    destroy(&b, "rss");
}

/// The compose keys that change how a container runs are applied inside it: `entrypoint`,
/// `command`, `working_dir`, `user`, `env_file`; `container_name`, `labels` and `networks:
/// [default]` are accepted (the first two with a warning); a service's `restart` becomes its
/// container's restart policy.
#[test]
fn compose_keys_that_shape_a_container_are_applied_inside_it() {
    let _serial = serial();
    if !docker_available() {
        return;
    }
    let b = Berth::start(BIN, "");
    build_standins(&b.path("standins"));
    create_app(&b, "keys");
    let src = b.path("keys-src");
    std::fs::create_dir_all(src.join("www/cgi-bin")).unwrap();
    write_file(&src.join("www/index.html"), b"keys\n");
    write_file(
        &src.join("www/cgi-bin/who"),
        b"#!/bin/sh\necho 'Content-Type: text/plain'\necho ''\necho \"uid=$(id -u) gid=$(id -g) cwd=$OLDPWD_AT_START mode=$MODE secret=$SECRET\"\ncat /tmp/args\n",
    );
    write_file(
        &src.join("start.sh"),
        b"#!/bin/sh\necho \"$@\" > /tmp/args\nexport OLDPWD_AT_START=$(pwd)\nexec httpd -f -p 8080 -h /srv/app/www\n",
    );
    write_file(
        &src.join("app.env"),
        b"# from env_file\nSECRET=\"s3cr3t\"\nMODE=file\n",
    );
    write_file(
        &src.join("Dockerfile"),
        b"FROM standin/base:1\nCOPY . /srv/app\nRUN mkdir -p /tmp && chmod 1777 /tmp && chmod -R a+rX /srv/app && chmod a+x /srv/app/start.sh /srv/app/www/cgi-bin/who\n",
    );
    write_file(
        &src.join("compose.yaml"),
        br#"services:
  web:
    build: .
    container_name: keys-web
    labels:
      traefik.enable: "true"
    entrypoint: ["/srv/app/start.sh"]
    command: serve --port 8080 "two words"
    working_dir: /srv/app
    user: "1234:1234"
    env_file: app.env
    environment:
      MODE: environment
    expose: ["8080"]
    networks: [default]
    restart: unless-stopped
  cache:
    image: redis:alpine
    restart: on-failure:2
networks:
  default: {}
"#,
    );
    let d = deploy_ok(&b, "keys", &src);
    let log = log_of(&b, "keys", &d);
    for want in [
        "Warning: compose.yaml: services.web.container_name is ignored",
        "Warning: compose.yaml: services.web.labels are ignored",
    ] {
        assert!(log.contains(want), "{want}: {log}");
    }
    let (st, body) = app_get(&b, "keys", "/cgi-bin/who");
    assert_eq!(st, 200, "{body}");
    assert!(
        body.contains("uid=1234 gid=1234 cwd=/srv/app mode=environment secret=s3cr3t"),
        "{body}"
    );
    assert!(body.contains("serve --port 8080 two words"), "{body}");
    // The service's restart policy is compose's.
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            "label=berth.app=keys",
            "--filter",
            "label=berth.service=cache",
        ])
        .output()
        .unwrap();
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!id.is_empty());
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}",
            &id,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "on-failure:2");
    destroy(&b, "keys");
}
