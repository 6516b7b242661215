#!/usr/bin/env python3
"""A raw HTTP/2 client for berth's battery tests (H2-H5).

Frames are built by hand with `struct` and header blocks are HPACK literals written by hand, so
that malformed input (uppercase names, CR/LF/NUL in values, bad pseudo-headers, content-length
mismatches, floods) reaches the server exactly as written; only the server's header blocks are
decoded with the `hpack` package (Debian: python3-hpack, pulled in by python3-h2).

Usage: h2raw.py HOST PORT SNI CAFILE MODE [ARG]
  MODE requests            read a JSON list of cases from stdin, one connection per case, and print
                           one JSON result per line
  MODE rapid_reset N       N HEADERS+RST_STREAM pairs on one connection
  MODE continuation BYTES  HEADERS without END_HEADERS, then CONTINUATION frames until the server
                           closes the connection or BYTES have been sent
A case is {"name", "headers": [[name, value], ...], "data": [payload, ...], "sni"?}; names, values and
payloads are strings whose code points 0-255 are sent as single bytes. The last DATA frame carries
END_STREAM; with no data, HEADERS does.
"""

import json
import select
import socket
import ssl
import struct
import sys
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
CANCEL = 0x8


class Closed(Exception):
    pass


def frame(ftype, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value):
    """Literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    n, v = name.encode("latin-1"), value.encode("latin-1")
    return b"\x00" + hpack_int(len(n), 7) + n + hpack_int(len(v), 7) + v


def block(headers):
    return b"".join(literal(n, v) for n, v in headers)


class Conn:
    def __init__(self, host, port, sni, cafile):
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((host, port), timeout=5)
        self.sock = ctx.wrap_socket(raw, server_hostname=sni)
        if self.sock.selected_alpn_protocol() != "h2":
            raise SystemExit("server did not negotiate h2: %r" % self.sock.selected_alpn_protocol())
        self.buf = b""
        self.decoder = hpack.Decoder()
        self.goaway = None
        self.closed = False
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.closed = True
            raise Closed()

    def _fill(self, timeout):
        """Read more bytes within `timeout` seconds; False on timeout, Closed on EOF or error."""
        if not self.sock.pending():
            r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
            if not r:
                return False
        try:
            self.sock.settimeout(max(timeout, 0.001))
            chunk = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except (OSError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.closed = True
            raise Closed()
        self.buf += chunk
        return True

    def read_frame(self, timeout):
        """The next frame as (type, flags, sid, payload), or None after `timeout` seconds.
        SETTINGS and PING are acknowledged here; GOAWAY is remembered (and returned)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            if not self._fill(deadline - time.monotonic()):
                return None
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags = self.buf[3], self.buf[4]
        sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if ftype == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            self.goaway = struct.unpack(">I", payload[4:8])[0]
        return ftype, flags, sid, payload

    def decode(self, flags, payload):
        if flags & 0x8:  # PADDED
            pad = payload[0]
            payload = payload[1:len(payload) - pad]
        if flags & 0x20:  # PRIORITY
            payload = payload[5:]
        return self.decoder.decode(payload, raw=True)


def run_case(args, case):
    out = {"name": case["name"], "status": None, "body": "", "rst": None, "goaway": None,
           "closed": False, "end_stream": False, "timeout": False}
    host, port, sni, cafile = args
    c = Conn(host, port, case.get("sni", sni), cafile)
    sid = 1
    data = [d.encode("latin-1") for d in case.get("data", [])]
    try:
        flags = END_HEADERS | (0 if data else END_STREAM)
        c.send(frame(HEADERS, flags, sid, block(case["headers"])))
        for i, d in enumerate(data):
            c.send(frame(DATA, END_STREAM if i == len(data) - 1 else 0, sid, d))
        deadline = time.monotonic() + 5
        body = b""
        while True:
            f = c.read_frame(deadline - time.monotonic())
            if f is None:
                out["timeout"] = True
                break
            ftype, flags, fsid, payload = f
            if ftype == GOAWAY:
                break
            if fsid != sid:
                continue
            if ftype == HEADERS:
                for name, value in c.decode(flags, payload):
                    if name == b":status":
                        out["status"] = int(value)
            elif ftype == DATA:
                body += payload
                if payload:
                    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", len(payload)))
                           + frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", len(payload))))
            elif ftype == RST_STREAM:
                out["rst"] = struct.unpack(">I", payload[:4])[0]
                break
            if ftype in (HEADERS, DATA) and flags & END_STREAM:
                out["end_stream"] = True
                break
        out["body"] = body.decode("latin-1")
    except Closed:
        pass
    out["goaway"], out["closed"] = c.goaway, c.closed
    c.sock.close()
    return out


def drain(c, seconds):
    """Read frames until GOAWAY, close, or `seconds` without one."""
    deadline = time.monotonic() + seconds
    try:
        while c.goaway is None and time.monotonic() < deadline:
            c.read_frame(deadline - time.monotonic())
    except Closed:
        pass


def poll(c):
    """Handle whatever the server has sent so far, without waiting."""
    try:
        while c.goaway is None and (c.sock.pending() or select.select([c.sock], [], [], 0)[0]):
            if c.read_frame(0.05) is None:
                break
    except Closed:
        pass


def rapid_reset(args, n):
    c = Conn(*args)
    head = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", args[2])]
    hb = block(head)
    sent, start = 0, time.monotonic()
    batch = 200
    try:
        while sent < n and c.goaway is None:
            k = min(batch, n - sent)
            buf = b"".join(
                frame(HEADERS, END_HEADERS, 2 * i + 1, hb)
                + frame(RST_STREAM, 0, 2 * i + 1, struct.pack(">I", CANCEL))
                for i in range(sent, sent + k))
            c.send(buf)
            sent += k
            poll(c)
    except Closed:
        pass
    sent_secs = time.monotonic() - start
    if not c.closed and c.goaway is None:
        drain(c, 5)
    return {"sent": sent, "goaway": c.goaway, "closed": c.closed,
            "sent_secs": round(sent_secs, 3), "secs": round(time.monotonic() - start, 3)}


def continuation(args, limit):
    c = Conn(*args)
    head = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", args[2])]
    entry = literal("x-flood", "a" * 118)  # 128 bytes: 128 entries fill a 16 KiB frame
    payload = entry * (16384 // len(entry))
    sent, frames = 0, 0
    try:
        c.send(frame(HEADERS, 0, 1, block(head)))
        while sent < limit and c.goaway is None:
            c.send(frame(CONTINUATION, 0, 1, payload))
            sent += len(payload)
            frames += 1
            poll(c)
    except Closed:
        pass
    stopped_by_server = c.closed or c.goaway is not None
    if not stopped_by_server:
        drain(c, 3)
    return {"sent": sent, "frames": frames, "goaway": c.goaway, "closed": c.closed,
            "stopped_before_limit": stopped_by_server}


def main():
    host, port, sni, cafile, mode = sys.argv[1:6]
    args = (host, int(port), sni, cafile)
    if mode == "requests":
        for case in json.load(sys.stdin):
            print(json.dumps(run_case(args, case)), flush=True)
    elif mode == "rapid_reset":
        print(json.dumps(rapid_reset(args, int(sys.argv[6]))), flush=True)
    elif mode == "continuation":
        print(json.dumps(continuation(args, int(sys.argv[6]))), flush=True)
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
