"""Rasa in sync: the per-replica controller against real HTTP servers on 127.0.0.1 that behave
like Rasa 3.6 (tests/rasa_stub.py), and the tool end to end with them."""

from __future__ import annotations

import html
import io
import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest

from tests.helpers import content_of, free_port, wait_for, wait_for_latest, write_model
from worker.rasa.client import Answer, RasaClient, Secrets
from worker.rasa.sync import RasaSync, Timing, display_url
from worker.surface.liveness import read_state

TOKEN = "s3cr3t t0k/en+%&="
MODEL_PATH = "/app/models/latest.tar.gz"
FAST = Timing(backoff_first_s=0.05, backoff_max_s=0.2, poll_s=0.05)


def token_forms(token: str = TOKEN) -> list[str]:
    """Every way a server may echo the token: raw, percent-encoded (either case, `/` kept or
    not, `+` or %20 for a space), encoded twice."""
    quote, plus = urllib.parse.quote, urllib.parse.quote_plus
    forms = {token, quote(token, safe=""), quote(token), plus(token), plus(token, safe="/"),
             quote(token, safe="").lower(), quote(quote(token, safe=""), safe=""),
             quote(token).replace("%20", "+")}
    return sorted(forms)


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or (TOKEN,):
        for form in token_forms(secret):
            assert form not in text, f"secret form {form!r} printed:\n{text}"
    # Partial leaks: the distinctive halves of the token never appear either.
    assert "s3cr3t" not in text and "t0k" not in text, text


