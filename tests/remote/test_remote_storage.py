"""REMOTE_STORAGE=aws: the bucket is kept on the published model (worker/remote/storage.py).

Against a real S3 API (moto in server mode on 127.0.0.1, tests/s3_server.py) with boto3 as in
production; faults through our own TCP proxy so the server keeps its data. The thread is
driven in-process where a test needs short timeouts; the tool itself (`python -m worker`)
where the promise is about the running tool (local publishing never waits, `status`, no
credential in any output, never a partial object).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import (
    model_bytes,
    run_worker,
    tool_environment,
    wait_for,
    wait_for_latest,
    write_model,
)
from tests.real_rasa import free_port
from tests.s3_server import (
    ACCESS_KEY,
    SECRET,
    FaultProxy,
    MotoServer,
    client_environment,
    create_bucket,
    s3_client,
    s3_error,
    turn_on_signature_checks,
)

BUCKET = "models"


@pytest.fixture(scope="module")
def moto_server():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server, monkeypatch):
    """A fresh server with the bucket `models`; boto3's credentials in this process too."""
    moto_server.reset()
    create_bucket(moto_server.url)
    for name, value in client_environment(moto_server.url).items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture
def proxy(moto_server):
    fault_proxy = FaultProxy(("127.0.0.1", moto_server.port))
    yield fault_proxy
    fault_proxy.close()


