//! A compose service's variables: `environment` over its `env_file`s, and Compose's `$`.

use super::{inside, EnvFile, EnvFiles, Environment};
use std::collections::BTreeMap;
use std::path::Path;

/// The most bytes of one env file.
const MAX_ENV_FILE: u64 = 1 << 20;

/// The variables of the `env_file`s, in order (a later file's value wins): `KEY=VALUE` lines,
/// `#` comments and blank lines skipped, a value in matching quotes unquoted.
pub(super) fn env_files(files: EnvFiles, dir: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::io::Read;
    let list = match files {
        EnvFiles::One(p) => vec![(p, true)],
        EnvFiles::Many(l) => l
            .into_iter()
            .map(|f| match f {
                EnvFile::Path(p) => (p, true),
                EnvFile::Full(f) => (f.path, f.required),
            })
            .collect(),
    };
    let mut out = BTreeMap::new();
    for (path, required) in list {
        let rel = inside(&path)?;
        let full = dir.join(&rel);
        // Only a regular file of the source, never what a symlink points to.
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(_) if !required => continue,
            Err(_) => {
                return Err(format!(
                    "{path:?} does not exist (mark it `required: false` if it may be missing)"
                ))
            }
        };
        if !meta.is_file() {
            return Err(format!("{path:?} is not a regular file"));
        }
        let mut text = String::new();
        std::fs::File::open(&full)
            .and_then(|f| f.take(MAX_ENV_FILE + 1).read_to_string(&mut text))
            .map_err(|e| format!("{path:?}: {e}"))?;
        if text.len() as u64 > MAX_ENV_FILE {
            return Err(format!("{path:?} is larger than 1 MiB"));
        }
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("{path}:{}: expected KEY=VALUE", n + 1));
            };
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .filter(|_| value.len() >= 2)
                .unwrap_or(value);
            out.insert(key.trim().to_string(), unquoted.to_string());
        }
    }
    Ok(out)
}

/// `environment` over what the `env_file`s gave.
pub(super) fn environment(
    env: Option<Environment>,
    from_files: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = from_files;
    match env {
        None => {}
        Some(Environment::Map(m)) => {
            for (k, v) in m {
                let v = match v {
                    None => {
                        return Err(format!(
                            "{k} has no value (taken from the shell by docker compose; set it with berth env:set instead)"
                        ))
                    }
                    Some(serde_norway::Value::String(s)) => s,
                    Some(serde_norway::Value::Number(n)) => n.to_string(),
                    Some(serde_norway::Value::Bool(b)) => b.to_string(),
                    Some(_) => return Err(format!("{k}: a value is a string, number or boolean")),
                };
                out.insert(k, v);
            }
        }
        Some(Environment::List(l)) => {
            for item in l {
                match item.split_once('=') {
                    Some((k, v)) => {
                        out.insert(k.to_string(), v.to_string());
                    }
                    None => {
                        return Err(format!(
                            "{item} has no value (set it with berth env:set instead)"
                        ))
                    }
                }
            }
        }
    }
    for (k, v) in out.iter_mut() {
        let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok || v.contains('\0') {
            return Err(format!("invalid variable {k:?}"));
        }
        *v = unescape(v).map_err(|e| format!("{k}: {e}"))?;
    }
    Ok(out)
}

/// Compose's `$`: `$$` is a literal `$`; any other `$` is an interpolation from the shell of
/// whoever runs `docker compose`, which berth does not have.
pub(super) fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
        } else if chars.peek() == Some(&'$') {
            chars.next();
            out.push('$');
        } else {
            return Err(format!(
                "{s:?}: $ interpolation is not supported (write $$ for a literal $; set values with berth env:set)"
            ));
        }
    }
    Ok(out)
}
