"""Dashboard render time with 5,000 runs and 5,000 Slurm jobs, against 50 runs in the same run.

Generated state: a SQLite Dagster instance in a temporary DAGSTER_HOME holding N runs (evaluation,
analysis and training runs over 100 experiments, a fifth failed, a fifth running, each tagged with
a Slurm job id), a Slurm snapshot holding those N jobs, and a `.training_complete` per experiment.
Timed per size (median of --repeat): the raw instance query of every run (`get_run_records(limit=N)`),
the state collection on a refresh (runs updated since the last read, rows, Slurm join, signals,
alerts), the HTML render, the whole page cold (a new server's first read) and warm (a refresh), and
the HTTP GET of `/` through real uvicorn on 127.0.0.1 (gzip), and of the oldest page. The page holds
one page of runs (100, newest first) and, on page 1, up to 100 older failed runs; its size is reported
plain and gzip-compressed as sent. Target: the page in < 1 s at 5,000.

    .venv/bin/python benchmarks/dashboard.py [--runs 5000] [--baseline 50] [--repeat 5]

Prints JSON.
"""

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.utils import make_new_run_id

from mlgraph.core.drive import DriveLayout
from mlgraph.core.tags import (
    DAGSTER_PARTITION_TAG,
    SLURM_JOB_ID_TAG,
    SLURM_LOG_TAG,
    SLURM_TIME_TAG,
    TAG_EXPERIMENT,
    TAG_MLFLOW_RUN_ID,
)
from mlgraph.dashboard import render
from mlgraph.dashboard.app import Dashboard, create_app
from mlgraph.dashboard.settings import DashboardSettings
from mlgraph.dashboard.slurm_poller import SlurmSnapshot
from mlgraph.dashboard.state import DEFAULT_PER_PAGE
from mlgraph.slurm.jobs import SlurmJob
from tests.support import dagster_instance, wait_for

TARGET_S = 1.0
_JOBS = ("checkpoint_evaluation_job", "checkpoint_comparison_report_job", "training_job")
_STATES = [(DagsterRunStatus.SUCCESS, "COMPLETED")] * 3 + [
    (DagsterRunStatus.FAILURE, "TIMEOUT"),
    (DagsterRunStatus.STARTED, "RUNNING"),
]


class FixedPoller:
    """The benchmark's Slurm: a fixed snapshot, so the timing is the dashboard's, not the controller's."""

    interval = 30.0
    polls = 0

    def __init__(self, snapshot: SlurmSnapshot):
        self.snapshot = snapshot

    def want(self, job_ids) -> None:
        list(job_ids)

    def start(self) -> None: ...

    def stop(self) -> None: ...


def build(instance: dg.DagsterInstance, drive: Path, n: int) -> SlurmSnapshot:
    layout = DriveLayout(drive)
    jobs = {}
    for i in range(n):
        experiment = f"exp{i % 100:03d}"
        status, state = _STATES[i % len(_STATES)]
        job_id = str(100000 + i)
        instance.add_run(
            DagsterRun(
                job_name=_JOBS[i % 3],
                run_id=make_new_run_id(),
                status=status,
                tags={
                    TAG_EXPERIMENT: experiment,
                    DAGSTER_PARTITION_TAG: experiment,
                    SLURM_JOB_ID_TAG: job_id,
                    SLURM_LOG_TAG: str(layout.logs_root() / "evaluation" / f"{job_id}.log"),
                    TAG_MLFLOW_RUN_ID: f"{i:032x}",
                    SLURM_TIME_TAG: "01:00:00",
                },
            )
        )
        jobs[job_id] = SlurmJob(
            job_id=job_id,
            state=state,
            source="squeue",
            elapsed="00:12:34",
            time_limit="1:00:00",
            reason="None",
            raw={"SubmitTime": "2026-11-30T10:00:00", "StartTime": "2026-11-30T10:00:05"},
        )
    for e in range(min(n, 100)):
        path = layout.training_complete_signal(f"exp{e:03d}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "timestamp": "2026-11-30T09:00:00Z",
                    "experiment": f"exp{e:03d}",
                    "checkpoint_path": "models/x/checkpoints/1",
                    "hostname": "gpu1",
                    "user": "ml",
                }
            )
        )
    return SlurmSnapshot(queue=jobs, polled_at=time.time())


def _median(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get_seconds(dashboard_settings, instance, poller, repeat: int) -> dict:
    import httpx
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(dashboard_settings, instance, poller), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, 30, "uvicorn to start", interval=0.05)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            start = time.perf_counter()
            first = client.get("/", headers={"Accept-Encoding": "gzip"})
            cold = time.perf_counter() - start
            warm = _median(lambda: client.get("/", headers={"Accept-Encoding": "gzip"}).raise_for_status(), repeat)
            marker = 'class="page-last" href="'
            last = (
                first.text.partition(marker)[2].partition('"')[0].replace("&amp;", "&") if marker in first.text else ""
            )
            oldest = _median(lambda: client.get("/" + last).raise_for_status(), repeat) if last else warm
            return {
                "http_get_cold_s": round(cold, 4),
                "http_get_s": round(warm, 4),
                "http_get_oldest_page_s": round(oldest, 4),
                "page_bytes": len(first.content),
                "page_bytes_gzip": int(first.headers.get("content-length", 0)),
            }
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def measure(tmp: Path, n: int, repeat: int) -> dict:
    drive = tmp / f"drive{n}"
    with dagster_instance(tmp / f"home{n}") as instance:
        snapshot = build(instance, drive, n)
        # No sharing window: every request below reads the instance (cold: all runs; warm: runs updated since).
        settings = DashboardSettings(drive_root=drive, run_limit=max(n, 1), cache_seconds=0.0)
        poller = FixedPoller(snapshot)
        warm = Dashboard(settings, instance, poller)
        state = warm.state()
        assert state.matched == n and len(state.runs) == min(n, DEFAULT_PER_PAGE), (state.matched, len(state.runs), n)
        query = _median(lambda: list(instance.get_run_records(limit=n)), repeat)
        collect = _median(warm.state, repeat)
        html = _median(lambda: render.page(state, settings), repeat)
        cold_page = _median(lambda: render.page(Dashboard(settings, instance, poller).state(), settings), repeat)
        warm_page = _median(lambda: render.page(warm.state(), settings), repeat)
        return {
            "runs": n,
            "slurm_jobs": len(snapshot.queue),
            "rows_on_page_1": len(state.runs) + len(state.older_failed),
            "instance_query_all_s": round(query, 4),
            "collect_warm_s": round(collect, 4),
            "render_s": round(html, 4),
            "page_cold_s": round(cold_page, 4),
            "page_warm_s": round(warm_page, 4),
            **http_get_seconds(settings, instance, poller, repeat),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--baseline", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlgraph-dashboard-bench-") as tmp:
        baseline = measure(Path(tmp), args.baseline, args.repeat)
        large = measure(Path(tmp), args.runs, args.repeat)
    print(
        json.dumps(
            {
                "benchmark": "dashboard",
                "target": f"page < {TARGET_S} s at {args.runs} runs and jobs, cold (first read) and warm (a refresh)",
                "baseline": baseline,
                "large": large,
                "http_get_ratio_vs_baseline": round(large["http_get_s"] / max(baseline["http_get_s"], 1e-9), 1),
                "meets_target": max(large["page_cold_s"], large["page_warm_s"], large["http_get_s"]) < TARGET_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
