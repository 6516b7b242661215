//! HTTP/1.1 wire format: strict request-head checks on the raw bytes (the reliability battery),
//! response-head parsing, and body framing (Content-Length, chunked, until-close) for streaming
//! bodies through with bounded memory. httparse does the tokenising; this module adds what
//! httparse tolerates but a proxy must not (bare LF, ambiguous framing, duplicate Host, ...).

use bytes::{Buf, BytesMut};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest chunk-size line or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted (trailers are dropped, not forwarded).
const MAX_TRAILERS: usize = 16 * 1024;

/// Like `tokio::time::timeout_at`, but lazy: an operation that completes on its first poll
/// (most writes, and reads whose bytes are already there) reads no clock and arms no timer.
/// `deadline` is computed from `d` the first time it is needed and kept for later calls, so a
/// loop of reads shares one deadline. `None`: timed out.
pub async fn timed<F: std::future::Future>(
    deadline: &mut Option<tokio::time::Instant>,
    d: Duration,
    f: F,
) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(f.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(v) = first {
        return Some(v);
    }
    let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + d);
    tokio::time::timeout_at(at, f).await.ok()
}

/// [`timed`] with a fresh deadline `d` from now.
pub async fn timed_for<F: std::future::Future>(d: Duration, f: F) -> Option<F::Output> {
    timed(&mut None, d, f).await
}

/// Append `n` in decimal (no allocation, unlike `format!`).
pub fn push_dec(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append `n` in lower-case hex (chunk sizes).
pub fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Where the request head ends (index just past the blank line), if it is complete.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    // Heads end with CRLF CRLF; a bare-LF head is rejected later, but must still be found so that
    // it is answered with 400 rather than waiting for more bytes.
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Every LF in the head is preceded by CR (RFC 9112 §2.2: a recipient may accept bare LF; a proxy
/// that does so disagrees with some backends about where headers end).
pub fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Response bodies only: until the upstream closes.
    UntilClose,
}

/// Parse a Content-Length value strictly: 1–19 ASCII digits, nothing else.
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Comma-separated tokens of a header value (Connection, Upgrade), trimmed, empty ones skipped.
pub fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(trim_ows)
        .filter(|t| !t.is_empty())
}

/// Headers a proxy never forwards as they are (RFC 9110 §7.6.1), plus framing headers berth
/// writes itself. Dispatches on length first: this runs for every header of every request.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |h: &[u8]| h.eq_ignore_ascii_case(name);
    match name.len() {
        2 => is(b"te"),
        6 => is(b"expect"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length") || is(b"http2-settings"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        _ => false,
    }
}

/// A body could not be relayed.
#[derive(Debug)]
pub enum BodyError {
    /// The sending side broke framing (bad chunk syntax) or closed early.
    Malformed(&'static str),
    /// The sending side was too slow.
    ReadTimeout,
    ReadIo(io::Error),
    /// The receiving side failed or was too slow.
    Write(io::Error),
    /// More bytes than the route allows.
    TooLarge,
}

/// Streams one body from `src` (with already-buffered bytes in `buf`) to `dst`, re-encoding as
/// chunked when `dst_chunked`. Returns the number of body bytes relayed. Leaves bytes after the
/// body in `buf` (pipelined requests). Memory stays bounded by the buffer size. Whatever `out`
/// holds on entry (a message head) is written first, in the same write as the first body bytes.
pub struct Relay<'a> {
    pub framing: Framing,
    pub dst_chunked: bool,
    pub limit: u64,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub out: &'a mut Vec<u8>,
}

