"""The container home on a real Docker engine: the image built from the Dockerfile, run with
`docker run` (always `--network host`: the engines on our CI machines have no bridge).

One image per test session (tagged uniquely, removed at the end with every container these
tests started). No engine answering is a failure, never a skip: CI starts one (.ci/peers)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, content_of, model_bytes, wait_for
from tests.test_container import light_check

UID, GID = 1000, 2000
RUN_DIR = "/tmp/rasa-model-rotator"
# The image's own interval (1 s) and timeout (above its probes' hold); one failure is enough.
FAST_HEALTH = ("--health-retries", "1")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}{result.stderr}")
    return result


@pytest.fixture(scope="session")
def image():
    """The image, built once per session with `docker build --network host`."""
    if shutil.which("docker") is None:
        pytest.fail("no docker client: these tests need a Docker engine (CI starts one with "
                    "../shared/tools/docker-sandbox up, see .ci/peers)")
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True, timeout=30)
    if engine.returncode != 0:
        pytest.fail("no Docker engine answers (`docker version` failed): start one, e.g. "
                    f"../shared/tools/docker-sandbox up\n{engine.stderr}")
    tag = f"rasa-model-rotator-test:{uuid.uuid4().hex[:12]}"
    # --force-rm: a failed build leaves no intermediate container behind.
    docker("build", "--network", "host", "--force-rm", "-q", "-t", tag, str(PROJECT_ROOT),
           timeout=600)
    yield tag
    docker("rmi", "-f", tag, check=False)


class Container:
    def __init__(self, cid: str):
        self.id = cid

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.id).stdout.strip()

    @property
    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def health(self) -> str:
        return self.inspect("{{.State.Health.Status}}")

    def wait_health(self, wanted: str, timeout: float = 60) -> None:
        wait_for(lambda: self.health() == wanted, timeout, interval=0.2,
                 message=f"docker reports {wanted}\n{self.logs()}")

    def logs(self) -> str:
        result = docker("logs", self.id, check=False)
        return result.stdout + result.stderr

    def log_lines(self) -> list[str]:
        return [line for line in self.logs().splitlines() if line.strip()]

    def exec(self, *command: str, user: str | None = None, workdir: str | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        return docker("exec", *(("--user", user) if user else ()),
                      *(("--workdir", workdir) if workdir else ()), self.id, *command,
                      check=False, timeout=timeout)

    def kill(self, pid: int, signal_name: str) -> None:
        """A signal to a process in the container (the image has no `kill` binary)."""
        sent = self.exec("python", "-c", f"import os, signal; os.kill({pid}, "
                         f"signal.{signal_name})")
        assert sent.returncode == 0, sent.stdout + sent.stderr

    def program_pid(self, name: str) -> int:
        """The pid (in the container) of a program, from supervisord."""
        listed = self.exec("python", "-m", "worker", "supervisorctl", "pid", name)
        assert listed.stdout.strip().isdigit(), listed.stdout + listed.stderr
        return int(listed.stdout)


@pytest.fixture
def run_container(image, tmp_path):
    """`docker run -d --network host ... IMAGE`; every container removed at teardown."""
    started: list[Container] = []

    def run(*options: str, env: dict[str, str] | None = None) -> Container:
        env_options = [part for k, v in (env or {}).items() for part in ("-e", f"{k}={v}")]
        cid = docker("run", "-d", "--network", "host", "-e", "THROTTLE_DELAY=300",
                     *env_options, *options, image).stdout.strip()
        started.append(Container(cid))
        return started[-1]

    yield run
    for container in started:
        docker("rm", "-f", "-v", container.id, check=False)


def owned_folder(path: Path, uid: int = UID, gid: int = GID) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o2775)
    return path


def publish_one(models: Path, container: Container, name: str = "20261126-101010-brave-fox"):
    model = models / f"{name}.tar.gz"
    temporary = models / f".{name}.partial"
    temporary.write_bytes(model_bytes(100_000, model_id=name))
    os.chown(temporary, UID, GID)
    temporary.rename(model)
    wait_for(lambda: content_of(models / "latest.tar.gz") == model.read_bytes(), 60,
             message=f"{model.name} published\n{container.logs()}")
    return model


def all_running(container: Container):
    """supervisorctl's status when it lists every program RUNNING, else None."""
    listed = container.exec("python", "-m", "worker", "supervisorctl", "status")
    programs = ("model-server", "reader", "rotator")
    if all(re.search(rf"^{program}\s+RUNNING", listed.stdout, re.M) for program in programs):
        return listed
    return None


