"""Is the rotator making progress? The marks it leaves in RUN_DIR, and how `status` judges them.

The rotator writes one small file, `RUN_DIR/rotator.state` (atomically: temporary + rename),
only when something happens: at start, when a reconcile begins (with how many bytes it may
have to read) and when it ends. Nothing is written while it is idle, so an idle rotator is
never woken up on a timer to prove it is alive. It is one line of `name=value` fields
(`pid=7 phase=idle since=812.5 since_wall=1764662400.0 bytes=0 reconciles=3`), not JSON: the
health check that Docker and Kubernetes run reads it, and `json` (with the `re` it imports)
would be a fifth of that check's CPU.

`status` decides from the marks and one cheap probe:
- starting: no mark from the rotator that supervisord runs now, or its first reconcile has
  not ended yet;
- stuck: one reconcile (or the start) has lasted longer than its work explains:
  STUCK_BASE_S + bytes / STUCK_RATE_BYTES_PER_S (a blocked syscall, a hung file system);
- not answering: the queue socket's accept thread sends the manager's authentication
  challenge at once on a new connection, also while the main thread works; a stopped
  (SIGSTOP) or frozen process sends nothing within PROBE_TIMEOUT_S.
"""

from __future__ import annotations

import _socket
import math
import os
import time

STATE_FILE = "rotator.state"
QUEUE_SOCKET = "queue.sock"  # worker/programs/channel.py serves the queue here

# A reconcile reads each candidate once to check it and once more to copy it: allow a fixed
# minute for listing, locks and fsync, plus the bytes at 2 MiB/s (a slow network volume;
# local disks here do 400 MB/s and more). A 500 MiB folder is allowed about 5 minutes.
STUCK_BASE_S = 60.0
STUCK_RATE_BYTES_PER_S = 2 * 1024 * 1024
# Test-only: shortens STUCK_BASE_S for `status` (never for the rotator), so a test need not
# wait a minute for a rotator it has blocked. Not a setting; not documented for operators.
STUCK_BASE_OVERRIDE_ENV = "ROTATOR_TEST_STUCK_BASE_S"
PROBE_TIMEOUT_S = 2.0
CHALLENGE = b"#CHALLENGE#"  # multiprocessing.connection's first message on a new connection

STARTING, RECONCILING, IDLE = "starting", "reconciling", "idle"


class LivenessMarks:
    """The rotator's side: records its phase in RUN_DIR/rotator.state."""

    def __init__(self, run_dir: os.PathLike | str):
        self.path = os.path.join(run_dir, STATE_FILE)
        self.reconciles = 0

    def starting(self) -> None:
        self._write(STARTING, 0)

    def reconcile_begins(self, folder: os.PathLike | str) -> None:
        self._write(RECONCILING, _bytes_in(folder))

    def reconcile_ends(self) -> None:
        self.reconciles += 1
        self._write(IDLE, 0)

    def _write(self, phase: str, work_bytes: int) -> None:
        state = {"pid": os.getpid(), "phase": phase, "since": time.monotonic(),
                 "since_wall": time.time(), "bytes": work_bytes, "reconciles": self.reconciles}
        temporary = os.path.join(os.path.dirname(self.path), f".{STATE_FILE}.{os.getpid()}")
        try:
            with open(temporary, "w") as out:
                out.write(format_state(state))
            os.replace(temporary, self.path)
        except OSError:
            # RUN_DIR is full or gone: status will say so; the rotator's work goes on.
            pass


def _bytes_in(folder: os.PathLike | str) -> int:
    """The most a reconcile may have to read: all regular files directly in the folder."""
    total = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    except OSError:
        return 0
    return total


MAX_STATE_BYTES = 4096
WHOLE_FIELDS = ("pid", "bytes", "reconciles")
TIME_FIELDS = ("since", "since_wall")
PHASES = (STARTING, RECONCILING, IDLE)


def format_state(state: dict) -> str:
    return " ".join(f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"
                    for name, value in state.items()) + "\n"


