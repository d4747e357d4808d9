"""Dynamic micro-batching (mlgraph/serving/batching.py) on the real ONNX champion of the serving drive: the
requests ready in one loop turn share one model call, each gets exactly the answer it would get alone, a
batch never exceeds the model's inline rows nor mixes models, and a request that breaks a shared call
fails alone."""

from __future__ import annotations

import asyncio
import dataclasses

import httpx
import pytest

from mlgraph.core.drive import DriveLayout
from mlgraph.serving.app import create_app
from mlgraph.serving.batching import Coalescer
from mlgraph.serving.model import LoadedModel, NonFiniteOutput, input_spec, load_model
from mlgraph.serving.settings import ServeSettings
from tests.support.serving import BINARY, config_of, json_rows, serving_drive  # noqa: F401
from tests.test_serving import FEATURES


@pytest.fixture
def served(serving_drive) -> tuple[LoadedModel, list[dict]]:  # noqa: F811
    root, config_dir = serving_drive
    drive, config = DriveLayout.at(root), config_of(config_dir, BINARY)
    model = load_model(drive, config, input_spec(drive, config))
    assert model.runtime == "onnx_fp32" and model.inline_rows >= 16
    return model, json_rows(drive, BINARY, FEATURES, 12)


class _CountingPredictor:
    """The real predictor, counting its calls and the rows of each (and failing on a chosen row value)."""

    def __init__(self, real, poison: float | None = None) -> None:
        self.real, self.poison, self.sizes = real, poison, []
        self.variant = real.variant

    def predict(self, prepared):
        self.sizes.append(len(next(iter(prepared.values()))))
        values = self.real.predict(prepared)
        if self.poison is not None:
            values = values.copy()
            values[prepared["days_on_platform"][:, 0] == self.poison] = float("nan")  # what an overflow gives
        return values


def _counted(model: LoadedModel, **kwargs) -> tuple[LoadedModel, _CountingPredictor]:
    counter = _CountingPredictor(model.predictor, **kwargs)
    return dataclasses.replace(model, predictor=counter), counter


async def _together(coalescer: Coalescer, calls: list[tuple[LoadedModel, list[dict]]]) -> list:
    return await asyncio.gather(*(coalescer.predict(m, rows) for m, rows in calls), return_exceptions=True)


def test_requests_of_one_loop_turn_share_one_call_and_each_gets_its_own_answer(served) -> None:
    model, rows = served
    alone = [model.predict([row]) for row in rows]
    counted, counter = _counted(model)
    coalescer = Coalescer()
    answers = asyncio.run(_together(coalescer, [(counted, [row]) for row in rows]))
    assert counter.sizes == [len(rows)]  # one call for the twelve requests
    assert answers == alone  # in request order, exactly what each would get alone
    assert (coalescer.calls, coalescer.requests) == (1, len(rows))


def test_a_batch_holds_at_most_the_inline_rows_and_one_model(served) -> None:
    model, rows = served
    small, counter = _counted(dataclasses.replace(model, inline_rows=4))
    other_version = dataclasses.replace(small, champion=dataclasses.replace(model.champion, model_version="99"))
    calls = [(small, rows[0:2]), (small, rows[2:4]), (small, rows[4:6]), (other_version, rows[6:7]), (small, rows[7:8])]
    answers = asyncio.run(_together(Coalescer(), calls))
    # 2+2 fill the first batch; 2 starts the next; another model's request ends it; the last starts a third
    assert counter.sizes == [4, 2, 1, 1]
    assert answers == [model.predict(r) for _, r in calls]


def test_a_request_that_breaks_the_shared_call_fails_alone(served) -> None:
    model, rows = served
    poison = rows[5]["days_on_platform"]
    assert sum(r["days_on_platform"] == poison for r in rows) == 1
    broken, counter = _counted(model, poison=poison)
    coalescer = Coalescer()
    answers = asyncio.run(_together(coalescer, [(broken, [row]) for row in rows]))
    assert counter.sizes == [len(rows)] + [1] * len(rows)  # the shared call failed: each request alone
    assert (coalescer.calls, coalescer.requests) == (1 + len(rows), len(rows))  # /metrics counts every call
    assert isinstance(answers[5], NonFiniteOutput) and answers[5].rows == [0]  # its own row number
    assert [a for i, a in enumerate(answers) if i != 5] == [model.predict([r]) for i, r in enumerate(rows) if i != 5]


@pytest.mark.parametrize("max_batch_rows", [None, 1], ids=["batched", "batching-off"])
def test_concurrent_requests_through_the_app_are_answered_as_alone(
    serving_drive,  # noqa: F811
    served,
    max_batch_rows: int | None,
) -> None:
    root, config_dir = serving_drive
    model, rows = served
    settings = ServeSettings(
        BINARY,
        drive_root=str(root),
        config_dir=str(config_dir),
        log_predictions=False,
        max_batch_rows=max_batch_rows,  # what `mlgraph serve --max-batch-rows` sets
    )
    app = create_app(settings)
    app.app.state.holder.current = model

    async def calls() -> tuple[list[httpx.Response], str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.post("/predict", json=row) for row in rows))
            return answers, (await client.get("/metrics")).text

    answers, metrics = asyncio.run(calls())
    assert all(a.status_code == 200 for a in answers)
    for answer, row in zip(answers, rows, strict=True):
        body = answer.json()
        assert {k: body[k] for k in ("prediction", "probability")} == model.predict([row])[0]
    requests = _metric(metrics, "mlgraph_model_call_requests_total")
    calls_made = _metric(metrics, "mlgraph_model_calls_total")
    assert requests == len(rows)
    if max_batch_rows is None:
        assert 1 <= calls_made < len(rows)  # batched
    else:
        assert calls_made == len(rows)  # one call per request


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_a_fault_in_the_batcher_itself_leaves_no_request_waiting(served, monkeypatch) -> None:
    model, rows = served

    def broken(self, model, batch):  # a bug in the batcher, which no input can cause
        raise KeyError("bug")

    monkeypatch.setattr(Coalescer, "_answer", broken)

    async def run() -> list:
        return await asyncio.wait_for(_together(Coalescer(), [(model, [row]) for row in rows[:3]]), timeout=10)

    answers = asyncio.run(run())
    assert all(isinstance(a, RuntimeError) and "not answered" in str(a) for a in answers)


def test_the_operator_bounds_the_batch_and_one_row_turns_batching_off(served) -> None:
    model, rows = served
    counted, counter = _counted(model)
    answers = asyncio.run(_together(Coalescer(max_rows=5), [(counted, [row]) for row in rows]))
    assert counter.sizes == [5, 5, 2] and answers == [model.predict([row]) for row in rows]
    counter.sizes.clear()
    asyncio.run(_together(Coalescer(max_rows=1), [(counted, [row]) for row in rows] + [(counted, rows[:3])]))
    assert counter.sizes == [1] * len(rows) + [3]  # a request is never split: three rows still go in one call
