"""Hot-swap through PUT /model against a real HTTP server on 127.0.0.1 that behaves like Rasa."""

import io
import logging
import subprocess
import sys
import time

import pytest

from tests.helpers import content_of, wait_for, write_model
from tests.rasa_stub import RasaStub
from worker.rasa import ReplicaNotifier, display_url

TOKEN = "s3cr3t-t0ken/+&="


@pytest.fixture
def stubs():
    started = []

    def make(script=None):
        stub = RasaStub(script)
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.close()


@pytest.fixture
def captured_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger(f"test.rasa.{time.monotonic_ns()}")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log, stream


def notifier(url, log, reports, retry_for=30.0, timeout=5.0):
    replica = ReplicaNotifier(url, TOKEN, retry_for, timeout, log, reports.append,
                              backoff_first_s=0.05)
    replica.start()
    return replica


def test_a_publish_is_one_put_with_the_path_and_token(stubs, captured_log):
    stub = stubs()
    log, stream = captured_log
    reports = []
    notifier(stub.url, log, reports).publish("/app/models/latest.tar.gz")
    wait_for(lambda: reports, 10)
    (call,) = stub.calls()
    assert call["path"] == "/model"
    assert call["body"] == {"model_file": "/app/models/latest.tar.gz"}
    assert call["query"] == {"token": [TOKEN]}
    assert call["content_type"] == "application/json"
    assert reports[0].status == 204 and reports[0].outcome == "loaded"
    assert TOKEN not in stream.getvalue()
    assert "loaded: 204 (attempt 1" in stream.getvalue()


def test_503_is_retried_with_backoff_until_204(stubs, captured_log):
    stub = stubs([503, 503, 503])
    log, stream = captured_log
    reports = []
    notifier(stub.url, log, reports).publish("/m/latest.tar.gz")
    wait_for(lambda: reports and reports[-1].outcome == "loaded", 20)
    assert [r.outcome for r in reports] == ["retrying"] * 3 + ["loaded"]
    assert [r.attempt for r in reports] == [1, 2, 3, 4]
    times = [c["at"] for c in stub.calls()]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert gaps[2] > gaps[0], f"no backoff between retries: {gaps}"
    assert TOKEN not in stream.getvalue()


def test_401_is_reported_once_and_not_retried(stubs, captured_log):
    stub = stubs([401])
    log, stream = captured_log
    reports = []
    notifier(stub.url, log, reports).publish("/m/latest.tar.gz")
    wait_for(lambda: reports, 10)
    time.sleep(0.5)  # ten first backoffs: a retry would have come by now
    assert len(stub.calls()) == 1
    assert reports[0].outcome == "refused" and reports[0].status == 401
    assert "RASA_TOKEN" in stream.getvalue()
    assert TOKEN not in stream.getvalue()


def test_a_hang_times_out_and_is_retried(stubs, captured_log):
    stub = stubs([("hang", 3)])
    log, _ = captured_log
    reports = []
    notifier(stub.url, log, reports, timeout=1.0).publish("/m/latest.tar.gz")
    wait_for(lambda: reports and reports[-1].outcome == "loaded", 20)
    assert reports[0].outcome == "retrying" and reports[0].status is None
    assert 0.9 < reports[0].duration_s < 2.5


def test_retries_give_up_after_retry_for(stubs, captured_log):
    stub = stubs([503] * 100)
    log, stream = captured_log
    reports = []
    notifier(stub.url, log, reports, retry_for=0.5).publish("/m/latest.tar.gz")
    wait_for(lambda: reports and reports[-1].outcome == "gave-up", 10)
    calls = len(stub.calls())
    time.sleep(0.5)
    assert len(stub.calls()) == calls, "kept calling after giving up"
    assert "RASA_RETRY_FOR" in stream.getvalue()


