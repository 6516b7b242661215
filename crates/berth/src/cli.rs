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

use crate::client::{
    self, seg, Client, Credentials, Discovery, Error, Source, Target, EXIT_FAILED, EXIT_OK,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod builds;

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
    /// The data directory of a berth server on this machine (for listen.json and admin-token)
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

/// A token's scope.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything, including tokens and all apps
    Admin,
    /// Deploy and manage the listed apps only (at least one: --apps NAME)
    Deploy,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Deploy => "deploy",
        }
    }
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
    },
    /// Show an app
    #[command(name = "apps:info")]
    AppsInfo,
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
    /// Show an app's recent logs, or follow them
    Logs {
        /// Keep printing new lines until Ctrl-C
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines
        #[arg(short = 'n', long, default_value_t = 100, value_name = "N")]
        lines: u32,
    },
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
        Command::Login { server } => login(g, server),
        Command::Logout => logout(),
        Command::Apps => apps(g),
        Command::AppsCreate { name } => apps_create(g, &name),
        Command::AppsDestroy { name, confirm } => apps_destroy(g, name, confirm),
        Command::AppsInfo => apps_info(g),
        Command::AppsConnect { name, repo, branch } => apps_connect(g, name, &repo, branch),
        Command::AppsDisconnect { name } => apps_disconnect(g, name),
        Command::AppsSettings(args) => builds::settings(g, args),
        Command::Builds { active, limit } => builds::builds(g, active, limit),
        Command::BuildsInfo { id } => builds::info(g, id),
        Command::BuildsLogs { id, follow } => builds::logs(g, id, follow),
        Command::BuildsCancel { id } => builds::cancel(g, id),
        Command::Deploy { dir } => deploy(g, dir),
        Command::Releases => releases(g),
        Command::Rollback { version } => rollback(g, version),
        Command::Env { reveal } => env_show(g, reveal),
        Command::EnvSet { pairs } => env_set(g, &pairs),
        Command::EnvUnset { keys } => env_unset(g, &keys),
        Command::Scale { pairs } => scale(g, &pairs),
        Command::Restart => restart(g),
        Command::Domains => domains(g),
        Command::DomainsAdd { host } => domains_add(g, &host),
        Command::DomainsRemove { host } => domains_remove(g, &host),
        Command::Logs { follow, lines } => logs(g, follow, lines),
        Command::Ps => ps(g),
        Command::Services => services(g),
        Command::Nodes => nodes(g),
        Command::Certs => certs(g),
        Command::Tokens => tokens(g),
        Command::TokensCreate { name, scope, apps } => tokens_create(g, &name, scope, apps),
        Command::TokensRevoke { id } => tokens_revoke(g, id),
        Command::Notify => notify_list(g),
        Command::NotifyAdd { target } => notify_add(g, &target),
        Command::NotifyRemove { id } => notify_remove(g, id),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------------------------

fn connect(g: &Global) -> Result<Client, Error> {
    let creds = client::credentials_path();
    let target = client::discover(&Discovery {
        url: g.url.as_deref(),
        token: g.token.as_deref(),
        ca: g.ca.as_deref(),
        credentials: creds.as_deref(),
        data_dir: Some(&g.data_dir),
    })?;
    Client::new(target)
}

/// Where the app name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFrom {
    Flag,
    Env,
    Dir,
}

/// The app a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRef {
    pub name: String,
    pub from: AppFrom,
}

impl AppRef {
    fn path(&self) -> String {
        format!("/api/v1/apps/{}", seg(&self.name))
    }
    /// Adds a hint to an "unknown app" answer.
    fn explain(&self, e: Error) -> Error {
        if !e.is_not_found() {
            return e;
        }
        match self.from {
            AppFrom::Dir => e.or_hint(format!(
                "the app name `{}` comes from the directory's name; choose one with -a NAME (or BERTH_APP), see `berth apps`",
                self.name
            )),
            AppFrom::Env => e.or_hint(format!(
                "the app name `{}` comes from BERTH_APP; see `berth apps`, or create it with `berth apps:create {}`",
                self.name, self.name
            )),
            AppFrom::Flag => e.or_hint(format!(
                "see `berth apps`, or create it with `berth apps:create {}`",
                self.name
            )),
        }
    }
}

/// A directory name made into an app name: lowercase letters, digits and dashes.
pub fn app_name_from_dir(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `-a NAME`, else `BERTH_APP`, else the base name of `dir`.
pub fn infer_app(flag: Option<&str>, env: Option<&str>, dir: &Path) -> Result<AppRef, Error> {
    if let Some(n) = flag.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(AppRef {
            name: n.to_string(),
            from: AppFrom::Flag,
        });
    }
    if let Some(n) = env.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(AppRef {
            name: n.to_string(),
            from: AppFrom::Env,
        });
    }
    let name = dir
        .file_name()
        .map(|n| app_name_from_dir(&n.to_string_lossy()))
        .unwrap_or_default();
    if name.is_empty() {
        return Err(Error::usage(format!(
            "cannot tell the app from the directory {}",
            dir.display()
        ))
        .with_hint("choose one with -a NAME, or set BERTH_APP"));
    }
    Ok(AppRef {
        name,
        from: AppFrom::Dir,
    })
}

