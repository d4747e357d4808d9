"""External checkpoints for every task: multiclass (k logits, softmax) and regression next to binary (one
logit, sigmoid, outputs unchanged). Real torch checkpoints are saved, loaded and evaluated on generated
splits; the metrics are checked against sklearn on the model's own outputs, then the predictions file, the
metric store, the completeness check, the report's per-class table, the errors, and the example trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from mlgraph.analysis.checkpoint_report import split_metrics_table
from mlgraph.core import evaluation_store
from mlgraph.core import metrics as core_metrics
from mlgraph.external import evaluation
from mlgraph.trainer.checkpoint import (
    CheckpointError,
    FeatureSpec,
    build_model,
    load_checkpoint,
    predict,
    save_checkpoint,
)
from mlgraph.training.labels import probability_columns

torch = pytest.importorskip("torch")

SORTED = ["high", "low", "mid"]
LOGIT_ORDER = ["mid", "high", "low"]  # deliberately not sorted: evaluation must reorder to the candidates' order
BASE_COLUMNS = ["row", "model", "y_true", "y_pred", "y_score"]


def tiers(n: int, seed: int) -> pd.DataFrame:
    """Three classes the features separate well but not perfectly, plus a categorical feature and a number."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    scores = np.stack([2 * x1, -1.5 * x1 + x2, 0.5 * x2 + (colour == "red") - 0.3], axis=1)
    level = np.array(SORTED)[np.argmax(scores + rng.normal(scale=0.6, size=(n, 3)), axis=1)]
    value = 3.0 * x1 - 2.0 * x2 + (colour == "blue") * 1.5 + rng.normal(scale=0.3, size=n) + 100.0
    return pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "level": level, "value": value})


def fit(model, x: torch.Tensor, y: torch.Tensor, loss_fn, steps: int = 150) -> None:
    """Full-batch Adam: a few hundred rows learn in well under a second."""
    # One thread: on tensors this small, threads only contend (tens of times slower on a busy machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)


def spec_of(train: pd.DataFrame) -> FeatureSpec:
    return FeatureSpec.fit(train, ["x1", "x2"], ["colour"])


def save_multiclass(directory: Path, train: pd.DataFrame, classes=LOGIT_ORDER, **overrides) -> Path:
    spec = spec_of(train)
    architecture = {"type": "mlp", "input_dim": len(spec.names), "hidden": [16], "output_dim": len(classes)}
    torch.manual_seed(1)
    model = build_model(architecture)
    codes = pd.Categorical(train["level"], categories=list(classes)).codes.astype("int64")
    fit(model, torch.from_numpy(spec.transform(train)), torch.from_numpy(codes), torch.nn.CrossEntropyLoss())
    metadata = {
        "task": "classification",
        "target": "level",
        "architecture": architecture,
        "features": spec.to_dict(),
        "classes": classes,
        **overrides,
    }
    return save_checkpoint(directory, model, metadata)


def save_regression(directory: Path, train: pd.DataFrame) -> Path:
    spec = spec_of(train)
    architecture = {"type": "mlp", "input_dim": len(spec.names), "hidden": [16], "output_dim": 1}
    torch.manual_seed(2)
    model = build_model(architecture)
    y = train["value"].to_numpy("float64")
    mean, std = float(y.mean()), float(y.std())
    target = torch.from_numpy(((y - mean) / std).astype("float32"))[:, None]
    fit(model, torch.from_numpy(spec.transform(train)), target, torch.nn.MSELoss(), steps=300)
    metadata = {
        "task": "regression",
        "target": "value",
        "architecture": architecture,
        "features": spec.to_dict(),
        "target_scaling": {"mean": mean, "std": std},
    }
    return save_checkpoint(directory, model, metadata)


