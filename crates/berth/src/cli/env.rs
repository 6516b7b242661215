//! `berth env`, `env:set`, `env:unset`.

use super::app_ref::app;
use super::deploy::follow_change;
use super::output::{for_terminal, print_json};
use super::{connect, Global};
use crate::client::{Error, EXIT_OK};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

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

fn print_env(v: &Value) {
    if let Some(o) = v.as_object() {
        let sorted: BTreeMap<&String, &Value> = o.iter().collect();
        for (k, val) in sorted {
            let val = match val {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k}={}", for_terminal(&val));
        }
    }
}

pub(super) fn env_show(g: &Global, reveal: bool) -> Result<i32, Error> {
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

pub(super) fn env_set(g: &Global, pairs: &[String]) -> Result<i32, Error> {
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

pub(super) fn env_unset(g: &Global, keys: &[String]) -> Result<i32, Error> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::client;

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
}
