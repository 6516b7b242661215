//! The system's `git`, for what berth does with repositories itself: export a commit as a source
//! bundle (`git archive`), read a commit's author and message, and fetch a branch from a
//! connected repository (webhooks). The pack protocol is never spoken here: pushes go to
//! `git http-backend`.
//!
//! Every call is blocking and has a deadline; git never prompts (no terminal, no askpass).

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git {what} timed out after {after:?}")]
    TimedOut { what: String, after: Duration },
    /// git ran and failed: its own message (last lines of stderr).
    #[error("git {what} failed: {message}")]
    Failed { what: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// A commit's author and the first line of its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    pub sha: String,
    /// `Name <email>`.
    pub author: String,
    pub message: String,
}

/// How long a fetch from a remote repository may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Local operations (archive, log, init).
const LOCAL_TIMEOUT: Duration = Duration::from_secs(120);

/// A full or abbreviated hex object name.
pub fn valid_sha(s: &str) -> bool {
    (4..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The all-zero object name git uses for "no commit" (a created or deleted ref).
pub fn is_zero_sha(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

/// A branch name as `git check-ref-format --branch` accepts it, checked without running git:
/// no `..`, no control characters, spaces or `~^:?*[\`, no leading `-` or `/`, no trailing
/// `/`, `.` or `.lock`, no `@{`, not `@`.
pub fn valid_branch(b: &str) -> bool {
    !b.is_empty()
        && b.len() <= 255
        && b != "@"
        && !b.starts_with(['-', '/', '.'])
        && !b.ends_with(['/', '.'])
        && !b.ends_with(".lock")
        && !b.contains("..")
        && !b.contains("@{")
        && !b.contains("//")
        && !b.contains("/.")
        && !b
            .bytes()
            .any(|c| c < 0x20 || c == 0x7f || b" ~^:?*[\\".contains(&c))
}

/// A `git` command with prompts disabled and nothing of the user berth runs as (root, often)
/// that could change what berth gets or hand out its credentials: no system or global config
/// (hooks, `url.insteadOf`, credential helpers), no `~/.netrc`, `~/.ssh` or `~/.gitconfig`
/// (`HOME` and `XDG_CONFIG_HOME` are `/dev/null`, under which nothing can exist). The
/// repository variables a `pre-receive` hook gets from git (`GIT_DIR`, the quarantine's
/// object directories) are kept; a fetch drops every inherited `GIT_*` and `SSH_*` variable.
pub fn git() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/dev/null")
        .env("XDG_CONFIG_HOME", "/dev/null")
        .env_remove("GIT_ASKPASS")
        .env_remove("SSH_ASKPASS")
        .stdin(Stdio::null());
    cmd
}

/// [`git`] without any inherited `GIT_*` or `SSH_*` variable (`GIT_SSH_COMMAND`,
/// `GIT_PROXY_COMMAND`, `GIT_SSL_NO_VERIFY`, `GIT_CONFIG_PARAMETERS`, …).
fn clean_git() -> Command {
    let mut cmd = git();
    for (name, _) in std::env::vars_os() {
        let n = name.to_string_lossy();
        let ours = [
            "GIT_TERMINAL_PROMPT",
            "GIT_CONFIG_NOSYSTEM",
            "GIT_CONFIG_GLOBAL",
        ];
        if (n.starts_with("GIT_") || n.starts_with("SSH_")) && !ours.contains(&n.as_ref()) {
            cmd.env_remove(&name);
        }
    }
    cmd
}

/// How a fetch may reach its repository.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// `GIT_ALLOW_PROTOCOL`: the only transports git may use (`https`, `file`), redirects and
    /// submodules included.
    pub allow_protocol: String,
    /// `http.curloptResolve` (`host:port:addr[,addr]`): connect to these addresses only, the
    /// ones berth checked.
    pub resolve: Option<String>,
}

/// Run `cmd` to its end within `timeout`; stdout on success.
pub fn run(mut cmd: Command, what: &str, timeout: Duration) -> Result<Vec<u8>, GitError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(GitError::Spawn)?;
    // Both pipes are drained on their own threads, so a chatty git never blocks on a full pipe.
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(GitError::Spawn)? {
            Some(s) => break s,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(GitError::TimedOut {
                    what: what.to_string(),
                    after: timeout,
                });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if status.success() {
        return Ok(stdout);
    }
    let text = String::from_utf8_lossy(&stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let message = lines[lines.len().saturating_sub(3)..].join("; ");
    Err(GitError::Failed {
        what: what.to_string(),
        message: if message.is_empty() {
            status.to_string()
        } else {
            message
        },
    })
}

/// Export commit `sha` of the repository `git_dir` as a `.tar.gz` source bundle at `out`.
pub fn archive(git_dir: &Path, sha: &str, out: &Path) -> Result<(), GitError> {
    if !valid_sha(sha) {
        return Err(GitError::Invalid(format!("not a commit id: {sha:?}")));
    }
    let mut cmd = git();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["archive", "--format=tar.gz", "-o"])
        .arg(out)
        .arg(format!("{sha}^{{commit}}"));
    run(cmd, "archive", LOCAL_TIMEOUT).map(|_| ())
}

/// The author and subject line of commit `sha`.
pub fn commit_info(git_dir: &Path, sha: &str) -> Result<CommitInfo, GitError> {
    if !valid_sha(sha) {
        return Err(GitError::Invalid(format!("not a commit id: {sha:?}")));
    }
    let mut cmd = git();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["log", "-1", "--format=%H%x00%an <%ae>%x00%s"])
        .arg(format!("{sha}^{{commit}}"));
    let out = run(cmd, "log", LOCAL_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out);
    let mut parts = text.trim_end_matches('\n').splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(sha), Some(author), Some(message)) => Ok(CommitInfo {
            sha: sha.to_string(),
            author: author.to_string(),
            message: message.to_string(),
        }),
        _ => Err(GitError::Invalid(format!(
            "unexpected git log output: {text:?}"
        ))),
    }
}