class ListHandler(logging.Handler):
    """Keeps the records themselves: their `extra` fields are what LOG_FORMAT=json shows."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test.rasa.{time.monotonic_ns()}")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return log, stream


class Syncs:
    """RasaSync instances under test, with their reports collected per replica."""

    def __init__(self, log):
        self.log = log
        self.made: list[RasaSync] = []
        self.states: dict[str, object] = {}
        self.history: list = []
        self.lock = threading.Lock()

    def report(self, state) -> None:
        with self.lock:
            self.states[state.url] = state
            self.history.append(state)

    def make(self, urls, token=TOKEN, retry_for=30.0, timeout=5.0, interval=0.0,
             max_swapping=1, training_wait=30.0, timing=FAST, remote_storage="") -> RasaSync:
        sync = RasaSync(urls, MODEL_PATH, token, retry_for, timeout, self.log, self.report,
                        sync_interval_s=interval, max_swapping=max_swapping,
                        training_wait_s=training_wait, timing=timing,
                        remote_storage=remote_storage)
        self.made.append(sync)
        return sync

    def state(self, url):
        with self.lock:
            return self.states.get(display_url(url))

    def in_sync(self, url, model_id) -> bool:
        state = self.state(url)
        return state is not None and state.in_sync and state.model_id == model_id


@pytest.fixture
def syncs(captured_log):
    made = Syncs(captured_log[0])
    yield made
    for sync in made.made:
        sync.stop()


def closed_port_url() -> str:
    """A URL where nothing listens: a port outside the kernel's ephemeral range (one from
    bind(0), once closed, may be handed to another socket in the meantime)."""
    return f"http://127.0.0.1:{free_port()}"


# -- the controller rules ---------------------------------------------------------------------

def test_a_replica_already_serving_the_published_model_gets_no_put(stubs, syncs):
    stub = stubs(model_id="B", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url])
    sync.want("B", published=False)  # start, also after our own restart
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    sync.want("B", published=True)  # a publish of the same model changes nothing either
    wait_for(lambda: stub.status_checks() >= 2, 10)
    time.sleep(0.3)
    assert stub.calls() == []
    assert syncs.state(stub.url).converged_at is not None


@pytest.mark.parametrize("serving", ["A", None], ids=["another-model", "no-model-409"])
def test_a_replica_out_of_sync_gets_one_put_then_its_status_confirms(stubs, syncs, serving,
                                                                     captured_log):
    stub = stubs(model_id=serving, models={MODEL_PATH: "B"}, load_s=0.3)
    records = ListHandler()
    captured_log[0].addHandler(records)
    sync = syncs.make([stub.url])
    sync.want("B", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    log = captured_log[1].getvalue()
    if serving is None:  # Rasa's 409: no model, so not in sync with anything
        assert history_of(syncs, stub.url)[0].in_sync is False
    # Once Rasa serves B the replica is reported in sync, never "swapping" and in sync.
    assert all(s.state == "in-sync" for s in history_of(syncs, stub.url) if s.in_sync), \
        history_of(syncs, stub.url)
    # One replica: it is the canary (the first to try a new model).
    assert f"serves {serving or 'no model'}, published is B: swapping (PUT /model, the canary)" \
        in log, log
    took = re.search(r"rasa PUT \S+/model loaded: 204 \((\d+) ms\)", log)
    assert took and 250 <= int(took[1]) < 30_000, log  # the load took 0.3 s
    # LOG_FORMAT=json shows the fields: the swap line says it is the canary's.
    (swap,) = [r for r in records.records if getattr(r, "event", None) == "rasa_swap"]
    assert swap.fields["canary"] is True, swap.fields
    (call,) = stub.calls()
    assert call["body"] == {"model_file": MODEL_PATH}
    assert call["query"] == {"token": [TOKEN]}
    assert call["content_type"] == "application/json"
    state = syncs.state(stub.url)
    assert state.last_swap["outcome"] == "loaded" and state.last_swap["status"] == 204
    # The slot is given back only after /status showed the new model.
    statuses = [r["at"] for r in stub.calls("GET")]
    assert any(at > call["at"] for at in statuses)


def overlaps(loads) -> bool:
    spans = sorted(span for stub_loads in loads for span in stub_loads)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize("max_swapping", [1, 3])
def test_swaps_roll_one_replica_at_a_time(stubs, syncs, max_swapping):
    replicas = [stubs(model_id="A", models={MODEL_PATH: "B"}, load_s=0.4) for _ in range(3)]
    sync = syncs.make([r.url for r in replicas], max_swapping=max_swapping)
    sync.want("B", published=True)
    wait_for(lambda: all(syncs.in_sync(r.url, "B") for r in replicas), 20)
    loads = [r.loads for r in replicas]
    assert all(len(stub_loads) == 1 for stub_loads in loads)
    # RASA_MAX_SWAPPING=1: never two loads at once; with 3 slots they do overlap (so the
    # check can see an overlap when there is one).
    assert overlaps(loads) == (max_swapping > 1), loads


def test_a_replica_that_is_down_holds_no_slot(stubs, syncs):
    hanging = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[("hang", 4)] * 3)
    healthy = stubs(model_id="A", models={MODEL_PATH: "B"})
    down = closed_port_url()
    sync = syncs.make([down, hanging.url, healthy.url], timeout=10)
    started = time.monotonic()
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(healthy.url, "B"), 10)
    assert time.monotonic() - started < 3, "the healthy replica waited for a slot"
    assert hanging.calls() == []
    # A replica never reached is not in sync (nor is one not checked yet).
    wait_for(lambda: syncs.state(down) is not None and syncs.state(down).state == "down", 10)
    assert syncs.state(down).in_sync is False and syncs.state(down).model_id is None


def test_no_swap_while_training_jobs_run(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, training_jobs=1)
    sync = syncs.make([stub.url], training_wait=60)
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and
             syncs.state(stub.url).state == "waiting-for-training", 10)
    time.sleep(0.5)
    assert stub.calls() == [], "swapped while a training ran"
    stub.training_jobs = 0
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert len(stub.calls()) == 1
    assert "RASA_TRAINING_WAIT" in captured_log[1].getvalue()


def test_the_training_wait_is_bounded(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, training_jobs=2)
    sync = syncs.make([stub.url], training_wait=1)
    started = time.monotonic()
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert time.monotonic() - started >= 1
    assert "swapping anyway" in captured_log[1].getvalue()


def test_a_newer_publish_supersedes_the_retries(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "C"}, status_script=[503] * 3)
    slow = Timing(backoff_first_s=4.0, backoff_max_s=8.0, poll_s=0.05)
    sync = syncs.make([stub.url], timing=slow)
    sync.want("B", published=True)
    wait_for(lambda: stub.status_checks() >= 1, 10)
    time.sleep(0.2)
    stub.status_script.clear()
    started = time.monotonic()
    sync.want("C", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "C"), 10)
    assert time.monotonic() - started < 1.5, "waited out the backoff of the old publish"
    assert "a newer publish supersedes the work for model B" in captured_log[1].getvalue()


def test_a_replica_restarted_with_another_model_is_brought_back(stubs, syncs):
    stub = stubs(model_id="B", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url], interval=0.3)
    sync.want("B", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    first_converged = syncs.state(stub.url).converged_at
    stub.model_id = "old"  # Rasa restarted and its --model rule picked something else
    wait_for(lambda: len(stub.calls()) == 1 and syncs.in_sync(stub.url, "B"), 10)
    assert syncs.state(stub.url).converged_at > first_converged


def test_no_timer_when_the_sync_interval_is_0(stubs, syncs):
    stub = stubs(model_id="B", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url], interval=0)
    sync.want("B", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    checks = stub.status_checks()
    stub.model_id = "old"
    time.sleep(1.0)
    assert stub.status_checks() == checks and stub.calls() == []
    sync.want("B", published=True)  # the next publish looks again
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)


def test_a_load_rasa_refuses_is_not_repeated_until_the_next_publish(stubs, syncs):
    stub = stubs(model_id="A")  # no such model where Rasa runs: 400, keeps "A"
    sync = syncs.make([stub.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).state == "refused", 10)
    checks = stub.status_checks()
    wait_for(lambda: stub.status_checks() > checks + 3, 10)
    assert len(stub.calls()) == 1, "every check cost the replica another failed load"
    assert "RASA_MODEL_PATH" in syncs.state(stub.url).last_error
    sync.want("B", published=True)
    wait_for(lambda: len(stub.calls()) == 2, 10)


def test_rasa_loading_another_model_than_published_is_reported_once(stubs, syncs):
    stub = stubs(model_id="A", models={MODEL_PATH: "Z"})  # RASA_MODEL_PATH is another file
    sync = syncs.make([stub.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).last_error, 10)
    time.sleep(0.6)
    assert len(stub.calls()) == 1
    assert "serves model_id Z, not the published B" in syncs.state(stub.url).last_error


def test_a_replica_that_restarts_right_after_our_load_is_brought_back(stubs, syncs,
                                                                     captured_log):
    """Rasa answered 204, then /status shows another file than RASA_MODEL_PATH: the replica
    restarted with its own --model meanwhile (seen against real Rasa). That is no verdict on
    RASA_MODEL_PATH: the next check swaps it again instead of waiting for the next publish."""
    stub = stubs(script=[204], model_id="old", models={MODEL_PATH: "B"})  # 204, no load
    sync = syncs.make([stub.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert len(stub.calls()) == 2
    assert "serves model_id old from another file right after our load" in \
        captured_log[1].getvalue(), captured_log[1].getvalue()


def test_a_model_without_model_id_gets_one_put_per_publish_and_none_at_start(stubs, syncs):
    stub = stubs(model_id="A", models={MODEL_PATH: "A"})
    sync = syncs.make([stub.url], interval=0.1)
    sync.want(None, published=False)  # at start: cannot compare, so no outage for nothing
    wait_for(lambda: stub.status_checks() >= 3, 10)
    assert stub.calls() == []
    assert syncs.state(stub.url).state == "no-model-id"
    sync.want(None, published=True)
    wait_for(lambda: len(stub.calls()) == 1, 10)
    checks = stub.status_checks()
    wait_for(lambda: stub.status_checks() >= checks + 3, 10)
    assert len(stub.calls()) == 1, "the timer repeated a blind PUT"
    # Without a model_id nothing can say the replica serves the published model: never
    # reported in sync, before the blind PUT (the check) nor after it (the PUT's answer).
    blind = [s for s in history_of(syncs, stub.url) if s.state == "no-model-id"]
    assert blind and not any(s.in_sync for s in blind), blind
    assert any(s.converged_at for s in blind), "the PUT's own no-model-id report is missing"


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_point_at_rasa_token(stubs, syncs, captured_log, status):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[status])
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).state == "refused", 10)
    time.sleep(0.3)
    assert stub.calls() == [] and stub.status_checks() == 1
    assert "RASA_TOKEN" in captured_log[1].getvalue()


def test_retries_back_off_and_give_up_after_retry_for(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[503] * 1000)
    sync = syncs.make([stub.url], retry_for=1.0)
    sync.want("B", published=True)
    wait_for(lambda: "RASA_RETRY_FOR" in captured_log[1].getvalue(), 10)
    checks = stub.status_checks()
    times = [r["at"] for r in stub.calls("GET")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(gaps) > 2 * min(gaps), f"no backoff: {gaps}"
    time.sleep(0.5)
    assert stub.status_checks() == checks, "kept calling after giving up"
    assert syncs.state(stub.url).state == "down"


def test_a_put_timeout_is_retried_after_looking_again(stubs, syncs):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, script=[("hang", 2)])
    sync = syncs.make([stub.url], timeout=1.0)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 15)
    assert len(stub.calls()) == 2


# -- hostile URLs and responses: the thread survives, secrets stay hidden -------------------

@pytest.mark.parametrize("url", [
    "http://user:pa55word@127.0.0.1",  # no port: http.client took "pa55word@..." for a port
    "http://user:pa55word@127.0.0.1:99999",
    "http://user:pa55word@127.0.0.1:abc",
    "http://user:pa55word@[::1",
    "http://user:pa55word@bad host:5005",
])
def test_a_hostile_url_never_kills_the_thread_nor_shows_the_password(syncs, captured_log,
                                                                     url):
    sync = syncs.make([url], retry_for=0.3, interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: len(syncs.history) >= 4, 10)
    (replica,) = sync.replicas
    assert replica.is_alive()
    count = len(syncs.history)
    wait_for(lambda: len(syncs.history) > count, 10, message="the thread stopped checking")
    assert replica.is_alive()
    text = captured_log[1].getvalue() + json.dumps([s.as_dict() for s in syncs.history])
    assert "pa55word" not in text, text


def test_user_info_becomes_basic_auth_and_is_never_printed(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"})
    url = stub.url.replace("http://", "http://ops:p%40ss%2Fw0rd@")
    sync = syncs.make([url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    import base64
    expected = "Basic " + base64.b64encode(b"ops:p@ss/w0rd").decode()
    assert stub.calls()[0]["headers"]["Authorization"] == expected
    text = captured_log[1].getvalue() + json.dumps([s.as_dict() for s in syncs.history])
    for form in ("p@ss/w0rd", "p%40ss%2Fw0rd", "w0rd"):
        assert form not in text


@pytest.mark.parametrize("answer", [
    ("raw", 200, "OK", "<html>not json</html>"),
    ("raw", 200, "OK", "[1, 2]"),
    ("raw", 200, "OK", '{"model_id": 7, "num_active_training_jobs": 0}'),
    ("raw", 200, "OK", '{"model_id": "A", "num_active_training_jobs": -1}'),
    ("raw", 200, "OK", '{"model_id": "A", "num_active_training_jobs": true}'),
    ("raw", 200, "OK", "x" * 200_000),
    ("raw", 200, "OK", "\x00\xff" * 10),
    ("raw", 302, "Found", ""),
    ("hang", 2),
], ids=["html", "list", "id-int", "jobs-negative", "jobs-bool", "huge", "binary", "redirect",
        "hang"])
def test_a_hostile_status_answer_is_survived_and_then_converged(stubs, syncs, answer):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[answer] * 2)
    sync = syncs.make([stub.url], timeout=1.0)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 20)
    assert len(stub.calls()) == 1


def test_a_redirect_is_not_followed(stubs, syncs):
    elsewhere = stubs(model_id="A", models={MODEL_PATH: "B"})
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 302, "Found", "")] * 1000)
    sync = syncs.make([stub.url], retry_for=0.5)
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).state == "down", 10)
    assert elsewhere.requests == []


def also_recorded_in(book, sync, syncs) -> None:
    """Each replica's reports go to the test's history and to `book` (RUN_DIR's record)."""
    original = syncs.report

    def report(state):
        original(state)
        book.record(state)

    for replica in sync.replicas:
        replica.report = report


@pytest.mark.parametrize("form", token_forms(), ids=range(len(token_forms())))
def test_the_token_is_scrubbed_from_what_a_server_echoes(stubs, syncs, captured_log, form,
                                                         tmp_path):
    from worker.rasa.state import ReplicaBook

    echo = ("raw", 401, f"Denied /model?token={form}", f"<p>token={form} refused</p>")
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 503, f"Busy {form}", f"retry {form}")], script=[echo])
    book = ReplicaBook(tmp_path)
    sync = syncs.make([stub.url])
    also_recorded_in(book, sync, syncs)
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).state == "refused", 10)
    assert "Denied /model?token=***" in syncs.state(stub.url).last_error
    assert_no_secret(captured_log[1].getvalue())
    assert_no_secret(book.path.read_text())


