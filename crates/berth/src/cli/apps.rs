//! `berth apps`, `apps:create`, `apps:destroy`, `apps:info`, `apps:connect`,
//! `apps:disconnect`.

use super::app_ref::named_app;
use super::output::{cell, print_json, print_list, version, when};
use super::{connect, Global};
use crate::client::{Error, EXIT_OK};
use serde_json::json;

pub(super) fn apps(g: &Global) -> Result<i32, Error> {
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

pub(super) fn apps_create(g: &Global, name: &str) -> Result<i32, Error> {
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

pub(super) fn apps_destroy(
    g: &Global,
    name: Option<String>,
    confirm: Option<String>,
    keep_volumes: bool,
    yes: bool,
) -> Result<i32, Error> {
    let app = named_app(g, name)?;
    if yes {
        return Err(Error::usage(
            "apps:destroy has no --yes or --force: destroying an app is confirmed by naming it",
        )
        .with_hint(format!(
            "berth apps:destroy {} --confirm {}",
            app.name, app.name
        )));
    }
    let c = connect(g)?;
    // What goes with the app, named before anything is deleted: its services' data.
    let volumes: Vec<String> = c
        .get(&format!("{}/volumes", app.path()))
        .map_err(|e| app.explain(e))?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let data = if volumes.is_empty() || keep_volumes {
        String::new()
    } else {
        format!(
            ", and the data in its volumes {} (keep them with --keep-volumes)",
            volumes.join(", ")
        )
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
                "this destroys {}: its instances, releases, routes and environment{data}",
                app.name
            ))
            .with_hint(format!(
                "to go on, run `berth apps:destroy {} --confirm {}{}`",
                app.name,
                app.name,
                if keep_volumes { " --keep-volumes" } else { "" }
            )))
        }
    }
    let path = if keep_volumes {
        format!("{}?keep_volumes=true", app.path())
    } else {
        app.path()
    };
    let v = c.delete(&path).map_err(|e| app.explain(e))?;
    if g.json {
        print_json(&v);
    } else if volumes.is_empty() {
        println!("destroyed {}", app.name);
    } else if keep_volumes {
        println!(
            "destroyed {}; kept its volumes {}",
            app.name,
            volumes.join(", ")
        );
    } else {
        println!(
            "destroyed {} and its volumes {}",
            app.name,
            volumes.join(", ")
        );
    }
    Ok(EXIT_OK)
}

pub(super) fn apps_connect(
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

pub(super) fn apps_disconnect(g: &Global, name: Option<String>) -> Result<i32, Error> {
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

pub(super) fn apps_info(g: &Global, name: Option<String>) -> Result<i32, Error> {
    let app = named_app(g, name)?;
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
