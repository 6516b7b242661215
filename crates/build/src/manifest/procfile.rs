//! The Procfile: one `name: command` per line, as Heroku, foreman and Dokku read it.

use super::values::{check_command, check_process_name};
use super::ManifestError;

/// One process line, with its line number for later cross-file errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcLine {
    pub name: String,
    pub command: String,
    pub line: usize,
}

/// Parses a Procfile. Blank lines and `#` comments are skipped; the command is everything after
/// the first ':' (commands often contain colons themselves), trimmed.
pub(crate) fn parse(text: &str) -> Result<Vec<ProcLine>, ManifestError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<ProcLine> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |reason: String| ManifestError::at("Procfile", Some(line), None, reason);
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((name, command)) = trimmed.split_once(':') else {
            return Err(err("expected `name: command`".to_string()));
        };
        let name = name.trim();
        check_process_name(name).map_err(err)?;
        let command = check_command(command).map_err(|r| err(format!("process {name:?}: {r}")))?;
        if let Some(first) = out.iter().find(|p| p.name == name) {
            return Err(err(format!(
                "process {name:?} is already defined on line {}",
                first.line
            )));
        }
        out.push(ProcLine {
            name: name.to_string(),
            command,
            line,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<(String, String, usize)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|p| (p.name, p.command, p.line))
            .collect()
    }

    #[test]
    fn good_procfiles() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str, usize)]);
        let cases: &[Case] = &[
            ("", &[]),
            ("web: python3 app.py", &[("web", "python3 app.py", 1)]),
            (
                "# comment\n\nweb:   gunicorn app:app --bind 0.0.0.0:$PORT  \r\n  worker: celery -A x\nrelease: ./migrate\n",
                &[
                    ("web", "gunicorn app:app --bind 0.0.0.0:$PORT", 3),
                    ("worker", "celery -A x", 4),
                    ("release", "./migrate", 5),
                ],
            ),
            ("\u{feff}web:x", &[("web", "x", 1)]),
            ("a-b_1 : run", &[("a-b_1", "run", 1)]),
        ];
        for (text, want) in cases {
            let want: Vec<_> = want
                .iter()
                .map(|(n, c, l)| (n.to_string(), c.to_string(), *l))
                .collect();
            assert_eq!(names(text), want, "{text:?}");
        }
    }

    #[test]
    fn bad_procfiles() {
        let cases: &[(&str, usize, &str)] = &[
            ("web python app.py", 1, "expected `name: command`"),
            ("# c\n\nweb:", 3, "command is empty"),
            ("web: a\nworker:   \n", 2, "command is empty"),
            ("web: a\n\nweb: b", 3, "already defined on line 1"),
            ("Web: a", 1, "invalid process name \"Web\""),
            ("my app: a", 1, "invalid process name \"my app\""),
            (": a", 1, "invalid process name \"\""),
            ("-web: a", 1, "invalid process name"),
        ];
        for (text, line, reason) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(*line), "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err}");
            assert!(
                err.to_string().starts_with(&format!("Procfile:{line}: ")),
                "{err}"
            );
        }
    }
}
