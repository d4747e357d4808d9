"""Hyperparameter sweeps: the spec's `sweep:` section, trials as executions (grid and Optuna search),
reruns that skip finished trials and rerun failed ones, pruning, the candidate it yields, the
sweep_results asset and `mlgraph compare --sweep`.

Trials run in real worker processes (the local runner's fork-server pool); MLflow is the real file/SQLite
store on a temporary drive. The daemon and Slurm paths are in tests/test_sweep_services.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.model_spec import ModelSpec
from mlgraph.training import sweep_report
from mlgraph.training.sweeps import LocalRunner, Progress, Sweep, best_trial, grid_points, sweep_key, trial_key

SALARY_COLUMNS = None  # the generator's schema is declared by the demo YAML; copied below


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
    assert len({r["pid"] for r in finished + [failed]}) <= 2

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
