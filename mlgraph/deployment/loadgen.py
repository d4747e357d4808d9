"""An open-loop HTTP load generator for the model service (and a closed-loop one, to compare with).

Open loop: request i has an intended send time `t0 + i / rate`, fixed before the run starts, and its
latency counts from that time to the last byte of the answer. When every connection is busy (the
server stalls, or answers slower than the rate) the request waits for a free connection and the wait
is part of its latency — so a stalled server shows as thousands of slow requests, not as one slow
request on each connection, which is what a closed-loop client (send, wait, send) records: it stops
sending while the server stalls and so never measures the requests that would have arrived then
(coordinated omission). `Replay` also keeps that closed-loop view of the same run (`service_time`,
answer − actual send) so the two can be compared.

The client is plain asyncio (uvloop when installed) over pre-encoded HTTP/1.1 keep-alive requests: on
the 2-core machine it shares the CPU with the server, so it must cost little per request. Measured
against a minimal keep-alive server on this machine: open loop at 2,000 req/s it uses about a third of
a core; closed loop on 16 connections it sends ~10,800 req/s (httpx.AsyncClient, same test: ~200 req/s
at 0.6 core). It speaks exactly what `mlgraph serve` answers: HTTP/1.1 with a Content-Length body.

Latencies go into HDR histograms (the `hdrhistogram` package, microseconds, 3 significant digits). The
rate sweep to saturation is mlgraph/deployment/saturation.py.

Plain Python, no Dagster: the `mlgraph replay` command, the serving_capacity asset and
benchmarks/replay.py use it.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000"
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
MAX_TRACKED_US = 3_600_000_000  # an hour: no latency is clipped
DEFAULT_TIMEOUT_S = 10.0
TICK_S = 0.001  # the scheduler's shortest sleep


class ReplayError(ValueError):
    """Bad replay input (URL, rate, event file): the message names it and the fix."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


def parse_url(url: str, path: str = "/predict") -> Endpoint:
    """The service at `url` (http only; its path, if any, is the prefix of `path`)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ReplayError(f"--url {url!r}: expected http://HOST[:PORT] (the service speaks plain HTTP/1.1)")
    try:
        port = parts.port or 80
    except ValueError:
        raise ReplayError(f"--url {url!r}: the port is not a number") from None
    return Endpoint(parts.hostname, port, parts.path.rstrip("/") + path)


def encode_requests(endpoint: Endpoint, events: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """Each event as a complete HTTP/1.1 POST (JSON body), built once: the run only writes bytes."""
    if not events:
        raise ReplayError("no events to replay. Fix: give a source with at least one row.")
    head = (
        f"POST {endpoint.path} HTTP/1.1\r\nHost: {endpoint.host}:{endpoint.port}\r\nContent-Type: application/json\r\n"
    )
    out = []
    for event in events:
        body = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        out.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def new_histogram() -> Any:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, MAX_TRACKED_US, 3)


def histogram_ms(histogram: Any) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max and the mean of a microsecond histogram, in milliseconds (None when empty)."""
    keys = ["p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms", "mean_ms"]
    if histogram.get_total_count() == 0:
        return dict.fromkeys(keys)
    values = [histogram.get_value_at_percentile(p) for p in PERCENTILES]
    values += [histogram.get_max_value(), histogram.get_mean_value()]
    return {k: round(v / 1000, 3) for k, v in zip(keys, values, strict=True)}


@dataclass
class Replay:
    """What one open-loop run measured."""

    offered_rps: float
    duration_s: float
    connections: int
    scheduled: int = 0
    sent: int = 0
    answered: int = 0
    elapsed_s: float = 0.0  # first intended send to the last answer (or give-up)
    statuses: Counter = field(default_factory=Counter)  # "200", "503", "connection_error", "timeout", ...
    latency: Any = field(default_factory=new_histogram)  # answer − intended send (open loop)
    queue_delay: Any = field(default_factory=new_histogram)  # actual send − intended send
    service_time: Any = field(default_factory=new_histogram)  # answer − actual send (what closed loop sees)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s.startswith("2"))

    @property
    def errors(self) -> dict[str, int]:
        return {s: n for s, n in sorted(self.statuses.items()) if not s.startswith("2")}

    @property
    def achieved_rps(self) -> float:
        """Successful answers per second over the scheduled window (a late tail counts against it)."""
        return self.ok / max(self.elapsed_s, self.duration_s, 1e-9)

    def summary(self) -> dict[str, Any]:
        return {
            "offered_rps": round(self.offered_rps, 1),
            "achieved_rps": round(self.achieved_rps, 1),
            "achieved_share": round(self.achieved_rps / self.offered_rps, 4) if self.offered_rps else None,
            "duration_s": round(self.duration_s, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "connections": self.connections,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "errors": self.errors,
            "latency_ms": histogram_ms(self.latency),
            "queue_delay_ms": histogram_ms(self.queue_delay),
            "service_time_ms": histogram_ms(self.service_time),
        }


def _record(histogram: Any, seconds: float) -> None:
    histogram.record_value(min(max(1, int(seconds * 1_000_000)), MAX_TRACKED_US))


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, keep-alive) of one HTTP/1.1 answer with a Content-Length body, read to its last byte."""
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("the server closed the connection")
    status = int(line.split(b" ", 2)[1])
    length, keep = 0, True
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            keep = False
    if length:
        await reader.readexactly(length)
    return status, keep


class _Connection:
    """One keep-alive connection, reopened after an error (a half-read answer would desync it)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.endpoint.host, self.endpoint.port)
        self.writer.write(data)
        status, keep = await _read_answer(self.reader)
        if not keep:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection_error"


