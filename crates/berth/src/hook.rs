//! `berth hook pre-receive`: the `pre-receive` hook of the app repositories berth serves at
//! `/git/<app>.git` (`crates/api/src/git.rs` writes the hook and runs `git http-backend`).
//!
//! git runs it in the bare repository with the pushed objects still in quarantine (the
//! environment git sets lets `git archive` see them) and one line `<old> <new> <ref>` per
//! updated ref on stdin. A push of a branch is exported with `git archive` and posted to the
//! API as a deploy of that commit (`trigger=git`); the hook follows the deploy's log (git shows
//! each line to the pusher as `remote: ...`) and exits 1 unless it succeeded, which rejects the
//! whole push: the refs are not updated. A branch the engine ignores (not the deploy branch, no
//! previews) is accepted. Deleting a branch asks the API (`DELETE .../branches/<branch>`), which
//! may refuse (the deploy branch). Tags and other refs are accepted as they are.
//!
//! Environment, set by berth for `git http-backend`: `BERTH_HOOK_API` (the admin listener's
//! URL), `BERTH_HOOK_TOKEN` (the pusher's token: the deploy is theirs), `BERTH_HOOK_APP`.

use crate::cli::deploy::follow_deploy_log;
use crate::cli::output::for_terminal;
use crate::client::{seg, Client, Error, Source, Target, EXIT_FAILED, EXIT_OK, EXIT_USAGE};
use serde_json::Value;
use std::io::{self, BufRead, Write};
use std::path::Path;

/// Runs the hook `name`; the process exit code.
pub fn run(name: &str) -> i32 {
    let result = match name {
        "pre-receive" => pre_receive(),
        other => Err(Error::usage(format!("unknown hook {other:?}"))
            .with_hint("berth runs `berth hook pre-receive` from its repositories")),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let code = e.report();
            if code == EXIT_OK {
                EXIT_FAILED
            } else {
                code
            }
        }
    }
}

/// A line for the pusher's terminal (through [`for_terminal`]: git shows it as is). A pusher
/// that went away is not an error of the deploy.
fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", for_terminal(line));
    let _ = out.flush();
}

fn env(key: &str) -> Result<String, Error> {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::new(EXIT_USAGE, format!("{key} is not set"))
                .with_hint("`berth hook` is run by git on a push to a berth server, not by hand")
        })
}

/// One ref update of the push.
struct Update {
    old: String,
    new: String,
    refname: String,
}

fn pre_receive() -> Result<(), Error> {
    let api = env("BERTH_HOOK_API")?;
    let token = env("BERTH_HOOK_TOKEN")?;
    let app = env("BERTH_HOOK_APP")?;
    let cwd = std::env::current_dir()
        .map_err(|e| Error::failed(format!("cannot find the repository: {e}")))?;
    let git_dir = match std::env::var_os("GIT_DIR") {
        Some(d) => cwd.join(d),
        None => cwd,
    };
    let mut updates = Vec::new();
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::failed(format!("cannot read the pushed refs: {e}")))?;
        let mut parts = line.split_whitespace();
        if let (Some(old), Some(new), Some(refname)) = (parts.next(), parts.next(), parts.next()) {
            updates.push(Update {
                old: old.to_string(),
                new: new.to_string(),
                refname: refname.to_string(),
            });
        }
    }
    let client = Client::new(Target {
        url: api.trim_end_matches('/').to_string(),
        token: Some(token),
        ca: None,
        source: Source::Flags,
    })?;
    let app_path = format!("/api/v1/apps/{}", seg(&app));
    for u in &updates {
        // Tags and other refs: nothing to deploy.
        let Some(branch) = u.refname.strip_prefix("refs/heads/") else {
            continue;
        };
        check_unmoved(&git_dir, &u.refname, &u.old)?;
        if build::git::is_zero_sha(&u.new) {
            delete_branch(&client, &app_path, branch)?;
        } else {
            deploy_branch(&client, &app, &app_path, &git_dir, branch, &u.new)?;
        }
    }
    Ok(())
}

