"""Keep every Rasa server on the published model, like a level-triggered controller.

Desired state: the published model's `model_id` (from the publish record). Actual state: what
each replica's `GET /status` says it serves. Each replica has its own thread that compares the
two after every publish, at start and every RASA_SYNC_INTERVAL seconds, and sends
`PUT /model` only when the replica serves another model or none: a replica already in sync
(also after our own restart) is left alone, because every load stops Rasa answering anything.

Rolling: the threads share a semaphore of RASA_MAX_SWAPPING slots. A replica takes a slot just
before its PUT and gives it back once its `/status` shows the new model, or once it gave up; a
replica that is down never takes one (its status check fails first). Training-aware: a replica
that reports active training jobs is not swapped until they end (at most RASA_TRAINING_WAIT),
because the load would cut the training's response.

Canary (worker/rasa/canary.py): the first replica to swap a new model tries it alone; if it
cannot load it, no other replica is sent that model. Each replica also reports its
`GET /version` minimum, the version gate's minimum (worker/folder/loadable.py).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace

from worker.folder.loadable import highest_version
from worker.rasa.canary import CANARY, REFUSED, WAIT, Canary
from worker.rasa.client import Answer, RasaClient, display_url
from worker.text import printable

__all__ = ["RasaSync", "ReplicaSync", "ReplicaState", "Timing", "display_url"]

# What PUT /model answers when Rasa could not load the model (and keeps its old one): the
# model is refused. Any other failure (401/403 the token; 408, 429, 502-504 a proxy or a busy
# server; no answer) says nothing about the model and is retried or reported as it is.
MODEL_REFUSED_STATUSES = (400, 404, 409, 422, 500)


@dataclass(frozen=True)
class Timing:
    """How often a replica's thread looks again. Tests make these short."""

    backoff_first_s: float = 1.0  # first wait after a failure; doubles, with jitter
    backoff_max_s: float = 30.0
    poll_s: float = 1.0  # polling /status while training jobs run, or after a 204


@dataclass(frozen=True)
class Desired:
    """The published model as the replicas should serve it. `generation` grows per publish."""

    model_id: str | None
    generation: int
    model_file: str | None = None  # what PUT /model loads, when not the replica's model_file
    source: object = field(default=None, compare=False)  # its publish record, if known


@dataclass(frozen=True)
class CallOutcome:
    """One PUT /model (never with the token); `outcome`: loaded | retrying | refused | gave-up."""

    url: str
    model_file: str
    status: int | None
    attempt: int
    duration_s: float
    outcome: str
    detail: str
    at: float


@dataclass(frozen=True)
class ReplicaState:
    """One replica as `status` and the metrics show it."""

    url: str
    state: str = "unknown"  # in-sync | out-of-sync | swapping | waiting-for-training | down |
    #                         refused | model-refused (another replica could not load it) |
    #                         no-model-id | nothing-published | unknown
    model_id: str | None = None  # what it serves (None: nothing, or not known)
    published_model_id: str | None = None
    in_sync: bool = False
    training_jobs: int | None = None
    checked_at: float | None = None
    converged_at: float | None = None
    last_swap: dict | None = None  # the last PUT: status, outcome, duration_s, at
    last_error: str | None = None
    last_error_at: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("extra")
        return data


class _Backoff:
    """Exponential waits with jitter (half fixed, half random), within RASA_RETRY_FOR."""

    def __init__(self, timing: Timing, retry_for_s: float):
        self.deadline = time.monotonic() + retry_for_s
        self.backoff = timing.backoff_first_s
        self.backoff_max = timing.backoff_max_s

    def next_wait(self) -> float | None:
        wait = self.backoff / 2 + random.uniform(0, self.backoff / 2)
        self.backoff = min(self.backoff * 2, self.backoff_max)
        return None if time.monotonic() + wait > self.deadline else wait


class _Superseded(Exception):
    """A newer publish arrived: start over with the new desired state."""


class _Stopped(Exception):
    """`stop()` was called."""


