"""`python -m worker status`, LOG_FORMAT=json and METRICS_PORT, on a running tool."""

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import (
    PROJECT_ROOT,
    content_of,
    free_port,
    model_bytes,
    run_worker,
    wait_for,
    wait_for_latest,
    write_model,
)
from worker.folder.files import folder_lock
from worker.surface.liveness import parse_state


def context_switches(pid: int) -> int:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as lines:
            total += sum(int(line.split()[1]) for line in lines if "ctxt_switches" in line)
    return total


def test_status_tells_what_is_published_and_what_runs(start_tool, models):
    tool = start_tool()
    tool.ready()
    before = tool.status()
    assert before.returncode == 0, before.stdout + before.stderr
    assert "published: nothing yet" in before.stdout
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 100_000, model_id="fox-42")
    wait_for_latest(models, model.read_bytes())
    text = tool.status()
    assert text.returncode == 0
    assert "rasa-model-rotator: healthy" in text.stdout
    assert f"source: {model}" in text.stdout
    assert "model_id: fox-42" in text.stdout and "trained_at: 2026-11-26T10:10:10" in text.stdout
    assert "program reader: RUNNING" in text.stdout and "program rotator: RUNNING" in text.stdout
    report = json.loads(tool.status("--json").stdout)
    assert report["healthy"] is True
    assert report["published"]["source"] == str(model)
    assert report["published"]["size"] == model.stat().st_size
    assert report["programs"]["rotator"]["state"] == "RUNNING"


def test_status_is_unhealthy_when_a_program_is_down(start_tool):
    tool = start_tool()
    tool.ready()
    assert tool.supervisorctl("stop", "reader").returncode == 0
    result = tool.status()
    assert result.returncode == 1
    assert "UNHEALTHY" in result.stdout and "program reader is STOPPED" in result.stdout


def test_status_is_unhealthy_without_supervisord(tmp_path):
    from tests.helpers import tool_environment

    result = run_worker("status", "--json", cwd=tmp_path, env=tool_environment(tmp_path))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["healthy"] is False
    assert report["problems"][0].startswith("supervisord's state: RUN_DIR "), report


def test_json_logs_are_one_object_per_line(start_tool, models):
    tool = start_tool(LOG_FORMAT="json")
    tool.ready()
    model = models / "m.tar.gz"
    write_model(model, 50_000)
    wait_for_latest(models, model.read_bytes())
    line = tool.wait_for_line('"event": "published"')
    entry = json.loads(line)
    assert {"time", "level", "program", "event", "message", "path"} <= set(entry)
    assert entry["program"] == "rotator" and entry["path"] == str(model)
    entries = [json.loads(x) for x in tool.lines]  # every line, supervisord's included
    assert {e["program"] for e in entries} >= {"reader", "rotator", "supervisord"}
    spawned = [e for e in entries if e["program"] == "supervisord" and e["event"] == "spawned"]
    assert {e["process"] for e in spawned} >= {"reader", "rotator", "model-server"}
    assert all(e["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL") for e in entries)


def test_prometheus_metrics(start_tool, models):
    port = free_port()
    tool = start_tool(METRICS_PORT=str(port))
    tool.ready()
    for name in ("a", "b"):
        write_model(models / f"{name}.tar.gz", 50_000)
        wait_for(lambda n=name: content_of(models / "latest.tar.gz")
                 == (models / f"{n}.tar.gz").read_bytes())
    wait_for(lambda: not (models / "a.tar.gz").exists())

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
            return page.read().decode()

    text = wait_for(lambda: (lambda t: t if "rotator_deletions_total 1.0" in t else None)(
        scrape()), 10, message="metrics after a publish and a deletion")
    assert "rotator_publishes_total 2.0" in text
    assert "rotator_queue_events_total" in text and "rotator_rescans_total" in text
    assert "rotator_last_publish_duration_seconds" in text


def test_a_normal_start_has_no_crit_line_and_the_control_socket_wants_the_password(
        start_tool, tmp_path):
    tool = start_tool()  # as root here: no "running as root" CRIT either
    tool.ready()
    assert " CRIT " not in tool.output, tool.output
    password_file = tmp_path / "run" / "supervisor.password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    password = password_file.read_text().strip()
    assert len(password) >= 32
    plain = subprocess.run([sys.executable, "-m", "supervisor.supervisorctl", "-c",
                            str(PROJECT_ROOT / "conf" / "supervisord.conf"), "status"],
                           env=tool.env, capture_output=True, text=True, timeout=30)
    assert plain.returncode != 0 and "RUNNING" not in plain.stdout, plain.stdout
    ours = tool.supervisorctl("status")
    assert ours.returncode == 0 and re.search(r"rotator\s+RUNNING", ours.stdout), ours.stdout
    report = tool.status("--json")
    assert report.returncode == 0
    assert password not in report.stdout + report.stderr + tool.output + ours.stdout


