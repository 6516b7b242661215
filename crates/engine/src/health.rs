//! Deploy-time health checks: a new instance must answer before it gets traffic.

use build::manifest::HealthCheck;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Longest single probe; the next one follows at once.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe `addr` until it is healthy or `deadline` passes. `alive` reports an instance that
/// crashed or stopped, which fails at once instead of waiting out the deadline.
pub(crate) async fn wait(
    addr: SocketAddr,
    check: &HealthCheck,
    deadline: Instant,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut pause = Duration::from_millis(10);
    let mut last = String::from("no answer yet");
    loop {
        alive()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("did not pass {} in time: {last}", what(check)));
        }
        match tokio::time::timeout(left.min(PROBE_TIMEOUT), probe(addr, check)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "the probe timed out".into(),
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn what(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { path } => format!("GET {path} → 2xx/3xx"),
        HealthCheck::Tcp => "a TCP connect".into(),
    }
}

/// One probe: connect (TCP check), or the proxy's own HTTP health probe (2xx/3xx).
async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    match check {
        HealthCheck::Http { path } => proxy::upstream::probe(addr, path).await,
        HealthCheck::Tcp => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
    }
}