def test_pid1_publishes_reports_health_and_stops_quickly(run_container, tmp_path):
    models = owned_folder(tmp_path / "models")
    container = run_container(*FAST_HEALTH, "-v", f"{models}:/app/models")
    container.wait_health("healthy")
    # supervisord runs in PID 1 (`python -m worker` runs it in its own process).
    pidfile = container.exec("cat", f"{RUN_DIR}/supervisord.pid")
    assert pidfile.stdout.strip() == "1", pidfile.stdout + pidfile.stderr
    assert container.exec("cat", "/proc/1/cmdline").stdout.split("\0")[:3] == \
        ["python", "-m", "worker"]
    # healthy needs reader and rotator RUNNING; the model server leaves STARTING after
    # startsecs=1, which a loaded machine can put after the first healthy probe.
    listed = wait_for(lambda: all_running(container), 30, interval=0.5,
                      message=lambda: container.exec("python", "-m", "worker",
                                                     "supervisorctl", "status").stdout)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    # A normal start: no CRIT line (no unauthenticated control socket, no root).
    assert " CRIT " not in container.logs(), container.logs()

    model = publish_one(models, container)
    assert os.stat(models / "latest.tar.gz").st_uid == UID
    status = container.exec("python", "-m", "worker", "status")
    assert status.returncode == 0 and model.name in status.stdout, status.stdout
    # The Kubernetes probes' command, also from another working directory (a pod's
    # workingDir): PYTHONPATH finds worker/.
    for workdir in ("/app", "/"):
        probe = container.exec(*light_check(), workdir=workdir)
        assert probe.returncode == 0, (workdir, probe.stdout + probe.stderr)
        assert probe.stdout.startswith("rasa-model-rotator: healthy"), probe.stdout

    # PID 1 adopts and reaps an orphan (the shell exits at once, its `sleep` is orphaned).
    orphan = container.exec("sh", "-c", "sleep 1 & echo $!").stdout.strip()
    assert orphan.isdigit(), orphan
    parent = container.exec("sh", "-c", f"cut -d' ' -f4 /proc/{orphan}/stat").stdout.strip()
    assert parent in ("1", ""), parent  # "" : already gone
    wait_for(lambda: container.exec("test", "-e", f"/proc/{orphan}").returncode != 0, 15,
             message=f"orphan {orphan} reaped")

    # SIGSTOP: the rotator cannot make progress; Docker must report it.
    rotator = container.program_pid("rotator")
    container.kill(rotator, "SIGSTOP")
    container.wait_health("unhealthy", 30)
    stopped = container.exec("python", "-m", "worker", "status")
    assert stopped.returncode == 1 and "program rotator: pid" in stopped.stdout, stopped.stdout
    assert "is stopped (SIGSTOP" in stopped.stdout, stopped.stdout
    container.kill(rotator, "SIGCONT")
    container.wait_health("healthy", 30)

    started = time.monotonic()
    docker("stop", container.id, timeout=60)
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"docker stop took {elapsed:.1f} s (Docker kills at 10 s)"
    assert container.inspect("{{.State.ExitCode}}") == "0"
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]


def test_the_images_own_healthcheck_sees_a_stopped_rotator_and_its_recovery(run_container,
                                                                            tmp_path):
    """The HEALTHCHECK as built (no --health-* option): healthy after the start (how soon is
    a figure of tests/benchmark_lean.py), and, once its probes hold, still unhealthy for a
    stopped rotator and healthy again after it goes on."""
    models = owned_folder(tmp_path / "models")
    container = run_container("-v", f"{models}:/app/models")
    container.wait_health("healthy", 60)
    publish_one(models, container)  # a second reconcile: the probes now hold
    rotator = container.program_pid("rotator")
    container.kill(rotator, "SIGSTOP")
    container.wait_health("unhealthy", 90)
    container.kill(rotator, "SIGCONT")
    container.wait_health("healthy", 90)


def test_a_crash_loop_ends_the_container_and_restart_always_brings_it_back(
        run_container, tmp_path):
    models = owned_folder(tmp_path / "models")
    container = run_container("--restart", "always", "-v", f"{models}:/app/models")
    wait_for(lambda: "success: rotator entered RUNNING" in container.logs(), 60,
             message="rotator RUNNING")
    # Kill the rotator as soon as each new one appears, from inside the container.
    killer = ("import os, signal, time\n"
              "seen = set()\n"
              "end = time.time() + 60\n"
              "while time.time() < end:\n"
              "    for p in filter(str.isdigit, os.listdir('/proc')):\n"
              "        try:\n"
              "            line = open(f'/proc/{p}/cmdline', 'rb').read()\n"
              "        except OSError:\n"
              "            continue\n"
              "        if b'worker\\0rotator' in line and p not in seen:\n"
              "            seen.add(p)\n"
              "            os.kill(int(p), signal.SIGKILL)\n"
              "    time.sleep(0.01)\n")
    container.exec("python", "-c", killer, timeout=120)  # ends when the container does
    wait_for(lambda: int(container.inspect("{{.RestartCount}}")) >= 1, 120,
             message=f"a restart by the policy\n{container.logs()}")
    logs = container.logs()
    # FATAL (retries exhausted) or the guard's own crash-loop count, whichever comes first.
    assert "shutting down supervisord" in logs, logs
    # The guard (inside supervisord) stopped it: no program was left running.
    wait_for(lambda: container.running and container.exec(
        "python", "-m", "worker", "status").returncode == 0, 60,
        message=f"the restarted container healthy\n{container.logs()}")


