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
use engine::logs::{merged_tail, read_log, Follower, LogFilter, LogLine};
use serde::Deserialize;
use std::convert::Infallible;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

/// Followed streams (SSE) one token may hold open at once. Each holds a connection of the
/// admin listener, whose number is capped, and its keep-alives keep it from ever timing out:
/// without a limit, one token holder could take every connection and shut everyone out.
pub const STREAMS_PER_TOKEN: usize = 8;

/// The followed streams open, per token id.
#[derive(Clone, Default)]
pub struct Streams(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<i64, usize>>>);

/// One open followed stream of a token; dropping it (the stream ends or the client goes)
/// gives it back.
pub struct StreamSlot {
    streams: Streams,
    token: i64,
}

impl Streams {
    fn counts(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more stream of `caller`'s token, or 429.
    fn take(&self, caller: &Caller) -> Result<StreamSlot, ApiError> {
        let token = caller.0.id;
        let mut counts = self.counts();
        let open = counts.entry(token).or_insert(0);
        if *open >= STREAMS_PER_TOKEN {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this token already follows {STREAMS_PER_TOKEN} logs at once (hint: close one, or use another token)"
                ),
            ));
        }
        *open += 1;
        Ok(StreamSlot {
            streams: self.clone(),
            token,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut counts = self.streams.counts();
        if let Some(open) = counts.get_mut(&self.token) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.token);
            }
        }
    }
}

/// An SSE response of `stream`, holding `slot` for as long as it is open.
fn followed<S>(stream: S, slot: StreamSlot) -> Response
where
    S: futures_util::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    use futures_util::StreamExt;
    let stream = stream.map(move |e| {
        let _held = &slot;
        e
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
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
    let slot = ctx.streams.take(&caller)?;
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
    Ok(followed(stream, slot))
}

/// `GET /apps/{app}/logs`: what `berth logs` asks.
#[derive(Deserialize)]
pub struct AppLogQuery {
    #[serde(default)]
    follow: bool,
    /// Lines in all (not per instance), 100 by default.
    lines: Option<usize>,
    /// An RFC 3339 time, or a duration back from now (`10m`).
    since: Option<String>,
    until: Option<String>,
    /// Only this process type's instances (`web`).
    #[serde(rename = "type")]
    proc_type: Option<String>,
    /// Only this instance (`web.2`).
    instance: Option<String>,
    /// `app` (the instances' output, the default), `berth` (deploy events), `router` (the
    /// requests the proxy answered, from the access log) or `all`.
    source: Option<String>,
}

/// `since`/`until`: an RFC 3339 time or a duration back from `now`.
fn parse_when(name: &str, text: &str, now: i64) -> Result<i64, ApiError> {
    if let Some(ms) = units::parse_rfc3339(text) {
        return Ok(ms);
    }
    match units::parse_duration(text) {
        Ok(d) => Ok(now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
        Err(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid {name} {text:?}: expected a time such as 2026-12-08T10:00:00Z or a duration back from now such as 10m"
            ),
        )),
    }
}

