//! `berth builds`, `builds:info`, `builds:logs`, `builds:cancel` (the build queue across apps)
//! and `apps:settings` (deploy branch, previews, cancel-running).

use super::app_ref::{app, named_app, AppFrom, AppRef};
use super::deploy::{follow_deploy_log, report_deploy};
use super::env::parse_env_args;
use super::output::{cell, for_terminal, list, print_json, print_list, print_table, when};
use super::{connect, Global};
use crate::client::{seg, Error, EXIT_OK};
use serde_json::{json, Map, Value};

/// `on`/`off` (also true/false, yes/no).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    #[value(alias = "true", alias = "yes")]
    On,
    #[value(alias = "false", alias = "no")]
    Off,
}

/// What `apps:settings` may change.
#[derive(clap::Args, Debug, Clone)]
pub struct SettingsArgs {
    /// The app (default: -a / BERTH_APP / the directory's name)
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// A push to this branch deploys the app
    #[arg(long, value_name = "BRANCH")]
    pub deploy_branch: Option<String>,
    /// Deploy pushes to other branches as previews at <branch>--<app>.<domain>
    #[arg(long, value_enum, value_name = "on|off")]
    pub previews: Option<OnOff>,
    /// At most this many previews at once
    #[arg(long, value_name = "N")]
    pub preview_max: Option<u32>,
    /// Env overrides for previews (replaces them all; repeat for several)
    #[arg(long = "preview-env", value_name = "KEY=VALUE")]
    pub preview_env: Vec<String>,
    /// Remove every preview env override
    #[arg(long, conflicts_with = "preview_env")]
    pub clear_preview_env: bool,
    /// A newer push cancels the app's running build
    #[arg(long, value_enum, value_name = "on|off")]
    pub cancel_running: Option<OnOff>,
}

fn build_path(id: u64) -> String {
    format!("/api/v1/builds/{id}")
}

fn commit(d: &Value) -> String {
    let c = &d["commit"];
    match c["sha"].as_str() {
        Some(sha) => {
            let short = sha.get(..7).unwrap_or(sha);
            match c["branch"].as_str() {
                Some(b) => format!("{short} ({b})"),
                None => short.to_string(),
            }
        }
        None => "-".into(),
    }
}

/// `berth builds [-a APP] [--active]`.
pub fn builds(g: &Global, active: bool, limit: u32) -> Result<i32, Error> {
    let c = connect(g)?;
    let mut query = vec![format!("limit={limit}")];
    let app = g.app.clone().or_else(|| std::env::var("BERTH_APP").ok());
    if let Some(a) = &app {
        query.push(format!("app={}", seg(a)));
    }
    if active {
        query.push("active=true".into());
    }
    let v = c.get(&format!("/api/v1/builds?{}", query.join("&")))?;
    print_list(
        g.json,
        &v,
        Some(if active {
            "no build is queued or running"
        } else {
            "no builds yet"
        }),
        &[
            "ID", "APP", "STATUS", "STEP", "TRIGGER", "COMMIT", "STARTED", "MESSAGE",
        ],
        |d| {
            vec![
                cell(&d["id"]),
                cell(&d["app"]),
                cell(&d["status"]),
                cell(&d["step"]),
                cell(&d["trigger"]),
                commit(d),
                when(&d["started_at"]),
                match d["reason"].as_str() {
                    Some(r) => r.to_string(),
                    None => cell(&d["message"]),
                },
            ]
        },
    );
    Ok(EXIT_OK)
}