impl Relay<'_> {
    pub async fn run<R, W>(
        self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
    ) -> Result<u64, BodyError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let Relay {
            framing,
            dst_chunked,
            limit,
            read_timeout,
            write_timeout,
            out,
        } = self;
        let mut sent: u64 = 0;
        let result = match framing {
            Framing::None => Ok(()),
            Framing::Length(n) => {
                if n > limit {
                    return Err(BodyError::TooLarge);
                }
                let mut left = n;
                loop {
                    if !buf.is_empty() {
                        let take = left.min(buf.len() as u64) as usize;
                        emit(out, &buf[..take], dst_chunked);
                        buf.advance(take);
                        left -= take as u64;
                        sent += take as u64;
                    }
                    if left == 0 {
                        break Ok(());
                    }
                    flush(dst, out, write_timeout).await?;
                    fill(src, buf, read_timeout, left).await?;
                }
            }
            Framing::UntilClose => loop {
                if !buf.is_empty() {
                    sent += buf.len() as u64;
                    if sent > limit {
                        return Err(BodyError::TooLarge);
                    }
                    emit(out, buf, dst_chunked);
                    buf.clear();
                }
                flush(dst, out, write_timeout).await?;
                match fill(src, buf, read_timeout, u64::MAX).await {
                    Ok(()) => {}
                    Err(BodyError::Malformed(_)) => break Ok(()), // EOF ends the body
                    Err(e) => return Err(e),
                }
            },
            Framing::Chunked => {
                let mut dec = ChunkDecoder::default();
                loop {
                    match dec.step(buf)? {
                        Step::Data(n) => {
                            sent += n as u64;
                            if sent > limit {
                                return Err(BodyError::TooLarge);
                            }
                            emit(out, &buf[..n], dst_chunked);
                            buf.advance(n);
                        }
                        Step::Continue => {}
                        Step::Done => break Ok(()),
                        Step::NeedMore => {
                            if !out.is_empty() {
                                flush(dst, out, write_timeout).await?;
                            }
                            fill(src, buf, read_timeout, u64::MAX).await?;
                        }
                    }
                }
            }
        };
        result?;
        if dst_chunked && framing != Framing::None {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        flush(dst, out, write_timeout).await?;
        Ok(sent)
    }
}

fn emit(out: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        push_hex(out, data.len() as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    dst: &mut W,
    out: &mut Vec<u8>,
    t: Duration,
) -> Result<(), BodyError> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        dst.write_all(out).await?;
        dst.flush().await
    };
    match timed_for(t, write).await {
        Some(Ok(())) => {
            out.clear();
            Ok(())
        }
        Some(Err(e)) => Err(BodyError::Write(e)),
        None => Err(BodyError::Write(io::Error::new(
            io::ErrorKind::TimedOut,
            "write timed out",
        ))),
    }
}

/// Read more bytes into `buf` (at most about `want`, at least one). EOF is `Malformed`.
pub async fn fill<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    t: Duration,
    want: u64,
) -> Result<(), BodyError> {
    let room = want.clamp(8 * 1024, 64 * 1024) as usize;
    buf.reserve(room);
    match timed_for(t, src.read_buf(buf)).await {
        Some(Ok(0)) => Err(BodyError::Malformed(
            "connection closed before the end of the body",
        )),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(BodyError::ReadIo(e)),
        None => Err(BodyError::ReadTimeout),
    }
}

enum Step {
    /// The first n bytes of the buffer are chunk data.
    Data(usize),
    /// Framing bytes were consumed; step again.
    Continue,
    NeedMore,
    Done,
}

#[derive(Default)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// A strict chunked-coding decoder (RFC 9112 §7.1): hex size with no leading whitespace or sign,
/// extensions of visible characters only, CRLF everywhere (no bare LF), data followed by CRLF.
#[derive(Default)]
struct ChunkDecoder {
    state: ChunkState,
}

