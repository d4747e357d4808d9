"""`mlgraph compare`: the execution table from real MLflow runs (SQLite in the test's shared drive)."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from mlgraph.cli.main import main
from mlgraph.core.tracking import Tracker, with_retry
from mlgraph.training.compare import filter_rows, render, run_rows, sort_rows
from resources.tracking import MlflowTracking


def _execution(
    tracker: Tracker, dagster_run_id: str, seed: int, auc: float, status: str, families: dict[str, float], start_ms: int
) -> str:
    parent, created = tracker.parent_run(
        dagster_run_id,
        f"exp-{dagster_run_id[:8]}",
        {"mlgraph.champion": max(families, key=families.get)},
        {"seed": seed, "cv_folds": 5, "experiment": "exp"},
        start_time_ms=start_ms,
    )
    assert created
    for family, value in families.items():
        child = tracker.child_run(parent, family, {"dagster_run_id": dagster_run_id, "mlgraph.family": family})
        tracker.log(
            child,
            params={"family": family},
            metrics={"test_roc_auc": value},
            series=[("train_loss", 1.0 / epoch, epoch) for epoch in (1, 2, 3)],
        )
        tracker.set_status(child, "FINISHED")
    tracker.log(parent, metrics={"test_roc_auc": auc})
    tracker.set_status(parent, status, end_time_ms=start_ms + 1_000)
    return parent


@pytest.fixture
def two_executions(shared_drive: Path) -> tuple[str, str]:
    tracking = MlflowTracking()
    tracker = tracking.tracker("exp")
    # Explicit, distinct start and end times: the executions' order never depends on the clock.
    start = int(time.time() * 1000) - 60_000
    first = _execution(tracker, "aaaaaaaa-1111", 1, 0.71, "FINISHED", {"svm": 0.70, "knn": 0.71}, start)
    second = _execution(tracker, "bbbbbbbb-2222", 2, 0.83, "FAILED", {"svm": 0.83, "knn": 0.60}, start + 10_000)
    return first, second


def _compare(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["compare", "--experiment", "exp", *args])
    return code, capsys.readouterr().out


def test_compare_sorts_both_ways_and_formats(two_executions: tuple[str, str], capsys) -> None:
    first, second = two_executions
    code, out = _compare(capsys, "--sort", "test_roc_auc", "--format", "json")
    rows = json.loads(out)
    assert code == 0 and [r["run_id"] for r in rows] == [first, second]
    assert rows[0]["params.seed"] == "1" and rows[0]["metrics.test_roc_auc"] == 0.71
    assert rows[1]["status"] == "FAILED" and rows[1]["champion"] == "svm"
    assert all(r["duration_s"] is not None and r["duration_s"] >= 0 for r in rows)

    code, out = _compare(capsys, "--sort", "test_roc_auc", "--desc", "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert [r["run_id"] for r in parsed] == [second, first]
    assert {"run_id", "status", "duration_s", "params.seed", "metrics.test_roc_auc"} <= set(parsed[0])

    # '-METRIC' is the short form of --desc; the table folds params equal in every row into one line.
    code, out = _compare(capsys, "--sort=-test_roc_auc")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("common params: ") and "cv_folds=5" in lines[0]
    header = lines[1].split()
    assert {"run_id", "status", "duration_s", "seed", "test_roc_auc"} <= set(header)
    body = [line.split() for line in lines[3:]]
    assert [row[header.index("run_id")] for row in body] == [second[:8], first[:8]]
    assert [row[header.index("test_roc_auc")] for row in body] == ["0.83", "0.71"]


def test_compare_filters_and_family_level(two_executions: tuple[str, str], capsys) -> None:
    first, second = two_executions
    code, out = _compare(capsys, "--filter", "status=FINISHED", "--format", "json")
    assert [r["run_id"] for r in json.loads(out)] == [first]
    code, out = _compare(capsys, "--filter", "test_roc_auc>=0.8", "--filter", "seed=2", "--format", "json")
    assert [r["run_id"] for r in json.loads(out)] == [second]
    code, out = _compare(
        capsys, "--level", "family", "--filter", "family=svm", "--sort", "test_roc_auc", "--format", "json"
    )
    rows = json.loads(out)
    assert [(r["family"], r["metrics.test_roc_auc"], r["parent_run_id"]) for r in rows] == [
        ("svm", 0.70, first),
        ("svm", 0.83, second),
    ]
    assert all(r["metrics.train_loss"] == pytest.approx(1 / 3) for r in rows)  # a series shows its last value
    code, out = _compare(capsys, "--sort", "no_such_metric")
    assert code == 2
    assert main(["compare", "--experiment", "missing"]) == 2


def test_compare_library_functions(two_executions: tuple[str, str]) -> None:
    tracking = MlflowTracking()
    client = tracking.client()
    experiment_id = client.get_experiment_by_name(tracking.experiment_name("exp")).experiment_id
    rows = run_rows(client, experiment_id)
    assert len(rows) == 2
    assert [r["run_id"] for r in sort_rows(rows, "seed", descending=True)] == list(reversed(two_executions))
    assert filter_rows(rows, ["champion!=svm"])[0]["champion"] == "knn"
    with pytest.raises(ValueError, match="KEY=VALUE"):
        filter_rows(rows, ["nonsense"])
    assert render([], "table") == "(no runs)\n"


def test_lock_errors_are_retried_and_others_are_not() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retry(flaky, base_delay=0.001) == "ok" and len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("no such table")

    calls.clear()
    with pytest.raises(RuntimeError, match="no such table"):
        with_retry(broken, base_delay=0.001)
    assert len(calls) == 1


class _Racing:
    """An MlflowClient whose first experiment lookup misses and whose create fails with `error`."""

    def __init__(self, error: Exception, exists_after: bool = True):
        self.error, self.exists_after, self.lookups = error, exists_after, 0

    def get_experiment_by_name(self, name: str):
        from types import SimpleNamespace

        self.lookups += 1
        return SimpleNamespace(experiment_id="7") if self.lookups > 1 and self.exists_after else None

    def create_experiment(self, name: str, artifact_location: str) -> str:
        raise self.error


def test_ensure_experiment_takes_only_already_exists_for_a_creation_race() -> None:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_ALREADY_EXISTS

    from mlgraph.core.tracking import ensure_experiment

    race = MlflowException("Experiment(name=mlgraph/exp) already exists.", error_code=RESOURCE_ALREADY_EXISTS)
    assert ensure_experiment(_Racing(race), "mlgraph/exp", "file:///drive/mlflow-artifacts/exp") == "7"
    # Any other error is the caller's to see, even when the experiment exists by the time we look again.
    denied = MlflowException("no write access to the artifact root", error_code=PERMISSION_DENIED)
    for error in (denied, RuntimeError("disk full")):
        with pytest.raises(type(error), match="artifact root|disk full"):
            ensure_experiment(_Racing(error), "mlgraph/exp", "file:///drive/mlflow-artifacts/exp")
    # A race whose winner then vanished is not papered over either.
    with pytest.raises(MlflowException, match="already exists"):
        ensure_experiment(_Racing(race, exists_after=False), "mlgraph/exp", "file:///x")


def test_ensure_experiment_survives_a_real_creation_race(shared_drive: Path) -> None:
    tracking = MlflowTracking()
    real = tracking.client()

    class Loser:
        """Another process creates the experiment between this client's lookup and its create."""

        first = True

        def get_experiment_by_name(self, name: str):
            if self.first:
                self.first = False
                real.create_experiment(name)
                return None
            return real.get_experiment_by_name(name)

        def create_experiment(self, name: str, artifact_location: str) -> str:
            return real.create_experiment(name, artifact_location=artifact_location)

    from mlgraph.core.tracking import artifact_location, ensure_experiment

    name = tracking.experiment_name("raced")
    experiment_id = ensure_experiment(Loser(), name, artifact_location("raced"))
    assert experiment_id == real.get_experiment_by_name(name).experiment_id
    assert tracking.ensure_experiment("raced") == experiment_id
    created = real.get_experiment(tracking.ensure_experiment("exp"))
    assert created.artifact_location == (shared_drive / "mlflow-artifacts" / "exp").resolve().as_uri()