def test_a_newer_publish_supersedes_pending_retries(stubs, captured_log):
    stub = stubs([503] * 3)
    log, stream = captured_log
    reports = []
    replica = ReplicaNotifier(stub.url, TOKEN, 60, 5, log, reports.append, backoff_first_s=2.0)
    replica.start()
    replica.publish("/m/first.tar.gz")
    wait_for(lambda: reports, 10)
    replica.publish("/m/second.tar.gz")
    wait_for(lambda: any(r.outcome == "loaded" for r in reports), 30)
    bodies = [c["body"]["model_file"] for c in stub.calls()]
    assert bodies[0] == "/m/first.tar.gz"
    assert bodies[-1] == "/m/second.tar.gz"
    assert "supersedes" in stream.getvalue()
    assert [r for r in reports if r.outcome == "loaded"][0].model_file == "/m/second.tar.gz"


def test_a_replica_that_is_down_does_not_delay_the_others(stubs, captured_log):
    hanging = stubs([("hang", 5)])
    healthy = stubs()
    log, _ = captured_log
    reports = []
    started = time.monotonic()
    for url in (hanging.url, healthy.url):
        notifier(url, log, reports, timeout=10).publish("/m/latest.tar.gz")
    wait_for(lambda: healthy.calls(), 10)
    assert time.monotonic() - started < 2, "the healthy replica waited for the hanging one"


def test_display_url_hides_credentials():
    assert display_url("http://user:pw@rasa:5005/base") == "http://rasa:5005/base"


def test_hot_swap_end_to_end_and_the_token_never_printed(start_tool, models, stubs, tmp_path):
    first, second = stubs(), stubs([503])
    tool = start_tool(RASA_URL=f"{first.url},{second.url}/", RASA_TOKEN=TOKEN,
                      RASA_MODEL_PATH="/app/models/latest.tar.gz")
    tool.ready()
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 100_000, model_id="fox")
    wait_for(lambda: content_of(models / "latest.tar.gz") == model.read_bytes(), 30)
    wait_for(lambda: first.calls() and len(second.calls()) == 2, 30,
             message=f"both replicas called\n{tool.output}")
    for stub in (first, second):
        call = stub.calls()[-1]
        assert call["body"] == {"model_file": "/app/models/latest.tar.gz"}
        assert call["query"] == {"token": [TOKEN]}
    tool.wait_for_line("loaded: 204 (attempt 2")
    assert f"RASA_URL {first.url}, {second.url}/)" in tool.wait_for_line("publishing the newest")
    status = subprocess.run([sys.executable, "-m", "worker", "status"], cwd=tmp_path,
                            env=tool.env, capture_output=True, text=True, timeout=30)
    assert f"rasa {second.url}/: loaded 204" in status.stdout, status.stdout
    for text in (tool.output, status.stdout, status.stderr):
        assert TOKEN not in text
    # A reconcile that changes nothing calls nobody.
    calls = len(first.calls())
    (models / "unrelated.txt").write_text("x")
    time.sleep(1.0)
    assert len(first.calls()) == calls


def test_the_token_is_not_in_a_settings_error(tmp_path):
    from tests.helpers import tool_environment

    env = tool_environment(tmp_path, RASA_URL=f"http://rasa:5005/?token={TOKEN}",
                           RASA_TOKEN=TOKEN)
    result = subprocess.run([sys.executable, "-m", "worker"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "RASA_URL" in result.stderr and TOKEN not in result.stderr



def test_a_failing_report_does_not_stop_the_calls(stubs, captured_log):
    stub = stubs()
    log, stream = captured_log

    def broken_report(call):
        raise OSError(28, "No space left on device")

    replica = ReplicaNotifier(stub.url, TOKEN, 30, 5, log, broken_report, backoff_first_s=0.05)
    replica.start()
    replica.publish("/m/one.tar.gz")
    wait_for(lambda: len(stub.calls()) == 1, 10)
    replica.publish("/m/two.tar.gz")
    wait_for(lambda: len(stub.calls()) == 2, 10, message="the second publish was not sent")
    assert "could not record" in stream.getvalue()
