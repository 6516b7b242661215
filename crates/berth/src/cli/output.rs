//! How the client commands print: JSON as the server sent it, tables of JSON values, short
//! times, versions and sizes.

use serde_json::Value;
use std::borrow::Cow;

pub(super) fn print_json(v: &Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    println!("{}", escape_c1(&text));
}

/// JSON text with DEL and the C1 controls (U+0080–U+009F) written as `\u00XX` escapes:
/// serde_json escapes only C0, and a C1 CSI can drive a terminal. They can only be inside
/// strings, where the escape means the same character.
fn escape_c1(json: &str) -> Cow<'_, str> {
    if !json.chars().any(|c| ('\u{7f}'..='\u{9f}').contains(&c)) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A JSON value as a table cell (strings through [`for_terminal`]).
pub(super) fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => for_terminal(s).into_owned(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(o) if o.is_empty() => "-".into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{}={}", for_terminal(k), cell(v)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// An RFC 3339 time shortened for a table.
pub(super) fn when(v: &Value) -> String {
    match v.as_str() {
        Some(s) if s.len() >= 19 && s.is_char_boundary(19) => {
            for_terminal(&s[..19].replacen('T', " ", 1)).into_owned()
        }
        _ => cell(v),
    }
}

pub(super) fn version(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("v{n}"),
        _ => cell(v),
    }
}

/// Aligned columns, two spaces apart; the last one is not padded. Every cell goes through
/// [`for_terminal`].
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| for_terminal(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
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
    for r in &rows {
        line(r.iter().map(|c| c.as_ref()).collect());
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

/// `s` as it may reach the operator's terminal. Text from apps, builds and the server's stored
/// data (log lines, commit messages) must not drive the terminal: this drops every control
/// character but `\n` and `\t` (C0, DEL, C1: `\r` overwrites, BEL), and whole escape sequences —
/// CSI (`ESC [` … final byte; clear screen, cursor movement), OSC, DCS, SOS, PM and APC strings
/// up to their terminator (`BEL` or `ESC \`; a window title, an OSC 52 clipboard write) or the
/// end of `s`, the same introduced by their C1 codes, and the other `ESC` sequences (`ESC (B`,
/// `ESC #8`) — keeping only plain SGR colour (`ESC [` digits and `;` `m`), which is harmless.
/// Borrowed when there is nothing to drop.
pub(crate) fn for_terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let introducer = match c {
            '\n' | '\t' => {
                out.push(c);
                continue;
            }
            '\x1b' => match chars.peek() {
                Some(&(_, '[')) => {
                    chars.next();
                    Some(Seq::Csi)
                }
                Some(&(_, ']' | 'P' | 'X' | '^' | '_')) => {
                    chars.next();
                    Some(Seq::Str)
                }
                // nF and Fp/Fe/Fs: intermediates (0x20–0x2F), then one final (0x30–0x7E).
                Some(&(_, ' '..='~')) => {
                    while chars.next_if(|&(_, c)| (' '..='/').contains(&c)).is_some() {}
                    chars.next_if(|&(_, c)| ('0'..='~').contains(&c));
                    None
                }
                // A lone ESC, or one before a control or non-ASCII character: only the ESC goes.
                _ => None,
            },
            '\u{9b}' => Some(Seq::Csi),
            '\u{90}' | '\u{98}' | '\u{9d}' | '\u{9e}' | '\u{9f}' => Some(Seq::Str),
            c if c.is_control() => None,
            c => {
                out.push(c);
                continue;
            }
        };
        match introducer {
            Some(Seq::Csi) => {
                // Parameters (0x30–0x3F), intermediates (0x20–0x2F), then the final byte
                // (0x40–0x7E). Anything else ends the sequence there, unfinished.
                let mut sgr = c == '\x1b';
                while let Some((_, p)) = chars.next_if(|&(_, p)| (' '..='?').contains(&p)) {
                    sgr &= p.is_ascii_digit() || p == ';';
                }
                if let Some((end, f)) = chars.next_if(|&(_, f)| ('@'..='~').contains(&f)) {
                    if sgr && f == 'm' {
                        out.push_str(&s[start..=end]);
                    }
                }
            }
            Some(Seq::Str) => {
                // Up to BEL, ST (`ESC \` or U+009C) or the end of `s`.
                while let Some((_, x)) = chars.next() {
                    if x == '\x07' || x == '\u{9c}' {
                        break;
                    }
                    if x == '\x1b' && chars.next_if(|&(_, c)| c == '\\').is_some() {
                        break;
                    }
                }
            }
            None => {}
        }
    }
    Cow::Owned(out)
}

