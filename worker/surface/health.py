"""Is the tool healthy? The verdict `status` prints, and the light check that Docker and
Kubernetes run every few seconds: `python -m worker.surface.health [--hold SECONDS]`.

The verdict: supervisord answers on its control socket, the reader and the rotator are
RUNNING (STARTING: starting), and the rotator makes progress as its marks in RUN_DIR and its
queue socket tell (worker/surface/liveness.py). Exit 0 when healthy; 1 when starting or unhealthy
(Docker reserves 2).

The light check answers exactly that and nothing more: it finds RUN_DIR as the settings do
without reading the other settings (the tool checked them at its start), reads RUN_DIR
through worker/runfiles.py's rules, and imports neither the settings, the folder logic nor
logging. A probe then costs about as much CPU as starting Python itself.

`--hold SECONDS` is for Docker, whose probes cost a `docker exec` each (tens of ms of CPU in
dockerd, containerd and runc) and which runs the next probe one interval after the previous
one ended. With a short interval the first healthy answer comes at once; once the tool has
been healthy for SETTLED_S, and the previous probe answered healthy, the probe holds: it
checks again every RECHECK_S (one cheap call to supervisord and one to the rotator) and
answers at once when the verdict changes, else healthy after SECONDS. So an idle container
pays for one exec per SECONDS, a failure is still seen within RECHECK_S, and a recovery is
answered at once.
"""

from __future__ import annotations

import os
import sys
import time

from worker.runfiles import (
    CONTROL_PASSWORD_FILE,
    Untrusted,
    connect_run_socket,
    control_credentials,
    read_run_file,
    run_dir_of,
    write_run_file,
)
from worker.surface import liveness
from worker.text import printable

REQUIRED_PROGRAMS = ("reader", "rotator")
RPC_TIMEOUT_S = 5.0
MAX_RPC_ANSWER_BYTES = 4 * 1024 * 1024
# --hold: answer at once during the first SETTLED_S of health (Docker's first probes must see
# "healthy" without waiting), then check again every RECHECK_S while holding.
SETTLED_S = 10.0
RECHECK_S = 5.0
LAST_ANSWER_FILE = "health.last"  # what the last holding probe answered
MAX_HOLD_S = 300


