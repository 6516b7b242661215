//! `berth notify`, `notify:add`, `notify:remove`: webhook targets of build and deploy events.

use super::output::{cell, print_json, print_list, when};
use super::{connect, Global};
use crate::client::{seg, Error, EXIT_OK};
use serde_json::json;

/// The app of a notify command: `-a NAME` or `BERTH_APP`, never the directory's name (without
/// one, the command is about every app).
fn notify_app(g: &Global) -> Option<String> {
    g.app
        .clone()
        .or_else(|| std::env::var("BERTH_APP").ok())
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
}

pub(super) fn notify_list(g: &Global) -> Result<i32, Error> {
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

pub(super) fn notify_add(g: &Global, url: &str) -> Result<i32, Error> {
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

pub(super) fn notify_remove(g: &Global, id: u64) -> Result<i32, Error> {
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
