//! The `berth` binary: `serve` runs the platform; `check` validates a config file; every other
//! command is the Heroku-like client of the control-plane API (`cli.rs`, `client.rs`).
#![forbid(unsafe_code)]

mod cli;
mod client;
mod hook;
mod perms;
mod serve;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use proxy::config::FileConfig;
use std::path::{Path, PathBuf};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "One binary that turns a Linux server into a deployment platform"
)]
struct Cli {
    #[command(flatten)]
    global: cli::Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run berth: the edge proxy, the deploy engine and the API. Without --config: embedded defaults.
    Serve {
        /// A server config file; re-read on SIGHUP.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Deploy this app directory once berth is up (repeatable; `NAME=DIR` names the app,
        /// else the directory's name). The quickstart uses it.
        #[arg(long = "deploy", value_name = "[NAME=]DIR")]
        deploy: Vec<String>,
        /// Run apps unjailed, as berth's own user (`[server] jail = false`): for a machine or
        /// a user that cannot build the jail (it needs root). Said loudly at start.
        #[arg(long)]
        no_jail: bool,
    },
    /// Validate a config file and exit (like `nginx -t`): prints file:line:col and the reason.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a git hook of berth's repositories (`pre-receive`); git runs it on a push.
    #[command(hide = true)]
    Hook {
        #[arg(value_name = "NAME")]
        name: String,
    },
    #[command(flatten)]
    Client(cli::Command),
}

fn main() {
    // `berth jail <args> -- <cmd>`: the process runtime's jail helper (berth-jail), run as
    // root by berth itself; kept out of clap so nothing but its own arguments are parsed.
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == "jail" => std::process::exit(jail::main(args)),
        // `berth log-stamp [<file> <cap bytes> <keep>]`: an instance's output, each line
        // stamped with its time, onto its log file (rotated by rename at its cap), or stdout
        // (runtime::logs); started by the process runtime.
        Some(a) if a == "log-stamp" => {
            // The lowest priority: what an app prints costs the stamper more CPU than the app
            // (a stamp on every line), and runs outside the app's own limits; so it only runs
            // when nothing else wants the CPU, and a flooding app waits on its full pipe.
            let _ = rustix::process::nice(19);
            let rest: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
            let copied = match rest.as_slice() {
                [] => runtime::logs::stamp(std::io::stdin().lock(), std::io::stdout().lock()),
                [file, cap, keep] => {
                    let (Ok(cap), Ok(keep)) = (cap.parse(), keep.parse()) else {
                        eprintln!("berth log-stamp: <cap> and <keep> are numbers");
                        std::process::exit(2);
                    };
                    let log = runtime::logs::LogFile::open(std::path::Path::new(file), cap, keep);
                    runtime::logs::stamp(std::io::stdin().lock(), log)
                }
                _ => {
                    eprintln!("usage: berth log-stamp [<file> <cap bytes> <keep>]");
                    std::process::exit(2);
                }
            };
            std::process::exit(i32::from(copied.is_err()));
        }
        _ => {}
    }
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Serve {
            config,
            deploy,
            no_jail,
        } => serve::serve(config, deploy, no_jail),
        Cmd::Check { config } => check(&config),
        Cmd::Hook { name } => std::process::exit(hook::run(&name)),
        Cmd::Client(cmd) => std::process::exit(cli::run(&cli.global, cmd)),
    };
    if let Err(e) = result {
        eprintln!("berth: {e:#}");
        std::process::exit(1);
    }
}

pub(crate) fn load(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(FileConfig::parse(&text, path)?)
}

fn check(path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cfg = FileConfig::parse(&text, path)?;
    cfg.check_static_dirs(&text, path)?;
    let specs = cfg.route_specs();
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
pub(crate) fn log_filter() -> tracing_subscriber::EnvFilter {
    let spec = std::env::var("BERTH_LOG").unwrap_or_else(|_| "info".into());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},rustls=error")
    };
    tracing_subscriber::EnvFilter::try_new(&spec).unwrap_or_else(|_| "info,rustls=error".into())
}