def raw_outputs(directory: Path, frame: pd.DataFrame) -> np.ndarray:
    """The saved model's own outputs, rebuilt from model.pt without the checkpoint's predict()."""
    meta = json.loads((directory / "metadata.json").read_text())
    model = build_model(meta["architecture"])
    model.load_state_dict(torch.load(directory / "model.pt", weights_only=True))
    model.eval()
    x = torch.from_numpy(FeatureSpec.from_dict(meta["features"]).transform(frame))
    with torch.no_grad():
        return model(x).double().numpy()


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    directory = tmp_path_factory.mktemp("splits")
    train, test = tiers(400, 0), tiers(200, 1)
    test.to_parquet(directory / "test.parquet")
    return train, test, directory / "test.parquet"


def test_multiclass_checkpoint_saves_classes_and_predicts_softmax(tmp_path: Path, splits):
    train, test, _ = splits
    # numpy labels are recorded as plain JSON values (metadata.json's default=str would make 2 into "2").
    ints = save_multiclass(
        tmp_path / "ints",
        train.assign(level=train["level"].map({"high": 0, "low": 1, "mid": 2})),
        classes=np.array([2, 0, 1]),
    )
    assert json.loads((ints / "metadata.json").read_text())["classes"] == [2, 0, 1]

    directory = save_multiclass(tmp_path / "ck", train)
    checkpoint = load_checkpoint(directory)
    assert checkpoint.multiclass and checkpoint.classes == LOGIT_ORDER
    labels, proba = predict(checkpoint, test)
    expected = torch.softmax(torch.from_numpy(raw_outputs(directory, test)), dim=1).numpy()
    assert proba.shape == (len(test), 3)
    np.testing.assert_allclose(proba, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert labels.tolist() == [LOGIT_ORDER[i] for i in expected.argmax(axis=1)]
    assert np.mean(labels == test["level"].to_numpy()) > 0.6  # it learned: chance is about 1/3


def test_binary_predictions_are_unchanged(tmp_path: Path, splits):
    """The single-logit sigmoid path, as before: labels from `classes` at the threshold, the positive probability."""
    train, test, _ = splits
    spec = spec_of(train)
    architecture = {"type": "mlp", "input_dim": len(spec.names), "hidden": [8], "output_dim": 1}
    torch.manual_seed(3)
    model = build_model(architecture)
    binary = (train["level"] == "high").astype("float32").to_numpy()
    fit(model, torch.from_numpy(spec.transform(train)), torch.from_numpy(binary)[:, None], torch.nn.BCEWithLogitsLoss())
    meta = {"task": "classification", "target": "y", "architecture": architecture, "features": spec.to_dict()}
    directory = save_checkpoint(tmp_path / "ck", model, {**meta, "classes": [3.0, 7.0], "threshold": 0.4})
    checkpoint = load_checkpoint(directory)
    assert not checkpoint.multiclass
    labels, score = predict(checkpoint, test)
    out = raw_outputs(directory, test)[:, 0]
    # The formula predict() has always used, written out: the outputs must be equal, not merely close.
    old_score = 1.0 / (1.0 + np.exp(-out))
    assert np.array_equal(score, old_score) and score.shape == (len(test),)
    assert np.array_equal(labels, np.where(old_score >= 0.4, 7.0, 3.0)) and labels.dtype == np.float64
    # No classes recorded: 0/1, as before.
    plain = load_checkpoint(save_checkpoint(tmp_path / "plain", model, meta))
    assert set(np.unique(predict(plain, test)[0])) <= {0.0, 1.0}

    # Evaluation scores classes[1] (7) as the positive class, whatever its value.
    path = tmp_path / "test.parquet"
    frame = test.assign(y=np.where(test["level"] == "high", 7, 3))
    frame.to_parquet(path)
    result = evaluation.evaluate_checkpoint(directory, "bin", path, "y")
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    positive, decided = frame["y"].to_numpy() == 7, old_score >= 0.4
    assert result.metrics["roc_auc"] == pytest.approx(roc_auc_score(positive, old_score))
    assert result.metrics["precision"] == pytest.approx(precision_score(positive, decided))
    assert result.metrics["recall"] == pytest.approx(recall_score(positive, decided))
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(positive, decided))
    assert result.metrics["roc_auc"] > 0.8
    assert set(result.metrics) == set(core_metrics.CLASSIFICATION_METRICS)
    table = result.predictions.to_pandas()
    assert list(table.columns) == BASE_COLUMNS
    assert table["y_true"].tolist() == frame["y"].astype(float).tolist()  # the target's own values, as before
    assert np.array_equal(table["y_score"].to_numpy(), old_score)


