"""Prometheus metrics of the rotator (METRICS_PORT on METRICS_BIND), with the ecosystem's
client library.

prometheus_client is imported only when METRICS_PORT is set, so the default rotator does not
pay for it in memory.
"""

from __future__ import annotations


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

    def events(self, count: int) -> None:
        self.queue_events.inc(count)

    def rescan(self) -> None:
        self.rescans.inc()


class NoMetrics:
    """METRICS_PORT unset: every hook does nothing."""

    def reconciled(self, outcome, record) -> None:
        pass

    def rasa_call(self, call) -> None:
        pass

    def events(self, count: int) -> None:
        pass

    def rescan(self) -> None:
        pass
