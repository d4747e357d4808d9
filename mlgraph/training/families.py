"""Model families for tabular tasks: each is an sklearn Pipeline whose preprocessing is part of the model.

A served model therefore takes raw rows (the experiment's feature columns, unscaled, with gaps):
numeric and boolean columns are median-imputed and standardised, categorical ones are imputed with
the most frequent value and one-hot encoded (unknown categories are ignored at predict time).
Forecasting families live in forecasting.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.experiment import ExperimentConfig

# Defaults from the design documents (001 for the classifiers); experiment params override them.
DEFAULT_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "classification": {
        # L2 is LogisticRegression's default penalty (l1_ratio=0); sklearn 1.8 deprecated `penalty`.
        "logistic_regression": {"max_iter": 2000, "C": 1.0, "l1_ratio": 0.0},
        "knn": {"n_neighbors": 7},
        # decision_function gives the ROC; a cheap sigmoid calibration (two half-size fits instead
        # of probability=True's internal 5-fold CV) gives predict_proba for the threshold and serving.
        "svm": {"kernel": "rbf", "C": 1.0, "calibration_folds": 2},
        "decision_tree": {"max_depth": 8, "min_samples_leaf": 10},
        "random_forest": {"n_estimators": 400, "min_samples_leaf": 2},
    },
    "regression": {
        "ridge": {"alpha": 1.0},
        "random_forest": {"n_estimators": 200, "min_samples_leaf": 2},
        "hist_gradient_boosting": {"max_iter": 200},
        "knn": {"n_neighbors": 7},
        "decision_tree": {"max_depth": 8, "min_samples_leaf": 10},
    },
}
# Relative fit cost, used only to start the slow tasks first so the cores stay busy to the end.
FIT_COST = {
    "random_forest": 10,
    "svm": 8,
    "hist_gradient_boosting": 6,
    "gru": 10,
    "lstm": 10,
    "prophet": 3,
    "knn": 2,
    "logistic_regression": 1,
    "ridge": 1,
    "decision_tree": 1,
    "seasonal_naive": 0,
}


@dataclass(frozen=True)
class FeatureSpec:
    """Which raw columns feed the model, and how each is preprocessed."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_dict(self) -> dict[str, list[str]]:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical)}


def feature_spec(frame: pd.DataFrame, config: ExperimentConfig) -> FeatureSpec:
    """Features = every column but the target and the time column; declared types win over dtypes."""
    numeric, categorical = [], []
    for column in frame.columns:
        if column in (config.target, config.time_column):
            continue
        declared = config.columns.get(column)
        dtype = frame[column].dtype
        if declared == "datetime" or (declared is None and pd.api.types.is_datetime64_any_dtype(dtype)):
            continue  # timestamps are not features of a tabular model
        if declared in ("numeric", "integer", "boolean"):
            numeric.append(column)
        elif declared == "categorical":
            categorical.append(column)
        elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
            numeric.append(column)
        else:
            categorical.append(column)
    if not numeric and not categorical:
        raise ValueError(
            f"experiment {config.name!r}: no feature columns besides target {config.target!r}. "
            "Fix: add feature columns to the dataset."
        )
    return FeatureSpec(tuple(numeric), tuple(categorical))


def prepare_frame(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The model's input frame: feature columns only, categoricals as plain Python objects."""
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing} missing from the frame; the model was trained with them")
    out = frame[spec.columns].copy()
    for column in spec.categorical:
        # Arrow-backed string dtypes trip SimpleImputer; object dtype is what served JSON rows become.
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def resolved_params(task: str, family: str, overrides: dict[str, Any]) -> dict[str, Any]:
    try:
        defaults = DEFAULT_PARAMS[task][family]
    except KeyError:
        raise ValueError(f"no tabular family {family!r} for task {task!r}") from None
    return {**defaults, **overrides}


def _preprocessor(spec: FeatureSpec):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    transformers = []
    if spec.numeric:
        numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
        transformers.append(("numeric", numeric, list(spec.numeric)))
    if spec.categorical:
        categorical = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
            ]
        )
        transformers.append(("categorical", categorical, list(spec.categorical)))
    return ColumnTransformer(transformers, remainder="drop")


def _estimator(task: str, family: str, params: dict[str, Any], seed: int):
    params = dict(params)
    if task == "classification":
        if family == "logistic_regression":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(random_state=seed, **params)
        if family == "knn":
            from sklearn.neighbors import KNeighborsClassifier

            return KNeighborsClassifier(**params)
        if family == "svm":
            from sklearn.calibration import CalibratedClassifierCV
            from sklearn.svm import SVC

            folds = int(params.pop("calibration_folds"))
            # ensemble=False: one SVC on all rows plus a sigmoid fitted on cross-validated scores.
            return CalibratedClassifierCV(SVC(random_state=seed, **params), method="sigmoid", cv=folds, ensemble=False)
        if family == "decision_tree":
            from sklearn.tree import DecisionTreeClassifier

            return DecisionTreeClassifier(random_state=seed, **params)
        if family == "random_forest":
            from sklearn.ensemble import RandomForestClassifier

            # n_jobs=1: parallelism comes from training families and folds side by side.
            return RandomForestClassifier(random_state=seed, n_jobs=1, **params)
    if task == "regression":
        if family == "ridge":
            from sklearn.linear_model import Ridge

            return Ridge(random_state=seed, **params)
        if family == "random_forest":
            from sklearn.ensemble import RandomForestRegressor

            return RandomForestRegressor(random_state=seed, n_jobs=1, **params)
        if family == "hist_gradient_boosting":
            from sklearn.ensemble import HistGradientBoostingRegressor

            return HistGradientBoostingRegressor(random_state=seed, **params)
        if family == "knn":
            from sklearn.neighbors import KNeighborsRegressor

            return KNeighborsRegressor(**params)
        if family == "decision_tree":
            from sklearn.tree import DecisionTreeRegressor

            return DecisionTreeRegressor(random_state=seed, **params)
    raise ValueError(f"no tabular family {family!r} for task {task!r}")


def build_model(task: str, family: str, params: dict[str, Any], spec: FeatureSpec, seed: int):
    """An unfitted Pipeline(preprocess → estimator); `params` are the resolved family params."""
    from sklearn.pipeline import Pipeline

    try:
        estimator = _estimator(task, family, params, seed)
    except TypeError as exc:
        raise ValueError(
            f"family {family!r}: invalid params {params}: {exc}. Fix: correct models[].params in the experiment YAML."
        ) from None
    return Pipeline([("preprocess", _preprocessor(spec)), ("model", estimator)])


def positive_scores(model, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class (the larger label) for a fitted binary classifier."""
    proba = model.predict_proba(X)
    return np.asarray(proba[:, -1], dtype=np.float64)


def class_probabilities(model, X: pd.DataFrame) -> np.ndarray:
    """(n, k) probabilities of a fitted classifier, column c for class index c (training encodes labels 0..k-1)."""
    return np.asarray(model.predict_proba(X), dtype=np.float64)


def is_multiclass_model(model) -> bool:
    return len(getattr(model, "classes_", ())) > 2


def predict(task: str, model, X: pd.DataFrame) -> np.ndarray:
    """Scores for classification (binary: positive-class probability, (n,); multiclass: (n, k) class
    probabilities), values for regression."""
    if task == "classification":
        return class_probabilities(model, X) if is_multiclass_model(model) else positive_scores(model, X)
    return np.asarray(model.predict(X), dtype=np.float64)
