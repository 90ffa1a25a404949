"""The light health check (`python -m worker.surface.health`, worker/surface/health.py) against the
tool started as a user starts it: it answers as `status` does (exit status and verdict line) in
each state, and `--hold` answers at once when the verdict changes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import model_bytes, tool_environment, wait_for
from worker.runfiles import run_dir_of
from worker.settings import read_settings
from worker.surface.liveness import format_state


def run(env: dict[str, str], cwd: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def verdicts(tool) -> tuple[tuple[int, str], tuple[int, str]]:
    """(exit status, verdict lines) of the light check and of `status`."""
    light = run(tool.env, tool.workdir, "worker.surface.health")
    full = run(tool.env, tool.workdir, "worker", "status")
    return ((light.returncode, _verdict(light.stdout)), (full.returncode, _verdict(full.stdout)))


def _verdict(output: str) -> str:
    """The verdict word and its waiting/problem lines: what both commands print first."""
    lines = output.splitlines()
    return "\n".join([lines[0], *(line for line in lines[1:]
                                  if line.startswith(("  waiting:", "  problem:")))])


def assert_same(tool, word: str, judged=None) -> tuple[int, str]:
    """The light check and `status` agree on word; judged: their verdicts, already taken."""
    light, full = judged or verdicts(tool)
    assert light == full, f"light check {light} but status {full}"
    assert light[1].startswith(f"rasa-model-rotator: {word}"), light
    assert light[0] == (0 if word == "healthy" else 1), light
    return light


def publish_one(tool) -> None:
    models = tool.workdir / "models"
    (models / "20261126-101010-brave-fox.tar.gz").write_bytes(model_bytes(10_000))
    wait_for(lambda: (models / "latest.tar.gz").exists(), 60,
             message=f"a model published\n{tool.output}")


def test_healthy_answers_like_status(start_tool, models):
    tool = start_tool()
    tool.ready()
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    assert_same(tool, "healthy")


def test_no_run_dir_and_no_tool_answer_like_status(tmp_path, models):
    not_started = SimpleNamespace(env=tool_environment(tmp_path), workdir=tmp_path)
    assert not (tmp_path / "run").exists()
    _, lines = assert_same(not_started, "UNHEALTHY")
    assert "supervisord's state: RUN_DIR" in lines and "cannot be opened" in lines
    (tmp_path / "run").mkdir(mode=0o700)
    _, lines = assert_same(not_started, "UNHEALTHY")
    assert "supervisord is not running (no programs.state in RUN_DIR" in lines


def test_starting_a_stopped_reader_and_a_stopped_rotator_answer_like_status(start_tool,
                                                                            models):
    tool = start_tool()
    tool.ready()
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    run_dir = tool.workdir / "run"
    rotator = tool.program_pid("rotator")

    # Its marks say it is starting (as a rotator does until its queue socket is served).
    marks = run_dir / "rotator.state"
    judged = verdicts_while_planted(tool, marks, lambda: _replace(marks, format_state(
        {"pid": rotator, "phase": "starting", "since": time.monotonic(), "bytes": 0,
         "reconciles": 0})))
    _, lines = assert_same(tool, "starting", judged)
    assert "rotator is starting" in lines

    stopped = run(tool.env, tool.workdir, "worker", "supervisorctl", "stop", "reader")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    _, lines = assert_same(tool, "UNHEALTHY")
    assert "program reader is STOPPED" in lines
    run(tool.env, tool.workdir, "worker", "supervisorctl", "start", "reader")

    publish_one(tool)  # a reconcile writes the rotator's real marks again
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    os.kill(rotator, signal.SIGSTOP)
    try:
        _, lines = assert_same(tool, "UNHEALTHY")
        assert f"program rotator: pid {rotator} is stopped (SIGSTOP" in lines
    finally:
        os.kill(rotator, signal.SIGCONT)


def test_a_rotator_that_does_not_answer_on_its_queue_socket_is_unhealthy(start_tool, models):
    """A rotator that runs (not stopped, as /proc sees it) but whose queue socket takes a
    connection and says nothing: what a frozen or wedged process looks like to the probe.
    Made real by a listener that never answers, put in the queue socket's place."""
    tool = start_tool()
    tool.ready()
    publish_one(tool)
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    queue = tool.workdir / "run" / "queue.sock"
    (tool.workdir / "run" / "queue.sock.real").unlink(missing_ok=True)
    queue.rename(tool.workdir / "run" / "queue.sock.real")
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        silent.bind(str(queue))
        silent.listen(8)
        _, lines = assert_same(tool, "UNHEALTHY")
        assert "rotator does not answer on its queue socket within 2 s" in lines
    finally:
        silent.close()
        queue.unlink()
        (tool.workdir / "run" / "queue.sock.real").rename(queue)
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"healthy again\n{tool.output}")


