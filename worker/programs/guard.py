"""Inside supervisord: shuts it down when a program publishing depends on cannot stay up
(the reader or the rotator), and records the programs' states in RUN_DIR for the health check.

Without it a program that exhausts its retries goes FATAL while supervisord keeps running:
the container looks alive and does nothing. And a program that dies a moment after each
start can pass supervisord's start check (it looks at children on a ~1 s tick), so its
retries reset and it never becomes FATAL: we count such exits ourselves. Once supervisord
is down the container ends, and its orchestrator restarts it and can alert.

It runs inside supervisord (`python -m worker` runs supervisord in its own process), loaded
through supervisord's documented plugin point, an `[rpcinterface:guard]` section
(conf/supervisord.conf), whose factory supervisord calls once its event callbacks are reset.
It subscribes to the process state events there and, on a verdict, sets supervisord's mood to
shutdown, as the `supervisor.shutdown` call does. As an event listener program it was a
process of its own holding 15 MiB (most of it `supervisor.childutils`' imports) to read two
kinds of events.

At every state event it also writes `RUN_DIR/programs.state` (worker/surface/program_states.py):
the health check and `status` read that file and /proc instead of asking supervisord over its
control socket.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict, deque

CRASH_LIMIT = 5  # exits of one program on its own ...
CRASH_WINDOW_S = 60.0  # ... within this many seconds: a crash loop
# Only the programs publishing depends on may end the container. The model server is a
# convenience for Rasa's pull: whatever makes it fail (a flood of clients, a port taken),
# ending the container for it would stop publishing too. Its FATAL state is logged and
# shown by `status`; supervisord keeps restarting it while it crashes.
ESSENTIAL_PROGRAMS = ("reader", "rotator")


class CrashCounter:
    """Counts the exits of a program on its own (not stopped) in a sliding window."""

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
    # Every EXITED counts, with an expected exit status too: supervisord says EXITED only
    # for a program that ended on its own (a stop it asked for is STOPPED), and reader and
    # rotator never end on their own. With startsecs=0 nothing else stops a program that
    # exits 0 at once from being started again and again.
    if event == "PROCESS_STATE_EXITED" and counter.crash_loop(program, now):
        return (f"program {program} exited {counter.limit} times within "
                f"{counter.window_s:.0f} s (crash loop)")
    return None


class Guard:
    """Subscribed to supervisord's process state events in its own process: records every
    change in RUN_DIR, stops supervisord on a verdict. Its (empty) XML-RPC namespace is what
    the plugin point asks for."""

    def __init__(self, supervisord, run_dir: str | None = None,
                 counter: CrashCounter | None = None):
        from supervisor import events

        self.supervisord = supervisord
        self.run_dir = run_dir
        self.counter = counter or CrashCounter()
        self._record_failing = False
        events.subscribe(events.ProcessStateEvent, self.on_state)
        # A record that failed (RUN_DIR full) is tried again every 5 s until it lands: the
        # state it missed may be the last change for hours.
        events.subscribe(events.Tick5Event, self.on_tick)
        self._safely(self.record)

    def on_state(self, event) -> None:
        from supervisor import events

        if isinstance(event, (events.ProcessStateFatalEvent, events.ProcessStateExitedEvent)):
            self._safely(self._judge, event)
        self._safely(self.record)

    def on_tick(self, _event) -> None:
        if self._record_failing:
            self._safely(self.record)

    def _safely(self, duty, *args) -> None:
        # Called inside supervisord's loop: whatever goes wrong here must not stop it, and a
        # failure of one duty must not skip the other.
        try:
            duty(*args)
        except Exception as error:
            self.supervisord.options.logger.error(f"guard: {error!r}")

    def record(self) -> None:
        """RUN_DIR/programs.state as supervisord knows its programs now. A failure (RUN_DIR
        full or gone) is logged when it starts and when it ends: the health check then sees
        a state that is out of date, and /proc contradicts it once a program has changed."""
        if not self.run_dir:
            return
        from worker.runfiles import Untrusted, write_run_file
        from worker.surface.program_states import STATE_FILE, snapshot

        text = snapshot(self.supervisord.process_groups, os.getpid())
        logger = self.supervisord.options.logger
        try:
            write_run_file(self.run_dir, STATE_FILE, text.encode())
        except (OSError, Untrusted) as error:
            if not self._record_failing:
                logger.error(f"guard: cannot write {STATE_FILE} in RUN_DIR ({error}); the "
                             "health check reads an older state until it can")
            self._record_failing = True
            return
        if self._record_failing:
            logger.info(f"guard: {STATE_FILE} in RUN_DIR is written again")
        self._record_failing = False

    def _judge(self, event) -> None:
        from supervisor import events
        from supervisor.states import SupervisorStates

        name = ("PROCESS_STATE_FATAL" if isinstance(event, events.ProcessStateFatalEvent)
                else "PROCESS_STATE_EXITED")
        program = event.process.config.name
        fields = {"processname": program, "expected": "1" if getattr(event, "expected", 1)
                  else "0"}
        reason = verdict(name, fields, self.counter, time.monotonic())
        logger = self.supervisord.options.logger
        if name == "PROCESS_STATE_FATAL" and not reason:
            logger.error(f"program {program} could not be kept running (FATAL); publishing "
                         f"goes on without it (`python -m worker supervisorctl start "
                         f"{program}` once the cause is fixed)")
        if reason:
            logger.error(f"shutting down supervisord: {reason}; the container's restart "
                         "policy brings it back")
            self.supervisord.options.mood = SupervisorStates.SHUTDOWN


def make_guard(supervisord, run_dir: str = "", **_config) -> Guard:
    """supervisord's `supervisor.rpcinterface_factory` for the `[rpcinterface:guard]`
    section (its `run_dir` option: where to record the programs' states): called once per
    start, after supervisord reset its event subscriptions and made its process groups."""
    return Guard(supervisord, run_dir or None)
