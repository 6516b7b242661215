//! The `berth` binary: `serve` runs the platform; `check` validates a config file.
#![forbid(unsafe_code)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use proxy::config::{FileConfig, Listen};
use proxy::Proxy;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "One binary that turns a Linux server into a deployment platform"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run berth: the edge proxy and the admin API. Without --config: embedded defaults.
    Serve {
        /// A berth.toml; re-read on SIGHUP.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and exit (like `nginx -t`): prints file:line:col and the reason.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve { config } => serve(config),
        Cmd::Check { config } => check(&config),
    };
    if let Err(e) = result {
        eprintln!("berth: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(FileConfig::parse(&text, path)?)
}

fn check(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    let specs = cfg.route_specs();
    for (i, r) in specs.iter().enumerate() {
        if let Some(root) = &r.static_root {
            anyhow::ensure!(
                root.is_dir(),
                "{}: route {} ({}{}): static directory {} does not exist",
                path.display(),
                i,
                r.host,
                r.path,
                root.display()
            );
        }
    }
    let files: Vec<_> = cfg
        .tls
        .certs
        .iter()
        .map(|c| proxy::tls::CertFile {
            cert: c.cert.clone(),
            key: c.key.clone(),
        })
        .collect();
    proxy::tls::load_cert_files(&files)?;
    println!(
        "berth: {} is valid ({} routes)",
        path.display(),
        specs.len()
    );
    Ok(())
}

/// `BERTH_LOG` (tracing's env-filter syntax), default `info`. rustls warns once per handshake
/// about clients that send an IP address as SNI (wrk and others do): any client could make berth
/// write a line per connection, so rustls is held at `error` unless `BERTH_LOG` names it.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| "info,rustls=error".into())
}

fn serve(config: Option<PathBuf>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(std::io::stderr)
        .init();
    let cfg = match &config {
        Some(p) => load(p)?,
        None => FileConfig::embedded(),
    };
    std::fs::create_dir_all(&cfg.server.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.server.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("berth-control")
        .enable_all()
        .build()?;
    rt.block_on(run(cfg, config))
}

async fn run(cfg: FileConfig, config_path: Option<PathBuf>) -> Result<()> {
    let proxy = Arc::new(Proxy::start(&cfg).map_err(|e| match e {
        proxy::StartError::Bind { .. } => {
            anyhow::anyhow!(
                "{e} (hint: is another server using that port? set [server] addresses in --config)"
            )
        }
        e => anyhow::anyhow!("{e}"),
    })?);
    let admin = match cfg.server.admin {
        Listen::On(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            Some(l)
        }
        Listen::Off => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let stop_admin = tokio_util_stop();
    if let Some(l) = admin {
        let app = api::router(proxy.clone());
        let stop = stop_admin.clone();
        tokio::spawn(async move {
            let _ = axum_serve(l, app, stop).await;
        });
    }
    write_listen_file(&cfg.server.data_dir, proxy.bound, admin_addr)?;
    let show = |a: Option<std::net::SocketAddr>, s: &str| {
        a.map(|a| format!("{s}://{a}"))
            .unwrap_or_else(|| "off".into())
    };
    tracing::info!(
        http = %show(proxy.bound.http, "http"),
        https = %show(proxy.bound.https, "https"),
        admin = %show(admin_addr, "http"),
        ca = %cfg.server.data_dir.join("ca").join("root.pem").display(),
        "berth is serving"
    );

    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&proxy, config_path.as_deref()),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_admin.send(true);
    proxy.shutdown().await;
    Ok(())
}

/// SIGHUP: re-read the config file; on any error keep the running config and say why.
fn reload(proxy: &Proxy, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP ignored: berth runs on embedded defaults (no --config)");
        return;
    };
    // All or nothing: check the routes, then load the certificates, then swap both.
    let result = load(path).and_then(|cfg| {
        let table = proxy.prepare_routes(cfg.route_specs())?;
        proxy.reload_certs(&cfg)?;
        proxy.install_routes(table);
        Ok(cfg.routes.len())
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

fn tokio_util_stop() -> tokio::sync::watch::Sender<bool> {
    tokio::sync::watch::channel(false).0
}

async fn axum_serve(
    l: tokio::net::TcpListener,
    app: axum::Router,
    stop: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    let mut rx = stop.subscribe();
    axum::serve(l, app)
        .with_graceful_shutdown(async move {
            let _ = rx.wait_for(|v| *v).await;
        })
        .await
}

/// `<data>/listen.json`: the addresses actually bound (ports may be ephemeral), written
/// atomically so a reader never sees half a file.
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
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, dir.join("listen.json"))?;
    Ok(())
}