def test_supervisord_stopped_killed_or_a_program_stopped_is_unhealthy(start_tool, models):
    """What supervisord wrote is checked against /proc: a SIGSTOPped supervisord restarts no
    program, a SIGSTOPped reader reads no event, and after kill -9 of supervisord its file
    still says RUNNING: each is unhealthy at once."""
    tool = start_tool()
    tool.ready()
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    supervisord, reader = tool.process.pid, tool.program_pid("reader")
    for pid, said in ((supervisord, f"supervisord (pid {supervisord}) is stopped"),
                      (reader, f"program reader: pid {reader} is stopped")):
        os.kill(pid, signal.SIGSTOP)
        try:
            _, lines = assert_same(tool, "UNHEALTHY")
            assert said in lines
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"healthy\n{tool.output}")
    os.kill(supervisord, signal.SIGKILL)
    tool.process.wait(10)
    _, lines = assert_same(tool, "UNHEALTHY")
    assert f"supervisord is not running (pid {supervisord} is gone)" in lines


@pytest.mark.parametrize("planted", ["garbage", "fifo", "link", "huge"])
@pytest.mark.parametrize("name", ["rotator.state", "programs.state"])
def test_garbage_or_hostile_run_dir_files_answer_like_status(start_tool, models, tmp_path,
                                                             planted, name):
    tool = start_tool()
    tool.ready()
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    state = tool.workdir / "run" / name
    honest = state.read_text()

    def plant() -> None:
        state.unlink(missing_ok=True)
        if planted == "garbage":
            state.write_text('pid=' if name == "rotator.state" else honest.replace(" ", "  x ", 1))
        elif planted == "fifo":
            os.mkfifo(state)
        elif planted == "link":
            secret = tmp_path / "secret"
            secret.write_text(honest)
            state.symlink_to(secret)
        else:
            state.write_text(" " * 100_000 + honest)

    light, full = verdicts_while_planted(tool, state, plant)
    assert light[0] == 1, light  # never healthy on a state it cannot trust
    assert light == full, f"light check {light} but status {full}"
    assert light[1].startswith("rasa-model-rotator: "), light
    if planted == "link" and name == "programs.state":  # (marks not trusted: none, "starting")
        assert f"{name} in RUN_DIR is not trusted: a symbolic link" in light[1]


def verdicts_while_planted(tool, path: Path, plant) -> tuple[tuple[int, str], tuple[int, str]]:
    """verdicts() taken while the file plant() put at path stood throughout both checks.

    The tool rewrites its state files when something happens (the rotator's periodic rescan,
    a change of supervisord's states): on a busy machine a rewrite can land between planting
    and checking, and the verdict is then on the tool's file, not on the planted one."""
    for _ in range(5):
        try:
            plant()
        except FileExistsError:  # the tool's rename landed between unlink and create
            continue
        planted_as = _identity(path)
        judged = verdicts(tool)
        if _identity(path) == planted_as:
            return judged
    pytest.fail(f"the tool rewrote {path.name} during each of 5 checks\n{tool.output}")


def _replace(path: Path, text: str) -> None:
    """A new file at path (a new inode, as the tool's own rename makes)."""
    path.unlink(missing_ok=True)
    path.write_text(text)