def test_a_model_id_echoing_the_token_or_forging_lines_is_shown_safely(stubs, syncs,
                                                                       captured_log):
    stub = stubs(model_id=f"{TOKEN}\nINFO forged line", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    text = captured_log[1].getvalue() + json.dumps([s.as_dict() for s in syncs.history])
    assert_no_secret(text)
    assert "\nINFO forged line" not in captured_log[1].getvalue()


def test_the_server_echo_of_our_own_request_is_scrubbed(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, script=[("echo", 403)])
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).state == "refused", 10)
    assert "token=" in stub.calls()[0]["raw_path"]
    assert_no_secret(captured_log[1].getvalue() + json.dumps(syncs.state(stub.url).as_dict()))


def test_secrets_scrub_every_encoding_and_mixes():
    secrets = Secrets(TOKEN)
    for form in token_forms():
        assert secrets.scrub(f"a {form} b") == "a *** b", form
    mixed = "s3cr3t+t0k%2fen%2B%25%26%3D"
    assert secrets.scrub(mixed) == "***"
    assert secrets.scrub("nothing secret here") == "nothing secret here"
    assert Secrets("").scrub("keep") == "keep"


def test_a_failing_report_does_not_stop_the_replica(stubs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"})
    log, stream = captured_log

    def broken_report(state):
        raise OSError(28, "No space left on device")

    sync = RasaSync([stub.url], MODEL_PATH, TOKEN, 30, 5, log, broken_report,
                    sync_interval_s=0, timing=FAST)
    sync.want("B", published=True)
    wait_for(lambda: len(stub.calls()) == 1, 10)
    stub.model_id = "A"
    sync.want("B", published=True)
    wait_for(lambda: len(stub.calls()) == 2, 10, message="the second publish was not sent")
    assert "could not record" in stream.getvalue()


def test_display_url_hides_credentials_and_never_raises():
    assert display_url("http://user:pw@rasa:5005/base") == "http://rasa:5005/base"
    assert display_url("http://user:pw@rasa:abc") == "http://rasa:abc"
    assert "pw" not in display_url("http://user:pw@[::1")


def test_the_client_never_raises(tmp_path):
    for url in ("http://u:p@127.0.0.1:99999", "http://[::1", "http://h:abc", "nonsense"):
        answer = RasaClient(url, TOKEN, 1.0).status()
        assert answer.status is None and answer.reason


# -- the tool end to end ----------------------------------------------------------------------

def test_the_tool_syncs_each_replica_and_leaves_a_synced_one_alone_after_a_restart(
        start_tool, models, stubs, tmp_path):
    first, second = stubs(), stubs(status_script=[503])
    settings = dict(RASA_URL=f"{first.url},{second.url}/", RASA_TOKEN=TOKEN,
                    RASA_SYNC_INTERVAL="0")
    tool = start_tool(**settings)
    tool.ready()
    model = models / "20261126-101010-brave-fox.tar.gz"
    write_model(model, 100_000, model_id="fox")
    wait_for_latest(models, model.read_bytes(), 30)
    tool.wait_for_line(f"rasa {first.url} serves the published model fox")
    tool.wait_for_line(f"rasa {second.url}/ serves the published model fox")
    for stub in (first, second):
        (call,) = stub.calls()
        assert call["body"] == {"model_file": str(models / "latest.tar.gz")}
        assert call["query"] == {"token": [TOKEN]}
    status = tool.status()
    assert f"rasa {second.url}/: in-sync, serves fox" in status.stdout, status.stdout
    report = json.loads(tool.status("--json").stdout)
    by_url = {r["url"]: r for r in report["rasa"]}
    assert by_url[first.url]["in_sync"] and by_url[first.url]["model_id"] == "fox"
    assert by_url[first.url]["converged_at"] and by_url[first.url]["last_swap"]["status"] == 204
    # A reconcile that changes nothing calls nobody. A broken model (within its grace
    # period) wakes a reconcile that publishes nothing; the rotator's own count of ended
    # reconciles shows it ran, so the check below follows one real reconcile.
    ended = read_state(tmp_path / "run")["reconciles"]
    checked = (first.status_checks(), second.status_checks())
    (models / "20261126-101011-torn-owl.tar.gz").write_bytes(model.read_bytes()[:5000])
    wait_for(lambda: read_state(tmp_path / "run")["reconciles"] > ended, 30)
    assert content_of(models / "latest.tar.gz") == model.read_bytes()
    assert len(first.calls()) == 1 and len(second.calls()) == 1
    assert (first.status_checks(), second.status_checks()) == checked
    assert tool.stop() == 0
    # Our own restart: both replicas already serve the published model: no PUT, no outage.
    checks = first.status_checks()
    again = start_tool(**settings)
    again.ready()
    wait_for(lambda: first.status_checks() > checks and second.status_checks() > checks, 30)
    wait_for(lambda: json.loads(again.status("--json").stdout)["rasa"][0]
             .get("in_sync"), 30)
    assert len(first.calls()) == 1 and len(second.calls()) == 1
    for text in (tool.output, again.output, status.stdout, status.stderr):
        assert_no_secret(text)


def test_rasa_is_sent_rasa_model_path_not_our_own_path(start_tool, models, stubs):
    """Rasa's container mounts the volume elsewhere: the PUT names RASA_MODEL_PATH, the path
    where Rasa finds the file, never LATEST_MODEL_PATH (ours, which Rasa cannot open)."""
    rasa_side = "/app/models/latest.tar.gz"
    stub = stubs(models={rasa_side: "fox"})
    tool = start_tool(RASA_URL=stub.url, RASA_TOKEN=TOKEN, RASA_MODEL_PATH=rasa_side,
                      RASA_SYNC_INTERVAL="0")
    tool.ready()
    write_model(models / "20261126-101010-brave-fox.tar.gz", 10_000, model_id="fox")
    tool.wait_for_line(f"rasa {stub.url} serves the published model fox")
    assert [call["body"] for call in stub.calls()] == [{"model_file": rasa_side}]


def test_a_rasa_that_is_down_is_shown_but_does_not_fail_our_health(start_tool, models,
                                                                    tmp_path):
    down = closed_port_url()
    tool = start_tool(RASA_URL=f"http://ops:pa55word@{down.split('//')[1]}",
                      RASA_RETRY_FOR="1", RASA_TOKEN=TOKEN)
    tool.ready()
    write_model(models / "20261126-101010-brave-fox.tar.gz", 10_000, model_id="fox")
    wait_for(lambda: f"rasa {down}: down" in tool.status().stdout, 30)
    status = tool.status()
    assert status.returncode == 0, status.stdout
    assert f"rasa {down}: down" in status.stdout
    assert "last error" in status.stdout
    for text in (tool.output, status.stdout):
        assert "pa55word" not in text
        assert_no_secret(text)


def test_metrics_show_each_replica(start_tool, models, stubs, tmp_path):
    stub = stubs()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tool = start_tool(RASA_URL=stub.url, METRICS_PORT=str(port))
    tool.ready()
    write_model(models / "20261126-101010-brave-fox.tar.gz", 10_000, model_id="fox")
    tool.wait_for_line("serves the published model fox")

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    text = wait_for(lambda: (t := scrape()) and
                    f'rotator_rasa_replica_in_sync{{replica="{stub.url}"}} 1.0' in t and t, 20)
    assert f'rotator_rasa_replica_model_info{{model_id="fox",replica="{stub.url}"}} 1.0' in text
    assert f'rotator_rasa_replica_up{{replica="{stub.url}"}} 1.0' in text
    assert "rotator_rasa_replica_last_converged_timestamp_seconds" in text


def test_the_token_is_not_in_a_settings_error(tmp_path):
    from tests.helpers import tool_environment

    env = tool_environment(tmp_path, RASA_URL=f"http://rasa:5005/?token={TOKEN}",
                           RASA_TOKEN=TOKEN)
    result = subprocess.run([sys.executable, "-m", "worker"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "RASA_URL" in result.stderr and TOKEN not in result.stderr


# -- issue 18: what a hostile or unlucky peer sends back -------------------------------------

def test_a_short_token_inside_the_model_id_is_compared_raw(stubs, syncs, captured_log):
    """Item 3: RASA_TOKEN=abc123 and a model_id holding abc123. The replica already serving
    that model gets no PUT (an outage for nothing) and is in sync; only output is scrubbed."""
    model_id = "20261126-abc123-model"
    stub = stubs(model_id=model_id, models={MODEL_PATH: model_id})
    sync = syncs.make([stub.url], token="abc123")
    sync.want(model_id, published=True)
    wait_for(lambda: syncs.state(stub.url) and syncs.state(stub.url).in_sync, 10)
    time.sleep(0.3)
    assert stub.calls() == []
    assert syncs.state(stub.url).state == "in-sync"
    assert syncs.state(stub.url).model_id == "20261126-***-model"
    assert "abc123" not in captured_log[1].getvalue()


class RawServer:
    """A real TCP server on 127.0.0.1 that answers every connection with `answer` (bytes),
    `pause_s` between its bytes (0: all at once)."""

    def __init__(self, answer: bytes, pause_s: float = 0.0):
        self.answer, self.pause_s = answer, pause_s
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.recv(65536)
                if not self.pause_s:
                    conn.sendall(self.answer)
                    return
                for byte in self.answer:
                    conn.sendall(bytes([byte]))
                    time.sleep(self.pause_s)
            except OSError:
                pass

    def close(self):
        self.sock.close()


SPACED_TOKEN = "Zq9 Wv  Öx&ä7Kp"
HEX_TOKEN = "9f2c4e1a7b3d5f60" * 4  # what `openssl rand -hex 32` gives


def echo_forms(token: str) -> dict[str, tuple[bytes, bytes]]:
    """(reason phrase, body) of error answers echoing the token as servers do."""
    json_message = json.dumps({"message": f"bad token {token}"})  # \u00d6 escapes
    return {
        "raw-utf8-reason": (f"Denied {token}".encode(), b""),
        "text-runs-of-spaces": (b"Forbidden", f"bad token {token} refused".encode()),
        "json-escape": (b"Forbidden", json_message.encode()),
        "json-escape-upper": (b"Forbidden", json_message.replace("\\u00d6", "\\u00D6").encode()),
        "html-entities": (b"Forbidden", html.escape(f"<p>{token}</p>").encode()),
        "html-numeric": (b"Forbidden", "".join(f"&#{ord(c)};" for c in token).encode()),
        "percent-plus": (b"Forbidden", urllib.parse.quote_plus(token).encode()),
        "late-in-a-long-body": (b"Forbidden", (" " * 189 + "x" + token).encode()),
        "at-190-hex": (b"Forbidden", ("y" * 190 + HEX_TOKEN).encode()),
    }


@pytest.mark.parametrize("form", list(echo_forms(SPACED_TOKEN)))
def test_no_part_of_the_token_survives_any_echo(form):
    """Item 2: scrubbed before any cut, in every decoded form; only a short excerpt kept."""
    token = HEX_TOKEN if form == "at-190-hex" else SPACED_TOKEN
    reason, body = echo_forms(SPACED_TOKEN)[form]
    answer = (b"HTTP/1.1 403 " + reason + b"\r\nContent-Type: text/plain\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    server = RawServer(answer)
    try:
        result = RasaClient(server.url, token, 5.0).put_model(MODEL_PATH)
    finally:
        server.close()
    assert result.status == 403, result
    assert "***" in result.reason, result.reason
    pieces = {" ".join(token[i:i + 6].split()) for i in range(0, len(token) - 5)}
    folded = " ".join(result.reason.split())
    assert not [p for p in pieces if p in folded], result.reason
    assert len(result.reason) <= 303


def test_one_deadline_per_call_from_connect_to_the_last_byte():
    """Item 7: an answer sent one byte at a time never stretches a call beyond RASA_TIMEOUT
    (urllib's timeout is per read: each byte restarted it)."""
    answer = b"HTTP/1.0 204 No Content\r\nServer: drip\r\n\r\n"
    server = RawServer(answer, pause_s=0.5)  # about 20 s in all
    started = time.monotonic()
    try:
        result = RasaClient(server.url, "", 2.0).put_model(MODEL_PATH)
    finally:
        server.close()
    took = time.monotonic() - started
    assert result.status is None, result
    assert "RASA_TIMEOUT" in result.reason, result
    # The deadline ends the call: the answer is not read to its end first (20 s).
    assert took < 10, f"the call took {took:.1f} s"


# -- issue 20: what the mutation check found untested -----------------------------------------

def seen(syncs: Syncs, url: str, state: str) -> bool:
    """Whether the replica at `url` was reported in `state` at some point (a refused replica
    shows "out-of-sync" again at its next check)."""
    with syncs.lock:
        return any(s.url == display_url(url) and s.state == state for s in syncs.history)


def history_of(syncs: Syncs, url: str) -> list:
    with syncs.lock:
        return [s for s in syncs.history if s.url == display_url(url)]


def test_retry_waits_double_with_jitter_up_to_the_cap_and_end_within_retry_for():
    """The wait before each retry: half of the backoff fixed, half random; the backoff doubles
    up to backoff_max_s; a wait that would end beyond RASA_RETRY_FOR is not taken (None)."""
    from worker.rasa.sync import _Backoff

    timing = Timing(backoff_first_s=1.0, backoff_max_s=4.0, poll_s=1.0)
    firsts = set()
    for _ in range(200):
        retry = _Backoff(timing, retry_for_s=3600)
        waits = [retry.next_wait() for _ in range(5)]
        assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0, waits
        assert all(2.0 <= wait <= 4.0 for wait in waits[2:]), waits
        firsts.add(waits[0])
    assert min(firsts) < 0.6 and max(firsts) > 0.9, "no jitter over the whole half"
    assert _Backoff(timing, retry_for_s=0.4).next_wait() is None  # at least 0.5 s: beyond
    assert _Backoff(timing, retry_for_s=1.5).next_wait() is not None  # at most 1 s: within
    # The defaults, as the README says: "1 s doubling to 30 s, with jitter".
    capped = []
    for _ in range(200):
        retry = _Backoff(Timing(), retry_for_s=3600)
        waits = [retry.next_wait() for _ in range(8)]
        assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0, waits
        capped += waits[5:]
    assert 15.0 <= min(capped) < 15.5 and 29.5 < max(capped) <= 30.0, (min(capped),
                                                                      max(capped))


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500])
def test_a_put_answered_400_to_500_is_a_refusal_that_stops_the_rollout(stubs, syncs,
                                                                       captured_log, status):
    """README, "Loadable": 400, 404, 409, 422 and 500 mean Rasa could not load the model (it
    keeps the old one): no other replica is sent it, and no check sends it again."""
    first, second = (stubs(model_id="A", models={MODEL_PATH: "B"}, script=[status] * 2)
                     for _ in range(2))
    sync = syncs.make([first.url, second.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: {seen(syncs, s.url, "refused") for s in (first, second)} == {True, False}
             and any(seen(syncs, s.url, "model-refused") for s in (first, second)), 10)
    checks = first.status_checks() + second.status_checks()
    wait_for(lambda: first.status_checks() + second.status_checks() > checks + 4, 10)
    assert len(first.calls()) + len(second.calls()) == 1
    assert captured_log[1].getvalue().count("not sent here") == 1  # once per publish
    assert not [s for s in syncs.history if s.in_sync], "nobody serves the refused model"


@pytest.mark.parametrize("status", [300, 302, 405, 408, 429, 501, 502, 503, 504])
def test_a_put_answered_above_500_says_nothing_about_the_model_and_is_retried(stubs, syncs,
                                                                            status):
    """Nor does a redirect (not followed), which is no load either, nor a 4xx that is not
    Rasa's refusal (a proxy's 408 or 429): the model is not marked refused."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, script=[status])
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert len(stub.calls()) == 2
    outcomes = [s.last_swap["outcome"] for s in history_of(syncs, stub.url) if s.last_swap]
    assert outcomes[0] == "retrying" and outcomes[-1] == "loaded", outcomes
    errors = [s.last_error for s in history_of(syncs, stub.url) if s.last_error]
    assert errors[0].startswith(f"PUT /model: {status} "), errors


@pytest.mark.parametrize("status", [401, 403])
def test_a_put_answered_401_or_403_points_at_the_token_and_the_rollout_goes_on(
        stubs, syncs, status):
    """A refused token says nothing about the model: the other replica still gets it; the
    denied one is not asked again until the next publish."""
    denied = stubs(model_id="A", models={MODEL_PATH: "B"}, script=[status] * 2)
    # Its first /status is late, so the denied replica is the one that tries first.
    other = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[("hang", 0.5)])
    sync = syncs.make([denied.url, other.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(other.url, "B") and seen(syncs, denied.url, "refused"), 10)
    assert denied.calls()[0]["at"] < other.calls()[0]["at"]
    refused = [s for s in history_of(syncs, denied.url) if s.state == "refused"][0]
    assert "RASA_TOKEN" in refused.last_error and refused.last_swap["status"] == status
    checks = denied.status_checks()
    wait_for(lambda: denied.status_checks() > checks + 3, 10)
    assert len(denied.calls()) == 1, "a denied PUT was repeated before the next publish"


def test_a_status_without_training_jobs_counts_as_none_running(stubs, syncs):
    """An older Rasa's /status may lack num_active_training_jobs: no training, swap now."""
    body = '{"model_id": "A", "model_file": "a.tar.gz"}'
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 200, "OK", body)] * 2)  # the two looks before the PUT
    sync = syncs.make([stub.url], training_wait=60)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    states = history_of(syncs, stub.url)
    assert not [s for s in states if s.state == "waiting-for-training" or s.last_error], states
    assert states[0].training_jobs == 0


