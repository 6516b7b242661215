//! Deploy-time health checks: a new instance must answer before it gets traffic.

use build::manifest::HealthCheck;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// One probe: connect (TCP check), or `GET path` and a 2xx/3xx status line (HTTP check).
pub(crate) async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let HealthCheck::Http { path } = check else {
        return Ok(());
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: berth-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| "no HTTP status line".to_string())?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}
