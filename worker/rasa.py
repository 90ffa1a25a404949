"""Tell running Rasa servers to load the published model: `PUT {url}/model`.

Rasa answers 204 once the model is loaded. Each replica gets its own thread, so one that is
down never delays the others; it sleeps on a condition (no wake-ups) until there is news.
The standard library's urllib is enough for one PUT with a JSON body.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class CallOutcome:
    """One PUT /model, as logged and as `status` shows it (never with the token)."""

    url: str
    model_file: str
    status: int | None  # HTTP status; None: no answer (refused, timed out)
    attempt: int
    duration_s: float
    outcome: str  # loaded | retrying | refused | gave-up
    detail: str
    at: float

    def as_dict(self) -> dict:
        return asdict(self)


def display_url(url: str) -> str:
    """The URL without user info, query or fragment: safe to print."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def put_model(url: str, model_file: str, token: str, timeout_s: float) -> tuple[int | None, str]:
    """One PUT {url}/model; returns (status or None, a short reason). Never raises."""
    endpoint = url.rstrip("/") + "/model"
    if token:
        endpoint += "?" + urllib.parse.urlencode({"token": token})
    request = urllib.request.Request(
        endpoint, data=json.dumps({"model_file": model_file}).encode(), method="PUT",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.reason or ""
    except urllib.error.HTTPError as error:
        return error.code, str(error.reason or "")
    except urllib.error.URLError as error:
        return None, str(error.reason)
    except (TimeoutError, OSError) as error:
        return None, str(error) or type(error).__name__


class ReplicaNotifier(threading.Thread):
    """Delivers the newest published model to one Rasa server, retrying transient failures."""

    def __init__(self, url: str, token: str, retry_for_s: float, timeout_s: float,
                 log: logging.Logger, report, backoff_first_s: float = BACKOFF_FIRST_S):
        super().__init__(name=f"rasa {display_url(url)}", daemon=True)
        self.backoff_first_s = backoff_first_s
        self.url = url
        self.shown_url = display_url(url)
        self._token = token
        self.retry_for_s = retry_for_s
        self.timeout_s = timeout_s
        self.log = log
        self.report = report
        self._changed = threading.Condition()
        self._wanted: str | None = None

    def publish(self, model_file: str) -> None:
        with self._changed:
            self._wanted = model_file
            self._changed.notify()

    def run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted is not None)
                model_file, self._wanted = self._wanted, None
            self._deliver(model_file)

    def _deliver(self, model_file: str) -> None:
        deadline = time.monotonic() + self.retry_for_s
        backoff = self.backoff_first_s
        attempt = 0
        while True:
            attempt += 1
            started = time.monotonic()
            status, reason = put_model(self.url, model_file, self._token, self.timeout_s)
            took = time.monotonic() - started
            reason = self._scrub(reason)
            if status is not None and 200 <= status < 300:
                self._outcome(model_file, status, attempt, took, "loaded", reason, logging.INFO)
                return
            if status is not None and 400 <= status < 500:
                hint = ("check RASA_TOKEN (Rasa's --auth-token)" if status in (401, 403)
                        else "check RASA_MODEL_PATH and RASA_URL")
                self._outcome(model_file, status, attempt, took, "refused",
                              f"{reason}; {hint}; not retried", logging.ERROR)
                return
            # No answer, a timeout or 5xx: try again, later and later, with jitter.
            wait = backoff / 2 + random.uniform(0, backoff / 2)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            if time.monotonic() + wait > deadline:
                self._outcome(model_file, status, attempt, took, "gave-up",
                              f"{reason}; still failing after {self.retry_for_s:.0f} s "
                              "(RASA_RETRY_FOR), giving up until the next publish",
                              logging.ERROR)
                return
            self._outcome(model_file, status, attempt, took, "retrying",
                          f"{reason}; retrying in {wait:.1f} s", logging.WARNING)
            with self._changed:
                if self._changed.wait_for(lambda: self._wanted is not None, timeout=wait):
                    self.log.info("rasa %s: a newer publish supersedes the retries for %s",
                                  self.shown_url, model_file,
                                  extra={"event": "rasa_superseded",
                                         "fields": {"url": self.shown_url}})
                    return

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
            text = text.replace(urllib.parse.quote(self._token, safe=""), "***")
        return text

    def _outcome(self, model_file, status, attempt, took, outcome, detail, level) -> None:
        result = CallOutcome(url=self.shown_url, model_file=model_file, status=status,
                             attempt=attempt, duration_s=round(took, 4), outcome=outcome,
                             detail=detail, at=time.time())
        shown_status = status if status is not None else "no answer"
        self.log.log(level, "rasa PUT %s/model %s: %s (attempt %d, %.0f ms)%s",
                     self.shown_url.rstrip("/"), outcome, shown_status, attempt, took * 1000,
                     f": {detail}" if detail and outcome != "loaded" else "",
                     extra={"event": "rasa_call", "fields": result.as_dict()})
        try:
            self.report(result)
        except Exception as error:  # a status file we cannot write must not stop the calls
            self.log.error("rasa %s: could not record the call's outcome: %s",
                           self.shown_url, error)


class RasaNotifier:
    """One ReplicaNotifier per RASA_URL entry; `publish` after each real publish."""

    def __init__(self, urls, model_file: str, token: str, retry_for_s: float, timeout_s: float,
                 log: logging.Logger, report):
        self.model_file = model_file
        self.replicas = [ReplicaNotifier(url, token, retry_for_s, timeout_s, log, report)
                         for url in urls]
        for replica in self.replicas:
            replica.start()

    def publish(self) -> None:
        for replica in self.replicas:
            replica.publish(self.model_file)
