"""Release gates (design document 001, "release blockers"): parity of an ONNX variant with the native
champion, the INT8 metric budget, and the serving schema against the training features.

Parity is measured on the whole test split, as one batch and one row at a time (the first
`SINGLE_ROW_CAP` rows), plus edge rows (champion.edge_rows), each sent alone. Dynamic INT8 quantizes
each call's activations over that call's rows, so a row can score differently alone and in a batch;
the edge rows sent together as one batch are therefore reported too (`mixed_batch_max_abs_err`), not
gated: an extreme row degrades its batch neighbours under INT8, which the metadata says in numbers.

Errors are in probability units (classification; a multiclass champion's every class probability is
compared, and labels agree when the most probable class does) or in units of the training target's standard
deviation (regression, forecasting): a float32 graph cannot hold a salary of 300,000 to better than
0.03, so an absolute limit of 0.04 in raw units would judge float32, not the export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlgraph.core import metrics as core_metrics
from mlgraph.core.experiment import DeploymentConfig, ExperimentConfig
from mlgraph.deployment.champion import Champion, Evaluation, Rows
from mlgraph.deployment.runtime import WINDOW_INPUT, Predictor, native_threads
from mlgraph.training import families as fam

MAX_ABS_ERR_LIMIT = 0.04
MEAN_ABS_ERR_LIMIT = 0.01
LABEL_AGREEMENT_LIMIT = 0.999
SINGLE_ROW_CAP = 2000


# The budget's defaults have one home: the experiment schema's `deployment:` section.
_DEFAULT_DEPLOYMENT = DeploymentConfig()


@dataclass(frozen=True)
class Int8Budget:
    """How much test metric INT8 may lose against FP32 (defaults: `DeploymentConfig`'s)."""

    roc_auc_loss: float = _DEFAULT_DEPLOYMENT.int8_max_roc_auc_loss
    rmse_relative_increase: float = _DEFAULT_DEPLOYMENT.int8_max_rmse_increase

    @classmethod
    def of(cls, config: ExperimentConfig) -> Int8Budget:
        """The budget the experiment YAML sets (`deployment:`; the schema's defaults when it is silent)."""
        return cls(
            roc_auc_loss=config.deployment.int8_max_roc_auc_loss,
            rmse_relative_increase=config.deployment.int8_max_rmse_increase,
        )


@dataclass(frozen=True)
class Reference:
    """The native champion's predictions that every variant is compared with."""

    test: np.ndarray
    edges: np.ndarray
    edge_rows: Rows
    edge_names: list[str]


@dataclass
class ParityResult:
    variant: str
    compared: int  # predictions compared (batch + one row at a time)
    max_abs_err: float
    mean_abs_err: float
    worst: str  # which row holds the largest error
    error_unit: float
    label_agreement: float | None = None
    threshold: float | None = None
    mixed_batch_max_abs_err: float = 0.0  # edge rows in one call: reported, not gated
    metric_loss: dict[str, Any] = field(default_factory=dict)  # INT8: metric, fp32, int8, loss, limit

    @property
    def failures(self) -> list[str]:
        failed = []
        if not self.max_abs_err < MAX_ABS_ERR_LIMIT:
            failed.append(f"max abs error {self.max_abs_err:.3g} ≥ {MAX_ABS_ERR_LIMIT} (worst: {self.worst})")
        if not self.mean_abs_err < MEAN_ABS_ERR_LIMIT:
            failed.append(f"mean abs error {self.mean_abs_err:.3g} ≥ {MEAN_ABS_ERR_LIMIT}")
        if self.label_agreement is not None and not self.label_agreement >= LABEL_AGREEMENT_LIMIT:
            failed.append(f"label agreement {self.label_agreement:.4%} < {LABEL_AGREEMENT_LIMIT:.1%}")
        if self.metric_loss and not self.metric_loss["loss"] <= self.metric_loss["limit"]:
            loss = self.metric_loss
            failed.append(f"{loss['name']} {loss['loss']:.3g} > budget {loss['limit']}")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failures

    def metadata(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "variant": self.variant,
            "predictions_compared": self.compared,
            "max_abs_err": self.max_abs_err,
            "max_abs_err_limit": MAX_ABS_ERR_LIMIT,
            "mean_abs_err": self.mean_abs_err,
            "mean_abs_err_limit": MEAN_ABS_ERR_LIMIT,
            "worst_row": self.worst,
            "error_unit": self.error_unit,
            "mixed_batch_max_abs_err": self.mixed_batch_max_abs_err,
        }
        if self.label_agreement is not None:
            data.update(
                {
                    "label_agreement": self.label_agreement,
                    "label_agreement_limit": LABEL_AGREEMENT_LIMIT,
                    "threshold": self.threshold if self.threshold is not None else "argmax",
                }
            )
        if self.metric_loss:
            loss = self.metric_loss
            data.update(
                {
                    f"{loss['metric']}_fp32": loss["fp32"],
                    f"{loss['metric']}_int8": loss["int8"],
                    loss["name"]: loss["loss"],
                    f"{loss['name']}_limit": loss["limit"],
                }
            )
        data["failures"] = "; ".join(self.failures) or "none"
        return data


def reference(native: Predictor, evaluation: Evaluation, edges: Rows, names: list[str]) -> Reference:
    return Reference(native(evaluation.rows), native(edges), edges, names)


def _errors(expected: np.ndarray, actual: np.ndarray, unit: float) -> np.ndarray:
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    err = np.abs(actual - expected) / unit
    both_nan = np.isnan(expected) & np.isnan(actual)
    err[both_nan] = 0.0
    err[np.isnan(err)] = np.inf  # one side NaN: as wrong as it gets
    return err


def predicted_labels(predictions: np.ndarray, threshold: float | None) -> np.ndarray | None:
    """Labels the predictions stand for: the most probable class of (n, k) probabilities, `score >= threshold`
    of binary scores; None for values (regression, forecasting)."""
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        return predictions.argmax(axis=1)
    return predictions >= threshold if threshold is not None else None


def _one_at_a_time(predictor: Predictor, rows: Rows) -> np.ndarray:
    prepared = predictor.prepare(rows)
    with native_threads(predictor.threads):
        return np.concatenate([predictor.predict(predictor.row(prepared, i)) for i in range(len(rows))])


def compare(
    candidate: Predictor, ref: Reference, evaluation: Evaluation, threshold: float | None
) -> tuple[ParityResult, np.ndarray]:
    """The parity of `candidate` with the native reference; also returns its batch test predictions."""
    unit = evaluation.error_unit
    test_batch = candidate(evaluation.rows)
    single_n = min(SINGLE_ROW_CAP, len(evaluation.rows))
    test_single = _one_at_a_time(candidate, evaluation.rows.take(slice(0, single_n)))
    edge_batch = candidate(ref.edge_rows)
    edge_single = _one_at_a_time(candidate, ref.edge_rows)
    parts = [
        ("test row {} (batch)", ref.test, test_batch, None),
        ("test row {} (alone)", ref.test[:single_n], test_single, None),
        ("edge row '{}'", ref.edges, edge_single, ref.edge_names),
    ]
    worst, worst_label, labels_equal, mean_errors = -1.0, "", [], []
    for pattern, expected, actual, names in parts:
        err = _errors(expected, actual, unit)
        if "(alone)" not in pattern:  # each row once in the mean
            mean_errors.append(err)
        if err.size and err.max() > worst:
            i = int(np.unravel_index(err.argmax(), err.shape)[0])  # the row (a multiclass error is per class)
            worst, worst_label = float(err.max()), pattern.format(names[i] if names else i)
        expected_labels = predicted_labels(expected, threshold)
        if expected_labels is not None:
            labels_equal.append(expected_labels == predicted_labels(actual, threshold))
    compared = sum(len(p[2]) for p in parts)
    result = ParityResult(
        variant=candidate.variant,
        compared=compared,
        max_abs_err=worst,
        mean_abs_err=float(np.concatenate(mean_errors).mean()),
        worst=worst_label,
        error_unit=unit,
        label_agreement=float(np.concatenate(labels_equal).mean()) if labels_equal else None,
        threshold=threshold,
        mixed_batch_max_abs_err=float(_errors(ref.edges, edge_batch, unit).max()),
    )
    return result, test_batch


def gate_metric(task: str, y_true: np.ndarray, predictions: np.ndarray) -> tuple[str, float]:
    """The metric the INT8 budget is written in: ROC AUC (classification; multiclass: one-vs-rest, macro) or
    RMSE (others)."""
    if task == "classification" and np.ndim(predictions) == 2:
        return "roc_auc_ovr_macro", core_metrics.multiclass_metrics(y_true, predictions)["roc_auc_ovr_macro"]
    if task == "classification":
        return "roc_auc", core_metrics.classification_metrics(y_true, predictions, 0.5)["roc_auc"]
    return "rmse", core_metrics.regression_metrics(y_true, predictions)["rmse"]


def int8_metric_loss(
    task: str, y_true: np.ndarray, fp32: np.ndarray, int8: np.ndarray, budget: Int8Budget
) -> dict[str, Any]:
    metric, base = gate_metric(task, y_true, fp32)
    _, quantized = gate_metric(task, y_true, int8)
    if metric.startswith("roc_auc"):
        return {
            "metric": metric,
            "fp32": base,
            "int8": quantized,
            "name": "roc_auc_loss",
            "loss": base - quantized,
            "limit": budget.roc_auc_loss,
        }
    return {
        "metric": metric,
        "fp32": base,
        "int8": quantized,
        "name": "rmse_relative_increase",
        "loss": (quantized - base) / base if base > 0 else quantized - base,
        "limit": budget.rmse_relative_increase,
    }


def expected_inputs(config: ExperimentConfig, train: Any, champion: Champion) -> list[dict[str, str]]:
    """The serving inputs the training features call for: name and ONNX type, in order."""
    if config.task == "forecasting":
        return [{"name": WINDOW_INPUT, "type": "tensor(float)"}]
    spec = fam.feature_spec(train, config)
    return [{"name": c, "type": "tensor(double)"} for c in spec.numeric] + [
        {"name": c, "type": "tensor(string)"} for c in spec.categorical
    ]


def schema_differences(actual: list[dict[str, Any]], expected: list[dict[str, str]]) -> list[str]:
    """Every way the ONNX inputs differ from the training features (names, types, order)."""
    have = {i["name"]: i["type"] for i in actual}
    want = {i["name"]: i["type"] for i in expected}
    differences = [f"missing input {n!r} ({t})" for n, t in want.items() if n not in have]
    differences += [f"unexpected input {n!r} ({t})" for n, t in have.items() if n not in want]
    differences += [
        f"input {n!r} is {have[n]}, training feature needs {t}" for n, t in want.items() if n in have and have[n] != t
    ]
    if not differences and [i["name"] for i in actual] != [i["name"] for i in expected]:
        differences.append("inputs are in another order than the training features")
    return differences
