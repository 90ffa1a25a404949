"""Our own pipe between supervisord and stdout, drained by threads of supervisord's process.

It always stands between them, in both formats, because publishing must never depend on
anyone reading our output: supervisord writes its own lines and the programs' output to its
stdout, and a write there that fails (a broken pipe, `/dev/full`) ended supervisord, one that
blocks (a pipe nobody reads) stopped every program at its next log line. Here one thread
drains the pipe at once into a bounded buffer (BUFFER_BYTES) and another writes the buffer
to the real stdout: a stdout that blocks holds up only that thread; lines that do not fit,
or that a failing stdout refuses, are dropped and counted, and a line says how many once
stdout takes lines again.

With LOG_FORMAT=json every line that leaves is one JSON object: the programs' lines are JSON
already and pass unchanged; supervisord's own lines (spawned, exited, "terminated by SIGKILL;
not expected", shutdown) and any stray text are wrapped into the same shape as
worker/logs.py's JSON lines. In text mode lines pass unchanged; the pipe also keeps a
regular-file stdout from being written at two offsets.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
import threading
import time

# supervisord's own format: "2026-11-26 10:10:10,123 INFO spawned: 'rotator' with pid 12"
SUPERVISORD_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (CRIT|ERRO|WARN|INFO|DEBG|TRAC|BLAT) (.*)$")
LEVELS = {"CRIT": "CRITICAL", "ERRO": "ERROR", "WARN": "WARNING", "INFO": "INFO",
          "DEBG": "DEBUG", "TRAC": "DEBUG", "BLAT": "DEBUG"}
# "spawned: 'rotator' with pid 12", "success: rotator entered RUNNING state, ...",
# "exited: reader (terminated by SIGKILL; not expected)", "stopped: rotator (exit status 0)"
STATE_CHANGE = re.compile(r"^([a-z][a-z ]*): '?([\w.:-]+)'?")
LONGEST_LINE = 1024 * 1024  # a line without a newline is cut here rather than held forever
BUFFER_BYTES = 4 * 1024 * 1024  # lines waiting for a slow stdout; beyond, new lines are dropped


def _timestamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def as_json_line(raw: bytes) -> bytes:
    """One output line as one JSON object (bytes, no newline)."""
    text = raw.decode("utf-8", "backslashreplace").rstrip("\r")
    if text.startswith("{"):
        try:
            if isinstance(json.loads(text), dict):
                return text.encode()
        except ValueError:
            pass
    entry = {"time": _timestamp()}
    match = SUPERVISORD_LINE.match(text)
    if match:
        message = match.group(2)
        entry.update({"level": LEVELS[match.group(1)], "program": "supervisord"})
        change = STATE_CHANGE.match(message)
        entry["event"] = change.group(1) if change else "supervisord"
        entry["message"] = message
        if change:
            entry["process"] = change.group(2)
    else:
        # Not ours and not supervisord's format: a traceback, a warning, a stale-socket note.
        entry.update({"level": "WARNING", "program": "unknown", "event": "output",
                      "message": text})
    return json.dumps(entry).encode()


class StdoutRelay:
    """Points fds 1 and 2 of this process at a new pipe and relays it to the old stdout."""

    def __init__(self, wrap_json: bool):
        self.wrap_json = wrap_json
        self._out = os.dup(1)  # not inheritable: the programs never see the real stdout
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._in = read_end
        self._buffer: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._dropped = 0
        self._ended = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._drain, name="stdout-relay", daemon=True)
        self._writer = threading.Thread(target=self._write_out, name="stdout-writer",
                                        daemon=True)
        self._thread.start()
        self._writer.start()

    def _drain(self) -> None:
        """Read the pipe as fast as it fills, whatever stdout does."""
        pending = b""
        while True:
            chunk = os.read(self._in, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > LONGEST_LINE:
                lines.append(pending)
                pending = b""
            if lines:
                self._keep(lines)
        if pending:
            self._keep([pending])
        os.close(self._in)
        with self._ready:
            self._ended = True
            self._ready.notify()

    def _keep(self, lines: list[bytes]) -> None:
        if self.wrap_json:
            lines = [as_json_line(line) for line in lines if line.strip()]
        with self._ready:
            for line in lines:
                if self._buffered + len(line) + 1 > BUFFER_BYTES:
                    self._dropped += 1  # stdout is not taken: drop rather than block anyone
                    continue
                self._buffer.append(line + b"\n")
                self._buffered += len(line) + 1
            self._ready.notify()

    def _write_out(self) -> None:
        """Write the buffer to the real stdout; only this thread ever waits for stdout."""
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._buffer or self._ended)
                if not self._buffer:
                    return
                data = b"".join(self._buffer)
                lines = len(self._buffer)
                self._buffer.clear()
                self._buffered = 0
                dropped, self._dropped = self._dropped, 0
            if dropped:
                data = self._dropped_line(dropped) + data
            if not self._write(data):
                with self._ready:
                    self._dropped += lines  # refused (a broken pipe, a full disk): counted

    def _dropped_line(self, count: int) -> bytes:
        message = (f"{count} output line(s) dropped: stdout did not take them (not read, or "
                   "failing); publishing went on")
        if not self.wrap_json:
            return f"{_timestamp()} relay WARNING {message}\n".encode()
        return json.dumps({"time": _timestamp(), "level": "WARNING", "program": "relay",
                           "event": "output_dropped", "message": message,
                           "dropped": count}).encode() + b"\n"

    def _write(self, data: bytes) -> bool:
        """All of `data` to stdout; False when stdout refuses it."""
        while data:
            try:
                data = data[os.write(self._out, data):]
            except InterruptedError:
                continue
            except OSError:
                return False
        return True

    def finish(self, timeout_s: float = 5.0) -> None:
        """supervisord has exited: close our ends of the pipe, let the threads write the rest
        (at most `timeout_s`: a stdout that blocks never holds up the exit)."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        deadline = time.monotonic() + timeout_s
        self._thread.join(timeout_s)
        self._writer.join(max(0.0, deadline - time.monotonic()))
