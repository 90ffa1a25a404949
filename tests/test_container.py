"""The container home without a Docker engine, for what Docker (tests/test_docker.py) cannot
show: a runtime whose stdout pipe the container's user cannot open again. runc hands PID 1's
pipe to the container's user, so on Docker supervisord opens it itself; other runtimes (and
`setpriv` below, whose pipe is root's) do not, and `python -m worker` must put its own pipe in
between. The image's steps are reproduced (a fresh venv from requirements.txt, the app copied
like COPY does, uid 1000 / gid 2000), and its exact CMD runs as PID 1 of a fresh PID namespace
(`unshare --pid --fork --mount-proc`). Needs root, as CI has. Also: hadolint, and the image
installs requirements.txt only."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import PROJECT_ROOT, wait_for, wait_for_latest, write_model

UID, GID = 1000, 2000
# Interpreters that a non-root user can run (the image's is /usr/local/bin/python).
INTERPRETERS = ("/usr/local/bin/python3.11", "/usr/bin/python3.11", "/usr/bin/python3")


def dockerfile_instruction(name: str) -> str:
    """The text of the (last) instruction `name` in the Dockerfile, continuation lines joined."""
    text = (PROJECT_ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = [line.strip()[len(name):].strip() for line in text.splitlines()
             if line.strip().startswith(name + " ")]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def image_cmd() -> list[str]:
    return json.loads(dockerfile_instruction("CMD"))


def image_healthcheck() -> list[str]:
    text = dockerfile_instruction("HEALTHCHECK")
    return json.loads(text[text.index("CMD") + 3:].strip())


def light_check() -> list[str]:
    """The image's health check without the hold that only Docker's probes need: what the
    Kubernetes probes run."""
    check = image_healthcheck()
    return check[:check.index("--hold")] if "--hold" in check else check


def probe_command(python: str = sys.executable) -> list[str]:
    """What the Kubernetes probes run (light_check()), with this machine's interpreter."""
    return [python, *light_check()[1:]]


def image_env() -> dict[str, str]:
    text = dockerfile_instruction("ENV")
    return dict(re.findall(r"(\w+)=(\S+)", text))