class Lines(logging.Handler):
    """The log lines of one test, as the rotator would print them."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.getMessage()}")

    def matching(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Bench:
    """A models folder, the reconciler that publishes in it, and a RemoteSync thread."""

    def __init__(self, tmp_path: Path, endpoint: str, keep_previous: int = 0, **timing):
        from worker.folder.reconcile import Reconciler
        from worker.remote.storage import RemoteTiming
        from worker.settings import read_settings

        self.models = tmp_path / "models"
        self.models.mkdir(exist_ok=True)
        env = {**client_environment(endpoint), "TARGET_DIR": str(self.models),
               "RUN_DIR": str(tmp_path / "run"), "KEEP_PREVIOUS": str(keep_previous),
               "RASA_SYNC_INTERVAL": "0", "THROTTLE_DELAY": "0"}
        self.settings = read_settings(env)
        self.settings.run_dir.mkdir(mode=0o700, exist_ok=True)
        self.handler = Lines()
        self.log = logging.getLogger(f"test.remote.{id(self)}")
        self.log.addHandler(self.handler)
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self.reconciler = Reconciler(self.settings, self.log)
        self.in_place: list[tuple] = []
        self.timing = RemoteTiming(**{"backoff_first_s": 0.2, "backoff_max_s": 1.0,
                                      "connect_timeout_s": 2.0, "read_timeout_s": 3.0,
                                      "attempts": 1, **timing})
        self.sync = self.start_sync()

    def start_sync(self):
        from worker.remote.storage import RemoteSync

        return RemoteSync(self.settings, self.log, lambda *a: self.in_place.append(a),
                          timing=self.timing)

    def publish(self, name: str, model_id: str, payload: int = 64 * 1024) -> bytes:
        path = self.models / name
        write_model(path, payload, model_id, compresslevel=0)
        outcome = self.reconciler.reconcile()
        assert outcome.published, outcome
        self.sync.want(self.reconciler.record, True)
        return path.read_bytes() if self.settings.publish_mode == "copy" else b""

    def wait_holds(self, data: bytes, timeout: float = 60.0) -> dict:
        digest = hashlib.sha256(data).hexdigest()

        def holds():
            return (self.sync.state.get("state") == "in-sync"
                    and self.sync.state.get("sha256") == digest and self.sync.state)
        return wait_for(holds, timeout, message=f"the bucket holding {digest[:16]}\n"
                                                f"{self.handler.text}")

    def stop(self) -> None:
        self.sync.stop()
        if self.sync.ident is not None:
            self.sync.join(20)


@pytest.fixture
def bench(tmp_path, s3):
    made: list[Bench] = []

    def make(endpoint: str | None = None, **kwargs) -> Bench:
        made.append(Bench(tmp_path, endpoint or s3.url, **kwargs))
        return made[-1]

    yield make
    for one in made:
        one.stop()


def stored(endpoint: str, key: str) -> bytes | None:
    try:
        return s3_client(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except Exception as error:  # noqa: BLE001 - NoSuchKey
        if "NoSuchKey" in str(error):
            return None
        raise


def keys(endpoint: str) -> list[str]:
    listing = s3_client(endpoint).list_objects_v2(Bucket=BUCKET)
    return sorted(item["Key"] for item in listing.get("Contents", ()))


def version_of(data: bytes) -> str:
    return f"latest.versions/{hashlib.sha256(data).hexdigest()}.tar.gz"


# -- the level-triggered thread, in-process ---------------------------------------------------

def test_each_publish_lands_under_the_key_and_an_immutable_one_older_ones_pruned(bench, s3):
    b = bench(keep_previous=1)
    first = b.publish("20261202-010000-first.tar.gz", "first")
    state = b.wait_holds(first)
    wait_for(lambda: b.in_place, 30)
    assert stored(s3.url, "latest.tar.gz") == first
    assert stored(s3.url, version_of(first)) == first
    head = s3_client(s3.url).head_object(Bucket=BUCKET, Key="latest.tar.gz")
    assert head["Metadata"] == {"sha256": hashlib.sha256(first).hexdigest(),
                                "model-id": "first", "published-at": head["Metadata"][
                                    "published-at"]}
    assert state["version_key"] == version_of(first)
    assert b.in_place[-1] == ("first", version_of(first), True)

    second = b.publish("20261202-020000-second.tar.gz", "second")
    b.wait_holds(second)
    third = b.publish("20261202-030000-third.tar.gz", "third")
    b.wait_holds(third)
    # KEEP_PREVIOUS=1: the published version and the one before it.
    assert keys(s3.url) == sorted(["latest.tar.gz", version_of(third), version_of(second)])
    assert stored(s3.url, "latest.tar.gz") == third
    assert b.handler.matching(f"deleted s3://models/{version_of(first)}")


def test_a_restart_uploads_nothing_that_is_already_there(bench, s3):
    b = bench()
    data = b.publish("20261202-010000-one.tar.gz", "one")
    b.wait_holds(data)
    modified = s3_client(s3.url).head_object(Bucket=BUCKET, Key="latest.tar.gz")["LastModified"]
    b.stop()

    again = b.start_sync()  # as after a restart: the record found on disk, no publish
    b.sync = again
    again.want(b.reconciler.record, False)
    wait_for(lambda: len(b.in_place) == 2, 60, message=b.handler.text)
    assert again.state["state"] == "in-sync"
    assert b.in_place[-1] == ("one", version_of(data), False)
    uploads = b.handler.matching("uploading ")
    assert len(uploads) == 1, uploads  # the first thread's only
    assert s3_client(s3.url).head_object(
        Bucket=BUCKET, Key="latest.tar.gz")["LastModified"] == modified


def test_faults_are_one_line_each_naming_bucket_and_key_then_it_recovers(bench, s3, proxy):
    b = bench(proxy.url)
    proxy.set("refuse")
    data = b.publish("20261202-010000-one.tar.gz", "one")
    causes = {}
    for mode, cause in (("refuse", "unreachable"), ("hang", "timeout"), ("answer", "full")):
        if mode == "answer":
            proxy.canned = s3_error(507, "Insufficient Storage", "XMinioStorageFull",
                                    "Storage backend has reached its minimum free drive "
                                    "threshold.")
        proxy.set(mode)
        mark = len(b.handler.lines)
        wait_for(lambda c=cause, m=mark: b.sync.state.get("cause") == c
                 and len(b.handler.lines) > m, 60,
                 message=f"{cause}\n{b.handler.text}")
        line = b.handler.lines[-1]
        causes[cause] = line
        assert line.startswith("ERROR remote storage: bucket 'models' key 'latest.tar.gz'"), line
        assert "trying again" in line and "\n" not in line
        assert b.sync.state["state"] == "failing"
    assert "cannot connect to http://127.0.0.1" in causes["unreachable"]
    assert "did not answer in time" in causes["timeout"]
    assert "full or over quota" in causes["full"]
    assert stored(s3.url, "latest.tar.gz") is None
    proxy.set("pass")
    b.wait_holds(data)
    assert stored(s3.url, "latest.tar.gz") == data
    assert SECRET not in b.handler.text and ACCESS_KEY not in b.handler.text


def test_a_missing_bucket_is_one_line(bench, s3):
    s3_client(s3.url).delete_bucket(Bucket=BUCKET)
    b = bench()
    b.publish("20261202-010000-one.tar.gz", "one")
    wait_for(lambda: b.sync.state.get("cause") == "no-bucket", 60, message=b.handler.text)
    line = b.handler.matching("remote storage:")[-1]
    assert "bucket 'models' key 'latest.versions/" in line
    assert "the bucket does not exist at http://127.0.0.1" in line


def test_a_connection_cut_mid_upload_leaves_no_partial_object_and_is_retried(bench, s3, proxy):
    b = bench(proxy.url)
    proxy.cut_after = 3 << 20  # into the first 8 MiB part
    proxy.set("cut")
    data = b.publish("20261202-010000-big.tar.gz", "big", payload=20 << 20)
    wait_for(lambda: b.sync.state.get("failures", 0) >= 1, 120, message=b.handler.text)
    assert b.sync.state["cause"] in ("cut", "error", "timeout"), b.sync.state
    assert stored(s3.url, "latest.tar.gz") is None
    assert stored(s3.url, version_of(data)) is None
    proxy.set("pass")
    b.wait_holds(data, 120)
    assert stored(s3.url, "latest.tar.gz") == data


def test_a_newer_publish_cancels_the_upload_in_flight(bench, s3, proxy):
    b = bench(proxy.url)
    proxy.delay_s = 0.05  # about 1 MiB/s: the first upload is still running when...
    big = b.publish("20261202-010000-big.tar.gz", "big", payload=24 << 20)
    wait_for(lambda: b.sync.state.get("state") == "uploading", 60, message=b.handler.text)
    time.sleep(1.0)
    small = b.publish("20261202-020000-small.tar.gz", "small")  # ...this one is published
    proxy.delay_s = 0.0
    b.wait_holds(small, 120)
    assert b.handler.matching("cancelled: a newer model was published")
    assert stored(s3.url, "latest.tar.gz") == small
    assert stored(s3.url, version_of(big)) is None
    wait_for(lambda: not s3_client(s3.url).list_multipart_uploads(
        Bucket=BUCKET).get("Uploads"), 60, message="the cancelled multipart upload aborted")


def test_a_wrong_secret_is_one_line_without_any_credential(tmp_path, s3, monkeypatch):
    key_id, _ = turn_on_signature_checks(s3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)  # a real user, the distinctive wrong secret
    b = Bench(tmp_path, s3.url)
    try:
        b.publish("20261202-010000-one.tar.gz", "one")
        wait_for(lambda: b.sync.state.get("cause") == "denied", 60, message=b.handler.text)
    finally:
        b.stop()
    lines = b.handler.matching("remote storage:")
    # A HEAD answer has no body: S3 gives only its status there.
    assert lines and "access denied (403: Forbidden)" in lines[0], lines
    assert "check the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)" in lines[0]
    state = (b.settings.run_dir / "remote-storage.json").read_text()
    for text in (b.handler.text, state):
        assert SECRET not in text and key_id not in text
        assert SECRET.replace("/", "%2F").replace("+", "%2B") not in text


# -- the tool, as a user starts it ------------------------------------------------------------

def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return answer.read().decode()


def test_the_tool_publishes_locally_while_the_endpoint_is_down_then_uploads(
        start_tool, tmp_path, s3, proxy):
    proxy.set("refuse")
    env = client_environment(proxy.url)
    metrics_port = free_port()
    tool = start_tool(METRICS_PORT=str(metrics_port), METRICS_BIND="127.0.0.1", **env)
    tool.ready()
    models = tmp_path / "models"
    data = model_bytes(model_id="m1")
    (models / "20261202-010000-one.tar.gz").write_bytes(data)
    wait_for_latest(models, data, 60,
                    message="published locally although the endpoint is down")
    tool.wait_for_line("remote storage: bucket 'models' key 'latest.tar.gz': cannot connect",
                       60)
    status = run_worker("status", cwd=tmp_path, env=tool_environment(tmp_path, **env))
    assert status.returncode == 0, status.stdout + status.stderr  # healthy all the same
    assert "remote storage s3://models/latest.tar.gz at http://127.0.0.1" in status.stdout
    assert ": failing" in status.stdout and "(unreachable)" in status.stdout
    wait_for(lambda: 'rotator_remote_failures_total{cause="unreachable"}'
             in metrics(metrics_port), 30, message="the failure in the metrics")
    assert "rotator_remote_in_sync 0.0" in metrics(metrics_port)

    proxy.set("pass")
    wait_for(lambda: stored(s3.url, "latest.tar.gz") == data, 120,
             message=f"the key holding the model\n{tool.output}")
    tool.wait_for_line("s3://models/latest.tar.gz now holds model_id m1", 60)
    status = wait_for(lambda: (lambda r: ": in-sync" in r.stdout and r)(
        run_worker("status", cwd=tmp_path, env=tool_environment(tmp_path, **env))), 30)
    assert "holds model_id m1" in status.stdout
    wait_for(lambda: "rotator_remote_in_sync 1.0" in metrics(metrics_port), 30,
             message="in sync in the metrics")
    assert "rotator_remote_uploads_total 1.0" in metrics(metrics_port)
    assert tool.stop() == 0
    for output in (tool.output, status.stdout + status.stderr):
        assert SECRET not in output and ACCESS_KEY not in output


def test_readers_of_the_key_never_see_a_partial_64_mib_model(start_tool, tmp_path, s3):
    # LOG_LEVEL=DEBUG: boto3's own debug lines (request headers) must not come through.
    tool = start_tool(LOG_LEVEL="DEBUG", **client_environment(s3.url))
    tool.ready()
    models = tmp_path / "models"
    old = model_bytes(model_id="old")
    (models / "20261202-010000-old.tar.gz").write_bytes(old)
    wait_for(lambda: stored(s3.url, "latest.tar.gz") == old, 120, message=tool.output)

    new_path = tmp_path / "staging.tar.gz"
    write_model(new_path, 64 << 20, "new", compresslevel=0)
    new = new_path.read_bytes()
    digests = {hashlib.sha256(old).hexdigest(): "old", hashlib.sha256(new).hexdigest(): "new"}
    shutil.move(new_path, models / "20261202-020000-new.tar.gz")
    seen = []
    client = s3_client(s3.url, check_responses=False)  # the body is judged below, whole
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        body = client.get_object(Bucket=BUCKET, Key="latest.tar.gz")["Body"].read()
        seen.append(digests.get(hashlib.sha256(body).hexdigest(), f"PARTIAL {len(body)}"))
        if seen[-1] == "new":
            break
    assert seen[-1] == "new", seen
    assert set(seen) <= {"old", "new"}, seen
    assert seen.count("old") >= 1, seen  # the readers did overlap the upload
    tool.wait_for_line("uploaded s3://models/latest.versions/", 60)
    assert ACCESS_KEY not in tool.output and SECRET not in tool.output
    assert "Found credentials" not in tool.output


def test_with_remote_storage_off_nothing_of_boto3_is_imported(tmp_path):
    """The rotator builds its parts for the settings; boto3 only when REMOTE_STORAGE is on."""
    probe = (
        "import logging, sys\n"
        "from worker.settings import read_settings, prepare_folders\n"
        "from worker.programs.rotator import Rotator\n"
        "settings = read_settings()\n"
        "prepare_folders(settings)\n"
        "Rotator(settings, logging.getLogger())\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'boto3', 'botocore', 's3transfer'}))\n")
    env = tool_environment(tmp_path, TARGET_DIR=str(tmp_path / "models"))
    for name in ("REMOTE_STORAGE", "BUCKET_NAME"):
        env.pop(name, None)
    off = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                         text=True, timeout=60)
    assert off.stdout.strip() == "[]", off.stdout + off.stderr
    on = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                        timeout=60, env={**env, **client_environment("http://127.0.0.1:9")})
    assert "boto3" in on.stdout and "botocore" in on.stdout, on.stdout + on.stderr


# -- settings ---------------------------------------------------------------------------------

def refused(tmp_path, **env) -> str:
    from worker.settings import SettingError, read_settings

    with pytest.raises(SettingError) as caught:
        read_settings({"TARGET_DIR": str(tmp_path / "models"), **env})
    return str(caught.value)


def test_remote_settings_defaults_and_refusals(tmp_path):
    from worker.settings import read_settings

    base = {"TARGET_DIR": str(tmp_path / "models")}
    off = read_settings(base)
    assert (off.remote_storage, off.remote_model_key) == ("", "latest.tar.gz")
    on = read_settings({**base, "REMOTE_STORAGE": "aws", "BUCKET_NAME": "rasa-models",
                        "LATEST_MODEL_PATH": str(tmp_path / "models" / "current.tar.gz")})
    assert (on.remote_storage, on.bucket_name, on.remote_model_key) == (
        "aws", "rasa-models", "current.tar.gz")
    assert refused(tmp_path, REMOTE_STORAGE="gcs").startswith(
        "REMOTE_STORAGE='gcs' is not allowed: empty (off) or aws")
    assert refused(tmp_path, REMOTE_STORAGE="aws").startswith(
        "BUCKET_NAME='' is not allowed: a bucket name")
    assert "BUCKET_NAME='Bad_Bucket'" in refused(tmp_path, REMOTE_STORAGE="aws",
                                                  BUCKET_NAME="Bad_Bucket")
    line = refused(tmp_path, AWS_ENDPOINT_URL="http://user:pw@minio:9000")
    assert line.startswith("AWS_ENDPOINT_URL='http://***@minio:9000' is not allowed")
    assert "pw" not in line
    remote = {"REMOTE_STORAGE": "aws", "BUCKET_NAME": "rasa-models"}
    assert refused(tmp_path, REMOTE_MODEL_KEY="/abs.tar.gz", **remote).startswith(
        "REMOTE_MODEL_KEY=")
    assert refused(tmp_path, REMOTE_MODEL_KEY="model.zip", **remote).startswith(
        "REMOTE_MODEL_KEY=")
    # Off, LATEST_MODEL_PATH may have any name (the key's default is not checked then).
    assert read_settings({**base, "LATEST_MODEL_PATH": str(tmp_path / "models" / "current")})


def test_the_version_rule_keeps_the_published_and_the_newest():
    from worker.remote.s3 import StoredObject
    from worker.remote.storage import prunable_versions, version_key

    assert version_key("bots/latest.tar.gz", "ab") == "bots/latest.versions/ab.tar.gz"
    # All within one second of LastModified: our publish time orders them.
    versions = [StoredObject(f"v{i}", 1, last_modified=100.0, published_at=100 + i / 10)
                for i in (3, 0, 4, 1, 2)]
    # v1 is published (a rollback to an older model): never deleted, and not counted.
    assert prunable_versions(versions, "v1", 2) == ["v2", "v0"]
    assert prunable_versions(versions, "v4", 0) == ["v3", "v2", "v1", "v0"]


@pytest.fixture(autouse=True)
def _no_remote_env_leak(monkeypatch):
    for name in ("REMOTE_STORAGE", "BUCKET_NAME", "AWS_ENDPOINT_URL", "REMOTE_MODEL_KEY"):
        if name in os.environ and threading.current_thread() is threading.main_thread():
            monkeypatch.delenv(name, raising=False)


def test_a_client_that_cannot_be_made_is_a_failure_line_not_a_crash(tmp_path, s3, monkeypatch):
    """boto3 refuses a malformed region when the client is made: that happens in the
    thread, reported and retried like any fault, never in the rotator's start."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "not a region!")
    b = Bench(tmp_path, s3.url)
    try:
        b.publish("20261202-010000-one.tar.gz", "one")
        wait_for(lambda: b.sync.state.get("state") == "failing", 60, message=b.handler.text)
    finally:
        b.stop()
    line = b.handler.matching("remote storage:")[0]
    assert "bucket 'models' key 'latest.tar.gz': InvalidRegionError" in line, line