def parse_state(data: bytes) -> dict | None:
    """The fields of a `rotator.state` line; None when it is not one (not ASCII, a field
    that is not `name=value`, an unknown or repeated name). A known field whose value is
    not what it should be is kept as its text, so `judge` says the file is unreadable."""
    try:
        fields = data.decode("ascii").split()
    except UnicodeDecodeError:
        return None
    state: dict = {}
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals or name in state or name not in (*WHOLE_FIELDS, *TIME_FIELDS, "phase"):
            return None
        state[name] = value
        if name in WHOLE_FIELDS and value.isdigit() and len(value) <= 19:
            state[name] = int(value)
        elif name in TIME_FIELDS:
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                state[name] = number
    return state


def read_state(run_dir: os.PathLike | str) -> dict | None:
    """The rotator's marks, read as anything in RUN_DIR is (worker/runfiles.py: no link, no
    FIFO, bounded in size); None when absent or not to be trusted (`judge` then says the
    rotator has not started yet, or is unreadable)."""
    from worker.runfiles import Untrusted, read_run_file

    try:
        return parse_state(read_run_file(run_dir, STATE_FILE, MAX_STATE_BYTES))
    except (OSError, Untrusted):
        return None


def allowed_seconds(work_bytes: int) -> float:
    base = STUCK_BASE_S
    override = os.environ.get(STUCK_BASE_OVERRIDE_ENV, "")
    if override.replace(".", "", 1).isdigit():
        base = float(override)
    return base + max(0, work_bytes) / STUCK_RATE_BYTES_PER_S


def probe_answers(run_dir: os.PathLike | str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """'' when the rotator's queue socket answers a new connection with its challenge;
    otherwise why not. Needs no key: the challenge comes first, and closing then is harmless
    (the manager's connection thread catches the EOF).

    Through `_socket`, the C module under `socket`: connect and recv with a timeout are all
    this needs, and `socket` itself imports `enum` and `selectors`, about 4 ms of CPU at
    every health check, a fifth of it."""
    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    probe.settimeout(timeout_s)
    try:
        probe.connect(os.path.join(run_dir, QUEUE_SOCKET))
        # multiprocessing.connection: a 4-byte big-endian signed length, then the message.
        length = int.from_bytes(_receive(probe, 4), "big", signed=True)
        first = _receive(probe, min(length, len(CHALLENGE)))
    except TimeoutError:
        return f"rotator does not answer on its queue socket within {timeout_s:.0f} s"
    except (OSError, EOFError) as error:
        return f"rotator's queue socket does not answer ({error})"
    finally:
        probe.close()
    if first != CHALLENGE:
        return "rotator's queue socket answers something unexpected"
    return ""


def _receive(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _number(value) -> bool:
    """A finite JSON number (not a bool, not 1e999 read as infinity)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def judge(state: dict | None, rotator_pid: int | None,
          run_dir: os.PathLike | str) -> tuple[str, str]:
    """(condition, reason): condition is 'ready', 'starting' or 'unhealthy'."""
    if rotator_pid is None:
        return "unhealthy", "rotator is not running"
    if state is None or state.get("pid") != rotator_pid:
        return "starting", "rotator has not started its first reconcile yet"
    since, work = state.get("since"), state.get("bytes", 0)
    if not (_number(since) and isinstance(work, int) and not isinstance(work, bool)
            and 0 <= work < 1 << 63):
        return "unhealthy", f"{STATE_FILE} in RUN_DIR is unreadable"
    elapsed = time.monotonic() - float(since)
    phase = state.get("phase")
    if phase in (STARTING, RECONCILING):
        allowed = allowed_seconds(work)
        if elapsed > allowed:
            what = "its start" if phase == STARTING else "one reconcile"
            return "unhealthy", (f"rotator stuck: {what} has taken {elapsed:.0f} s, more than "
                                 f"the {allowed:.0f} s its work explains ({work} bytes)")
    if phase == STARTING:
        return "starting", "rotator is starting (its queue socket is not served yet)"
    problem = probe_answers(run_dir)
    if problem:
        return "unhealthy", problem
    if not state.get("reconciles"):
        return "starting", "rotator's first reconcile is not done yet"
    return "ready", ""
