//! Logs: a deploy's build/deploy log and an app's instance logs, as plain text or followed as
//! Server-Sent Events. Following polls the files (every 200 ms), which also works across the
//! runtime's log rotation and for instances that appear during a redeploy. All file reads run on
//! the blocking pool, never on the async threads, and each is bounded (the plain deploy log to
//! its last 4 MiB, a tail to 256 KiB, a poll to 256 KiB per file).

use crate::render::deploy_json;
use crate::{ApiError, Caller, Ctx};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use engine::logs::{read_log, tail_file, Follower};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);
/// A deploy's log is followed closer: `berth deploy` returns when it sees the end.
const DEPLOY_POLL: Duration = Duration::from_millis(50);
/// A plain (not followed) deploy log larger than this is cut to its end.
const MAX_PLAIN_LOG: u64 = 4 << 20;

/// Run blocking file I/O on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the log failed: {e}"),
        )
    })
}

/// `prepare` then poll `follower` on the blocking pool; the follower moves there and back.
/// `None` if the blocking task failed (the stream then ends).
async fn poll_blocking(
    mut follower: Follower,
    prepare: impl FnOnce(&mut Follower) + Send + 'static,
) -> Option<(Follower, Vec<(String, String)>)> {
    blocking(move || {
        prepare(&mut follower);
        let lines = follower.poll();
        (follower, lines)
    })
    .await
    .ok()
}

#[derive(Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    follow: bool,
    lines: Option<usize>,
}

pub async fn deploy_log(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path((app, id)): Path<(String, i64)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    let d = crate::apps::deploy_of(&ctx, &app, id)?;
    if !q.follow {
        let path = d.log_path.clone();
        let text = blocking(move || read_log(&path, MAX_PLAIN_LOG)).await?;
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let mut follower = Follower::default();
    follower.add("", &d.log_path, true);
    // State: (follower, finished). One `log` event per batch of lines, then `end`.
    let stream = futures_util::stream::unfold(
        (follower, false, ctx, id),
        |(mut follower, ended, ctx, id)| async move {
            if ended {
                return None;
            }
            loop {
                let finished = ctx
                    .engine
                    .deploy(id)
                    .ok()
                    .filter(|d| d.finished_at.is_some());
                // Read after checking: a finished deploy has written its last line.
                let (f, lines) = poll_blocking(follower, |_| {}).await?;
                follower = f;
                if !lines.is_empty() {
                    let data: Vec<String> = lines.into_iter().map(|(_, l)| l).collect();
                    let ev = Event::default().event("log").data(data.join("\n"));
                    return Some((Ok::<_, Infallible>(ev), (follower, false, ctx, id)));
                }
                if let Some(d) = finished {
                    let ev = Event::default()
                        .event("end")
                        .data(deploy_json(&ctx.engine, &d).to_string());
                    return Some((Ok(ev), (follower, true, ctx, id)));
                }
                tokio::time::sleep(DEPLOY_POLL).await;
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

pub async fn app_logs(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    let files = ctx.engine.log_files(&app)?;
    let n = q.lines.unwrap_or(100).min(10_000);
    let follow = q.follow;
    let (text, follower) = blocking(move || {
        let mut text = String::new();
        for (label, path) in &files {
            for line in tail_file(path, n) {
                text.push_str(&format!("{label} | {line}\n"));
            }
        }
        let mut follower = Follower::default();
        if follow {
            for (label, path) in &files {
                follower.add(label, path, false);
            }
        }
        (text, follower)
    })
    .await?;
    if !q.follow {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let first = (!text.is_empty()).then(|| text.trim_end().to_string());
    let stream = futures_util::stream::unfold(
        (follower, first, ctx, app),
        |(mut follower, first, ctx, app)| async move {
            if let Some(t) = first {
                let ev = Event::default().event("log").data(t);
                return Some((Ok::<_, Infallible>(ev), (follower, None, ctx, app)));
            }
            loop {
                // Instances come and go across deploys: follow the current set, new files
                // from their start.
                let Ok(files) = ctx.engine.log_files(&app) else {
                    return None; // the app went away
                };
                let (f, lines) = poll_blocking(follower, move |follower| {
                    let paths: Vec<_> = files.iter().map(|(_, p)| p.clone()).collect();
                    follower.retain(&paths);
                    for (label, path) in &files {
                        follower.add(label, path, true);
                    }
                })
                .await?;
                follower = f;
                if !lines.is_empty() {
                    let data: Vec<String> = lines
                        .into_iter()
                        .map(|(l, t)| format!("{l} | {t}"))
                        .collect();
                    let ev = Event::default().event("log").data(data.join("\n"));
                    return Some((Ok(ev), (follower, None, ctx, app)));
                }
                tokio::time::sleep(POLL).await;
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