def _identity(path: Path) -> tuple[int, int, int]:
    """What tells one file at path from the next one put there (rename or unlink + create)."""
    found = os.lstat(path)
    return found.st_ino, found.st_mode, found.st_mtime_ns


def test_programs_state_lines_are_read_back_and_nothing_else():
    from worker.surface.program_states import Unreadable, parse

    good = b"supervisord 41\nrotator RUNNING 42 1764662400.5\nreader STARTING 0 0.0\n"
    assert parse(good) == (41, {"rotator": ("RUNNING", 42, 1764662400.5),
                                "reader": ("STARTING", 0, 0.0)})
    for bad in (b"", b"rotator RUNNING 42 1.0\n", b"supervisord 0\n", b"supervisord -1\n",
                b"supervisord 41\nrotator RUNNING 42\n",
                b"supervisord 41\nrotator RUNNING 42 1.0\nrotator RUNNING 43 1.0\n",
                b"supervisord 41\nrotator DANCING 42 1.0\n",
                b"supervisord 41\nrotator RUNNING -42 1.0\n",
                b"supervisord 41\nrotator RUNNING 42 soon\n",
                b"supervisord 41\nrotator RUNNING 42 inf\n",
                b"supervisord 41\nrotator RUNNING 42 nan\n",
                b"supervisord 41\nrotator RUNNING 42 -1.0\n",
                b"supervisord 41\nrotator RUNNING 42 1e300\n",
                "supervisord 41\nrotat\u00f6r RUNNING 42 1.0\n".encode(),
                b"supervisord 99999999999\n"):
        with pytest.raises(Unreadable):
            parse(bad)


def hold(tool, seconds: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "worker.surface.health", "--hold", str(seconds)],
                            cwd=tool.workdir, env=tool.env, stdout=subprocess.PIPE, text=True)


def test_a_holding_check_answers_at_once_when_the_rotator_stops_and_when_it_recovers(
        start_tool, models):
    tool = start_tool()
    tool.ready()
    publish_one(tool)  # a second reconcile: healthy and settled, so the check holds
    wait_for(lambda: verdicts(tool)[0][0] == 0, 60, message=f"healthy\n{tool.output}")
    first = hold(tool, 1)  # the first holding probe answers at once, and notes it
    assert first.wait(60) == 0, first.communicate()
    holding = hold(tool, 240)
    rotator = tool.program_pid("rotator")
    try:
        time.sleep(1)
        assert holding.poll() is None, "a settled healthy check holds"
        os.kill(rotator, signal.SIGSTOP)
        # Far less than the 240 s hold: the check sees the change on its next look.
        out, _ = holding.communicate(timeout=90)
        assert holding.returncode == 1 and f"pid {rotator} is stopped" in out, out
    finally:
        os.kill(rotator, signal.SIGCONT)
        if holding.poll() is None:
            holding.kill()
            holding.wait()
    # Healthy again, after an answer that was not: said at once, not after the hold.
    recovered = hold(tool, 240)
    out, _ = recovered.communicate(timeout=90)
    assert recovered.returncode == 0 and "healthy" in out, out


def test_bad_arguments_are_one_line_and_unhealthy(tmp_path):
    env = tool_environment(tmp_path)
    for args in (["--hold"], ["--hold", "x"], ["--hold", "100000"], ["--json"]):
        result = run(env, tmp_path, "worker.surface.health", *args)
        assert result.returncode == 1, result
        assert result.stderr.count("\n") == 1 and "--hold SECONDS" in result.stderr, result


@pytest.mark.parametrize("case", ["default", "relative", "trailing-slash", "linked-parent",
                                  "xdg"])