fn app_for(g: &Global, dir: Option<&Path>) -> Result<AppRef, Error> {
    let env = std::env::var("BERTH_APP").ok();
    let cwd;
    let dir = match dir {
        Some(d) => d,
        None => {
            cwd = std::env::current_dir().unwrap_or_default();
            &cwd
        }
    };
    infer_app(g.app.as_deref(), env.as_deref(), dir)
}

fn app(g: &Global) -> Result<AppRef, Error> {
    app_for(g, None)
}

/// `[A-Za-z_][A-Za-z0-9_]*`
pub fn valid_env_key(k: &str) -> bool {
    let mut chars = k.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `K=V` arguments (a later K wins).
pub fn parse_env_args(args: &[String]) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(Error::usage(format!("`{a}` is not KEY=VALUE"))
                .with_hint("berth env:set KEY=VALUE [KEY=VALUE...], e.g. berth env:set DEBUG=1; quote values with spaces"));
        };
        if !valid_env_key(k) {
            return Err(
                Error::usage(format!("`{k}` is not a valid variable name")).with_hint(
                    "names are letters, digits and _, not starting with a digit, like DATABASE_URL",
                ),
            );
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `KEY` arguments of env:unset.
pub fn parse_env_keys(args: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for k in args {
        if !valid_env_key(k) {
            let hint = if k.contains('=') {
                "env:unset takes names only, like berth env:unset DEBUG"
            } else {
                "names are letters, digits and _, not starting with a digit, like DATABASE_URL"
            };
            return Err(Error::usage(format!("`{k}` is not a valid variable name")).with_hint(hint));
        }
        if !out.contains(k) {
            out.push(k.clone());
        }
    }
    Ok(out)
}

/// `TYPE=N` arguments of scale.
pub fn parse_formation(args: &[String]) -> Result<BTreeMap<String, u32>, Error> {
    let hint = "berth scale TYPE=N [TYPE=N...], e.g. berth scale web=3 worker=1";
    let mut out = BTreeMap::new();
    for a in args {
        let Some((t, n)) = a.split_once('=') else {
            return Err(Error::usage(format!("`{a}` is not TYPE=N")).with_hint(hint));
        };
        let ok_type = !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok_type {
            return Err(Error::usage(format!("`{t}` is not a process type")).with_hint(hint));
        }
        let n: u32 = n.trim().parse().map_err(|_| {
            Error::usage(format!("`{n}` is not a number of instances")).with_hint(hint)
        })?;
        out.insert(t.to_string(), n);
    }
    Ok(out)
}

/// `3` or `v3`.
pub fn parse_version(v: &str) -> Result<u64, Error> {
    let t = v.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    t.parse().map_err(|_| {
        Error::usage(format!("`{v}` is not a release version"))
            .with_hint("pass a number like 3 or v3 (see `berth releases`), or nothing for the previous release")
    })
}

fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{text}");
}

/// A JSON value as a table cell.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.is_empty() => "-".into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An RFC 3339 time shortened for a table.
fn when(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() >= 19 && s.is_char_boundary(19) => s[..19].replacen('T', " ", 1),
        _ => cell(v),
    }
}

fn version(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("v{n}"),
        _ => cell(v),
    }
}

