"""A real HTTP server on 127.0.0.1 that behaves like Rasa 3.6 for the calls the sync makes.

- `GET /status`: 200 `{model_id, model_file, num_active_training_jobs}`, or 409 with no model.
- `PUT /model`: loads the file named in the body (its metadata.json's model_id, as Rasa does,
  or `models[path]`) and answers 204. While "loading" (`load_s`) it answers NOTHING else, like
  Rasa's event loop blocked in `agent.load_model`.
- `GET /`: Rasa's hello text.
- `GET /version` (with `version`): {version, minimum_compatible_version}; 404 without; a
  `version` of ("raw", status, reason, body) answers that.
- `POST /model/parse`: 200 with an intent while a model is loaded, or `parse_status` with
  `parse_body` (default: Rasa's error message).
- `refuse_load` (a status): every PUT answers it and keeps the old model, like a Rasa that
  cannot load the model.
Scripts make it misbehave: `script` answers the next PUTs, `status_script` the next GET
/status; each entry is a status, ("hang", seconds), or ("raw", status, reason, body).
Every request is recorded.
"""

from __future__ import annotations

import json
import tarfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def model_id_in(path: str) -> str | None:
    """metadata.json's model_id in the archive at `path`, as Rasa reads it; None if unreadable."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            member = archive.extractfile("metadata.json")
            return json.loads(member.read())["model_id"]
    except (OSError, KeyError, ValueError, tarfile.TarError, TypeError):
        return None


class RasaStub:
    def __init__(self, script: list | None = None, model_id: str | None = None,
                 models: dict | None = None, load_s: float = 0.0, training_jobs: int = 0,
                 status_script: list | None = None, version: str | None = None,
                 minimum_version: str = "3.6.21", refuse_load: int | None = None,
                 parse_status: int | None = None, parse_body: bytes | None = None):
        self.script = list(script or [])
        self.status_script = list(status_script or [])
        self.model_id = model_id
        self.model_file = "stub.tar.gz" if model_id else None
        self.models = dict(models or {})
        self.load_s = load_s
        self.training_jobs = training_jobs
        self.version = version
        self.minimum_version = minimum_version
        self.refuse_load = refuse_load
        self.parse_status = parse_status
        self.parse_body = parse_body
        self.requests: list[dict] = []
        self.loads: list[tuple[float, float]] = []  # (start, end) of each load, monotonic
        self.lock = threading.Lock()
        self.event_loop = threading.Lock()  # held while loading: nothing else is answered
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def _record(self, body=None) -> dict:
                parts = urllib.parse.urlsplit(self.path)
                entry = {"method": self.command, "path": parts.path, "raw_path": self.path,
                         "query": urllib.parse.parse_qs(parts.query), "body": body,
                         "at": time.monotonic(), "headers": dict(self.headers),
                         "content_type": self.headers.get("Content-Type")}
                with stub.lock:
                    stub.requests.append(entry)
                return entry

            def _answer(self, status: int, body: bytes = b"", reason: str | None = None,
                        content_type: str = "application/json") -> None:
                self.send_response(status, reason)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _scripted(self, entry) -> bool:
                """Play a scripted answer if there is one; True when it answered."""
                if isinstance(entry, tuple) and entry[0] == "hang":
                    time.sleep(entry[1])
                    return False
                if isinstance(entry, tuple) and entry[0] == "raw":
                    _, status, reason, body = entry
                    self._answer(status, body if isinstance(body, bytes) else body.encode(),
                                 reason.replace("{path}", self.path),
                                 "text/plain")
                    return True
                if isinstance(entry, tuple) and entry[0] == "echo":
                    # A server that echoes the request line in its reason and its body.
                    self._answer(entry[1], f"Denied {self.path}".encode(),
                                 f"Denied {self.path}", "text/plain")
                    return True
                if isinstance(entry, int):
                    self._answer(entry, b"")
                    return True
                return False

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._record()
                with stub.event_loop:
                    pass  # blocked while a model loads, like Rasa
                if self.path.split("?")[0] == "/status":
                    with stub.lock:
                        entry = stub.status_script.pop(0) if stub.status_script else None
                    if entry is not None and self._scripted(entry):
                        return
                    with stub.lock:
                        model_id, jobs = stub.model_id, stub.training_jobs
                        model_file = stub.model_file
                    if model_id is None:
                        return self._answer(409, json.dumps(
                            {"message": "No agent loaded. To continue processing, a model of "
                                        "a trained agent needs to be loaded."}).encode())
                    return self._answer(200, json.dumps(
                        {"model_id": model_id, "model_file": model_file,
                         "num_active_training_jobs": jobs}).encode())
                if self.path.split("?")[0] == "/version":
                    if isinstance(stub.version, tuple) and self._scripted(stub.version):
                        return
                    if stub.version is None:
                        return self._answer(404, b"")
                    return self._answer(200, json.dumps(
                        {"version": stub.version,
                         "minimum_compatible_version": stub.minimum_version}).encode())
                self._answer(200, b"Hello from Rasa: 3.6.21", content_type="text/plain")

            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"null")
                self._record(body)
                with stub.event_loop:
                    pass
                if stub.parse_status is not None:
                    return self._answer(stub.parse_status,
                                        stub.parse_body or b'{"message": "parse failed"}')
                if stub.model_id is None:
                    return self._answer(409, b'{"message": "No agent loaded."}')
                self._answer(200, json.dumps({"text": (body or {}).get("text"),
                                              "intent": {"name": "greet"}}).encode())

            def do_PUT(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                body = json.loads(raw or b"null")
                self._record(body)
                with stub.lock:
                    entry = stub.script.pop(0) if stub.script else None
                if entry is not None and self._scripted(entry):
                    return
                path = (body or {}).get("model_file", "")
                if stub.refuse_load is not None:
                    with stub.event_loop:
                        time.sleep(stub.load_s)
                    return self._answer(stub.refuse_load, json.dumps(
                        {"message": f"Agent with name '{path}' could not be loaded."}).encode())
                with stub.event_loop:
                    started = time.monotonic()
                    time.sleep(stub.load_s)
                    loaded = stub.models.get(path) or model_id_in(path)
                    if loaded is None:
                        return self._answer(400, json.dumps(
                            {"message": f"Agent with path '{path}' could not be loaded."}
                        ).encode())
                    with stub.lock:
                        stub.model_id, stub.model_file = loaded, path.rsplit("/", 1)[-1]
                        stub.loads.append((started, time.monotonic()))
                self._answer(204)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def calls(self, method: str = "PUT") -> list[dict]:
        """The recorded requests with this method (PUT /model by default)."""
        with self.lock:
            return [r for r in self.requests if r["method"] == method]

    def status_checks(self) -> int:
        return len([r for r in self.calls("GET") if r["path"] == "/status"])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
