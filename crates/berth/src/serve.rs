//! `berth serve`: start the proxy, open the store, start the engine (which reconciles), serve
//! the API, then wait for signals (SIGHUP reloads the config file, SIGTERM/SIGINT stop).

use anyhow::{Context, Result};
use proxy::config::{FileConfig, Listen};
use proxy::Proxy;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Largest unpacked source tree, against zip bombs (uploads are bounded by `max_upload`).
const MAX_UNPACKED: u64 = 2 << 30;

pub fn serve(config: Option<PathBuf>, deploy: Vec<String>, no_jail: bool) -> Result<()> {
    use std::io::IsTerminal;
    // Colours only on a terminal (and never with NO_COLOR): a log file or a pipe gets plain text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(crate::log_filter())
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
    let cfg = match &config {
        Some(p) => crate::load(p)?,
        None => FileConfig::embedded(),
    };
    // Check the quickstart's directories before starting anything.
    let deploy: Vec<(String, PathBuf)> = deploy
        .iter()
        .map(|d| parse_deploy_arg(d))
        .collect::<Result<_>>()?;
    create_private_dir(&cfg.server.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.server.data_dir.display()))?;
    // Absolute, so release dirs and log files stay valid whatever an app's working dir is.
    let mut cfg = cfg;
    if no_jail {
        cfg.server.jail = false;
    }
    cfg.server.data_dir = std::fs::canonicalize(&cfg.server.data_dir)
        .with_context(|| format!("cannot resolve data dir {}", cfg.server.data_dir.display()))?;
    sweep_spool(&cfg.server.data_dir.join("tmp"));
    crate::perms::tighten(&cfg.server.data_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("berth-control")
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, config, deploy))
}

/// `NAME=DIR` or `DIR` (the app is named after the directory).
fn parse_deploy_arg(arg: &str) -> Result<(String, PathBuf)> {
    let (name, dir) = match arg.split_once('=') {
        Some((n, d)) => (n.to_string(), PathBuf::from(d)),
        None => {
            let dir = PathBuf::from(arg);
            let name = std::fs::canonicalize(&dir)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_lowercase()))
                .unwrap_or_default();
            (name, dir)
        }
    };
    anyhow::ensure!(
        dir.is_dir(),
        "--deploy {arg}: {} is not a directory",
        dir.display()
    );
    engine::store::valid_app_name(&name)
        .map_err(|e| anyhow::anyhow!("--deploy {arg}: {e} (hint: name it with NAME=DIR)"))?;
    Ok((name, dir))
}

