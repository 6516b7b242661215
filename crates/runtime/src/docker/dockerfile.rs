//! What an app's Dockerfile may not ask of the shared Docker daemon, checked before its build:
//!
//! - an image of another app (or of another berth): every berth-built image lives in the
//!   `berth-<hash>/` namespace, and `FROM`/`COPY --from=` may name there only the app's own
//!   repository (the daemon's image store is shared: without this a tenant's build reads any
//!   other app's files); an image ID (`sha256:…`, or bare hex) is refused too, since it can
//!   name any local image;
//! - a remote `ADD <url>` or `ADD <git repo>`: the daemon fetches those itself, as root on the
//!   host's network, outside the app's network rule (it reached other apps' ports and the
//!   admin listener); a build fetches with `RUN curl`/`wget` instead, inside its container.
//!
//! `ARG` defaults declared before the first `FROM` are substituted; a `FROM` that still names a
//! variable is refused, since berth cannot tell what it would be.

/// Checks `text` (a Dockerfile) for an image whose own repository is `own` (e.g.
/// `berth-1a2b3c4d/shop`). `Err` says which line and why.
pub(crate) fn check(text: &str, own: &str) -> Result<(), String> {
    let mut args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut seen_from = false;
    for (line_no, line) in instructions(text) {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        let rest: Vec<&str> = words.collect();
        let at = |why: String| Err(format!("Dockerfile line {line_no}: {why}"));
        match keyword.to_ascii_uppercase().as_str() {
            "ARG" if !seen_from => {
                for decl in &rest {
                    let (name, value) = decl.split_once('=').unwrap_or((decl, ""));
                    args.push((name.to_string(), value.trim_matches('"').to_string()));
                }
            }
            "FROM" => {
                seen_from = true;
                let mut it = rest.iter().filter(|w| !w.starts_with("--"));
                let Some(image) = it.next() else {
                    return at("FROM names no image".into());
                };
                let image = substitute(image, &args);
                if image.contains('$') {
                    return at(format!(
                        "FROM {image}: a build argument berth cannot resolve (give the ARG a default before the first FROM)"
                    ));
                }
                if !stages.iter().any(|s| s.eq_ignore_ascii_case(&image)) {
                    refused_image(&image, own).map_or(Ok(()), at)?;
                }
                if let (Some(as_kw), Some(name)) = (it.next(), it.next()) {
                    if as_kw.eq_ignore_ascii_case("as") {
                        stages.push(name.to_string());
                    }
                }
            }
            "COPY" => {
                for flag in rest.iter().take_while(|w| w.starts_with("--")) {
                    if let Some(from) = flag.strip_prefix("--from=") {
                        let from = substitute(from, &args);
                        let is_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(&from))
                            || from.bytes().all(|b| b.is_ascii_digit());
                        if !is_stage {
                            refused_image(&from, own).map_or(Ok(()), at)?;
                        }
                    }
                }
            }
            "ADD" => {
                let sources = rest.iter().filter(|w| !w.starts_with("--"));
                let count = rest.iter().filter(|w| !w.starts_with("--")).count();
                for src in sources.take(count.saturating_sub(1)) {
                    let src = src.trim_matches(|c| c == '[' || c == ']' || c == '"' || c == ',');
                    if src.contains("://") || src.starts_with("git@") {
                        return at(format!(
                            "ADD {src}: the Docker daemon would fetch it from the host, outside the app's network rule (hint: fetch it with RUN curl or wget in the build)"
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why `image` may not be used by the app whose repository is `own`, if it may not.
fn refused_image(image: &str, own: &str) -> Option<String> {
    let lower = image.to_ascii_lowercase();
    let name = lower.split('@').next().unwrap_or(&lower);
    let repo = match name.rsplit_once(':') {
        // `host:port/repo` keeps its port; `repo:tag` loses the tag.
        Some((r, tag)) if !tag.contains('/') => r,
        _ => name,
    };
    let hexish = |s: &str| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if lower.starts_with("sha256:") || hexish(&lower) {
        return Some(format!(
            "{image} is an image ID, which can name any image on this server (hint: name the image)"
        ));
    }
    let first = repo.split('/').next().unwrap_or(repo);
    if first.starts_with("berth-") && repo != own {
        return Some(format!(
            "{image} is another app's image (berth-built images can only be built on by their own app)"
        ));
    }
    None
}

/// `$NAME` and `${NAME}` replaced by the known `ARG` defaults.
fn substitute(word: &str, args: &[(String, String)]) -> String {
    let mut out = word.to_string();
    for (name, value) in args {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    out
}

/// The instructions of a Dockerfile with the line each starts on: comments dropped, `\`
/// continuations joined.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if current.is_some() && line.starts_with('#') {
            continue;
        }
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(part) => {
                acc.push_str(part);
                acc.push(' ');
                current = Some((start, acc));
            }
            None => {
                acc.push_str(line);
                out.push((start, acc));
            }
        }
    }
    if let Some(last) = current {
        out.push(last);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::check;

    const OWN: &str = "berth-1a2b3c4d/shop";

    #[test]
    fn own_and_public_images_pass() {
        for text in [
            "FROM scratch\nCOPY busybox /bin/busybox\n",
            "FROM berth-1a2b3c4d/shop:v3\nRUN true\n",
            "ARG V=3.12\nFROM python:${V}-slim AS build\nRUN pip install x\nFROM build\nCOPY --from=build /a /b\nCOPY --from=0 /a /b\n",
            "FROM localhost:5000/base:1\n",
            "FROM node:20 AS b\nADD --chown=1:1 src/ dest/\nADD [\"a.tar\", \"/x\"]\n",
            "# comment\nFROM \\\n  alpine\n",
        ] {
            assert_eq!(check(text, OWN), Ok(()), "{text}");
        }
    }

    #[test]
    fn other_apps_images_ids_unknown_args_and_remote_adds_are_refused() {
        for (text, why) in [
            ("FROM berth-1a2b3c4d/cvic:v1\n", "another app"),
            ("FROM berth-1a2b3c4d/shop-api:v1\n", "another app"),
            ("FROM berth-99999999/shop:v1\n", "another app"),
            ("ARG B=berth-1a2b3c4d/cvic:v1\nFROM $B\n", "another app"),
            (
                "FROM scratch\nCOPY --from=berth-1a2b3c4d/cvic:v1 /app /app\n",
                "another app",
            ),
            (
                "FROM --platform=linux/amd64 BERTH-1A2B3C4D/CVIC\n",
                "another app",
            ),
            ("FROM sha256:0123456789abcdef0123456789abcdef\n", "image ID"),
            ("FROM 0123456789ab\n", "image ID"),
            ("FROM $UNKNOWN\n", "cannot resolve"),
            ("FROM scratch\nADD http://127.0.0.1:8081/x /x\n", "fetch it"),
            (
                "FROM scratch\nADD --chown=1 https://example.com/a.tgz /a\n",
                "fetch it",
            ),
            ("FROM scratch\nADD git@github.com:x/y.git /y\n", "fetch it"),
            ("FROM scratch\nADD \\\n  http://10.0.0.1/x /x\n", "line 2"),
        ] {
            let err = check(text, OWN).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
