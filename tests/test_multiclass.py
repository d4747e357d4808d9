"""Multiclass classification end to end on a few hundred rows and three classes: labels and their errors,
stratified split, sampling and CV, every family, the metrics (against sklearn), the per-class rows of the
evaluation store, the training group in Dagster (argmax decision, promotion), and the deployment group
(ONNX export, parity by argmax, INT8, benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml

from mlgraph.core import evaluation_store
from mlgraph.core import metrics as core_metrics
from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.data.splitting import split_dataset
from mlgraph.training import evaluation as ev
from mlgraph.training import families as fam
from mlgraph.training.candidates import train_candidates
from mlgraph.training.labels import class_labels, probability_columns
from tests.support import dagster_instance

CLASSES = ("high", "low", "mid")  # sorted: index 0 = high, 1 = low, 2 = mid
SMALL = {"random_forest": {"n_estimators": 15}}


def _frame(n: int, seed: int) -> pd.DataFrame:
    """Three classes that the features separate well but not perfectly; the rarest is about a fifth."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    x2_gappy = np.where(rng.random(n) < 0.05, np.nan, x2)  # the pipelines must impute
    scores = np.stack([2 * x1, -1.5 * x1 + x2, 0.5 * x2 + (colour == "red") - 0.3], axis=1)
    label = np.array(["high", "low", "mid"])[np.argmax(scores + rng.normal(scale=0.6, size=(n, 3)), axis=1)]
    return pd.DataFrame({"x1": x1, "x2": x2_gappy, "colour": colour, "level": label})


def _config(**extra) -> ExperimentConfig:
    data = {
        "name": "tiers",
        "task": "classification",
        "dataset": {"path": "tiers.csv"},
        "target": "level",
        "cv_folds": 3,
        **extra,
    }
    return ExperimentConfig.model_validate(data)


