"""Loadable, not just whole (issue 17), against real Rasa Open Source 3.6.21.

One model is trained (the keyword assistant, a few seconds) and two refused models are made
from it, each a whole archive, as a user could meet them:
- "old": its metadata.json says `rasa_open_source_version: 3.5.0` (as if trained by an older
  Rasa); a 3.6.21 server refuses it (MINIMUM_COMPATIBLE_VERSION is 3.6.21).
- "broken": the KeywordIntentClassifier's file removed, then repacked whole; it passes the
  version gate, and `PUT /model` answers 400 "could not be loaded" (checked here: removing
  domain.yml or rule_policy.json instead still loads).
Each derived model gets a new model_id, so today's code would send it to the replicas.

Each case prints its figures (`pytest -s`): replicas that tried the model, seconds any replica
did not answer, seconds from the refusal to latest holding the good model again.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import RunningTool, tool_environment, wait_for
from tests.real_rasa import RasaServer, free_port, make_project, train_with_cli
from tests.test_real_rasa_pull import Availability, SourceAddressRelay, sent_to
from worker.folder.archive import check_archive
from worker.folder.published import open_published

SYNC_INTERVAL_S = 1
BROKEN_MEMBER = "components/train_KeywordIntentClassifier0/KeywordIntentClassifier.json"


def derive(source: Path, target: Path, drop: str | None = None, **metadata) -> str:
    """A whole archive like `source`, without member `drop`, with metadata.json fields
    changed and a new model_id; returns the model_id."""
    model_id = uuid.uuid4().hex
    with tarfile.open(source, "r:gz") as tar_in, tarfile.open(target, "w:gz") as tar_out:
        for member in tar_in.getmembers():
            name = member.name.lstrip("/")
            if name == drop:
                continue
            data = tar_in.extractfile(member).read() if member.isfile() else None
            if name == "metadata.json":
                content = json.loads(data)
                content.update(metadata, model_id=model_id)
                data = json.dumps(content).encode()
                member.size = len(data)
            tar_out.addfile(member, io.BytesIO(data) if data is not None else None)
    check_archive(target)  # whole
    return model_id


def arrive(model: Path, folder: Path, name: str) -> Path:
    """Move a model into the watched folder the way an upload finishes: a rename."""
    staged = folder / f".{name}.part"
    shutil.copyfile(model, staged)
    target = folder / name
    staged.rename(target)
    return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    good = train_with_cli(make_project(root / "project", "a"), root / "out")
    old, broken = root / "old.tar.gz", root / "broken.tar.gz"
    derive(good, old, rasa_open_source_version="3.5.0")
    derive(good, broken, drop=BROKEN_MEMBER)
    return {"good": good, "old": old, "broken": broken}


def model_id_of(path: Path) -> str | None:
    try:
        return check_archive(path).model_id
    except Exception:  # noqa: BLE001 - missing or being replaced: not the model asked for
        return None


def status_json(tool: RunningTool, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-m", "worker", "status", "--json"], cwd=cwd,
                          env=tool.env, capture_output=True, text=True, timeout=30)
    return json.loads(done.stdout)


def swaps_to(output: str, model_id: str) -> int:
    return len(re.findall(rf"published is {model_id}: swapping \(PUT /model", output))


def seconds_down(watcher: Availability) -> float:
    return round(sum(gave_up - asked for asked, gave_up in watcher.down), 2)


class Fleet:
    """Two replicas started with `--model <folder>/latest.tar.gz`, kept in sync by the tool."""

    def __init__(self, root: Path, good: Path):
        self.root = root
        self.models = root / "models"
        self.models.mkdir()
        self.latest = self.models / "latest.tar.gz"
        self.good_id = check_archive(good).model_id
        arrive(good, self.models, "20261202-010101-good.tar.gz")
        self.tool = RunningTool(root, tool_environment(
            root, TARGET_DIR=str(self.models), RASA_URL="", RASA_SYNC_INTERVAL="1"))
        self.replicas: list[RasaServer] = []

    def start(self) -> Fleet:
        # Published first, so both replicas start on it, as after a deployment.
        wait_for(lambda: model_id_of(self.latest) == self.good_id, 60)
        self.tool.stop()
        self.replicas = [RasaServer(self.root / name, model=self.latest).start()
                         for name in ("a", "b")]
        for replica in self.replicas:
            replica.wait_ready(300)
        env = tool_environment(self.root, TARGET_DIR=str(self.models),
                               RASA_URL=",".join(r.url for r in self.replicas),
                               RASA_SYNC_INTERVAL=str(SYNC_INTERVAL_S), RASA_RETRY_FOR="60",
                               RASA_TIMEOUT="60")
        self.tool = RunningTool(self.root, env)
        self.tool.ready()
        wait_for(lambda: all(r.get("in_sync") for r in status_json(self.tool, self.root)["rasa"])
                 and len(status_json(self.tool, self.root)["rasa"]) == 2, 60)
        return self

    def stop(self) -> None:
        self.tool.stop()
        for replica in self.replicas:
            replica.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, trained):
    started = Fleet(tmp_path_factory.mktemp("fleet"), trained["good"]).start()
    yield started
    started.stop()


def test_a_model_below_the_servers_minimum_reaches_no_replica(fleet, trained):
    old_id = check_archive(trained["old"]).model_id
    watchers = [Availability(replica) for replica in fleet.replicas]
    try:
        arrive(trained["old"], fleet.models, "20261202-020202-old.tar.gz")
        wait_for(lambda: "trained by Rasa 3.5.0" in fleet.tool.output
                 or model_id_of(fleet.latest) == old_id, 60)
        assert model_id_of(fleet.latest) == fleet.good_id, "the refused model was published"
        line = fleet.tool.wait_for_line("trained by Rasa 3.5.0", 5)
        assert "3.6.21" in line and "GET /version" in line
        time.sleep(3 * SYNC_INTERVAL_S + 1)
    finally:
        for watcher in watchers:
            watcher.stop()
    assert swaps_to(fleet.tool.output, old_id) == 0, fleet.tool.output[-3000:]
    assert model_id_of(fleet.latest) == fleet.good_id
    assert (fleet.models / "20261202-020202-old.tar.gz").exists()
    assert all(replica.model_id() == fleet.good_id for replica in fleet.replicas)
    assert [seconds_down(w) for w in watchers] == [0, 0]
    report = status_json(fleet.tool, fleet.root)
    entry, = [e for e in report["not_published"] if e["path"].endswith("-old.tar.gz")]
    assert entry["reason"] == "version"
    assert "3.5.0" in entry["detail"] and "3.6.21" in entry["detail"]
    print(f"\nFIGURES version gate: replicas that tried it 0, seconds unavailable "
          f"{[seconds_down(w) for w in watchers]}, latest never left the good model")


def test_a_model_rasa_cannot_load_reaches_one_replica_and_latest_returns(fleet, trained):
    broken_id = check_archive(trained["broken"]).model_id
    watchers = [Availability(replica) for replica in fleet.replicas]
    try:
        arrive(trained["broken"], fleet.models, "20261202-030303-broken.tar.gz")
        fleet.tool.wait_for_line(f"published is {broken_id}: swapping", 60)
        wait_for(lambda: "refused by" in fleet.tool.output
                 or swaps_to(fleet.tool.output, broken_id) > 1, 60)
        assert swaps_to(fleet.tool.output, broken_id) == 1, "sent to a second replica"
        fleet.tool.wait_for_line("refused by", 5)
        refused_at = time.monotonic()
        wait_for(lambda: model_id_of(fleet.latest) == fleet.good_id, 60, interval=0.02)
        back_after = time.monotonic() - refused_at
        time.sleep(3 * SYNC_INTERVAL_S + 1)
    finally:
        for watcher in watchers:
            watcher.stop()
    output = fleet.tool.output
    assert swaps_to(output, broken_id) == 1, output[-3000:]
    assert model_id_of(fleet.latest) == fleet.good_id
    assert (fleet.models / "20261202-030303-broken.tar.gz").exists()
    assert all(replica.model_id() == fleet.good_id for replica in fleet.replicas)
    down = [seconds_down(w) for w in watchers]
    assert 0 in down, f"both replicas stopped answering: {down}"
    report = status_json(fleet.tool, fleet.root)
    entry, = [e for e in report["not_published"] if e["path"].endswith("-broken.tar.gz")]
    assert entry["reason"] == "refused" and "400" in entry["detail"]
    # What a restart loads: `rasa run --model models/latest.tar.gz` serves the good model.
    restarted = RasaServer(fleet.root / "c", model=fleet.latest).start()
    try:
        restarted.wait_ready(300)
        assert restarted.model_id() == fleet.good_id
    finally:
        restarted.stop()
    print(f"\nFIGURES unloadable model: replicas that tried it 1, seconds unavailable "
          f"{down}, latest back to the good model {back_after:.2f} s after the refusal")


def test_a_replica_that_cannot_load_a_pulled_model_stops_the_rollout(start_tool, tmp_path,
                                                                     trained):
    port = free_port()
    tool = start_tool(MODEL_SERVER_PORT=str(port))
    tool.ready()
    tool.wait_for_line("model-server INFO serving")
    models = tmp_path / "models"
    good_id = check_archive(trained["good"]).model_id
    arrive(trained["good"], models, "20261202-010101-good.tar.gz")
    wait_for(lambda: model_id_of(models / "latest.tar.gz") == good_id, 60)
    relays, replicas = [], []
    try:
        for index, source in enumerate(("127.0.0.2", "127.0.0.3")):
            relay = SourceAddressRelay(("127.0.0.1", port), source)
            relays.append(relay)
            endpoints = tmp_path / f"endpoints-{index}.yml"
            endpoints.write_text(f"models:\n  url: http://127.0.0.1:{relay.port}/model\n"
                                 "  wait_time_between_pulls: 1\n")
            replicas.append(RasaServer(tmp_path / f"replica-{index}", endpoints=endpoints))
        for replica in replicas:
            replica.start()
        for replica in replicas:
            replica.wait_ready(300)
            wait_for(lambda r=replica: r.model_id(2) == good_id, 60)
        # Both have asked with the good model's ETag since: it is the one latest returns to.
        time.sleep(3)
        watchers = [Availability(replica) for replica in replicas]
        try:
            broken = arrive(trained["broken"], models, "20261202-030303-broken.tar.gz")
            with open_published(broken) as opened:
                broken_etag = opened.etag  # the ETag names the content: latest's, published
            wait_for(lambda: "refused by 127.0.0." in tool.output
                     or len(sent_to(tool.output, broken_etag)) > 1, 90)
            assert len(sent_to(tool.output, broken_etag)) == 1, "sent again after its failed load"
            tool.wait_for_line("refused by 127.0.0.", 5)
            refused_at = time.monotonic()
            wait_for(lambda: model_id_of(models / "latest.tar.gz") == good_id, 60,
                     interval=0.02)
            back_after = time.monotonic() - refused_at
            time.sleep(5)  # five more pulls each
        finally:
            for watcher in watchers:
                watcher.stop()
        assert len(sent_to(tool.output, broken_etag)) == 1, tool.output[-4000:]
        assert all(replica.model_id(5) == good_id for replica in replicas)
        down = [seconds_down(w) for w in watchers]
        assert 0 in down, f"both replicas stopped answering: {down}"
        print(f"\nFIGURES pull: replicas that tried it 1, seconds unavailable {down}, latest "
              f"back to the good model {back_after:.2f} s after the refusal")
    finally:
        for replica in replicas:
            replica.stop()
        for relay in relays:
            relay.close()

