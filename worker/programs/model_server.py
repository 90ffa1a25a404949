"""`python -m worker model-server`: serve the published model to Rasa's model-server pull.

Rasa (`endpoints.yml`: `models: {url, token, wait_time_between_pulls}`) sends
`GET url?token=...` with `If-None-Match: <fingerprint of its model>` every few seconds and
takes 204/304 as "nothing new", 404 as "no model", and 200 as the archive, whose `ETag`
becomes its fingerprint (rasa/core/agent.py, `_pull_model_and_fingerprint`).

Paths: `/model` (GET, HEAD; token required when MODEL_SERVER_TOKEN is set), `/healthz`
(the server is up), `/readyz` (a whole model is published), `/metrics` (Prometheus).

One thread, one selector loop (epoll) over non-blocking sockets, like nginx's worker: no
thread is ever started, so a flood of connections under a process limit (RLIMIT_NPROC, a
container's pids limit) cannot make the server fail ("can't start new thread"). The bytes
go from the page cache to the socket with non-blocking sendfile: memory does not grow with
the model's size. Every connection has one deadline, checked by the loop itself: a request
must arrive whole within HEAD_TIMEOUT_S, and a download is cut once the client has taken
nothing for SEND_TIMEOUT_S, to the second. With no connection open the loop blocks without
a timeout: nothing wakes up at idle.
A small HTTP/1.1 reader of our own instead of http.server: that module pulls in http.client,
email and ssl, about 10 MiB of memory for parsing three headers.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import selectors
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from worker.folder.published import NotPublished, PublishedFile, download_name, open_published
from worker.logs import human_size
from worker.rasa.rolling import FAILED, HELD, NOT_MODIFIED, SEND, SEND_FRESH, RollingGate
from worker.settings import Settings

MODEL_PATH = "/model"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers
# Module constants, read at each use: a test shortens them in a real server process
# (tests/programs/test_model_server.py starts `model-server` through `python -c` after setting
# them).
HEAD_TIMEOUT_S = 10.0  # a client has this long to send its request
SEND_TIMEOUT_S = 60.0  # a download is cut when the client takes nothing for this long
LINGER_S = 10.0  # after the last byte, how long the client may take to close its end
MAX_CONNECTIONS = 256  # beyond this, the oldest connection still sending its request goes
MAX_DISCARDED_BYTES = 64 * 1024  # a client may send this much more during its download
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 431: "Request Header Fields Too Large",
           503: "Service Unavailable"}

READING, SENDING, CLOSING = "reading", "sending", "closing"


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


def head_end(data: bytes) -> int:
    """Where the request head ends in `data` (the index after the blank line), or -1."""
    for blank in (b"\r\n\r\n", b"\n\n"):
        index = data.find(blank)
        if index >= 0:
            return index + len(blank)
    return -1


def parse_request(data: bytes) -> Request:
    """The request line and headers of a whole head (no body: GET and HEAD only)."""
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
    try:
        split = urllib.parse.urlsplit(target)  # raises on a malformed IPv6 host: http://[::1/
        query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
    except ValueError as error:
        raise BadRequest(400, f"malformed request target ({error})") from None
    return Request(method=method, path=split.path, query=query, headers=headers)


@dataclass
class Download:
    """A model being sent on one connection: the open file and what to log at its end."""

    published: PublishedFile
    decision: str
    counted: bool  # it holds a turn of the rolling gate
    started: float
    offset: int = 0


@dataclass
class Connection:
    """One client: the request it is sending, then the answer going out, then its close."""

    sock: socket.socket
    address: str
    deadline: float
    phase: str = READING
    inbox: bytes = b""
    outbox: bytes = b""
    download: Download | None = None
    discarded: int = 0
    closed: bool = False


_WAKE = object()  # the selector key of the socket close() writes to


class ModelServer:
    """The listener and its answers. `serve_forever` runs the selector loop."""

    def __init__(self, settings: Settings, log: logging.Logger):
        self.settings = settings
        self.log = log
        self.latest = settings.latest_model_path
        self.filename = download_name(settings.latest_model_path)
        self.gate = RollingGate(settings.model_server_max_swapping,
                                settings.model_server_swap_timeout_s)
        self.counters = Counters()
        self._token = settings.model_server_token.encode()
        self._metrics_registry = None
        self._loaded_etag: str | None = None  # the last ETag a replica confirmed it loaded
        self._chores: queue.SimpleQueue | None = None  # see _later
        self._closing = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._connections: dict[int, Connection] = {}  # by file descriptor, oldest first
        self._selector = selectors.DefaultSelector()
        self._listening = False
        family = socket.AF_INET6 if ":" in settings.model_server_bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((settings.model_server_bind, settings.model_server_port or 0))
        self.sock.listen(128)
        self.sock.setblocking(False)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def serve_forever(self) -> None:
        """The loop, until close() (from any thread: it only asks, the loop shuts down)."""
        self._listen(True)
        self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
        try:
            while not self._closing:
                for key, events in self._selector.select(self._wait_s()):
                    if key.data is None:
                        self._accept()
                    elif key.data is not _WAKE:
                        self._surviving(self._step, key.data, events)
                self._expire(time.monotonic())
        finally:
            self._shut()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):  # a loop blocked in select() wakes and shuts down
            self._wake_writer.send(b"!")
        if not self._selector.get_map():  # no loop ever ran
            self._shut()

    def _shut(self) -> None:
        for conn in list(self._connections.values()):
            self._close(conn)
        self._selector.close()
        for sock in (self.sock, self._wake_reader, self._wake_writer):
            sock.close()

    # -- the loop ---------------------------------------------------------------------------

    def _wait_s(self) -> float | None:
        """Until the nearest deadline; None (no timeout) with no connection open."""
        if not self._connections:
            return None
        nearest = min(conn.deadline for conn in self._connections.values())
        return max(0.0, nearest - time.monotonic())

    def _listen(self, on: bool) -> None:
        if on and not self._listening:
            self._selector.register(self.sock, selectors.EVENT_READ, None)
        elif not on and self._listening:
            self._selector.unregister(self.sock)
        self._listening = on

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop accepting until a connection closes, rather
                    # than spin on a listener that stays readable.
                    self.log.warning("cannot accept more connections now: %s", error.strerror)
                    if not self._make_room():
                        self._listen(False)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            if len(self._connections) >= MAX_CONNECTIONS and not self._make_room():
                sock.close()  # all busy downloading: a replica asks again at its next pull
                continue
            sock.setblocking(False)
            conn = Connection(sock, address[0], time.monotonic() + HEAD_TIMEOUT_S)
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self.counters.add(clients=1)

    def _make_room(self) -> bool:
        """Close the oldest connection that has not sent its whole request yet, so a flood of
        idle connections never keeps a probe (`/healthz`) or a replica out. False: none."""
        for conn in self._connections.values():
            if conn.phase == READING:
                self.log.debug("dropped idle connection from %s: all %d places taken",
                               conn.address, MAX_CONNECTIONS)
                self._close(conn)
                return True
        return False

    def _surviving(self, step, conn: Connection, *args) -> None:
        """A fault in one connection's handling ends that connection, never the server."""
        try:
            step(conn, *args)
        except OSError as error:  # reset, broken pipe: the client is gone
            self.log.debug("connection from %s ended: %s", conn.address, error)
            self._close(conn, error)
        except Exception:  # noqa: BLE001 - the server outlives any one request
            self.log.exception("request from %s failed", conn.address)
            self._close(conn)

    def _step(self, conn: Connection, events: int) -> None:
        answered = False
        if events & selectors.EVENT_READ:
            if conn.phase == READING:
                self._read_request(conn)
                answered = conn.phase == SENDING  # its socket is most likely writable now
            else:
                self._discard_input(conn)
        if not conn.closed and conn.phase == SENDING and (answered
                                                          or events & selectors.EVENT_WRITE):
            self._send(conn)

    def _expire(self, now: float) -> None:
        for conn in [c for c in self._connections.values() if c.deadline <= now]:
            if conn.phase == SENDING:
                self.log.debug("client %s took nothing for %.0f s", conn.address,
                               SEND_TIMEOUT_S)
                self._close(conn, TimeoutError(f"took nothing for {SEND_TIMEOUT_S:.0f} s"))
            else:
                self._close(conn, None if conn.phase == CLOSING else
                            TimeoutError("request head not received in time"))

    # -- one connection: its request, its answer, its close -----------------------------------

    def _read_request(self, conn: Connection) -> None:
        chunk = conn.sock.recv(4096)
        if not chunk:
            self._close(conn)  # closed before a whole request: nothing to answer
            return
        conn.inbox += chunk
        end = head_end(conn.inbox)
        if end < 0:
            if len(conn.inbox) > MAX_HEAD_BYTES:
                self._reply(conn, 431, body="request head too large\n")
            return
        try:
            request = parse_request(conn.inbox[:end])
        except BadRequest as error:
            self._reply(conn, error.status, body=f"{error}\n")
            return
        conn.discarded = len(conn.inbox) - end
        conn.inbox = b""
        self._answer(conn, conn.address, request)

    def _discard_input(self, conn: Connection) -> None:
        """Read what the client sends after its request and drop it: unread bytes at our
        close would make the kernel reset the connection and lose the answer's tail."""
        chunk = conn.sock.recv(65536)
        if not chunk:
            if conn.phase == CLOSING:
                self._close(conn)  # the client has everything and closed its end
            else:
                self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)  # half-closed
            return
        conn.discarded += len(chunk)
        if conn.discarded > MAX_DISCARDED_BYTES:
            self._close(conn, ConnectionError("client sent too much after its request"))

    def _send(self, conn: Connection) -> None:
        while conn.outbox:
            try:
                sent = conn.sock.send(conn.outbox)
            except BlockingIOError:
                return
            conn.outbox = conn.outbox[sent:]
            conn.deadline = time.monotonic() + SEND_TIMEOUT_S
        download = conn.download
        if download is not None:
            published = download.published
            while download.offset < published.size:
                try:
                    sent = os.sendfile(conn.sock.fileno(), published.fd, download.offset,
                                       min(published.size - download.offset, 1 << 30))
                except BlockingIOError:
                    return  # the socket's buffer is full: the loop calls again when it drains
                if sent == 0:  # the file ended early: it was truncated in place
                    self._close(conn, EOFError("the published file was truncated"))
                    return
                download.offset += sent
                conn.deadline = time.monotonic() + SEND_TIMEOUT_S
        # Everything is handed to the kernel: say so to the client and let it close first.
        conn.phase = CLOSING
        conn.deadline = time.monotonic() + LINGER_S
        conn.sock.shutdown(socket.SHUT_WR)
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _close(self, conn: Connection, error: BaseException | None = None) -> None:
        """The end of a connection; a download's outcome is logged here, once."""
        if self._connections.pop(conn.sock.fileno(), None) is None:
            return
        self.counters.add(clients=-1)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        conn.closed = True
        self._listen(True)
        if conn.download is not None:
            self._download_ended(conn, error)
        elif error is not None:
            self.log.debug("connection from %s ended: %s", conn.address, error)

    def _download_ended(self, conn: Connection, error: BaseException | None) -> None:
        download = conn.download
        conn.download = None
        published = download.published
        sent = download.offset
        # Whole: every byte handed to the kernel, then the client closed its end (or took
        # LINGER_S to). A reset or an error before that may have lost bytes in flight.
        complete = sent == published.size and conn.phase == CLOSING and error is None
        published.close()
        if download.counted:
            self.gate.ended(conn.address, complete)
        self.counters.add(bytes_sent=sent)
        took = time.monotonic() - download.started
        if complete:
            self.counters.add(downloads=1)
            first = " (its first model from us)" if download.decision == SEND_FRESH else ""
            self.log.info("sent %s %s to %s: %s in %.2f s%s", self.filename, published.etag,
                          conn.address, human_size(sent), took, first)
        else:
            self.counters.add(downloads_cut=1)
            why = f": {error}" if error is not None else ""
            self.log.warning("download of %s by %s cut after %d of %d bytes (%.2f s)%s",
                             published.etag, conn.address, sent, published.size, took, why)

    # -- the answers --------------------------------------------------------------------------

    def _answer(self, conn: Connection, address: str, request: Request) -> None:
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

    def _readiness(self, conn: Connection, request: Request) -> None:
        try:
            with open_published(self.latest) as published:
                body = f"ready: {published.etag} ({published.size} bytes)\n"
            status = 200
        except NotPublished as why:
            status, body = 503, f"not ready: {why}\n"
        self._reply(conn, status, body=body, head_only=request.method == "HEAD")

    def _model(self, conn: Connection, address: str, request: Request) -> None:
        head_only = request.method == "HEAD"
        try:
            published = open_published(self.latest)
        except NotPublished as why:
            self._reply(conn, 404, body=f"no model: {why}\n", head_only=head_only)
            return
        sending = False
        decision = None
        try:
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
            self._reply(conn, 200, headers, length=published.size, head_only=True)
            conn.download = Download(published, decision, counted, time.monotonic())
            sending = True
        finally:
            if not sending:
                published.close()
                if decision == SEND and self.gate.max_swapping > 0 and not head_only:
                    self.gate.ended(address, False)  # the place decide() took is given back

    # -- loadable, not just whole (worker/folder/loadable.py) --------------------------------------
    # What a replica loaded or refused is written under the folder lock, which a reconcile
    # holds through a whole copy: never in this loop (every download and /healthz would wait),
    # but in one chores thread, started when first needed.

    def _later(self, chore) -> None:
        if self._chores is None:
            self._chores = queue.SimpleQueue()
            try:
                threading.Thread(target=self._do_chores, name="loadable-chores",
                                 daemon=True).start()
            except RuntimeError as error:  # no thread to be had (a process limit)
                self._chores = None
                self.log.error("could not start the thread that records loads and refusals: "
                               "%s; they are not recorded", error)
                return
        self._chores.put(chore)

    def _do_chores(self) -> None:
        while True:
            chore = self._chores.get()
            try:
                chore()
            except Exception:  # noqa: BLE001 - a chore that fails must not end the others
                self.log.exception("recording a load or refusal failed")

    def _record_describing(self, latest_stat):
        """The publish record, when it describes the file that was served (else None)."""
        from worker.folder.files import read_record

        record = read_record(self.latest)
        return record if record is not None and record.describes(latest_stat) else None

    def _note_loaded(self, published, address: str) -> None:
        """A replica asks with the current ETag: it loaded it. Remember its source as the
        model latest returns to after a refusal (once per ETag)."""
        if self._loaded_etag == published.etag:
            return
        self._loaded_etag = published.etag
        served = os.fstat(published.fd)

        def chore() -> None:
            from worker.folder.loadable import record_loaded

            record = self._record_describing(served)
            try:
                if record is not None:
                    record_loaded(self.latest, record, address)
            except OSError as error:
                self._loaded_etag = None  # the next 304 tries again
                self.log.error("could not record the model %s loaded: %s", address, error)

        self._later(chore)

    def _note_refused(self, published, address: str) -> None:
        """A replica downloaded the current model and asks again with its old ETag: it could
        not load it. Nobody else gets it; the rotator remembers the refusal and publishes
        the last model a replica loaded."""
        served, etag = os.fstat(published.fd), published.etag

        def chore() -> None:
            from worker.folder.loadable import record_refusal
            from worker.programs.channel import RESCAN, QueueClient

            record = self._record_describing(served)
            name = record.source if record is not None else str(self.latest)
            self.log.error("model %s (%s) refused by %s: it downloaded it and asks again with "
                           "its old ETag (a failed load); not sent to any other replica, "
                           "latest returns to the last model a replica loaded", name, etag,
                           address, extra={"event": "model_refused", "fields": {
                               "source": name, "etag": etag, "address": address}})
            if record is None:
                return
            try:
                record_refusal(self.latest, record, address, "a pulled model failed to load "
                               "(the replica asks again with its old ETag)")
            except OSError as error:
                self.log.error("could not record the refusal of %s: %s", name, error)
                return

            def tell_the_rotator() -> None:
                try:
                    client = QueueClient(self.settings.run_dir)
                    client.connect()
                    client.send((RESCAN, f"a replica could not load {name} (model server)"))
                except Exception as error:  # noqa: BLE001 - its next reconcile reads it
                    self.log.warning("could not ask the rotator to look again at once: %s",
                                     error)

            # Its own thread: a stopped (SIGSTOP) rotator never answers the queue's
            # handshake, and the chores must go on. The refusal is on disk already.
            try:
                threading.Thread(target=tell_the_rotator, name="tell-rotator",
                                 daemon=True).start()
            except RuntimeError as error:
                self.log.warning("could not ask the rotator to look again at once: %s", error)

        self._later(chore)

    def _metrics(self, conn: Connection, request: Request) -> None:
        from worker.surface.model_server_metrics import exposition

        if self._metrics_registry is None:
            from worker.surface.model_server_metrics import registry_for

            self._metrics_registry = registry_for(self.counters, self.gate)
        content_type, body = exposition(self._metrics_registry)
        self._reply(conn, 200, {"Content-Type": content_type}, body=body,
                    head_only=request.method == "HEAD")

    def _reply(self, conn: Connection, status: int, headers: dict[str, str] | None = None,
               body: str | bytes = b"", length: int | None = None,
               head_only: bool = False) -> None:
        """Queue the answer; the loop sends it (and a download's file after it)."""
        payload = body.encode() if isinstance(body, str) else body
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", "Connection: close",
                 "Cache-Control: no-cache"]
        if status != 304:
            lines.append(f"Content-Length: {len(payload) if length is None else length}")
            if body and not (headers and "Content-Type" in headers):
                lines.append("Content-Type: text/plain; charset=utf-8")
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.outbox = head if head_only or status == 304 else head + payload
        conn.phase = SENDING
        conn.deadline = time.monotonic() + SEND_TIMEOUT_S
        self._selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)


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
