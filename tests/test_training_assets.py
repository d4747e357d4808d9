"""The training group materialized in-process on shrunk demo experiments, against real MLflow (SQLite) and DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from mlgraph.cli.main import main
from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.evaluation_store import read_metrics_sql
from mlgraph.core.metrics import CLASSIFICATION_METRICS, FORECAST_METRICS
from mlgraph.training.lineage import verify_lineage
from pipeline_assets.definitions import defs
from resources.experiments import ExperimentCatalog
from resources.tracking import MlflowTracking
from tests.support.fixtures import shrink_experiment

DATA = ["raw_dataset", "dataset_fingerprint", "train_test_split"]
TRAINING = ["candidate_models", "decision_threshold", "evaluation_metrics", "champion_model"]


def _keys(names: list[str]) -> list[dg.AssetKey]:
    return [dg.AssetKey(n) for n in names]


def _edit(config_dir: Path, name: str, **changes) -> None:
    path = config_dir / "experiments" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        target = data
        *parents, last = dotted.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[last] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _shrink_forests(config_dir: Path, name: str) -> None:
    path = config_dir / "experiments" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    for spec in data["models"]:
        if spec["family"] == "random_forest":
            spec["params"]["n_estimators"] = 25
        if spec["family"] == "hist_gradient_boosting":
            spec["params"]["max_iter"] = 30
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _materialize(
    instance, names: list[str], assets: list[str], run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=instance,
        partition_key=names[0],
        asset_selection=_keys(assets),
        run_config=run_config,
        raise_on_error=False,
    )


def _runs(experiment: str) -> tuple[object, list]:
    tracking = MlflowTracking()
    client = tracking.client()
    found = client.get_experiment_by_name(tracking.experiment_name(experiment))
    assert found is not None, f"no MLflow experiment for {experiment}"
    return client, client.search_runs([found.experiment_id], max_results=1000)


def _parent_of(runs: list, dagster_run_id: str):
    parents = [
        r
        for r in runs
        if r.data.tags.get("dagster_run_id") == dagster_run_id and r.data.tags.get("mlgraph.role") == "execution"
    ]
    assert len(parents) == 1, f"expected one parent run for Dagster run {dagster_run_id}, got {len(parents)}"
    return parents[0]


def _check_passed(result: dg.ExecuteInProcessResult, check: str) -> bool:
    evaluations = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    matching = [e for e in evaluations if e.check_name == check]
    assert matching, f"check {check} did not run"
    return matching[-1].passed


@pytest.mark.timeout(240)
def test_classification_training_evaluation_promotion(shared_drive: Path, config_dir: Path, instance, capsys) -> None:
    name = "student_engagement"
    shrink_experiment(config_dir, name, 700)
    _edit(config_dir, name, cv_folds=3)
    _shrink_forests(config_dir, name)
    config = ExperimentCatalog().load(name).config
    families = config.model_names

    summary = materialize_experiments(defs, instance, [name], selection=_keys(DATA + TRAINING), echo=lambda _: None)
    assert summary.failed == []

    models = shared_drive / "models" / name
    manifest = json.loads((models / "candidates.json").read_text())
    assert sorted(manifest["families"]) == sorted(families)
    for family in families:
        assert (models / f"{family}.joblib").stat().st_size > 0
        cv = manifest["families"][family]["cv"]["roc_auc"]
        assert 0.5 < cv["mean"] <= 1 and cv["std"] >= 0
        assert len(manifest["families"][family]["folds"]) == 3
    threshold = float((models / "threshold.txt").read_text())
    thresholds = json.loads((models / "thresholds.json").read_text())
    assert 0 < threshold <= 1
    assert thresholds["families"][thresholds["champion_candidate"]]["threshold"] == threshold

    # Evaluation parquet through DuckDB's hive partitioning: the shared schema, every family, the baseline.
    evaluation = shared_drive / "evaluation" / name
    relation = duckdb.sql(f"SELECT * FROM {read_metrics_sql(evaluation)}")
    assert dict(zip(relation.columns, map(str, relation.types), strict=True)) == {
        "experiment": "VARCHAR",
        "model": "VARCHAR",
        "dataset": "VARCHAR",
        "metric": "VARCHAR",
        "value": "DOUBLE",
        "config_hash": "VARCHAR",
        "timestamp": "TIMESTAMP WITH TIME ZONE",
    }
    test = duckdb.sql(
        f"SELECT model, metric, value FROM {read_metrics_sql(evaluation)} WHERE dataset = 'test' AND config_hash = ?",
        params=[config.config_hash],
    ).fetchall()
    by_model: dict[str, dict[str, float]] = {}
    for model, metric, value in test:
        by_model.setdefault(model, {})[metric] = value
    assert set(by_model) == {*families, "baseline_majority_class"}
    for model, values in by_model.items():
        assert set(CLASSIFICATION_METRICS) <= set(values)
        assert all(0 <= values[m] <= 1 for m in CLASSIFICATION_METRICS), (model, values)
    assert by_model["baseline_majority_class"]["roc_auc"] == 0.5
    assert {"cv", "test"} == {
        r[0] for r in duckdb.sql(f"SELECT DISTINCT dataset FROM {read_metrics_sql(evaluation)}").fetchall()
    }
    predictions = pd.read_parquet(evaluation / "predictions" / "test.parquet")
    assert list(predictions.columns) == ["model", "row", "y_true", "y_pred", "y_score"]
    assert set(predictions["y_pred"]) <= {0, 1} and predictions["y_score"].between(0, 1).all()
    assert len(predictions) == (len(families) + 1) * len(
        pd.read_parquet(shared_drive / "datasets" / name / "test.parquet")
    )

    # Promotion pointer, history, lineage, registry alias.
    promotion_dir = shared_drive / "model-promotion" / "global" / config.config_hash
    current = json.loads((promotion_dir / "current.json").read_text())
    assert {"run_id", "model_type", "config_hash", "model_uri", "score", "timestamp"} <= set(current)
    assert current["model_type"] == thresholds["champion_candidate"] and current["threshold"] == threshold
    assert current["model_uri"] == f"runs:/{current['run_id']}/{current['model_type']}"
    assert len((promotion_dir / "history.jsonl").read_text().splitlines()) == 1
    assert verify_lineage(models / "lineage.json") == []
    assert Path(current["model_path"]).exists()

    client, runs = _runs(name)
    registered = MlflowTracking().registered_model_name(name)
    assert client.get_model_version_by_alias(registered, "champion").run_id == current["run_id"]
    dagster_run_id = current["dagster_run_id"]
    parent = _parent_of(runs, dagster_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["config_hash"] == config.config_hash and parent.data.params["cv_folds"] == "3"
    assert (
        parent.data.tags["mlgraph.partition"] == name and parent.data.tags["mlgraph.champion"] == current["model_type"]
    )
    assert parent.data.tags["mlgraph.dataset_sha256"] == manifest["dataset_sha256"]
    assert parent.data.metrics["test_roc_auc"] == by_model[current["model_type"]]["roc_auc"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.info.run_name for c in children) == sorted(families)
    for child in children:
        family = child.info.run_name
        assert child.info.status == "FINISHED"
        assert child.data.tags["dagster_run_id"] == dagster_run_id
        assert child.data.tags["mlgraph.config_hash"] == config.config_hash
        assert child.data.params["seed"] == "42"
        assert child.data.metrics["test_roc_auc"] == by_model[family]["roc_auc"]
        assert child.data.metrics["cv_roc_auc_mean"] == pytest.approx(
            manifest["families"][family]["cv"]["roc_auc"]["mean"]
        )
        assert [m.step for m in client.get_metric_history(child.info.run_id, "cv_roc_auc")] == [0, 1, 2]
        assert [a.path for a in client.list_artifacts(child.info.run_id, family)] == [f"{family}/{family}.joblib"]
        # The child run's duration is the family's own compute time, not the moment it took to log it.
        compute_ms = 1000 * (child.data.metrics["fit_seconds"] + child.data.metrics["cv_seconds"])
        assert child.info.end_time - child.info.start_time >= compute_ms - 5
    rf = next(c for c in children if c.info.run_name == "random_forest")
    assert rf.data.params["model.n_estimators"] == "25" and rf.data.params["model.min_samples_leaf"] == "2"

    # Same config and data again: identical metrics (determinism), and no second promotion.
    again = materialize_experiments(defs, instance, [name], selection=_keys(TRAINING), echo=lambda _: None)
    assert again.failed == []
    second = json.loads((models / "candidates.json").read_text())
    assert second["parent_run_id"] != manifest["parent_run_id"]
    for family in families:
        assert second["families"][family]["folds"] == manifest["families"][family]["folds"]
    assert len((promotion_dir / "history.jsonl").read_text().splitlines()) == 1
    assert json.loads((promotion_dir / "current.json").read_text())["run_id"] == current["run_id"]
    assert len(client.search_model_versions(f"name = '{registered}'")) == 1

    forced = _materialize(
        instance, [name], ["champion_model"], {"ops": {"champion_model": {"config": {"force": True}}}}
    )
    assert forced.success and _check_passed(forced, "champion_model_beats_baseline")
    assert len((promotion_dir / "history.jsonl").read_text().splitlines()) == 2
    assert str(client.get_model_version_by_alias(registered, "champion").version) == "2"
    _, runs = _runs(name)
    assert _parent_of(runs, forced.run_id).info.status == "FINISHED"

    assert main(["promote", "--experiment", name, "--rollback"]) == 0
    assert str(client.get_model_version_by_alias(registered, "champion").version) == "1"
    assert len((promotion_dir / "history.jsonl").read_text().splitlines()) == 3

    # A step that fails marks this Dagster run's parent run FAILED, even after an earlier step opened it.
    (shared_drive / "datasets" / name / "test.parquet").write_bytes(b"not parquet")
    failed = _materialize(instance, [name], ["decision_threshold", "evaluation_metrics"])
    assert not failed.success
    _, runs = _runs(name)
    assert _parent_of(runs, failed.run_id).info.status == "FAILED"

    capsys.readouterr()
    assert main(["compare", "--experiment", name, "--format", "json", "--sort", "start_time"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows][-2:] == ["FINISHED", "FAILED"]
    assert rows[0]["dagster_run_id"] == dagster_run_id and rows[0]["champion"] == current["model_type"]


@pytest.mark.timeout(240)
def test_regression_and_forecasting_train_and_promote(shared_drive: Path, config_dir: Path, instance) -> None:
    shrink_experiment(config_dir, "salary", 600)
    _edit(config_dir, "salary", cv_folds=3)
    _shrink_forests(config_dir, "salary")
    shrink_experiment(config_dir, "demand_forecast", 1000)
    _edit(
        config_dir,
        "demand_forecast",
        cv_folds=2,
        **{"forecast.epochs": 3, "forecast.hidden_size": 8, "forecast.batch_size": 128, "forecast.learning_rate": 0.01},
    )
    for name, metric in (("salary", "r2"), ("demand_forecast", "composite")):
        result = materialize_experiments(defs, instance, [name], selection=_keys(DATA + TRAINING), echo=lambda _: None)
        assert result.failed == [], name
        config = ExperimentCatalog().load(name).config
        current = json.loads(
            (shared_drive / "model-promotion" / "global" / config.config_hash / "current.json").read_text()
        )
        assert current["model_type"] in config.model_names and current["metric"] == metric
        assert not (shared_drive / "models" / name / "threshold.txt").exists()
        event = instance.get_latest_materialization_event(dg.AssetKey("decision_threshold"))
        assert event.asset_materialization.metadata["applicable"].value is False
        assert verify_lineage(shared_drive / "models" / name / "lineage.json") == []

    evaluation = shared_drive / "evaluation" / "demand_forecast"
    rows = duckdb.sql(
        f"SELECT model, metric, value FROM {read_metrics_sql(evaluation)} WHERE dataset = 'test'"
    ).fetchall()
    test: dict[str, dict[str, float]] = {}
    for model, metric, value in rows:
        test.setdefault(model, {})[metric] = value
    assert set(test) == {"gru", "lstm", "prophet", "seasonal_naive", "baseline_seasonal_naive"}
    for values in test.values():
        assert set(values) == set(FORECAST_METRICS)
        assert values["rmse"] == pytest.approx(np.sqrt(values["mse"])) and values["composite"] > 0
    assert test["seasonal_naive"] == test["baseline_seasonal_naive"]
    predictions = pd.read_parquet(evaluation / "predictions" / "test.parquet")
    assert {"timestamp", "y_true", "y_pred"} <= set(predictions.columns)

    client, runs = _runs("demand_forecast")
    for family in ("gru", "lstm"):
        child = next(r for r in runs if r.info.run_name == family)
        train_loss = client.get_metric_history(child.info.run_id, "train_loss")
        val_loss = client.get_metric_history(child.info.run_id, "val_loss")
        assert [m.step for m in train_loss] == [1, 2, 3] == [m.step for m in val_loss]
        assert child.data.params["model.hidden_size"] == "8"
        assert [a.path for a in client.list_artifacts(child.info.run_id, family)] == [f"{family}/{family}.pt"]


def test_champion_no_better_than_baseline_is_not_promoted(shared_drive: Path, config_dir: Path, instance) -> None:
    # A perfectly periodic series: seasonal naive is exact, so the champion ties the baseline and fails the gate.
    hours = np.arange(400)
    frame = pd.DataFrame(
        {
            "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(hours, unit="h"),
            "y": 100 + 10 * np.sin(2 * np.pi * hours / 24),
        }
    )
    frame.to_csv(config_dir / "experiments" / "periodic.csv", index=False)
    (config_dir / "experiments" / "periodic.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "periodic",
                "task": "forecasting",
                "dataset": {"path": "periodic.csv"},
                "target": "y",
                "time_column": "ts",
                "columns": {"ts": "datetime", "y": "numeric"},
                "models": [{"family": "seasonal_naive"}],
                "cv_folds": 2,
            }
        )
    )
    summary = materialize_experiments(
        defs, instance, ["periodic"], selection=_keys(DATA + TRAINING), echo=lambda _: None
    )
    assert summary.failed, "the blocking baseline check must fail the run"
    config = ExperimentCatalog().load("periodic").config
    assert not (shared_drive / "model-promotion" / "global" / config.config_hash / "current.json").exists()
    last_run = instance.get_runs(limit=1)[0]
    evaluations = [
        e.dagster_event.event_specific_data
        for e in instance.all_logs(last_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    gate = next(e for e in evaluations if e.check_name == "champion_model_beats_baseline")
    assert gate.passed is False
    assert gate.metadata["champion"].value == "seasonal_naive"
    assert gate.metadata["champion_test_value"].value == gate.metadata["baseline_test_value"].value < 1e-9
    _, runs = _runs("periodic")
    parents = [r for r in runs if r.data.tags.get("mlgraph.role") == "execution"]
    assert [p.info.status for p in parents] == ["FAILED"]
    assert parents[0].data.tags["mlgraph.promoted"] == "false"


def test_parent_run_fails_when_a_step_after_training_fails(shared_drive: Path, config_dir: Path, instance) -> None:
    from pipeline_assets.data.assets import dataset_fingerprint, raw_dataset, train_test_split
    from pipeline_assets.partitions import experiment_partitions_def
    from pipeline_assets.training.assets import candidate_models, champion_model, decision_threshold, evaluation_metrics
    from resources.storage import SharedDrive

    @dg.asset(partitions_def=experiment_partitions_def, deps=[champion_model])
    def after_champion() -> None:
        raise RuntimeError("a deployment step fails after the training steps succeeded")

    name = "student_engagement"
    shrink_experiment(config_dir, name, 400)
    _edit(config_dir, name, cv_folds=2, models=[{"family": "logistic_regression"}, {"family": "decision_tree"}])
    graph = dg.Definitions(
        assets=[
            raw_dataset,
            dataset_fingerprint,
            train_test_split,
            candidate_models,
            decision_threshold,
            evaluation_metrics,
            champion_model,
            after_champion,
        ],
        resources={"storage": SharedDrive(), "catalog": ExperimentCatalog(), "mlflow": MlflowTracking()},
        executor=dg.in_process_executor,
    )
    result = graph.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, partition_key=name, raise_on_error=False
    )
    assert not result.success
    assert [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"] == ["after_champion"]
    _, runs = _runs(name)
    parent = _parent_of(runs, result.run_id)
    assert parent.data.tags["mlgraph.promoted"] == "true"  # champion_model itself succeeded ...
    assert parent.info.status == "FAILED"  # ... but the Dagster run failed, and so does its MLflow run


def test_training_steps_are_the_training_group_in_run_order() -> None:
    from mlgraph.training.mlflow_runs import TRAINING_STEPS

    graph = defs.resolve_asset_graph()
    group = {k.to_user_string() for k in graph.materializable_asset_keys if graph.get(k).group_name == "training"}
    # sweep_results reads the sweeps' records and writes no MLflow run: the one asset of the group that
    # is not a step of the execution's parent run.
    assert set(TRAINING_STEPS) == group - {"sweep_results"} == set(TRAINING)
    for position, step in enumerate(TRAINING_STEPS):
        upstream = {k.to_user_string() for k in graph.get_ancestor_asset_keys(dg.AssetKey(step))}
        assert set(TRAINING_STEPS[:position]) <= upstream, step