def test_status_says_starting_until_the_first_reconcile_is_done(start_tool, models):
    latest = models / "latest.tar.gz"
    with folder_lock(latest):  # the rotator's start waits for this lock
        tool = start_tool()
        tool.wait_for_line("success: rotator entered RUNNING")
        starting = tool.status()
        assert starting.returncode == 1, starting.stdout
        assert "rasa-model-rotator: starting" in starting.stdout, starting.stdout
        assert json.loads(tool.status("--json").stdout)["state"] == "starting"
    wait_for(lambda: tool.status().returncode == 0, 30, message="healthy after the start")


def test_a_stopped_rotator_is_unhealthy(start_tool):
    tool = start_tool()
    tool.ready()
    wait_for(lambda: tool.status().returncode == 0, 30, message="healthy")
    rotator = tool.program_pid("rotator")
    os.kill(rotator, signal.SIGSTOP)
    try:
        stopped = tool.status()
        assert stopped.returncode == 1, stopped.stdout
        assert f"program rotator: pid {rotator} is stopped" in stopped.stdout, stopped.stdout
    finally:
        os.kill(rotator, signal.SIGCONT)
    wait_for(lambda: tool.status().returncode == 0, 30, message="healthy again after SIGCONT")


def test_a_rotator_blocked_in_a_reconcile_is_unhealthy_after_the_allowed_time(
        start_tool, models):
    tool = start_tool()
    tool.ready()
    wait_for(lambda: tool.status().returncode == 0, 30, message="healthy")
    # Test-only knob for `status` alone: a 2 s base instead of 60 s (the rotator is unchanged).
    quick = {"ROTATOR_TEST_STUCK_BASE_S": "2"}
    with folder_lock(models / "latest.tar.gz"):  # the next reconcile blocks in flock()
        (models / "m.tar.gz").write_bytes(model_bytes(50_000))
        state = tool.workdir / "run" / "rotator.state"
        wait_for(lambda: parse_state(state.read_bytes())["phase"] == "reconciling", 30,
                 message="the rotator inside a reconcile")
        stuck = wait_for(lambda: (lambda r: r if r.returncode == 1 else None)(
            tool.status(**quick)), 30, message="unhealthy once the allowed time is over")
        assert "rotator stuck: one reconcile has taken" in stuck.stdout, stuck.stdout
        # With the real allowance (60 s + bytes at 2 MiB/s) a few seconds are not stuck.
        assert tool.status().returncode == 0
    wait_for(lambda: tool.status(**quick).returncode == 0, 30, message="healthy again")


def test_an_idle_rotator_stays_healthy_and_is_not_woken_up(start_tool):
    tool = start_tool()
    tool.settled()  # the start-up's work done (healthy may come before its last reconcile)
    wait_for(lambda: tool.status().returncode == 0, 30, message="healthy")
    rotator = tool.program_pid("rotator")
    before = context_switches(rotator)
    time.sleep(4)
    assert context_switches(rotator) - before < 3, "the idle rotator woke up"
    # Idle far longer than the allowed time of a reconcile is no sign of trouble.
    assert tool.status(ROTATOR_TEST_STUCK_BASE_S="1").returncode == 0


def test_status_prints_any_file_name(start_tool, models):
    tool = start_tool(LOG_FORMAT="json")  # the collected log is read as UTF-8 text
    tool.ready()
    name = b"20261126-evil\n2026 rotator INFO forged \xff\x1b[31m.tar.gz"
    path = os.path.join(os.fsencode(models), name)
    with open(path, "wb") as out:
        out.write(model_bytes(50_000))
    wait_for(lambda: content_of(models / "latest.tar.gz") is not None, 30, message="published")
    wait_for(lambda: "source:" in tool.status().stdout, 30, message="the record")
    result = tool.status()
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    source = next(line for line in result.stdout.splitlines() if "source:" in line)
    assert source.endswith("20261126-evil\\n2026 rotator INFO forged \\xff\\x1b[31m.tar.gz"), source
    assert not any(line.startswith("2026 rotator") for line in result.stdout.splitlines())
    assert json.loads(tool.status("--json").stdout)["healthy"] is True


def _redirected_run(tmp_path, mode: str):
    """`python -m worker >> log` (mode "ab") or `> log` (mode "wb"), a model published."""
    from tests.helpers import tool_environment

    models = tmp_path / "models"
    models.mkdir()
    log = tmp_path / "rotator.log"
    log.write_bytes(b"an earlier line\n")
    with open(log, mode) as out:
        process = subprocess.Popen([sys.executable, "-m", "worker"], cwd=tmp_path,
                                   env=tool_environment(tmp_path), stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b"rescan requested" in log.read_bytes(), 30, message="started")
        write_model(models / "m.tar.gz", 50_000)
        wait_for(lambda: b"published" in log.read_bytes(), 30, message="published")
        wait_for(lambda: b"success: reader entered RUNNING" in log.read_bytes(), 30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    return log.read_text()


LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]{4} |"
                  r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (reader|rotator|guard|model-server) )")