/// `berth builds:info ID`: the build with its steps.
pub fn info(g: &Global, id: u64) -> Result<i32, Error> {
    let c = connect(g)?;
    let d = c.get(&build_path(id))?;
    if g.json {
        print_json(&d);
        return Ok(EXIT_OK);
    }
    println!("=== build {} of {}", cell(&d["id"]), cell(&d["app"]));
    let c_ = &d["commit"];
    for (k, v) in [
        ("Status", cell(&d["status"])),
        ("Reason", cell(&d["reason"])),
        ("Trigger", cell(&d["trigger"])),
        ("Commit", cell(&c_["sha"])),
        ("Branch", cell(&c_["branch"])),
        ("Author", cell(&c_["author"])),
        ("Message", cell(&d["message"])),
        ("Release", cell(&d["release"])),
        ("Started", when(&d["started_at"])),
        ("Finished", when(&d["finished_at"])),
    ] {
        if v != "-" || matches!(k, "Status" | "Started") {
            println!("{k:<9} {v}");
        }
    }
    let rows: Vec<Vec<String>> = list(&d["steps"])
        .iter()
        .map(|s| {
            vec![
                cell(&s["name"]),
                cell(&s["status"]),
                when(&s["started_at"]),
                when(&s["finished_at"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        println!();
        print_table(&["STEP", "STATUS", "STARTED", "FINISHED"], &rows);
    }
    Ok(EXIT_OK)
}

/// `berth builds:logs ID [-f]`: the log so far, or followed live to the end.
pub fn logs(g: &Global, id: u64, follow: bool) -> Result<i32, Error> {
    let c = connect(g)?;
    if !follow {
        let text = c.get_text(&format!("{}/log", build_path(id)))?;
        print!("{}", for_terminal(&text));
        return Ok(EXIT_OK);
    }
    let d = c.get(&build_path(id))?;
    let app = AppRef {
        name: d["app"].as_str().unwrap_or_default().to_string(),
        from: AppFrom::Flag,
    };
    let fin = follow_deploy_log(&c, &app.path(), &d, |line| {
        if g.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    })?;
    Ok(report_deploy(&app, &fin, g.json))
}

/// `berth builds:cancel ID`.
pub fn cancel(g: &Global, id: u64) -> Result<i32, Error> {
    let c = connect(g)?;
    let d = c.post(&format!("{}/cancel", build_path(id)), &json!({}))?;
    if g.json {
        print_json(&d);
    } else if d["status"] == "cancelled" {
        println!("cancelled build {id} of {}", cell(&d["app"]));
    } else {
        println!(
            "cancelling build {id} of {} (it stops at its next step; `berth builds:logs {id} -f` follows it)",
            cell(&d["app"])
        );
    }
    Ok(EXIT_OK)
}

/// `berth apps:settings [NAME] [--deploy-branch B] [--previews on|off] …`: changes what is
/// given, then shows the settings.
pub fn settings(g: &Global, args: SettingsArgs) -> Result<i32, Error> {
    let app: AppRef = match args.name.clone() {
        Some(_) => named_app(g, args.name.clone())?,
        None => app(g)?,
    };
    let c = connect(g)?;
    let mut body = Map::new();
    if let Some(b) = &args.deploy_branch {
        body.insert("deploy_branch".into(), json!(b));
    }
    if let Some(p) = args.previews {
        body.insert("previews".into(), json!(p == OnOff::On));
    }
    if let Some(n) = args.preview_max {
        body.insert("preview_max".into(), json!(n));
    }
    if let Some(x) = args.cancel_running {
        body.insert("cancel_running".into(), json!(x == OnOff::On));
    }
    if !args.preview_env.is_empty() {
        body.insert(
            "preview_env".into(),
            json!(parse_env_args(&args.preview_env)?),
        );
    }
    if args.clear_preview_env {
        body.insert("preview_env".into(), json!({}));
    }
    let a = if body.is_empty() {
        c.get(&app.path())
    } else {
        c.patch(&format!("{}/settings", app.path()), &Value::Object(body))
    }
    .map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&a["git"]);
        return Ok(EXIT_OK);
    }
    let s = &a["git"];
    println!("=== {} git settings", app.name);
    for (k, v) in [
        ("Deploy branch", cell(&s["deploy_branch"])),
        ("Cancel running", cell(&s["cancel_running"])),
        ("Previews", cell(&s["previews"])),
        ("Preview max", cell(&s["preview_max"])),
        ("Preview env", cell(&s["preview_env"])),
        ("Repository", cell(&s["repo"]["url"])),
        ("Preview of", cell(&s["preview_of"])),
    ] {
        println!("{k:<15} {v}");
    }
    Ok(EXIT_OK)
}
