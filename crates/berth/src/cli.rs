//! The client commands of `berth` (Heroku-like): `login`, `apps`, `deploy`, `env:set`, `logs`…
//! They talk to a berth server's API (docs/api.md), found as described in [`crate::client`].
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ok |
//! | 1 | the operation failed: a deploy failed, or the server answered 4xx/5xx |
//! | 2 | usage error: bad arguments or local input (a missing directory, a bad `--ca` file) |
//! | 3 | cannot reach or authenticate to the server (none configured, connection refused, TLS, 401) |
//!
//! Output: human tables by default; `--json` prints the server's JSON as is (pretty), and for
//! commands that follow a deploy (`deploy`, `rollback`, `env:set`, `scale`) the final `Deploy`
//! with the build log on stderr. Errors are one line on stderr, `berth: <message>`, and
//! sometimes a second, `hint: <hint>`.
//!
//! The app a command acts on: `-a/--app`, else `BERTH_APP`, else the current directory's name
//! (for `deploy`, the deployed directory's name).
//!
//! This file holds the command line (`Global`, `Command`) and the dispatch; each command group
//! lives in its own module under `cli/`: `login`, `apps`, `deploy` (deploy, rollback, releases,
//! restart, following a deploy's log), `env`, `ps` (ps, scale, logs, services), `domains`,
//! `tokens`, `notify`, `info` (certs, nodes), `builds` (builds, apps:settings); `app_ref` finds
//! the app a command acts on and `output` prints tables and JSON.

use crate::client::{self, Client, Discovery, Error};
use std::path::PathBuf;

mod app_ref;
mod apps;
mod builds;
pub(crate) mod deploy;
mod domains;
mod env;
mod info;
mod login;
mod notify;
pub(crate) mod output;
mod progress;
mod ps;
mod tokens;

use tokens::Scope;

/// Options shared by the client commands.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// The berth server, e.g. https://berth.example.com (default: the one saved by `berth
    /// login`, else the local server of --data-dir)
    #[arg(long, global = true, env = "BERTH_URL", value_name = "URL")]
    pub url: Option<String>,
    /// API token (default: the saved one, else <data>/admin-token)
    #[arg(
        long,
        global = true,
        env = "BERTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// The data directory of a berth server on this machine (for listen.json and admin-token;
    /// used only when it and they are yours and writable by no one else)
    #[arg(
        long,
        global = true,
        env = "BERTH_DATA",
        default_value = "berth-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// A PEM root certificate to trust besides the public ones (berth's own CA: <data>/ca/root.pem)
    #[arg(long, global = true, env = "BERTH_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Print the server's JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// The app (default: $BERTH_APP, else the current directory's name)
    #[arg(short = 'a', long, global = true, value_name = "NAME")]
    pub app: Option<String>,
}