def test_a_negative_training_job_count_is_an_answer_not_used(stubs, syncs):
    body = '{"model_id": "A", "model_file": "a.tar.gz", "num_active_training_jobs": -1}'
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 200, "OK", body)] * 1000)
    sync = syncs.make([stub.url], retry_for=0.5, training_wait=60)
    sync.want("B", published=True)
    wait_for(lambda: seen(syncs, stub.url, "down")
             and "RASA_RETRY_FOR" in (syncs.state(stub.url).last_error or ""), 10)
    assert stub.calls() == []
    assert not seen(syncs, stub.url, "waiting-for-training")


def test_what_is_recorded_per_replica_in_the_run_folder(stubs, syncs, tmp_path):
    """RUN_DIR/rasa-replicas.json, which `status` and the metrics read: after a swap, what the
    replica serves, when it was checked and converged, and the last PUT (status, outcome, how
    long, when); no error left over."""
    from worker.rasa.state import ReplicaBook, read_replicas

    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, load_s=0.3)
    book = ReplicaBook(tmp_path, [stub.url])
    sync = syncs.make([stub.url], interval=0.1)
    also_recorded_in(book, sync, syncs)
    before = time.time()
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    after = time.time()
    checks = stub.status_checks()
    wait_for(lambda: stub.status_checks() > checks + 2, 10)  # later checks keep converged_at
    (record,) = read_replicas(tmp_path)
    assert {key: record[key] for key in ("url", "state", "model_id", "published_model_id",
                                         "in_sync", "training_jobs", "last_error",
                                         "last_error_at")} == {
        "url": stub.url, "state": "in-sync", "model_id": "B", "published_model_id": "B",
        "in_sync": True, "training_jobs": 0, "last_error": None, "last_error_at": None}
    swap = record["last_swap"]
    assert swap["status"] == 204 and swap["outcome"] == "loaded", swap
    assert 0.3 <= swap["duration_s"] < 5 and before <= swap["at"] <= after, swap
    assert swap["at"] <= record["converged_at"] <= after < record["checked_at"], record


