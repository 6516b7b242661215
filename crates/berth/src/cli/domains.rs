//! `berth domains`, `domains:add`, `domains:remove`.

use super::app_ref::app;
use super::output::{list, print_json, print_lines};
use super::{connect, Global};
use crate::client::{seg, Error, EXIT_OK};
use serde_json::json;

pub(super) fn domains(g: &Global) -> Result<i32, Error> {
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

pub(super) fn domains_add(g: &Global, host: &str) -> Result<i32, Error> {
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

pub(super) fn domains_remove(g: &Global, host: &str) -> Result<i32, Error> {
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
