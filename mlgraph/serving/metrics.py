"""The service's Prometheus metrics, in a registry of its own (one per app, so tests can run several).

Error counts are labelled by the error-kind table (mlgraph.core.http_errors); latencies by the paths of
the service's routes (mlgraph.serving.core.ROUTES), every other path as "other". The prediction log's
writer is read at each scrape (`watch_log`): whether it is healthy, its queue, and its error, rejection,
drop, rotation and reopen counts, as the writer itself counts them.

Saturation shows in two more figures: the requests in flight (received, not yet answered; counted by the
app's guard, read at each scrape) and the event loop's lag — how late a background task's
`asyncio.sleep(LAG_INTERVAL_S)` wakes (`watch_event_loop`). Work that holds the loop (a slow inline
prediction, a GIL-heavy thread) delays every request by that much, before any latency histogram sees it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mlgraph.core.http_errors import METRIC_LABELS, ErrorKind

# One-row latencies sit around a millisecond; batches and cold paths reach seconds.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_INTERVAL_S = 0.1  # the event-loop lag probe's sleep: 10 wake-ups a second cost nothing measurable
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


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
        self.loop_lag = Histogram(
            "mlgraph_event_loop_lag_seconds",
            f"How late a {LAG_INTERVAL_S:g} s sleep on the event loop wakes (time the loop was held)",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_last = Gauge(
            "mlgraph_event_loop_lag_last_seconds", "The event loop's lag at its latest probe", registry=self.registry
        )
        self.in_flight = 0  # requests received and not yet answered (the guard counts; one thread, the loop's)
        self.registry.register(_InFlightCollector(self))
        self.experiment = experiment
        self._latency = {e: self.latency.labels(e) for e in (*endpoints, "other")}
        self._errors = {label: self.errors.labels(label) for label in METRIC_LABELS}
        self._counts: dict[tuple[str, str], Any] = {}
        for child in self._errors.values():
            child.inc(0)

    def watch_log(self, status: Callable[[], Any]) -> None:
        """Report the prediction-log writer whose `status()` (a log_writer.WriterStatus) this is, at every scrape."""
        self.registry.register(_LogCollector(status))

    def watch_batching(self, coalescer: Any) -> None:
        """Report the model calls of a serving.batching.Coalescer and the requests they answered (their ratio
        is the mean batch size: it grows with the load)."""
        self.registry.register(_BatchCollector(coalescer))

    async def watch_event_loop(self, interval: float = LAG_INTERVAL_S) -> None:
        """Measure the event loop's lag forever (run it as a task; cancel it to stop)."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            lag = max(0.0, loop.time() - start - interval)
            self.loop_lag.observe(lag)
            self.loop_lag_last.set(lag)

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


# (name, help, WriterStatus field): gauges, then counters (exposed with the _total suffix).
_LOG_GAUGES = (
    (
        "mlgraph_prediction_log_writer_healthy",
        "1 while the prediction log is being written, 0 while it fails",
        "healthy",
    ),
    ("mlgraph_prediction_log_pending", "Predicted rows queued for the log writer", "pending"),
    ("mlgraph_prediction_log_pending_bytes", "Estimated bytes queued for the log writer", "pending_bytes"),
    ("mlgraph_prediction_log_max_pending", "Rows the log queue holds before requests are refused", "max_pending_rows"),
)
_LOG_COUNTERS = (
    ("mlgraph_prediction_log_records", "Rows written to the prediction log", "records"),
    (
        "mlgraph_prediction_log_write_errors",
        "Failed opens, writes, fsyncs and rotations (each retried)",
        "write_errors",
    ),
    ("mlgraph_prediction_log_rejected", "Requests answered 503 because the log queue was full", "rejected"),
    ("mlgraph_prediction_log_dropped", "Rows never written (unencodable, or pending when closing gave up)", "dropped"),
    ("mlgraph_prediction_log_rotations", "Prediction log rotations", "rotations"),
    ("mlgraph_prediction_log_reopens", "Times the log path changed under the open file and was reopened", "reopens"),
    ("mlgraph_prediction_log_removed_files", "Rotated log files deleted by retention", "removed_files"),
)


class _InFlightCollector:
    NAME, DOC = "mlgraph_requests_in_flight", "HTTP requests received and not yet answered"

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self.NAME, self.DOC, value=float(self.metrics.in_flight))

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(self.NAME, self.DOC)


class _BatchCollector:
    FAMILIES = (
        ("mlgraph_model_calls", "Model calls made for requests predicted on the event loop", "calls"),
        ("mlgraph_model_call_requests", "Requests answered by those calls (batched per loop turn)", "requests"),
    )

    def __init__(self, coalescer: Any) -> None:
        self.coalescer = coalescer

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for name, doc, attr in self.FAMILIES:
            yield CounterMetricFamily(name, doc, value=float(getattr(self.coalescer, attr)))

    def describe(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        for name, doc, _ in self.FAMILIES:
            yield CounterMetricFamily(name, doc)


class _LogCollector:
    def __init__(self, status: Callable[[], Any]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.status()
        for name, doc, attr in _LOG_GAUGES:
            yield GaugeMetricFamily(name, doc, value=float(getattr(status, attr)))
        for name, doc, attr in _LOG_COUNTERS:
            yield CounterMetricFamily(name, doc, value=float(getattr(status, attr)))

    def describe(self) -> Iterator[Any]:
        # Names only, so registering it never calls status() (the registry describes collectors on register).
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, doc, _ in _LOG_GAUGES:
            yield GaugeMetricFamily(name, doc)
        for name, doc, _ in _LOG_COUNTERS:
            yield CounterMetricFamily(name, doc)
