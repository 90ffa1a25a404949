"""Real Rasa Open Source 3.6.21 for end-to-end tests: a tiny assistant, servers, training.

Rasa lives in its own venv on Python 3.10 (`.ci/peers` installs it; `RASA_VENV` names another
one). Nothing here is a stand-in: the servers are `rasa run --enable-api`, models are trained by
Rasa itself, through its HTTP API the way users train (`POST /model/train`) or its CLI.

Two kinds of assistant:
- keyword variants ("a", "b", "c", ...): KeywordIntentClassifier + RulePolicy, no neural part.
  A model of a few KiB, trained in under a second by a running server; loads in milliseconds.
  Each variant answers "hello" with its own text, so `/webhooks/rest` tells which one serves.
- "heavy": adds DIETClassifier (1 epoch): a model of about 17 MB that a server takes several
  seconds to load (TensorFlow builds its graph), during which Rasa 3.6 answers nothing (it
  loads inside its event loop). Use it where a swap's outage must be observable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.helpers import CollectedOutput, free_port

RASA_VERSION = "3.6.21"
DEFAULT_VENV = Path("/var/tmp/rasa-model-rotator-ci") / f"rasa-{RASA_VERSION}"

_KEYWORD_PIPELINE = """\
pipeline:
  - name: KeywordIntentClassifier
"""
_HEAVY_PIPELINE = """\
pipeline:
  - name: WhitespaceTokenizer
  - name: CountVectorsFeaturizer
  - name: DIETClassifier
    epochs: 1
"""


def rasa_venv() -> Path:
    return Path(os.environ.get("RASA_VENV") or DEFAULT_VENV)


def rasa_executable() -> Path:
    """`bin/rasa` of the real Rasa venv; fails saying how to install it."""
    rasa = rasa_venv() / "bin" / "rasa"
    if not rasa.exists():
        raise AssertionError(
            f"real Rasa {RASA_VERSION} is not installed at {rasa_venv()} "
            "(run `bash .ci/peers`, which installs it; RASA_VENV names another venv)")
    return rasa


def rasa_python() -> Path:
    rasa_executable()
    return rasa_venv() / "bin" / "python"


def rasa_environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({
        "RASA_TELEMETRY_ENABLED": "false",  # no network calls, no first-run prompt
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONUNBUFFERED": "1",
        "LOG_LEVEL": "INFO",
    })
    return env


def greeting(variant: str) -> str:
    """What the assistant of `variant` answers to "hello"."""
    return f"hello from variant {variant}"


def _config(variant: str) -> str:
    pipeline = _HEAVY_PIPELINE if variant == "heavy" else _KEYWORD_PIPELINE
    return ("recipe: default.v1\nlanguage: en\nassistant_id: rotator-test\n" + pipeline
            + "policies:\n  - name: RulePolicy\n")


def _domain(variant: str) -> str:
    return f"""\
intents:
  - greet
  - bye
responses:
  utter_greet:
    - text: "{greeting(variant)}"
  utter_bye:
    - text: "bye"
session_config:
  session_expiration_time: 60
  carry_over_slots_to_new_session: true
"""


_NLU = """\
nlu:
  - intent: greet
    examples: |
      - hello
      - hi
  - intent: bye
    examples: |
      - goodbye
      - bye
"""

_RULES = """\
rules:
  - rule: greet
    steps:
      - intent: greet
      - action: utter_greet
  - rule: bye
    steps:
      - intent: bye
      - action: utter_bye
"""


def training_payload(variant: str) -> str:
    """The YAML body of `POST /model/train`: config, domain and data in one document."""
    return ('version: "3.1"\n' + _config(variant) + "\n" + _domain(variant) + "\n" + _NLU
            + "\n" + _RULES)


def make_project(folder: Path, variant: str = "a") -> Path:
    """A project folder for `rasa train` (CLI): config.yml, domain.yml, data/."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yml").write_text(_config(variant))
    (folder / "domain.yml").write_text('version: "3.1"\n' + _domain(variant))
    data = folder / "data"
    data.mkdir(exist_ok=True)
    (data / "nlu.yml").write_text('version: "3.1"\n' + _NLU)
    (data / "rules.yml").write_text('version: "3.1"\n' + _RULES)
    return folder