BODY_LIMIT = 64 * 1024  # what the client reads of an answer (worker/rasa/client.py)


def http_answer(status: int, reason: bytes, body: bytes) -> bytes:
    return (f"HTTP/1.0 {status} ".encode() + reason + b"\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def json_of_size(size: int, **fields) -> bytes:
    """`fields` as a JSON object of exactly `size` bytes (a "pad" field fills it): cut short
    anywhere, it no longer parses."""
    bare = json.dumps({**fields, "pad": ""}).encode()
    body = json.dumps({**fields, "pad": "x" * (size - len(bare))}).encode()
    assert len(body) == size
    return body


def answer_from(raw: bytes, call: str, token: str = ""):
    server = RawServer(raw)
    try:
        client = RasaClient(server.url, token, 5.0)
        return client.status() if call == "status" else client.put_model(MODEL_PATH)
    finally:
        server.close()


@pytest.mark.parametrize("size, used", [(BODY_LIMIT, True), (BODY_LIMIT + 1, False)])
def test_a_status_body_is_read_up_to_64_kib_and_not_beyond(size, used):
    body = json_of_size(size, model_id="A", model_file="a.tar.gz", num_active_training_jobs=0)
    answer = answer_from(http_answer(200, b"OK", body), "status")
    assert answer.status == 200
    assert (answer.data is not None) == used, answer
    if used:
        assert answer.data["model_id"] == "A"


@pytest.mark.parametrize("size, shown", [(BODY_LIMIT, True), (BODY_LIMIT + 1, False)])
def test_an_error_body_is_shown_up_to_64_kib_and_never_beyond(size, shown):
    """Beyond what we read, a body is not shown at all: a secret could straddle the cut."""
    body = json_of_size(size, message="Agent could not be loaded")
    answer = answer_from(http_answer(400, b"Bad Request", body), "put")
    assert answer.status == 400
    if shown:
        assert answer.reason.startswith("Bad Request: Agent could not be loaded"), answer
    else:
        assert answer.reason == "Bad Request: (a body of more than 65536 bytes, not shown)"


@pytest.mark.parametrize("remote_storage, hint, not_hint", [
    ("", "check RASA_MODEL_PATH", "BUCKET_NAME"),
    ("aws", "BUCKET_NAME and AWS_ENDPOINT_URL", "RASA_MODEL_PATH")])
def test_a_refused_load_names_where_rasa_looked(stubs, syncs, captured_log, remote_storage,
                                                hint, not_hint):
    """With REMOTE_STORAGE Rasa loads a key from its bucket (RASA_MODEL_PATH is not used):
    a refusal names the bucket settings instead."""
    stub = stubs(model_id="A", refuse_load=400)
    sync = syncs.make([stub.url], remote_storage=remote_storage)
    sync.want("B", published=True)
    wait_for(lambda: seen(syncs, stub.url, "refused"), 10)
    (call,) = stub.calls()
    assert call["body"].get("remote_storage") == (remote_storage or None)
    refused = [s for s in history_of(syncs, stub.url) if s.state == "refused"][0]
    assert hint in refused.last_error and not_hint not in refused.last_error, refused
    assert hint in captured_log[1].getvalue()


def test_a_relative_rasa_model_path_is_sent_and_confirmed(stubs, captured_log):
    """RASA_MODEL_PATH may be relative to where Rasa runs (no slash at all)."""
    stub = stubs(model_id="A", models={"latest.tar.gz": "B"})
    syncs = Syncs(captured_log[0])
    sync = RasaSync([stub.url], "latest.tar.gz", "", 30, 5, syncs.log, syncs.report,
                    sync_interval_s=0, timing=FAST)
    syncs.made.append(sync)
    try:
        sync.want("B", published=True)
        wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    finally:
        sync.stop()
    assert [call["body"] for call in stub.calls()] == [{"model_file": "latest.tar.gz"}]


def test_a_model_without_model_id_is_sent_to_a_replica_serving_nothing(stubs, syncs):
    """Nothing published to compare with and nothing served (409): not "the same" model."""
    stub = stubs(model_id=None, models={MODEL_PATH: "A"})
    sync = syncs.make([stub.url])
    sync.want(None, published=True)
    wait_for(lambda: len(stub.calls()) == 1, 10)
    wait_for(lambda: seen(syncs, stub.url, "no-model-id"), 10)


def test_stop_ends_the_thread_even_in_a_retry_wait(stubs, syncs, captured_log, monkeypatch):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[503] * 1000)
    slow = Timing(backoff_first_s=20.0, backoff_max_s=20.0, poll_s=0.05)
    uncaught = []  # a thread that ends by an exception: Python prints its traceback
    monkeypatch.setattr(threading, "excepthook", uncaught.append)
    sync = syncs.make([stub.url], timing=slow)
    sync.want("B", published=True)
    wait_for(lambda: "trying again in" in captured_log[1].getvalue(), 10)
    sync.stop()
    (replica,) = sync.replicas
    replica.join(5)
    assert not replica.is_alive()
    assert "unexpected" not in captured_log[1].getvalue()
    assert uncaught == [], [args.exc_value for args in uncaught]