impl ChunkDecoder {
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BodyError> {
        let bad = |m| Err(BodyError::Malformed(m));
        match self.state {
            ChunkState::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Step::NeedMore);
                };
                let (size, ext) = match line.iter().position(|&b| b == b';') {
                    Some(i) => (&line[..i], &line[i + 1..]),
                    None => (&line[..], &[][..]),
                };
                // BWS before ';' is tolerated by RFC 9112 only as "chunk-ext = *( BWS ; ...)";
                // reject it: nothing legitimate sends it and it is a known smuggling vector.
                if size.is_empty() || size.len() > 15 || !size.iter().all(u8::is_ascii_hexdigit) {
                    return bad("invalid chunk size");
                }
                if ext.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    return bad("invalid chunk extension");
                }
                let n = size
                    .iter()
                    .fold(0u64, |acc, &b| acc * 16 + u64::from(hex_val(b)));
                self.state = if n == 0 {
                    ChunkState::Trailers(0)
                } else {
                    ChunkState::Data(n)
                };
                Ok(Step::Continue)
            }
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = left.min(buf.len() as u64) as usize;
                self.state = if n as u64 == left {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left - n as u64)
                };
                Ok(Step::Data(n))
            }
            ChunkState::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return bad("chunk data not followed by CRLF");
                }
                buf.advance(2);
                self.state = ChunkState::Size;
                Ok(Step::Continue)
            }
            ChunkState::Trailers(seen) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(Step::NeedMore);
                };
                if line.is_empty() {
                    self.state = ChunkState::Done;
                    return Ok(Step::Done);
                }
                let seen = seen + line.len();
                let colon = line.iter().position(|&b| b == b':');
                let name_ok =
                    colon.is_some_and(|c| c > 0 && line[..c].iter().all(|&b| is_tchar(b)));
                if seen > MAX_TRAILERS || !name_ok || line.iter().any(|&b| b < 0x20 && b != b'\t') {
                    return bad("invalid trailer");
                }
                self.state = ChunkState::Trailers(seen);
                Ok(Step::Continue)
            }
            ChunkState::Done => Ok(Step::Done),
        }
    }
}