def test_run_dir_is_found_as_the_settings_find_it(tmp_path, monkeypatch, case):
    real = tmp_path / "real"
    (real / "models").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.chdir(tmp_path / "link")
    env = {"TARGET_DIR": "models"}
    if case == "relative":
        env["RUN_DIR"] = "run"
    elif case == "trailing-slash":
        env["RUN_DIR"] = str(tmp_path / "link" / "run") + "/"
    elif case == "linked-parent":
        env["RUN_DIR"] = str(tmp_path / "link" / "sub" / ".." / "run")
        (real / "sub").mkdir()
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # RUN_DIR must stay short
        if case == "xdg":
            os.symlink(short, Path(short) / "link")
            monkeypatch.setenv("XDG_RUNTIME_DIR", str(Path(short) / "link" / "." / ""))
        assert run_dir_of(env) == str(read_settings(env, read_only=True).run_dir)


def test_the_light_check_imports_no_settings_folder_logic_or_logging(tmp_path):
    env = tool_environment(tmp_path)
    probe = ("import runpy, sys; sys.argv = ['worker.surface.health']\n"
             "try:\n    runpy.run_module('worker.surface.health', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(sorted(m for m in sys.modules if m.startswith('worker') or m in "
             "('logging', 'dataclasses', 'pathlib', 'xml.etree.ElementTree', 'dotenv', "
             "'json', 're', 'xmlrpc.client', 'http.client', 'socket', 'enum', "
             "'supervisor')))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    loaded = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own list
    assert loaded == ["worker", "worker.runfiles", "worker.surface", "worker.surface.liveness",
                      "worker.surface.program_states", "worker.text"], result.stdout + result.stderr



def test_the_rotator_s_marks_read_back_as_written_and_nothing_else():
    """rotator.state is one line of name=value fields (no json in the check): what the rotator
    writes reads back the same; anything else is no marks (None) or, for a known field with
    a wrong value, its text (which `judge` calls unreadable)."""
    from worker.surface.liveness import judge, parse_state

    state = {"pid": 7, "phase": "idle", "since": 812.25, "since_wall": 1764662400.123456,
             "bytes": 0, "reconciles": 3}
    assert parse_state(format_state(state).encode()) == state
    for not_marks in (b'{"pid": 7}', b"pid=7 pid=8", b"pid=7 owner=root", b"pid",
                      "pid=7 phase=\u00e9".encode()):
        assert parse_state(not_marks) is None, not_marks
    for wrong in (b"pid=7 since=soon", b"pid=7 since=1e999", b"pid=7 since=nan",
                  b"pid=7 since=1.0 bytes=-1", b"pid=7 since=1.0 bytes=99999999999999999999"):
        assert judge(parse_state(wrong), 7, "/nonexistent") == (
            "unhealthy", "rotator.state in RUN_DIR is unreadable"), wrong
    assert judge(parse_state(b"pid=x since=1.0"), 7, "/nonexistent")[0] == "starting"


def test_the_probes_command_answers_like_status_also_with_a_dotenv(start_tool, models):
    """What the image's HEALTHCHECK and the Kubernetes probes run (`python -S -c ...`: no
    site, no runpy) gives the verdict `status` gives. With a .env it loads site itself
    (python-dotenv is in site-packages, which -S leaves out) and reads RUN_DIR from it."""
    from tests.test_container import probe_command

    tool = start_tool()
    tool.ready()
    wait_for(lambda: verdicts(tool)[1][0] == 0, 60, message=f"status healthy\n{tool.output}")
    probe = probe_command()
    assert probe[1:3] == ["-S", "-c"], probe

    def answer(env):
        result = subprocess.run(probe, cwd=tool.workdir, env=env, capture_output=True,
                                text=True, timeout=60)
        return result.returncode, result.stdout + result.stderr

    code, output = answer(tool.env)
    assert code == 0 and output.startswith("rasa-model-rotator: healthy"), output
    without_run_dir = {k: v for k, v in tool.env.items() if k != "RUN_DIR"}
    code, output = answer(without_run_dir)
    assert code == 1 and "healthy" not in output.splitlines()[0], output
    (tool.workdir / ".env").write_text(f"RUN_DIR={tool.env['RUN_DIR']}\n")
    code, output = answer(without_run_dir)
    assert code == 0 and output.startswith("rasa-model-rotator: healthy"), output