def test_the_thread_outlives_an_unexpected_error(stubs, captured_log):
    """A failure outside the HTTP calls (here the canary's callback, which records the loaded
    model beside the published file, on a full disk) is logged; the thread carries on."""
    from worker.rasa.canary import Canary

    def full_disk(desired, url):
        raise OSError(28, "No space left on device")

    stub = stubs(model_id="A", models={MODEL_PATH: "B"})
    syncs = Syncs(captured_log[0])
    sync = RasaSync([stub.url], MODEL_PATH, "", 30, 5, syncs.log, syncs.report,
                    sync_interval_s=0.1, timing=FAST, canary=Canary(on_loaded=full_disk))
    syncs.made.append(sync)
    try:
        sync.want("B", published=True)
        wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
        assert "unexpected OSError: [Errno 28] No space left" in captured_log[1].getvalue()
        assert sync.replicas[0].is_alive() and len(stub.calls()) == 1
    finally:
        sync.stop()


def test_nothing_published_is_shown_as_such(stubs, syncs):
    stub = stubs(model_id="A", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url])
    sync.want(None, published=False, exists=False)
    wait_for(lambda: syncs.state(stub.url), 10)
    state = syncs.state(stub.url)
    assert (state.state, state.in_sync, state.published_model_id) == (
        "nothing-published", False, None)
    assert stub.requests == []


def test_a_replica_in_training_does_not_wait_for_a_model_the_canary_refused(stubs, syncs):
    canary = stubs(model_id="A", refuse_load=400)
    # Its first /status is late, so the canary has refused the model when it looks.
    training = stubs(model_id="A", models={MODEL_PATH: "B"}, training_jobs=1,
                     status_script=[("hang", 0.5)])
    sync = syncs.make([canary.url, training.url], interval=0.1, training_wait=60)
    sync.want("B", published=True)
    wait_for(lambda: seen(syncs, training.url, "model-refused"), 10)
    checks = training.status_checks()
    wait_for(lambda: training.status_checks() > checks + 3, 10)
    assert not seen(syncs, training.url, "waiting-for-training")
    assert training.calls() == [] and len(canary.calls()) == 1


def test_a_smoke_parse_that_answers_with_an_intent_lets_the_model_in(stubs, captured_log):
    """RASA_SMOKE_TEXT: after the load, POST /model/parse with that text; an intent in the
    answer means the model works: in sync, and the rollout goes on."""
    first = stubs(model_id="A", models={MODEL_PATH: "B"})
    second = stubs(model_id="A", models={MODEL_PATH: "B"})
    from worker.rasa.canary import Canary

    loaded = []
    syncs = Syncs(captured_log[0])
    sync = RasaSync([first.url, second.url], MODEL_PATH, "", 30, 5, syncs.log, syncs.report,
                    sync_interval_s=0, timing=FAST, smoke_text="hello there",
                    canary=Canary(on_loaded=lambda desired, url: loaded.append(url)))
    syncs.made.append(sync)
    try:
        sync.want("B", published=True)
        wait_for(lambda: all(syncs.in_sync(s.url, "B") and syncs.state(s.url).converged_at
                             for s in (first, second)), 10)
    finally:
        sync.stop()
    for stub in (first, second):
        assert [c["body"] for c in stub.calls("POST")] == [{"text": "hello there"}]
        assert len(stub.calls()) == 1
    # The canary's verdict, given once (by whichever replica tried first).
    assert len(loaded) == 1 and loaded[0] in (first.url, second.url), loaded


def test_a_peer_s_text_is_cut_to_200_characters_or_300_for_an_error():
    """What we keep of a server's text: a reason phrase 200 characters, an error's reason
    and message 300 (then "..."), in `status` and the logs."""
    ok = answer_from(http_answer(200, b"OK " + b"y" * 400, b"not json"), "status")
    assert ok.reason == "OK " + "y" * 197 + "...", ok.reason
    body = b"x" * 1000
    denied = answer_from(http_answer(403, b"Forbidden", body), "put")
    assert denied.reason == ("Forbidden: " + "x" * 1000)[:300] + "...", denied.reason
    hostile = RasaClient("http://127.0.0.1:" + "a" * 400, "", 1.0).status()  # InvalidURL
    assert hostile.status is None and len(hostile.reason) == 303, hostile.reason


def test_a_json_escaped_slash_in_an_echoed_token_is_scrubbed():
    """JSON may write `/` as `\\/`: a token with a slash echoed that way is still hidden."""
    assert Secrets(TOKEN).scrub("token " + TOKEN.replace("/", "\\/")) == "token ***"


def test_a_bucket_key_is_sent_and_confirmed_by_its_file_name(stubs, syncs):
    """REMOTE_STORAGE: the PUT names the model's immutable key in the bucket; Rasa's /status
    then shows the key's last part as its model_file."""
    key = "latest.versions/5f1c0a.tar.gz"
    stub = stubs(model_id="A", models={key: "B"})
    sync = syncs.make([stub.url], remote_storage="aws")
    sync.want("B", published=True, model_file=key)
    wait_for(lambda: syncs.in_sync(stub.url, "B") and syncs.state(stub.url).converged_at, 10)
    assert [call["body"] for call in stub.calls()] == [
        {"model_file": key, "remote_storage": "aws"}]


def test_a_bucket_key_that_loads_another_model_id_is_refused_once(stubs, syncs):
    """After the 204, /status shows our key's file but another model_id: the key holds
    another model (no restart in between), so it is not sent again until the next publish."""
    key = "latest.versions/5f1c0a.tar.gz"
    stub = stubs(model_id="A", models={key: "Z"})
    sync = syncs.make([stub.url], interval=0.1, remote_storage="aws")
    sync.want("B", published=True, model_file=key)
    wait_for(lambda: any("serves model_id Z, not the published B" in (s.last_error or "")
                         for s in history_of(syncs, stub.url)), 10)
    checks = stub.status_checks()
    wait_for(lambda: stub.status_checks() > checks + 3, 10)
    assert len(stub.calls()) == 1


