"""The canary rule (worker/rasa/canary.py, worker/rasa/sync.py) against real HTTP servers on
127.0.0.1 that behave like Rasa 3.6 (tests/rasa_stub.py), and the tool end to end with them: a model
Rasa refuses reaches at most one replica, and latest returns to the last loaded model."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tests.folder.test_loadable import rasa_model
from tests.helpers import wait_for
from tests.rasa.test_rasa import FAST, MODEL_PATH, Syncs
from worker.folder.archive import check_archive
from worker.rasa.canary import Canary
from worker.rasa.sync import RasaSync


@pytest.fixture
def captured_log():
    log = logging.getLogger(f"test.canary.{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    return log, None


def make_sync(syncs: Syncs, urls, canary=None, max_swapping=1, smoke_text="") -> RasaSync:
    sync = RasaSync(urls, MODEL_PATH, "", 30.0, 5.0, syncs.log, syncs.report,
                    sync_interval_s=0.1, max_swapping=max_swapping, training_wait_s=30.0,
                    timing=FAST, **({"canary": canary} if canary else {}),
                    **({"smoke_text": smoke_text} if smoke_text else {}))
    syncs.made.append(sync)
    return sync


def puts(*servers) -> int:
    return sum(len(server.calls()) for server in servers)


class Verdicts:
    def __init__(self):
        self.loaded: list[tuple[str | None, str]] = []
        self.refused: list[tuple[str | None, str, str]] = []
        self.lock = threading.Lock()

    def on_loaded(self, desired, url):
        with self.lock:
            self.loaded.append((desired.model_id, url))

    def on_refused(self, desired, url, detail):
        with self.lock:
            self.refused.append((desired.model_id, url, detail))


def test_a_model_rasa_cannot_load_reaches_one_replica_only(stubs, captured_log):
    syncs = Syncs(captured_log[0])
    first, second = stubs(model_id="A", refuse_load=400), stubs(model_id="A", refuse_load=400)
    verdicts = Verdicts()
    sync = make_sync(syncs, [first.url, second.url],
                     Canary(verdicts.on_loaded, verdicts.on_refused))
    try:
        sync.want("B", published=True)
        wait_for(lambda: verdicts.refused, 10)
        time.sleep(1.0)  # ten more checks of each replica
        assert puts(first, second) == 1, "the refused model was sent to a second replica"
        assert len(verdicts.refused) == 1 and "400" in verdicts.refused[0][2]
        canary, other = (first, second) if first.calls() else (second, first)
        assert "400" in syncs.state(canary.url).last_error
        assert syncs.state(other.url).state == "model-refused"
    finally:
        sync.stop()


def test_a_500_loading_error_stops_the_rollout_too(stubs, captured_log):
    syncs = Syncs(captured_log[0])
    first, second = stubs(model_id="A", refuse_load=500), stubs(model_id="A", refuse_load=500)
    sync = make_sync(syncs, [first.url, second.url])
    try:
        sync.want("B", published=True)
        wait_for(lambda: puts(first, second) >= 1, 10)
        time.sleep(1.0)
        assert puts(first, second) == 1, "a LoadingError (500) was retried or spread"
    finally:
        sync.stop()


def test_the_canary_loads_alone_then_the_others_follow(stubs, captured_log):
    syncs = Syncs(captured_log[0])
    first = stubs(model_id="A", models={MODEL_PATH: "B"}, load_s=0.5)
    second = stubs(model_id="A", models={MODEL_PATH: "B"}, load_s=0.5)
    sync = make_sync(syncs, [first.url, second.url], max_swapping=2)
    try:
        sync.want("B", published=True)
        wait_for(lambda: syncs.in_sync(first.url, "B") and syncs.in_sync(second.url, "B"), 20)
        loads = sorted(first.loads + second.loads)
        assert len(loads) == 2
        assert loads[1][0] >= loads[0][1], "two replicas loaded an untried model at once"
    finally:
        sync.stop()


@pytest.mark.parametrize("status, body", [
    (500, None), (200, b'{"text": "hello"}'), (200, b'[{"intent": "greet"}]'), (200, b"ok"),
], ids=["error", "no-intent", "not-an-object", "not-json"])
def test_a_failed_smoke_parse_counts_as_a_refusal(stubs, captured_log, caplog, status,
                                                body):
    """Only a success that holds a parse result (an object with an intent) lets the model in:
    a 200 from a proxy's page or from a model that parses nothing is a refusal too."""
    syncs = Syncs(captured_log[0])
    first = stubs(model_id="A", models={MODEL_PATH: "B"}, parse_status=status, parse_body=body)
    second = stubs(model_id="A", models={MODEL_PATH: "B"}, parse_status=status, parse_body=body)
    verdicts = Verdicts()
    sync = make_sync(syncs, [first.url, second.url],
                     Canary(verdicts.on_loaded, verdicts.on_refused), smoke_text="hello")
    try:
        sync.want("B", published=True)
        wait_for(lambda: verdicts.refused, 10)
        time.sleep(1.0)
        assert puts(first, second) == 1
        assert f"POST /model/parse (RASA_SMOKE_TEXT) answered {status}" in \
            verdicts.refused[0][2], verdicts.refused
        wait_for(lambda: "model B was refused by another replica (the canary): not sent here"
                 in caplog.text, 10, message=lambda: caplog.text)
        assert [r["body"] for r in first.calls("POST") + second.calls("POST")] == [
            {"text": "hello"}]
        # The canary serves the refused model: once latest is back on A, it is swapped back.
        canary = first if first.calls() else second
        assert canary.model_id == "B"
        for stub in (first, second):
            stub.models[MODEL_PATH], stub.parse_status = "A", None
        sync.want("A", published=True)
        wait_for(lambda: syncs.in_sync(canary.url, "A"), 10)
        assert puts(first, second) == 2
    finally:
        sync.stop()