def test_multiclass_evaluation_matches_sklearn_on_the_models_outputs(tmp_path: Path, splits):
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

    train, test, test_path = splits
    directory = save_multiclass(tmp_path / "ck", train)
    result = evaluation.evaluate_checkpoint(directory, "mc", test_path, "level")

    # Independently: softmax of the saved model's logits, columns put in sorted-class order.
    proba = torch.softmax(torch.from_numpy(raw_outputs(directory, test)), dim=1).numpy()
    proba = proba[:, [LOGIT_ORDER.index(c) for c in SORTED]]
    y = np.array([SORTED.index(v) for v in test["level"]])
    pred = proba.argmax(axis=1)
    got = result.metrics
    assert result.classes == SORTED and result.multiclass and result.rows == len(test)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred)) and got["accuracy"] > 0.6
    assert got["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert got["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert got["log_loss"] == pytest.approx(log_loss(y, proba))
    assert got["roc_auc_ovr_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    for c, label in enumerate(SORTED):
        assert got[f"precision[{label}]"] == pytest.approx(precision_score(y == c, pred == c))
        assert got[f"recall[{label}]"] == pytest.approx(recall_score(y == c, pred == c))
        assert got[f"f1[{label}]"] == pytest.approx(f1_score(y == c, pred == c))
    assert set(got) == set(core_metrics.MULTICLASS_METRICS) | {
        core_metrics.per_class_metric(m, c) for m in core_metrics.PER_CLASS_METRICS for c in SORTED
    }

    # The predictions file: class indices like the built-in candidates', one probability column per class.
    path = evaluation.write_predictions(result.predictions, tmp_path / "predictions.parquet")
    table = pq.read_table(path).to_pandas()
    assert list(table.columns) == BASE_COLUMNS + probability_columns(tuple(SORTED))
    assert table["y_true"].tolist() == y.tolist() and table["y_pred"].tolist() == pred.tolist()
    assert table["y_score"].isna().all()  # no single score: the analysis falls back to 0/1 error, not binary log loss
    np.testing.assert_allclose(table[probability_columns(tuple(SORTED))].to_numpy(), proba, rtol=1e-12)
    assert table["row"].tolist() == list(range(len(test))) and set(table["model"]) == {"checkpoint:mc"}

    # The signal carries the summary only; the metric store every metric, per-class names included.
    summary = evaluation.summary_metrics(got)
    assert set(summary) == set(core_metrics.MULTICLASS_METRICS)
    timestamp = pd.Timestamp("2025-01-01", tz="UTC")
    records = evaluation.metric_records(result, "tiers", "c0", timestamp)
    eval_dir = tmp_path / "evaluation"
    evaluation_store.write_metrics(eval_dir, records, source=evaluation.source_name("mc"))
    import duckdb

    with duckdb.connect() as con:
        stored = dict(
            con.execute(f"SELECT metric, value FROM {evaluation_store.read_metrics_sql(eval_dir)}").fetchall()
        )
    assert stored == pytest.approx(got)
    assert evaluation.metric_gaps("classification", stored, 3) == ([], [])


def test_metric_gaps_follow_the_class_count():
    values = dict.fromkeys(core_metrics.MULTICLASS_METRICS, 0.5)
    values |= {core_metrics.per_class_metric(m, c): 0.5 for m in core_metrics.PER_CLASS_METRICS for c in SORTED}
    assert evaluation.metric_gaps("classification", values, 3) == ([], [])
    # Read as a binary target, the same rows lack the binary metrics (accuracy is shared).
    missing, _ = evaluation.metric_gaps("classification", values, 2)
    assert missing == ["f1", "precision", "recall", "roc_auc"]
    assert evaluation.metric_gaps("classification", values, None) == (missing, [])
    del values["recall[mid]"]
    values["log_loss"] = float("nan")
    missing, non_finite = evaluation.metric_gaps("classification", values, 3)
    assert missing == ["recall[*] (2 of 3 classes)"] and non_finite == ["log_loss"]
    assert evaluation.metric_gaps("regression", {"r2": 1.0, "rmse": 0.0}) == (["mae"], [])


def test_regression_checkpoint_end_to_end(tmp_path: Path, splits):
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    train, test, test_path = splits
    directory = save_regression(tmp_path / "ck", train)
    checkpoint = load_checkpoint(directory)
    assert checkpoint.classes is None and not checkpoint.multiclass
    y_pred, y_score = predict(checkpoint, test)
    scale = checkpoint.metadata["target_scaling"]
    expected = raw_outputs(directory, test)[:, 0] * scale["std"] + scale["mean"]
    assert y_score is None and np.allclose(y_pred, expected, rtol=1e-12)

    result = evaluation.evaluate_checkpoint(directory, "reg", test_path, "value")
    y = test["value"].to_numpy()
    assert set(result.metrics) == set(core_metrics.REGRESSION_METRICS) and result.classes is None
    assert result.metrics["r2"] == pytest.approx(r2_score(y, expected)) and result.metrics["r2"] > 0.9
    assert result.metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(y, expected)))
    assert result.metrics["mae"] == pytest.approx(mean_absolute_error(y, expected))
    table = result.predictions.to_pandas()
    assert list(table.columns) == BASE_COLUMNS and table["y_score"].isna().all()
    assert np.allclose(table["y_true"], y) and np.allclose(table["y_pred"], expected)
    assert evaluation.metric_gaps("regression", result.metrics) == ([], [])
    signal = evaluation.completion_signal(
        result, "salary", "job", pd.Timestamp.now(tz="UTC").to_pydatetime(), directory, "run", "mlrun", "c0"
    )
    assert signal.metrics_summary == result.metrics