/// Create a bare repository at `git_dir` if there is none.
pub fn init_bare(git_dir: &Path) -> Result<(), GitError> {
    if git_dir.join("HEAD").is_file() {
        return Ok(());
    }
    let mut cmd = git();
    cmd.args(["init", "--quiet", "--bare"]).arg(git_dir);
    run(cmd, "init", LOCAL_TIMEOUT).map(|_| ())
}

/// Fetch `branch` of the repository at `url` into the bare repository `git_dir` (created if
/// missing), as `refs/berth/fetched/<branch>`; returns the fetched tip's commit id. Only the
/// transports of `opts` are allowed, redirects are not followed, no credential helper runs,
/// no proxy from the environment is used, and with `opts.resolve` curl connects only to the
/// given addresses.
pub fn fetch(
    git_dir: &Path,
    url: &str,
    branch: &str,
    opts: &FetchOptions,
) -> Result<String, GitError> {
    if opts.allow_protocol.is_empty() {
        return Err(GitError::Invalid(
            "no transport allowed for the fetch".into(),
        ));
    }
    if !valid_branch(branch) {
        return Err(GitError::Invalid(format!("not a branch name: {branch:?}")));
    }
    if url.starts_with('-') || url.contains(['\n', '\0']) {
        return Err(GitError::Invalid(format!("not a repository URL: {url:?}")));
    }
    init_bare(git_dir)?;
    let git_dir = &git_dir
        .canonicalize()
        .map_err(|e| GitError::Invalid(format!("{}: {e}", git_dir.display())))?;
    let local = format!("refs/berth/fetched/{branch}");
    let mut cmd = clean_git();
    cmd.env("GIT_ALLOW_PROTOCOL", &opts.allow_protocol).args([
        "-c",
        "http.followRedirects=false",
        "-c",
        "credential.helper=",
    ]);
    for proxy in [
        "http_proxy",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        cmd.env_remove(proxy);
    }
    if let Some(r) = &opts.resolve {
        if r.contains(['\n', '\0']) {
            return Err(GitError::Invalid(format!("not an address pin: {r:?}")));
        }
        cmd.arg("-c").arg(format!("http.curloptResolve={r}"));
    }
    // A relative path resolves inside the repository, never against berth's own directory.
    cmd.current_dir(git_dir)
        .arg("--git-dir")
        .arg(git_dir)
        .args([
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
        ])
        .arg(url)
        .arg(format!("+refs/heads/{branch}:{local}"));
    run(cmd, "fetch", FETCH_TIMEOUT)?;
    let mut cmd = git();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{local}^{{commit}}"));
    let out = run(cmd, "rev-parse", LOCAL_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// Does `git_dir` have commit `sha`?
pub fn has_commit(git_dir: &Path, sha: &str) -> bool {
    if !valid_sha(sha) {
        return false;
    }
    let mut cmd = git();
    cmd.arg("--git-dir")
        .arg(git_dir)
        .args(["cat-file", "-e"])
        .arg(format!("{sha}^{{commit}}"));
    run(cmd, "cat-file", LOCAL_TIMEOUT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_never_reads_the_users_files() {
        let cmd = git();
        let envs: std::collections::HashMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.map(|v| v.to_owned())))
            .collect();
        for (k, v) in [
            ("HOME", "/dev/null"),
            ("XDG_CONFIG_HOME", "/dev/null"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_TERMINAL_PROMPT", "0"),
        ] {
            assert_eq!(
                envs.get(k).cloned().flatten().as_deref(),
                Some(std::ffi::OsStr::new(v)),
                "{k}"
            );
        }
    }

    #[test]
    fn branch_names() {
        for ok in ["main", "feature/x", "fix-1.2", "a_b"] {
            assert!(valid_branch(ok), "{ok}");
        }
        for bad in [
            "", "-x", "/x", "x/", "a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a\\b",
            "x.lock", "@", "a@{1}", ".hidden", "a/.b", "a//b", "x.",
        ] {
            assert!(!valid_branch(bad), "{bad}");
        }
    }

    #[test]
    fn fetch_archive_and_commit_info_from_a_local_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::fs::write(work.join("index.html"), "hi").unwrap();
        let sh = |args: &[&str]| {
            let mut c = git();
            c.current_dir(&work)
                .args(["-c", "user.name=A U", "-c", "user.email=a@example.org"])
                .args(args);
            run(c, "test", LOCAL_TIMEOUT).unwrap()
        };
        sh(&["init", "--quiet", "-b", "main"]);
        sh(&["add", "."]);
        sh(&["commit", "--quiet", "-m", "first\n\nbody"]);
        let bare = tmp.path().join("cache.git");
        let url = format!("file://{}", work.display());
        let file = FetchOptions {
            allow_protocol: "file".into(),
            resolve: None,
        };
        let sha = fetch(&bare, &url, "main", &file).unwrap();
        assert_eq!(sha.len(), 40);
        assert!(has_commit(&bare, &sha));
        let info = commit_info(&bare, &sha).unwrap();
        assert_eq!(info.author, "A U <a@example.org>");
        assert_eq!(info.message, "first");
        let out = tmp.path().join("b.tar.gz");
        archive(&bare, &sha, &out).unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
        let err = fetch(&bare, &url, "nope", &file).unwrap_err();
        assert!(matches!(err, GitError::Failed { .. }), "{err}");
        // A transport the options do not allow is refused by git itself.
        let https_only = FetchOptions {
            allow_protocol: "https".into(),
            resolve: None,
        };
        let err = fetch(&bare, &url, "main", &https_only).unwrap_err();
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert!(!has_commit(&bare, "deadbeef"));
    }
}