def test_read_only_root_and_no_capabilities(run_container, tmp_path):
    models = owned_folder(tmp_path / "models")
    container = run_container(*FAST_HEALTH, "--read-only", "--tmpfs", "/tmp",
                              "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                              "-v", f"{models}:/app/models")
    container.wait_health("healthy")
    publish_one(models, container)
    assert " CRIT " not in container.logs()


def test_an_arbitrary_user_with_a_folder_it_can_write(run_container, tmp_path):
    models = owned_folder(tmp_path / "models", 4242, 4242)
    container = run_container(*FAST_HEALTH, "--user", "4242:4242",
                              "-v", f"{models}:/app/models")
    container.wait_health("healthy")
    model = models / "m.tar.gz"
    model.write_bytes(model_bytes(50_000))
    wait_for(lambda: content_of(models / "latest.tar.gz") == model.read_bytes(), 60,
             message=f"published\n{container.logs()}")
    assert os.stat(models / "latest.tar.gz").st_uid == 4242
    assert " CRIT " not in container.logs()


def test_json_logs_every_line_parses_supervisord_lines_included(run_container, tmp_path):
    models = owned_folder(tmp_path / "models")
    container = run_container("-v", f"{models}:/app/models", env={"LOG_FORMAT": "json"})
    wait_for(lambda: '"process": "reader"' in container.logs()
             and "entered RUNNING" in container.logs(), 60, message="reader RUNNING")
    publish_one(models, container)
    reader = container.program_pid("reader")
    container.kill(reader, "SIGKILL")
    wait_for(lambda: "terminated by SIGKILL" in container.logs(), 30, message="the kill seen")
    docker("stop", container.id, timeout=60)
    entries = []
    for line in container.log_lines():
        entry = json.loads(line)  # every line, stdout and stderr, is one JSON object
        assert {"time", "level", "program", "event", "message"} <= set(entry), line
        entries.append(entry)
    supervisord = [e for e in entries if e["program"] == "supervisord"]
    events = {(e["event"], e.get("process")) for e in supervisord}
    assert {("spawned", "rotator"), ("exited", "reader"), ("stopped", "rotator")} <= events
    killed = next(e for e in supervisord if e["event"] == "exited")
    assert killed["level"] == "WARNING" and "not expected" in killed["message"]
    assert any(e["program"] == "rotator" and e["event"] == "published" for e in entries)
    assert not [e for e in entries if e["level"] == "CRITICAL"], entries


def test_a_bad_setting_is_one_line_and_exit_2(run_container):
    container = run_container(env={"THROTTLE_DELAY": "soon"})
    wait_for(lambda: not container.running, 60, message="the container to end")
    lines = container.log_lines()
    assert len(lines) == 1 and "THROTTLE_DELAY='soon'" in lines[0], lines
    assert container.inspect("{{.State.ExitCode}}") == "2"


def test_a_root_owned_models_folder_is_one_line_then_waits_for_the_fix(run_container, tmp_path):
    # What `docker run -v "$PWD/models:/app/models"` makes of a folder that did not exist.
    models = tmp_path / "models"
    models.mkdir()
    os.chmod(models, 0o755)
    container = run_container("-v", f"{models}:/app/models")
    wait_for(lambda: container.log_lines(), 30, message="the refusal")
    time.sleep(3)  # it must not repeat
    lines = container.log_lines()
    assert len(lines) == 1, lines
    assert "uid 1000 gid 2000" in lines[0] and "chown 1000:2000" in lines[0], lines[0]
    assert container.running
    os.chown(models, UID, GID)  # the fix the line names
    publish_one(models, container)
    wait_for(lambda: container.exec("python", "-m", "worker", "status").returncode == 0, 60,
             message=f"healthy after the fix\n{container.logs()}")


def readme_container_commands() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text[text.index("### Container"):]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def test_the_readme_container_commands_work_as_written_on_a_fresh_folder(image, tmp_path):
    name = f"rasa-model-rotator-test-{uuid.uuid4().hex[:8]}"
    commands = readme_container_commands()
    assert commands[0].startswith("docker build")
    script = []
    for command in commands[1:]:  # the image is built once per session
        command = command.replace("sudo ", "")
        command = command.replace("--name rotator", f"--name {name}")
        command = re.sub(r"\brotator python", f"{name} python", command)
        command = command.replace("docker run ", "docker run --network host ")
        command = re.sub(r" rasa-model-rotator$", f" {image}", command)
        script.append(command)
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    try:
        run = subprocess.run(["bash", "-euc", "\n".join(script[:2])], cwd=workdir,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        container = Container(name)
        for check in script[2:]:
            wait_for(lambda c=check: subprocess.run(
                ["bash", "-euc", c], cwd=workdir, capture_output=True,
                timeout=60).returncode == 0, 60,
                message=f"`{check}` succeeds\n{container.logs()}")
        publish_one(workdir / "models", container)
    finally:
        docker("rm", "-f", "-v", name, check=False)