def _edit_metadata(directory: Path, **changes) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    for key, value in changes.items():
        if key == "output_dim":
            meta["architecture"]["output_dim"] = value
        elif value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (directory / "metadata.json").write_text(json.dumps(meta))


def test_class_count_must_fit_the_output_width(tmp_path: Path, splits):
    train, _, _ = splits
    directory = save_multiclass(tmp_path / "ck", train)
    meta_path = str(directory / "metadata.json")

    _edit_metadata(directory, classes=["high", "low", "mid", "top"])
    with pytest.raises(CheckpointError, match=r"field 'classes' lists 4 classes but field 'architecture' output_dim 3"):
        load_checkpoint(directory)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(directory)
    assert meta_path in str(caught.value) and "Fix: save a model with 4 outputs" in str(caught.value)

    _edit_metadata(directory, classes=None)
    with pytest.raises(
        CheckpointError, match=r"field 'classes' is None; a 3-output classifier needs.*Fix: pass classes"
    ):
        load_checkpoint(directory)
    _edit_metadata(directory, classes=["a", "b", "a"])
    with pytest.raises(CheckpointError, match=r"repeats a class"):
        load_checkpoint(directory)

    # Refused at save time, before a byte is written.
    model = build_model({"type": "mlp", "input_dim": 7, "hidden": [], "output_dim": 3})
    meta = {
        "task": "classification",
        "target": "level",
        "architecture": {"type": "mlp", "input_dim": 7, "hidden": [], "output_dim": 3},
        "features": spec_of(train).to_dict(),
    }
    for classes, message in (
        (["a", "b"], r"field 'classes' lists 2 classes but field 'architecture' output_dim 3 scores 3"),
        (["a", "b", "c", "d"], r"lists 4 classes.*Fix: save a model with 4 outputs"),
    ):
        with pytest.raises(CheckpointError, match=message):
            save_checkpoint(tmp_path / "refused", model, {**meta, "classes": classes})
    wide = {**meta, "architecture": {**meta["architecture"], "output_dim": 4}, "classes": ["a", "b", "c", "d"]}
    with pytest.raises(CheckpointError, match=r"output_dim is 4 but the model's last layer has 3 outputs"):
        save_checkpoint(tmp_path / "refused", model, wide)
    two = build_model({"type": "mlp", "input_dim": 7, "hidden": [], "output_dim": 2})
    with pytest.raises(CheckpointError, match=r"output_dim is 2\. Fix: a binary classifier has one output"):
        save_checkpoint(tmp_path / "refused", two, {**meta, "architecture": {**meta["architecture"], "output_dim": 2}})
    regression = {**meta, "task": "regression"}
    with pytest.raises(CheckpointError, match=r"output_dim is 3, but a regression checkpoint has one output"):
        save_checkpoint(tmp_path / "refused", model, regression)
    assert not (tmp_path / "refused").exists()

    binary = save_multiclass(tmp_path / "bin", train)
    _edit_metadata(binary, output_dim=1)  # now it claims a sigmoid head with three classes
    with pytest.raises(CheckpointError, match=r"lists 3 classes but field 'architecture' output_dim 1 scores 2"):
        load_checkpoint(binary)


