//! JSON-lines access log. Workers format a line and hand it to a writer thread over a bounded
//! channel, so a slow disk or a blocked stdout never stalls the request path; when the channel is
//! full the line is dropped and counted.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

#[derive(Clone)]
pub struct AccessLog {
    tx: Option<SyncSender<String>>,
    pub dropped: Arc<AtomicU64>,
}

pub struct Entry<'a> {
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a [u8],
    pub status: u16,
    pub bytes: u64,
    pub duration: std::time::Duration,
    pub upstream: Option<std::net::SocketAddr>,
    pub request_id: &'a str,
    pub client: std::net::IpAddr,
    pub proto: &'static str,
}

impl AccessLog {
    /// `"off"`, `"stdout"` or a file path (appended to).
    pub fn open(target: &str) -> std::io::Result<AccessLog> {
        let out: Box<dyn Write + Send> = match target {
            "off" => {
                return Ok(AccessLog {
                    tx: None,
                    dropped: Arc::default(),
                })
            }
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(8192);
        std::thread::Builder::new()
            .name("berth-access-log".into())
            .spawn(move || writer(rx, out))?;
        Ok(AccessLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn log(&self, e: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let time = httpdate_rfc3339(SystemTime::now());
        let upstream = e
            .upstream
            .map(|u| format!("\"{u}\""))
            .unwrap_or_else(|| "null".into());
        let line = format!(
            "{{\"time\":\"{time}\",\"client\":\"{}\",\"proto\":\"{}\",\"host\":{},\"method\":{},\"path\":{},\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"upstream\":{upstream},\"request_id\":{}}}\n",
            e.client,
            e.proto,
            json_str(e.host.as_bytes()),
            json_str(e.method.as_bytes()),
            json_str(e.path),
            e.status,
            e.bytes,
            e.duration.as_secs_f64() * 1000.0,
            json_str(e.request_id.as_bytes()),
        );
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn writer(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(line) = rx.try_recv() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
    }
}

/// A JSON string literal of possibly non-UTF-8 bytes (invalid sequences become U+FFFD).
fn json_str(b: &[u8]) -> String {
    serde_json::to_string(&String::from_utf8_lossy(b)).unwrap_or_else(|_| "\"\"".into())
}

fn httpdate_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    units::rfc3339(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_847_100_123);
        assert_eq!(super::httpdate_rfc3339(t), "2026-11-28T06:25:00.123Z");
        assert_eq!(super::json_str(b"a\"\n\xff"), "\"a\\\"\\n\u{fffd}\"");
    }
}
