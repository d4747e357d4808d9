"""Dagster instance storage, SQLite against PostgreSQL, in the same run: a burst of runs writing events.

Each backend gets a fresh instance (a temporary DAGSTER_HOME; for Postgres also a fresh temporary
database, dropped at the end). `--processes` processes each execute `--runs / --processes` short
in-process runs of a one-op job that logs `--events` materializations; all processes are released at
the same moment. Reported per backend: total seconds, runs/s, events/s, failed runs, and how many
processes printed "database is locked". Then every run and event is counted back from the instance.

Then, unless `--latency-samples 0`, the signal → run-created/run-started latency with the real daemon
(`dagster-daemon run`, DefaultRunLauncher, queued runs) on each backend: benchmarks/sensors.py's
measurement, reused as it is, with the instance's storage switched to Postgres for the second backend.

Needs `scripts/postgres-local up`; otherwise prints an error as JSON and exits 2.

    .venv/bin/python benchmarks/state_backends.py [--runs 50] [--processes 5] [--events 20]

Prints JSON. The password is never printed.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

POSTGRES_STORAGE = {"postgres": {"postgres_url": {"env": "MLGRAPH_POSTGRES_URL"}}}

# One process: the tests' burst job (its definitions in tests/test_postgres_state.py, one home), run
# RUNS times in a row after the parent's "go" (all processes released at once), each error counted.
WORKER_LOOP = """
RUNS = int(sys.argv[2])
instance = dg.DagsterInstance.get()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(RUNS):
    try:
        result = burst_job.execute_in_process(instance=instance, raise_on_error=False)
        print("run", result.run_id, result.success, flush=True)
    except Exception as exc:  # a storage error must be counted, not end the whole burst
        print("error", type(exc).__name__, str(exc).replace(chr(10), " ")[:300], flush=True)
"""


def worker_source() -> str:
    from tests.test_postgres_state import BURST_RUN

    return BURST_RUN.split("instance = ")[0] + WORKER_LOOP


def postgres_up() -> str | None:
    """None when scripts/postgres-local reports the server up, else why not."""
    status = subprocess.run(
        [str(ROOT / "scripts" / "postgres-local"), "status"], capture_output=True, text=True, timeout=30, check=False
    )
    return None if status.returncode == 0 else (status.stdout + status.stderr).strip()[-300:]


def burst(home: Path, env: dict, runs: int, processes: int, events: int) -> dict:
    import dagster as dg

    from tests.support import dagster_instance
    from tests.support.instance import DEFAULT_RUN_LAUNCHER, write_instance_config

    storage = POSTGRES_STORAGE if "MLGRAPH_POSTGRES_URL" in env else None
    # This process opens the instance too (schema, counting back), and the URL is read from its environment.
    os.environ.pop("MLGRAPH_POSTGRES_URL", None)
    if storage:
        os.environ["MLGRAPH_POSTGRES_URL"] = env["MLGRAPH_POSTGRES_URL"]
    write_instance_config(home, DEFAULT_RUN_LAUNCHER, storage=storage)
    env = {**env, "DAGSTER_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    # Create the schema once, as `mlgraph init` or the daemon does, so the burst measures writes only.
    with dagster_instance(home):
        pass
    per = [runs // processes + (1 if i < runs % processes else 0) for i in range(processes)]
    source = worker_source()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", source, str(events), str(n)],
            cwd=home,
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in per
    ]
    outputs = []
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"worker did not start: {proc.stderr.read()[-2000:]}")
        start = time.perf_counter()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            outputs.append((proc.returncode, out, err))
        seconds = time.perf_counter() - start
    finally:
        for proc in procs:  # by PID, only the workers we started
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    lines = [line.split() for _, out, _ in outputs for line in out.splitlines()]
    run_ids = [parts[1] for parts in lines if parts and parts[0] == "run"]
    succeeded = sum(1 for parts in lines if parts and parts[0] == "run" and parts[2] == "True")
    errors = [" ".join(parts[1:])[:200] for parts in lines if parts and parts[0] == "error"]
    locked = sum(1 for _, out, err in outputs if "database is locked" in (out + err))
    with dagster_instance(home) as instance:
        backend = type(instance.event_log_storage).__name__
        stored = sum(
            len(
                instance.get_records_for_run(
                    rid, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION, limit=10 * events
                ).records
            )
            for rid in run_ids
        )
        stored_runs = instance.get_runs_count()
    return {
        "event_log_storage": backend,
        "processes": processes,
        "runs": runs,
        "events_per_run": events,
        "total_seconds": round(seconds, 2),
        "runs_per_second": round(len(run_ids) / seconds, 2) if seconds else None,
        "materializations_per_second": round(stored / seconds, 1) if seconds else None,
        "runs_succeeded": succeeded,
        "runs_failed": len(run_ids) - succeeded,
        "run_errors": len(errors),
        "first_errors": errors[:3],
        "processes_reporting_database_is_locked": locked,
        "worker_exit_codes": sorted({code for code, _, _ in outputs}),
        "runs_stored": stored_runs,
        "materializations_stored": stored,
        "materializations_expected": runs * events,
    }


def latency(samples: int, storage: dict | None) -> dict:
    """benchmarks/sensors.py's daemon latency (no extra empty experiment directories), on `storage`: the
    settings before issue 23 and as shipped now, in the same run."""
    from benchmarks.sensors import PROFILES, latency_benchmark

    return {profile: latency_benchmark(0, samples, storage=storage, profile=profile) for profile in PROFILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--latency-samples", type=int, default=10, help="0 skips the daemon latency")
    args = parser.parse_args()

    down = postgres_up()
    if down is not None:
        print(json.dumps({"error": f"PostgreSQL is not up: run `scripts/postgres-local up` first ({down})"}))
        sys.exit(2)

    import psycopg2

    from tests.support.postgres import libpq, server_url

    base_env = {k: v for k, v in os.environ.items() if k != "MLGRAPH_POSTGRES_URL"}
    name = f"mlgraph_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(libpq(server_url("mlgraph")), connect_timeout=10)
    admin.autocommit = True
    result: dict = {"benchmark": "state_backends"}
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            result["sqlite"] = burst(tmp / "sqlite_home", base_env, args.runs, args.processes, args.events)
            pg_env = {**base_env, "MLGRAPH_POSTGRES_URL": server_url(name)}
            result["postgres"] = burst(tmp / "postgres_home", pg_env, args.runs, args.processes, args.events)
            result["postgres"]["database"] = name  # dropped below; the URL (with its password) is not printed
            if args.latency_samples:
                os.environ.pop("MLGRAPH_POSTGRES_URL", None)
                result["latency_sqlite"] = latency(args.latency_samples, None)
                os.environ["MLGRAPH_POSTGRES_URL"] = server_url(name)  # the daemon and its runs inherit it
                result["latency_postgres"] = latency(args.latency_samples, POSTGRES_STORAGE)
    finally:
        os.environ.pop("MLGRAPH_POSTGRES_URL", None)
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
    sq, pg = result["sqlite"], result["postgres"]
    result["postgres_over_sqlite_runs_per_second"] = (
        round(pg["runs_per_second"] / sq["runs_per_second"], 2) if sq["runs_per_second"] else None
    )
    if not args.latency_samples:
        result["signal_to_run_started_latency"] = "left out (--latency-samples 0)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
