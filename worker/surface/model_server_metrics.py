"""/metrics of the model server, in Prometheus' exposition format.

The server counts in plain integers; prometheus_client (its own registry, this being a
process of its own) is imported on the first scrape, so a server nobody scrapes does not
pay for it.
"""

from __future__ import annotations


def registry_for(counters, gate):
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class ModelServerCollector:
        def collect(self):
            with counters.lock:
                values = dict(vars(counters))
            yield CounterMetricFamily("model_server_downloads", "Whole models sent (200)",
                                      value=values["downloads"])
            yield CounterMetricFamily("model_server_downloads_cut",
                                      "Downloads that ended before the last byte",
                                      value=values["downloads_cut"])
            yield CounterMetricFamily("model_server_not_modified",
                                      "304 answers: the replica has the published model",
                                      value=values["not_modified"])
            yield CounterMetricFamily("model_server_held_back",
                                      "304 answers to replicas waiting their turn (rolling)",
                                      value=values["held_back"])
            yield CounterMetricFamily("model_server_unauthorized",
                                      "Requests refused for a missing or wrong token",
                                      value=values["unauthorized"])
            yield CounterMetricFamily("model_server_sent_bytes", "Model bytes sent",
                                      value=values["bytes_sent"])
            yield GaugeMetricFamily("model_server_clients", "Connections open now",
                                    value=values["clients"])
            yield GaugeMetricFamily("model_server_swapping",
                                    "Replicas loading a model they downloaded (rolling)",
                                    value=gate.swapping())

    registry = CollectorRegistry(auto_describe=True)
    registry.register(ModelServerCollector())
    return registry


def exposition(registry) -> tuple[str, bytes]:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return CONTENT_TYPE_LATEST, generate_latest(registry)