class ReplicaSync(threading.Thread):
    """Converges one Rasa server to the desired model; never dies (every error is logged)."""

    def __init__(self, client: RasaClient, model_file: str, desired, slots: threading.Semaphore,
                 log: logging.Logger, report, retry_for_s: float, sync_interval_s: float,
                 training_wait_s: float, timing: Timing = Timing(),
                 canary: Canary | None = None, smoke_text: str = "",
                 remote_storage: str = ""):
        super().__init__(name=f"rasa {client.shown_url}", daemon=True)
        self.client = client
        self.url = client.shown_url
        self.model_file = model_file
        # What Rasa's /status calls the file once our PUT loaded it (the path's last name).
        self._put_file_name = model_file.rstrip("/").rsplit("/", 1)[-1]
        self._served_file: str | None = None
        self.desired = desired  # callable -> Desired | None
        self.slots = slots
        self.log = log
        self.report = report
        self.retry_for_s = retry_for_s
        self.sync_interval_s = sync_interval_s
        self.training_wait_s = training_wait_s
        self.timing = timing
        self.remote_storage = remote_storage
        self.state = ReplicaState(url=self.url)
        self.canary = canary or Canary()
        self.smoke_text = smoke_text
        # Its GET /version `minimum_compatible_version` (None: not known).
        self.minimum_version: str | None = None
        self._news = threading.Condition()
        self._check_requested = False
        self._stopped = False
        # The model_id a PUT could not bring (4xx, or Rasa loaded another model from
        # RASA_MODEL_PATH): not tried again until the next publish, or every check would cost
        # the replica an outage for nothing.
        self._refused: Desired | None = None
        # The publish another replica could not load (reported once).
        self._not_sent: Desired | None = None
        # A published model without model_id cannot be compared: one PUT per publish.
        self._blind_done: Desired | None = None
        # The model_id it was last seen serving in sync (None: out of sync since).
        self._in_sync_with: str | None = None

    # -- called from the rotator's thread ---------------------------------------------------

    def check(self) -> None:
        """Compare now (after a publish, at start); also wakes any wait for a newer publish."""
        with self._news:
            self._check_requested = True
            self._news.notify_all()

    # -- the replica's thread ---------------------------------------------------------------

    def stop(self) -> None:
        """End the thread at its next wait (tests; the rotator's threads live as long as it)."""
        with self._news:
            self._stopped = True
            self._news.notify_all()

    def run(self) -> None:
        while not self._stopped:
            with self._news:
                # No timer when RASA_SYNC_INTERVAL is 0: sleep until the next publish.
                self._news.wait_for(lambda: self._check_requested or self._stopped,
                                    timeout=self.sync_interval_s or None)
                self._check_requested = False
                if self._stopped:
                    return
            try:
                self._sync_surviving()
            except _Stopped:
                return

    def _sync_surviving(self) -> None:
        try:
            self.sync()
        except _Stopped:
            raise
        except Exception as error:  # noqa: BLE001 - this thread must outlive any error
            text = self.client.secrets.scrub("".join(traceback.format_exception(error)))
            self._error(f"unexpected {type(error).__name__}: "
                        f"{self.client.secrets.scrub(str(error))}", logging.ERROR)
            self.log.debug("rasa %s: %s", self.url, text)
            self._sleep(self.timing.backoff_max_s, None)

    def sync(self) -> None:
        """Bring this replica to the desired model, or give up for now. Restarts on a publish."""
        while True:
            desired = self.desired()
            if desired is None:
                self._update(state="nothing-published", published_model_id=None, in_sync=False)
                return
            self.refresh_version()
            try:
                self._converge(desired)
                return
            except _Superseded:
                self.log.info("rasa %s: a newer publish supersedes the work for model %s",
                              self.url, desired.model_id or "(no model_id)",
                              extra={"event": "rasa_superseded", "fields": {"url": self.url}})

    def refresh_version(self) -> None:
        """GET /version: keep its minimum_compatible_version (an old Rasa without one, or
        no answer, leaves what was known)."""
        answer = self.client.version()
        if answer.ok and isinstance(answer.data, dict):
            minimum = answer.data.get("minimum_compatible_version")
            if isinstance(minimum, str) and len(minimum) < 64:
                self.minimum_version = minimum

    def _converge(self, desired: Desired) -> None:
        try:
            self._converge_once(desired)
        finally:
            # Ended without a verdict (down, gave up, superseded): another replica may try.
            self.canary.release(desired, self.url)

    def _converge_once(self, desired: Desired) -> None:
        retry = _Backoff(self.timing, self.retry_for_s)
        while True:
            answer = self._look(desired)
            if answer is None:  # down, or an answer we cannot use: retry later
                if not self._wait_to_retry(retry, desired):
                    return
                continue
            if answer == "stop":
                return
            served, jobs = answer
            if desired.model_id is not None and served == desired.model_id:
                return self._converged(desired)
            if not self._worth_a_put(desired, served):
                return
            if jobs and not self._training_done(desired):
                continue  # the replica changed meanwhile (down, or swapped): look again
            outcome = self._swap(desired, despite_training=bool(jobs))
            if outcome == "wait":  # the canary is trying this model: ask again soon
                self._sleep(self.timing.poll_s, desired)
                continue
            if outcome == "retry" and not self._wait_to_retry(retry, desired):
                return
            if outcome == "done":
                return

    def _wait_to_retry(self, retry: _Backoff, desired: Desired) -> bool:
        """Sleep the next backoff; False (reported) when RASA_RETRY_FOR would be exceeded."""
        wait = retry.next_wait()
        if wait is None:
            self._error(f"{self.state.last_error}; still failing after "
                        f"{self.retry_for_s:.0f} s (RASA_RETRY_FOR), trying again at the next "
                        "check", logging.ERROR, state="down")
            return False
        self.log.warning("rasa %s: %s; trying again in %.1f s", self.url,
                         self.state.last_error, wait)
        self._sleep(wait, desired)
        return True

    def _look(self, desired: Desired):
        """GET /status -> (served model_id or None, training jobs); None: retry; "stop"."""
        answer = self.client.status()
        now = time.time()
        if answer.status == 409:  # Rasa's "No agent loaded"
            self._in_sync_with = None
            self._update(state="out-of-sync", model_id=None, checked_at=now, training_jobs=0,
                         published_model_id=self._shown(desired.model_id), in_sync=False)
            return None, 0
        if answer.status in (401, 403):
            self._error(f"GET /status answered {answer.status} {answer.reason}: check "
                        "RASA_TOKEN (Rasa's --auth-token)", logging.ERROR, state="refused")
            return "stop"
        parsed = _parse_status(answer)
        if parsed is None:
            shown = answer.status if answer.status is not None else "no answer"
            self._error(f"GET /status: {shown} {answer.reason}".rstrip(), None, state="down")
            return None
        # Compared raw (a short token inside a model_id must not make a replica in sync look
        # out of sync); only what is shown is scrubbed.
        served, jobs, self._served_file = parsed
        in_sync = desired.model_id is not None and served == desired.model_id
        if not in_sync:
            self._in_sync_with = None
        state = self.state.state
        if in_sync or state not in ("swapping", "waiting-for-training", "model-refused"):
            state = "in-sync" if in_sync else "out-of-sync"
        self._update(model_id=self._shown(served), training_jobs=jobs, checked_at=now,
                     state=state,
                     published_model_id=self._shown(desired.model_id), in_sync=in_sync)
        return served, jobs

    def _worth_a_put(self, desired: Desired, served: str | None) -> bool:
        if desired.model_id is None:
            # Nothing to compare with: one PUT after each publish, none at start or on a timer.
            if desired.generation == 0 or self._blind_done == desired:
                self._update(state="no-model-id", in_sync=False)
                return False
            return True
        if self._refused == desired:
            return False  # already reported; a new publish tries again
        if self.canary.verdict(desired) == REFUSED:
            self._refused_elsewhere(desired)
            return False
        self._update(state="out-of-sync", in_sync=False)
        return True

    def _training_done(self, desired: Desired) -> bool:
        """Wait (at most RASA_TRAINING_WAIT) for the replica's training jobs; False: look again."""
        started = time.monotonic()
        jobs = self.state.training_jobs
        self.log.info("rasa %s: %d training job(s) running; waiting up to %.0f s "
                      "(RASA_TRAINING_WAIT) before swapping, so no training response is cut",
                      self.url, jobs, self.training_wait_s,
                      extra={"event": "rasa_training_wait", "fields": {"url": self.url}})
        self._update(state="waiting-for-training")
        while time.monotonic() - started < self.training_wait_s:
            self._sleep(min(self.timing.poll_s,
                            max(0.0, self.training_wait_s - (time.monotonic() - started))),
                        desired)
            answer = self._look(desired)
            if not isinstance(answer, tuple):
                return False
            served, jobs = answer
            if served == desired.model_id and desired.model_id is not None:
                return False
            if not jobs:
                self.log.info("rasa %s: training finished after %.0f s; swapping now",
                              self.url, time.monotonic() - started)
                return True
        self.log.warning("rasa %s: %d training job(s) still running after %.0f s "
                         "(RASA_TRAINING_WAIT); swapping anyway", self.url, jobs,
                         self.training_wait_s)
        return True

    def _swap(self, desired: Desired, despite_training: bool) -> str:
        """Take a slot, PUT /model, confirm through /status. -> done | retry | again."""
        with self.slots:
            # The world may have moved while we waited for the slot: look once more.
            answer = self._look(desired)
            if answer is None:
                return "retry"
            if answer == "stop":
                return "done"
            served, jobs = answer
            if desired.model_id is not None and served == desired.model_id:
                self._converged(desired)
                return "done"
            if jobs and not despite_training:
                return "again"  # a training started: wait for it outside the slot
            if self._newer_than(desired):
                raise _Superseded
            role = self.canary.claim(desired, self.url)
            if role == WAIT:
                return "wait"
            if role == REFUSED:
                self._refused_elsewhere(desired)
                return "done"
            self.log.info("rasa %s: serves %s, published is %s: swapping (PUT /model%s)",
                          self.url, self._shown(served) or "no model",
                          self._shown(desired.model_id) or "(no model_id)",
                          ", the canary" if role == CANARY else "",
                          extra={"event": "rasa_swap", "fields": {"url": self.url,
                                                                   "canary": role == CANARY}})
            self._update(state="swapping")
            started = time.monotonic()
            if desired.model_file is not None:
                self.model_file = desired.model_file
                self._put_file_name = self.model_file.rstrip("/").rsplit("/", 1)[-1]
            put = self.client.put_model(self.model_file, self.remote_storage)
            took = time.monotonic() - started
            if put.ok:
                self._blind_done = desired
                self._call(put, took, "loaded", "", logging.INFO)
                return self._confirm(desired)
            if put.status in MODEL_REFUSED_STATUSES:
                # Rasa could not load it (400 "could not be loaded", 500 LoadingError) and
                # keeps its old model: the rollout of this model stops here.
                # With remote storage Rasa loads a key from its bucket: RASA_MODEL_PATH is
                # not used then.
                hint = ("check that Rasa reads the same BUCKET_NAME and AWS_ENDPOINT_URL, with "
                        "credentials" if self.remote_storage else "check RASA_MODEL_PATH: the "
                        "published file as Rasa sees it")
                self._refused = self._blind_done = desired
                self._call(put, took, "refused", f"{put.reason}; the model is not sent to "
                           "any other replica and not published again until its file "
                           f"changes (if every model is refused, {hint})", logging.ERROR)
                self.canary.refused(desired, self.url, f"PUT /model answered {put.status} "
                                    f"{put.reason}".rstrip())
                return "done"
            if put.status in (401, 403):
                self._refused = self._blind_done = desired
                self._call(put, took, "refused", f"{put.reason}; check RASA_TOKEN (Rasa's "
                           "--auth-token); not retried until the next publish", logging.ERROR)
                return "done"
            self._call(put, took, "retrying", put.reason, logging.WARNING)
            return "retry"

    def _confirm(self, desired: Desired) -> str:
        """After a 204: /status must show the published model_id before the slot is free."""
        if desired.model_id is None:
            self._update(state="no-model-id", in_sync=False, converged_at=time.time())
            self.canary.loaded(desired, self.url)
            return "done"
        deadline = time.monotonic() + max(self.client.timeout_s, self.timing.poll_s)
        while True:
            answer = self._look(desired)
            if isinstance(answer, tuple) and answer[0] == desired.model_id:
                if not self._smoke_test(desired):
                    return "done"
                self._converged(desired)
                return "done"
            if isinstance(answer, tuple) and self._served_file != self._put_file_name:
                # Rasa serves a file other than the one we sent: it restarted (with its own
                # --model) or someone loaded another model right after our 204. That says
                # nothing about RASA_MODEL_PATH: the next check swaps it again.
                self._error(f"serves model_id {self._shown(answer[0])} from another file right "
                            "after our load (restarted meanwhile?); trying again at the next "
                            "check",
                            logging.WARNING, state="out-of-sync")
                return "done"
            if isinstance(answer, tuple) or time.monotonic() > deadline:
                served = answer[0] if isinstance(answer, tuple) else None
                self._refused = desired
                self._error(f"loaded RASA_MODEL_PATH but serves model_id "
                            f"{self._shown(served)}, not the published "
                            f"{self._shown(desired.model_id)}: check that RASA_MODEL_PATH is the "
                            "published file as Rasa sees it; not retried until the next "
                            "publish", logging.ERROR, state="out-of-sync")
                if isinstance(answer, tuple):
                    self.canary.refused(desired, self.url, f"after the 204, /status shows "
                                        f"model_id {served}, not {desired.model_id}")
                return "done"
            time.sleep(self.timing.poll_s)

    def _smoke_test(self, desired: Desired) -> bool:
        """With RASA_SMOKE_TEXT: `POST /model/parse` must answer with a parse result, or the
        model counts as refused (the replica is swapped back once latest returns)."""
        if not self.smoke_text:
            return True
        answer = self.client.parse(self.smoke_text)
        if answer.ok and isinstance(answer.data, dict) and "intent" in answer.data:
            return True
        shown = answer.status if answer.status is not None else "no answer"
        detail = f"POST /model/parse (RASA_SMOKE_TEXT) answered {shown} {answer.reason}"
        self._refused = desired
        self._error(f"loaded model {desired.model_id} but {detail.rstrip()}; the model is not "
                    "sent to any other replica", logging.ERROR, state="refused")
        self.canary.refused(desired, self.url, detail.rstrip())
        return False

    def _refused_elsewhere(self, desired: Desired) -> None:
        if self._not_sent != desired:
            self._not_sent = desired
            self.log.warning("rasa %s: model %s was refused by another replica (the canary): "
                             "not sent here", self.url, desired.model_id or "(no model_id)",
                             extra={"event": "rasa_not_sent", "fields": {"url": self.url}})
        self._update(state="model-refused", in_sync=False, published_model_id=desired.model_id)

    def _converged(self, desired: Desired) -> None:
        self.canary.loaded(desired, self.url)
        newly = self._in_sync_with != desired.model_id
        self._in_sync_with = desired.model_id
        self._update(state="in-sync", in_sync=True,
                     published_model_id=self._shown(desired.model_id),
                     converged_at=time.time() if newly else self.state.converged_at,
                     last_error=None, last_error_at=None)
        if newly:
            shown = self._shown(desired.model_id)
            self.log.info("rasa %s serves the published model %s", self.url, shown,
                          extra={"event": "rasa_in_sync",
                                 "fields": {"url": self.url, "model_id": shown}})

    def _newer_than(self, desired: Desired) -> bool:
        current = self.desired()
        return current is not None and current.generation != desired.generation

    def _sleep(self, seconds: float, desired: Desired | None) -> None:
        """Wait `seconds`; a newer publish ends the wait early (raises _Superseded)."""
        with self._news:
            self._news.wait_for(
                lambda: self._stopped or (desired is not None and self._newer_than(desired)),
                timeout=seconds)
        if self._stopped:
            raise _Stopped
        if desired is not None and self._newer_than(desired):
            with self._news:
                self._check_requested = False  # this restart is the check it asked for
            raise _Superseded

    # -- what we show -----------------------------------------------------------------------

    def _shown(self, model_id: str | None) -> str | None:
        """A model_id as it may be printed: secrets scrubbed, one safe line."""
        return None if model_id is None else _printable(self.client.secrets.scrub(model_id))

    def _call(self, put: Answer, took: float, outcome: str, detail: str, level: int) -> None:
        call = CallOutcome(url=self.url, model_file=self.model_file, status=put.status,
                           attempt=1, duration_s=round(took, 4), outcome=outcome,
                           detail=detail, at=time.time())
        shown = put.status if put.status is not None else "no answer"
        self.log.log(level, "rasa PUT %s/model %s: %s (%.0f ms)%s", self.url.rstrip("/"),
                     outcome, shown, took * 1000, f": {detail}" if detail else "",
                     extra={"event": "rasa_call", "fields": asdict(call)})
        swap = {"status": put.status, "outcome": outcome, "duration_s": round(took, 3),
                "at": call.at}
        if outcome == "loaded":
            self._update(last_swap=swap, extra={"call": call})
        else:
            self._error(f"PUT /model: {shown} {detail}".rstrip(), None,
                        state="refused" if outcome == "refused" else "down",
                        last_swap=swap, extra={"call": call})

    def _error(self, message: str, level: int | None, **changes) -> None:
        message = _printable(self.client.secrets.scrub(message), 600)
        if level is not None:
            self.log.log(level, "rasa %s: %s", self.url, message,
                         extra={"event": "rasa_error", "fields": {"url": self.url}})
        self._update(last_error=message, last_error_at=time.time(), in_sync=False, **changes)

    def _update(self, **changes) -> None:
        changes.setdefault("extra", {})
        self.state = replace(self.state, **changes)
        try:
            self.report(self.state)
        except Exception as error:  # noqa: BLE001 - a state file we cannot write stops nothing
            self.log.error("rasa %s: could not record the replica's state: %s", self.url,
                           error)


