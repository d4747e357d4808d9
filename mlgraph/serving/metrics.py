"""The service's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

Error counts are labelled by the error-kind table (mlgraph.core.http_errors); latencies by the paths of
the service's routes (mlgraph.serving.core.ROUTES), every other path as "other".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from mlgraph.core.http_errors import METRIC_LABELS, ErrorKind

# One-row latencies sit around a millisecond; batches and cold paths reach seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    def __init__(self, experiment: str, endpoints: Iterable[str] = ()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "mlgraph_request_latency_seconds",
            "Request latency, from first byte in to last out",
            ["endpoint"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mlgraph_request_errors_total", "Requests answered with an error, by kind", ["kind"], registry=self.registry
        )
        self.predictions = Counter(
            "mlgraph_predictions_total",
            "Predicted rows by label and model version",
            ["label", "model_version"],
            registry=self.registry,
        )
        self.model_info = Gauge(
            "mlgraph_model_info",
            "1 for the model being served",
            ["experiment", "model_version", "runtime", "config_hash"],
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "mlgraph_model_reload_failures_total", "Champions that could not be served", registry=self.registry
        )
        self.log_pending = Gauge(
            "mlgraph_prediction_log_pending", "Predictions queued for the log writer", registry=self.registry
        )
        self.experiment = experiment
        self._latency = {e: self.latency.labels(e) for e in (*endpoints, "other")}
        self._errors = {label: self.errors.labels(label) for label in METRIC_LABELS}
        self._counts: dict[tuple[str, str], Any] = {}
        for child in self._errors.values():
            child.inc(0)

    def observe(self, endpoint: str, seconds: float) -> None:
        (self._latency.get(endpoint) or self._latency["other"]).observe(seconds)

    def refused(self, kind: ErrorKind) -> None:
        """Count one request answered with an error of `kind` (kinds without a metric label are not counted)."""
        if kind.metric is not None:
            self._errors[kind.metric].inc()

    def predicted(self, labels: list[Any], version: str) -> None:
        for label, n in ((labels[0], 1),) if len(labels) == 1 else Counter(map(str, labels)).items():
            key = (str(label), version)
            child = self._counts.get(key)
            if child is None:
                child = self._counts[key] = self.predictions.labels(*key)
            child.inc(n)

    def serving(self, model: Any) -> None:
        self.model_info.clear()
        c = model.champion
        self.model_info.labels(self.experiment, c.model_version, model.runtime, c.config_hash).set(1)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
