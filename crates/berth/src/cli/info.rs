//! `berth certs` and `berth nodes`: the server's certificates and Swarm nodes (admin).

use super::output::{cell, print_list};
use super::{connect, Global};
use crate::client::{Error, EXIT_OK};
use serde_json::Value;

pub(super) fn certs(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/certs")?;
    print_list(
        g.json,
        &v,
        Some("no routed host yet"),
        &["HOST", "SOURCE", "STATUS", "ISSUER", "EXPIRES", "ERROR"],
        |h| {
            let acme = &h["acme"];
            let status = match (acme["status"].as_str(), acme["retry_in"].as_u64()) {
                (Some("failed"), Some(s)) => format!("failed (retry in {})", span(s)),
                (Some(st), _) => st.to_string(),
                (None, _) => "-".to_string(),
            };
            vec![
                cell(&h["host"]),
                cell(&h["source"]),
                status,
                cell(&h["issuer"]),
                expires(&h["not_after"]),
                cell(&acme["error"]),
            ]
        },
    );
    Ok(EXIT_OK)
}

/// `in 89d`, `in 5h`, `expired`, from unix seconds.
fn expires(v: &Value) -> String {
    let Some(at) = v.as_u64() else {
        return cell(v);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match at.checked_sub(now) {
        Some(left) if left > 0 => format!("in {}", span(left)),
        _ => "expired".to_string(),
    }
}

/// A duration in its largest whole unit: `89d`, `5h`, `12m`, `30s`.
fn span(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

pub(super) fn nodes(g: &Global) -> Result<i32, Error> {
    let c = connect(g)?;
    let v = c.get("/api/v1/nodes")?;
    print_list(
        g.json,
        &v,
        Some("the swarm has no nodes"),
        &[
            "ID",
            "HOSTNAME",
            "ROLE",
            "STATE",
            "AVAILABILITY",
            "ADDRESS",
            "TASKS",
        ],
        |n| {
            let role = match n["leader"].as_bool() {
                Some(true) => format!("{} (leader)", cell(&n["role"])),
                _ => cell(&n["role"]),
            };
            vec![
                cell(&n["id"]).chars().take(12).collect(),
                cell(&n["hostname"]),
                role,
                cell(&n["state"]),
                cell(&n["availability"]),
                cell(&n["addr"]),
                cell(&n["tasks"]),
            ]
        },
    );
    Ok(EXIT_OK)
}
