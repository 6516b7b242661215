//! The app a command acts on: `-a/--app`, else `BERTH_APP`, else a directory's name, and the
//! hint an "unknown app" answer gets from where the name came from.

use super::Global;
use crate::client::{seg, Error};
use std::path::Path;

/// Where the app name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFrom {
    Flag,
    Env,
    Dir,
}

/// The app a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRef {
    pub name: String,
    pub from: AppFrom,
}

impl AppRef {
    pub(super) fn path(&self) -> String {
        format!("/api/v1/apps/{}", seg(&self.name))
    }
    /// Adds a hint to an "unknown app" answer.
    pub(super) fn explain(&self, e: Error) -> Error {
        if !e.is_not_found() {
            return e;
        }
        match self.from {
            AppFrom::Dir => e.or_hint(format!(
                "the app name `{}` comes from the directory's name; choose one with -a NAME (or BERTH_APP), see `berth apps`",
                self.name
            )),
            AppFrom::Env => e.or_hint(format!(
                "the app name `{}` comes from BERTH_APP; see `berth apps`, or create it with `berth apps:create {}`",
                self.name, self.name
            )),
            AppFrom::Flag => e.or_hint(format!(
                "see `berth apps`, or create it with `berth apps:create {}`",
                self.name
            )),
        }
    }
}

/// A directory name made into an app name: lowercase letters, digits and dashes.
pub fn app_name_from_dir(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// `-a NAME`, else `BERTH_APP`, else the base name of `dir`.
pub fn infer_app(flag: Option<&str>, env: Option<&str>, dir: &Path) -> Result<AppRef, Error> {
    if let Some(n) = flag.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(AppRef {
            name: n.to_string(),
            from: AppFrom::Flag,
        });
    }
    if let Some(n) = env.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(AppRef {
            name: n.to_string(),
            from: AppFrom::Env,
        });
    }
    let name = dir
        .file_name()
        .map(|n| app_name_from_dir(&n.to_string_lossy()))
        .unwrap_or_default();
    if name.is_empty() {
        return Err(Error::usage(format!(
            "cannot tell the app from the directory {}",
            dir.display()
        ))
        .with_hint("choose one with -a NAME, or set BERTH_APP"));
    }
    Ok(AppRef {
        name,
        from: AppFrom::Dir,
    })
}

pub(super) fn app_for(g: &Global, dir: Option<&Path>) -> Result<AppRef, Error> {
    let env = std::env::var("BERTH_APP").ok();
    let cwd;
    let dir = match dir {
        Some(d) => d,
        None => {
            cwd = std::env::current_dir().unwrap_or_default();
            &cwd
        }
    };
    infer_app(g.app.as_deref(), env.as_deref(), dir)
}

pub(super) fn app(g: &Global) -> Result<AppRef, Error> {
    app_for(g, None)
}

/// The app named on the command line, else -a / BERTH_APP / the directory's name.
/// Both given, they must agree.
pub(super) fn named_app(g: &Global, name: Option<String>) -> Result<AppRef, Error> {
    match (name, &g.app) {
        (Some(n), Some(a)) if &n != a => Err(Error::usage(format!(
            "two apps named: {n} (the argument) and {a} (-a)"
        ))
        .with_hint("name the app once, as the argument or with -a")),
        (Some(n), _) => Ok(AppRef {
            name: n,
            from: AppFrom::Flag,
        }),
        (None, _) => app(g),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::client;

    #[test]
    fn app_inference() {
        let dir = Path::new("/src/My_Shop.web");
        let a = infer_app(Some("hello"), Some("envapp"), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("hello", AppFrom::Flag));
        let a = infer_app(None, Some("envapp"), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("envapp", AppFrom::Env));
        let a = infer_app(Some(""), Some(" "), dir).unwrap();
        assert_eq!((a.name.as_str(), a.from), ("my-shop-web", AppFrom::Dir));
        let e = infer_app(None, None, Path::new("/")).unwrap_err();
        assert_eq!(e.code, client::EXIT_USAGE);
        assert!(e.hint.unwrap().contains("-a NAME"));
        assert_eq!(app_name_from_dir("--Hello  World--"), "hello-world");
        assert_eq!(app_name_from_dir("___"), "");
    }

    #[test]
    fn not_found_hint_names_the_source() {
        let e = Error {
            code: 1,
            status: Some(404),
            message: "app shop not found".into(),
            hint: None,
        };
        let app = AppRef {
            name: "shop".into(),
            from: AppFrom::Dir,
        };
        assert!(app.explain(e.clone()).hint.unwrap().contains("-a NAME"));
        let server_hint = e.clone().with_hint("server says");
        assert_eq!(
            app.explain(server_hint).hint.as_deref(),
            Some("server says")
        );
    }
}