def test_multiclass_metrics_match_sklearn() -> None:
    from sklearn.metrics import f1_score, log_loss, precision_score, recall_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet([1, 1, 1], 200) + np.eye(3)[y] * 0.5
    proba /= proba.sum(axis=1, keepdims=True)
    got = core_metrics.multiclass_metrics(y, proba, CLASSES)
    pred = proba.argmax(axis=1)
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert got["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert got["log_loss"] == pytest.approx(log_loss(y, proba))
    assert got["accuracy"] == pytest.approx(np.mean(pred == y))
    for c, label in enumerate(CLASSES):
        assert got[f"precision[{label}]"] == pytest.approx(precision_score(y == c, pred == c))
        assert got[f"recall[{label}]"] == pytest.approx(recall_score(y == c, pred == c))
    assert set(core_metrics.multiclass_metrics(y, proba)) == set(core_metrics.MULTICLASS_METRICS)
    assert core_metrics.split_per_class("recall[a b]") == ("recall", "a b")
    assert core_metrics.split_per_class("f1_macro") is None
    assert (
        core_metrics.mlflow_metric_key("recall[x/y..]") == "recall/x_y" and core_metrics.mlflow_metric_key("f1") == "f1"
    )


def test_selection_metric_default_is_stated_per_target() -> None:
    config = _config()
    assert config.selection_metric_for(2) == "roc_auc" == config.selection_metric
    assert config.selection_metric_for(3) == core_metrics.MULTICLASS_SELECTION_METRIC == "f1_macro"
    assert _config(selection={"metric": "log_loss"}).selection_metric_for(3) == "log_loss"
    assert core_metrics.lower_is_better("log_loss")


def test_labels_and_their_errors_name_the_class_count_and_field(tmp_path) -> None:
    codes, classes = class_labels(pd.Series(["mid", "low", "high", "mid"], name="level"), "train.parquet")
    assert classes == CLASSES and codes.tolist() == [2, 1, 0, 2]
    one = _frame(60, 0).assign(level="low")
    with pytest.raises(ValueError, match=r"train.parquet: column 'level'.*at least two target classes, found 1.*Fix"):
        train_candidates(_config(), one, tmp_path, n_jobs=1)
    rare = _frame(60, 0)
    rare.loc[rare.index[:2], "level"] = "rare"
    with pytest.raises(
        ValueError,
        match=r"class 'rare' \(2 rows\) has fewer training rows than cv_folds=3.*"
        r"Fix: lower 'cv_folds' in the experiment YAML to 2",
    ):
        train_candidates(_config(), rare, tmp_path, n_jobs=1)
    with pytest.raises(ValueError, match=r"selection.metric 'roc_auc' is not computed for a 3-class target.*f1_macro"):
        train_candidates(_config(selection={"metric": "roc_auc"}), _frame(60, 0), tmp_path, n_jobs=1)


def test_a_binary_target_keeps_its_scores_threshold_and_default(tmp_path) -> None:
    binary = _frame(150, 8).assign(level=lambda f: np.where(f.level == "high", "high", "other"))
    outcome = train_candidates(_config(models=[{"family": "logistic_regression"}]), binary, tmp_path, n_jobs=1)
    assert outcome.selection_metric == "roc_auc" and outcome.data.positive_label == "other"
    assert list(outcome.oof.columns) == ["model", "row", "fold", "y_true", "y_score"]
    assert set(outcome.models["logistic_regression"].cv) == set(core_metrics.CLASSIFICATION_METRICS)


def test_stratified_split_and_sampling_keep_every_class_share() -> None:
    frame = _frame(400, 1)
    config = _config(sampling={"strategy": "stratified", "train_rows": 150, "test_rows": 40})
    result = split_dataset(frame, config)
    shares = frame["level"].value_counts(normalize=True)
    for part, rows in ((result.train, 150), (result.test, 40)):
        assert len(part) == rows
        assert (part["level"].value_counts(normalize=True) - shares).abs().max() < 0.02
    assert set(result.meta["train_class_shares"]) == set(CLASSES)
    lonely = frame.copy()
    lonely.loc[lonely.index[0], "level"] = "solo"
    with pytest.raises(ValueError, match=r"class 'solo' has a single row.*stratified split.*Fix"):
        split_dataset(lonely, config)
    with pytest.raises(
        ValueError, match=r"stratified sampling of 2 train rows.*3 classes.*Fix: raise sampling.train_rows"
    ):
        split_dataset(frame, _config(sampling={"strategy": "stratified", "train_rows": 2}))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every classification family trained (3-fold CV) and evaluated on a three-class target."""
    directory = tmp_path_factory.mktemp("multiclass")
    config = _config(models=[{"family": f, "params": SMALL.get(f, {})} for f in fam.DEFAULT_PARAMS["classification"]])
    train, test = _frame(300, 2), _frame(120, 3)
    outcome = train_candidates(config, train, directory, n_jobs=2)
    artifacts = {f: r.artifact for f, r in outcome.models.items()}
    return config, train, test, outcome, ev.evaluate(config, train, test, artifacts)


def test_every_family_trains_and_scores_a_multiclass_target(trained) -> None:
    _, _, _, outcome, evaluated = trained
    assert outcome.data.classes == CLASSES and outcome.selection_metric == "f1_macro"
    assert set(outcome.models) == set(fam.DEFAULT_PARAMS["classification"])
    for family, result in outcome.models.items():
        assert set(result.cv) == set(core_metrics.MULTICLASS_METRICS)
        assert result.cv["f1_macro"]["mean"] > 0.55, (family, result.cv)  # chance is about 0.33
        assert evaluated.metrics[family]["accuracy"] > 0.6, (family, evaluated.metrics[family])
    proba_columns = probability_columns(CLASSES)
    assert list(outcome.oof.columns) == ["model", "row", "fold", "y_true", "y_pred", *proba_columns]
    np.testing.assert_allclose(outcome.oof[proba_columns].sum(axis=1), 1.0, atol=1e-9)
    # Stratified CV: every validation fold holds each class in about its share.
    counts = outcome.oof[outcome.oof["model"] == "knn"].groupby(["fold", "y_true"]).size().unstack()
    assert (counts.max() - counts.min() <= 1).all()

    baseline = evaluated.metrics[ev.BASELINE["classification"]]
    assert baseline["roc_auc_ovr_macro"] == 0.5 and "threshold" not in baseline
    assert set(evaluated.predictions.columns) == {"model", "row", "y_true", "y_pred", *proba_columns}
    assert (
        f"precision[{CLASSES[0]}]" in evaluated.metrics["knn"] and f"recall[{CLASSES[2]}]" in evaluated.metrics["knn"]
    )
    table = ev.per_class_markdown(evaluated.metrics, CLASSES, evaluated.predictions)
    assert table.count("\n") == 1 + len(evaluated.metrics) * 3 and "| logistic_regression | mid |" in table
    board = ev.scoreboard_markdown(
        "classification",
        "f1_macro",
        {f: r.cv for f, r in outcome.models.items()},
        evaluated.metrics,
        "knn",
        n_classes=3,
    )
    assert "test roc_auc_ovr_macro" in board and "threshold" not in board


def test_per_class_metrics_round_trip_through_the_evaluation_store(tmp_path, trained) -> None:
    config, *_, evaluated = trained
    records = ev.metric_records("tiers", config.config_hash, "test", evaluated.metrics, pd.Timestamp.now(tz="UTC"))
    written = evaluation_store.write_metrics(tmp_path, records, source="candidates")
    assert any(p.parent.name == "metric=precision%5Bhigh%5D" for p in written)
    rows = duckdb.sql(
        f"SELECT model, metric, value FROM {evaluation_store.read_metrics_sql(tmp_path)} WHERE dataset = 'test'"
    ).fetchall()
    stored = {(m, k): v for m, k, v in rows}
    assert stored[("knn", "recall[mid]")] == evaluated.metrics["knn"]["recall[mid]"]
    assert len(stored) == len(records)
    import pyarrow as pa
    import pyarrow.dataset as ds

    # pyarrow's hive partitioning decodes the directory name the same way.
    hive = ds.partitioning(pa.schema([("dataset", pa.string()), ("metric", pa.string())]), flavor="hive")
    keys = ds.dataset(tmp_path / "metrics", format="parquet", partitioning=hive).to_table(columns=["metric"])
    assert "recall[mid]" in set(keys.column("metric").to_pylist())


def _promote(drive: DriveLayout, config: ExperimentConfig, family: str, train: pd.DataFrame, test: pd.DataFrame):
    """What champion_model leaves for a multiclass champion: the splits, the model file, an argmax pointer."""
    import joblib

    from mlgraph.core.hashing import sha256_file
    from mlgraph.training.model_files import ARGMAX_DECISION
    from mlgraph.training.promotion import PromotionStore

    for split, frame in (("train", train), ("test", test)):
        drive.dataset_path(config.name, split).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(drive.dataset_path(config.name, split), index=False)
    spec = fam.feature_spec(train, config)
    model = fam.build_model(
        "classification",
        family,
        fam.resolved_params("classification", family, SMALL.get(family, {})),
        spec,
        config.seed,
    )
    model.fit(fam.prepare_frame(train, spec), class_labels(train["level"], "train")[0])
    path = drive.champion_bundle(config.name, "1") / f"{family}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    PromotionStore(drive.promotion_dir(config.config_hash)).promote(
        {
            "model_path": str(path),
            "model_type": family,
            "model_version": "1",
            "run_id": f"run-{family}",
            "artifact_sha256": sha256_file(path),
            "config_hash": config.config_hash,
            "experiment": config.name,
            "metric": "f1_macro",
            "decision": ARGMAX_DECISION,
            "classes": list(CLASSES),
        }
    )
    return model, spec


@pytest.mark.parametrize("family", fam.DEFAULT_PARAMS["classification"])
def test_multiclass_champion_exports_and_passes_parity_by_argmax(tmp_path, family) -> None:
    from mlgraph.deployment import bench, export, gates, quantize, runtime
    from mlgraph.deployment.champion import Rows, evaluation_split, read_champion

    drive, config = DriveLayout.at(tmp_path), _config()
    train, test = _frame(300, 5), _frame(100, 6)
    model, spec = _promote(drive, config, family, train, test)
    champion = read_champion(drive, config)
    assert champion.multiclass and champion.threshold is None and champion.metric == "f1_macro"
    outcome = export.export_champion(drive, champion, champion.load())
    assert outcome.exported and outcome.report["outputs"] == ["label", "probabilities"]

    gate = gates.fp32_parity(drive, config)
    assert gate.applicable and gate.result.passed, gate.result.failures
    assert gate.result.label_agreement == 1.0 and gate.result.metadata()["threshold"] == "argmax"
    frame = fam.prepare_frame(test, spec)
    session = runtime.session(outcome.path)
    feed = runtime.onnx_feed(Rows(frame=frame), outcome.report["inputs"])
    label, probabilities = session.run(["label", "probabilities"], feed)
    assert probabilities.shape == (len(test), 3)  # the (n, k) tensor
    np.testing.assert_array_equal(label, model.predict(frame))
    assert runtime.onnx_predictor(runtime.ONNX_FP32, "classification", outcome.path)(Rows(frame=frame)).shape == (
        100,
        3,
    )
    if family != "logistic_regression":
        return
    # The linear champion's MatMul quantizes; INT8 keeps parity and the one-vs-rest ROC-AUC budget; the benchmark
    # scores every variant on the promoted metric.
    quantized = quantize.quantize_champion(drive, config.name, outcome.report)
    int8 = gates.int8_parity(drive, config, gates.parity.Int8Budget())
    assert int8.applicable and int8.result.passed, int8.result.failures
    assert int8.result.metric_loss["metric"] == "roc_auc_ovr_macro"
    evaluation = evaluation_split(config, train, test, champion.load())
    tiny = bench.BenchSettings(
        "tiny",
        warmup=1,
        latency_runs=5,
        min_seconds=0.0,
        min_repeats=1,
        rss_rows=8,
        latency_seconds=0.0,
        batch_sizes=(1,),
    )
    rows = bench.run_benchmark(
        config,
        champion,
        champion.load(),
        bench.variants(champion, outcome.path, quantized.path),
        evaluation,
        tiny,
        threads=(1,),
    )
    assert {r["metric"] for r in rows} == {"f1_macro"} and len({r["variant"] for r in rows}) == 3
    assert all(0.5 < r["metric_value"] <= 1 for r in rows), rows


# ---- Dagster: the training and deployment groups on a multiclass experiment ---------------------------------

DATA = ["raw_dataset", "dataset_fingerprint", "train_test_split"]
TRAINING = ["candidate_models", "decision_threshold", "evaluation_metrics", "champion_model"]
DEPLOYMENT = ["onnx_model", "onnx_int8_model"]


def _checks(instance: dg.DagsterInstance) -> dict[str, bool]:
    found = {}
    for record in instance.get_runs():
        for event in instance.all_logs(record.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            data = event.dagster_event.event_specific_data
            found[data.check_name] = data.passed
    return found


@pytest.mark.timeout(240)
def test_training_and_deployment_groups_handle_a_multiclass_champion(shared_drive: Path, config_dir: Path) -> None:
    from mlgraph.cli.staging import materialize_experiments
    from pipeline_assets.definitions import defs
    from resources.experiments import ExperimentCatalog

    _frame(360, 4).to_csv(config_dir / "experiments" / "tiers.csv", index=False)
    (config_dir / "experiments" / "tiers.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tiers",
                "task": "classification",
                "dataset": {"path": "tiers.csv"},
                "target": "level",
                "sampling": {"strategy": "stratified"},
                "cv_folds": 3,
                "models": [{"family": "logistic_regression"}, {"family": "decision_tree"}],
            }
        )
    )
    with dagster_instance() as instance:
        instance.add_dynamic_partitions("experiment", ["tiers"])
        keys = [dg.AssetKey(k) for k in DATA + TRAINING + DEPLOYMENT]
        summary = materialize_experiments(defs, instance, ["tiers"], selection=keys, echo=lambda _: None)
        assert summary.failed == []

        threshold = instance.get_latest_materialization_event(dg.AssetKey("decision_threshold")).asset_materialization
        assert threshold.metadata["decision"].value == "argmax, no threshold"
        assert threshold.metadata["applicable"].value is False
        evaluation = instance.get_latest_materialization_event(dg.AssetKey("evaluation_metrics")).asset_materialization
        assert evaluation.metadata["selection_metric"].value == "f1_macro"
        assert "| logistic_regression | low |" in evaluation.metadata["per_class"].value
        checks = _checks(instance)

    models = shared_drive / "models" / "tiers"
    assert not (models / "threshold.txt").exists()
    assert json.loads((models / "thresholds.json").read_text())["decision"] == "argmax, no threshold"
    manifest = json.loads((models / "candidates.json").read_text())
    assert manifest["classes"] == list(CLASSES) and manifest["selection_metric"] == "f1_macro"
    config = ExperimentCatalog().load("tiers").config
    pointer = json.loads(
        (shared_drive / "model-promotion" / "global" / config.config_hash / "current.json").read_text()
    )
    assert pointer["metric"] == "f1_macro" and pointer["classes"] == list(CLASSES) and "threshold" not in pointer
    rows = duckdb.sql(
        f"SELECT metric FROM {evaluation_store.read_metrics_sql(shared_drive / 'evaluation' / 'tiers')} "
        "WHERE dataset = 'test' AND model = 'baseline_majority_class'"
    ).fetchall()
    assert {"f1_macro", "roc_auc_ovr_macro", "log_loss", "precision[high]", "recall[mid]"} <= {r[0] for r in rows}

    # Deployment: the champion exports, quantizes when it has a MatMul, and passes the blocking gates.
    gates = ("champion_model_beats_baseline", "onnx_model_parity", "onnx_model_schema", "onnx_int8_model_parity")
    assert {g: checks.get(g) for g in gates} == dict.fromkeys(gates, True), checks
