//! `berth tokens`, `tokens:create`, `tokens:revoke`.

use super::output::{cell, print_json, print_list, when};
use super::{connect, Global};
use crate::client::{Error, EXIT_OK};
use serde_json::json;

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

pub(super) fn tokens(g: &Global) -> Result<i32, Error> {
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

pub(super) fn tokens_create(
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

pub(super) fn tokens_revoke(g: &Global, id: u64) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.delete(&format!("/api/v1/tokens/{id}"))?;
    if g.json {
        print_json(&v);
    } else {
        println!("revoked token {id}");
    }
    Ok(EXIT_OK)
}