def test_an_error_whose_body_breaks_off_still_gives_its_status():
    """The body of an error answer is a bonus: a connection reset in the middle of it leaves
    the status as the answer (the client never raises)."""
    import struct

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve():
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 100\r\n\r\nshort")
        time.sleep(0.2)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, not a clean end

    threading.Thread(target=serve, daemon=True).start()
    try:
        answer = RasaClient(f"http://127.0.0.1:{listener.getsockname()[1]}", "",
                            5.0).put_model(MODEL_PATH)
    finally:
        listener.close()
    assert answer == Answer(400, "Bad Request"), answer


@pytest.mark.parametrize("token, escaped", [("Zq9\u00d6Wv-7Kp", "\\u00d6"),
                                           ("Zq9\uffffWv-7Kp", "\\uffff"),
                                           ("Zq9\U00010000Wv-7Kp", "\\ud800\\udc00"),
                                           ("Zq9\U0001F600Wv-7Kp", "\\ud83d\\ude00"),
                                           ("Zq9\U0001F601Wv-7Kp", "\\ud83d\\ude01"),
                                           ("Zq9\U000103FFWv-7Kp", "\\ud800\\udfff")],
                         ids=["basic-plane", "last-basic", "first-beyond", "beyond", "odd-low",
                              "all-low-bits"])
def test_a_token_beyond_the_basic_plane_is_scrubbed_from_json_escapes(token, escaped):
    """JSON escapes a character beyond U+FFFF as a surrogate pair (json.dumps writes 😀 as
    \\ud83d\\ude00): an error page that embeds the request as JSON hides such a token too,
    as it does one with \\u00d6."""
    embedded = json.dumps({"token": token})  # ensure_ascii: the escapes
    assert escaped in embedded
    body = f"<pre>request {embedded}</pre>".encode()
    answer = answer_from(http_answer(403, b"Forbidden", body), "put", token)
    assert answer.reason == 'Forbidden: <pre>request {"token": "***"}</pre>', answer.reason


def test_display_url_keeps_an_ipv6_host_in_brackets_and_its_port():
    assert display_url("http://ops:pw@[::1]:5005/base?x=1") == "http://[::1]:5005/base"
    assert display_url("http://rasa/") == "http://rasa/"


@pytest.mark.parametrize("raw, reason", [
    (http_answer(200, b"OK " + b"y" * 197, b"{}"), "OK " + "y" * 197),  # exactly 200: whole
    (http_answer(400, b"", b'{"message": "Agent could not be loaded"}'),
     "Agent could not be loaded"),  # no reason phrase: the message alone
    (http_answer(400, b"Bad Request", b"[1, 2]"), "Bad Request"),  # JSON, not Rasa's
    (http_answer(400, b"Bad Request", b'{"message": 7}'), "Bad Request"),
    (http_answer(400, b"Bad Request", b"<p>a &amp; b</p>"), "Bad Request: <p>a & b</p>"),
    (http_answer(503, b"Caf\xe9 ferm\xe9", b""), "Caf\xe9 ferm\xe9"),  # latin-1, not UTF-8
], ids=["200-chars", "no-reason", "json-list", "message-not-text", "html", "latin-1"])
def test_what_a_reason_shows(raw, reason):
    answer = answer_from(raw, "put")
    assert answer.reason == reason, answer


def test_a_status_answer_that_is_not_json_keeps_its_status():
    answer = answer_from(http_answer(200, b"OK", b"<html>hello</html>"), "status")
    assert (answer.status, answer.reason, answer.data) == (200, "OK", None)


def test_a_refused_connection_says_so():
    answer = RasaClient(closed_port_url(), "", 5.0).status()
    assert answer.status is None and "Connection refused" in answer.reason, answer


def test_a_replica_down_says_no_answer_and_one_serving_nothing_runs_no_training(stubs,
                                                                                syncs):
    down = closed_port_url()
    empty = stubs(model_id=None, training_jobs=3, models={MODEL_PATH: "B"})
    sync = syncs.make([down, empty.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(empty.url, "B"), 10)
    wait_for(lambda: syncs.state(down) and syncs.state(down).last_error, 10)
    assert syncs.state(down).last_error.startswith("GET /status: no answer ")
    assert history_of(syncs, empty.url)[0].training_jobs == 0  # 409: no model, no training


def test_a_replica_briefly_unreachable_after_the_204_is_confirmed_when_it_answers(stubs,
                                                                                 syncs):
    """Right after a load Rasa may not answer at once: /status is asked again until
    RASA_TIMEOUT (at least one poll) before the load counts as failed."""
    before = ('{"model_id": "A", "model_file": "stub.tar.gz", '
              '"num_active_training_jobs": 0}')
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 200, "OK", before)] * 2 + [503])
    sync = syncs.make([stub.url], timeout=2.0)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B") and syncs.state(stub.url).converged_at, 10)
    assert len(stub.calls()) == 1
    assert not any("loaded RASA_MODEL_PATH but" in (s.last_error or "")
                   for s in history_of(syncs, stub.url))


@pytest.mark.parametrize("answer", [("raw", 200, "OK", "<html>a proxy</html>"),
                                    ("raw", 200, "OK", '["3.6.21"]'),
                                    ("raw", 200, "OK", '{"minimum_compatible_version": 3}')],
                         ids=["html", "list", "number"])
def test_a_version_answer_that_is_not_rasa_s_is_ignored(stubs, syncs, captured_log, answer):
    """GET /version answered by something else (a proxy's page): no minimum known, and the
    replica is kept in sync as usual."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, version=answer)
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert sync.minimum_version() is None
    assert "unexpected" not in captured_log[1].getvalue()


def test_what_is_shown_of_a_model_id_or_an_error_is_bounded(stubs, captured_log):
    """A model_id is shown up to 200 characters, an error up to 600 (then "...")."""
    from worker.rasa.canary import Canary

    def full_disk(desired, url):
        raise OSError(28, "No space left on device " + "x" * 1000)

    long_id, exact_id = "m" * 300, "n" * 200
    long_stub = stubs(model_id=long_id, models={MODEL_PATH: long_id})
    exact_stub = stubs(model_id=exact_id, models={MODEL_PATH: exact_id})
    syncs = Syncs(captured_log[0])
    made = [RasaSync([stub.url], MODEL_PATH, "", 30, 5, syncs.log, syncs.report,
                     sync_interval_s=0, timing=FAST, canary=Canary(on_loaded=full_disk))
            for stub in (long_stub, exact_stub)]
    syncs.made.extend(made)
    try:
        made[0].want(long_id, published=True)
        made[1].want(exact_id, published=True)
        wait_for(lambda: all(syncs.state(s.url) and syncs.state(s.url).last_error
                             for s in (long_stub, exact_stub)), 10)
    finally:
        for sync in made:
            sync.stop()
    assert syncs.state(long_stub.url).model_id == "m" * 200 + "..."
    assert syncs.state(exact_stub.url).model_id == exact_id
    error = syncs.state(long_stub.url).last_error
    assert error.startswith("unexpected OSError: [Errno 28] No space left on device xxx")
    assert len(error) == 603 and error.endswith("x..."), error


def test_a_status_with_a_null_model_id_is_a_replica_serving_nothing(stubs, syncs):
    body = '{"model_id": null, "model_file": null, "num_active_training_jobs": 0}'
    stub = stubs(model_id="A", models={MODEL_PATH: "B"},
                 status_script=[("raw", 200, "OK", body)] * 2)
    sync = syncs.make([stub.url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert len(stub.calls()) == 1
    first = history_of(syncs, stub.url)[0]
    assert (first.state, first.model_id, first.last_error) == ("out-of-sync", None, None)


def test_a_load_that_serves_another_model_id_stops_the_rollout(stubs, syncs):
    """After the 204 /status shows another model_id from the file we sent: RASA_MODEL_PATH is
    not the published file as Rasa sees it, and no other replica is sent the model."""
    first, second = (stubs(model_id="A", models={MODEL_PATH: "Z"}) for _ in range(2))
    sync = syncs.make([first.url, second.url], interval=0.1)
    sync.want("B", published=True)
    wait_for(lambda: any(seen(syncs, s.url, "model-refused") for s in (first, second)), 10)
    checks = first.status_checks() + second.status_checks()
    wait_for(lambda: first.status_checks() + second.status_checks() > checks + 4, 10)
    assert len(first.calls()) + len(second.calls()) == 1


def test_a_new_model_id_without_a_publish_is_brought_to_the_replicas(stubs, syncs):
    """The published model's model_id can change without a publish of ours (its record was
    read again): the replicas follow it."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"})
    sync = syncs.make([stub.url])
    sync.want("A", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "A"), 10)
    sync.want("B", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    assert len(stub.calls()) == 1


def test_a_reconcile_that_changes_nothing_makes_no_check(stubs, syncs):
    """want() after every reconcile: the same model again (no publish) asks no replica."""
    stub = stubs(model_id="A", models={MODEL_PATH: "A"})
    sync = syncs.make([stub.url])
    sync.want("A", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "A"), 10)
    checks = stub.status_checks()
    for _ in range(3):
        sync.want("A", published=False)
    time.sleep(0.5)
    assert stub.status_checks() == checks


