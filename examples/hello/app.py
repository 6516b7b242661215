"""The quickstart's example app: a web server on Python's standard library only.

berth starts it with PORT set (Procfile: `web: python3 app.py`), checks GET /health before it
sends traffic (berth.toml), and stops it with SIGTERM, which finishes in-flight requests.
"""
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RELEASE = os.environ.get("BERTH_RELEASE", "dev")
GREETING = os.environ.get("GREETING", "Hello from berth")


class Server(ThreadingHTTPServer):
    # The default listen backlog (5) overflows when the proxy opens a burst of connections,
    # and every connection that overflows waits a second for the kernel's retry.
    request_queue_size = 128
    daemon_threads = False  # SIGTERM waits for in-flight requests


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
            ctype = "text/plain"
        elif self.path == "/env":
            body = json.dumps({"release": RELEASE, "dyno": os.environ.get("DYNO")}).encode() + b"\n"
            ctype = "application/json"
        else:
            body = f"{GREETING} ({RELEASE}, {os.environ.get('DYNO', '?')})\n".encode()
            ctype = "text/plain; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main():
    port = int(os.environ.get("PORT", "5000"))
    server = Server(("127.0.0.1", port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"hello {RELEASE} listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