async def replay_async(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    rate: float,
    duration: float,
    connections: int = 32,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[Replay, float], None] | None = None,
) -> Replay:
    """Send `rate × duration` requests (cycling through `requests`) at their intended times, open loop."""
    if rate <= 0 or duration <= 0 or connections < 1:
        raise ReplayError(f"rate {rate}, duration {duration}, connections {connections}: each must be positive")
    total = max(1, int(round(rate * duration)))
    result = Replay(rate, duration, connections, scheduled=total)
    queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    clock = loop.time
    t0 = clock() + 0.05  # a moment to open the connections first

    async def schedule() -> None:
        # Due requests are queued in bursts: a late wake-up queues all that fell due, none is dropped or
        # re-timed; each keeps its intended time. The event loop's timers have millisecond resolution
        # (a shorter sleep returns at once and the loop would spin), so it wakes at most every TICK_S;
        # the up-to-a-tick wait is counted in the latency like any other delay.
        i, shown = 0, 0.0
        while i < total:
            now = clock()
            while i < total and t0 + i / rate <= now:
                queue.put_nowait((i, t0 + i / rate))
                i += 1
            if progress is not None and now - shown >= 0.2:
                progress(result, now - t0)
                shown = now
            if i < total:
                await asyncio.sleep(max(TICK_S, t0 + i / rate - clock()))
        for _ in range(connections):
            queue.put_nowait((-1, 0.0))

    async def worker() -> None:
        connection = _Connection(endpoint)
        try:
            while True:
                i, intended = await queue.get()
                if i < 0:
                    return
                sent = clock()
                _record(result.queue_delay, sent - intended)
                result.sent += 1
                try:
                    async with asyncio.timeout(timeout):  # no extra task per request, unlike wait_for
                        status = str(await connection.request(requests[i % len(requests)]))
                except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    status = _error_name(exc)
                    connection.close()
                done = clock()
                result.answered += 1
                result.statuses[status] += 1
                _record(result.latency, done - intended)
                _record(result.service_time, done - sent)
        finally:
            connection.close()

    workers = [asyncio.ensure_future(worker()) for _ in range(connections)]
    await schedule()
    await asyncio.gather(*workers)
    result.elapsed_s = clock() - t0
    if progress is not None:
        progress(result, result.elapsed_s)
    return result


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with the service's extras
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def replay(
    endpoint: Endpoint,
    requests: Sequence[bytes],
    rate: float,
    duration: float,
    connections: int = 32,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[Replay, float], None] | None = None,
) -> Replay:
    """`replay_async` in a fresh event loop (uvloop when installed)."""
    return _run(replay_async(endpoint, requests, rate, duration, connections, timeout, progress))


async def closed_loop_async(
    endpoint: Endpoint, requests: Sequence[bytes], duration: float, connections: int
) -> tuple[Any, Counter]:
    """The closed-loop view for comparison: each connection sends its next request when the last is answered.

    Its latency histogram is what a client that waits for answers records; a server stall holds one
    request per connection, so the stall hides in the tail."""
    histogram, statuses = new_histogram(), Counter()
    loop = asyncio.get_running_loop()
    stop = loop.time() + duration

    async def one() -> None:
        connection, i = _Connection(endpoint), 0
        try:
            while (start := loop.time()) < stop:
                try:
                    statuses[str(await connection.request(requests[i % len(requests)]))] += 1
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    statuses[_error_name(exc)] += 1
                    connection.close()
                _record(histogram, loop.time() - start)
                i += 1
        finally:
            connection.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return histogram, statuses


def closed_loop(
    endpoint: Endpoint, requests: Sequence[bytes], duration: float, connections: int
) -> tuple[Any, Counter]:
    return _run(closed_loop_async(endpoint, requests, duration, connections))