/// The client commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Check a server URL and token, and save them for the next commands
    Login {
        /// The server, e.g. https://berth.example.com (or --url)
        #[arg(value_name = "URL")]
        server: Option<String>,
    },
    /// Forget the saved server URL and token
    Logout,
    /// List the apps
    Apps,
    /// Create an app
    #[command(name = "apps:create")]
    AppsCreate {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Destroy an app: stops its instances, removes its releases and routes
    #[command(name = "apps:destroy")]
    AppsDestroy {
        /// The app (default: -a / BERTH_APP / the directory's name)
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// The app's name again, to confirm
        #[arg(long, value_name = "NAME")]
        confirm: Option<String>,
        /// Keep the app's named volumes (its services' data): an app created again under the
        /// same name mounts them again
        #[arg(long)]
        keep_volumes: bool,
        /// Not an option: destroying needs --confirm NAME (said with a hint)
        #[arg(long, short = 'y', alias = "force", hide = true)]
        yes: bool,
    },
    /// Show an app
    #[command(name = "apps:info")]
    AppsInfo {
        /// The app (default: -a / BERTH_APP / the directory's name)
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// Connect an app to a repository: its push webhooks deploy the branch (the webhook secret
    /// and URLs are printed once)
    #[command(name = "apps:connect")]
    AppsConnect {
        /// The app (default: -a / BERTH_APP / the directory's name)
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// The repository, e.g. https://github.com/you/app.git
        #[arg(long, value_name = "URL")]
        repo: String,
        /// The branch that deploys the app (default: the app's deploy branch, main)
        #[arg(long, value_name = "BRANCH")]
        branch: Option<String>,
    },
    /// Show or change an app's git settings: deploy branch, previews, cancel-running
    #[command(name = "apps:settings")]
    AppsSettings(builds::SettingsArgs),
    /// List builds and deploys of all apps (with -a: one app's), newest first
    Builds {
        /// Only queued and running ones
        #[arg(long)]
        active: bool,
        /// How many
        #[arg(short = 'n', long, default_value_t = 30, value_name = "N")]
        limit: u32,
    },
    /// Show a build: trigger, commit, steps
    #[command(name = "builds:info")]
    BuildsInfo {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Show a build's log, or follow it live to its end
    #[command(name = "builds:logs")]
    BuildsLogs {
        #[arg(value_name = "ID")]
        id: u64,
        /// Keep printing until the build ends
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a queued or running build
    #[command(name = "builds:cancel")]
    BuildsCancel {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// Disconnect an app from its repository: webhooks no longer deploy it
    #[command(name = "apps:disconnect")]
    AppsDisconnect {
        /// The app (default: -a / BERTH_APP / the directory's name)
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// Pack a directory (honouring .gitignore), upload it, build and release it
    Deploy {
        /// The source directory (default: the current one); also names the app unless -a
        #[arg(value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// List an app's releases
    Releases,
    /// Go back to a release (default: the previous good one)
    Rollback {
        /// The release, like 3 or v3
        #[arg(value_name = "VERSION")]
        version: Option<String>,
    },
    /// Show an app's environment (values masked unless --reveal)
    Env {
        /// Show the values
        #[arg(long)]
        reveal: bool,
    },
    /// Set environment variables (a live app restarts with them)
    #[command(name = "env:set")]
    EnvSet {
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
    /// Remove environment variables (a live app restarts without them)
    #[command(name = "env:unset")]
    EnvUnset {
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Restart the app's instances (zero downtime)
    Restart,
    /// Set how many instances of each process type run (no argument: show them)
    Scale {
        #[arg(value_name = "TYPE=N")]
        pairs: Vec<String>,
    },
    /// List an app's domains
    Domains,
    /// Route a domain to an app
    #[command(name = "domains:add")]
    DomainsAdd {
        #[arg(value_name = "HOST")]
        host: String,
    },
    /// Stop routing a domain to an app
    #[command(name = "domains:remove")]
    DomainsRemove {
        #[arg(value_name = "HOST")]
        host: String,
    },
    /// Show an app's recent logs (all instances merged in time order), or follow them
    Logs(LogsArgs),
    /// List an app's instances
    Ps,
    /// List an app's accessory services (from its compose file)
    Services,
    /// List the Docker Swarm's nodes and their state (admin)
    Nodes,
    /// List each routed host's certificate: source, issuer, expiry, ACME status (admin)
    Certs,
    /// List the API tokens (admin)
    Tokens,
    /// Create an API token; its secret is printed once
    #[command(name = "tokens:create")]
    TokensCreate {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_enum, default_value_t = Scope::Deploy)]
        scope: Scope,
        /// Apps a deploy token may act on (repeat or separate with commas; default: all).
        /// `-a NAME` adds one too.
        #[arg(long = "apps", value_name = "APP", value_delimiter = ',')]
        apps: Vec<String>,
    },
    /// Revoke an API token
    #[command(name = "tokens:revoke")]
    TokensRevoke {
        #[arg(value_name = "ID")]
        id: u64,
    },
    /// List the webhook targets of build and deploy events (with -a: those that get the app's)
    Notify,
    /// Send an app's build and deploy events to a URL (without -a / BERTH_APP: every app's);
    /// prints the signing secret once
    #[command(name = "notify:add")]
    NotifyAdd {
        // Not `url`: that id is the global --url.
        /// Where to POST the events
        #[arg(value_name = "URL")]
        target: String,
    },
    /// Stop sending events to a webhook target
    #[command(name = "notify:remove")]
    NotifyRemove {
        #[arg(value_name = "ID")]
        id: u64,
    },
}

/// Runs a client command; returns the process exit code (see the table at the top).
pub fn run(global: &Global, cmd: Command) -> i32 {
    match dispatch(global, cmd) {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

fn dispatch(g: &Global, cmd: Command) -> Result<i32, Error> {
    match cmd {
        Command::Login { server } => login::login(g, server),
        Command::Logout => login::logout(),
        Command::Apps => apps::apps(g),
        Command::AppsCreate { name } => apps::apps_create(g, &name),
        Command::AppsDestroy {
            name,
            confirm,
            keep_volumes,
            yes,
        } => apps::apps_destroy(g, name, confirm, keep_volumes, yes),
        Command::AppsInfo { name } => apps::apps_info(g, name),
        Command::AppsConnect { name, repo, branch } => apps::apps_connect(g, name, &repo, branch),
        Command::AppsDisconnect { name } => apps::apps_disconnect(g, name),
        Command::AppsSettings(args) => builds::settings(g, args),
        Command::Builds { active, limit } => builds::builds(g, active, limit),
        Command::BuildsInfo { id } => builds::info(g, id),
        Command::BuildsLogs { id, follow } => builds::logs(g, id, follow),
        Command::BuildsCancel { id } => builds::cancel(g, id),
        Command::Deploy { dir } => deploy::deploy(g, dir),
        Command::Releases => deploy::releases(g),
        Command::Rollback { version } => deploy::rollback(g, version),
        Command::Env { reveal } => env::env_show(g, reveal),
        Command::EnvSet { pairs } => env::env_set(g, &pairs),
        Command::EnvUnset { keys } => env::env_unset(g, &keys),
        Command::Scale { pairs } => ps::scale(g, &pairs),
        Command::Restart => deploy::restart(g),
        Command::Domains => domains::domains(g),
        Command::DomainsAdd { host } => domains::domains_add(g, &host),
        Command::DomainsRemove { host } => domains::domains_remove(g, &host),
        Command::Logs(args) => ps::logs(g, &args),
        Command::Ps => ps::ps(g),
        Command::Services => ps::services(g),
        Command::Nodes => info::nodes(g),
        Command::Certs => info::certs(g),
        Command::Tokens => tokens::tokens(g),
        Command::TokensCreate { name, scope, apps } => tokens::tokens_create(g, &name, scope, apps),
        Command::TokensRevoke { id } => tokens::tokens_revoke(g, id),
        Command::Notify => notify::notify_list(g),
        Command::NotifyAdd { target } => notify::notify_add(g, &target),
        Command::NotifyRemove { id } => notify::notify_remove(g, id),
    }
}

/// A client of the server found from the flags, the saved credentials or the data dir.
fn connect(g: &Global) -> Result<Client, Error> {
    let creds = client::credentials_path();
    let data_dir = local_data_dir(g);
    let target = client::discover(&Discovery {
        url: g.url.as_deref(),
        token: g.token.as_deref(),
        ca: g.ca.as_deref(),
        credentials: creds.as_deref(),
        data_dir: Some(&data_dir),
    })?;
    Client::new(target)
}

/// Where a berth server may have written `listen.json` whose data dir was not named (the
/// default `berth-data`, no `BERTH_DATA`): `./berth-data`, else the nearest `berth-data` in a
/// directory above (a project's subdirectory), else `/var/lib/berth` (a server installed on
/// this machine). The data dir is still used only when it is the user's (`client.rs`).
fn local_data_dir(g: &Global) -> PathBuf {
    let default = PathBuf::from("berth-data");
    if g.data_dir != default || std::env::var_os("BERTH_DATA").is_some() {
        return g.data_dir.clone();
    }
    let served = |d: &std::path::Path| d.join("listen.json").is_file();
    if served(&default) {
        return default;
    }
    let above = std::env::current_dir().ok().and_then(|cwd| {
        cwd.ancestors()
            .skip(1)
            .map(|a| a.join("berth-data"))
            .find(|d| served(d))
    });
    above
        .or_else(|| Some(PathBuf::from("/var/lib/berth")).filter(|d| served(d)))
        .unwrap_or(default)
}

/// `berth logs`: which lines, from where.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// Keep printing new lines until Ctrl-C (or until `--until` has passed)
    #[arg(short, long)]
    pub follow: bool,
    /// How many recent lines, in all
    #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
    pub lines: u32,
    /// Only lines since this time: 2026-12-08T10:00:00Z, or a duration back from now (10m)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only lines until this time (same forms as --since)
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only instances of this process type (web, worker)
    #[arg(short = 't', long = "type", value_name = "TYPE")]
    pub proc_type: Option<String>,
    /// Only this instance (web.2)
    #[arg(short = 'i', long, value_name = "INSTANCE")]
    pub instance: Option<String>,
    /// Whose lines: the app's output, berth's deploy events, the router's requests (from the
    /// access log, when it is a file), or all
    #[arg(short = 's', long, value_enum, default_value_t = LogSource::App)]
    pub source: LogSource,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    App,
    Berth,
    Router,
    All,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        global: Global,
        #[command(subcommand)]
        cmd: Command,
    }

    #[test]
    fn clap_shape() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
        let cli =
            TestCli::try_parse_from(["berth", "env:set", "A=1", "B=2", "-a", "shop", "--json"])
                .unwrap();
        assert_eq!(cli.global.app.as_deref(), Some("shop"));
        assert!(cli.global.json);
        assert!(matches!(cli.cmd, Command::EnvSet { ref pairs } if pairs.len() == 2));
        let cli = TestCli::try_parse_from([
            "berth",
            "tokens:create",
            "ci",
            "--apps",
            "a,b",
            "--apps",
            "c",
        ])
        .unwrap();
        assert!(
            matches!(cli.cmd, Command::TokensCreate { ref apps, scope: Scope::Deploy, .. } if apps.len() == 3)
        );
        let cli = TestCli::try_parse_from(["berth", "logs", "-f", "-n", "5"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Logs(LogsArgs {
                follow: true,
                lines: 5,
                ..
            })
        ));
        let cli = TestCli::try_parse_from([
            "berth", "logs", "--since", "10m", "--type", "web", "--source", "all",
        ])
        .unwrap();
        assert!(matches!(
            cli.cmd,
            Command::Logs(LogsArgs { ref since, source: LogSource::All, .. }) if since.as_deref() == Some("10m")
        ));
        assert!(TestCli::try_parse_from(["berth", "logs", "--source", "nginx"]).is_err());
        assert!(TestCli::try_parse_from(["berth", "env:set"]).is_err());
    }
}