async fn run(
    cfg: FileConfig,
    config_path: Option<PathBuf>,
    deploy: Vec<(String, PathBuf)>,
) -> Result<()> {
    let data = cfg.server.data_dir.clone();
    let proxy = Arc::new(Proxy::start(&cfg).map_err(|e| match e {
        proxy::StartError::Bind { .. } => {
            anyhow::anyhow!(
                "{e} (hint: is another server using that port? set [server] addresses in --config)"
            )
        }
        e => anyhow::anyhow!("{e}"),
    })?);
    let admin = match cfg.server.admin {
        Listen::On(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        Listen::Off => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(a) = admin_addr.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            admin = %a,
            "the admin listener is bound to {a}, not to loopback: the API (tokens, env values) and /metrics are served there in clear text to anyone who can reach it (hint: admin = \"127.0.0.1:8081\", and reach the API through the proxy over HTTPS)"
        );
    }

    let store = Arc::new(
        engine::store::Store::open(&data.join("berth.db"))
            .with_context(|| format!("cannot open the state store in {}", data.display()))?,
    );
    bootstrap_admin_token(&store, &data)?;
    let owner = data.display().to_string();
    // The jail helper is this very binary (`berth jail`).
    let jail_helper = if cfg.server.jail {
        Some(std::env::current_exe().context("cannot find berth's own binary (the jail helper)")?)
    } else {
        None
    };
    let process = runtime::ProcessRuntime::new(runtime::ProcessOptions {
        // Tags the apps' processes as this berth's, for the sweep after a crash.
        owner: owner.clone(),
        jail_helper: jail_helper.clone(),
        // The log stamper is this very binary too (`berth log-stamp`).
        log_stamper: Some(
            std::env::current_exe().context("cannot find berth's own binary (the log stamper)")?,
        ),
        user_memory: Some(
            cfg.server
                .app_memory_budget
                .map_or_else(engine::Maxima::default_app_memory, |s| s.0),
        ),
        ..runtime::ProcessOptions::default()
    });
    let default_runtime = match cfg.server.runtime.as_str() {
        "process" => build::manifest::RuntimeChoice::Process,
        "docker" => build::manifest::RuntimeChoice::Docker,
        "swarm" => build::manifest::RuntimeChoice::Swarm,
        _ => build::manifest::RuntimeChoice::Auto,
    };
    // Docker, unless the server says processes only; apps on processes never need it.
    let docker = if default_runtime == build::manifest::RuntimeChoice::Process {
        Err("[server] runtime = \"process\"".to_string())
    } else {
        runtime::DockerRuntime::connect(cfg.server.docker_socket.as_deref(), &owner)
            .await
            .map_err(|e| e.to_string())
    };
    match &docker {
        Ok(_) => {
            tracing::info!("Docker daemon reachable: apps with a Dockerfile run in containers")
        }
        Err(e) => tracing::info!(reason = %e, "no Docker: apps run as processes"),
    }
    if let Ok(d) = &docker {
        d.swarm_owned_by(&format!("{owner}#{}", berth_id(&data)?));
    }
    let runtime: Arc<dyn runtime::Runtime> =
        runtime::MultiRuntime::new(process, docker.as_ref().ok().cloned());
    let engine = engine::Engine::start(
        engine::EngineConfig {
            data_dir: data.clone(),
            domain: cfg.server.domain.clone(),
            http_port: proxy.bound.http.map(|a| a.port()),
            https_port: proxy.bound.https.map(|a| a.port()),
            admin: admin_addr,
            api_host: cfg.server.api_host.clone(),
            max_upload: cfg.server.max_upload.0,
            max_unpacked: MAX_UNPACKED,
            default_runtime,
            registry: cfg.server.registry.clone(),
            build_concurrency: cfg
                .server
                .build_concurrency
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            notify_backoff: notify_backoff(),
            maxima: {
                let d = engine::Maxima::default();
                engine::Maxima {
                    memory: cfg.server.app_max_memory.map_or(d.memory, |s| s.0),
                    pids: cfg.server.app_max_pids.unwrap_or(d.pids),
                    app_pids: cfg.server.app_pids_budget.unwrap_or_else(|| {
                        engine::Maxima::default_app_pids(cfg.server.app_max_pids.unwrap_or(d.pids))
                    }),
                    step_timeout: cfg.server.step_max_timeout.map_or(d.step_timeout, |t| t.0),
                }
            },
            jail_helper,
            jail_hide: config_path
                .iter()
                .cloned()
                .chain(cfg.tls.certs.iter().map(|c| c.key.clone()))
                .collect(),
            allow_private_hosts: cfg.server.allow_private_hosts.clone(),
            access_log: match cfg.server.access_log.as_str() {
                "off" | "stdout" => None,
                path => Some(PathBuf::from(path)),
            },
        },
        store,
        runtime,
        docker,
        proxy.clone(),
        cfg.route_specs(),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the deploy engine: {e}"))?;

    // ACME: every routed host gets a certificate from the CA (the local CA's meanwhile).
    let acme = cfg.tls.acme.clone().map(|config| {
        tracing::info!(directory = %config.directory, "ACME certificates for every routed host");
        acme::Manager::start(acme::Options {
            config,
            dir: data.join("acme"),
            proxy: proxy.clone(),
            backoff: acme_backoff(),
        })
    });

    let stop_admin = tokio::sync::watch::channel(false).0;
    if let Some(l) = admin {
        let app = api::router(api::Ctx {
            proxy: proxy.clone(),
            engine: engine.clone(),
            acme: acme.clone(),
            tmp_dir: data.join("tmp"),
            streams: Default::default(),
        });
        // The proxy's guards, on the API's listener too: slow or idle clients there must not
        // hold berth's file descriptors.
        let limits = api::ListenerLimits {
            header_timeout: cfg.limits.header_timeout.0,
            body_timeout: cfg.limits.body_timeout.0,
            max_connections: cfg.limits.admin_max_connections,
        };
        tokio::spawn(api::serve(l, app, limits, stop_admin.subscribe()));
    }
    write_listen_file(&data, proxy.bound, admin_addr)?;
    let show = |a: Option<std::net::SocketAddr>, s: &str| {
        a.map(|a| format!("{s}://{a}"))
            .unwrap_or_else(|| "off".into())
    };
    tracing::info!(
        http = %show(proxy.bound.http, "http"),
        https = %show(proxy.bound.https, "https"),
        admin = %show(admin_addr, "http"),
        ca = %data.join("ca").join("root.pem").display(),
        "berth is serving"
    );
    for (name, dir) in deploy {
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = quick_deploy(&engine, &name, &dir).await {
                tracing::error!(app = name, "quickstart deploy failed: {e:#}");
            }
        });
    }

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    // SIGTERM/SIGINT stop berth and its apps; SIGQUIT stops berth only (to upgrade it: the
    // next start adopts the running apps).
    let keep_apps = loop {
        tokio::select! {
            _ = hup.recv() => reload(&proxy, &engine, config_path.as_deref()),
            _ = term.recv() => break false,
            _ = int.recv() => break false,
            _ = quit.recv() => break true,
        }
    };
    if keep_apps {
        tracing::info!("shutting down, keeping the apps running (the next start adopts them)");
    } else {
        tracing::info!("shutting down: finishing in-flight requests, stopping apps");
    }
    let _ = stop_admin.send(true);
    proxy.shutdown().await;
    if !keep_apps {
        engine.shutdown().await;
    }
    Ok(())
}

