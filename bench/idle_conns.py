#!/usr/bin/env python3
"""Open N keep-alive connections to HOST:PORT, send one full request on each, read the
response, then hold them all open and idle.

Prints `ready OK FAILED` once every connection has been tried (so a caller can measure the
server's memory now), holds for --hold seconds, then prints `alive K` (connections the server
has not closed) and exits.  Used by bench/run.sh for the "10,000 idle connections" RSS figure.

    python3 bench/idle_conns.py 127.0.0.1 19201 -n 10000 --hold 5
"""
import argparse
import errno
import resource
import select
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (want, hard):
        if target == resource.RLIM_INFINITY or target <= soft:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, max(target, hard)))
            return
        except (ValueError, OSError):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(target, hard), hard))
                return
            except (ValueError, OSError):
                pass


def response_complete(buf):
    """True once `buf` holds a whole HTTP/1.1 response (Content-Length or chunked)."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False
    head = buf[:head_end].lower()
    body = buf[head_end + 4:]
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            return len(body) >= int(value.strip())
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    # No length: a 204/304 or a response delimited by close; the head is enough here.
    return True


def open_batch(host, port, count, timeout):
    """Connect `count` sockets, send the request on each, wait for all responses."""
    socks, failed = [], 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.sendall(REQUEST)
            s.setblocking(False)
            socks.append(s)
        except OSError as e:
            failed += 1
            s.close()
            if e.errno == errno.EMFILE:
                sys.exit("idle_conns: out of file descriptors (raise ulimit -n)")
    pending = {s.fileno(): (s, b"") for s in socks}
    ok = []
    poller = select.poll()
    for fd in pending:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            s, buf = pending[fd]
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                poller.unregister(fd)
                del pending[fd]
                failed += 1
                s.close()
                continue
            buf += chunk
            if not buf.startswith(b"HTTP/1.1 2"):
                if len(buf) >= 12:
                    poller.unregister(fd)
                    del pending[fd]
                    failed += 1
                    s.close()
                    continue
            if response_complete(buf):
                poller.unregister(fd)
                del pending[fd]
                ok.append(s)
            else:
                pending[fd] = (s, buf)
    for s, _ in pending.values():
        failed += 1
        s.close()
    return ok, failed


def still_open(s):
    try:
        data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("-n", "--conns", type=int, default=10000)
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold after `ready`")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args()
    raise_nofile(a.conns + 1000)

    held, failed = [], 0
    while len(held) + failed < a.conns:
        n = min(a.batch, a.conns - len(held) - failed)
        ok, bad = open_batch(a.host, a.port, n, a.timeout)
        held += ok
        failed += bad
    print(f"ready {len(held)} {failed}", flush=True)
    time.sleep(a.hold)
    alive = sum(1 for s in held if still_open(s))
    print(f"alive {alive}", flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