enum Seq {
    /// A control sequence: parameters, intermediates, a final byte.
    Csi,
    /// A control string (OSC, DCS, SOS, PM, APC): anything up to its terminator.
    Str,
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
    #[test]
    fn for_terminal_drops_control_and_keeps_colour() {
        let cases: &[(&str, &str)] = &[
            // Plain text, newlines, tabs, Unicode: as they are.
            ("plain text", "plain text"),
            ("tab\tand\nnewline\n", "tab\tand\nnewline\n"),
            ("ünïcødé ✓", "ünïcødé ✓"),
            // SGR colour (digits and `;`, then `m`) stays.
            ("\x1b[31mred\x1b[0m", "\x1b[31mred\x1b[0m"),
            ("\x1b[1;32mok\x1b[m", "\x1b[1;32mok\x1b[m"),
            // Other CSI: clear screen, cursor movement, private modes, colon colours, unfinished.
            ("\x1b[2Jclear", "clear"),
            ("\x1b[10;20Hmove\x1b[3A", "move"),
            ("\x1b[?25lhidden cursor", "hidden cursor"),
            ("\x1b[38:5:1mcolon", "colon"),
            ("\x1b[1 qcursor style", "cursor style"),
            ("cut \x1b[31", "cut "),
            ("\x1b[2\nnext", "\nnext"),
            // OSC (title, clipboard) to BEL, to ESC \\, or to the end.
            ("a\x1b]0;title\x07b", "ab"),
            ("a\x1b]52;c;ZXZpbA==\x1b\\b", "ab"),
            ("a\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\", "alink"),
            ("a\x1b]0;never ends", "a"),
            // DCS, APC strings.
            ("\x1bP1$qm\x1b\\dcs", "dcs"),
            ("\x1b_apc\x07after", "after"),
            // Other ESC sequences: charset, DECALN, reset, save cursor; a lone ESC.
            (
                "\x1b(Bcharset \x1b#8fill \x1bcreset \x1b7save",
                "charset fill reset save",
            ),
            ("lone\x1b", "lone"),
            ("\x1bé", "é"),
            // C0: CR, BEL, backspace, DEL.
            ("over\rwrite", "overwrite"),
            ("line\r\n", "line\n"),
            ("bell\x07 \x08back\x7fdel\x00", "bell backdel"),
            // C1: CSI and OSC with their sequences, the rest alone.
            ("c1 \u{9b}2J csi", "c1  csi"),
            ("\u{9d}0;title\u{9c}after", "after"),
            ("\u{85}nel \u{9c}st", "nel st"),
        ];
        for (input, want) in cases {
            let got = for_terminal(input);
            assert_eq!(got, *want, "for_terminal({input:?})");
            assert_eq!(for_terminal(&got), got, "not idempotent on {input:?}");
        }
        assert!(matches!(for_terminal("clean\ttext\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_and_cells_carry_no_control() {
        assert_eq!(
            escape_c1("{\"a\": \"x\u{9b}2J\u{7f}\"}"),
            "{\"a\": \"x\\u009b2J\\u007f\"}"
        );
        let v: Value = serde_json::from_str(&escape_c1("\"\u{9b}\"")).unwrap();
        assert_eq!(v, json!("\u{9b}"));
        assert_eq!(cell(&json!("fix\x1b]0;t\x07 it\r")), "fix it");
        assert_eq!(
            table(&["MESSAGE", "X"], &[vec!["\x1b[2Jab".into(), "x".into()]]),
            "MESSAGE  X\nab       x\n"
        );
    }
}
