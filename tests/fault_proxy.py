"""A small fault-injecting HTTP proxy for the streaming tests: it forwards GETs to a real server
(nginx) and, per path, answers the first requests with a fault instead.

Faults, consumed one per request in order (later requests are forwarded intact):

* ``"drop"`` - the upstream status and headers (full Content-Length), half the body, then the
  connection is closed: a transfer cut mid-shard.
* an HTTP status (``404``, ``500``) - that status with no body.

``forever=True`` repeats a path's last fault for every request. When the upstream cannot be
reached (nginx stopped), the proxy closes the client's connection without an answer, as a
server that went away does.
"""
from __future__ import annotations

import collections
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str, faults: dict[str, list], forever: set[str] = frozenset()):
        self.upstream, self.forever = upstream.rstrip("/"), forever
        self.faults = {k: list(v) for k, v in faults.items()}
        self.requests: collections.Counter = collections.Counter()  # path -> requests seen
        self.injected: collections.Counter = collections.Counter()  # path -> faults answered
        self.unreachable = 0  # requests that found the upstream down
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_fault(self, path: str):
        with self.lock:
            self.requests[path] += 1
            queue = self.faults.get(path, [])
            if not queue:
                return None
            fault = queue[0] if path in self.forever and len(queue) == 1 else queue.pop(0)
            self.injected[path] += 1
            return fault

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        fault = self.next_fault(h.path)
        if isinstance(fault, int):
            h.send_response(fault)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        try:
            with urllib.request.urlopen(self.upstream + h.path, timeout=30) as r:
                body, status, ctype = r.read(), r.status, r.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as e:
            body, status, ctype = b"", e.code, "text/plain"
        except OSError:  # upstream gone: drop the client's connection unanswered
            with self.lock:
                self.unreachable += 1
            h.close_connection = True
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2] if fault == "drop" else body)
        h.wfile.flush()
        if fault == "drop":
            h.close_connection = True