def _rpc_call(url: str, username: str, password: str, method: str, sock=None):
    """One XML-RPC call without parameters to supervisord at unix://PATH or http://HOST:PORT
    (or on `sock`, connected already). The answer is bounded in size and time.

    Written out rather than through xmlrpc.client, which imports http.client (and with it the
    email parser and ssl): 15 ms of CPU at every health check, in every container."""
    import binascii
    import socket

    body = (f'<?xml version="1.0"?><methodCall><methodName>{method}</methodName>'
            f'<params/></methodCall>').encode()
    head = ["POST /RPC2 HTTP/1.0", "Host: localhost", "Content-Type: text/xml",
            f"Content-Length: {len(body)}"]
    if username:
        token = binascii.b2a_base64(f"{username}:{password}".encode(), newline=False).decode()
        head.append(f"Authorization: Basic {token}")
    if sock is not None:
        pass
    elif url.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(RPC_TIMEOUT_S)
        sock.connect(url[len("unix://"):])
    else:
        host, _, port = url.split("://", 1)[-1].split("/", 1)[0].rpartition(":")
        sock = socket.create_connection((host or "localhost", int(port or 80)), RPC_TIMEOUT_S)
    with sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks, size = [], 0
        deadline = time.monotonic() + RPC_TIMEOUT_S  # in all: a byte now and then is not enough
        while True:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:  # HTTP/1.0: the server closes after its answer
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_RPC_ANSWER_BYTES:
                raise ConnectionError(f"supervisord's answer exceeds {MAX_RPC_ANSWER_BYTES} "
                                      "bytes")
    answer = b"".join(chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"200":
        raise ConnectionError(f"supervisord answered {status_line.decode(errors='replace')!r}")
    return _xmlrpc_answer(rest.partition(b"\r\n\r\n")[2])


_SCALARS = {"int": int, "i4": int, "double": float, "string": str,
            "boolean": lambda text: text.strip() == "1"}


def _xmlrpc_answer(body: bytes):
    """The value of an XML-RPC methodResponse; RuntimeError for a fault. Read with expat
    itself, the parser under xmlrpc.client and ElementTree, which cost 3 ms more to import:
    values are collected as xmlrpc.client's Unmarshaller does, on a stack of open containers
    (a list for <array>, a dict for <struct> with the name of its member being read)."""
    from xml.parsers import expat

    done: list = []  # the finished top-level values (one <param> or the <fault>)
    open_: list = []  # [container, member name] for each open <array> or <struct>
    typed: list[bool] = []  # for each open <value>: did a typed element fill it?
    text: list[str] = []
    fault = False

    def put(value) -> None:
        if not open_:
            done.append(value)
        elif isinstance(open_[-1][0], list):
            open_[-1][0].append(value)
        else:
            open_[-1][0][open_[-1][1]] = value

    def start(tag, _attributes) -> None:
        nonlocal fault
        text.clear()
        if tag == "fault":
            fault = True
        elif tag == "value":
            typed.append(False)
        elif tag in ("array", "struct") or tag in _SCALARS:
            if typed:
                typed[-1] = True
            if tag in ("array", "struct"):
                open_.append([[] if tag == "array" else {}, None])

    def end(tag) -> None:
        joined = "".join(text)
        if tag in _SCALARS:
            put(_SCALARS[tag](joined))
        elif tag == "value" and typed and not typed.pop():
            put(joined)  # a <value> without a type is a string
        elif tag in ("array", "struct") and open_:
            put(open_.pop()[0])
        elif tag == "name" and open_:
            open_[-1][1] = joined

    parser = expat.ParserCreate()
    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    parser.Parse(body, True)
    if fault:
        raise RuntimeError(f"XML-RPC fault {done[0] if done else '?'}")
    return done[0] if done else None


def program_states(run_dir) -> tuple[dict[str, dict] | None, str]:
    """supervisord's programs by name ({state, pid, description}), or None and why not."""
    url, username, password = control_credentials(run_dir)
    sock = None
    try:
        if not os.environ.get("SUPERVISOR_SERVER_URL"):
            # Our own RUN_DIR: the password and the socket as worker/runfiles.py reads them,
            # so root never sends a file its owner linked there, nor to a socket not theirs.
            if not password:
                read_run_file(run_dir, CONTROL_PASSWORD_FILE, 256)  # says why
                raise ValueError(f"{CONTROL_PASSWORD_FILE} in RUN_DIR is not a password")
            sock = connect_run_socket(run_dir, "supervisor.sock", RPC_TIMEOUT_S)
        processes = _rpc_call(url, username, password, "supervisor.getAllProcessInfo", sock)
    except Exception as error:  # socket missing, refused, credentials refused, an RPC fault
        # Never the password: the error of a refused call names the URL without it.
        return None, printable(f"supervisord not reachable at {url} "
                               f"({_without(error, password)})")
    programs = {}
    for process in processes if isinstance(processes, list) else []:
        if not isinstance(process, dict) or not isinstance(process.get("name"), str):
            continue
        pid = process.get("pid")
        programs[printable(process["name"][:100])] = {
            "state": printable(str(process.get("statename", "UNKNOWN"))[:40]),
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            "description": printable(str(process.get("description", ""))[:200])}
    return programs, ""


def _without(error: Exception, secret: str) -> str:
    text = str(error)
    return text.replace(secret, "***") if secret else text


class Verdict:
    """What the check found: condition ('ready', 'starting' or 'unhealthy'), what it waits
    for, the problems, supervisord's programs (None: not reachable) and the rotator's marks."""

    def __init__(self, condition: str, waiting: str, problems: list[str],
                 programs: dict[str, dict] | None, marks: dict | None):
        self.condition, self.waiting, self.problems = condition, waiting, problems
        self.programs, self.marks = programs, marks

    @property
    def healthy(self) -> bool:
        return self.condition == "ready"

    def lines(self) -> list[str]:
        """The first lines of `status`: the word, then what it waits for or what is wrong."""
        word = {"ready": "healthy", "starting": "starting"}.get(self.condition, "UNHEALTHY")
        lines = [f"rasa-model-rotator: {word}"]
        if self.waiting:
            lines.append(f"  waiting: {self.waiting}")
        lines += [f"  problem: {problem}" for problem in self.problems]
        return [printable(line) for line in lines]


def judge_tool(run_dir) -> Verdict:
    """The health verdict for the instance whose RUN_DIR this is."""
    programs, problem = program_states(run_dir)
    problems = [problem] if problem else []
    condition, waiting, marks = "unhealthy", "", None
    if programs is not None:
        starting = []
        for name in REQUIRED_PROGRAMS:
            state = programs.get(name, {}).get("state", "missing")
            if state == "STARTING":
                starting.append(name)
            elif state != "RUNNING":
                problems.append(f"program {name} is {state}")
        rotator = programs.get("rotator", {})
        rotator_pid = rotator.get("pid") if rotator.get("state") == "RUNNING" else None
        if rotator_pid:
            marks = liveness.read_state(run_dir)
            condition, reason = liveness.judge(marks, rotator_pid, run_dir)
            if condition == "unhealthy":
                problems.append(reason)
            elif condition == "starting":
                waiting = reason
        if starting and not problems:
            condition, waiting = "starting", f"program {', '.join(starting)} is STARTING"
    if problems:
        condition = "unhealthy"
    return Verdict(condition, waiting, problems, programs, marks)


def settled(verdict: Verdict) -> bool:
    """Healthy for SETTLED_S at least: the rotator ended more than one reconcile, or its first
    ended that long ago (its marks hold the monotonic time of the last change)."""
    marks = verdict.marks or {}
    if not verdict.healthy:
        return False
    reconciles = marks.get("reconciles")
    if isinstance(reconciles, int) and reconciles > 1:
        return True
    return time.monotonic() - marks.get("since", time.monotonic()) >= SETTLED_S


def check(run_dir, hold_s: float = 0.0) -> Verdict:
    """The verdict now; with `hold_s`, a settled healthy verdict is held (checked again every
    RECHECK_S) until it changes or `hold_s` has passed. Not after an answer that was not
    healthy (RUN_DIR/LAST_ANSWER_FILE): a recovery is answered at once too."""
    verdict = judge_tool(run_dir)
    if hold_s > 0 and settled(verdict) and _last_answer(run_dir) == "healthy":
        deadline = time.monotonic() + hold_s
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(RECHECK_S, left))
            verdict = judge_tool(run_dir)
            if not verdict.healthy:
                break
    if hold_s > 0:
        _note_answer(run_dir, "healthy" if verdict.healthy else "not healthy")
    return verdict


