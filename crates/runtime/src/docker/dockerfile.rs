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
//! variable is refused, since berth cannot tell what it would be. Parser directives
//! (`# escape=`, `# check=`) are refused: they change how Docker reads the rest (another
//! escape character), so this reading would no longer be Docker's. `# syntax=` (the first line
//! of Docker's own examples) is let through: berth always builds with the classic builder,
//! which ignores it (BuildKit would fetch and run that frontend image).
//!
//! Names are only half of it: a name can be spelled many ways (`docker.io/…`, a short image
//! ID), so the images a Dockerfile names are also resolved by the daemon before the build and
//! refused when they carry another app's labels ([`crate::DockerRuntime::check_image`]).

/// Checks `text` (a Dockerfile) for an image whose own repository is `own` (e.g.
/// `berth-1a2b3c4d/shop`): the images it names (`FROM`, `COPY --from`; build stages left
/// out), or which line is refused and why.
pub(crate) fn check(text: &str, own: &str) -> Result<Vec<String>, String> {
    // Docker skips a byte order mark at the start, so the first instruction is read after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(d) = directive(text) {
        return Err(format!(
            "Dockerfile: the parser directive `{d}` is not allowed (it changes how the Docker daemon reads the file; hint: remove it)"
        ));
    }
    let mut images: Vec<String> = Vec::new();
    let mut args: Vec<(String, String)> = Vec::new();
    // The current stage's variables as Docker expands them in COPY and ADD: its own ARGs (a
    // bare `ARG name` takes the global default); a name an ENV sets is left out (unresolved).
    let mut stage_args: Vec<(String, String)> = Vec::new();
    let mut stages: Vec<String> = Vec::new();
    let mut seen_from = false;
    for (line_no, line) in instructions(text) {
        let (keyword, body) = line
            .split_once(char::is_whitespace)
            .unwrap_or((line.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let at = |why: String| Err(format!("Dockerfile line {line_no}: {why}"));
        let refuse = |why: Option<String>| {
            why.map_or(Ok(()), |w| Err(format!("Dockerfile line {line_no}: {w}")))
        };
        if keyword == "ONBUILD" {
            return at(
                "ONBUILD is not allowed (its instructions run in a later build, where berth does not check them)".into(),
            );
        }
        if keyword == "ENV" {
            // `ENV a=b c=d` or `ENV a b`: what it sets is not resolved by berth.
            let mut tokens = body.split_whitespace();
            let first = tokens.next().unwrap_or_default();
            let names: Vec<&str> = if first.contains('=') {
                std::iter::once(first)
                    .chain(tokens)
                    .filter_map(|t| t.split_once('=').map(|(n, _)| n))
                    .collect()
            } else {
                vec![first]
            };
            stage_args.retain(|(n, _)| !names.contains(&n.as_str()));
            continue;
        }
        // Anything else Docker would refuse as well; berth refuses it first, so that no
        // character it reads differently from Docker can hide a FROM or a COPY.
        if !INSTRUCTIONS.contains(&keyword.as_str()) {
            return at(format!(
                "unknown instruction {:?} (hint: Docker's instructions are FROM, RUN, COPY, …)",
                keyword.chars().take(40).collect::<String>()
            ));
        }
        if !matches!(keyword.as_str(), "ARG" | "FROM" | "COPY" | "ADD") {
            continue;
        }
        // What these instructions name is checked as Docker will read it: their words, with
        // the flags apart. Quotes and escapes, which Docker's word processing would remove,
        // are refused rather than interpreted (a second reading is how checks are bypassed).
        let (flags, words) = match words_of(&keyword, body.trim()) {
            Ok(fw) => fw,
            Err(why) => return at(format!("{keyword}: {why}")),
        };
        let allowed: &[&str] = match keyword.as_str() {
            "FROM" => &["platform"],
            "COPY" => &["from", "chown", "chmod", "link"],
            "ADD" => &["chown", "chmod", "checksum", "keep-git-dir", "link"],
            _ => &[],
        };
        for (name, _) in &flags {
            if !allowed.contains(&name.as_str()) {
                return at(format!("{keyword} --{name}: not a flag berth accepts here"));
            }
        }
        match keyword.as_str() {
            "ARG" if !seen_from => {
                for decl in &words {
                    let (name, value) = decl.split_once('=').unwrap_or((decl, ""));
                    if value.contains('$') {
                        return at(format!(
                            "ARG {name}: a default that names another variable is not supported"
                        ));
                    }
                    // The last declaration wins, as in Docker.
                    args.retain(|(n, _)| n != name);
                    args.push((name.to_string(), value.to_string()));
                }
            }
            "ARG" => {
                for decl in &words {
                    let (name, value) = match decl.split_once('=') {
                        Some((n, v)) => (n, Some(v.to_string())),
                        None => (decl.as_str(), None),
                    };
                    let value = value
                        .or_else(|| args.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()));
                    stage_args.retain(|(n, _)| n != name);
                    if let Some(v) = value.filter(|v| !v.contains('$')) {
                        stage_args.push((name.to_string(), v));
                    }
                }
            }
            "FROM" => {
                seen_from = true;
                stage_args.clear();
                let Some(image) = words.first() else {
                    return at("FROM names no image".into());
                };
                let image = match substitute(image, &args) {
                    Some(i) => i,
                    None => {
                        return at(format!(
                            "FROM {image}: a build argument berth cannot resolve (give the ARG a default before the first FROM)"
                        ))
                    }
                };
                if !stages.iter().any(|s| s.eq_ignore_ascii_case(&image)) {
                    refuse(refused_image(&image, own))?;
                    if !image.eq_ignore_ascii_case("scratch") {
                        images.push(image.clone());
                    }
                }
                if let (Some(as_kw), Some(name)) = (words.get(1), words.get(2)) {
                    if as_kw.eq_ignore_ascii_case("as") {
                        stages.push(name.to_string());
                    }
                }
            }
            "COPY" => {
                if let Some((_, from)) = flags.iter().find(|(n, _)| n == "from") {
                    let Some(from) = substitute(from, &stage_args) else {
                        return at(format!(
                            "COPY --from={from}: a build argument berth cannot resolve (name the stage or image)"
                        ));
                    };
                    let is_stage = stages.iter().any(|s| s.eq_ignore_ascii_case(&from))
                        || from.bytes().all(|b| b.is_ascii_digit());
                    if !is_stage {
                        refuse(refused_image(&from, own))?;
                        images.push(from);
                    }
                }
            }
            _ => {
                // ADD: every word but the last (the destination) is a source.
                for src in words.iter().take(words.len().saturating_sub(1)) {
                    let Some(src) = substitute(src, &stage_args) else {
                        return at(format!(
                            "ADD {src}: a build argument berth cannot resolve (hint: ADD a path of the build context, or fetch with RUN curl or wget)"
                        ));
                    };
                    if src.contains("://") || src.starts_with("git@") {
                        return at(format!(
                            "ADD {src}: the Docker daemon would fetch it from the host, outside the app's network rule (hint: fetch it with RUN curl or wget in the build)"
                        ));
                    }
                }
            }
        }
    }
    Ok(images)
}