/// Take one CRLF-terminated line off the buffer, without its CRLF. A bare LF is an error.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, BodyError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            if nl == 0 || buf[nl - 1] != b'\r' {
                return Err(BodyError::Malformed("bare LF in chunked framing"));
            }
            let mut line = buf.split_to(nl + 1);
            line.truncate(nl - 1);
            if line.contains(&b'\r') {
                return Err(BodyError::Malformed("CR inside a chunk line"));
            }
            Ok(Some(line))
        }
        None if buf.len() > MAX_CHUNK_LINE => Err(BodyError::Malformed("chunk line too long")),
        None => Ok(None),
    }
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// RFC 9110 token characters.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The parts of an upstream response head that framing and forwarding need.
pub struct ResponseHead {
    pub status: u16,
    pub len: usize,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

pub enum ResponseError {
    Incomplete,
    Invalid(&'static str),
}

/// Parse an upstream response head and decide its body framing (RFC 9112 §6.3). Responses that
/// frame ambiguously (TE and CL together, differing CLs, a TE other than chunked) are refused,
/// so that a confused backend cannot desynchronise the client connection (battery case S16).
/// `headers` is scratch space; on success it holds the parsed headers.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    method_is_head: bool,
) -> Result<(ResponseHead, &'h [httparse::Header<'b>]), ResponseError> {
    let mut res = httparse::Response::new(headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Err(ResponseError::Incomplete),
        Err(_) => return Err(ResponseError::Invalid("malformed response head")),
    };
    let status = res.code.unwrap_or(0);
    let version = res.version.unwrap_or(0);
    let mut cl: Option<u64> = None;
    let mut te = false;
    let mut close = version == 0;
    for h in res.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = parse_content_length(trim_ows(h.value))
                .ok_or(ResponseError::Invalid("invalid Content-Length"))?;
            if cl.is_some_and(|c| c != v) {
                return Err(ResponseError::Invalid("conflicting Content-Length"));
            }
            cl = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if te || !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(ResponseError::Invalid("unsupported Transfer-Encoding"));
            }
            te = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                    close = false;
                }
            }
        }
    }
    if te && cl.is_some() {
        return Err(ResponseError::Invalid(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    let framing = if method_is_head || status < 200 || status == 204 || status == 304 {
        Framing::None
    } else if te {
        Framing::Chunked
    } else if let Some(n) = cl {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let keep_alive = !close && framing != Framing::UntilClose;
    Ok((
        ResponseHead {
            status,
            len,
            framing,
            keep_alive,
        },
        res.headers,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn relay(
        framing: Framing,
        input: &[u8],
        chunked_out: bool,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut buf = BytesMut::from(input);
        let mut src = tokio::io::empty();
        let mut dst = Vec::new();
        let mut out = Vec::new();
        let r = Relay {
            framing,
            dst_chunked: chunked_out,
            limit: 1 << 20,
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            out: &mut out,
        };
        match r.run(&mut src, &mut buf, &mut dst).await {
            Ok(_) => Ok((dst, buf.to_vec())),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    #[tokio::test]
    async fn chunked_decoding_is_strict() {
        let ok: &[(&[u8], &[u8])] = &[
            (b"5\r\nhello\r\n0\r\n\r\nNEXT", b"hello"),
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello"),
            (b"A\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n", b"0123456789"),
            (b"0\r\n\r\n", b""),
        ];
        for (input, want) in ok {
            let (body, _) = relay(Framing::Chunked, input, false).await.unwrap();
            assert_eq!(&body[..], *want, "{:?}", String::from_utf8_lossy(input));
        }
        let (_, rest) = relay(Framing::Chunked, ok[0].0, false).await.unwrap();
        assert_eq!(rest, b"NEXT");
        let bad: &[&[u8]] = &[
            b"Z\r\nhello\r\n0\r\n\r\n",
            b"1xyz\r\nh\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloXX\r\n0\r\n\r\n",
            b"5;a\0b\r\nhello\r\n0\r\n\r\n",
            b"5;a\rb\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
            b"ffffffffffffffffff\r\n",
        ];
        for input in bad {
            assert!(
                relay(Framing::Chunked, input, false).await.is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[tokio::test]
    async fn relays_rechunk_and_length() {
        let (body, rest) = relay(Framing::Length(3), b"abcdef", true).await.unwrap();
        assert_eq!(body, b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(rest, b"def");
        assert!(
            relay(Framing::Length(10), b"abc", false).await.is_err(),
            "EOF before end"
        );
    }

    #[test]
    fn numbers() {
        for n in [0u64, 7, 10, 255, 4096, u64::MAX] {
            let (mut d, mut h) = (Vec::new(), Vec::new());
            push_dec(&mut d, n);
            push_hex(&mut h, n);
            assert_eq!(d, n.to_string().as_bytes());
            assert_eq!(h, format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn head_end_and_bare_lf() {
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"),
            Some(24)
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\nA: b\n\nrest"), Some(21));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert!(has_bare_lf(b"GET / HTTP/1.1\nA: b\r\n\r\n"));
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
    }

    #[test]
    fn response_framing() {
        let parse = |raw: &[u8]| {
            let mut h = [httparse::EMPTY_HEADER; 16];
            match parse_response(raw, &mut h, false) {
                Ok((head, _)) => Ok((head.status, head.framing, head.keep_alive)),
                Err(ResponseError::Incomplete) => Err("incomplete"),
                Err(ResponseError::Invalid(m)) => Err(m),
            }
        };
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            Ok((200, Framing::Length(5), true))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok((200, Framing::Chunked, true))
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n"),
            Ok((200, Framing::UntilClose, false))
        );
        assert_eq!(
            parse(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Ok((204, Framing::None, true))
        );
        assert_eq!(
            parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n"),
            Ok((200, Framing::Length(1), false))
        );
        assert!(parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .is_err());
        assert!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err()
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
        assert!(parse(b"HTTX/1.1 200 OK\r\n\r\n").is_err());
        assert!(parse(b"HTTP/1.1 2000 OK\r\n\r\n").is_err());
    }
}
