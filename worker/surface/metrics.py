"""Prometheus metrics of the rotator (METRICS_PORT on METRICS_BIND), with the ecosystem's
client library.

prometheus_client is imported only when METRICS_PORT is set, so the default rotator does not
pay for it in memory.
"""

from __future__ import annotations

import threading

_RASA_GAUGES_LOCK = threading.Lock()


def start_metrics(settings, log):
    """Metrics on METRICS_BIND:METRICS_PORT, or NoMetrics when off or when the port cannot be
    served. `python -m worker` checks the port before it starts anything; should it be taken
    later, the rotator says so in one line and goes on publishing: a crash would only restart
    it into the same error until supervisord gives up."""
    if settings.metrics_port is None:
        return NoMetrics()
    try:
        metrics = Metrics(settings.metrics_port, settings.metrics_bind)
    except OSError as error:
        log.error("METRICS_PORT=%d cannot be served on METRICS_BIND %s (%s): publishing "
                  "without metrics", settings.metrics_port, settings.metrics_bind,
                  error.strerror or error, extra={"event": "metrics_failed"})
        return NoMetrics()
    log.info("serving Prometheus metrics on %s port %d", settings.metrics_bind,
             settings.metrics_port)
    return metrics


class Metrics:
    def __init__(self, port: int, bind: str = "0.0.0.0"):
        from prometheus_client import Counter, Gauge, start_http_server

        self.publishes = Counter("rotator_publishes", "Models published")
        self.deletions = Counter("rotator_deletions", "Model files deleted")
        self.failures = Counter("rotator_failures", "Actions that failed or were skipped",
                                ["reason"])
        self.last_publish = Gauge("rotator_last_publish_timestamp_seconds",
                                  "When the last publish finished (Unix time)")
        self.last_publish_duration = Gauge("rotator_last_publish_duration_seconds",
                                           "How long the last publish took")
        self.rasa_calls = Counter("rotator_rasa_calls", "PUT /model calls to Rasa",
                                  ["outcome"])
        self.queue_events = Counter("rotator_queue_events",
                                    "File events received from the reader")
        self.rescans = Counter("rotator_rescans", "Full rescans (requested or periodic)")
        start_http_server(port, addr=bind)

    def reconciled(self, outcome, record) -> None:
        for action in outcome.actions:
            if action.kind == "published":
                self.publishes.inc()
            elif action.kind == "deleted":
                self.deletions.inc()
            elif action.kind in ("failed", "skipped"):
                self.failures.labels(reason=action.reason).inc()
        if outcome.published and record is not None:
            self.last_publish.set(record.published_at + record.duration_s)
            self.last_publish_duration.set(record.duration_s)

    def rasa_call(self, call) -> None:
        self.rasa_calls.labels(outcome=call.outcome).inc()

    def rasa_replica(self, state) -> None:
        """Per replica (label: its URL without credentials): in sync, up, last convergence,
        and the model it serves (an info-style gauge, 1 for the current model_id only)."""
        with _RASA_GAUGES_LOCK:  # replica threads report concurrently; register once
            if not hasattr(self, "rasa_in_sync"):
                self._rasa_gauges()
            self._set_rasa_replica(state)

    def _rasa_gauges(self) -> None:
        from prometheus_client import Gauge

        self.rasa_in_sync = Gauge("rotator_rasa_replica_in_sync",
                                  "1 while the replica serves the published model",
                                  ["replica"])
        self.rasa_up = Gauge("rotator_rasa_replica_up",
                             "1 while the replica's GET /status answers", ["replica"])
        self.rasa_converged = Gauge("rotator_rasa_replica_last_converged_timestamp_seconds",
                                    "When the replica last came to serve the published "
                                    "model (Unix time)", ["replica"])
        self.rasa_serving = Gauge("rotator_rasa_replica_model_info",
                                  "The model_id the replica serves (value 1)",
                                  ["replica", "model_id"])
        self.rasa_served: dict[str, str] = {}

    def _set_rasa_replica(self, state) -> None:
        replica = state.url
        self.rasa_in_sync.labels(replica=replica).set(1 if state.in_sync else 0)
        self.rasa_up.labels(replica=replica).set(0 if state.state in ("down", "unknown") else 1)
        if state.converged_at is not None:
            self.rasa_converged.labels(replica=replica).set(state.converged_at)
        served = state.model_id or ""
        previous = self.rasa_served.get(replica)
        if previous is not None and previous != served:
            self.rasa_serving.remove(replica, previous)
        self.rasa_serving.labels(replica=replica, model_id=served).set(1)
        self.rasa_served[replica] = served

    def events(self, count: int) -> None:
        self.queue_events.inc(count)

    def remote(self, state: dict) -> None:
        """REMOTE_STORAGE: does the key hold the published model, the failures by cause, the
        last upload."""
        with _RASA_GAUGES_LOCK:
            if not hasattr(self, "remote_in_sync"):
                self._remote_gauges()
        self.remote_in_sync.set(1 if state.get("in_sync") else 0)
        failures = state.get("failures", 0)
        if failures > self._remote_failures_seen:
            self.remote_failures.labels(cause=state.get("cause") or "error").inc(
                failures - self._remote_failures_seen)
            self._remote_failures_seen = failures
        upload = state.get("last_upload")
        if upload and upload["at"] != self._remote_upload_seen:
            self._remote_upload_seen = upload["at"]
            self.remote_uploads.inc()
            self.remote_upload_duration.set(upload["duration_s"])
            self.remote_last_upload.set(upload["at"])

    def _remote_gauges(self) -> None:
        from prometheus_client import Counter, Gauge

        self.remote_in_sync = Gauge("rotator_remote_in_sync",
                                    "1 while REMOTE_MODEL_KEY holds the published model")
        self.remote_failures = Counter("rotator_remote_failures",
                                       "Failed checks or uploads of remote storage", ["cause"])
        self.remote_uploads = Counter("rotator_remote_uploads", "Uploads to remote storage")
        self.remote_upload_duration = Gauge("rotator_remote_last_upload_duration_seconds",
                                            "How long the last upload took")
        self.remote_last_upload = Gauge("rotator_remote_last_upload_timestamp_seconds",
                                        "When the last upload finished (Unix time)")
        self._remote_failures_seen = 0
        self._remote_upload_seen = None

    def rescan(self) -> None:
        self.rescans.inc()


class NoMetrics:
    """METRICS_PORT unset: every hook does nothing."""

    def reconciled(self, outcome, record) -> None:
        pass

    def rasa_call(self, call) -> None:
        pass

    def rasa_replica(self, state) -> None:
        pass

    def events(self, count: int) -> None:
        pass

    def remote(self, state: dict) -> None:
        pass

    def rescan(self) -> None:
        pass
