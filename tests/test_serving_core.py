"""The service's request core without HTTP: bytes in, an Answer or a Refusal out (mlgraph/serving/core.py),
the route table, and the one table of error kinds (mlgraph/core/http_errors.py) the wrapper and the
dashboard answer from."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.http_errors import (
    ERROR_KINDS,
    INTERNAL,
    MALFORMED_JSON,
    METHOD_NOT_ALLOWED,
    METRIC_LABELS,
    NOT_FOUND,
    NOT_READY,
    TOO_LARGE,
    VALIDATION,
    Refusal,
    kind_for_status,
)
from mlgraph.serving.core import ROUTES, Answer, ServiceCore
from mlgraph.serving.guard import refusal_response
from mlgraph.serving.log_writer import WriterStatus
from mlgraph.serving.metrics import ServiceMetrics
from mlgraph.serving.model import FLOAT, INT, STR, Feature, InputSpec

SPEC = InputSpec(
    "classification",
    "label",
    (Feature("minutes", FLOAT, False), Feature("days", INT, False), Feature("country", STR, True)),
)
ROW = {"minutes": 1.5, "days": 3, "country": "NL"}


@dataclass
class FakeModel:
    version: str = "7"
    runtime: str = "onnx_fp32"
    inline_rows: int = 16
    fail: bool = False

    def predict(self, rows: list[dict]) -> list[dict]:
        if self.fail:
            raise RuntimeError("secret internal detail")
        return [{"prediction": int(r["minutes"] > 1), "probability": 0.75} for r in rows]

    def describe(self) -> dict:
        return {"model_version": self.version, "runtime": self.runtime}


@dataclass
class FakeWriter:
    entries: list = field(default_factory=list)
    path: Path = Path("prediction_log.jsonl")
    records: int = 0
    failures: int = 0

    def submit(self, entry: Any) -> None:
        self.entries.append(entry)

    def pending(self) -> int:
        return 0

    def status(self) -> WriterStatus:
        return WriterStatus(
            path=str(self.path),
            healthy=True,
            records=self.records,
            pending=0,
            pending_bytes=0,
            max_pending_rows=100,
            max_pending_bytes=1 << 20,
            write_errors=self.failures,
            rejected=0,
            dropped=0,
            rotations=0,
            reopens=0,
            removed_files=0,
            last_error=None,
            last_error_at=None,
            consecutive_errors=0,
            running=True,
        )

    def flush(self, timeout: float | None = None) -> bool:
        return True


def _core(max_rows: int = 100, max_body_bytes: int = 100_000, model: Any = None) -> ServiceCore:
    holder = SimpleNamespace(spec=SPEC, current=FakeModel() if model is None else model, failure=None)
    metrics = ServiceMetrics("exp", [r.path for r in ROUTES])
    config = SimpleNamespace(name="exp")
    return ServiceCore(holder, metrics, FakeWriter(), config, None, max_body_bytes=max_body_bytes, max_rows=max_rows)


def _call(core: ServiceCore, path: str, body: Any, method: str = "POST") -> Answer | Refusal:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return asyncio.run(core.handle(method, path, raw, "rid-1"))


def _fields(outcome: Answer | Refusal) -> list[str]:
    assert isinstance(outcome, Refusal) and outcome.kind is VALIDATION, outcome
    return [e["field"] for e in outcome.detail]


def test_a_row_is_answered_logged_and_counted() -> None:
    core = _core()
    answer = _call(core, "/predict", ROW)
    assert isinstance(answer, Answer) and answer.status == 200 and answer.model_version == "7"
    assert answer.body == {"request_id": "rid-1", "model_version": "7", "prediction": 1, "probability": 0.75}
    (entry,) = core.writer.entries
    assert entry.request_id == "rid-1" and entry.inputs == [ROW]
    assert entry.outputs == [{"prediction": 1, "probability": 0.75}]
    assert core.metrics.predictions.labels("1", "7")._value.get() == 1


def test_a_batch_is_answered_row_by_row() -> None:
    core = _core()
    rows = [ROW, {**ROW, "minutes": 0.5, "country": None}]
    answer = _call(core, "/batch_predict", {"rows": rows})
    assert isinstance(answer, Answer)
    assert [p["prediction"] for p in answer.body["predictions"]] == [1, 0]
    assert core.writer.entries[0].inputs == rows


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**ROW, "minutes": "twelve"}, "minutes"),  # wrong type
        ({**ROW, "days": "3"}, "days"),  # strict: no strings for numbers
        ({**ROW, "bogus": 1}, "bogus"),  # unknown field
        ({"minutes": 1.0, "days": 3}, "country"),  # missing field
    ],
)
def test_invalid_fields_are_refused_naming_the_field(body, field) -> None:
    core = _core()
    assert field in _fields(_call(core, "/predict", body))
    assert core.writer.entries == []


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(literal) -> None:
    raw = json.dumps({**ROW, "minutes": 0.5}).replace("0.5", literal).encode()
    assert _fields(_call(_core(), "/predict", raw)) == ["minutes"]
    batch = json.dumps({"rows": [ROW, {**ROW, "minutes": 0.5}]}).replace("0.5", literal).encode()
    assert _fields(_call(_core(), "/batch_predict", batch)) == ["rows.1.minutes"]


@pytest.mark.parametrize(
    ("field", "literal", "message"),
    [
        ("days", "9" * 310, "less than or equal to 9223372036854775807"),  # json parses it; int64 cannot hold it
        ("days", "-" + "9" * 19, "greater than or equal to -9223372036854775808"),
        ("minutes", "1e39", "less than or equal to 3402823466"),  # finite in float64, infinite in float32
        ("minutes", "9" * 310, "finite number"),
    ],
)
def test_values_json_parses_but_the_model_cannot_hold_are_refused(field, literal, message) -> None:
    raw = json.dumps({**ROW, field: 12345}).replace("12345", literal).encode()
    refused = _call(_core(), "/predict", raw)
    assert _fields(refused) == [field] and message in refused.detail[0]["message"]
    batch = json.dumps({"rows": [ROW, {**ROW, field: 12345}]}).replace("12345", literal).encode()
    assert _fields(_call(_core(), "/batch_predict", batch)) == [f"rows.1.{field}"]
    edge = {**ROW, "days": 2**63 - 1, "minutes": -3.4e38}  # the largest values the dtypes hold are served
    assert isinstance(_call(_core(), "/predict", edge), Answer)


def test_strings_are_bounded_by_default_and_as_configured() -> None:
    assert isinstance(_call(_core(), "/predict", {**ROW, "country": "x" * 256}), Answer)
    refused = _call(_core(), "/batch_predict", {"rows": [ROW, {**ROW, "country": "x" * 257}]})
    assert _fields(refused) == ["rows.1.country"] and "at most 256 characters" in refused.detail[0]["message"]
    core = ServiceCore(
        _core().holder,
        ServiceMetrics("exp", []),
        FakeWriter(),
        None,
        None,
        max_body_bytes=10_000,
        max_rows=5,
        max_string_length=8,
    )
    assert _fields(_call(core, "/predict", {**ROW, "country": "Nederland"})) == ["country"]
    assert core.models["row"].model_json_schema(by_alias=True)["properties"]["country"]["anyOf"][0]["maxLength"] == 8
    assert core.writer.entries == []


def test_a_batch_of_bad_rows_is_refused_with_a_bounded_error_list() -> None:
    outcome = _call(_core(), "/batch_predict", {"rows": [{**ROW, "minutes": "lots"}] * 60})
    fields = _fields(outcome)
    assert len(fields) == 51 and fields[0] == "rows.0.minutes"
    assert outcome.detail[-1] == {"field": None, "message": "10 more errors not shown", "type": "truncated"}


def test_malformed_json_and_too_large_bodies_and_batches() -> None:
    core = _core(max_rows=3, max_body_bytes=500)
    bad = _call(core, "/predict", b'{"minutes": 1,')
    assert bad.kind is MALFORMED_JSON and bad.status == 400 and "not valid JSON" in bad.detail
    assert _call(core, "/predict", b"").kind is MALFORMED_JSON
    big = _call(core, "/batch_predict", {"rows": [ROW] * 20})
    assert big.kind is TOO_LARGE and big.status == 413 and "500 bytes" in big.detail
    many = _call(core, "/batch_predict", {"rows": [ROW] * 4})
    assert many.kind is TOO_LARGE and "4 rows" in many.detail and "limit of 3" in many.detail
    assert core.writer.entries == []


def test_no_model_is_not_ready_naming_why() -> None:
    core = _core()
    core.holder.current, core.holder.failure = None, SimpleNamespace(error="no champion is promoted")
    for path, method in (("/predict", "POST"), ("/ready", "GET")):
        refused = _call(core, path, ROW if method == "POST" else b"", method)
        assert refused.kind is NOT_READY and refused.status == 503
        assert refused.detail == "no model is being served: no champion is promoted"
    assert core.writer.entries == []


def test_an_unexpected_failure_is_a_generic_internal_refusal(caplog) -> None:
    core = _core(model=FakeModel(fail=True))
    with caplog.at_level(logging.ERROR, logger="mlgraph.serving"):
        refused = _call(core, "/predict", ROW)
    assert refused.kind is INTERNAL and refused.status == 500 and "secret" not in str(refused.detail)
    assert "rid-1" in caplog.text and "secret internal detail" in caplog.text  # the server log has it
    assert core.writer.entries == []


def test_unknown_paths_and_methods_are_refused_by_the_table() -> None:
    core = _core()
    assert _call(core, "/nowhere", b"").kind is NOT_FOUND
    refused = _call(core, "/predict", b"", "GET")
    assert refused.kind is METHOD_NOT_ALLOWED and refused.status == 405


def test_health_ready_and_metrics_answer_without_http() -> None:
    core = _core()
    health = _call(core, "/health", b"", "GET")
    assert health.body["ready"] and health.body["model_version"] == "7" and health.body["request_id"] == "rid-1"
    assert _call(core, "/ready", b"", "GET").body["runtime"] == "onnx_fp32"
    metrics = _call(core, "/metrics", b"", "GET")
    assert isinstance(metrics.body, bytes) and metrics.content_type.startswith("text/plain")
    assert b"mlgraph_request_errors_total" in metrics.body


def test_routes_are_named_and_unique() -> None:
    assert len({r.name for r in ROUTES}) == len({(r.method, r.path) for r in ROUTES}) == len(ROUTES)
    core = _core()
    for route in ROUTES:
        assert route.request in (None, *core.models) and route.response in (None, *core.models)
        assert all(kind in ERROR_KINDS.values() for kind in route.refusals)


def test_one_table_gives_status_body_and_metric_label() -> None:
    core = _core()
    status, body = refusal_response(Refusal(TOO_LARGE, "2 MB"), "rid-9", core.metrics)
    assert status == 413 and json.loads(body) == {"error": "too_large", "detail": "2 MB", "request_id": "rid-9"}
    assert core.metrics.errors.labels("too_large")._value.get() == 1
    assert set(METRIC_LABELS) == {"malformed_json", "not_found", "too_large", "validation", "internal", "not_ready"}
    assert Refusal(NOT_READY).detail == NOT_READY.message
    assert kind_for_status(404) is NOT_FOUND and kind_for_status(400) is MALFORMED_JSON
    assert kind_for_status(418).metric is None and kind_for_status(502).name == "internal"


def test_the_core_and_the_error_table_import_no_web_framework() -> None:
    code = (
        "import sys, mlgraph.serving.core, mlgraph.core.http_errors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert out.stdout.strip() == "[]"
