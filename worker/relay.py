"""Our own pipe between supervisord and stdout, drained by a thread of supervisord's process.

With LOG_FORMAT=json every line that leaves is one JSON object: the programs' lines are JSON
already and pass unchanged; supervisord's own lines (spawned, exited, "terminated by SIGKILL;
not expected", shutdown) and any stray text are wrapped into the same shape as
worker/logs.py's JSON lines. In text mode lines pass unchanged; the pipe alone keeps a
regular-file stdout from being written at two offsets.
"""

from __future__ import annotations

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
    """Points fds 1 and 2 of this process at a new pipe and drains it to the old stdout."""

    def __init__(self, wrap_json: bool):
        self.wrap_json = wrap_json
        self._out = os.dup(1)  # not inheritable: the programs never see the real stdout
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self._in = read_end
        self._thread = threading.Thread(target=self._drain, name="stdout-relay", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
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
                self._write(lines)
        if pending:
            self._write([pending])
        os.close(self._in)

    def _write(self, lines: list[bytes]) -> None:
        if self.wrap_json:
            lines = [as_json_line(line) for line in lines if line.strip()]
        data = b"".join(line + b"\n" for line in lines)
        while data:
            try:
                data = data[os.write(self._out, data):]
            except InterruptedError:
                continue
            except OSError:
                return  # nobody reads stdout any more: keep draining so no writer blocks

    def finish(self, timeout_s: float = 5.0) -> None:
        """supervisord has exited: close our ends of the pipe, let the thread write the rest."""
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        self._thread.join(timeout_s)
