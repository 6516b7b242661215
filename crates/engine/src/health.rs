//! Deploy-time health checks: a new instance must answer before it gets traffic.

use build::manifest::HealthCheck;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Longest single probe; the next one follows at once.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probe `addr` (as `Host: host`, the app's name, for apps that check it) until it is healthy
/// or `deadline` passes. `alive` reports an instance that crashed or stopped, which fails at
/// once instead of waiting out the deadline.
pub(crate) async fn wait(
    addr: SocketAddr,
    host: &str,
    check: &HealthCheck,
    deadline: Instant,
    mut alive: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    // Every 10 ms for the first half second (a loopback probe costs the app one request; most
    // apps come up in that time, and a doubling pause would add up to its own length to a
    // deploy), then doubling up to 200 ms.
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    let mut last = String::from("no answer yet");
    loop {
        // `Ok(false)`: the runtime's own verdict is not in yet (a HEALTHCHECK still starting).
        let ready = alive()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("did not pass {} in time: {last}", what(check)));
        }
        match tokio::time::timeout(left.min(PROBE_TIMEOUT), probe(addr, host, check)).await {
            Ok(Ok(())) if ready => return Ok(()),
            Ok(Ok(())) => {
                last = "the image's HEALTHCHECK has not passed yet (hint: Docker runs it first \
                        after its --interval, 30s by default: set a shorter --interval, or a \
                        longer [health] timeout in berth.toml)"
                    .into()
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = "the probe timed out".into(),
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        if started.elapsed() >= Duration::from_millis(500) {
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

fn what(check: &HealthCheck) -> String {
    match check {
        HealthCheck::Http { path } => format!("GET {path} → 2xx/3xx"),
        HealthCheck::Tcp => "a TCP connect".into(),
    }
}

/// One probe: connect (TCP check), or the proxy's own HTTP health probe (2xx/3xx).
async fn probe(addr: SocketAddr, host: &str, check: &HealthCheck) -> Result<(), String> {
    match check {
        HealthCheck::Http { path } => proxy::upstream::probe(addr, host, path).await,
        HealthCheck::Tcp => TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An HTTP server that answers `status` to every request and records each request head.
    async fn recorder(status: u16) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h2 = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                h2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let resp = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (addr, heads)
    }

    #[tokio::test]
    async fn deploy_probe_sends_the_app_host() {
        let (addr, heads) = recorder(200).await;
        let check = HealthCheck::Http {
            path: "/health".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        wait(addr, "hello.example.test", &check, deadline, || Ok(true))
            .await
            .unwrap();
        let head = heads.lock().unwrap()[0].clone();
        assert!(head.starts_with("GET /health HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nHost: hello.example.test\r\n"), "{head}");

        // `wait` keeps its old signature and sends `localhost`.
        wait(addr, "localhost", &check, deadline, || Ok(true))
            .await
            .unwrap();
        let head = heads.lock().unwrap()[1].clone();
        assert!(head.contains("\r\nHost: localhost\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_failing_check_names_the_last_answer() {
        let (addr, _) = recorder(400).await;
        let check = HealthCheck::Http { path: "/".into() };
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = wait(addr, "a.test", &check, deadline, || Ok(true))
            .await
            .unwrap_err();
        assert!(err.contains("answered 400"), "{err}");
    }
}
