"""`python -m worker model-server`: serve the published model to Rasa's model-server pull.

Rasa (`endpoints.yml`: `models: {url, token, wait_time_between_pulls}`) sends
`GET url?token=...` with `If-None-Match: <fingerprint of its model>` every few seconds and
takes 204/304 as "nothing new", 404 as "no model", and 200 as the archive, whose `ETag`
becomes its fingerprint (rasa/core/agent.py, `_pull_model_and_fingerprint`).

Paths: `/model` (GET, HEAD; token required when MODEL_SERVER_TOKEN is set), `/healthz`
(the server is up), `/readyz` (a whole model is published), `/metrics` (Prometheus).

One thread per connection, blocked in the kernel (accept, recv, sendfile) with timeouts, so
nothing wakes up at idle and a stuck client holds only its own thread. The bytes go from the
page cache to the socket with sendfile: memory does not grow with the model's size.
A small HTTP/1.1 reader of our own instead of http.server: that module pulls in http.client,
email and ssl, about 10 MiB of memory for parsing three headers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from worker.logs import human_size
from worker.published import NotPublished, download_name, open_published
from worker.rolling import FAILED, HELD, NOT_MODIFIED, SEND, SEND_FRESH, RollingGate
from worker.settings import Settings

MODEL_PATH = "/model"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
HEAD_TIMEOUT_S = 10.0  # a client has this long to send its request
SEND_TIMEOUT_S = 60.0  # a download is cut when the client takes nothing for this long
MAX_CONNECTIONS = 256  # beyond this, new connections are closed at once
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}


class BadRequest(Exception):
    def __init__(self, status: int, why: str):
        super().__init__(why)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names

    def if_none_match(self) -> list[str]:
        raw = self.headers.get("if-none-match", "")
        return [part.strip() for part in raw.split(",") if part.strip()]


@dataclass
class Counters:
    """What /metrics reports; plain integers, the exposition library loads on first scrape."""

    downloads: int = 0
    downloads_cut: int = 0
    not_modified: int = 0
    held_back: int = 0
    unauthorized: int = 0
    bytes_sent: int = 0
    clients: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)


def read_request(conn: socket.socket) -> Request | None:
    """The request line and headers (no body: GET and HEAD only). None when the client
    closed without sending anything."""
    data = b""
    deadline = time.monotonic() + HEAD_TIMEOUT_S  # in all: a byte now and then is not enough
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request head not received in time")
        conn.settimeout(left)
        chunk = conn.recv(4096)
        if not chunk:
            if data:
                raise BadRequest(400, "request cut short")
            return None
        data += chunk
    head = data.split(b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n", 1)[0]
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target = parts[0], parts[1]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or name != name.strip():
            raise BadRequest(400, "malformed header line")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    split = urllib.parse.urlsplit(target)
    return Request(method=method, path=split.path,
                   query=urllib.parse.parse_qs(split.query, keep_blank_values=True),
                   headers=headers)


class ModelServer:
    """The listener and its answers. `serve_forever` blocks in accept without a timeout."""

    def __init__(self, settings: Settings, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.latest = settings.latest_model_path
        self.filename = download_name(settings.latest_model_path)
        self.gate = RollingGate(settings.model_server_max_swapping,
                                settings.model_server_swap_timeout_s)
        self.counters = Counters()
        self._token = settings.model_server_token.encode()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._metrics_registry = None
        self._loaded_etag: str | None = None  # the last ETag a replica confirmed it loaded
        family = socket.AF_INET6 if ":" in settings.model_server_bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.model_server_bind, settings.model_server_port or 0))
        self.sock.listen(128)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def serve_forever(self) -> None:
        while True:
            conn, address = self.sock.accept()
            if not self._slots.acquire(blocking=False):
                conn.close()  # full: a replica asks again at its next pull
                continue
            threading.Thread(target=self._serve_connection, args=(conn, address[0]),
                             daemon=True).start()

    def close(self) -> None:
        self.sock.close()

    # -- one connection, one request ------------------------------------------------------

    def _serve_connection(self, conn: socket.socket, address: str) -> None:
        self.counters.add(clients=1)
        try:
            try:
                request = read_request(conn)
            except BadRequest as error:
                self._reply(conn, error.status, body=f"{error}\n")
                return
            if request is None:
                return
            conn.settimeout(SEND_TIMEOUT_S)
            self._answer(conn, address, request)
        except OSError as error:  # reset, timeout: the client is gone
            self.log.debug("connection from %s ended: %s", address, error)
        finally:
            self.counters.add(clients=-1)
            self._slots.release()
            conn.close()

    def _answer(self, conn: socket.socket, address: str, request: Request) -> None:
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            self._reply(conn, 405, {"Allow": "GET, HEAD"}, body="GET or HEAD only\n")
        elif request.path == "/healthz":
            self._reply(conn, 200, body="ok\n", head_only=head_only)
        elif request.path == "/readyz":
            self._readiness(conn, request)
        elif request.path == "/metrics":
            self._metrics(conn, request)
        elif request.path == MODEL_PATH:
            if not self._authorized(request):
                self.counters.add(unauthorized=1)
                self.log.warning("refused %s %s from %s: missing or wrong token (401)",
                                 request.method, request.path, address)
                self._reply(conn, 401, body="token missing or wrong (?token=)\n",
                            head_only=head_only)
                return
            self._model(conn, address, request)
        else:
            self._reply(conn, 404, body=f"not found; the model is at {MODEL_PATH}\n",
                        head_only=head_only)

    def _authorized(self, request: Request) -> bool:
        if not self._token:
            return True
        import hmac  # only with a token set: it loads OpenSSL (~4 MiB)

        given = request.query.get("token", [""])[-1].encode()
        return hmac.compare_digest(given, self._token)

    def _readiness(self, conn: socket.socket, request: Request) -> None:
        try:
            with open_published(self.latest) as published:
                body = f"ready: {published.etag} ({published.size} bytes)\n"
            status = 200
        except NotPublished as why:
            status, body = 503, f"not ready: {why}\n"
        self._reply(conn, status, body=body, head_only=request.method == "HEAD")

    def _model(self, conn: socket.socket, address: str, request: Request) -> None:
        head_only = request.method == "HEAD"
        try:
            published = open_published(self.latest)
        except NotPublished as why:
            self._reply(conn, 404, body=f"no model: {why}\n", head_only=head_only)
            return
        with published:
            # Decided and counted in one step: two replicas never both take the last place.
            decision = self.gate.decide(address, request.if_none_match(), published.etag,
                                        begin=not head_only)
            if decision == NOT_MODIFIED:
                self.counters.add(not_modified=1)
                self._reply(conn, 304, {"ETag": published.etag})
                self._note_loaded(published, address)
                return
            if decision == FAILED:
                self.counters.add(held_back=1)
                self._reply(conn, 304)
                self._note_refused(published, address)
                return
            if decision == HELD:
                self.counters.add(held_back=1)
                self.log.debug("held back %s: %d replica(s) swapping", address,
                               self.gate.max_swapping)
                self._reply(conn, 304)
                return
            headers = {"ETag": published.etag, "filename": self.filename,
                       "Content-Disposition": f'attachment; filename="{self.filename}"',
                       "Content-Type": "application/gzip"}
            if head_only:
                self._reply(conn, 200, headers, length=published.size, head_only=True)
                return
            counted = decision == SEND and self.gate.max_swapping > 0
            complete = False
            started = time.monotonic()
            sent = 0
            try:
                self._reply(conn, 200, headers, length=published.size, head_only=True)
                sent = self._send_file(conn, published)
                complete = sent == published.size
            finally:
                if counted:
                    self.gate.ended(address, complete)
                self.counters.add(bytes_sent=sent)
                took = time.monotonic() - started
                if complete:
                    self.counters.add(downloads=1)
                    first = " (its first model from us)" if decision == SEND_FRESH else ""
                    self.log.info("sent %s %s to %s: %s in %.2f s%s", self.filename,
                                  published.etag, address, human_size(sent), took, first)
                else:
                    self.counters.add(downloads_cut=1)
                    self.log.warning("download of %s by %s cut after %d of %d bytes "
                                     "(%.2f s)", published.etag, address, sent,
                                     published.size, took)

    # -- loadable, not just whole (worker/loadable.py) --------------------------------------

    def _source_of(self, published):
        """The publish record of the open file, when it describes it (else None)."""
        from worker.folder import read_record

        record = read_record(self.latest)
        return record if record is not None and record.describes(os.fstat(published.fd)) \
            else None

    def _note_loaded(self, published, address: str) -> None:
        """A replica asks with the current ETag: it loaded it. Remember its source as the
        model latest returns to after a refusal (once per ETag)."""
        if self._loaded_etag == published.etag:
            return
        from worker.loadable import record_loaded

        record = self._source_of(published)
        try:
            if record is not None:
                record_loaded(self.latest, record, address)
            self._loaded_etag = published.etag
        except OSError as error:
            self.log.error("could not record the model %s loaded: %s", address, error)

    def _note_refused(self, published, address: str) -> None:
        """A replica downloaded the current model and asks again with its old ETag: it could
        not load it. Nobody else gets it; the rotator remembers the refusal and publishes
        the last model a replica loaded."""
        from worker.channel import RESCAN, QueueClient
        from worker.loadable import record_refusal

        record = self._source_of(published)
        name = record.source if record is not None else str(self.latest)
        self.log.error("model %s (%s) refused by %s: it downloaded it and asks again with its "
                       "old ETag (a failed load); not sent to any other replica, latest "
                       "returns to the last model a replica loaded", name, published.etag,
                       address, extra={"event": "model_refused", "fields": {
                           "source": name, "etag": published.etag, "address": address}})
        if record is None:
            return
        try:
            record_refusal(self.latest, record, address, "a pulled model failed to load "
                           "(the replica asks again with its old ETag)")
            client = QueueClient(self.settings.run_dir)
            client.connect()
            client.send((RESCAN, f"a replica could not load {name} (model server)"))
        except Exception as error:  # noqa: BLE001 - the rotator's rescan timer catches up
            self.log.error("could not record the refusal of %s: %s", name, error)

    def _send_file(self, conn: socket.socket, published) -> int:
        """Send exactly the open file, from the page cache to the socket (sendfile).

        The socket is blocking with a kernel send timeout (SO_SNDTIMEO) rather than Python's
        timeout, which would add a select() before every sendfile() call: one system call
        per gigabyte here, and a client that takes nothing for SEND_TIMEOUT_S is let go."""
        conn.settimeout(None)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", int(SEND_TIMEOUT_S), 0))
        offset = 0
        while offset < published.size:
            try:
                sent = os.sendfile(conn.fileno(), published.fd, offset,
                                   min(published.size - offset, 1 << 30))
            except BlockingIOError:  # SO_SNDTIMEO passed without progress: a stuck client
                self.log.debug("client took nothing for %.0f s", SEND_TIMEOUT_S)
                break
            except OSError as error:  # reset, broken pipe: the client is gone
                self.log.debug("sendfile to client stopped: %s", error)
                break
            if sent == 0:  # the file ended early: it was truncated in place
                break
            offset += sent
        return offset

    def _metrics(self, conn: socket.socket, request: Request) -> None:
        from worker.model_server_metrics import exposition

        if self._metrics_registry is None:
            from worker.model_server_metrics import registry_for

            self._metrics_registry = registry_for(self.counters, self.gate)
        content_type, body = exposition(self._metrics_registry)
        self._reply(conn, 200, {"Content-Type": content_type}, body=body,
                    head_only=request.method == "HEAD")

    def _reply(self, conn: socket.socket, status: int, headers: dict[str, str] | None = None,
               body: str | bytes = b"", length: int | None = None,
               head_only: bool = False) -> None:
        payload = body.encode() if isinstance(body, str) else body
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Connection: close",
                 "Cache-Control: no-cache"]
        if status != 304:
            lines.append(f"Content-Length: {len(payload) if length is None else length}")
            if body and not (headers and "Content-Type" in headers):
                lines.append("Content-Type: text/plain; charset=utf-8")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.sendall(head if head_only or status == 304 else head + payload)


def run_model_server(settings: Settings, log: logging.Logger) -> None:
    """The supervisord program. Off (MODEL_SERVER_PORT unset), it becomes `sleep infinity`:
    RUNNING like the others, so `supervisorctl status` still exits 0 (an EXITED or STOPPED
    program makes it exit 3), nothing to restart or count as a crash, no wake-ups, and about
    0.2 MiB instead of a Python interpreter's 7 MiB."""
    if settings.model_server_port is None:
        sleep = shutil.which("sleep")
        log.info("model server off (MODEL_SERVER_PORT unset): idle%s",
                 " as `sleep infinity`" if sleep else "")
        if sleep:
            sys.stdout.flush()
            os.execv(sleep, ["sleep", "infinity"])
        while True:
            signal.pause()
    try:
        server = ModelServer(settings, log)
    except OSError as error:
        log.error("MODEL_SERVER_PORT=%s: cannot listen on %s:%s (%s)",
                  settings.model_server_port, settings.model_server_bind,
                  settings.model_server_port, error.strerror)
        sys.exit(2)
    rolling = ("no limit" if settings.model_server_max_swapping == 0 else
               f"at most {settings.model_server_max_swapping} replica(s) swapping, "
               f"{settings.model_server_swap_timeout_s:.0f} s timeout")
    log.info("serving %s at http://%s:%d%s (token %s; %s)", Path(settings.latest_model_path),
             settings.model_server_bind, server.port, MODEL_PATH,
             "required" if settings.model_server_token else "not required", rolling)
    try:
        server.serve_forever()
    finally:
        server.close()