def test_appending_to_a_log_file_keeps_what_was_there(tmp_path):
    text = _redirected_run(tmp_path, "ab")
    lines = text.splitlines()
    assert lines[0] == "an earlier line", lines[:3]
    assert all(LINE.match(line) for line in lines[1:]), text
    for wanted in ("spawned: 'rotator'", "rotator INFO published", "stopped: rotator"):
        assert wanted in text, text


def test_overwriting_a_log_file_loses_no_line(tmp_path):
    text = _redirected_run(tmp_path, "wb")
    lines = text.splitlines()
    assert "an earlier line" not in text
    assert all(LINE.match(line) for line in lines), text
    for wanted in ("spawned: 'rotator'", "spawned: 'reader'", "reader INFO watching",
                   "rotator INFO published", "stopped: rotator", "stopped: reader"):
        assert wanted in text, text


# -- issue 18, item 6: publishing never depends on anyone reading our output -----------------

class ToolOnStdout:
    """`python -m worker` with stdout and stderr on `fd` (a pipe nobody reads, /dev/full)."""

    def __init__(self, tmp_path, fd: int, **settings):
        self.env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TARGET_DIR": "models",
                    "RUN_DIR": str(tmp_path / "run"), "THROTTLE_DELAY": "300",
                    "RESCAN_INTERVAL": "0", **settings}
        self.process = subprocess.Popen([sys.executable, "-m", "worker"], cwd=tmp_path,
                                        env=self.env, stdout=fd, stderr=fd,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def a_full_pipe() -> tuple[int, int]:
    """(read end, write end) of a pipe filled to the brim, the write end blocking again."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(write_end, True)
    return read_end, write_end


def publishes_on(tmp_path, models, fd: int, chatter: int = 0, **settings) -> None:
    """The tool started on stdout `fd` publishes a model; `chatter` broken files first make
    one WARNING line each (more than the pipes between the programs and stdout hold)."""
    for index in range(chatter):
        (models / f"20261126-0000{index:04d}-broken.tar.gz").write_bytes(b"not an archive")
    tool = ToolOnStdout(tmp_path, fd, **settings)
    try:
        time.sleep(3)
        data = model_bytes(model_id="read-or-not")
        (models / "20261202-101010-new.tar.gz").write_bytes(data)
        wait_for_latest(models, data, 60,
                        message="published while nobody reads stdout")
        assert tool.process.poll() is None, tool.process.returncode
    finally:
        tool.stop()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_stdout_nobody_reads_never_stops_publishing(tmp_path, models, log_format):
    read_end, write_end = a_full_pipe()
    try:
        publishes_on(tmp_path, models, write_end, chatter=1500, LOG_FORMAT=log_format)
    finally:
        os.close(write_end)
        os.close(read_end)


@pytest.mark.parametrize("stdout", ["/dev/full", "broken pipe"])
def test_a_stdout_that_fails_never_stops_publishing(tmp_path, models, stdout):
    if stdout == "/dev/full":
        fd = os.open("/dev/full", os.O_WRONLY)
    else:
        read_end, fd = os.pipe()
        os.close(read_end)
    try:
        publishes_on(tmp_path, models, fd)
    finally:
        os.close(fd)


def test_a_log_reader_that_dies_mid_run_ends_nothing(tmp_path, models):
    """Item 6: after the reader of stdout died, an operator's `supervisorctl restart
    model-server` ended supervisord at its next own line (text mode)."""
    read_end, write_end = os.pipe()
    tool = ToolOnStdout(tmp_path, write_end)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as reader:
            seen = b""
            while b"success: rotator entered RUNNING" not in seen:
                chunk = reader.read1(65536)
                assert chunk, seen.decode(errors="replace")
                seen += chunk
        # The reader is gone now: every write to stdout fails with EPIPE.
        restart = run_worker("supervisorctl", "restart", "model-server", cwd=tmp_path,
                             env=tool.env)
        assert "started" in restart.stdout, restart.stdout + restart.stderr
        time.sleep(2)
        assert tool.process.poll() is None, tool.process.returncode
        data = model_bytes(model_id="after-the-reader")
        (models / "20261202-101010-after.tar.gz").write_bytes(data)
        wait_for_latest(models, data, 60,
                        message="published after the log reader died")
        assert tool.process.poll() is None, tool.process.returncode
    finally:
        tool.stop()