def _printable(text: str, limit: int = 200) -> str:
    """A server's text as one safe line: control characters escaped, length bounded."""
    return printable(text[:limit]) + ("..." if len(text) > limit else "")


def _parse_status(answer: Answer) -> tuple[str | None, int, str | None] | None:
    """Rasa's /status body -> (model_id, training jobs, model file name); None when it is not
    that."""
    if answer.status != 200 or not isinstance(answer.data, dict):
        return None
    model_id = answer.data.get("model_id")
    jobs = answer.data.get("num_active_training_jobs", 0)
    model_file = answer.data.get("model_file")
    if model_id is not None and not isinstance(model_id, str):
        return None
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 0:
        return None
    return model_id, jobs, model_file if isinstance(model_file, str) else None


class RasaSync:
    """One ReplicaSync per RASA_URL entry, sharing RASA_MAX_SWAPPING slots.

    The rotator calls `want(model_id, published)` after every reconcile: a publish (or a new
    model_id) makes a new generation and every replica checks at once.
    """

    def __init__(self, urls, model_file: str, token: str, retry_for_s: float, timeout_s: float,
                 log: logging.Logger, report, sync_interval_s: float = 60.0,
                 max_swapping: int = 1, training_wait_s: float = 600.0,
                 timing: Timing = Timing(), canary: Canary | None = None,
                 smoke_text: str = "", remote_storage: str = ""):
        self.log = log
        self.canary = canary or Canary()
        self._lock = threading.Lock()
        self._desired: Desired | None = None
        self._generation = 0  # grows at every change, never reused
        self._started = False
        slots = threading.BoundedSemaphore(max_swapping)
        self.replicas = [
            ReplicaSync(RasaClient(url, token, timeout_s), model_file, self.desired, slots,
                        log, report, retry_for_s, sync_interval_s, training_wait_s, timing,
                        self.canary, smoke_text, remote_storage)
            for url in urls]

    def minimum_version(self) -> str | None:
        """The highest `minimum_compatible_version` among the replicas that answered."""
        return highest_version(r.minimum_version for r in self.replicas)

    def probe_versions(self, wait_s: float = 5.0) -> None:
        """Ask every replica's GET /version at once, waiting at most `wait_s` (at start,
        before the first publish: a replica that does not answer is left out)."""
        threads = [threading.Thread(target=r.refresh_version, daemon=True)
                   for r in self.replicas]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + wait_s
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()

    def desired(self) -> Desired | None:
        with self._lock:
            return self._desired

    def want(self, model_id: str | None, published: bool, exists: bool = True,
             source=None, model_file: str | None = None) -> None:
        """The published model after a reconcile; starts the threads the first time.
        `model_file`: what PUT /model loads for it (the immutable key in remote storage)."""
        with self._lock:
            previous = self._desired
            if not exists:
                self._desired = None
            elif (previous is None or published or model_id != previous.model_id
                  or model_file != previous.model_file):
                # Generation 0 is only the model found published at start: no blind PUT.
                if published or self._started:
                    self._generation += 1
                self._desired = Desired(model_id, self._generation, model_file, source)
            changed = self._desired != previous
            first = not self._started
            self._started = True
        if first:
            if self._desired is not None and self._desired.model_id is None:
                self.log.warning("rasa: the published model has no model_id in its "
                                 "metadata.json: Rasa gets one PUT after each publish, "
                                 "without checking what it serves")
            for replica in self.replicas:
                replica.start()
        if first or changed:
            for replica in self.replicas:
                replica.check()