def test_a_model_published_again_counts_as_the_newest_version(bench, s3):
    """Rolled back to an older model: its immutable key exists (nothing is uploaded) but it
    becomes the most recent version, so KEEP_PREVIOUS keeps it over the one in between."""
    b = bench(keep_previous=1)
    first = b.publish("20261202-010000-first.tar.gz", "first")
    b.wait_holds(first)
    second = b.publish("20261202-020000-second.tar.gz", "second")
    b.wait_holds(second)
    (b.models / "20261202-030000-first-again.tar.gz").write_bytes(first)
    assert b.reconciler.reconcile().published
    b.sync.want(b.reconciler.record, True)
    b.wait_holds(first)
    third = b.publish("20261202-040000-third.tar.gz", "third")
    b.wait_holds(third)
    assert keys(s3.url) == sorted(["latest.tar.gz", version_of(third), version_of(first)])
    assert len(b.handler.matching("uploading ")) == 3  # first, second, third: once each


def test_a_prune_refused_is_a_warning_and_the_replicas_still_hear_of_the_model(
        tmp_path, s3, monkeypatch):
    key_id, secret = turn_on_signature_checks(s3, deny=("s3:DeleteObject",))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    b = Bench(tmp_path, s3.url)
    try:
        first = b.publish("20261202-010000-first.tar.gz", "first")
        b.wait_holds(first)
        second = b.publish("20261202-020000-second.tar.gz", "second")
        b.wait_holds(second)
        wait_for(lambda: b.in_place and b.in_place[-1][0] == "second", 30,
                 message=b.handler.text)
    finally:
        b.stop()
    (line,) = b.handler.matching("could not prune")
    assert line.startswith("WARNING remote storage: could not prune older versions: bucket "
                           f"'models' key '{version_of(first)}': access denied"), line
    assert secret not in b.handler.text