def test_test_split_classes_must_be_the_checkpoints(tmp_path: Path, splits):
    train, test, _ = splits
    directory = save_multiclass(tmp_path / "ck", train)
    path = tmp_path / "test.parquet"
    test.assign(level=test["level"].replace({"mid": "middle"})).to_parquet(path)
    with pytest.raises(CheckpointError) as caught:
        evaluation.evaluate_checkpoint(directory, "mc", path, "level")
    message = str(caught.value)
    assert message.startswith(f"{path}: column 'level' has value(s) ['middle']")
    assert "field 'classes'" in message and str(directory / "metadata.json") in message and "Fix:" in message
    test.assign(level=test["level"].where(test.index > 0)).to_parquet(path)
    with pytest.raises(CheckpointError, match=r"column 'level' has 1 missing value\(s\)\. Fix"):
        evaluation.evaluate_checkpoint(directory, "mc", path, "level")

    # Integer classes recorded as JSON ints still match a float target column (a JSON round trip changes types).
    numbered = train.assign(level=train["level"].map({"high": 0, "low": 1, "mid": 2}))
    ints = save_multiclass(tmp_path / "ints", numbered, classes=[2, 0, 1])
    test.assign(level=test["level"].map({"high": 0.0, "low": 1.0, "mid": 2.0})).to_parquet(path)
    result = evaluation.evaluate_checkpoint(ints, "ints", path, "level")
    assert result.classes == [0, 1, 2] and "f1[0]" in result.metrics
    assert result.predictions.column_names[-3:] == ["proba[0]", "proba[1]", "proba[2]"]


def test_report_splits_per_class_metrics_into_their_own_table():
    wide = pd.DataFrame(
        {
            "model": ["checkpoint:mc", "logistic_regression"],
            "accuracy": [0.8, 0.7],
            "f1_macro": [0.75, 0.65],
            "f1[high]": [0.9, 0.8],
            "f1[low]": [0.6, np.nan],
            "precision[high]": [0.85, 0.75],
            "precision[low]": [0.55, np.nan],
            "recall[high]": [0.95, 0.85],
            "recall[low]": [0.65, np.nan],
        }
    )
    summary, per_class = split_metrics_table(wide)
    assert list(summary.columns) == ["model", "accuracy", "f1_macro"]
    assert per_class.to_dict("records") == [
        {"model": "checkpoint:mc", "class": "high", "precision": 0.85, "recall": 0.95, "f1": 0.9},
        {"model": "checkpoint:mc", "class": "low", "precision": 0.55, "recall": 0.65, "f1": 0.6},
        {"model": "logistic_regression", "class": "high", "precision": 0.75, "recall": 0.85, "f1": 0.8},
    ]
    regression = pd.DataFrame({"model": ["a"], "r2": [0.5], "rmse": [1.0]})
    same, none = split_metrics_table(regression)
    assert none is None and same is regression