/// The first parser directive of `text` other than `syntax`, if it has one. Docker reads
/// directives from every `# key=value` comment at the top of the file (after a byte order
/// mark, which it skips), up to the first line that is not one: so all of them are looked
/// at, not only the first line.
fn directive(text: &str) -> Option<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for line in text.lines() {
        // The first line that is not a `# key=value` comment ends the directives.
        let (key, _) = line
            .trim_start()
            .strip_prefix('#')
            .and_then(|c| c.split_once('='))?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if !key.eq_ignore_ascii_case("syntax") {
            return Some(line.trim().to_string());
        }
    }
    None
}

/// The instructions of a Dockerfile (`MAINTAINER` is deprecated, still read).
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Whether Docker may take `image` for an image ID: `sha256:…`, or hex digits only, of any
/// length (the daemon resolves any unique prefix of an ID, `45c` included, and the build
/// cache's intermediate images carry no labels to refuse them by).
pub fn is_image_id(image: &str) -> bool {
    let lower = image.to_ascii_lowercase();
    lower.starts_with("sha256:")
        || (!lower.is_empty() && lower.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The registry host `image` is pulled from when it is not local, if it names one (Docker's
/// rule: a first path part with a `.` or a `:`, or `localhost`); `None` for Docker Hub.
pub fn registry_host(image: &str) -> Option<&str> {
    let (first, _) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some(first)
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
    if is_image_id(&lower) {
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

/// `$NAME` and `${NAME}` replaced by the known `ARG` defaults, as Docker reads them (the
/// longest name; `${NAME:-x}` and the like are not supported). `None`: a variable berth does
/// not know, or a form it does not read.
fn substitute(word: &str, args: &[(String, String)]) -> Option<String> {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}')?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let valid = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return None;
        }
        let (_, value) = args.iter().find(|(n, _)| n == name)?;
        out.push_str(value);
        rest = tail;
    }
    out.push_str(rest);
    Some(out)
}

/// The flags (`--name=value`, or `--name`) and the words of an instruction's arguments. The
/// JSON form (`["a", "b"]`, COPY and ADD) is read as JSON; otherwise words are split on
/// whitespace. A quote or a backslash left in a word is refused: Docker would remove it, and
/// the word berth checks must be the word Docker uses.
#[allow(clippy::type_complexity)]
fn words_of(keyword: &str, body: &str) -> Result<(Vec<(String, String)>, Vec<String>), String> {
    let mut flags = Vec::new();
    let mut rest = body;
    while let Some(flag) = rest.strip_prefix("--") {
        let end = flag.find(char::is_whitespace).unwrap_or(flag.len());
        let (word, tail) = flag.split_at(end);
        let (name, value) = word.split_once('=').unwrap_or((word, ""));
        flags.push((name.to_ascii_lowercase(), value.to_string()));
        rest = tail.trim_start();
    }
    let words: Vec<String> = if rest.starts_with('[') && matches!(keyword, "COPY" | "ADD") {
        serde_json::from_str::<Vec<String>>(rest)
            .map_err(|_| "a JSON form berth cannot read (write [\"src\", \"dest\"])".to_string())?
    } else {
        rest.split_whitespace().map(str::to_string).collect()
    };
    // ARG values may be quoted as a whole (`ARG V="3.12"`): one pair, nothing inside.
    let unquote = |w: &str| -> Result<String, String> {
        let (name, value) = match (keyword, w.split_once('=')) {
            ("ARG", Some((n, v))) => (Some(n), v),
            _ => (None, w),
        };
        let inner = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .filter(|_| name.is_some())
            .unwrap_or(value);
        if inner.contains(['"', '\'', '\\']) || name.is_some_and(|n| n.contains(['"', '\'', '\\']))
        {
            return Err(format!(
                "{w:?}: quotes and backslashes are not supported here (Docker would remove them; write the value plainly)"
            ));
        }
        Ok(match name {
            Some(n) => format!("{n}={inner}"),
            None => inner.to_string(),
        })
    };
    for (_, value) in &flags {
        if value.contains(['"', '\'', '\\']) {
            return Err(format!(
                "a flag value {value:?} with quotes or backslashes is not supported"
            ));
        }
    }
    let words = words.iter().map(|w| unquote(w)).collect::<Result<_, _>>()?;
    Ok((flags, words))
}

/// The instructions of a Dockerfile with the line each starts on, read as Docker's parser does:
/// comments dropped, `\` continuations joined across comment and blank lines.
fn instructions(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_none() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        // Docker drops comment and blank lines inside a continuation (the blank ones with a
        // warning) instead of ending the instruction there.
        if current.is_some() && (line.starts_with('#') || line.is_empty()) {
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
            // The classic builder berth uses ignores it (Docker's examples start with it).
            "# syntax=docker/dockerfile:1\nFROM python:3.10-alpine\n",
            "FROM berth-1a2b3c4d/shop:v3\nRUN true\n",
            "ARG V=3.12\nFROM python:${V}-slim AS build\nRUN pip install x\nFROM build\nCOPY --from=build /a /b\nCOPY --from=0 /a /b\n",
            "FROM localhost:5000/base:1\n",
            "FROM node:20 AS b\nADD --chown=1:1 src/ dest/\nADD [\"a.tar\", \"/x\"]\n",
            "# comment\nFROM \\\n  alpine\n",
        ] {
            assert!(check(text, OWN).is_ok(), "{text}");
        }
        assert_eq!(
            check("ARG V=3\nFROM python:${V} AS b\nFROM scratch\nCOPY --from=b /a /b\nCOPY --from=alpine /c /d\n", OWN),
            Ok(vec!["python:3".to_string(), "alpine".to_string()])
        );
        // Quoted ARG defaults are read as Docker reads them; the registry a name expands to is
        // returned (the caller checks it).
        assert_eq!(
            check("ARG V=\"3.12\"\nARG r=alpinez\nARG rx=127.0.0.1:5000/x\nFROM python:$V\nFROM $rx\n", OWN),
            Ok(vec!["python:3.12".to_string(), "127.0.0.1:5000/x".to_string()])
        );
    }

    #[test]
    fn registry_hosts() {
        use super::registry_host;
        assert_eq!(registry_host("127.0.0.1:5000/x:y"), Some("127.0.0.1:5000"));
        assert_eq!(registry_host("localhost/x"), Some("localhost"));
        assert_eq!(registry_host("docker.io/library/alpine"), Some("docker.io"));
        assert_eq!(registry_host("library/alpine"), None);
        assert_eq!(registry_host("alpine:3"), None);
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
            (
                "# escape=`\nFROM `\n  berth-1a2b3c4d/cvic:v1\n",
                "parser directive",
            ),
            ("#check=skip=all\nFROM alpine\n", "parser directive"),
            // `syntax` is let through, but the directives after it are read too.
            (
                "# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nWORKDIR /x\\\nCOPY --from=berth-1a2b3c4d/cvic:v1 /s /s\n",
                "parser directive `# escape=`",
            ),
            // Docker skips a byte order mark before the directives.
            (
                "\u{feff}# escape=`\nFROM scratch\n",
                "parser directive",
            ),
            // Any unique prefix of an ID names an image (an unlabelled intermediate one, too).
            ("FROM 45c\n", "image ID"),
            ("\u{feff}FROM berth-1a2b3c4d/cvic:v1\n", "another app"),
            // A keyword berth would not read as FROM: refused, whatever Docker makes of it.
            ("\u{200b}FROM berth-1a2b3c4d/cvic:v1\n", "unknown instruction"),
            ("FROM scratch\nCOPY --from=45C6 /a /a\n", "image ID"),
            // A blank or comment line inside a continuation does not end the instruction.
            (
                "FROM scratch\nCOPY \\\n\n--from=berth-1a2b3c4d/cvic:v2 /s /s\n",
                "another app",
            ),
            (
                "FROM scratch\nADD \\\n# x\n\n  http://127.0.0.1:1/s /s\n",
                "fetch it",
            ),
            (
                "ARG U=http://127.0.0.1:1/\nFROM scratch\nADD $U /s\n",
                "cannot resolve",
            ),
            ("FROM scratch\nARG U\nADD ${U} /s\n", "cannot resolve"),
            (
                "FROM scratch\nARG V\nCOPY --from=$V /a /b\n",
                "cannot resolve",
            ),
            (
                "FROM scratch\nONBUILD COPY --from=berth-1a2b3c4d/cvic /a /b\n",
                "ONBUILD",
            ),
            // A third attack's spellings: quotes and escapes Docker removes, names that share
            // a prefix, a later declaration, quoted ARG values, JSON escapes.
            (
                "FROM scratch\nCOPY --fr\"om\"=berth-1a2b3c4d/cvic:v1 /a /b\n",
                "not a flag",
            ),
            (
                "FROM scratch\nCOPY --f\\rom=berth-1a2b3c4d/cvic:v1 /a /b\n",
                "not a flag",
            ),
            (
                "ARG b=alpinez\nARG bx=berth-1a2b3c4d/cvic:v1\nFROM $bx\n",
                "another app",
            ),
            (
                "ARG b=alpine\nARG b=berth-1a2b3c4d/cvic:v1\nFROM ${b}\n",
                "another app",
            ),
            ("ARG b='berth-1a2b3c4d/cvic:v1'\nFROM $b\n", "another app"),
            (
                "FROM scratch\nADD http:\\//127.0.0.1:1/s /s\n",
                "backslashes",
            ),
            ("FROM scratch\nADD http:''//127.0.0.1:1/s /s\n", "quotes"),
            (
                "FROM scratch\nADD [\"http:\\u002f\\u002f127.0.0.1/s\", \"/s\"]\n",
                "fetch it",
            ),
            ("ARG V=${X:-berth}\nFROM $V\n", "names another variable"),
            ("FROM ${V:-alpine}\n", "cannot resolve"),
            ("FROM --fr=x alpine\n", "not a flag"),
            // Inside a stage, its own ARG wins over the global one; ENV names are not resolved.
            (
                "ARG b=alpine\nFROM scratch\nARG b=berth-1a2b3c4d/cvic:v1\nCOPY --from=$b /a /b\n",
                "another app",
            ),
            (
                "ARG b=alpine\nFROM scratch\nENV b=berth-1a2b3c4d/cvic:v1\nCOPY --from=$b /a /b\n",
                "cannot resolve",
            ),
            (
                "ARG u=http://127.0.0.1:1/\nFROM scratch\nARG u\nADD $u /s\n",
                "fetch it",
            ),
        ] {
            let err = check(text, OWN).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