pub async fn app_logs(
    State(ctx): State<Ctx>,
    Extension(caller): Extension<Caller>,
    Path(app): Path<String>,
    Query(q): Query<AppLogQuery>,
) -> Result<Response, ApiError> {
    caller.app(&app)?;
    let now = units::now_ms();
    let filter = LogFilter {
        since: q
            .since
            .as_deref()
            .map(|t| parse_when("since", t, now))
            .transpose()?,
        until: q
            .until
            .as_deref()
            .map(|t| parse_when("until", t, now))
            .transpose()?,
        proc_type: q.proc_type.filter(|t| !t.is_empty()),
        instance: q.instance.filter(|i| !i.is_empty()),
    };
    let (from_app, from_berth, from_router) = match q.source.as_deref().unwrap_or("app") {
        "app" => (true, false, false),
        "berth" => (false, true, false),
        "router" => (false, false, true),
        "all" => (true, true, true),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid source {other:?}: expected app, berth, router or all"),
            ))
        }
    };
    if q.source.as_deref() == Some("router") && !ctx.engine.has_router_log() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "router events come from the access log, which this server does not write to a file (hint: set [server] access_log to a file path)".to_string(),
        ));
    }
    let files = if from_app {
        ctx.engine.log_files(&app)?
    } else {
        Vec::new()
    };
    let mut events = if from_berth {
        ctx.engine.log_events(&app)?
    } else {
        Vec::new()
    };
    if from_router {
        let (engine, a) = (ctx.engine.clone(), app.clone());
        events.extend(
            blocking(move || engine.router_events(&a))
                .await??
                .unwrap_or_default(),
        );
    }
    let n = q.lines.unwrap_or(100).min(10_000);
    let follow = q.follow;
    let f = filter.clone();
    let (text, follower) = blocking(move || {
        let text: String = merged_tail(&files, events, &f, n)
            .iter()
            .map(|l| l.render() + "\n")
            .collect();
        let mut follower = Follower::default();
        if follow {
            for (label, path) in files.iter().filter(|(l, _)| f.wants_instance(l)) {
                follower.add(label, path, false);
            }
        }
        (text, follower)
    })
    .await?;
    if !q.follow {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let slot = ctx.streams.take(&caller)?;
    let first = (!text.is_empty()).then(|| text.trim_end().to_string());
    // Deploy events are followed by time: those after the newest one shown.
    let state = Followed {
        follower,
        first,
        ctx,
        app,
        filter,
        from_app,
        from_berth,
        from_router,
        events_after: now,
        requests_after: now,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        if let Some(t) = st.first.take() {
            let ev = Event::default().event("log").data(t);
            return Some((Ok::<_, Infallible>(ev), st));
        }
        loop {
            if st.filter.is_past(units::now_ms()) {
                return None;
            }
            // Instances come and go across deploys: follow the current set, new files from
            // their start.
            let files = if st.from_app {
                match st.ctx.engine.log_files(&st.app) {
                    Ok(files) => files,
                    Err(_) => return None, // the app went away
                }
            } else {
                Vec::new()
            };
            let f = st.filter.clone();
            let (follower, lines) = poll_blocking(st.follower, move |follower| {
                let paths: Vec<_> = files.iter().map(|(_, p)| p.clone()).collect();
                follower.retain(&paths);
                for (label, path) in files.iter().filter(|(l, _)| f.wants_instance(l)) {
                    follower.add(label, path, true);
                }
            })
            .await?;
            st.follower = follower;
            let mut lines: Vec<LogLine> = lines
                .into_iter()
                .map(|(label, line)| LogLine::from_file(&label, &line))
                .collect();
            if st.from_berth {
                let after = st.events_after;
                lines.extend(
                    st.ctx
                        .engine
                        .log_events(&st.app)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|e| e.time.is_some_and(|t| t > after)),
                );
            }
            if st.from_router {
                let (engine, a, after) = (st.ctx.engine.clone(), st.app.clone(), st.requests_after);
                let requests = blocking(move || engine.router_events(&a))
                    .await
                    .ok()?
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                lines.extend(
                    requests
                        .into_iter()
                        .filter(|e| e.time.is_some_and(|t| t > after)),
                );
            }
            lines.retain(|l| st.filter.wants_time(l.time));
            lines.sort_by_key(|l| l.time.unwrap_or(i64::MIN));
            let newest = |source: &str| {
                lines
                    .iter()
                    .filter(|l| l.source == source)
                    .filter_map(|l| l.time)
                    .max()
            };
            if let Some(t) = newest(engine::logs::BERTH_SOURCE) {
                st.events_after = st.events_after.max(t);
            }
            if let Some(t) = newest(engine::logs::ROUTER_SOURCE) {
                st.requests_after = st.requests_after.max(t);
            }
            if !lines.is_empty() {
                let data: Vec<String> = lines.iter().map(LogLine::render).collect();
                let ev = Event::default().event("log").data(data.join("\n"));
                return Some((Ok(ev), st));
            }
            tokio::time::sleep(POLL).await;
        }
    });
    Ok(followed(stream, slot))
}

/// What following an app's logs carries from one poll to the next.
struct Followed {
    follower: Follower,
    /// The tail, sent first.
    first: Option<String>,
    ctx: Ctx,
    app: String,
    filter: LogFilter,
    from_app: bool,
    from_berth: bool,
    from_router: bool,
    /// Deploy events at or before this time were sent (or were before the tail).
    events_after: i64,
    /// The same for router events.
    requests_after: i64,
}