def test_the_gate_minimum_is_the_highest_among_replicas_that_answer(stubs, captured_log):
    syncs = Syncs(captured_log[0])
    old = stubs(model_id="A", version="3.6.0", minimum_version="3.6.0")
    new = stubs(model_id="A", version="3.6.21", minimum_version="3.6.21")
    silent = stubs(model_id="A")  # no /version (404)
    sync = make_sync(syncs, [old.url, new.url, silent.url])
    sync.probe_versions()
    assert sync.minimum_version() == "3.6.21"


def test_the_tool_never_publishes_a_refused_model_and_returns_to_the_good_one(
        start_tool, models, stubs, tmp_path):
    first = stubs(model_id="G", version="3.6.21")
    second = stubs(model_id="G", version="3.6.21")
    latest = models / "latest.tar.gz"
    rasa_model(models / "good.tar.gz", "G", "3.6.21", age_s=600)
    tool = start_tool(RASA_URL=f"{first.url},{second.url}", RASA_SYNC_INTERVAL="1")
    tool.ready()
    wait_for(lambda: latest.exists() and check_archive(latest).model_id == "G", 30)
    tool.wait_for_line("serves the published model G")

    # 1. Trained by a Rasa below the servers' minimum: never published, no PUT at all.
    rasa_model(models / "old.tar.gz", "OLD", "3.5.0", age_s=0)
    line = tool.wait_for_line("old.tar.gz: trained by Rasa 3.5.0")
    assert "3.6.21" in line
    time.sleep(1.0)
    assert check_archive(latest).model_id == "G" and (models / "old.tar.gz").exists()
    assert puts(first, second) == 0
    report = json.loads(tool.status("--json").stdout)
    entry, = [e for e in report["not_published"] if e["path"].endswith("old.tar.gz")]
    assert entry["reason"] == "version" and "3.5.0" in entry["detail"]

    # 2. Passes the gate, but Rasa cannot load it: one replica tries, latest returns to G.
    first.refuse_load = second.refuse_load = 400
    rasa_model(models / "bad.tar.gz", "BAD", "3.6.21", age_s=0)
    tool.wait_for_line("refused by")
    wait_for(lambda: check_archive(latest).model_id == "G", 30)
    time.sleep(2.0)  # two more sync intervals
    assert puts(first, second) == 1
    assert (models / "bad.tar.gz").exists() and (models / "good.tar.gz").exists()
    report = json.loads(tool.status("--json").stdout)
    refused = [e for e in report["not_published"] if e["path"].endswith("bad.tar.gz")]
    assert refused and refused[0]["reason"] == "refused"
    text = tool.status().stdout
    assert "not published (refused)" in text and "bad.tar.gz" in text

    # 3. A restarted rotator does not try it again.
    assert tool.stop() == 0
    again = start_tool(RASA_URL=f"{first.url},{second.url}", RASA_SYNC_INTERVAL="1")
    again.ready()
    time.sleep(2.0)
    assert check_archive(latest).model_id == "G" and puts(first, second) == 1
