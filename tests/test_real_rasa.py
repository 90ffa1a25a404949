"""Rasa in sync, against real Rasa Open Source 3.6.21 (tests/real_rasa.py).

One cluster for the module (starting Rasa and training costs seconds, and the scenarios follow
one another the way a deployment lives): replica A trains through `POST /model/train` into the
watched folder; replica B runs elsewhere; both run with `--model <folder>/latest.tar.gz` and
`--auth-token`; `python -m worker` keeps them in sync (RASA_SYNC_INTERVAL=2).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import RunningTool, tool_environment, wait_for
from tests.rasa.test_rasa import assert_no_secret
from tests.real_rasa import RasaServer, greeting
from worker.folder.archive import BrokenArchive, check_archive

TOKEN = "s3cr3t t0k/en+%x"
SYNC_INTERVAL_S = 2


class Cluster:
    """Replicas A (trains into the watched folder) and B, and the tool keeping them in sync;
    `settings` override the tool's (the benchmark compares RASA_MAX_SWAPPING values)."""

    def __init__(self, root: Path, **settings: str):
        self.root = root
        self.settings = settings
        self.models = root / "a" / "models"
        self.models.mkdir(parents=True)
        self.latest = self.models / "latest.tar.gz"
        self.aside = root / "aside"
        self.aside.mkdir()
        self.a = RasaServer(root / "a", model=self.latest, token=TOKEN).start()
        self.b = RasaServer(root / "b", model=self.latest, token=TOKEN).start()
        self.a.wait_ready()
        self.b.wait_ready()
        self.tool = self.start_tool()
        self.statuses: list[str] = []

    def start_tool(self) -> RunningTool:
        env = tool_environment(
            self.root, TARGET_DIR=str(self.models), LATEST_MODEL_PATH=str(self.latest),
            RASA_URL=f"{self.a.url},{self.b.url}", RASA_TOKEN=TOKEN,
            RASA_SYNC_INTERVAL=str(SYNC_INTERVAL_S), RASA_TRAINING_WAIT="120",
            RASA_RETRY_FOR="60", RASA_TIMEOUT="60", **self.settings)
        tool = RunningTool(self.root, env)
        tool.ready()
        return tool

    def published_id(self) -> str | None:
        try:
            return check_archive(self.latest).model_id
        except (OSError, BrokenArchive):
            return None

    def status_json(self) -> dict:
        done = subprocess.run([sys.executable, "-m", "worker", "status", "--json"],
                              cwd=self.root, env=self.tool.env, capture_output=True, text=True,
                              timeout=30)
        self.statuses.append(done.stdout + done.stderr)
        return json.loads(done.stdout)

    def train_and_publish(self, variant: str) -> str:
        """Train on A through the HTTP API; wait until it is published; its model_id."""
        code, filename, _ = self.a.train(variant)
        assert code == 200, f"training answered {code}\n{self.a.output[-2000:]}"
        trained = check_archive(self.models / filename).model_id if (
            self.models / filename).exists() else None
        wait_for(lambda: self.published_id() is not None and (
            trained is None or self.published_id() == trained), 60,
            message=f"{filename} published\n{self.tool.output}")
        return self.published_id()

    def both_serve(self, model_id: str, timeout: float = 120) -> None:
        wait_for(lambda: self.a.model_id(2) == model_id and self.b.model_id(2) == model_id,
                 timeout, interval=0.2,
                 message=f"both replicas serve {model_id}\n{self.tool.output}")

    def close(self) -> None:
        self.tool.stop()
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    made = Cluster(tmp_path_factory.mktemp("real-rasa"))
    yield made
    made.close()


class Availability:
    """Polls `GET /` of each server (0.3 s timeout, every 0.05 s) and records the answers."""

    def __init__(self, servers: dict[str, RasaServer]):
        self.samples: dict[str, list[tuple[float, bool]]] = {name: [] for name in servers}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(name, server), daemon=True)
                         for name, server in servers.items()]
        for thread in self._threads:
            thread.start()

    def _poll(self, name: str, server: RasaServer) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            ok = server.answers(timeout=0.3)
            self.samples[name].append((started, ok))
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def outages(self, name: str) -> list[tuple[float, float]]:
        """Spans during which the server did not answer: from the first failed poll to the
        next answered one."""
        spans, start = [], None
        for at, ok in self.samples[name]:
            if not ok and start is None:
                start = at
            elif ok and start is not None:
                spans.append((start, at))
                start = None
        if start is not None:
            spans.append((start, time.monotonic()))
        return spans


def test_a_trained_model_reaches_every_replica(cluster):
    assert cluster.a.status() is None and cluster.b.status() is None  # no model yet: 409
    model_id = cluster.train_and_publish("b")
    cluster.both_serve(model_id)
    # Rasa's /status model_id is metadata.json's model_id inside the published archive.
    assert cluster.a.model_id() == check_archive(cluster.latest).model_id
    assert cluster.a.reply("hello") == greeting("b")
    assert cluster.b.reply("hello", sender="t2") == greeting("b")
    assert cluster.a.parse("hello")["intent"]["name"] == "greet"
    (cluster.aside / "b.tar.gz").write_bytes(cluster.latest.read_bytes())

    model_id = cluster.train_and_publish("c")
    cluster.both_serve(model_id)
    assert cluster.a.reply("hello", sender="t3") == greeting("c")
    assert cluster.b.reply("hello", sender="t4") == greeting("c")
    report = {r["url"]: r for r in cluster.status_json()["rasa"]}
    for server in (cluster.a, cluster.b):
        assert report[server.url]["model_id"] == model_id and report[server.url]["in_sync"]
        assert report[server.url]["converged_at"]


