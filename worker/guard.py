"""An event listener that shuts supervisord down when a program publishing depends on cannot
stay up (the reader or the rotator).

Without it a program that exhausts its retries goes FATAL while supervisord keeps running:
the container looks alive and does nothing. And a program that dies a moment after each
start can pass supervisord's start check (it looks at children on a ~1 s tick), so its
retries reset and it never becomes FATAL: we count such exits ourselves. Once supervisord
is down the container ends, and its orchestrator restarts it and can alert.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import defaultdict, deque

from supervisor import childutils

CRASH_LIMIT = 5  # unexpected exits of one program ...
CRASH_WINDOW_S = 60.0  # ... within this many seconds: a crash loop
GUARDED_EVENTS = ("PROCESS_STATE_FATAL", "PROCESS_STATE_EXITED")
# Only the programs publishing depends on may end the container. The model server is a
# convenience for Rasa's pull: whatever makes it fail (a flood of clients, a port taken),
# ending the container for it would stop publishing too. Its FATAL state is logged and
# shown by `status`; supervisord keeps restarting it while it crashes.
ESSENTIAL_PROGRAMS = ("reader", "rotator")


class CrashCounter:
    """Counts a program's unexpected exits in a sliding window."""

    def __init__(self, limit: int = CRASH_LIMIT, window_s: float = CRASH_WINDOW_S):
        self.limit = limit
        self.window_s = window_s
        self._exits: dict[str, deque[float]] = defaultdict(deque)

    def crash_loop(self, program: str, now: float) -> bool:
        """Note one exit of `program` at `now`; True when it is in a crash loop."""
        exits = self._exits[program]
        exits.append(now)
        while exits and exits[0] <= now - self.window_s:
            exits.popleft()
        return len(exits) >= self.limit


def verdict(event: str, fields: dict[str, str], counter: CrashCounter, now: float) -> str | None:
    """Why supervisord must stop after this event, or None."""
    program = fields.get("processname", "?")
    if program not in ESSENTIAL_PROGRAMS:
        return None
    if event == "PROCESS_STATE_FATAL":
        return f"program {program} could not be kept running (FATAL)"
    crashed = event == "PROCESS_STATE_EXITED" and fields.get("expected") == "0"
    if crashed and counter.crash_loop(program, now):
        return (f"program {program} exited {counter.limit} times within "
                f"{counter.window_s:.0f} s (crash loop)")
    return None


def shut_down_supervisord(log: logging.Logger) -> None:
    try:
        childutils.getRPCInterface(os.environ).supervisor.shutdown()
    except Exception as error:  # the control socket is gone: signal our parent instead
        log.error("supervisord shutdown over RPC failed (%s); sending SIGTERM", error)
        os.kill(os.getppid(), signal.SIGTERM)


def run_guard(log: logging.Logger) -> None:
    counter = CrashCounter()
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        event = headers.get("eventname", "")
        fields = childutils.get_headers(payload)
        reason = verdict(event, fields, counter, time.monotonic())
        childutils.listener.ok(sys.stdout)
        if event == "PROCESS_STATE_FATAL" and not reason:
            log.error("program %s could not be kept running (FATAL); publishing goes on "
                      "without it (`python -m worker supervisorctl start %s` once the cause "
                      "is fixed)", fields.get("processname", "?"),
                      fields.get("processname", "?"))
        if reason:
            log.error("shutting down supervisord: %s; the container's restart policy "
                      "brings it back", reason)
            shut_down_supervisord(log)
