//! `berth ps`, `scale`, `logs` and `services`: an app's running processes.

use super::app_ref::app;
use super::deploy::follow_change;
use super::output::{cell, for_terminal, print_json, print_list, version};
use super::{connect, Global};
use crate::client::{self, Error, EXIT_OK};
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{self, Write};

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

pub(super) fn ps(g: &Global) -> Result<i32, Error> {
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

pub(super) fn scale(g: &Global, pairs: &[String]) -> Result<i32, Error> {
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

/// The query of `GET /apps/{app}/logs` for `args` (without `follow`).
fn logs_query(args: &super::LogsArgs) -> String {
    let source = match args.source {
        super::LogSource::App => "app",
        super::LogSource::Berth => "berth",
        super::LogSource::Router => "router",
        super::LogSource::All => "all",
    };
    let mut q = format!("lines={}&source={source}", args.lines);
    for (key, value) in [
        ("since", &args.since),
        ("until", &args.until),
        ("type", &args.proc_type),
        ("instance", &args.instance),
    ] {
        if let Some(v) = value {
            q.push_str(&format!("&{key}={}", query_escape(v)));
        }
    }
    q
}

/// `text` as a query value: everything but unreserved characters percent-encoded.
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(super) fn logs(g: &Global, args: &super::LogsArgs) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let query = logs_query(args);
    if !args.follow {
        let text = c
            .get_text(&format!("{}/logs?{query}", app.path()))
            .map_err(|e| app.explain(e))?;
        let text = for_terminal(&text);
        let mut out = io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        if !text.is_empty() && !text.ends_with('\n') {
            let _ = out.write_all(b"\n");
        }
        return Ok(EXIT_OK);
    }
    let reader = c
        .stream(&format!("{}/logs?follow=true&{query}", app.path()))
        .map_err(|e| app.explain(e))?;
    let mut stdout_gone = false;
    let result = client::read_sse(reader, |event, data| {
        if event == "log" || event == "message" {
            let mut out = io::stdout().lock();
            if writeln!(out, "{}", for_terminal(data))
                .and_then(|_| out.flush())
                .is_err()
            {
                // `berth logs -f | head`: stop quietly.
                stdout_gone = true;
                return false;
            }
        }
        true
    });
    // `--until` passed: the server ends the stream, as asked.
    if stdout_gone || (result.is_ok() && args.until.is_some()) {
        return Ok(EXIT_OK);
    }
    let msg = match result {
        Ok(()) => "the server closed the log stream".to_string(),
        Err(e) => format!("the log stream broke: {e}"),
    };
    Err(Error::unreachable(msg).with_hint(format!("run `berth logs -f -a {}` again", app.name)))
}

pub(super) fn services(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let v = c
        .get(&format!("{}/services", app.path()))
        .map_err(|e| app.explain(e))?;
    print_list(
        g.json,
        &v,
        Some(&format!("{} has no services", app.name)),
        &["SERVICE", "STATE", "HEALTH", "ADDRESS"],
        |s| {
            vec![
                cell(&s["name"]),
                cell(&s["state"]),
                cell(&s["health"]),
                match s["host_port"].as_u64() {
                    Some(p) => format!("127.0.0.1:{p}"),
                    None => "-".into(),
                },
            ]
        },
    );
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn formation() {
        let f = parse_formation(&strings(&["web=3", "worker=0"])).unwrap();
        assert_eq!(f.get("web"), Some(&3));
        assert_eq!(f.get("worker"), Some(&0));
        for bad in ["web", "web=-1", "=2", "web=x", "we b=1"] {
            assert_eq!(
                parse_formation(&strings(&[bad])).unwrap_err().code,
                client::EXIT_USAGE
            );
        }
    }
}