def test_failure_sensor_corrects_a_finished_parent_run(shared_drive: Path, instance) -> None:
    import dagster as dg

    from sensors.mlflow_status import mlflow_run_canceled_sensor, mlflow_run_failure_sensor

    @dg.op
    def later_step_fails() -> None:
        raise RuntimeError("a step after the training steps failed")

    @dg.job
    def failing() -> None:
        later_step_fails()

    result = failing.execute_in_process(instance=instance, tags={"dagster/partition": "exp"}, raise_on_error=False)
    assert not result.success
    tracker = MlflowTracking().tracker("exp")
    parent, _ = tracker.parent_run(result.run_id, "exp-run", {}, {"seed": 1})
    tracker.set_status(parent, "FINISHED")  # what the last training step did before the later failure

    event = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    with dg.build_run_status_sensor_context(
        sensor_name=mlflow_run_failure_sensor.name,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        resources={"mlflow": MlflowTracking()},
    ) as status_context:
        context = status_context.for_run_failure()
        assert mlflow_run_failure_sensor(context) is None
        assert tracker.status(parent) == "FAILED"
        assert isinstance(mlflow_run_failure_sensor(context), dg.SkipReason)  # already right: nothing to do
    assert mlflow_run_canceled_sensor.name == "mlflow_run_canceled_sensor"


WRITER = """
import sys
from mlflow.tracking import MlflowClient
from mlgraph.core.tracking import Tracker

uri, experiment_id, worker = sys.argv[1], sys.argv[2], sys.argv[3]
tracker = Tracker(MlflowClient(tracking_uri=uri), experiment_id)
run_id = tracker.child_run("parent", f"writer-{worker}", {})
for step in range(20):
    tracker.log(run_id, metrics={"m": float(step)}, params={f"p{step}": step}, tags={f"t{step}": "x"})
tracker.set_status(run_id, "FINISHED")
"""


def test_parallel_processes_write_one_sqlite_store(shared_drive: Path) -> None:
    import subprocess
    import sys

    from mlgraph.core.drive import PROJECT_ROOT

    tracking = MlflowTracking()
    experiment_id = tracking.ensure_experiment("exp")
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, tracking.resolved_tracking_uri, experiment_id, str(i)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        outcomes = [(w.wait(timeout=120), w.stderr.read().decode()[-2000:]) for w in writers]
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
    assert all(code == 0 for code, _ in outcomes), outcomes
    runs = tracking.client().search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == [f"writer-{i}" for i in range(2)]
    assert all(len(r.data.params) == 20 and r.info.status == "FINISHED" for r in runs)
