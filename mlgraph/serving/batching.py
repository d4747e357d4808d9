"""Dynamic micro-batching: the predictions that reach the event loop in one turn share one model call.

A model call has a fixed cost that dwarfs its per-row cost (the demo's ONNX logistic regression, measured:
~80 µs for one row, ~90 µs for eight), and under load several requests arrive between two turns of the
event loop. `Coalescer.predict` queues a request's rows and returns when the batch they joined has been
predicted; the batch runs once every request that was ready in this turn has joined it (`call_soon`), so an
idle service adds no wait, only a turn of the loop, and a busy one answers its backlog in fewer calls —
the cost per request falls as the queue grows, which is what lets the service catch up after a stall
(CPU taken by the host, a burst) instead of carrying the queue into the tail latency.

A batch holds requests for one model (a hot reload mid-turn starts a new batch) and at most
`model.inline_rows` rows (what the model predicts within the event loop's budget), or fewer when the
operator says so (`mlgraph serve --max-batch-rows`; 1 turns batching off). When a shared call
fails, each of its requests is predicted alone, so a request whose row breaks the model (a non-finite
output) fails alone, with its own row numbers, and the others are answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from mlgraph.serving.model import LoadedModel

Rows = Sequence[dict[str, Any]]
Outputs = list[dict[str, Any]]


class Coalescer:
    """Batches the inline predictions of one event loop (not thread-safe: the loop's own thread only)."""

    def __init__(self, max_rows: int | None = None) -> None:
        self.max_rows = max_rows  # rows a batch may hold, below the model's inline rows (1: no batching)
        self._waiting: list[tuple[LoadedModel, Rows, asyncio.Future[Outputs]]] = []
        self.calls = 0  # model calls made (a failed shared call's retries, one per request, included)
        self.requests = 0  # requests answered through them

    async def predict(self, model: LoadedModel, rows: Rows) -> Outputs:
        """`model.predict(rows)`, in one call with the other requests ready in this turn of the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        if not self._waiting:
            loop.call_soon(self._run)
        self._waiting.append((model, rows, future))
        return await future

    def _run(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            start = 0
            while start < len(waiting):
                model, total, end = waiting[start][0], len(waiting[start][1]), start + 1
                limit = min(model.inline_rows, self.max_rows or model.inline_rows)
                while end < len(waiting) and waiting[end][0] is model and total + len(waiting[end][1]) <= limit:
                    total += len(waiting[end][1])
                    end += 1
                self._answer(model, waiting[start:end])
                start = end
        finally:  # whatever went wrong here, no request is left waiting for an answer that will not come
            for _, _, future in waiting:
                if not future.done():
                    future.set_exception(RuntimeError("the prediction batch it joined was not answered"))

    def _answer(self, model: LoadedModel, batch: list[tuple[LoadedModel, Rows, asyncio.Future[Outputs]]]) -> None:
        self.calls += 1
        self.requests += len(batch)
        if len(batch) == 1:
            _settle(batch[0][2], model, batch[0][1])
            return
        try:
            outputs = model.predict([row for _, rows, _ in batch for row in rows])
        except Exception:  # one request's rows may have broken the shared call: each is answered alone
            self.calls += len(batch)
            for _, rows, future in batch:
                _settle(future, model, rows)
            return
        at = 0
        for _, rows, future in batch:
            if not future.done():  # a request cancelled while it waited (its client left) takes nothing
                future.set_result(outputs[at : at + len(rows)])
            at += len(rows)


def _settle(future: asyncio.Future[Outputs], model: LoadedModel, rows: Rows) -> None:
    if future.done():
        return
    try:
        future.set_result(model.predict(rows))
    except Exception as exc:  # raised in the request that awaits it, as a direct call would
        future.set_exception(exc)