/// Refuses a push whose branch moved since the pusher read it: another push of the app,
/// serialised before this one, updated it. Deploying this one would put live a commit that
/// git then refuses to record (its update checks the old value).
fn check_unmoved(git_dir: &Path, refname: &str, old: &str) -> Result<(), Error> {
    let mut cmd = build::git::git();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(refname);
    let current = match build::git::run(cmd, "rev-parse", std::time::Duration::from_secs(60)) {
        Ok(out) => String::from_utf8_lossy(&out).trim().to_string(),
        // No such ref (yet).
        Err(build::git::GitError::Failed { .. }) => String::new(),
        Err(e) => return Err(Error::failed(format!("cannot read {refname}: {e}"))),
    };
    let expected = if build::git::is_zero_sha(old) {
        ""
    } else {
        old
    };
    if current == expected {
        return Ok(());
    }
    Err(Error::failed(format!(
        "{refname} moved while this push waited (another push updated it)"
    ))
    .with_hint("fetch, merge or rebase, and push again"))
}

/// Builds and deploys `sha` of `branch`; an error rejects the push.
fn deploy_branch(
    c: &Client,
    app: &str,
    app_path: &str,
    git_dir: &Path,
    branch: &str,
    sha: &str,
) -> Result<(), Error> {
    let info = build::git::commit_info(git_dir, sha)
        .map_err(|e| Error::failed(format!("cannot read commit {sha}: {e}")))?;
    let bundle = tempfile::Builder::new()
        .prefix("berth-push-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| Error::failed(format!("cannot create a temporary file: {e}")))?;
    build::git::archive(git_dir, sha, bundle.path())
        .map_err(|e| Error::failed(format!("cannot export commit {sha}: {e}")))?;
    let short = &sha[..sha.len().min(7)];
    say(&format!(
        "berth: building {app} from {branch} at {short} ({})",
        one_line(&info.message, 72)
    ));
    let mut file = std::fs::File::open(bundle.path())
        .map_err(|e| Error::failed(format!("cannot read the source bundle: {e}")))?;
    let len = file
        .metadata()
        .map_err(|e| Error::failed(format!("cannot read the source bundle: {e}")))?
        .len();
    let path = format!(
        "{app_path}/deploys?trigger=git&sha={}&branch={}&author={}&message={}",
        seg(sha),
        seg(branch),
        seg(&one_line(&info.author, 1000)),
        seg(&one_line(&info.message, 1000)),
    );
    let answer = c.upload(&path, "application/gzip", &mut file, len)?;
    drop(file);
    drop(bundle);
    if let Some(reason) = answer.get("ignored").and_then(Value::as_str) {
        say(&format!("berth: nothing deployed: {reason}"));
        return Ok(());
    }
    // A preview deploys another app than the repository's.
    let deployed = answer["app"].as_str().unwrap_or(app).to_string();
    let fin = follow_deploy_log(c, &format!("/api/v1/apps/{}", seg(&deployed)), &answer, say)?;
    match fin["status"].as_str() {
        Some("succeeded") => {
            let mut msg = format!("berth: deployed {deployed}");
            if let Some(v) = fin["release"].as_i64() {
                msg.push_str(&format!(" v{v}"));
            }
            if let Some(url) = fin["url"].as_str().filter(|u| !u.is_empty()) {
                msg.push_str(&format!(" → {url}"));
            }
            say(&msg);
            Ok(())
        }
        status => Err(Error::failed(format!(
            "deploy {} of {deployed} {}: {}",
            fin["id"],
            status.unwrap_or("ended without a status"),
            fin["reason"].as_str().unwrap_or("no reason given")
        ))
        .with_hint(format!(
            "the push was rejected ({branch} was not updated); fix it and push again"
        ))),
    }
}

/// Asks the API to forget `branch` (a preview, say); it may refuse (the deploy branch).
fn delete_branch(c: &Client, app_path: &str, branch: &str) -> Result<(), Error> {
    match c.delete(&format!("{app_path}/branches/{}", seg(branch))) {
        Ok(_) => Ok(()),
        // A server without the endpoint: a branch is only a ref.
        Err(e) if e.status == Some(404) && e.message.contains("no such endpoint") => Ok(()),
        Err(e) => Err(e),
    }
}

/// `s` on one line of at most `max` bytes (control characters become spaces).
fn one_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_cuts_at_char_boundaries() {
        assert_eq!(one_line("a\tb\nc", 100), "a b c");
        assert_eq!(one_line("ééé", 5), "éé");
        assert_eq!(one_line("", 5), "");
    }
}