/// The first wait after a failed ACME issuance: `BERTH_ACME_BACKOFF_MS` (for tests), else a
/// minute (doubling after each failure).
fn acme_backoff() -> std::time::Duration {
    std::env::var("BERTH_ACME_BACKOFF_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis,
        )
}

/// The first retry delay of outgoing notifications: `BERTH_NOTIFY_BACKOFF_MS` (for tests),
/// else 1 s.
fn notify_backoff() -> std::time::Duration {
    std::env::var("BERTH_NOTIFY_BACKOFF_MS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(
            engine::notify::DEFAULT_BACKOFF,
            std::time::Duration::from_millis,
        )
}

/// The data dir holds berth.db (every app's env values in clear), the CA key and the admin
/// token: only berth's user may enter it. Created 0700; an existing dir with looser bits is
/// tightened (and that is logged).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => {}
        Err(e) => return Err(e),
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            dir = %dir.display(),
            "the data dir was mode {mode:o} (readable by other users); changed it to 700"
        );
    }
    Ok(())
}

/// Remove upload spool files a crash left in `<data>/tmp` (each up to `max_upload`). Nothing
/// else writes there, and nothing is uploading yet.
fn sweep_spool(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return; // no spool dir yet
    };
    let mut removed = 0usize;
    for entry in entries.flatten() {
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match gone {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a leftover spool file: {e}")
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %tmp.display(), "removed leftover upload spool files");
    }
}

