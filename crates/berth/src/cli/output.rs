//! How the client commands print: JSON as the server sent it, tables of JSON values, short
//! times, versions and sizes.

use serde_json::Value;

pub(super) fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{text}");
}

/// A JSON value as a table cell.
pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.is_empty() => "-".into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An RFC 3339 time shortened for a table.
pub(super) fn when(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() >= 19 && s.is_char_boundary(19) => s[..19].replacen('T', " ", 1),
        _ => cell(v),
    }
}

pub(super) fn version(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("v{n}"),
        _ => cell(v),
    }
}

/// Aligned columns, two spaces apart; the last one is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i < last {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(c.chars().count());
                l.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

pub(super) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(headers, rows));
}

pub(super) fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Prints the list `v` a command fetched: as JSON with --json; else `empty` on stderr when the
/// list is empty (if there is such a message); else a table with the row `row` makes of each item.
pub(super) fn print_list(
    json: bool,
    v: &Value,
    empty: Option<&str>,
    headers: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) {
    if json {
        print_json(v);
    } else if let Some(msg) = empty.filter(|_| list(v).is_empty()) {
        eprintln!("{msg}");
    } else {
        let rows: Vec<Vec<String>> = list(v).iter().map(row).collect();
        print_table(headers, &rows);
    }
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub(super) fn print_lines(v: &Value) {
    for d in list(v) {
        println!("{}", cell(d));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let t = table(
            &["NAME", "STATUS", "URL"],
            &[
                vec!["a".into(), "running".into(), "http://a".into()],
                vec!["longname".into(), "idle".into(), "-".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME      STATUS   URL\na         running  http://a\nlongname  idle     -\n"
        );
        assert_eq!(cell(&json!({"web": 2, "worker": 1})), "web=2 worker=1");
        assert_eq!(cell(&json!(["a", "b"])), "a,b");
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(
            when(&json!("2024-05-01T12:34:56.123Z")),
            "2024-05-01 12:34:56"
        );
        assert_eq!(version(&json!(3)), "v3");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
