"""Hyperparameter sweeps: the spec's `sweep:` section, trials as executions (grid and Optuna search),
reruns that skip finished trials and rerun failed ones, pruning, the candidate it yields, the
sweep_results asset and `mlgraph compare --sweep`.

Trials run in real worker processes (the local runner's fork-server pool); MLflow is the real file/SQLite
store on a temporary drive. The daemon and Slurm paths are in tests/test_sweep_services.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.model_spec import ModelSpec
from mlgraph.training import sweep_report
from mlgraph.training.sweep_runners import LocalRunner
from mlgraph.training.sweeps import Progress, Sweep, best_trial, grid_points, sweep_key, trial_key
from tests.support.instance import dagster_instance


def spec(**sweep) -> ModelSpec:
    return ModelSpec.model_validate({"name": "ridge-sweep", "family": "ridge", "sweep": sweep})


# --- the spec's sweep section -----------------------------------------------------------------------


def test_sweep_section_is_validated_with_fixes():
    with pytest.raises(ValidationError, match="exactly one of 'grid'"):
        spec()
    with pytest.raises(ValidationError, match="exactly one of 'grid'"):
        spec(grid={"alpha": [1.0]}, search={"n_trials": 2, "space": {"alpha": [1.0, 2.0]}})
    with pytest.raises(ValidationError, match="YAML reads 1e-3 as text"):
        spec(grid={"alpha": ["1e-3", 1.0]})
    with pytest.raises(ValidationError, match="lists a value twice"):
        spec(grid={"alpha": [1.0, 1.0]})
    with pytest.raises(ValidationError, match="log range needs low > 0"):
        spec(search={"n_trials": 3, "space": {"alpha": {"low": 0, "high": 1, "log": True}}})
    with pytest.raises(ValidationError, match="families trained by epochs"):
        spec(grid={"alpha": [1.0, 2.0]}, prune=True)
    with pytest.raises(ValidationError, match="at most 1000"):
        spec(grid={"a": list(range(40)), "b": list(range(40))})


def test_grid_order_keys_and_best_are_deterministic():
    s = spec(grid={"alpha": [0.1, 1.0], "solver": ["auto", "svd"]})
    assert grid_points(s) == [
        {"alpha": 0.1, "solver": "auto"},
        {"alpha": 0.1, "solver": "svd"},
        {"alpha": 1.0, "solver": "auto"},
        {"alpha": 1.0, "solver": "svd"},
    ]
    assert trial_key("b", {"alpha": 0.1, "solver": "svd"}) == trial_key("b", {"solver": "svd", "alpha": 0.1})
    assert trial_key("b", {"alpha": 0.1}) != trial_key("c", {"alpha": 0.1})
    records = [
        {"number": 0, "key": "a", "status": "finished", "cv": {"rmse": {"mean": 2.0}, "r2": {"mean": 0.5}}},
        {"number": 1, "key": "b", "status": "finished", "cv": {"rmse": {"mean": 1.0}, "r2": {"mean": 0.4}}},
        {"number": 2, "key": "c", "status": "failed"},
    ]
    assert best_trial(records, "rmse")["key"] == "b"  # lower is better
    assert best_trial(records, "r2")["key"] == "a"  # higher is better


def test_list_metric_reductions():
    assert [sweep_report.reduce([3.0, 1.0, 2.0], how) for how in ("last", "min", "max", "mean")] == [2.0, 1.0, 3.0, 2.0]
    assert sweep_report.reduce([], "min") is None
    with pytest.raises(ValueError, match="not one of last, min, max, mean"):
        sweep_report.reduce([1.0], "median")


# --- trials in worker processes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def salary_splits(tmp_path_factory) -> tuple[ExperimentConfig, Path, Path]:
    from mlgraph.core.catalog import ConfigCatalog
    from mlgraph.core.drive import PROJECT_ROOT
    from mlgraph.data.generators import generate

    root = tmp_path_factory.mktemp("splits")
    config = ConfigCatalog(PROJECT_ROOT / "config").load("salary").config
    frame = generate("salary", rows=400, seed=3).to_pandas()
    frame.iloc[:320].to_parquet(root / "train.parquet")
    frame.iloc[320:].to_parquet(root / "test.parquet")
    return config.model_copy(update={"cv_folds": 2}), root / "train.parquet", root / "test.parquet"


def with_spec(config: ExperimentConfig, spec_data: dict) -> ExperimentConfig:
    data = json.loads(config.model_dump_json())
    data["models"] = [spec_data]
    return ExperimentConfig.model_validate_json(json.dumps(data))


def run_sweep(config, train, test, root, slots=2, events=None):
    spec_ = config.models[0]
    progress = Progress(on_end=lambda record, running: events.append(record)) if events is not None else None
    return Sweep(config, spec_, "rmse", "data-1", root, train, test, LocalRunner(slots), progress).run()


def test_grid_runs_in_parallel_records_failures_and_reruns_only_what_failed(salary_splits, tmp_path):
    config, train, test = salary_splits
    # alpha -1 is refused by Ridge when it fits: that trial fails, the sweep goes on.
    config = with_spec(
        config, {"name": "ridge-sweep", "family": "ridge", "sweep": {"grid": {"alpha": [0.1, 10.0, -1.0]}}}
    )
    events: list[dict] = []
    first = run_sweep(config, train, test, tmp_path / "trials", events=events)
    assert first.counts() == {"finished": 2, "failed": 1, "pruned": 0}
    assert first.ran == 3 and first.reused == 0
    failed = next(r for r in first.records if r["status"] == "failed")
    assert failed["params"] == {"alpha": -1.0} and "alpha" in failed["error"]
    finished = [r for r in first.records if r["status"] == "finished"]
    assert all(r["test"]["rmse"] > 0 and len(r["fold_metrics"]) == 2 for r in finished)
    assert first.best == min(finished, key=lambda r: r["cv"]["rmse"]["mean"])
    assert (tmp_path / "trials" / first.best["key"] / first.best["artifact"]).is_file()
    # Two worker processes ran the three trials.
    assert len({r["pid"] for r in [*finished, failed]}) <= 2

    # Rerun: the finished trials are reused (their files untouched), only the failed one runs again.
    stamps = {r["key"]: (tmp_path / "trials" / r["key"] / "trial.json").stat().st_mtime_ns for r in finished}
    second = run_sweep(config, train, test, tmp_path / "trials")
    assert second.ran == 1 and second.reused == 2
    assert {r["key"]: (tmp_path / "trials" / r["key"] / "trial.json").stat().st_mtime_ns for r in finished} == stamps
    assert second.best["key"] == first.best["key"]


def test_search_rebuilds_its_study_from_the_records_and_grows(salary_splits, tmp_path):
    config, train, test = salary_splits
    space = {"alpha": {"low": 0.001, "high": 100.0, "log": True}}
    small = with_spec(config, {"family": "ridge", "sweep": {"search": {"n_trials": 3, "space": space, "seed": 5}}})
    first = run_sweep(small, train, test, tmp_path / "trials", slots=1)
    assert [r["number"] for r in first.records] == [0, 1, 2] and first.ran == 3
    assert all(0.001 <= r["params"]["alpha"] <= 100.0 for r in first.records)
    # More trials in the same space: the key leaves the sweep section out, so the three are reused.
    bigger = with_spec(config, {"family": "ridge", "sweep": {"search": {"n_trials": 5, "space": space, "seed": 5}}})
    assert sweep_key(small, small.models[0], "d") == sweep_key(bigger, bigger.models[0], "d")
    second = run_sweep(bigger, train, test, tmp_path / "trials", slots=2)
    assert second.reused == 3 and second.ran == 2 and len(second.records) == 5
    best = second.best["cv"]["rmse"]["mean"]
    assert best == min(r["cv"]["rmse"]["mean"] for r in second.records)


def test_median_pruning_stops_a_lagging_network(tmp_path):
    from mlgraph.core.catalog import ConfigCatalog
    from mlgraph.core.drive import PROJECT_ROOT
    from mlgraph.data.generators import generate

    config = ConfigCatalog(PROJECT_ROOT / "config").load("demand_forecast").config
    frame = generate("demand_forecast", rows=500, seed=3).to_pandas()
    frame.iloc[:400].to_parquet(tmp_path / "train.parquet")
    frame.iloc[400:].to_parquet(tmp_path / "test.parquet")
    gru = {
        "name": "gru-sweep",
        "family": "gru",
        "params": {"epochs": 8, "patience": 8, "hidden_size": 8, "batch_size": 32},
        # A learning rate of 0 never learns: once two trials have finished, it lags their median.
        "sweep": {
            "grid": {"learning_rate": [0.01, 0.02, 0.0]},
            "prune": True,
            "prune_startup_trials": 2,
            "prune_warmup_epochs": 2,
            "max_parallel": 1,
        },
    }
    config = with_spec(config.model_copy(update={"cv_folds": 2}), gru)
    out = Sweep(
        config,
        config.models[0],
        "composite",
        "d",
        tmp_path / "trials",
        tmp_path / "train.parquet",
        tmp_path / "test.parquet",
        LocalRunner(1),
    ).run()
    by_lr = {r["params"]["learning_rate"]: r for r in out.records}
    assert by_lr[0.0]["status"] == "pruned", by_lr[0.0]
    assert by_lr[0.0]["pruned_at_epoch"] == 2  # the first epoch it may be pruned: after its two warm-up epochs
    assert by_lr[0.01]["status"] == by_lr[0.02]["status"] == "finished"
    assert out.best["params"]["learning_rate"] in (0.01, 0.02)


# --- through Dagster: candidate_models, sweep_results, MLflow, compare --sweep -----------------------


def write_sweep_experiment(config_dir: Path, name: str = "swept") -> None:
    """Salary (400 rows): a ridge grid with one alpha Ridge refuses, beside an unswept decision tree."""
    from mlgraph.data.generators import write_dataset

    demo = yaml.safe_load((config_dir / "experiments" / "salary.yaml").read_text())
    write_dataset("salary", config_dir / "experiments" / f"{name}.csv", rows=400, seed=3)
    data = {
        "name": name,
        "task": "regression",
        "dataset": {"path": f"{name}.csv"},
        "target": demo["target"],
        "columns": demo["columns"],
        "split": {"test_size": 0.25, "seed": 1},
        "models": [
            {"name": "ridge-sweep", "family": "ridge", "sweep": {"grid": {"alpha": [0.1, 30.0, -1.0]}}},
            {"family": "decision_tree", "params": {"max_depth": 3}},
        ],
        "cv_folds": 2,
        "seed": 1,
    }
    (config_dir / "experiments" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def materialize(instance, keys, partition="swept"):
    from pipeline_assets.definitions import defs

    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key=partition, asset_selection=[dg.AssetKey(k) for k in keys]
    )


def trial_runs(client, experiment_id):
    runs = client.search_runs([experiment_id], filter_string="tags.`mlgraph.role` = 'trial'", max_results=100)
    return sorted(runs, key=lambda r: (int(r.data.tags["mlgraph.trial_number"]), r.info.start_time))


def test_sweep_through_dagster_mlflow_results_and_compare(shared_drive, config_dir, capsys):
    from mlgraph.cli.main import main
    from mlgraph.core.drive import DriveLayout
    from resources.tracking import MlflowTracking

    write_sweep_experiment(config_dir)
    drive = DriveLayout.at(shared_drive)
    with dagster_instance(experiments=["swept"]) as instance:
        materialize(instance, ["raw_dataset", "dataset_fingerprint", "train_test_split"])
        result = materialize(instance, ["candidate_models", "sweep_results"])
        assert result.success
        observations = [
            e.event_specific_data.asset_observation.metadata
            for e in result.all_events
            if e.event_type_value == "ASSET_OBSERVATION"
        ]
        assert observations[-1]["trials_done"].value == 2 and observations[-1]["trials_failed"].value == 1

        client = MlflowTracking().client()
        experiment_id = client.get_experiment_by_name(MlflowTracking().experiment_name("swept")).experiment_id
        trials = trial_runs(client, experiment_id)
        assert [r.data.params["model.alpha"] for r in trials] == ["0.1", "30.0", "-1.0"]
        assert [r.info.status for r in trials] == ["FINISHED", "FINISHED", "FAILED"]
        assert "alpha" in trials[2].data.tags["mlgraph.error"]
        sweep_run = client.get_run(trials[0].data.tags["mlflow.parentRunId"])
        assert sweep_run.data.tags["mlgraph.role"] == "sweep" and sweep_run.info.status == "FINISHED"
        best = min(trials[:2], key=lambda r: r.data.metrics["cv_rmse_mean"])
        assert sweep_run.data.tags["mlgraph.best_trial_run_id"] == best.info.run_id

        # The best trial is the spec's candidate: its params, its model file, linked from the candidate run.
        manifest = json.loads(drive.candidates_manifest("swept").read_text())
        entry = manifest["families"]["ridge-sweep"]
        assert entry["params"]["alpha"] == float(best.data.params["model.alpha"])
        candidate = client.get_run(entry["run_id"])
        assert candidate.data.tags["mlgraph.sweep_trial_run_id"] == best.info.run_id
        assert set(manifest["families"]) == {"ridge-sweep", "decision_tree"}

        # sweep_results: CSV, DuckDB table and plots.
        rows = pd.read_csv(drive.sweep_results_csv("swept"))
        assert list(rows["status"]) == ["finished", "finished", "failed"]
        assert rows.loc[rows["best"], "param.alpha"].item() == float(best.data.params["model.alpha"])
        assert drive.plot_path("swept", "sweep_ridge-sweep_metric_vs_params").stat().st_size > 1000
        import duckdb

        from resources.warehouse import Warehouse

        with duckdb.connect(Warehouse().database_path, read_only=True) as con:
            assert con.sql("SELECT count(*) FROM sweep_results WHERE experiment = 'swept'").fetchall() == [(3,)]

        # compare --sweep: one row per trial, each reduction of the per-fold list metric.
        folds = {
            r.data.params["model.alpha"]: [m.value for m in client.get_metric_history(r.info.run_id, "cv_rmse")]
            for r in trials[:2]
        }
        for how, expected in (
            ("last", lambda v: v[-1]),
            ("min", min),
            ("max", max),
            ("mean", lambda v: sum(v) / len(v)),
        ):
            assert (
                main(
                    ["compare", "--experiment", "swept", "--sweep", "ridge-sweep", "--reduce", how, "--format", "json"]
                )
                == 0
            )
            table = json.loads(capsys.readouterr().out)
            assert [t["trial"] for t in table] == [0, 1, 2]
            for row in table[:2]:
                assert row["metrics.cv_rmse"] == pytest.approx(expected(folds[str(row["params.model.alpha"])]))
        assert main(["compare", "--experiment", "swept", "--sweep", "nope"]) == 2
        assert "no sweep named 'nope'" in capsys.readouterr().err

        # Rerun: the finished trials are not run again, the failed one is.
        assert materialize(instance, ["candidate_models"]).success
        again = trial_runs(client, experiment_id)
        assert len(again) == 4 and [r.data.params["model.alpha"] for r in again].count("-1.0") == 2


def test_compare_sweep_reduces_per_epoch_losses(shared_drive):
    """Trial runs logged as candidate_models logs them (SweepTracking), read back by `compare --sweep`."""
    from mlgraph.core.tracking import Tracker
    from mlgraph.training.compare import sweep_rows
    from mlgraph.training.mlflow_runs import SweepTracking
    from mlgraph.training.sweep_runners import Owner
    from mlgraph.training.sweeps import Running

    tracker = Tracker.open("curves", drive_root=shared_drive)
    parent = tracker.create_run("execution", {"mlgraph.role": "execution"})
    gru = ModelSpec.model_validate(
        {"name": "gru-grid", "family": "gru", "sweep": {"grid": {"learning_rate": [0.1, 0.2]}}}
    )
    tracking = SweepTracking(tracker, parent, {}, gru, "key-1", "composite")
    losses = {0: [0.9, 0.5, 0.7], 1: [0.8, 0.6, 0.4]}
    for number, lr in enumerate((0.1, 0.2)):
        running = Running(number, f"t{number}", {"learning_rate": lr}, Owner("local"), shared_drive, 0.0)
        tracking.trial_started(running)
        history = [{"epoch": e, "train_loss": v + 0.1, "val_loss": v} for e, v in enumerate(losses[number], start=1)]
        record = {
            "number": number,
            "status": "finished",
            "params": {"learning_rate": lr},
            "cv": {"composite": {"mean": min(losses[number]), "std": 0.0}},
            "fold_metrics": [{"composite": min(losses[number])}],
            "history": history,
            "fit_seconds": 1.0,
            "cv_seconds": 2.0,
        }
        tracking.trial_ended(record, running)
    expected = {"last": [0.7, 0.4], "min": [0.5, 0.4], "max": [0.9, 0.8], "mean": [0.7, 0.6]}
    for how, values in expected.items():
        rows = sweep_rows(tracker.client, tracker.experiment_id, "gru-grid", how)
        assert [r["params.model.learning_rate"] for r in rows] == [0.1, 0.2]
        assert [r["metrics.val_loss"] for r in rows] == pytest.approx(values)
        assert [r["metrics.train_loss"] for r in rows] == pytest.approx([v + 0.1 for v in values])
        assert all(r["status"] == "finished" for r in rows)
