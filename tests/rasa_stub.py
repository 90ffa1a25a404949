"""A real HTTP server on 127.0.0.1 that answers PUT /model the way Rasa does (204), or as
told: a few 503s first, 401, or a hang. It records every request."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RasaStub:
    def __init__(self, script: list | None = None):
        """`script`: answers for the first calls, each a status or ("hang", seconds);
        after it runs out, 204."""
        self.script = list(script or [])
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                parts = urllib.parse.urlsplit(self.path)
                with stub.lock:
                    answer = stub.script.pop(0) if stub.script else 204
                    stub.requests.append({
                        "path": parts.path, "query": urllib.parse.parse_qs(parts.query),
                        "body": json.loads(body or b"null"), "at": time.monotonic(),
                        "content_type": self.headers.get("Content-Type")})
                if isinstance(answer, tuple):
                    time.sleep(answer[1])
                    answer = 204
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def calls(self) -> list[dict]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
