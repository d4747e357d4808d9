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

from mlgraph.core.experiment import USER_FAMILIES, ExperimentConfig, ModelSpec

# LightGBM and XGBoost: 200 trees of moderate size, one thread each (parallelism comes from training
# specs and folds side by side), and the libraries' deterministic modes, so a rerun rewrites identical
# model bytes: LightGBM `deterministic` + `force_row_wise`, XGBoost's `hist` method on one thread.
BOOSTING_PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {
        "n_estimators": 200,
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 20,
        "n_jobs": 1,
        "deterministic": True,
        "force_row_wise": True,
        "verbose": -1,
    },
    "xgboost": {"n_estimators": 200, "learning_rate": 0.1, "max_depth": 6, "tree_method": "hist", "n_jobs": 1},
}
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
        "hist_gradient_boosting": {"max_iter": 200},
        **BOOSTING_PARAMS,
    },
    "regression": {
        "ridge": {"alpha": 1.0},
        "random_forest": {"n_estimators": 200, "min_samples_leaf": 2},
        "hist_gradient_boosting": {"max_iter": 200},
        "knn": {"n_neighbors": 7},
        "decision_tree": {"max_depth": 8, "min_samples_leaf": 10},
        **BOOSTING_PARAMS,
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
    "lightgbm": 4,
    "xgboost": 4,
    "estimator": 5,  # unknown: between the cheap and the slow built-ins
    "torch": 10,
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
    if family in USER_FAMILIES:
        return dict(overrides)  # the user's code has its own defaults
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
        if family == "hist_gradient_boosting":
            from sklearn.ensemble import HistGradientBoostingClassifier

            return HistGradientBoostingClassifier(random_state=seed, **params)
        if family == "lightgbm":
            from lightgbm import LGBMClassifier

            return LGBMClassifier(random_state=seed, **params)
        if family == "xgboost":
            from xgboost import XGBClassifier

            return XGBClassifier(random_state=seed, **params)
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
        if family == "lightgbm":
            from lightgbm import LGBMRegressor

            return LGBMRegressor(random_state=seed, **params)
        if family == "xgboost":
            from xgboost import XGBRegressor

            return XGBRegressor(random_state=seed, **params)
    raise ValueError(f"no tabular family {family!r} for task {task!r}")


def build_model(
    task: str, family: str, params: dict[str, Any], spec: FeatureSpec, seed: int, model: ModelSpec | None = None
):
    """An unfitted Pipeline(preprocess → estimator); `params` are the resolved params of the spec `model`.

    The user's code (`family: estimator` / `torch`) needs `model` for its import path; an estimator spec
    with `preprocessing: none` is returned as it is, the whole pipeline on the raw columns.
    """
    from sklearn.pipeline import Pipeline

    if family in USER_FAMILIES:
        if model is None:
            raise ValueError(f"family {family!r} needs its model spec (the import path of the user's code)")
        if family == "torch":
            from mlgraph.training.torch_tabular import torch_estimator

            estimator = torch_estimator(model, params, task, seed)
        else:
            from mlgraph.training.user_code import build_estimator

            estimator = build_estimator(model, params, task, seed)
        if model.preprocessing == "none":
            return estimator
        return Pipeline([("preprocess", _preprocessor(spec)), ("model", estimator)])
    try:
        estimator = _estimator(task, family, params, seed)
    except TypeError as exc:
        raise ValueError(
            f"family {family!r}: invalid params {params}: {exc}. Fix: correct models[].params in the experiment YAML."
        ) from None
    return Pipeline([("preprocess", _preprocessor(spec)), ("model", estimator)])


def final_estimator(model):
    """The estimator at the end of a Pipeline (or the model itself: a user estimator with no preprocessing)."""
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


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