def test_a_failed_put_waits_its_backoff_before_the_next_try(stubs, syncs):
    """A PUT answered 503 is tried again after the backoff (half of it at least), not at
    once: a replica that cannot load now is not hammered."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, script=[503])
    timing = Timing(backoff_first_s=1.0, backoff_max_s=1.0, poll_s=0.05)
    sync = syncs.make([stub.url], timing=timing)
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    first, second = (call["at"] for call in stub.calls())
    assert second - first >= 0.5, f"tried again after {second - first:.3f} s"


def test_a_replica_that_gets_the_model_during_the_training_wait_is_in_sync_at_once(stubs,
                                                                                   syncs):
    """Waiting for a training to end, the replica starts serving the published model (loaded
    by someone else): it converged, no need to wait for the training any longer."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, training_jobs=1)
    sync = syncs.make([stub.url], training_wait=60)
    sync.want("B", published=True)
    wait_for(lambda: seen(syncs, stub.url, "waiting-for-training"), 10)
    stub.model_id = "B"  # the training goes on
    wait_for(lambda: syncs.in_sync(stub.url, "B") and syncs.state(stub.url).converged_at, 10)
    assert stub.calls() == []


def test_a_token_in_html_entities_in_a_reason_phrase_is_scrubbed():
    """A body is unescaped before it is scrubbed; a reason phrase is not, so the entity forms
    (`&amp;`, `&Ouml;`, `&#246;`) must match there."""
    token = "Zq9-&-\u00d6x7Kp"
    for shown in ("Zq9-&amp;-&Ouml;x7Kp", "Zq9-&#38;-&#xd6;x7Kp"):
        answer = answer_from(http_answer(403, f"Denied {shown}".encode(), b""), "put", token)
        assert answer.reason == "Denied ***", answer.reason


def test_a_training_replica_is_polled_about_once_a_second(stubs, syncs):
    """The default poll while a training runs: about once a second, not a busy loop."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, training_jobs=1)
    sync = syncs.make([stub.url], training_wait=60, timing=Timing())
    sync.want("B", published=True)
    wait_for(lambda: seen(syncs, stub.url, "waiting-for-training"), 10)
    checks = stub.status_checks()
    time.sleep(2.0)
    assert stub.status_checks() - checks <= 4, stub.status_checks() - checks


def test_user_info_hides_only_the_password(stubs, syncs):
    """With a password in RASA_URL, what is scrubbed is that password, not other text."""
    stub = stubs(model_id="A", models={MODEL_PATH: "B"}, status_script=[503])
    url = stub.url.replace("http://", "http://ops:p%40ss@")
    sync = syncs.make([url])
    sync.want("B", published=True)
    wait_for(lambda: syncs.in_sync(stub.url, "B"), 10)
    errors = [s.last_error for s in history_of(syncs, stub.url) if s.last_error]
    assert errors[0].startswith("GET /status: 503 "), errors


def test_in_sync_is_logged_once_not_at_every_check(stubs, syncs, captured_log):
    stub = stubs(model_id="A", models={MODEL_PATH: "A"})
    sync = syncs.make([stub.url], interval=0.1)
    sync.want("A", published=False)
    wait_for(lambda: syncs.in_sync(stub.url, "A"), 10)
    checks = stub.status_checks()
    wait_for(lambda: stub.status_checks() > checks + 3, 10)
    assert captured_log[1].getvalue().count("serves the published model A") == 1


def test_a_load_that_serves_another_model_id_is_judged_at_the_first_look(stubs, syncs):
    """After the 204, one /status showing another model_id is the verdict: no polling until
    RASA_TIMEOUT first."""
    stub = stubs(model_id="A", models={MODEL_PATH: "Z"})
    sync = syncs.make([stub.url], timeout=5.0)
    sync.want("B", published=True)
    wait_for(lambda: any("serves model_id Z" in (s.last_error or "")
                         for s in history_of(syncs, stub.url)), 10)
    assert stub.status_checks() <= 4, stub.status_checks()  # 2 before the PUT, 1 after


def test_a_version_probe_does_not_hold_the_start_beyond_its_wait(stubs, syncs):
    stub = stubs(model_id="A", version=("hang", 4))
    sync = syncs.make([stub.url], timeout=10.0)
    started = time.monotonic()
    sync.probe_versions(wait_s=0.5)
    assert time.monotonic() - started < 3, "the start waited for the hanging /version"
    assert sync.minimum_version() is None


@pytest.mark.parametrize("model_id, warned", [(None, True), ("A", False)])
def test_a_published_model_without_model_id_is_warned_about_at_start(stubs, syncs,
                                                                      captured_log, model_id,
                                                                      warned):
    stub = stubs(model_id="A", models={MODEL_PATH: "A"})
    sync = syncs.make([stub.url])
    sync.want(model_id, published=False)
    wait_for(lambda: syncs.state(stub.url), 10)
    assert ("has no model_id in its metadata.json" in captured_log[1].getvalue()) == warned


def test_a_token_in_a_reason_phrase_that_is_not_utf8_is_scrubbed():
    """A reason phrase that is not UTF-8 as a whole (a latin-1 é) is shown as latin-1: the
    token's UTF-8 bytes in it then read as latin-1 text, which is scrubbed too."""
    token = "Zq9\u00d6x7Kp"
    reason = b"Caf\xe9 " + token.encode()
    answer = answer_from(http_answer(403, reason, b""), "put", token)
    assert answer.reason == "Caf\xe9 ***", answer.reason


def test_the_password_as_written_in_the_url_is_scrubbed_too():
    """A percent-escape that is not UTF-8 (%FF) decodes to U+FFFD, so the decoded password's
    forms miss the URL's own text of it: that text is a secret of its own."""
    client = RasaClient("http://ops:%FFp4ss-w0rd@127.0.0.1:5005/", "", 1.0)
    for echo in ("http://ops:%FFp4ss-w0rd@127.0.0.1:5005/", "user info ops:%FFp4ss-w0rd",
                 "user info ops:%ffp4ss-w0rd", "encoded again ops:%25FFp4ss-w0rd"):
        shown = client.secrets.scrub(echo)
        assert "p4ss-w0rd" not in shown, shown


@pytest.mark.parametrize("jobs", [-1, "2", True, 1.5, None, [1]])
def test_a_training_job_count_that_is_not_a_whole_number_is_not_rasa_s_status(jobs):
    """Rasa counts its training jobs in a whole number from 0: any other value (a proxy's
    page, a changed API) makes the answer unusable, never a count and never an error."""
    from worker.rasa.sync import _parse_status

    body = {"model_id": "A", "model_file": "a.tar.gz", "num_active_training_jobs": jobs}
    assert _parse_status(Answer(200, "OK", body)) is None
    assert _parse_status(Answer(200, "OK", {**body, "num_active_training_jobs": 2})) == \
        ("A", 2, "a.tar.gz")