/// `<data>/admin-token` must hold a valid, unrevoked admin token: when it is missing (first
/// start, a crash between creating the token and writing the file, or deleted by the operator
/// to recover access) or holds anything else, a new admin token is created, its hash stored,
/// and the secret written to the file (mode 0600, atomically) and printed once. Earlier tokens
/// are not revoked.
/// This berth's own random id (`<data>/berth-id`, made on first start): what tells it from
/// another berth whose data dir has the same path on another machine of one swarm.
fn berth_id(data: &Path) -> Result<String> {
    let path = data.join("berth-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if id.trim().len() == 16 && id.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(id.trim().to_string())
        }
        // A new id would make this berth's swarm services look like another's.
        Ok(_) => anyhow::bail!(
            "{} is not a berth id (16 hex digits) (hint: restore it from a backup; delete it only if this berth runs no swarm services)",
            path.display()
        ),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot read {}", path.display()))
        }
        Err(_) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = data.join("berth-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&tmp, &path))
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

fn bootstrap_admin_token(store: &engine::store::Store, data: &Path) -> Result<()> {
    let path = data.join("admin-token");
    let why = match std::fs::read(&path) {
        Ok(bytes) => {
            let secret = String::from_utf8_lossy(&bytes);
            let secret = secret.trim();
            let valid = !secret.is_empty()
                && store
                    .token_by_secret(secret)?
                    .is_some_and(|t| t.scope == engine::store::Scope::Admin);
            if valid {
                return Ok(());
            }
            "does not hold a valid admin token"
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let first = !store.has_tokens()?;
    let (_, secret) = store.create_token("admin", engine::store::Scope::Admin, &[], "berth")?;
    write_secret_file(data, &path, &secret)
        .with_context(|| format!("cannot write the admin token to {}", path.display()))?;
    // The secret itself is never printed: berth's output ends up in log files and journals
    // that other users (and apps, which see the host's files read-only) may read.
    if first {
        eprintln!(
            "berth: created the admin API token in {} (mode 0600; the CLI next to the data dir uses it)",
            path.display()
        );
    } else {
        tracing::warn!(
            "{} {why}: created a new admin API token there (earlier tokens still work)",
            path.display()
        );
    }
    Ok(())
}

/// Write `secret` to `path` with mode 0600: a temp file, fsynced, renamed over `path`, and the
/// directory fsynced, so a crash leaves either the old file or the new one.
fn write_secret_file(dir: &Path, path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let tmp = dir.join("admin-token.tmp");
    let _ = std::fs::remove_file(&tmp); // a leftover may have other permissions
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(format!("{secret}\n").as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// `serve --deploy DIR`: create the app if needed and deploy the directory.
async fn quick_deploy(engine: &Arc<engine::Engine>, name: &str, dir: &Path) -> Result<()> {
    if engine.store().app(name)?.is_none() {
        engine.create_app(name, "berth")?;
    }
    let bundle = engine
        .cfg
        .data_dir
        .join("tmp")
        .join(format!("quickstart-{name}.tar.gz"));
    std::fs::create_dir_all(bundle.parent().unwrap_or(Path::new(".")))?;
    let (dir2, bundle2) = (dir.to_path_buf(), bundle.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let f = std::fs::File::create(&bundle2)?;
        build::bundle::pack(&dir2, std::io::BufWriter::new(f))?;
        Ok(())
    })
    .await??;
    let d = engine.deploy_bundle(name, &bundle, "berth").await;
    let _ = std::fs::remove_file(&bundle);
    let d = d?;
    loop {
        let now = engine.deploy(d.id)?;
        if now.finished_at.is_some() {
            match now.reason {
                None => tracing::info!(app = name, url = %engine.app_url(name), "deployed"),
                Some(r) => anyhow::bail!("{r} (log: {})", now.log_path.display()),
            }
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// SIGHUP: re-read the config file; on any error keep the running config and say why.
/// All or nothing: the routes are checked, then the certificates loaded, then both swapped.
fn reload(proxy: &Proxy, engine: &engine::Engine, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP ignored: berth runs on embedded defaults (no --config)");
        return;
    };
    let result = crate::load(path).and_then(|cfg| {
        let n = cfg.routes.len();
        engine
            .reload_file_routes(cfg.route_specs(), || {
                proxy.reload_certs(&cfg).map_err(|e| e.to_string())
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(n)
    });
    match result {
        Ok(n) => tracing::info!(
            routes = n,
            "config reloaded from {} (routes and certificates; [server] and [limits] apply at restart)",
            path.display()
        ),
        Err(e) => tracing::error!("config reload failed, keeping the running config: {e:#}"),
    }
}

/// `<data>/listen.json`: the addresses actually bound (ports may be ephemeral), written
/// atomically so a reader never sees half a file, mode 0644 whatever the umask (the CLI uses
/// only a listen.json that no group or other user may write).
fn write_listen_file(
    dir: &Path,
    bound: proxy::Bound,
    admin: Option<std::net::SocketAddr>,
) -> Result<()> {
    let s = |a: Option<std::net::SocketAddr>| {
        a.map(|a| format!("\"{a}\""))
            .unwrap_or_else(|| "null".into())
    };
    let json = format!(
        "{{\"http\":{},\"https\":{},\"admin\":{},\"pid\":{}}}\n",
        s(bound.http),
        s(bound.https),
        s(admin),
        std::process::id()
    );
    let tmp = dir.join("listen.json.tmp");
    let _ = std::fs::remove_file(&tmp); // a leftover may have other permissions
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(json.as_bytes())?;
    }
    std::fs::rename(&tmp, dir.join("listen.json"))?;
    Ok(())
}
