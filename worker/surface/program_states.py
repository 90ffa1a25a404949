"""supervisord's programs as the health check sees them: written by supervisord itself into
RUN_DIR, checked against the kernel's process table, never asked over the control socket.

supervisord's side: the guard plugin (worker/programs/guard.py, loaded inside supervisord)
calls `snapshot` at its start and at every process state event and writes the result to
`RUN_DIR/programs.state`, one line per process:

    supervisord 4321
    rotator RUNNING 4330 1764662400.5
    reader RUNNING 4331 1764662400.6

(name, supervisord's state word, pid (0 when none), when that state began, wall clock).

The check's side (`read_programs`): the file says what supervisord last knew; /proc says
whether it still holds. supervisord must be alive and not stopped (SIGSTOP), and each
program recorded RUNNING must be a live child of it, owned like RUN_DIR. So a supervisord
killed with -9 (its programs orphaned), one frozen by SIGSTOP, or a program gone while
supervisord did not notice, are each seen at once, without an XML-RPC call: that call, with
`xmlrpc.client` and the `http.client` and email parser under it, cost the check three times
what starting Python costs.

An existing supervisord (conf/supervisor-include.conf, SUPERVISOR_SERVER_URL set) loads no
plugin of ours: there `ask_supervisord` asks it over XML-RPC, through supervisor's own
transport, as `supervisorctl` does.
"""

from __future__ import annotations

import os
import time

from worker.text import LATEST_TIME

STATE_FILE = "programs.state"
MAX_STATE_BYTES = 8192
# supervisord's process states (supervisor.states.ProcessStates), by name.
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL",
          "UNKNOWN")
MAX_NAME = 100
STOPPED_STATES = ("T", "t")  # /proc/PID/stat: stopped by a signal, or by a tracer
RPC_TIMEOUT_S = 5.0  # an existing supervisord that does not answer is not healthy


# -- supervisord's side -----------------------------------------------------------------------

def snapshot(process_groups, pid: int) -> str:
    """The file's text for supervisord's `process_groups` (its name -> group mapping)."""
    from supervisor.states import getProcessStateDescription

    lines = [f"supervisord {pid}"]
    for group in process_groups.values():
        for process in group.processes.values():
            state = getProcessStateDescription(process.get_state())
            began = process.laststart if state in ("STARTING", "RUNNING", "BACKOFF",
                                                   "STOPPING") else process.laststop
            lines.append(f"{process.config.name} {state} {process.pid or 0} "
                         f"{float(began or 0)!r}")
    return "\n".join(lines) + "\n"


# -- the check's side ---------------------------------------------------------------------------

class Unreadable(ValueError):
    """programs.state is not what supervisord writes."""


def parse(data: bytes) -> tuple[int, dict[str, tuple[str, int, float]]]:
    """(supervisord's pid, {program: (state, pid, since)}); Unreadable for anything else."""
    try:
        lines = data.decode("ascii").splitlines()
    except UnicodeDecodeError:
        raise Unreadable("not ASCII") from None
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != "supervisord" or not _pid(head[1]):
        raise Unreadable("no supervisord line")
    programs: dict[str, tuple[str, int, float]] = {}
    for line in lines[1:]:
        fields = line.split()
        if (len(fields) != 4 or len(fields[0]) > MAX_NAME or fields[0] in programs
                or fields[1] not in STATES or not (fields[2] == "0" or _pid(fields[2]))):
            raise Unreadable(f"a line that is not a program's: {line[:60]!r}")
        try:
            since = float(fields[3])
        except ValueError:
            since = -1.0
        if not 0 <= since < LATEST_TIME:  # also refuses nan and inf
            raise Unreadable(f"a time that is not one: {fields[3][:30]!r}")
        programs[fields[0]] = (fields[1], int(fields[2]), since)
    return int(head[1]), programs


