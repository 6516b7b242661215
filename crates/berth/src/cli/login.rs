//! `berth login` and `berth logout`: the saved server URL and token.

use super::output::list;
use super::Global;
use crate::client::{self, Client, Credentials, Error, Source, Target, EXIT_OK};

pub(super) fn login(g: &Global, server: Option<String>) -> Result<i32, Error> {
    let Some(url) = server.or_else(|| g.url.clone()) else {
        return Err(Error::usage("login needs the server's URL")
            .with_hint("berth login https://berth.example.com --token T"));
    };
    let url = client::normalize_url(&url)?;
    let Some(token) = g.token.clone().filter(|t| !t.trim().is_empty()) else {
        return Err(Error::usage("login needs a token").with_hint(
            "pass --token T (or BERTH_TOKEN); create one with `berth tokens:create` on the server",
        ));
    };
    let token = token.trim().to_string();
    let ca =
        match &g.ca {
            Some(p) => Some(std::fs::canonicalize(p).map_err(|e| {
                Error::usage(format!("cannot read the CA file {}: {e}", p.display()))
            })?),
            None => None,
        };
    let client = Client::new(Target {
        url: url.clone(),
        token: Some(token.clone()),
        ca: ca.clone(),
        source: Source::Flags,
    })?;
    let apps = match client.get("/api/v1/apps") {
        Ok(v) => Some(v),
        // Authenticated, only not allowed to list every app: the token is good.
        Err(e) if e.status == Some(403) => None,
        Err(e) => return Err(e),
    };
    let Some(path) = client::credentials_path() else {
        return Err(Error::failed("cannot tell where to save the credentials")
            .with_hint("set HOME or XDG_CONFIG_HOME"));
    };
    client::save_credentials(
        &path,
        &Credentials {
            url: url.clone(),
            token,
            ca,
        },
    )
    .map_err(|e| Error::failed(format!("cannot save {}: {e}", path.display())))?;
    match apps {
        Some(a) => {
            let n = list(&a).len();
            println!(
                "logged in to {url} ({n} app{}); saved in {}",
                if n == 1 { "" } else { "s" },
                path.display()
            )
        }
        None => println!("logged in to {url}; saved in {}", path.display()),
    }
    Ok(EXIT_OK)
}

pub(super) fn logout() -> Result<i32, Error> {
    let Some(path) = client::credentials_path() else {
        println!("not logged in");
        return Ok(EXIT_OK);
    };
    let url = client::load_credentials(&path)
        .ok()
        .flatten()
        .map(|c| c.url);
    let removed = client::remove_credentials(&path)
        .map_err(|e| Error::failed(format!("cannot remove {}: {e}", path.display())))?;
    match (removed, url) {
        (true, Some(u)) => println!("logged out of {u}"),
        (true, None) => println!("removed {}", path.display()),
        (false, _) => println!("not logged in"),
    }
    Ok(EXIT_OK)
}
