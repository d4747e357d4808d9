"""`mlgraph replay` and the open-loop load generator (mlgraph/deployment/loadgen.py) over real HTTP: against
`mlgraph serve`, against a server that stalls once (the open-loop latencies show the stall a closed-loop
client hides), and a rate sweep against a server of known capacity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mlgraph.cli.main import main
from mlgraph.deployment import loadgen, saturation
from tests.support.serving import BINARY, Server, free_port, serving_drive  # noqa: F401

# A minimal HTTP/1.1 keep-alive server (its own process, so it never shares a GIL with the client). Every
# request takes SERVICE_S of blocking work — one request at a time, a known capacity of 1 / SERVICE_S —
# and request number STALL_AT blocks the whole server for STALL_S, as a GC pause or a stuck disk would.
TOY_SERVER = textwrap.dedent(
    """
    import asyncio, sys, time
    PORT, SERVICE_S, STALL_AT, STALL_S = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    count = 0

    async def handle(reader, writer):
        global count
        try:
            while (line := await reader.readline()):
                length = 0
                while (h := await reader.readline()) not in (b"\\r\\n", b""):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h[15:])
                await reader.readexactly(length)
                count += 1
                if SERVICE_S:
                    time.sleep(SERVICE_S)
                if count == STALL_AT:
                    time.sleep(STALL_S)
                writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\n{}")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", PORT)
        print("up", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    """
)


class ToyServer:
    def __init__(self, service_s: float = 0.0, stall_at: int = 0, stall_s: float = 0.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TOY_SERVER, str(self.port), str(service_s), str(stall_at), str(stall_s)],
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout.readline().strip() == b"up"
        self.endpoint = loadgen.parse_url(f"http://127.0.0.1:{self.port}")

    def __enter__(self) -> ToyServer:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def _requests(endpoint: loadgen.Endpoint) -> list[bytes]:
    return loadgen.encode_requests(endpoint, [{"x": 1}])


@pytest.fixture(scope="module")
def service(serving_drive, tmp_path_factory):  # noqa: F811
    from tests.support.serving import drive_copy

    root = drive_copy(serving_drive, tmp_path_factory.mktemp("replay") / "shared")
    with Server(root, serving_drive[1], BINARY) as server:
        server.wait_up()
        yield server, root, serving_drive[1]


def _cli(service, *args: str, capsys) -> tuple[int, str, str]:
    server, root, config_dir = service
    code = main(
        [
            "replay",
            "--experiment",
            BINARY,
            "--url",
            server.url,
            "--drive",
            str(root),
            "--config-dir",
            str(config_dir),
            *args,
        ]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_replay_against_the_service_meets_the_rate_and_prints_json(service, capsys) -> None:
    code, out, err = _cli(
        service, "--from-test-split", "--rate", "200", "--duration", "2", "--connections", "4", "--json", capsys=capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["scheduled"] == 400 and summary["ok"] == 400 and summary["errors"] == {}
    assert summary["achieved_share"] >= 0.95
    lat = summary["latency_ms"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p99_9_ms"] <= lat["max_ms"]
    assert summary["queue_delay_ms"]["p50_ms"] is not None

    # The service's own view of load: requests in flight and the event loop's lag.
    metrics = service[0].client.get("/metrics").text
    assert "mlgraph_requests_in_flight 1.0" in metrics  # the scrape itself
    lag_count = next(line for line in metrics.splitlines() if line.startswith("mlgraph_event_loop_lag_seconds_count"))
    assert float(lag_count.split()[-1]) > 0
    assert "mlgraph_event_loop_lag_last_seconds" in metrics


def test_replay_from_a_source_file_and_a_bad_one(service, tmp_path, capsys) -> None:
    server, root, _ = service
    from mlgraph.core.drive import DriveLayout
    from tests.support.serving import json_rows

    features = [
        "student_country",
        "days_on_platform",
        "minutes_watched",
        "courses_started",
        "practice_exams_started",
        "practice_exams_passed",
        "minutes_spent_on_exams",
    ]
    rows = json_rows(DriveLayout.at(root), BINARY, features, 20)
    good = tmp_path / "events.jsonl"
    good.write_text("".join(json.dumps({**r, "purchased": 1}) + "\n" for r in rows))  # extra columns dropped
    code, out, err = _cli(service, "--source", str(good), "--rate", "100", "--duration", "1", capsys=capsys)
    assert code == 0, err
    assert "offered 100.0/s" in out and "errors: none" in out and "p99_9" in out and "queue delay" in out

    bad = tmp_path / "events.csv"
    bad.write_text("student_country,minutes_watched\nUS,3.5\n")
    code, out, err = _cli(service, "--source", str(bad), "--rate", "100", "--duration", "1", capsys=capsys)
    assert code == 2 and str(bad) in err and "'days_on_platform'" in err and "Fix:" in err
    code, out, err = _cli(service, "--source", str(tmp_path / "nope.csv"), "--rate", "1", capsys=capsys)
    assert code == 2 and "no such file" in err


def test_open_loop_shows_a_stall_that_closed_loop_hides() -> None:
    # 300 requests/s for 4 s over 4 connections; the 300th request stalls the server for a second.
    with ToyServer(stall_at=300, stall_s=1.0) as server:
        run = loadgen.replay(server.endpoint, _requests(server.endpoint), rate=300, duration=4, connections=4)
    summary = run.summary()
    assert summary["ok"] == 1200 and summary["errors"] == {}
    open_loop, closed = summary["latency_ms"], summary["service_time_ms"]
    # ~300 requests were due during the stall: each waited for it, from its own intended time.
    assert open_loop["max_ms"] >= 900 and open_loop["p99_ms"] >= 500 and open_loop["p90_ms"] >= 50
    # Timed from when they were sent, only the few requests in flight saw it: p99 stays small.
    assert closed["max_ms"] >= 900 and closed["p99_ms"] < 100
    assert summary["queue_delay_ms"]["max_ms"] >= 500

    # A real closed-loop client against the same stall records it once per connection, deep in the tail.
    with ToyServer(stall_at=300, stall_s=1.0) as server:
        histogram, statuses = loadgen.closed_loop(server.endpoint, _requests(server.endpoint), 3, 4)
    hidden = loadgen.histogram_ms(histogram)
    assert set(statuses) == {"200"} and hidden["max_ms"] >= 900 and hidden["p99_ms"] < 100


def test_sweep_finds_the_capacity_of_a_known_server(tmp_path) -> None:
    # 4 ms of blocking work per request: at most 250 requests/s.
    slo = saturation.SLO(p99_ms=100, min_rps=100)
    settings = saturation.SweepSettings(
        start_rps=60, factor=2, max_rps=2000, step_seconds=0.8, connections=8, warmup_seconds=0.2
    )
    with ToyServer(service_s=0.004) as server:
        sweep = saturation.run_sweep(server.endpoint, _requests(server.endpoint), slo, settings)
    offered = [s["offered_rps"] for s in sweep.steps]
    # Doubling until a step fails (480/s at the latest: twice the capacity), then two bisection steps; a
    # failing step is tried once more before it counts.
    assert offered[:2] == [60, 120] and len(set(offered)) <= 6, sweep.steps
    failed = {s["offered_rps"] for s in sweep.steps if not s["passed"] and not s["retried"]}
    assert failed and all(offered.count(rate) == 2 for rate in failed), sweep.steps
    assert sweep.saturated and 480 not in [s["offered_rps"] for s in sweep.steps if s["passed"]]
    assert 100 <= sweep.saturation_rps <= 260, sweep.steps
    assert sweep.meets_slo

    csv_path = saturation.write_curve_csv(sweep, tmp_path / "capacity.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0].split(",") == saturation.CURVE_COLUMNS and len(lines) == len(sweep.steps) + 1
    png = saturation.curve_plot(sweep, tmp_path / "capacity.png", "toy")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_urls_and_rates_are_refused() -> None:
    with pytest.raises(loadgen.ReplayError, match="http://HOST"):
        loadgen.parse_url("https://example.com")
    with pytest.raises(loadgen.ReplayError, match="must be positive"):
        loadgen.replay(loadgen.parse_url("http://127.0.0.1:1"), [b"x"], rate=0, duration=1)


def test_a_dead_server_counts_connection_errors() -> None:
    endpoint = loadgen.parse_url(f"http://127.0.0.1:{free_port()}")
    run = loadgen.replay(endpoint, _requests(endpoint), rate=50, duration=0.5, connections=2, timeout=2)
    assert run.ok == 0 and run.errors == {"connection_error": 25}
    assert saturation.step_verdict(run.summary(), saturation.SLO(50, 10)).startswith("errors connection_error: 25")