def _pid(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 10 and int(text) > 0


def process_facts(pid: int) -> tuple[str, int, int] | None:
    """(state letter, parent pid, owner uid) of a live process, from /proc; None when there
    is none (or only its zombie: it has ended, nobody has reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            data = stat_file.read(4096)
            owner = os.fstat(stat_file.fileno()).st_uid
    except OSError:
        return None
    # "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses; it ends at the last ')'.
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 2 or fields[0] in (b"Z", b"X", b"x"):
        return None
    return fields[0].decode("ascii", "replace"), int(fields[1]), owner


def read_programs(run_dir: str, owner: int | None = None) -> tuple[dict[str, dict] | None,
                                                                    str]:
    """supervisord's programs by name ({state, pid, description}, and `problem` where /proc
    contradicts the file), or None and why not. A program recorded RUNNING whose process is
    gone, or is not supervisord's child, is UNKNOWN. `owner`: the uid every process must run
    as (default: RUN_DIR's owner, who runs them all)."""
    from worker.runfiles import Untrusted, read_run_file

    try:
        data = read_run_file(run_dir, STATE_FILE, MAX_STATE_BYTES)
    except FileNotFoundError:
        return None, f"supervisord is not running (no {STATE_FILE} in RUN_DIR {run_dir})"
    except (OSError, Untrusted) as error:
        return None, f"supervisord's state: {error}"
    try:
        supervisord, recorded = parse(data)
    except Unreadable as error:
        return None, f"{STATE_FILE} in RUN_DIR is unreadable ({error})"
    if owner is None:
        owner = os.stat(run_dir).st_uid
    facts = process_facts(supervisord)
    if facts is None:
        return None, f"supervisord is not running (pid {supervisord} is gone)"
    if facts[2] != owner:
        return None, (f"supervisord is not running (pid {supervisord} runs as uid {facts[2]}, "
                      f"RUN_DIR is owned by uid {owner})")
    if facts[0] in STOPPED_STATES:
        return None, (f"supervisord (pid {supervisord}) is stopped (SIGSTOP or a debugger): "
                      "it restarts no program")
    now = time.time()
    programs: dict[str, dict] = {}
    for name, (state, pid, since) in recorded.items():
        program = programs[name] = {"state": state, "pid": pid or None,
                                    "description": _describe(state, pid, since, now)}
        if state != "RUNNING":
            continue
        facts = process_facts(pid)
        if facts is None or facts[1] != supervisord or facts[2] != owner:
            program["state"] = "UNKNOWN"
            program["problem"] = (f"pid {pid} is gone (supervisord recorded it RUNNING)"
                                  if facts is None else
                                  f"pid {pid} is not supervisord's child running as uid "
                                  f"{owner}")
        elif facts[0] in STOPPED_STATES:
            program["problem"] = f"pid {pid} is stopped (SIGSTOP or a debugger)"
    return programs, ""


def _describe(state: str, pid: int, since: float, now: float) -> str:
    """As supervisorctl describes a program: its pid and uptime, or since when it is not."""
    if state == "RUNNING":
        seconds = max(0, int(now - since)) if since > 0 else 0
        return (f"pid {pid}, uptime {seconds // 3600}:{seconds // 60 % 60:02d}:"
                f"{seconds % 60:02d}")
    if since > 0:
        return "since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    return ""


def ask_supervisord(url: str, username: str, password: str) -> tuple[dict[str, dict] | None,
                                                                      str]:
    """The programs of an existing supervisord (SUPERVISOR_SERVER_URL), over XML-RPC."""
    import socket
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport

    from worker.text import printable

    # supervisor's transport sets no timeout of its own; a stopped supervisord must not
    # hold `status` for ever.
    socket.setdefaulttimeout(RPC_TIMEOUT_S)
    proxy = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(username, password, url))
    try:
        processes = proxy.supervisor.getAllProcessInfo()
    except Exception as error:  # refused, credentials refused, a fault, a timeout
        text = str(error).replace(password, "***") if password else str(error)
        return None, printable(f"supervisord not reachable at {url} ({text})")
    programs = {}
    for process in processes if isinstance(processes, list) else []:
        if not isinstance(process, dict) or not isinstance(process.get("name"), str):
            continue
        pid = process.get("pid")
        programs[printable(process["name"][:MAX_NAME])] = {
            "state": printable(str(process.get("statename", "UNKNOWN"))[:40]),
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) and pid else None,
            "description": printable(str(process.get("description", ""))[:200])}
    return programs, ""
