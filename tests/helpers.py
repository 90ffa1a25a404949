"""Shared test helpers: real model archives, the tool started the way a user starts it."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def end_process(process: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `grace_s`."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def settings_names() -> tuple[str, ...]:
    """Every variable the tool reads as a setting: a caller's exported one (LOG_FORMAT=json,
    RASA_URL, ...) must never reach a test's tool unless the test sets it."""
    from worker.settings import DECLARED

    return tuple(declared.name for declared in DECLARED)


def environment_without_settings() -> dict[str, str]:
    """The caller's environment less every setting of the tool."""
    names = set(settings_names())
    return {k: v for k, v in os.environ.items() if k not in names}


def model_bytes(payload_size: int = 64 * 1024, model_id: str = "m1", seed: int | None = None,
                compresslevel: int = 1) -> bytes:
    """A Rasa-like archive: components/ then metadata.json, gzip-compressed tar."""
    buffer = io.BytesIO()
    write_model(buffer, payload_size, model_id, compresslevel=compresslevel)
    return buffer.getvalue()


def write_model(target, payload_size: int = 64 * 1024, model_id: str = "m1",
                chunk_pause_s: float = 0.0, chunks: int = 1, compresslevel: int = 1,
                stop_after_chunk: int | None = None) -> None:
    """Stream an archive into `target` (a path or a binary file) the way Rasa does:
    tarfile.open(final_path, "w:gz"), members written one after another.

    `chunk_pause_s` between `chunks` components makes a slow write; `stop_after_chunk`
    abandons the write half-way (the file is then closed, truncated, as after a kill).
    """
    owned = isinstance(target, (str, Path))
    raw = open(target, "wb") if owned else target  # noqa: SIM115 - closed below
    tar = tarfile.open(  # noqa: SIM115 - left unclosed on purpose to abandon a write
        fileobj=raw, mode="w:gz", compresslevel=compresslevel)
    per_chunk = max(1, payload_size // chunks)
    for index in range(chunks):
        data = os.urandom(per_chunk)
        info = tarfile.TarInfo(f"components/part-{index}.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.fileobj.flush()
        raw.flush()
        if stop_after_chunk is not None and index + 1 >= stop_after_chunk:
            # A killed training: the kernel closes the file as it is, truncated.
            if owned:
                raw.close()
            return
        if chunk_pause_s:
            time.sleep(chunk_pause_s)
    metadata = json.dumps({"model_id": model_id, "trained_at": "2026-11-26T10:10:10"}).encode()
    info = tarfile.TarInfo("metadata.json")
    info.size = len(metadata)
    tar.addfile(info, io.BytesIO(metadata))
    tar.close()
    if owned:
        raw.close()


def set_mtime(path: Path, when: float) -> None:
    os.utime(path, (when, when))


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_TEST_PORT = 20000  # below: ports that services (databases, Rasa's 5005) may ask for


def free_port() -> int:
    """A TCP port free now on all IPv4 addresses, for a tool or program started next to bind.

    Not one from bind(0): that port is free only while the probe holds it, and once it is
    closed the kernel may hand it to any other socket binding port 0 or connecting out (this
    busy machine runs other tests and runs), before the tool binds it; `python -m worker` then
    refuses it in one line and exits 2. The kernel never hands out on its own a port below
    its ephemeral range (ip_local_port_range, only read here): one picked there at random
    stays free unless someone asks for that very port."""
    first, last = (int(port) for port in EPHEMERAL_PORTS.read_text().split())
    outside = [*range(LOWEST_TEST_PORT, first), *range(last + 1, 65536)]
    pick = random.SystemRandom()  # not `random`: a test may have seeded it
    for _ in range(100 if outside else 0):
        port = pick.choice(outside)
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue  # in use, or closing (TIME_WAIT): another one
            return port
    raise AssertionError(f"no free port from {LOWEST_TEST_PORT} outside the ephemeral "
                         f"range {first}-{last}")


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05, message=""):
    """Poll `condition` until it returns a truthy value; fail with `message` at the deadline.

    `message` may be a function, called at the deadline: a text made at the call shows the
    state before the wait (a tool's output was still empty then), not the one that failed."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for: {text or condition}")
        time.sleep(interval)


def wait_for_latest(folder: Path, expected: bytes, timeout: float = 60.0,
                    message: str = "") -> None:
    """Wait until `folder`/latest.tar.gz holds exactly `expected`; fail with `message` (or a
    plain one) at the deadline."""
    latest = folder / "latest.tar.gz"
    wait_for(lambda: content_of(latest) == expected, timeout,
             message=message or f"{latest} to hold the expected model ({len(expected)} bytes)")


def model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tar.gz"))


def content_of(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class CollectedOutput:
    """Collects a child process's merged stdout/stderr, line by line, in a thread."""

    lines: list[str]
    _lock: threading.Lock

    def _collect_output_of(self, process: subprocess.Popen) -> threading.Thread:
        self.lines = []
        self._lock = threading.Lock()
        pump = threading.Thread(target=self._collect, args=(process,), daemon=True)
        pump.start()
        return pump

    def _collect(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)


def run_worker(command: str, *args: str, cwd: Path, env: dict[str, str],
               timeout: float = 60.0, python: str = sys.executable
               ) -> subprocess.CompletedProcess:
    """`python -m worker COMMAND ARGS...` (status, once, supervisorctl, ...) run to its end,
    its stdout and stderr captured as text."""
    return subprocess.run([python, "-m", "worker", command, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


class RunningTool(CollectedOutput):
    """`python -m worker` (supervisord with reader and rotator), as a user starts it."""

    def __init__(self, workdir: Path, env: dict[str, str], args: tuple[str, ...] = (),
                 prefix: tuple[str, ...] = (), python: str = sys.executable):
        self.workdir = workdir
        self.env = env
        self.python = python
        self.process = subprocess.Popen(
            [*prefix, python, "-m", "worker", *args], cwd=workdir, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            text=True, start_new_session=True)
        self._pump = self._collect_output_of(self.process)

    def wait_for_line(self, text: str, timeout: float = 30.0, after: int = 0) -> str:
        """The first line from `after` on containing `text`. Fails at the deadline with the
        output so far and where each process of the tool is (describe), or at once when the
        tool has ended and all its output is read: the line can no longer come."""
        def found():
            ended = self.ended()  # before the look: then every line is in
            with self._lock:
                line = next((line for line in self.lines[after:] if text in line), None)
            if line is None and ended:
                raise AssertionError(f"the tool ended ({self.describe()}) without a log line "
                                     f"containing {text!r}; its output:\n{self.output}")
            return line
        return wait_for(found, timeout, message=lambda: (
            f"log line containing {text!r}\n{self.output}\n-- the tool's processes --\n"
            f"{self.describe()}"))

    def ended(self) -> bool:
        """The tool has exited and its output is read to the end."""
        return self.process.poll() is not None and not self._pump.is_alive()

    def describe(self) -> str:
        """Where the tool is: its exit status once it has ended (a tool that refuses its
        settings prints one line and exits 2), else its process tree (describe_process_tree)."""
        code = self.process.poll()
        if code is None:
            return describe_process_tree(self.process.pid)
        if code < 0:
            return f"pid {self.process.pid} killed by {signal.Signals(-code).name}"
        return f"pid {self.process.pid} exit status {code}"

    def line_count(self) -> int:
        with self._lock:
            return len(self.lines)

    def ready(self, timeout: float = 60.0) -> None:
        """Both programs RUNNING and the reader connected to the rotator."""
        self.wait_for_line("success: reader entered RUNNING", timeout)
        self.wait_for_line("success: rotator entered RUNNING", timeout)
        self.wait_for_line("rescan requested", timeout)

    def settled(self, timeout: float = 60.0) -> None:
        """ready(), and the reconcile the reader's start-up rescan asks for (THROTTLE_DELAY
        after it) has ended: the start-up's work is done. (`status` is healthy once the
        first reconcile ended, which may be before it.)"""
        import calendar

        from worker.surface.liveness import parse_state

        self.ready(timeout)
        line = self.wait_for_line("rescan requested", timeout)
        stamp = line[:23]  # 2026-12-02T10:47:19.770 (text format; JSON lines hold "time")
        if line.startswith("{"):
            stamp = json.loads(line)["time"][:23]
        asked = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float(
            stamp[19:23])
        delay = float(self.env.get("THROTTLE_DELAY", "5000")) / 1000
        marks_file = Path(self.env["RUN_DIR"]) / "rotator.state"

        def done() -> bool:
            try:
                marks = parse_state(marks_file.read_bytes()) or {}
            except OSError:
                return False
            return marks.get("phase") == "idle" and marks.get("since_wall", 0) > asked + delay
        wait_for(done, timeout, message=lambda: f"the start-up rescan's reconcile ended\n"
                                                f"{self.output}")

    def program_pid(self, name: str) -> int:
        """The pid of supervisord's program `name`, found among supervisord's children."""
        def lookup():
            for child in _children(self.process.pid):
                if f"-m worker {name}" in _cmdline(child):
                    return child
            return None
        return wait_for(lookup, 30, message=f"a running {name} program")

    def command(self, command: str, *args: str, timeout: float = 60.0,
                **settings: str) -> subprocess.CompletedProcess:
        """`python -m worker COMMAND ...` beside this tool: its folder, its settings (and
        `settings` on top), as an operator runs it."""
        return run_worker(command, *args, cwd=self.workdir, env={**self.env, **settings},
                          timeout=timeout, python=self.python)

    def status(self, *args: str, **settings: str) -> subprocess.CompletedProcess:
        return self.command("status", *args, **settings)

    def once(self, *args: str, **settings: str) -> subprocess.CompletedProcess:
        return self.command("once", *args, **settings)

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        """supervisorctl for this instance (`python -m worker supervisorctl` reads the control
        socket's password from RUN_DIR; plain supervisorctl is refused)."""
        return self.command("supervisorctl", *args)

    def stop(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._pump.join(5)
        return self.process.returncode


def describe_process_tree(root: int) -> str:
    """Every process under `root` (itself included): its command, its kernel state, where it
    waits (wchan, and its kernel stack when readable, as root) and its open fds."""
    lines = []
    pending = [(root, 0)]
    while pending:
        pid, depth = pending.pop()
        indent = "  " * depth
        proc = Path(f"/proc/{pid}")
        try:
            status = dict(line.split(":\t", 1) for line in
                          (proc / "status").read_text().splitlines() if ":\t" in line)
        except OSError:
            lines.append(f"{indent}{pid}: gone")
            continue
        lines.append(f"{indent}{pid} {_cmdline(pid).strip()!r} State {status.get('State')} "
                     f"Threads {status.get('Threads')}")
        try:  # the process may end while it is looked at
            for task in sorted((proc / "task").iterdir(), key=lambda t: int(t.name)):
                stack = _read_or(task / "stack", "").strip().replace("\n", " <- ")
                lines.append(f"{indent}  task {task.name} "
                             f"{_read_or(task / 'comm', '?').strip()} "
                             f"{_read_or(task / 'stat', '').split(') ')[-1][:1]} wchan "
                             f"{_read_or(task / 'wchan', '?')} {stack}")
            fds = sorted((proc / "fd").iterdir(), key=lambda f: int(f.name))
            lines.append(indent + "  fds " + ", ".join(
                f"{fd.name}->{_readlink_or(fd)}" for fd in fds))
        except OSError as error:
            lines.append(f"{indent}  {error}")
        pending += [(child, depth + 1) for task in _tasks(pid) for child in
                    _children(pid, task)]
    return "\n".join(lines)


def _read_or(path: Path, default: str) -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _readlink_or(path: Path) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return "?"


def _tasks(pid: int) -> list[int]:
    try:
        return [int(task) for task in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _children(pid: int, task: int | None = None) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{task or pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def settings_in(tmp_path: Path, **settings: str):
    """The tool's settings as its programs read them, for an instance in tmp_path: models in
    tmp_path/models (made here), RUN_DIR tmp_path/run, then `settings` (variables by name).
    Nothing from the caller's environment counts."""
    from worker.settings import read_settings

    result = read_settings({"TARGET_DIR": str(tmp_path / "models"),
                            "RUN_DIR": str(tmp_path / "run"), **settings})
    result.target_dir.mkdir(parents=True, exist_ok=True)
    return result


def tool_environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    """A clean environment for one instance: its own models folder and RUN_DIR."""
    env = environment_without_settings()
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env["RUN_DIR"] = str(tmp_path / "run")
    env["THROTTLE_DELAY"] = "300"
    env["RESCAN_INTERVAL"] = "0"  # events only, unless a test asks for the rescan
    env.update(settings)
    return env