def _last_answer(run_dir) -> str:
    try:
        return read_run_file(run_dir, LAST_ANSWER_FILE, 64).decode("ascii", "replace")
    except (OSError, Untrusted):
        return ""


def _note_answer(run_dir, answer: str) -> None:
    """Kept for the next probe, only by RUN_DIR's owner (a probe run by root leaves nothing
    in another user's folder), and only when it changed."""
    import contextlib

    # A full or foreign RUN_DIR: the next probe does not hold, nothing worse.
    if _last_answer(run_dir) != answer:
        with contextlib.suppress(OSError, Untrusted):
            write_run_file(run_dir, LAST_ANSWER_FILE, answer.encode())


def _hold_seconds(argv: list[str]) -> float | None:
    """SECONDS of `--hold SECONDS`, 0 without it, None when the arguments are not that."""
    if not argv:
        return 0.0
    if len(argv) == 2 and argv[0] == "--hold" and argv[1].isascii() and argv[1].isdigit():
        seconds = int(argv[1])
        return float(seconds) if seconds <= MAX_HOLD_S else None
    return None


def main(argv: list[str]) -> int:
    hold_s = _hold_seconds(argv)
    if hold_s is None:
        print(
            f"usage: python -m worker.surface.health [--hold SECONDS] (SECONDS a whole number from "
            f"0 to {MAX_HOLD_S})",
            file=sys.stderr,
        )
        return 1  # a probe reads any failure as unhealthy; Docker reserves 2
    if os.environ.get("ENV_FILE") or os.path.isfile(".env"):
        # Only then: python-dotenv and the settings module cost more than the check itself.
        from worker.settings import SettingError, load_environment

        try:
            load_environment()
        except SettingError as error:
            print(f"rasa-model-rotator: {error}", file=sys.stderr)
            return 1
    verdict = check(run_dir_of(os.environ), hold_s)
    print("\n".join(verdict.lines()))
    return 0 if verdict.healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