def train_with_cli(project: Path, out: Path, fixed_model_name: str | None = None) -> Path:
    """`rasa train` in `project`, model written into `out`; returns the model's path."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.tar.gz"))
    args = [str(rasa_executable()), "train", "--out", str(out)]
    if fixed_model_name:
        args += ["--fixed-model-name", fixed_model_name]
    done = subprocess.run(args, cwd=project, env=rasa_environment(), capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise AssertionError(f"rasa train failed ({done.returncode}):\n{done.stdout[-3000:]}")
    if fixed_model_name:
        return out / f"{fixed_model_name}.tar.gz"
    created = sorted(set(out.glob("*.tar.gz")) - before, key=lambda p: p.stat().st_mtime)
    if not created:
        raise AssertionError(f"rasa train wrote no model into {out}:\n{done.stdout[-3000:]}")
    return created[-1]


class RasaServer(CollectedOutput):
    """`rasa run --enable-api` in `workdir` (its `models/` is where API trainings land).

    `model`: what `--model` says (a file or a folder; None: Rasa's default `models`).
    `token`: Rasa's `--auth-token` (sent as `?token=` by this class's calls).
    `endpoints`: an endpoints.yml (e.g. `models: {url: ...}` to pull from a model server).
    """

    def __init__(self, workdir: Path, port: int | None = None, model: str | Path | None = None,
                 token: str | None = None, endpoints: Path | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self._port_chosen_here = port is None  # free_port() races: taken again, retried
        self.model = model
        self.token = token
        self.endpoints = endpoints
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []
        self._lock = threading.Lock()  # replaced at start(); `output` works before that too

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RasaServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [str(rasa_executable()), "run", "--enable-api", "--port", str(self.port),
                "--interface", "127.0.0.1"]
        if self.model is not None:
            args += ["--model", str(self.model)]
        if self.token:
            args += ["--auth-token", self.token]
        if self.endpoints is not None:
            args += ["--endpoints", str(self.endpoints)]
        args += list(self.extra_args)
        self.process = subprocess.Popen(
            args, cwd=self.workdir, env=rasa_environment(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True)
        self._pump = self._collect_output_of(self.process)
        return self

    def wait_ready(self, timeout: float = 180.0) -> RasaServer:
        """Until the server answers `GET /` (with or without a model loaded)."""
        deadline = time.monotonic() + timeout
        retries = 3
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if (self._port_chosen_here and retries
                        and "address already in use" in self.output):
                    # Another process took the free port between our probe and Rasa's bind.
                    retries -= 1
                    self._pump.join(10)  # its last lines read before the next start's
                    self.port = free_port()
                    self.start()
                    continue
                raise AssertionError(f"rasa run exited ({self.process.returncode}):\n"
                                     f"{self.output[-3000:]}")
            if self.answers():
                return self
            time.sleep(0.2)
        raise AssertionError(f"rasa run did not answer within {timeout} s:\n{self.output[-3000:]}")

    def answers(self, timeout: float = 2.0) -> bool:
        """Does `GET /` answer within `timeout`? (False while Rasa loads a model.)"""
        try:
            status, _, _ = self.request("GET", "/", timeout=timeout)
        except OSError:
            return False
        return status == 200

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0
                ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP call with `?token=` added; returns (status, headers, body)."""
        url = self.url + path
        if self.token:
            url += ("&" if "?" in path else "?") + urllib.parse.urlencode({"token": self.token})
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers or {}), error.read()

    def status(self, timeout: float = 10.0) -> dict | None:
        """`GET /status`: {"model_file", "model_id", "num_active_training_jobs"}; None when
        Rasa has no model (409) or does not answer in time."""
        try:
            code, _, body = self.request("GET", "/status", timeout=timeout)
        except OSError:
            return None
        return json.loads(body) if code == 200 else None

    def model_id(self, timeout: float = 10.0) -> str | None:
        status = self.status(timeout)
        return status.get("model_id") if status else None

    def parse(self, text: str, timeout: float = 30.0) -> dict:
        code, _, body = self.request("POST", "/model/parse", json.dumps({"text": text}).encode(),
                                     {"Content-Type": "application/json"}, timeout)
        if code != 200:
            raise AssertionError(f"POST /model/parse answered {code}: {body[:300]!r}")
        return json.loads(body)

    def reply(self, text: str = "hello", sender: str = "tester", timeout: float = 30.0) -> str:
        """The bot's text answer through the REST channel (tells which variant serves)."""
        code, _, body = self.request(
            "POST", "/webhooks/rest/webhook",
            json.dumps({"sender": sender, "message": text}).encode(),
            {"Content-Type": "application/json"}, timeout)
        if code != 200:
            raise AssertionError(f"POST /webhooks/rest/webhook answered {code}: {body[:300]!r}")
        return " ".join(m.get("text", "") for m in json.loads(body))

    def train(self, variant: str = "a", save: bool = True, timeout: float = 600.0
              ) -> tuple[int, str | None, float]:
        """`POST /model/train` with the variant's YAML; the model lands in workdir/models.
        Returns (status, the `filename` header, seconds taken)."""
        started = time.monotonic()
        path = "/model/train" + ("" if save else "?save_to_default_model_directory=false")
        code, headers, _ = self.request("POST", path, training_payload(variant).encode(),
                                        {"Content-Type": "application/x-yaml"}, timeout)
        return code, headers.get("filename"), time.monotonic() - started

    def put_model(self, model_file: str | Path, timeout: float = 300.0) -> int:
        code, _, _ = self.request("PUT", "/model",
                                  json.dumps({"model_file": str(model_file)}).encode(),
                                  {"Content-Type": "application/json"}, timeout)
        return code

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