/// Aligned columns, two spaces apart; the last one is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(c.chars().count());
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(headers, rows));
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Prints the list `v` a command fetched: as JSON with --json; else `empty` on stderr when the
/// list is empty (if there is such a message); else a table with the row `row` makes of each item.
fn print_list(
    json: bool,
    v: &Value,
    empty: Option<&str>,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    if json {
        print_json(v);
    } else if let Some(msg) = empty.filter(|_| list(v).is_empty()) {
        eprintln!("{msg}");
    } else {
        let rows: Vec<Vec<String>> = list(v).iter().map(row).collect();
        print_table(headers, &rows);
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

// ---------------------------------------------------------------------------------------------
// login / logout
// ---------------------------------------------------------------------------------------------

fn login(g: &Global, server: Option<String>) -> Result<i32, Error> {
    let Some(url) = server.or_else(|| g.url.clone()) else {
        return Err(Error::usage("login needs the server's URL")
            .with_hint("berth login https://berth.example.com --token T"));
    };
    let url = client::normalize_url(&url)?;
    let Some(token) = g.token.clone().filter(|t| !t.trim().is_empty()) else {
        return Err(Error::usage("login needs a token").with_hint(
            "pass --token T (or BERTH_TOKEN); create one with `berth tokens:create` on the server",
        ));
    };
    let token = token.trim().to_string();
    let ca =
        match &g.ca {
            Some(p) => Some(std::fs::canonicalize(p).map_err(|e| {
                Error::usage(format!("cannot read the CA file {}: {e}", p.display()))
            })?),
            None => None,
        };
    let client = Client::new(Target {
        url: url.clone(),
        token: Some(token.clone()),
        ca: ca.clone(),
        source: Source::Flags,
    })?;
    let apps = match client.get("/api/v1/apps") {
        Ok(v) => Some(v),
        // Authenticated, only not allowed to list every app: the token is good.
        Err(e) if e.status == Some(403) => None,
        Err(e) => return Err(e),
    };
    let Some(path) = client::credentials_path() else {
        return Err(Error::failed("cannot tell where to save the credentials")
            .with_hint("set HOME or XDG_CONFIG_HOME"));
    };
    client::save_credentials(
        &path,
        &Credentials {
            url: url.clone(),
            token,
            ca,
        },
    )
    .map_err(|e| Error::failed(format!("cannot save {}: {e}", path.display())))?;
    match apps {
        Some(a) => {
            let n = list(&a).len();
            println!(
                "logged in to {url} ({n} app{}); saved in {}",
                if n == 1 { "" } else { "s" },
                path.display()
            )
        }
        None => println!("logged in to {url}; saved in {}", path.display()),
    }
    Ok(EXIT_OK)
}

fn logout() -> Result<i32, Error> {
    let Some(path) = client::credentials_path() else {
        println!("not logged in");
        return Ok(EXIT_OK);
    };
    let url = client::load_credentials(&path)
        .ok()
        .flatten()
        .map(|c| c.url);
    let removed = client::remove_credentials(&path)
        .map_err(|e| Error::failed(format!("cannot remove {}: {e}", path.display())))?;
    match (removed, url) {
        (true, Some(u)) => println!("logged out of {u}"),
        (true, None) => println!("removed {}", path.display()),
        (false, _) => println!("not logged in"),
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------------
// apps
// ---------------------------------------------------------------------------------------------

fn apps(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/apps")?;
    print_list(
        g.json,
        &v,
        Some("no apps yet (create one with `berth apps:create NAME`, or `berth deploy`)"),
        &["NAME", "STATUS", "RELEASE", "FORMATION", "URL"],
        |a| {
            vec![
                cell(&a["name"]),
                cell(&a["status"]),
                version(&a["live_release"]),
                cell(&a["formation"]),
                cell(&a["url"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

fn apps_create(g: &Global, name: &str) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.post("/api/v1/apps", &json!({ "name": name }))?;
    if g.json {
        print_json(&v);
    } else {
        let url = cell(&v["url"]);
        if url == "-" {
            println!("created {name}");
        } else {
            println!("created {name} → {url}");
        }
        eprintln!("deploy it with `berth deploy -a {name}`");
    }
    Ok(EXIT_OK)
}

fn apps_destroy(g: &Global, name: Option<String>, confirm: Option<String>) -> Result<i32, Error> {
    let app = match name {
        Some(n) => AppRef {
            name: n,
            from: AppFrom::Flag,
        },
        None => app(g)?,
    };
    match confirm {
        Some(c) if c == app.name => {}
        Some(c) => {
            return Err(
                Error::usage(format!("--confirm {c} does not match the app {}", app.name))
                    .with_hint(format!(
                        "berth apps:destroy {} --confirm {}",
                        app.name, app.name
                    )),
            )
        }
        None => {
            return Err(Error::usage(format!(
                "this destroys {}: its instances, releases, routes and environment",
                app.name
            ))
            .with_hint(format!(
                "to go on, run `berth apps:destroy {} --confirm {}`",
                app.name, app.name
            )))
        }
    }
    let c = connect(g)?;
    let v = c.delete(&app.path()).map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else {
        println!("destroyed {}", app.name);
    }
    Ok(EXIT_OK)
}

/// The app named on the command line, else -a / BERTH_APP / the directory's name.
fn named_app(g: &Global, name: Option<String>) -> Result<AppRef, Error> {
    match name {
        Some(n) => Ok(AppRef {
            name: n,
            from: AppFrom::Flag,
        }),
        None => app(g),
    }
}

fn apps_connect(
    g: &Global,
    name: Option<String>,
    repo: &str,
    branch: Option<String>,
) -> Result<i32, Error> {
    let app = named_app(g, name)?;
    let mut body = json!({ "url": repo });
    if let Some(b) = branch {
        body["branch"] = b.into();
    }
    let c = connect(g)?;
    let v = c
        .put(&format!("{}/repo", app.path()), &body)
        .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    println!(
        "connected {} to {} (branch {})",
        app.name,
        cell(&v["url"]),
        cell(&v["branch"])
    );
    println!("webhook secret: {}", cell(&v["secret"]));
    if let Some(urls) = v["webhook_urls"].as_object() {
        println!("webhook URLs (content type application/json, push events):");
        for (provider, url) in urls {
            println!("  {provider:<7} {}", cell(url));
        }
    }
    eprintln!(
        "hint: add the URL and the secret as a push webhook in the repository's settings; the secret is not shown again (run apps:connect again for a new one)"
    );
    Ok(EXIT_OK)
}

fn apps_disconnect(g: &Global, name: Option<String>) -> Result<i32, Error> {
    let app = named_app(g, name)?;
    let c = connect(g)?;
    let v = c
        .delete(&format!("{}/repo", app.path()))
        .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else {
        println!("disconnected {} from its repository", app.name);
    }
    Ok(EXIT_OK)
}

fn apps_info(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c.get(&app.path()).map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let rows = [
        ("name", cell(&v["name"])),
        ("status", cell(&v["status"])),
        ("release", version(&v["live_release"])),
        ("formation", cell(&v["formation"])),
        ("url", cell(&v["url"])),
        ("domains", cell(&v["domains"])),
        ("created", when(&v["created_at"])),
    ];
    for (k, val) in rows {
        println!("{:<10} {val}", format!("{k}:"));
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------------
// deploy, rollback and following a deploy
// ---------------------------------------------------------------------------------------------

/// Counts the bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

fn upload_bar(len: u64, json: bool) -> Option<indicatif::ProgressBar> {
    if json || !io::stderr().is_terminal() {
        return None;
    }
    let style = indicatif::ProgressStyle::with_template(
        "uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    let bar = indicatif::ProgressBar::new(len).with_style(style);
    Some(bar)
}

fn deploy(g: &Global, dir: Option<PathBuf>) -> Result<i32, Error> {
    let dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let usage_hint = "berth deploy [DIR]: DIR defaults to the current directory";
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(
                Error::usage(format!("{} is not a directory", dir.display())).with_hint(usage_hint),
            )
        }
        Err(e) => {
            return Err(
                Error::usage(format!("cannot read {}: {e}", dir.display())).with_hint(usage_hint)
            )
        }
    }
    let full = std::fs::canonicalize(&dir)
        .map_err(|e| Error::usage(format!("cannot read {}: {e}", dir.display())))?;
    let app = app_for(g, Some(&full))?;
    let c = connect(g)?;

    match c.get(&app.path()) {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            c.post("/api/v1/apps", &json!({ "name": app.name }))?;
            eprintln!("created app {} (it did not exist)", app.name);
        }
        Err(e) => return Err(app.explain(e)),
    }

    let mut file = tempfile::tempfile()
        .map_err(|e| Error::failed(format!("cannot create a temporary file: {e}")))?;
    let stats = {
        let mut w = io::BufWriter::new(&mut file);
        let stats = build::bundle::pack(&full, &mut w)
            .map_err(|e| Error::failed(format!("cannot pack {}: {e}", full.display())))?;
        w.flush()
            .map_err(|e| Error::failed(format!("cannot write the bundle: {e}")))?;
        stats
    };
    let len = file
        .metadata()
        .map_err(|e| Error::failed(format!("cannot read the bundle: {e}")))?
        .len();
    file.rewind()
        .map_err(|e| Error::failed(format!("cannot read the bundle: {e}")))?;
    if !g.json {
        eprintln!(
            "packed {} files ({}) from {} into {}",
            stats.files,
            human_bytes(stats.bytes),
            full.display(),
            human_bytes(len)
        );
    }
    let bar = upload_bar(len, g.json);
    let mut body = Progress {
        inner: file,
        bar: bar.clone(),
    };
    let res = c.upload(
        &format!("{}/deploys", app.path()),
        "application/gzip",
        &mut body,
        len,
    );
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let d = res.map_err(|e| app.explain(e))?;
    if !g.json {
        eprintln!(
            "uploaded; deploy {} of {} started",
            cell(&d["id"]),
            app.name
        );
    }
    let fin = follow_deploy(&c, &app, &d, g.json)?;
    Ok(report_deploy(&app, &fin, g.json))
}

fn rollback(g: &Global, version: Option<String>) -> Result<i32, Error> {
    let body = match version {
        Some(v) => json!({ "version": parse_version(&v)? }),
        None => json!({}),
    };
    let app = app(g)?;
    let c = connect(g)?;
    let d = c
        .post(&format!("{}/rollback", app.path()), &body)
        .map_err(|e| app.explain(e))?;
    let fin = follow_deploy(&c, &app, &d, g.json)?;
    Ok(report_deploy(&app, &fin, g.json))
}

fn finished(d: &Value) -> bool {
    !matches!(d["status"].as_str(), Some("queued" | "running") | None)
}

/// Prints a deploy's log as it is written and returns the finished `Deploy` (see
/// [`follow_deploy_log`]). Log lines go to stdout, or stderr with --json.
fn follow_deploy(c: &Client, app: &AppRef, d: &Value, json: bool) -> Result<Value, Error> {
    let print_line = |line: &str| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    follow_deploy_log(c, &app.path(), d, print_line).map_err(|e| app.explain(e))
}

/// Calls `print_line` for each line of the log of deploy `d` (of the app at `app_path`,
/// `/api/v1/apps/<app>`) as it is written and returns the finished `Deploy`: follows the SSE
/// log; when the stream breaks before its `end`, polls the deploy every 500 ms and prints the
/// rest of the log once it is done. `berth deploy` and the git push hook (`hook.rs`) use it.
pub(crate) fn follow_deploy_log(
    c: &Client,
    app_path: &str,
    d: &Value,
    mut print_line: impl FnMut(&str),
) -> Result<Value, Error> {
    let id = match &d["id"] {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        _ => {
            return Err(Error::failed(
                "the server's answer has no deploy id".to_string(),
            ))
        }
    };
    let deploy_path = format!("{app_path}/deploys/{}", seg(&id));
    let mut printed: usize = 0;
    let mut end: Option<Value> = None;
    match c.stream(&format!("{deploy_path}/log?follow=true")) {
        Ok(reader) => {
            let _ = client::read_sse(reader, |event, data| match event {
                "log" => {
                    for line in data.split('\n') {
                        print_line(line);
                        printed += 1;
                    }
                    true
                }
                "end" => {
                    end = serde_json::from_str::<Value>(data).ok();
                    false
                }
                _ => true,
            });
        }
        // The token or the deploy is gone: polling will not help.
        Err(e) if e.status == Some(401) || e.status == Some(403) => return Err(e),
        Err(_) => {}
    }
    if let Some(v) = end.filter(finished) {
        return Ok(v);
    }
    eprintln!("berth: the log stream was cut; waiting for the deploy to finish");
    let mut failures = 0;
    let fin = loop {
        std::thread::sleep(Duration::from_millis(500));
        match c.get(&deploy_path) {
            Ok(v) if finished(&v) => break v,
            Ok(_) => failures = 0,
            // Transport errors (the server restarting, say): retry for about a minute.
            Err(e)
                if e.status.is_none() && e.code == client::EXIT_UNREACHABLE && failures < 120 =>
            {
                failures += 1;
            }
            Err(e) => return Err(e),
        }
    };
    if let Ok(text) = c.get_text(&format!("{deploy_path}/log")) {
        for line in text.lines().skip(printed) {
            print_line(line);
        }
    }
    Ok(fin)
}

/// Prints how a deploy ended; its exit code.
fn report_deploy(app: &AppRef, d: &Value, json: bool) -> i32 {
    if json {
        print_json(d);
    }
    match d["status"].as_str() {
        Some("succeeded") => {
            if !json {
                let verb = match d["kind"].as_str() {
                    Some("rollback") => "rolled back",
                    Some("restart") => "restarted",
                    _ => "deployed",
                };
                let name = d["app"].as_str().unwrap_or(&app.name);
                let mut msg = format!("{verb} {name}");
                if !d["release"].is_null() {
                    let sep = if verb == "rolled back" { " to " } else { " " };
                    msg.push_str(sep);
                    msg.push_str(&version(&d["release"]));
                }
                if let Some(url) = d["url"].as_str().filter(|u| !u.is_empty()) {
                    msg.push_str(" → ");
                    msg.push_str(url);
                }
                println!("{msg}");
            }
            EXIT_OK
        }
        Some("failed") => {
            let reason = d["reason"].as_str().unwrap_or("no reason given");
            eprintln!("berth: deploy failed: {reason}");
            EXIT_FAILED
        }
        other => {
            eprintln!(
                "berth: the deploy ended as {}",
                other.unwrap_or("(no status)")
            );
            EXIT_FAILED
        }
    }
}

/// After env:set/env:unset/scale: follows the restart deploy the server started, if any.
/// With --json, prints the answer with its `deploy` replaced by the finished one.
fn follow_change(c: &Client, app: &AppRef, mut answer: Value, json: bool) -> Result<i32, Error> {
    let deploy = answer.get("deploy").cloned().unwrap_or(Value::Null);
    if deploy.is_null() {
        if json {
            print_json(&answer);
        }
        return Ok(EXIT_OK);
    }
    if !json {
        eprintln!("restarting {} (deploy {})", app.name, cell(&deploy["id"]));
    }
    let fin = follow_deploy(c, app, &deploy, json)?;
    if json {
        if let Some(o) = answer.as_object_mut() {
            o.insert("deploy".into(), fin.clone());
        }
        print_json(&answer);
        return Ok(if fin["status"] == "succeeded" {
            EXIT_OK
        } else {
            report_deploy(app, &fin, false)
        });
    }
    Ok(report_deploy(app, &fin, false))
}

// ---------------------------------------------------------------------------------------------
// releases, env, scale
// ---------------------------------------------------------------------------------------------

fn releases(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .get(&format!("{}/releases", app.path()))
        .map_err(|e| app.explain(e))?;
    print_list(
        g.json,
        &v,
        Some(&format!(
            "{} has no releases yet (deploy with `berth deploy`)",
            app.name
        )),
        &[
            "VERSION",
            "LIVE",
            "STATUS",
            "KIND",
            "CREATED",
            "DESCRIPTION",
        ],
        |r| {
            vec![
                version(&r["version"]),
                if r["live"] == Value::Bool(true) {
                    "*".into()
                } else {
                    String::new()
                },
                cell(&r["status"]),
                cell(&r["kind"]),
                when(&r["created_at"]),
                cell(&r["description"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

fn print_env(v: &Value) {
    if let Some(o) = v.as_object() {
        let sorted: BTreeMap<&String, &Value> = o.iter().collect();
        for (k, val) in sorted {
            let val = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k}={val}");
        }
    }
}

fn env_show(g: &Global, reveal: bool) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let path = if reveal {
        format!("{}/env?reveal=true", app.path())
    } else {
        format!("{}/env", app.path())
    };
    let v = c.get(&path).map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else if v.as_object().is_none_or(Map::is_empty) {
        eprintln!(
            "{} has no environment variables (set some with `berth env:set KEY=VALUE`)",
            app.name
        );
    } else {
        print_env(&v);
    }
    Ok(EXIT_OK)
}

fn env_set(g: &Global, pairs: &[String]) -> Result<i32, Error> {
    let set = parse_env_args(pairs)?;
    let app = app(g)?;
    let c = connect(g)?;
    let answer = c
        .patch(&format!("{}/env", app.path()), &json!({ "set": set }))
        .map_err(|e| app.explain(e))?;
    if !g.json {
        let keys: Vec<&str> = set.keys().map(String::as_str).collect();
        println!("set {} on {}", keys.join(", "), app.name);
    }
    follow_change(&c, &app, answer, g.json)
}

fn env_unset(g: &Global, keys: &[String]) -> Result<i32, Error> {
    let keys = parse_env_keys(keys)?;
    let app = app(g)?;
    let c = connect(g)?;
    let answer = c
        .patch(&format!("{}/env", app.path()), &json!({ "unset": keys }))
        .map_err(|e| app.explain(e))?;
    if !g.json {
        println!("unset {} on {}", keys.join(", "), app.name);
    }
    follow_change(&c, &app, answer, g.json)
}

fn restart(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let answer = c
        .post(&format!("{}/restart", app.path()), &json!({}))
        .map_err(|e| app.explain(e))?;
    follow_change(&c, &app, answer, g.json)
}

fn scale(g: &Global, pairs: &[String]) -> Result<i32, Error> {
    let formation = parse_formation(pairs)?;
    let app = app(g)?;
    let c = connect(g)?;
    if formation.is_empty() {
        let v = c.get(&app.path()).map_err(|e| app.explain(e))?;
        if g.json {
            print_json(&v["formation"]);
        } else {
            println!("{}", cell(&v["formation"]));
        }
        return Ok(EXIT_OK);
    }
    let answer = c
        .put(&format!("{}/formation", app.path()), &json!(formation))
        .map_err(|e| app.explain(e))?;
    if !g.json {
        let shown = if answer["formation"].is_object() {
            cell(&answer["formation"])
        } else {
            cell(&json!(formation))
        };
        println!("scaled {}: {shown}", app.name);
    }
    follow_change(&c, &app, answer, g.json)
}

// ---------------------------------------------------------------------------------------------
// domains, logs, ps
// ---------------------------------------------------------------------------------------------

fn print_lines(v: &Value) {
    for d in list(v) {
        println!("{}", cell(d));
    }
}

fn domains(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .get(&format!("{}/domains", app.path()))
        .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else if list(&v).is_empty() {
        eprintln!(
            "{} has no custom domains (add one with `berth domains:add HOST`)",
            app.name
        );
    } else {
        print_lines(&v);
    }
    Ok(EXIT_OK)
}

fn domains_add(g: &Global, host: &str) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .post(&format!("{}/domains", app.path()), &json!({ "host": host }))
        .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else {
        println!("added {host} to {}", app.name);
        eprintln!("point {host}'s DNS at this server for it to be reached");
    }
    Ok(EXIT_OK)
}

fn domains_remove(g: &Global, host: &str) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .delete(&format!("{}/domains/{}", app.path(), seg(host)))
        .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else {
        println!("removed {host} from {}", app.name);
    }
    Ok(EXIT_OK)
}

fn logs(g: &Global, follow: bool, lines: u32) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    if !follow {
        let text = c
            .get_text(&format!("{}/logs?lines={lines}", app.path()))
            .map_err(|e| app.explain(e))?;
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        if !text.is_empty() && !text.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        return Ok(EXIT_OK);
    }
    let reader = c
        .stream(&format!("{}/logs?follow=true&lines={lines}", app.path()))
        .map_err(|e| app.explain(e))?;
    let mut stdout_gone = false;
    let result = client::read_sse(reader, |event, data| {
        if event == "log" || event == "message" {
            let mut out = io::stdout().lock();
            if writeln!(out, "{data}").and_then(|_| out.flush()).is_err() {
                // `berth logs -f | head`: stop quietly.
                stdout_gone = true;
                return false;
            }
        }
        true
    });
    if stdout_gone {
        return Ok(EXIT_OK);
    }
    let msg = match result {
        Ok(()) => "the server closed the log stream".to_string(),
        Err(e) => format!("the log stream broke: {e}"),
    };
    Err(Error::unreachable(msg).with_hint(format!("run `berth logs -f -a {}` again", app.name)))
}

fn services(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .get(&format!("{}/services", app.path()))
        .map_err(|e| app.explain(e))?;
    print_list(
        g.json,
        &v,
        Some(&format!("{} has no services", app.name)),
        &["SERVICE", "STATE", "HEALTH"],
        |s| vec![cell(&s["name"]), cell(&s["state"]), cell(&s["health"])],
    );
    Ok(EXIT_OK)
}

fn certs(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/certs")?;
    print_list(
        g.json,
        &v,
        Some("no routed host yet"),
        &["HOST", "SOURCE", "STATUS", "ISSUER", "EXPIRES", "ERROR"],
        |h| {
            let acme = &h["acme"];
            let status = match (acme["status"].as_str(), acme["retry_in"].as_u64()) {
                (Some("failed"), Some(s)) => format!("failed (retry in {})", span(s)),
                (Some(st), _) => st.to_string(),
                (None, _) => "-".to_string(),
            };
            vec![
                cell(&h["host"]),
                cell(&h["source"]),
                status,
                cell(&h["issuer"]),
                expires(&h["not_after"]),
                cell(&acme["error"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

/// `in 89d`, `in 5h`, `expired`, from unix seconds.
fn expires(v: &Value) -> String {
    let Some(at) = v.as_u64() else {
        return cell(v);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match at.checked_sub(now) {
        Some(left) if left > 0 => format!("in {}", span(left)),
        _ => "expired".to_string(),
    }
}

/// A duration in its largest whole unit: `89d`, `5h`, `12m`, `30s`.
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn nodes(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/nodes")?;
    print_list(
        g.json,
        &v,
        Some("the swarm has no nodes"),
        &[
            "ID",
            "HOSTNAME",
            "ROLE",
            "STATE",
            "AVAILABILITY",
            "ADDRESS",
            "TASKS",
        ],
        |n| {
            let role = match n["leader"].as_bool() {
                Some(true) => format!("{} (leader)", cell(&n["role"])),
                _ => cell(&n["role"]),
            };
            vec![
                cell(&n["id"]).chars().take(12).collect(),
                cell(&n["hostname"]),
                role,
                cell(&n["state"]),
                cell(&n["availability"]),
                cell(&n["addr"]),
                cell(&n["tasks"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

fn ps(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .get(&format!("{}/instances", app.path()))
        .map_err(|e| app.explain(e))?;
    print_list(
        g.json,
        &v,
        Some(&format!(
            "{} has no instances (deploy it, or `berth scale web=1`)",
            app.name
        )),
        &["ID", "TYPE", "RELEASE", "STATE", "PORT", "PID"],
        |i| {
            vec![
                cell(&i["id"]),
                cell(&i["proc_type"]),
                version(&i["release"]),
                cell(&i["state"]),
                cell(&i["port"]),
                cell(&i["pid"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------------
// tokens
// ---------------------------------------------------------------------------------------------

fn tokens(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/tokens")?;
    print_list(
        g.json,
        &v,
        None,
        &["ID", "NAME", "SCOPE", "APPS", "CREATED", "REVOKED"],
        |t| {
            vec![
                cell(&t["id"]),
                cell(&t["name"]),
                cell(&t["scope"]),
                cell(&t["apps"]),
                when(&t["created_at"]),
                when(&t["revoked_at"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

fn tokens_create(
    g: &Global,
    name: &str,
    scope: Scope,
    mut apps: Vec<String>,
) -> Result<i32, Error> {
    apps.retain(|a| !a.trim().is_empty());
    if let Some(a) = g.app.as_deref().filter(|a| !a.trim().is_empty()) {
        if !apps.iter().any(|x| x == a) {
            apps.push(a.to_string());
        }
    }
    if scope == Scope::Admin && !apps.is_empty() {
        return Err(
            Error::usage("an admin token is for every app: --apps is for deploy tokens")
                .with_hint("berth tokens:create NAME --scope deploy --apps APP[,APP...]"),
        );
    }
    let mut body = json!({ "name": name, "scope": scope.as_str() });
    if !apps.is_empty() {
        body["apps"] = json!(apps);
    }
    let c = connect(g)?;
    let v = c.post("/api/v1/tokens", &body)?;
    if g.json {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let Some(secret) = v["token"].as_str() else {
        return Err(Error::failed("the server's answer has no token"));
    };
    eprintln!(
        "created token {} `{}` (scope {}, apps {}); save it now, it is not shown again:",
        cell(&v["id"]),
        cell(&v["name"]),
        cell(&v["scope"]),
        if apps.is_empty() {
            "all".to_string()
        } else {
            cell(&v["apps"])
        }
    );
    println!("{secret}");
    Ok(EXIT_OK)
}

fn tokens_revoke(g: &Global, id: u64) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.delete(&format!("/api/v1/tokens/{id}"))?;
    if g.json {
        print_json(&v);
    } else {
        println!("revoked token {id}");
    }
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------------------------
// notifications
// ---------------------------------------------------------------------------------------------

/// The app of a notify command: `-a NAME` or `BERTH_APP`, never the directory's name (without
/// one, the command is about every app).
fn notify_app(g: &Global) -> Option<String> {
    g.app
        .clone()
        .or_else(|| std::env::var("BERTH_APP").ok())
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
}

fn notify_list(g: &Global) -> Result<i32, Error> {
    let app = notify_app(g);
    let c = connect(g)?;
    let v = match &app {
        Some(a) => c.get(&format!("/api/v1/notifications?app={}", seg(a)))?,
        None => c.get("/api/v1/notifications")?,
    };
    let empty = match &app {
        Some(a) => format!(
            "no webhook target gets {a}'s events (add one with `berth notify:add URL -a {a}`)"
        ),
        None => "no webhook targets (add one with `berth notify:add URL [-a APP]`)".to_string(),
    };
    print_list(
        g.json,
        &v,
        Some(&empty),
        &["ID", "APP", "URL", "CREATED"],
        |t| {
            vec![
                cell(&t["id"]),
                t["app"].as_str().unwrap_or("(every app)").to_string(),
                cell(&t["url"]),
                when(&t["created_at"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

fn notify_add(g: &Global, url: &str) -> Result<i32, Error> {
    let app = notify_app(g);
    let mut body = json!({ "url": url });
    if let Some(a) = &app {
        body["app"] = json!(a);
    }
    let c = connect(g)?;
    let v = c.post("/api/v1/notifications", &body)?;
    if g.json {
        print_json(&v);
        return Ok(EXIT_OK);
    }
    let Some(secret) = v["secret"].as_str() else {
        return Err(Error::failed("the server's answer has no secret"));
    };
    eprintln!(
        "added webhook target {} for {}; its signing secret (save it now, it is not shown again):",
        cell(&v["id"]),
        match &app {
            Some(a) => format!("{a}'s build and deploy events"),
            None => "every app's build and deploy events".to_string(),
        }
    );
    println!("{secret}");
    eprintln!(
        "hint: each POST carries X-Berth-Signature-256: sha256=<hex HMAC-SHA256 of the raw body, keyed with this secret>; receivers compute it and compare in constant time"
    );
    Ok(EXIT_OK)
}

fn notify_remove(g: &Global, id: u64) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c
        .delete(&format!("/api/v1/notifications/{id}"))
        .map_err(|e| e.or_hint("`berth notify` lists the targets"))?;
    if g.json {
        print_json(&v);
    } else {
        println!("removed webhook target {id}");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_args() {
        let m = parse_env_args(&strings(&["A=1", "_B=x=y", "C=", "A=2"])).unwrap();
        assert_eq!(m.get("A").unwrap(), "2");
        assert_eq!(m.get("_B").unwrap(), "x=y");
        assert_eq!(m.get("C").unwrap(), "");
        for bad in ["NOEQUALS", "1A=x", "=x", "A-B=1", "A B=1"] {
            let e = parse_env_args(&strings(&[bad])).unwrap_err();
            assert_eq!(e.code, client::EXIT_USAGE, "{bad}");
            assert!(e.hint.is_some());
        }
        assert_eq!(
            parse_env_keys(&strings(&["A", "A", "b_2"])).unwrap(),
            strings(&["A", "b_2"])
        );
        assert!(parse_env_keys(&strings(&["A=1"]))
            .unwrap_err()
            .hint
            .unwrap()
            .contains("names only"));
        assert!(valid_env_key("_"));
        assert!(!valid_env_key(""));
    }

    #[test]
    fn formation_and_version() {
        let f = parse_formation(&strings(&["web=3", "worker=0"])).unwrap();
        assert_eq!(f.get("web"), Some(&3));
        assert_eq!(f.get("worker"), Some(&0));
        for bad in ["web", "web=-1", "=2", "web=x", "we b=1"] {
            assert_eq!(
                parse_formation(&strings(&[bad])).unwrap_err().code,
                client::EXIT_USAGE
            );
        }
        assert_eq!(parse_version("v3").unwrap(), 3);
        assert_eq!(parse_version("12").unwrap(), 12);
        assert!(parse_version("three").is_err());
    }

    #[test]
    fn app_inference() {
        let dir = Path::new("/src/My_Shop.web");
        let a = infer_app(Some("hello"), Some("envapp"), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("hello", AppFrom::Flag));
        let a = infer_app(None, Some("envapp"), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("envapp", AppFrom::Env));
        let a = infer_app(Some(""), Some(" "), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("my-shop-web", AppFrom::Dir));
        let e = infer_app(None, None, Path::new("/")).unwrap_err();
        assert_eq!(e.code, client::EXIT_USAGE);
        assert!(e.hint.unwrap().contains("-a NAME"));
        assert_eq!(app_name_from_dir("--Hello  World--"), "hello-world");
        assert_eq!(app_name_from_dir("___"), "");
    }

    #[test]
    fn not_found_hint_names_the_source() {
        let e = Error {
            code: 1,
            status: Some(404),
            message: "app shop not found".into(),
            hint: None,
        };
        let app = AppRef {
            name: "shop".into(),
            from: AppFrom::Dir,
        };
        assert!(app.explain(e.clone()).hint.unwrap().contains("-a NAME"));
        let server_hint = e.clone().with_hint("server says");
        assert_eq!(
            app.explain(server_hint).hint.as_deref(),
            Some("server says")
        );
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "STATUS", "URL"],
            &[
                vec!["a".into(), "running".into(), "http://a".into()],
                vec!["longname".into(), "idle".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME      STATUS   URL\na         running  http://a\nlongname  idle     -\n"
        );
        assert_eq!(cell(&json!({"web": 2, "worker": 1})), "web=2 worker=1");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(
            when(&json!("2024-05-01T12:34:56.123Z")),
            "2024-05-01 12:34:56"
        );
        assert_eq!(version(&json!(3)), "v3");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

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
            Command::Logs {
                follow: true,
                lines: 5
            }
        ));
        assert!(TestCli::try_parse_from(["berth", "env:set"]).is_err());
    }
}