def usable_interpreter() -> str:
    for candidate in INTERPRETERS:
        if os.path.exists(candidate):
            check = subprocess.run(
                ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                 candidate, "-c", "import venv"], capture_output=True)
            if check.returncode == 0:
                return candidate
    pytest.fail(f"no Python 3.11 that uid {UID} can run among {INTERPRETERS}: "
                "the image's steps cannot be reproduced here")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """An /app like the image's: venv from requirements.txt only, worker/ and conf/ copied."""
    if os.geteuid() != 0:
        pytest.fail("the container tests need root (unshare, setpriv), as CI has")
    root = Path(tempfile.mkdtemp(prefix="rotator-image-"))
    os.chmod(root, 0o755)
    venv = root / "venv"
    subprocess.run([usable_interpreter(), "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--no-cache-dir",
                    "-r", str(PROJECT_ROOT / "requirements.txt")], check=True)
    app = root / "app"
    app.mkdir()
    for part in ("worker", "conf"):
        shutil.copytree(PROJECT_ROOT / part, app / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    yield {"root": root, "app": app, "python": str(venv / "bin" / "python")}
    shutil.rmtree(root, ignore_errors=True)


# The packages requirements.txt names and, transitively, what their installed metadata
# requires (boto3 brings botocore, s3transfer, ...); a requirement whose marker excludes this
# Python is not installed and is passed over.
_CLOSURE = """
import importlib.metadata as metadata, json, re, sys
seen, todo = set(), list(sys.argv[1:])
while todo:
    name = todo.pop()
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        continue
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue
    seen.add(key)
    todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in requires if "extra ==" not in r]
print(json.dumps(sorted(seen)))
"""


def test_the_image_installs_only_requirements_txt(image):
    def canonical(requirement: str) -> str:
        return re.sub(r"[-_.]+", "-", requirement.split("==")[0]).lower()

    freeze = subprocess.run([image["python"], "-m", "pip", "freeze"], capture_output=True,
                            text=True, check=True).stdout.split()
    pinned = (PROJECT_ROOT / "requirements.txt").read_text().split()

    def pin(requirement: str) -> str:
        return f"{canonical(requirement)}=={requirement.partition('==')[2]}"

    assert {pin(r) for r in pinned} <= {pin(r) for r in freeze}, freeze
    closure = json.loads(subprocess.run(
        [image["python"], "-c", _CLOSURE, *(r.split("==")[0] for r in pinned)],
        capture_output=True, text=True, check=True).stdout)
    assert sorted(canonical(r) for r in freeze) == closure, \
        f"installed beyond requirements.txt and what it requires: {freeze}"


def test_hadolint_passes_with_no_warnings():
    hadolint = shutil.which("hadolint") or str(Path(os.sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--failure-threshold", "style", "Dockerfile"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


class Container:
    """The image's CMD as PID 1 of a new PID namespace, run as uid 1000, gid 2000."""

    def __init__(self, image, models: Path, run_dir: Path, **settings):
        self.image = image
        in_image = {name: value.replace("/app", str(image["app"])) if value.startswith("/app")
                    else value for name, value in image_env().items()}
        self.env = {"PATH": f"{Path(image['python']).parent}:/usr/bin:/bin",
                    **in_image, "RUN_DIR": str(run_dir), "THROTTLE_DELAY": "300",
                    "TARGET_DIR": str(models), **settings}
        cmd = image_cmd()
        assert cmd[0] == "python"
        cmd[0] = image["python"]
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc",
             "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups", *cmd],
            cwd=image["app"], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._collect, daemon=True).start()
        self.pid1 = wait_for(self._namespace_init, 20, message="PID 1 of the namespace")
        # The same process: setpriv, then `python -m worker`, which runs supervisord.
        wait_for(lambda: "-m worker" in cmdline(self.pid1) or self.process.poll() is not None,
                 20, message="PID 1 to become python -m worker")
        time.sleep(0.2)
        assert self.process.poll() is None, f"the container ended at once:\n{self.output}"

    def _collect(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def _namespace_init(self) -> int | None:
        children = children_of(self.process.pid)
        return children[0] if children else None

    def program_pid(self, name: str) -> int | None:
        for pid in children_of(self.pid1):
            if f"-m worker {name}" in cmdline(pid):
                return pid
        return None

    def as_user(self, command: list[str]) -> subprocess.CompletedProcess:
        """`docker exec` in WORKDIR /app with the image's environment, as the image's user."""
        command = [part.replace("/app/", f"{self.image['app']}/") for part in command]
        if command[0] == "python":
            command[0] = self.image["python"]
        # As `docker exec` does: in the container's PID namespace, with its /proc.
        return subprocess.run(["nsenter", f"--target={self.pid1}", "--pid", "--mount",
                               f"--wd={self.image['app']}", "--",
                               "setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                               *command], cwd=self.image["app"], env=self.env,
                              capture_output=True, text=True, timeout=30)

    def healthcheck(self, hold_s: int = 1) -> subprocess.CompletedProcess:
        """The image's HEALTHCHECK command, its hold shortened (a test need not wait 25 s)."""
        command = image_healthcheck()
        if "--hold" in command:
            command[command.index("--hold") + 1] = str(hold_s)
        return self.as_user(command)

    def supervisorctl(self, *args) -> subprocess.CompletedProcess:
        return self.as_user(["python", "-m", "worker", "supervisorctl", *args])

    def wait_running(self, programs=("reader", "rotator", "model-server")):
        # The model server leaves STARTING a second after the others (startsecs=1), later
        # than the tool can publish and report healthy: wait for each program's own line.
        wait_for(lambda: all(f"success: {program} entered RUNNING" in self.output
                             for program in programs), 30,
                 message=lambda: f"{', '.join(programs)} RUNNING\n{self.output}")

    def terminate(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            os.kill(self.pid1, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def namespace_pids(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[1:]
    return []


@pytest.fixture
def container(image):
    """Start containers over a group-writable models folder like the image's /app/models."""
    started: list[Container] = []
    workdir = Path(tempfile.mkdtemp(prefix="rotator-container-"))
    os.chmod(workdir, 0o755)
    models = workdir / "models"
    models.mkdir()
    os.chown(models, UID, GID)
    os.chmod(models, 0o2775)

    scratch = workdir / "tmp"  # stands in for the image's /tmp, where RUN_DIR lives
    scratch.mkdir(mode=0o1777)
    os.chmod(scratch, 0o1777)

    def start(**settings) -> Container:
        run = Container(image, models, scratch / "rasa-model-rotator", **settings)
        started.append(run)
        return run

    start.models = models
    yield start
    for run in started:
        run.terminate()
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_stdout_the_user_cannot_reopen_gets_our_relay_and_loses_nothing(container):
    run = container()
    models = container.models
    assert namespace_pids(run.pid1)[-1] == "1", "not PID 1"
    supervisord_pid = wait_for(lambda: _read(models.parent / "tmp" / "rasa-model-rotator"
                                             / "supervisord.pid"), 20, message="pidfile")
    assert supervisord_pid.strip() == "1", "supervisord does not run in PID 1"
    # The pipe this test reads is root's, mode 0600: uid 1000 cannot open /dev/stdout again.
    assert subprocess.run(["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
                           "sh", "-c", ": > /dev/stdout"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).returncode != 0
    assert os.stat(f"/proc/{run.pid1}").st_uid == UID
    run.wait_running()
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 200_000)
    os.chown(model, UID, GID)
    wait_for_latest(models, model.read_bytes(), 30,
                    message=f"latest published\n{run.output}")
    assert os.stat(models / "latest.tar.gz").st_uid == UID
    wait_for(lambda: "rotator INFO published" in run.output, 10,
             message=f"the rotator's line through the relay\n{run.output}")

    health = run.healthcheck()
    assert health.returncode == 0, health.stdout + health.stderr
    assert "healthy" in health.stdout, health.stdout
    status = run.as_user(["python", "-m", "worker", "status"])
    assert status.returncode == 0 and model.name in status.stdout, status.stdout
    listed = run.supervisorctl("status")  # works in the container, as the README says
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for program in ("reader", "rotator", "model-server"):
        assert re.search(rf"{program}\s+RUNNING", listed.stdout), listed.stdout

    programs = [run.program_pid("reader"), run.program_pid("rotator")]
    started = time.monotonic()
    code = run.terminate()
    elapsed = time.monotonic() - started
    assert elapsed < 8, f"SIGTERM to PID 1 took {elapsed:.1f} s (Docker kills at 10 s)"
    assert code == 0
    for pid in [run.pid1, *programs]:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} survived"
    # supervisord's last lines, written just before PID 1 exits, are not lost in the relay.
    wait_for(lambda: "stopped: rotator" in run.output and "stopped: reader" in run.output, 10,
             message=f"the last lines\n{run.output}")
    assert not [p for p in models.iterdir() if ".tmp-" in p.name]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
