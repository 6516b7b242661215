//! `berth deploy`, `rollback`, `releases`, `restart`, and following a deploy's log to its end
//! (also for `env:set`, `scale`, `builds:logs -f` and the git push hook).

use super::app_ref::{app, app_for, AppRef};
use super::output::{cell, for_terminal, human_bytes, print_json, print_list, version, when};
use super::{connect, Global};
use crate::client::{self, seg, Client, Error, EXIT_FAILED, EXIT_OK};
use serde_json::{json, Value};
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::path::PathBuf;
use std::time::Duration;

/// `3` or `v3`.
pub fn parse_version(v: &str) -> Result<u64, Error> {
    let t = v.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    t.parse().map_err(|_| {
        Error::usage(format!("`{v}` is not a release version"))
            .with_hint("pass a number like 3 or v3 (see `berth releases`), or nothing for the previous release")
    })
}

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

pub(super) fn deploy(g: &Global, dir: Option<PathBuf>) -> Result<i32, Error> {
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

    let created = match c.get(&app.path()) {
        Ok(_) => false,
        Err(e) if e.is_not_found() => {
            c.post("/api/v1/apps", &json!({ "name": app.name }))?;
            eprintln!("created app {} (it did not exist)", app.name);
            true
        }
        Err(e) => return Err(app.explain(e)),
    };
    // An app this deploy created stays when the deploy fails: say so, and how to remove it.
    let note_created = |failed: bool| {
        if created && failed && !g.json {
            eprintln!(
                "note: the app {} was created by this deploy and stays, with nothing live: deploy again, or remove it with `berth apps:destroy {} --confirm {}`",
                app.name, app.name, app.name
            );
        }
    };
    let code = upload_and_follow(g, &c, &app, &full).inspect_err(|_| note_created(true))?;
    note_created(code != EXIT_OK);
    Ok(code)
}

/// Packs `full`, uploads it as a deploy of `app` and follows that deploy to its end.
fn upload_and_follow(
    g: &Global,
    c: &Client,
    app: &AppRef,
    full: &std::path::Path,
) -> Result<i32, Error> {
    let mut file = tempfile::tempfile()
        .map_err(|e| Error::failed(format!("cannot create a temporary file: {e}")))?;
    let stats = {
        let mut w = io::BufWriter::new(&mut file);
        let stats = build::bundle::pack(full, &mut w)
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
    let fin = follow_deploy(c, app, &d, g.json)?;
    Ok(report_deploy(app, &fin, g.json))
}

pub(super) fn rollback(g: &Global, version: Option<String>) -> Result<i32, Error> {
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
    let progress = super::progress::Progress::start(json);
    let print_line = |line: &str| {
        progress.line(line, |line| {
            if json {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        })
    };
    let fin = follow_deploy_log(c, &app.path(), d, print_line).map_err(|e| app.explain(e));
    progress.finish();
    fin
}

/// Calls `print_line` for each line of the log of deploy `d` (of the app at `app_path`,
/// `/api/v1/apps/<app>`) as it is written and returns the finished `Deploy`: follows the SSE
/// log; when the stream breaks before its `end`, polls the deploy every 500 ms and prints the
/// rest of the log once it is done. `berth deploy` and the git push hook (`hook.rs`) use it.
/// Each line has been through [`for_terminal`]: it is app and build output.
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
                        print_line(&for_terminal(line));
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
            print_line(&for_terminal(line));
        }
    }
    Ok(fin)
}

/// Prints how a deploy ended; its exit code.
pub(super) fn report_deploy(app: &AppRef, d: &Value, json: bool) -> i32 {
    if json {
        print_json(d);
    }
    match d["status"].as_str() {
        Some("succeeded") => {
            if !json {
                // (verb, words after the app's name, words before the release)
                let (verb, after, sep) = match (d["kind"].as_str(), d["trigger"].as_str()) {
                    (Some("rollback"), _) => ("rolled back", "", " to "),
                    (_, Some("scale")) => ("scaled", "", " "),
                    (_, Some("env")) => ("restarted", " with the new env", " "),
                    (Some("restart"), _) => ("restarted", "", " "),
                    _ => ("deployed", "", " "),
                };
                let name = d["app"].as_str().unwrap_or(&app.name);
                let mut msg = format!("{verb} {name}{after}");
                if !d["release"].is_null() {
                    msg.push_str(sep);
                    msg.push_str(&version(&d["release"]));
                }
                if let Some(url) = d["url"].as_str().filter(|u| !u.is_empty()) {
                    msg.push_str(" → ");
                    msg.push_str(url);
                }
                println!("{}", for_terminal(&msg));
            }
            EXIT_OK
        }
        Some("failed") => {
            let reason = d["reason"].as_str().unwrap_or("no reason given");
            eprintln!("berth: deploy failed: {}", for_terminal(reason));
            EXIT_FAILED
        }
        other => {
            eprintln!(
                "berth: the deploy ended as {}",
                for_terminal(other.unwrap_or("(no status)"))
            );
            EXIT_FAILED
        }
    }
}

/// After env:set/env:unset/scale: follows the restart deploy the server started, if any.
/// With --json, prints the answer with its `deploy` replaced by the finished one.
pub(super) fn follow_change(
    c: &Client,
    app: &AppRef,
    mut answer: Value,
    json: bool,
) -> Result<i32, Error> {
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

pub(super) fn releases(g: &Global) -> Result<i32, Error> {
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

pub(super) fn restart(g: &Global) -> Result<i32, Error> {
    let app = app(g)?;
    let c = connect(g)?;
    let answer = c
        .post(&format!("{}/restart", app.path()), &json!({}))
        .map_err(|e| app.explain(e))?;
    follow_change(&c, &app, answer, g.json)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("v3").unwrap(), 3);
        assert_eq!(parse_version("12").unwrap(), 12);
        assert!(parse_version("three").is_err());
    }
}