def test_replicas_swap_one_after_the_other_and_the_other_keeps_answering(cluster):
    poll = Availability({"a": cluster.a, "b": cluster.b})
    try:
        model_id = cluster.train_and_publish("heavy")  # about 17 MB: seconds to load
        cluster.both_serve(model_id, timeout=180)
        time.sleep(0.5)
    finally:
        poll.stop()
    a_out, b_out = poll.outages("a"), poll.outages("b")
    # Each replica was swapped (an observable load), never both at once.
    longest = {name: max((end - start for start, end in spans), default=0)
               for name, spans in (("a", a_out), ("b", b_out))}
    assert min(longest.values()) > 1.0, f"no observable load: {longest}"
    for a_start, a_end in a_out:
        for b_start, b_end in b_out:
            overlap = min(a_end, b_end) - max(a_start, b_start)
            # One poll period of slack for the sampling itself.
            assert overlap < 0.4, f"both replicas down at once: A {a_out}, B {b_out}"
    # Back to a light model, so the rest of the module loads fast.
    cluster.both_serve(cluster.train_and_publish("d"))


def test_no_swap_while_a_training_runs_and_its_response_is_whole(cluster):
    before = cluster.b.model_id()
    training: dict = {}
    thread = threading.Thread(target=lambda: training.update(result=cluster.b.train("heavy")))
    thread.start()
    wait_for(lambda: (cluster.b.status(2) or {}).get("num_active_training_jobs") == 1, 60,
             interval=0.1, message="B reports its training job")
    lines = cluster.tool.line_count()
    model_id = cluster.train_and_publish("e")
    wait_for(lambda: cluster.a.model_id(2) == model_id, 60)
    served_during_training = []
    while thread.is_alive():
        status = cluster.b.status(2)
        if status and status["num_active_training_jobs"]:
            served_during_training.append(status["model_id"])
        time.sleep(0.1)
    thread.join()
    code, filename, _ = training["result"]  # the whole 17 MB response was read: not cut
    assert code == 200 and filename
    assert served_during_training and set(served_during_training) == {before}
    cluster.tool.wait_for_line("training job(s) running", 30, after=lines)
    cluster.both_serve(model_id)


def test_a_replica_restarted_with_another_model_is_brought_back(cluster):
    published = cluster.published_id()
    old = cluster.aside / "b.tar.gz"
    port = cluster.b.port
    lines = cluster.tool.line_count()
    cluster.b.stop()
    cluster.b = RasaServer(cluster.root / "b", port=port, model=old, token=TOKEN).start()
    cluster.b.wait_ready()
    cluster.both_serve(published, timeout=60)
    cluster.tool.wait_for_line(f"rasa PUT {cluster.b.url}/model loaded", 30, after=lines)
    assert check_archive(old).model_id != published
    assert f"rasa {cluster.a.url}: serves" not in "\n".join(
        cluster.tool.lines[lines:]), "A was in sync and got swapped anyway"


def test_a_training_killed_mid_write_is_never_published(cluster):
    published = cluster.published_id()
    trainer = RasaServer(cluster.root / "a", token=TOKEN).start()  # trains into the folder
    try:
        trainer.wait_ready()
        before = set(os.listdir(cluster.models))
        thread = threading.Thread(target=lambda: _ignore_errors(trainer.train, "heavy"),
                                  daemon=True)
        thread.start()

        def writing():
            for name in set(os.listdir(cluster.models)) - before:
                if name.endswith(".tar.gz") and not name.startswith("."):
                    try:
                        if (cluster.models / name).stat().st_size > 0:
                            return name
                    except FileNotFoundError:
                        pass
            return None

        name = wait_for(writing, 120, interval=0.005, message="the training's model file")
        os.killpg(trainer.process.pid, signal.SIGKILL)
        trainer.process.wait(10)
    finally:
        trainer.stop()
    killed = cluster.models / name
    with pytest.raises(BrokenArchive):
        check_archive(killed)
    cluster.tool.wait_for_line(killed.name, 30)  # the rotator saw it (and skipped it)
    time.sleep(SYNC_INTERVAL_S + 1)
    assert cluster.published_id() == published
    assert killed.exists(), "the truncated model is kept for BROKEN_GRACE_PERIOD"
    cluster.both_serve(published, timeout=10)


def test_our_own_restart_swaps_nothing(cluster):
    published = cluster.published_id()
    cluster.both_serve(published, timeout=30)
    assert cluster.tool.stop() == 0
    cluster.statuses.append(cluster.tool.output)  # scanned for the token below
    cluster.tool = cluster.start_tool()

    def both_checked_in_sync():
        replicas = cluster.status_json()["rasa"]
        return len(replicas) == 2 and all(r["in_sync"] and r["model_id"] == published
                                          for r in replicas)

    wait_for(both_checked_in_sync, 30, interval=0.5, message="both replicas checked")
    time.sleep(SYNC_INTERVAL_S + 0.5)  # and a periodic check after it
    assert "rasa PUT" not in cluster.tool.output, cluster.tool.output


def test_the_token_never_appears_in_our_output(cluster):
    cluster.status_json()
    text = cluster.tool.output + "\n".join(cluster.statuses)
    assert "rasa PUT" in text  # the calls were made and logged
    assert_no_secret(text, TOKEN)


def _ignore_errors(function, *args):
    # The server is killed under this request on purpose.
    with contextlib.suppress(Exception):
        function(*args)
