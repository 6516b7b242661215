//! The API's wire format for the store's types (which are deliberately not `Serialize`).

use engine::store::{App, Deploy, Release, Token};
use engine::{Engine, InstanceView};
use serde_json::{json, Value};

/// Unix milliseconds as RFC 3339 UTC (`2026-11-28T09:30:00.123Z`).
pub fn ts(ms: i64) -> String {
    engine::notify::rfc3339(ms)
}

pub fn app_json(engine: &Engine, app: &App) -> Value {
    json!({
        "name": app.name,
        "created_at": ts(app.created_at),
        "url": engine.app_url(&app.name),
        "live_release": app.live_release,
        "formation": app.formation,
        "domains": engine.store().domains(&app.name).unwrap_or_default(),
        "status": engine.app_status(app),
        "git": settings_json(app),
    })
}

/// An app's git settings, never its webhook secret or the credentials in its repository URL.
fn settings_json(app: &App) -> Value {
    let s = &app.settings;
    json!({
        "deploy_branch": s.deploy_branch,
        "cancel_running": s.cancel_running,
        "previews": s.previews,
        "preview_max": s.preview_max,
        "preview_env": s.preview_env.keys().collect::<Vec<_>>(),
        // Credentials in the URL (`https://user:token@host/…`) are for fetching only.
        "repo": s.repo.as_ref().map(|r| json!({
            "url": engine::webhook::redact_url(&r.url),
            "branch": r.branch,
        })),
        "preview_of": s.preview_of.as_ref().map(|p| json!({ "app": p.app, "branch": p.branch })),
    })
}

pub fn deploy_json(engine: &Engine, d: &Deploy) -> Value {
    json!({
        "id": d.id,
        "app": d.app,
        "kind": d.kind.as_str(),
        "status": d.status.as_str(),
        "step": d.step,
        "release": d.release_version,
        "reason": d.reason,
        "actor": d.actor,
        "started_at": ts(d.started_at),
        "finished_at": d.finished_at.map(ts),
        "url": engine.app_url(&d.app),
        "trigger": d.meta.trigger,
        // The commit's first line, or what a change without a build does ("Scale web=2").
        "message": d.meta.message,
        "commit": d.meta.sha.as_ref().map(|sha| json!({
            "sha": sha,
            "branch": d.meta.branch,
            "author": d.meta.author,
            "message": d.meta.message,
        })),
        "steps": d.steps.iter().map(|s| json!({
            "name": s.name,
            "status": s.status,
            "started_at": ts(s.started_at),
            "finished_at": s.finished_at.map(ts),
        })).collect::<Vec<_>>(),
    })
}

pub fn release_json(r: &Release, live: Option<i64>) -> Value {
    let spec = build::manifest::AppSpec::from_json(&r.spec).ok();
    json!({
        "version": r.version,
        "status": r.status.as_str(),
        "created_at": ts(r.created_at),
        "description": r.description,
        "live": live == Some(r.version),
        // How it runs: a static site, processes on this host, containers, or Swarm services.
        "kind": spec.as_ref().map(|s| match (s.kind, &s.image) {
            (build::manifest::AppKind::Static, _) => "static",
            (_, Some(_)) if s.runtime == build::manifest::RuntimeChoice::Swarm => "swarm",
            (_, Some(_)) => "docker",
            (build::manifest::AppKind::Process, None) => "process",
        }),
        "processes": spec.map(|s| s.processes).unwrap_or_default(),
        "source_release": r.source_release,
    })
}

pub fn instance_json(i: &InstanceView) -> Value {
    json!({
        "id": i.id,
        "proc_type": i.proc_type,
        "index": i.index,
        "release": i.release,
        "port": i.port,
        "pid": i.pid,
        "state": i.state,
    })
}

pub fn token_json(t: &Token) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scope": t.scope.as_str(),
        "apps": t.apps,
        "created_at": ts(t.created_at),
        "revoked_at": t.revoked_at.map(ts),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::ts(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::ts(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::ts(1_795_857_000_000), "2026-11-28T09:10:00.000Z");
    }
}