def run_metrics_check(partition: str):
    """checkpoint_evaluation_metrics_complete alone, on what the drive holds now (as test_external_chain does)."""
    import dagster as dg
    from dagster._core.execution.context.invocation import DirectAssetCheckExecutionContext

    from pipeline_assets.external.checks import checkpoint_evaluation_metrics_complete as check
    from resources.experiments import ExperimentCatalog
    from resources.storage import SharedDrive

    resources = {"storage": SharedDrive(), "catalog": ExperimentCatalog()}
    return check(DirectAssetCheckExecutionContext(dg.build_op_context(partition_key=partition, resources=resources)))


def test_example_trainer_and_evaluation_asset_for_a_multiclass_experiment(shared_drive: Path, config_dir: Path, capsys):
    """examples/train_external.py trains a k-output checkpoint; the asset and its check score it as multiclass."""
    import dagster as dg

    from mlgraph.core.drive import DriveLayout
    from pipeline_assets.definitions import defs
    from tests.support import dagster_instance
    from tests.support.chain import load_trainer, materialize

    frame = tiers(600, 4).drop(columns="value")
    frame.to_parquet(config_dir / "experiments" / "tiers.parquet")
    experiment = {
        "name": "tiers",
        "task": "classification",
        "dataset": {"path": "tiers.parquet"},
        "target": "level",
        "columns": {"x1": "numeric", "x2": "numeric", "colour": "categorical", "level": "categorical"},
        "sampling": {"strategy": "stratified"},
        "models": [{"family": "logistic_regression"}],
    }
    (config_dir / "experiments" / "tiers.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    with dagster_instance(experiments=["tiers"]) as instance:
        for key in ("raw_dataset", "dataset_fingerprint", "train_test_split"):
            materialize(instance, key, "tiers")
        assert load_trainer().main(["--experiment", "tiers", "--epochs", "40", "--no-signal", "--no-mlflow"]) == 0
        trained = json.loads(capsys.readouterr().out)
        checkpoint = load_checkpoint(trained["checkpoint"])
        assert checkpoint.classes == SORTED and checkpoint.metadata["architecture"]["output_dim"] == 3

        # The checkpoint named in run config: --no-signal wrote no .training_complete to find it by.
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            partition_key="tiers",
            asset_selection=[dg.AssetKey("checkpoint_evaluation")],
            run_config={"ops": {"checkpoint_evaluation": {"config": {"checkpoint_path": trained["checkpoint"]}}}},
        )
        [check] = result.get_asset_check_evaluations()
        assert check.passed, check.metadata
        assert check.metadata["classes"].value == 3 and check.metadata["missing_metrics"].value == "none"
        metadata = result.asset_materializations_for_node("checkpoint_evaluation")[0].metadata
        assert metadata["task"].value == "classification (3 classes)"
        assert metadata["test_accuracy"].value > 0.6 and "test_f1[high]" not in metadata
        assert "f1[high]" in metadata["metrics"].value

        drive = DriveLayout(shared_drive)
        predictions = pd.read_parquet(drive.checkpoint_predictions("tiers", trained["checkpoint_id"]))
        test = pd.read_parquet(drive.dataset_path("tiers", "test"))
        assert len(predictions) == len(test)
        assert list(predictions.columns) == BASE_COLUMNS + probability_columns(tuple(SORTED))
        assert predictions["y_true"].tolist() == [SORTED.index(v) for v in test["level"]]

        # The check reads the class count from the test split: losing one class's recall row fails it.
        eval_dir = drive.evaluation_dir("tiers")
        lost = next(evaluation_store.metrics_dir(eval_dir).glob("dataset=test/metric=recall%5Bmid%5D/*.parquet"))
        lost.unlink()
        gap = run_metrics_check("tiers")
        assert not gap.passed and gap.metadata["missing_metrics"].value == "recall[*] (2 of 3 classes)"
