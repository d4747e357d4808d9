"""Bring your own model: named specs, the user's estimator and torch code from the plugins folder, boosting.

Every test writes its own plugin modules into a tmp_path plugins folder ($MLGRAPH_PLUGINS_DIR) under names
unique to the test, and the `plugins` fixture takes them out of sys.modules and the folder off sys.path
afterwards. Everything trains through the pipeline's own entry points (train_candidates, evaluate,
load_model, load_forecaster) on small generated data. No Dagster, no services.

The error tests put a built-in random forest (or GRU) before the broken spec: it is planned first, so
without the check before training its model file would be on disk by the time the broken spec fails.
"""

from __future__ import annotations

import importlib
import json
import math
import pickle
import re
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mlgraph.core.experiment import ConfigError, ExperimentConfig, load_experiment_file, parse_experiment
from mlgraph.core.plugins import PLUGINS_DIR_ENV
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from mlgraph.training.candidates import train_candidates
from mlgraph.training.evaluation import evaluate, load_model
from mlgraph.training.user_code import ModelSpecError

DEMO_DIR = Path(__file__).resolve().parents[1] / "config" / "experiments"
SENTINEL = {"family": "random_forest", "params": {"n_estimators": 5}}  # planned first: its file would appear first

NEAREST_MEAN = """
    import numpy as np
    from sklearn.base import BaseEstimator, ClassifierMixin


    class DuckMean:
        \"\"\"Duck-typed (no scikit-learn base class): class means, softmax over negative squared distances.\"\"\"

        def __init__(self, temperature=1.0):
            self.temperature = temperature

        @staticmethod
        def _matrix(X):
            if hasattr(X, "select_dtypes"):  # raw columns (preprocessing: none): the numeric ones
                X = X.select_dtypes("number")
            return np.asarray(X, dtype=float)

        def fit(self, X, y):
            self.columns_seen_ = [str(c) for c in X.columns] if hasattr(X, "columns") else None
            X, y = self._matrix(X), np.asarray(y)
            self.classes_ = np.unique(y)
            self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
            self.n_features_in_ = X.shape[1]
            return self

        def predict_proba(self, X):
            X = self._matrix(X)
            d = ((X[:, None, :] - self.means_[None, :, :]) ** 2).sum(axis=-1) / self.temperature
            z = np.exp(-(d - d.min(axis=1, keepdims=True)))
            return z / z.sum(axis=1, keepdims=True)

        def predict(self, X):
            return self.classes_[self.predict_proba(X).argmax(axis=1)]


    class NearestMean(ClassifierMixin, BaseEstimator, DuckMean):
        \"\"\"The same, as a scikit-learn estimator class: what a Pipeline (the standard preprocessing) needs.\"\"\"
"""

LEAST_SQUARES = """
    import numpy as np
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.linear_model import Ridge


    class LeastSquares(RegressorMixin, BaseEstimator):
        def __init__(self, l2=0.0):
            self.l2 = l2

        @staticmethod
        def _design(X):
            if hasattr(X, "select_dtypes"):
                X = X.select_dtypes("number")
            X = np.asarray(X, dtype=float)
            return np.c_[X, np.ones(len(X))]

        def fit(self, X, y):
            self.columns_seen_ = [str(c) for c in X.columns] if hasattr(X, "columns") else None
            A = self._design(X)
            penalty = self.l2 * np.eye(A.shape[1])
            penalty[-1, -1] = 0.0
            self.coef_ = np.linalg.solve(A.T @ A + penalty, A.T @ np.asarray(y, dtype=float))
            self.n_features_in_ = A.shape[1] - 1
            return self

        def predict(self, X):
            return self._design(X) @ self.coef_


    def make_ridge(alpha=1.0):
        \"\"\"A factory, not a class: the spec's params are its arguments.\"\"\"
        return Ridge(alpha=alpha)
"""

BROKEN_ESTIMATORS = """
    import numpy as np
    from sklearn.base import BaseEstimator


    class NoProba:
        def fit(self, X, y):
            return self

        def predict(self, X):
            return np.zeros(len(X), dtype=int)


    class Strict:
        def __init__(self, alpha=1.0):
            self.alpha = alpha

        def fit(self, X, y):
            return self

        def predict(self, X):
            return np.zeros(len(X))


    class TwoColumns(BaseEstimator):
        def fit(self, X, y):
            self.n_features_in_ = X.shape[1]
            return self

        def predict(self, X):
            return np.zeros((len(X), 2))


    class Stateless(BaseEstimator):
        \"\"\"Keeps nothing from fit: to scikit-learn's check_is_fitted it never looks fitted.\"\"\"

        def fit(self, X, y):
            return self

        def predict(self, X):
            return np.zeros(len(X))


    class NoClasses(BaseEstimator):
        \"\"\"Right shapes, but no classes_: the platform could not tell three classes from two.\"\"\"

        def fit(self, X, y):
            self.k_ = int(np.max(y)) + 1
            return self

        def predict_proba(self, X):
            return np.full((len(X), self.k_), 1.0 / self.k_)

        def predict(self, X):
            return np.zeros(len(X), dtype=int)


    NOT_CALLABLE = 42
"""

TORCH_NET = """
    from torch import nn

    RECEIVED = []


    def build(n_inputs, params):
        RECEIVED.append((n_inputs, dict(params)))
        hidden = int(params.get("hidden", 16))
        return nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, int(params.get("n_outputs", 1))))


    def build_two_outputs(n_inputs, params):
        return nn.Linear(n_inputs, 2)


    def build_not_a_module(n_inputs, params):
        return "a network"
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """write(stem, source) → the unique module name of a new plugin module in this test's plugins folder."""
    folder = (tmp_path / "plugins").resolve()
    folder.mkdir()
    monkeypatch.setenv(PLUGINS_DIR_ENV, str(folder))
    token = uuid.uuid4().hex[:8]
    written: list[str] = []

    def write(stem: str, source: str) -> str:
        name = f"{stem}_{token}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        importlib.invalidate_caches()
        return name

    write.folder = folder  # type: ignore[attr-defined]
    write.token = token  # type: ignore[attr-defined]
    yield write
    for name in written:
        sys.modules.pop(name, None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))
    importlib.invalidate_caches()


def _frame(n: int, task: str, seed: int, classes: int = 2) -> pd.DataFrame:
    """x1, x2 carry the signal, colour is noise (a categorical the standard preprocessing one-hot encodes)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    signal = 2.0 * x1 - 1.0 * x2
    frame = pd.DataFrame({"x1": x1, "x2": x2, "colour": colour})
    if task == "regression":
        frame["y"] = 3.0 * signal + 5.0 + rng.normal(scale=0.5, size=n)
    elif classes == 2:
        frame["y"] = (signal + rng.normal(scale=0.3, size=n) > 0).astype(np.int64)
    else:  # three string classes, cut at the signal's terciles
        cuts = np.quantile(signal, [1 / 3, 2 / 3])
        frame["y"] = np.array(["low", "mid", "high"])[np.digitize(signal + rng.normal(scale=0.2, size=n), cuts)]
    return frame


def _config(task: str, models: list[dict], **extra) -> ExperimentConfig:
    generator = {"classification": "student_engagement", "regression": "salary", "forecasting": "demand_forecast"}
    data = {
        "name": "byom",
        "task": task,
        "dataset": {"generator": generator[task]},
        "target": "y",
        "models": models,
        "cv_folds": 2,
        "seed": 7,
        **extra,
    }
    if task == "forecasting":
        data.setdefault("time_column", "ts")
    return ExperimentConfig.model_validate(data)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def _spec_error(config: ExperimentConfig, frame: pd.DataFrame, models_dir: Path) -> str:
    """train_candidates must refuse with a ModelSpecError before writing any model file; the message."""
    with pytest.raises(ModelSpecError) as info:
        train_candidates(config, frame, models_dir, n_jobs=1)
    assert _files(models_dir) == [], "a model was trained before the broken spec was reported"
    message = str(info.value)
    assert "Fix:" in message
    return message


# -- 1. Clear errors, before any training ------------------------------------------------------------------


def test_unknown_module_is_reported_before_training(plugins, tmp_path) -> None:
    missing = f"no_such_module_{plugins.token}"
    config = _config(
        "classification", [SENTINEL, {"name": "mine", "family": "estimator", "estimator": f"{missing}:Model"}]
    )
    message = _spec_error(config, _frame(120, "classification", 0), tmp_path / "models")
    assert "'mine'" in message and f"'{missing}:Model'" in message
    assert f"module '{missing}' not found" in message and str(plugins.folder) in message


def test_unknown_name_in_an_existing_module_is_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "classification", [SENTINEL, {"name": "typo", "family": "estimator", "estimator": f"{module}:NoPorba"}]
    )
    message = _spec_error(config, _frame(120, "classification", 0), tmp_path / "models")
    assert "'typo'" in message and f"'{module}:NoPorba'" in message
    assert "has no attribute 'NoPorba'" in message
    assert "NoProba" in message  # the fix lists what the module does define


def test_a_module_attribute_that_is_not_callable_is_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "regression", [SENTINEL, {"name": "const", "family": "estimator", "estimator": f"{module}:NOT_CALLABLE"}]
    )
    message = _spec_error(config, _frame(120, "regression", 0), tmp_path / "models")
    assert "'const'" in message and f"'{module}:NOT_CALLABLE'" in message and "not a class or function" in message


def test_a_plugin_importing_a_missing_dependency_is_reported(plugins, tmp_path) -> None:
    dependency = f"not_installed_{plugins.token}"
    module = plugins("needs_dep", f"import {dependency}\n\nclass Model:\n    pass\n")
    config = _config("regression", [SENTINEL, {"name": "dep", "family": "estimator", "estimator": f"{module}:Model"}])
    message = _spec_error(config, _frame(120, "regression", 0), tmp_path / "models")
    assert "'dep'" in message and f"'{module}:Model'" in message
    assert f"imports '{dependency}', which is not installed" in message


def test_a_classifier_without_predict_proba_is_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "classification", [SENTINEL, {"name": "no_proba", "family": "estimator", "estimator": f"{module}:NoProba"}]
    )
    message = _spec_error(config, _frame(120, "classification", 0), tmp_path / "models")
    assert "'no_proba'" in message and f"'{module}:NoProba'" in message
    assert "has no predict_proba method" in message


def test_params_the_constructor_rejects_are_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    spec = {"name": "strict", "family": "estimator", "estimator": f"{module}:Strict", "params": {"beta": 2}}
    config = _config("regression", [SENTINEL, spec])
    message = _spec_error(config, _frame(120, "regression", 0), tmp_path / "models")
    assert "'strict'" in message and f"'{module}:Strict'" in message
    assert "rejects params {'beta': 2}" in message and "beta" in message.split("rejects params", 1)[1]


def test_params_a_sklearn_estimator_rejects_at_fit_are_reported(plugins, tmp_path) -> None:
    spec = {
        "name": "neighbours",
        "family": "estimator",
        "estimator": "sklearn.neighbors:KNeighborsClassifier",
        "params": {"n_neighbors": -1},
    }
    config = _config("classification", [SENTINEL, spec])
    message = _spec_error(config, _frame(120, "classification", 0), tmp_path / "models")
    assert "'neighbours'" in message and "'sklearn.neighbors:KNeighborsClassifier'" in message
    assert "trial fit/predict" in message and "n_neighbors" in message and "-1" in message


def test_predictions_of_the_wrong_shape_are_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "regression", [SENTINEL, {"name": "wide", "family": "estimator", "estimator": f"{module}:TwoColumns"}]
    )
    message = _spec_error(config, _frame(300, "regression", 0), tmp_path / "models")
    assert "'wide'" in message and f"'{module}:TwoColumns'" in message
    assert "predict returned shape (200, 2) for 200 rows; expected (200,)" in message  # a 200-row trial


def test_a_duck_typed_estimator_behind_the_standard_preprocessing_is_reported(plugins, tmp_path) -> None:
    # scikit-learn's Pipeline reads its last step's tags at predict (>= 1.6): a plain class would fit, then fail.
    module = plugins("nearest", NEAREST_MEAN)
    config = _config(
        "classification", [SENTINEL, {"name": "duck", "family": "estimator", "estimator": f"{module}:DuckMean"}]
    )
    message = _spec_error(config, _frame(120, "classification", 0), tmp_path / "models")
    assert "'duck'" in message and f"'{module}:DuckMean'" in message
    assert "not a scikit-learn estimator class" in message
    assert "class DuckMean(ClassifierMixin, BaseEstimator)" in message and "'preprocessing: none'" in message


def test_an_estimator_that_keeps_no_fitted_state_is_reported(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "regression", [SENTINEL, {"name": "stateless", "family": "estimator", "estimator": f"{module}:Stateless"}]
    )
    message = _spec_error(config, _frame(120, "regression", 0), tmp_path / "models")
    assert "'stateless'" in message and f"'{module}:Stateless'" in message
    assert "sees the Stateless as not fitted" in message and "attributes ending in '_'" in message


def test_a_classifier_without_classes_is_reported(plugins, tmp_path) -> None:
    # Without the check it trains, and its three-class predictions are scored as a binary model's.
    module = plugins("broken", BROKEN_ESTIMATORS)
    config = _config(
        "classification", [SENTINEL, {"name": "classless", "family": "estimator", "estimator": f"{module}:NoClasses"}]
    )
    message = _spec_error(config, _frame(150, "classification", 0, classes=3), tmp_path / "models")
    assert "'classless'" in message and f"'{module}:NoClasses'" in message
    assert "it has no classes_ attribute; expected [0, 1, 2]" in message


def test_every_broken_spec_is_reported_at_once(plugins, tmp_path) -> None:
    module = plugins("broken", BROKEN_ESTIMATORS)
    models = [
        SENTINEL,
        {"name": "first", "family": "estimator", "estimator": f"{module}:NoProba"},
        {"name": "second", "family": "estimator", "estimator": f"{module}:Missing"},
    ]
    message = _spec_error(_config("classification", models), _frame(120, "classification", 0), tmp_path / "m")
    assert "2 model spec(s) cannot be trained" in message
    assert "'first'" in message and "'second'" in message


def test_a_torch_build_that_returns_no_module_is_reported(plugins, tmp_path) -> None:
    module = plugins("tnet", TORCH_NET)
    spec = {"name": "net", "family": "torch", "module": f"{module}:build_not_a_module"}
    message = _spec_error(_config("regression", [SENTINEL, spec]), _frame(120, "regression", 0), tmp_path / "m")
    assert "'net'" in message and f"'{module}:build_not_a_module'" in message
    assert "not a torch.nn.Module" in message


def test_duplicate_spec_names_fail_config_validation() -> None:
    two_ridges = {"name": "dup", "task": "regression", "dataset": {"generator": "salary"}, "target": "y"}
    with pytest.raises(ConfigError, match=r"model name\(s\) \['ridge'\] appear more than once.*ridge_weak"):
        parse_experiment(Path("dup.yaml"), {**two_ridges, "models": [{"family": "ridge"}, {"family": "ridge"}]})
    # A name that collides with another spec's default name is a duplicate too.
    clash = [{"family": "ridge"}, {"family": "knn", "name": "ridge"}]
    with pytest.raises(ConfigError, match=r"\['ridge'\] appear more than once"):
        parse_experiment(Path("dup.yaml"), {**two_ridges, "models": clash})
    named = [{"family": "ridge", "name": "ridge_a"}, {"family": "ridge", "name": "ridge_b"}]
    assert parse_experiment(Path("dup.yaml"), {**two_ridges, "models": named}).model_names == ["ridge_a", "ridge_b"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"family": "ridge", "estimator": "m:Model"}, "'estimator' applies to family estimator only"),
        ({"family": "torch", "estimator": "m:Model"}, "'estimator' applies to family estimator only"),
        ({"family": "torch"}, "family 'torch' needs 'module"),
        ({"family": "estimator", "module": "m:build"}, "family 'estimator' needs 'estimator"),
        ({"family": "estimator", "estimator": "m:Model", "module": "m:build"}, "'module' applies to family torch"),
        ({"family": "estimator", "estimator": "not a path"}, "is not an import path"),
        ({"family": "torch", "module": "m:build", "preprocessing": "none"}, "'preprocessing: none' applies"),
        ({"family": "ridge", "name": "Bad Name"}, "not a valid model name"),
    ],
)
def test_user_code_fields_on_the_wrong_family_fail_config_validation(spec: dict, problem: str) -> None:
    data = {"name": "bad", "task": "regression", "dataset": {"generator": "salary"}, "target": "y", "models": [spec]}
    with pytest.raises(ConfigError) as info:
        parse_experiment(Path("bad.yaml"), data)
    assert problem in str(info.value) and "field 'models.0" in str(info.value)


def test_a_torch_forecaster_with_the_wrong_output_shape_is_reported(plugins, tmp_path) -> None:
    module = plugins("tnet", TORCH_NET)
    models = [
        {"family": "gru", "params": {"epochs": 1}},  # the same fit cost as torch, listed first: planned first
        {"name": "user_net", "family": "torch", "module": f"{module}:build_two_outputs"},
    ]
    config = _config("forecasting", models, forecast=TINY_FORECAST)
    message = _spec_error(config, _series_frame(200), tmp_path / "models")
    assert "'user_net'" in message and f"'{module}:build_two_outputs'" in message
    assert "returned shape (3, 2) for a (3, 12) batch; expected (3,) or (3, 1)" in message


def test_user_estimator_is_not_a_forecasting_family() -> None:
    data = {"name": "f", "task": "forecasting", "dataset": {"generator": "demand_forecast"}, "target": "y"}
    models = [{"family": "estimator", "estimator": "m:Model"}]
    with pytest.raises(ConfigError, match="family 'estimator' is not available for forecasting"):
        parse_experiment(Path("f.yaml"), {**data, "time_column": "ts", "models": models})


# -- 2. Names and the config hash -------------------------------------------------------------------------


def test_a_name_equal_to_the_family_keeps_an_existing_hash() -> None:
    data = yaml.safe_load((DEMO_DIR / "salary.yaml").read_text())
    original = parse_experiment(Path("salary.yaml"), data).config_hash
    assert original == load_experiment_file(DEMO_DIR / "salary.yaml").config.config_hash

    defaults_written_out = yaml.safe_load(yaml.safe_dump(data))
    for spec in defaults_written_out["models"]:
        spec.update(name=spec["family"], preprocessing="standard")
    assert parse_experiment(Path("salary.yaml"), defaults_written_out).config_hash == original

    renamed = yaml.safe_load(yaml.safe_dump(data))
    renamed["models"][0]["name"] = "ridge_default"
    assert parse_experiment(Path("salary.yaml"), renamed).config_hash != original


def test_two_named_specs_of_one_family_train_and_are_keyed_by_name(tmp_path) -> None:
    models = [
        {"name": "ridge_weak", "family": "ridge", "params": {"alpha": 10.0}},
        {"name": "ridge_strong", "family": "ridge", "params": {"alpha": 0.01}},
    ]
    config = _config("regression", models)
    train, test = _frame(60, "regression", 1), _frame(80, "regression", 2)
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)

    assert list(outcome.models) == ["ridge_weak", "ridge_strong"]
    assert [p.name for p in _files(tmp_path / "models")] == ["ridge_strong.joblib", "ridge_weak.joblib"]
    assert (
        outcome.models["ridge_weak"].params["alpha"] == 10.0 and outcome.models["ridge_strong"].params["alpha"] == 0.01
    )
    assert set(outcome.oof["model"]) == {"ridge_weak", "ridge_strong"}
    assert outcome.oof.groupby("model").size().to_dict() == {"ridge_weak": 60, "ridge_strong": 60}  # every row once
    loaded = {name: load_model("regression", name, r.artifact) for name, r in outcome.models.items()}
    assert fam.final_estimator(loaded["ridge_weak"]).alpha == 10.0
    assert fam.final_estimator(loaded["ridge_strong"]).alpha == 0.01

    evaluated = evaluate(config, train, test, {name: r.artifact for name, r in outcome.models.items()})
    assert set(evaluated.metrics) == {"ridge_weak", "ridge_strong", "baseline_mean"}
    assert set(evaluated.predictions["model"]) == set(evaluated.metrics)
    weak = evaluated.predictions.query("model == 'ridge_weak'")["y_pred"].to_numpy()
    strong = evaluated.predictions.query("model == 'ridge_strong'")["y_pred"].to_numpy()
    assert not np.allclose(weak, strong), "alpha 10 and alpha 0.01 must give different models"
    # Heavier shrinkage pulls the predictions towards the mean.
    assert np.std(weak) < np.std(strong)
    assert evaluated.metrics["ridge_strong"]["rmse"] < evaluated.metrics["baseline_mean"]["rmse"]


def test_editing_the_plugin_source_changes_the_config_hash(plugins) -> None:
    module = plugins("hashed", LEAST_SQUARES)
    path = plugins.folder / f"{module}.py"
    data = {
        "name": "hashed",
        "task": "regression",
        "dataset": {"generator": "salary"},
        "target": "y",
        "models": [{"family": "estimator", "estimator": f"{module}:LeastSquares"}],
    }

    def config_hash() -> str:
        return ExperimentConfig.model_validate(data).config_hash

    original = config_hash()
    assert config_hash() == original  # read again
    path.write_text(path.read_text())  # saved again, unchanged: a new mtime, the same content
    assert config_hash() == original
    edited = path.read_text().replace("self.l2 * np.eye", "self.l2 * 2 * np.eye")
    path.write_text(edited)
    changed = config_hash()
    assert changed != original
    path.write_text(textwrap.dedent(LEAST_SQUARES))  # the edit reverted: the content decides, not the stamp
    assert config_hash() == original
    # The same code under another import path, or another class of it, is another config.
    other = {**data, "models": [{"family": "estimator", "estimator": f"{module}:make_ridge"}]}
    assert ExperimentConfig.model_validate(other).config_hash != original


def test_editing_a_plugin_helper_the_module_imports_changes_the_hash(plugins) -> None:
    helper = plugins("helper", "SCALE = 1.0\n")
    unrelated = plugins("unrelated", "VALUE = 1\n")
    module = plugins("uses_helper", f"from {helper} import SCALE\n" + textwrap.dedent(LEAST_SQUARES))
    data = {
        "name": "helped",
        "task": "regression",
        "dataset": {"generator": "salary"},
        "target": "y",
        "models": [{"family": "estimator", "estimator": f"{module}:LeastSquares"}],
    }

    def config_hash() -> str:
        return ExperimentConfig.model_validate(data).config_hash

    original = config_hash()
    (plugins.folder / f"{unrelated}.py").write_text("VALUE = 2\n")  # not imported by the spec's module
    assert config_hash() == original
    (plugins.folder / f"{helper}.py").write_text("SCALE = 2.0\n")  # imported: the spec's code changed
    assert config_hash() != original


def test_a_missing_module_still_gives_a_hash_at_config_load(plugins, tmp_path) -> None:
    missing = f"later_{plugins.token}"
    directory = tmp_path / "experiments"
    directory.mkdir()
    data = {
        "name": "later",
        "task": "regression",
        "dataset": {"generator": "salary"},
        "target": "y",
        "models": [{"family": "estimator", "estimator": f"{missing}:LeastSquares"}],
    }
    (directory / "later.yaml").write_text(yaml.safe_dump(data))
    before = load_experiment_file(directory / "later.yaml").config.config_hash
    assert re.fullmatch(r"[0-9a-f]{64}", before)
    assert missing not in sys.modules  # hashing never imports the user's module

    (plugins.folder / f"{missing}.py").write_text(textwrap.dedent(LEAST_SQUARES))
    importlib.invalidate_caches()
    try:
        after = load_experiment_file(directory / "later.yaml").config.config_hash
    finally:
        sys.modules.pop(missing, None)
    assert after != before  # the module appeared: its models are not the ones hashed without it
    assert missing not in sys.modules


# -- 3. The user's estimator class --------------------------------------------------------------------------


def test_a_user_classifier_trains_with_standard_preprocessing(plugins, tmp_path) -> None:
    module = plugins("nearest", NEAREST_MEAN)
    spec = {
        "name": "nearest",
        "family": "estimator",
        "estimator": f"{module}:NearestMean",
        "params": {"temperature": 2.0},
    }
    config = _config("classification", [spec])
    train, test = _frame(200, "classification", 1), _frame(150, "classification", 2)
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)
    assert outcome.models["nearest"].cv["roc_auc"]["mean"] > 0.9

    artifact = outcome.models["nearest"].artifact
    assert artifact == tmp_path / "models" / "nearest.joblib"
    model = load_model("classification", "nearest", artifact)
    estimator = fam.final_estimator(model)
    assert type(estimator).__module__ == module and type(estimator).__name__ == "NearestMean"
    assert estimator.temperature == 2.0
    assert estimator.columns_seen_ is None and estimator.n_features_in_ == 5  # scaled x1, x2 + 3 one-hot colours

    evaluated = evaluate(config, train, test, {"nearest": artifact})
    assert evaluated.metrics["nearest"]["roc_auc"] > 0.9
    assert evaluated.metrics["baseline_majority_class"]["roc_auc"] == 0.5


def test_a_duck_typed_classifier_with_no_preprocessing_gets_the_raw_columns(plugins, tmp_path) -> None:
    module = plugins("nearest", NEAREST_MEAN)
    spec = {"name": "raw_mean", "family": "estimator", "estimator": f"{module}:DuckMean", "preprocessing": "none"}
    config = _config("classification", [spec])
    train, test = _frame(200, "classification", 1), _frame(150, "classification", 2)
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)

    model = load_model("classification", "raw_mean", outcome.models["raw_mean"].artifact)
    assert type(model).__name__ == "DuckMean"  # the whole pipeline: no Pipeline, no preprocessing
    assert model.columns_seen_ == ["x1", "x2", "colour"] and model.n_features_in_ == 2
    evaluated = evaluate(config, train, test, {"raw_mean": outcome.models["raw_mean"].artifact})
    assert evaluated.metrics["raw_mean"]["roc_auc"] > 0.9 > evaluated.metrics["baseline_majority_class"]["roc_auc"]

    # The release gates' inputs: the whole pipeline reads the experiment's features (it has no ColumnTransformer).
    from mlgraph.deployment.champion import edge_rows, evaluation_split, model_features

    with pytest.raises(ValueError, match="whole pipeline"):
        model_features(model)
    split = evaluation_split(config, train, test, model)
    assert list(split.rows.frame.columns) == ["x1", "x2", "colour"] and split.features.categorical == ("colour",)
    edges, names = edge_rows(split, model)
    assert "unseen category in colour" in names and len(edges) == len(names)
    assert model.predict_proba(edges.frame).shape == (len(names), 2)


@pytest.mark.parametrize("preprocessing", ["standard", "none"])
def test_a_user_regressor_and_a_factory_train_and_beat_the_mean(plugins, tmp_path, preprocessing: str) -> None:
    module = plugins("lsq", LEAST_SQUARES)
    models = [
        {"name": "lsq", "family": "estimator", "estimator": f"{module}:LeastSquares", "params": {"l2": 0.1}},
        {"name": "factory_ridge", "family": "estimator", "estimator": f"{module}:make_ridge", "params": {"alpha": 0.5}},
    ]
    for spec in models:
        spec["preprocessing"] = preprocessing
    if preprocessing == "none":  # sklearn's Ridge cannot read the raw string column: our own class only
        models = models[:1]
    config = _config("regression", models)
    train, test = _frame(200, "regression", 1), _frame(150, "regression", 2)
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)

    artifacts = {name: r.artifact for name, r in outcome.models.items()}
    assert sorted(p.name for p in _files(tmp_path / "models")) == sorted(f"{n}.joblib" for n in artifacts)
    lsq = fam.final_estimator(load_model("regression", "lsq", artifacts["lsq"]))
    assert type(lsq).__module__ == module and lsq.l2 == 0.1
    assert lsq.columns_seen_ == (["x1", "x2", "colour"] if preprocessing == "none" else None)
    if "factory_ridge" in artifacts:
        ridge = fam.final_estimator(load_model("regression", "factory_ridge", artifacts["factory_ridge"]))
        assert type(ridge).__name__ == "Ridge" and ridge.alpha == 0.5

    evaluated = evaluate(config, train, test, artifacts)
    for name in artifacts:
        assert evaluated.metrics[name]["r2"] > 0.95
        assert evaluated.metrics[name]["rmse"] < 0.3 * evaluated.metrics["baseline_mean"]["rmse"]


# -- 4. family torch, tabular -------------------------------------------------------------------------------


def _torch_spec(module: str, **params) -> dict:
    loop = {"hidden": 16, "epochs": 15, "batch_size": 32, "learning_rate": 0.01, "patience": 5}
    return {"name": "mlp", "family": "torch", "module": f"{module}:build", "params": {**loop, **params}}


def _check_history(history: list[dict[str, float]], epochs: int) -> None:
    assert 0 < len(history) <= epochs
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"], history


def _refit_in_memory(config: ExperimentConfig, outcome, name: str):
    """The final model as train_candidates fits it, fitted here, never saved."""
    spec = config.model_spec(name)
    params = outcome.models[name].params
    model = fam.build_model(config.task, spec.family, params, outcome.data.features, config.seed, spec)
    return model.fit(outcome.data.X, outcome.data.y)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_torch_network_trains_records_history_and_reloads_identically(plugins, tmp_path, task: str) -> None:
    module = plugins("tnet", TORCH_NET)
    config = _config(task, [_torch_spec(module)])
    train, test = _frame(300, task, 1, classes=3), _frame(150, task, 2, classes=3)
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)
    n_outputs = 3 if task == "classification" else 1

    # Every build() call (the trial included) got the encoded features and the spec's params, the loop
    # settings left out, n_outputs added.
    calls = sys.modules[module].RECEIVED
    assert len(calls) == 4  # the trial, the final fit, two folds
    assert set(map(repr, calls)) == {repr((5, {"hidden": 16, "n_outputs": n_outputs}))}
    _check_history(outcome.models["mlp"].history, epochs=15)

    artifact = outcome.models["mlp"].artifact
    assert artifact.name == "mlp.joblib"
    loaded = load_model(task, "mlp", artifact)
    net = fam.final_estimator(loaded)
    assert type(net).__name__ == "TorchTabularModel" and net.net_[-1].out_features == n_outputs
    assert net.history_ == outcome.models["mlp"].history

    X_test = fam.prepare_frame(test, outcome.data.features)
    in_memory = _refit_in_memory(config, outcome, "mlp")
    before = fam.predict(task, in_memory, X_test)
    np.testing.assert_array_equal(fam.predict(task, pickle.loads(pickle.dumps(in_memory)), X_test), before)
    # The saved final model is that same fit: the seed fixes batches, split and initial weights.
    np.testing.assert_array_equal(fam.predict(task, loaded, X_test), before)

    evaluated = evaluate(config, train, test, {"mlp": artifact})
    if task == "classification":
        assert before.shape == (150, 3) and np.allclose(before.sum(axis=1), 1.0)
        assert evaluated.classes == ("high", "low", "mid")
        assert evaluated.metrics["mlp"]["f1_macro"] > 0.7 > evaluated.metrics["baseline_majority_class"]["f1_macro"]
    else:
        assert evaluated.metrics["mlp"]["r2"] > 0.8
        assert evaluated.metrics["mlp"]["rmse"] < 0.5 * evaluated.metrics["baseline_mean"]["rmse"]


def test_torch_training_is_deterministic_across_runs_and_workers(plugins, tmp_path) -> None:
    module = plugins("tnet", TORCH_NET)
    config = _config("regression", [_torch_spec(module, epochs=6)])
    train, test = _frame(200, "regression", 3), _frame(80, "regression", 4)
    X_test = fam.prepare_frame(test, fam.feature_spec(train, config))

    def run(directory: str, n_jobs: int = 1, seed: int = 7):
        outcome = train_candidates(config.model_copy(update={"seed": seed}), train, tmp_path / directory, n_jobs=n_jobs)
        assert outcome.n_jobs == n_jobs
        model = load_model("regression", "mlp", outcome.models["mlp"].artifact)
        return outcome, fam.predict("regression", model, X_test)

    (first, a), (again, b) = run("a"), run("b")
    assert first.models["mlp"].artifact.read_bytes() == again.models["mlp"].artifact.read_bytes()
    pd.testing.assert_frame_equal(first.oof, again.oof)
    np.testing.assert_array_equal(a, b)

    # On two loky workers (which find the plugins folder through the environment alone): the same model.
    # Not the same bytes: a worker's unpickled data carry numpy dtype copies where this process has the
    # dtype singletons, and pickle's memo, hence the file, follows object identity.
    workers, c = run("c", n_jobs=2)
    assert workers.models["mlp"].history == first.models["mlp"].history
    pd.testing.assert_frame_equal(workers.oof, first.oof)
    np.testing.assert_array_equal(c, a)

    # A different seed is a different model: the equalities above are not vacuous.
    _, d = run("d", seed=8)
    assert not np.array_equal(a, d)


# -- 5. family torch, forecasting ---------------------------------------------------------------------------

TINY_FORECAST = {
    "window": 12,
    "seasonal_period": 24,
    "epochs": 8,
    "patience": 8,
    "batch_size": 32,
    "learning_rate": 0.01,
}


def _series_frame(n: int = 360, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 50 + 10 * np.sin(2 * np.pi * t / 24) + 0.02 * t + rng.normal(scale=1.0, size=n)
    ts = np.datetime64("2024-01-01T00", "h") + t.astype("timedelta64[h]")
    return pd.DataFrame({"ts": ts, "y": y})


def test_a_torch_forecaster_trains_saves_and_reloads_identically(plugins, tmp_path) -> None:
    module = plugins("tnet", TORCH_NET)
    params = {"hidden": 16, "device": "cpu"}  # device: read by the forecasting loop, not passed to build()
    spec = {"name": "user_net", "family": "torch", "module": f"{module}:build", "params": params}
    config = _config("forecasting", [spec], forecast=TINY_FORECAST)
    frame = _series_frame()
    train, test = frame.iloc[:300], frame.iloc[300:]
    outcome = train_candidates(config, train, tmp_path / "models", n_jobs=1)

    artifact = outcome.models["user_net"].artifact
    assert artifact == tmp_path / "models" / "user_net.pt"
    history = outcome.models["user_net"].history
    assert 0 < len(history) <= 8 and all(math.isfinite(h["train_loss"]) for h in history)
    # Every build() call, the check before training included: the window; no loop settings, no n_outputs.
    assert set(map(repr, sys.modules[module].RECEIVED)) == {repr((12, {"hidden": 16}))}

    loaded = fc.load_forecaster(None, artifact)
    assert loaded.family == "torch" and loaded.metadata["module"] == f"{module}:build"
    assert loaded.metadata["name"] == "user_net"  # errors rebuilding the network name the spec
    y, ts = frame["y"].to_numpy(), frame["ts"].to_numpy()
    positions = np.arange(300, 360)
    from_file = fc.predict_forecaster(loaded, y, ts, positions)
    assert from_file.shape == (60,) and np.all(np.isfinite(from_file))

    # The same fit in memory (the final task's settings) predicts exactly what the file does.
    params = {k: v for k, v in outcome.models["user_net"].params.items() if k not in ("window", "horizon")}
    fit = fc.fit_forecaster(
        "torch", y[:300], ts[:300], config.forecast, params, config.seed, module=f"{module}:build", name="user_net"
    )
    in_memory = fc.predict_forecaster(fit, y, ts, positions)
    np.testing.assert_array_equal(from_file, in_memory)
    resaved = fc.load_forecaster(None, fc.save_forecaster(fit, tmp_path / "again.pt"))
    np.testing.assert_array_equal(fc.predict_forecaster(resaved, y, ts, positions), in_memory)
    assert (tmp_path / "again.pt").read_bytes() == artifact.read_bytes()

    evaluated = evaluate(config, train, test, {"user_net": artifact}, None, outcome.data.scale)
    assert set(evaluated.metrics) == {"user_net", "baseline_seasonal_naive"}
    assert 0 < evaluated.metrics["user_net"]["composite"] < 1.0  # better than predicting the mean


# -- 6. LightGBM, XGBoost (and the histogram-boosting classifier): reruns rewrite identical files ------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_boosting_reruns_write_identical_model_files(tmp_path, task: str) -> None:
    models = [
        {"family": "lightgbm", "params": {"n_estimators": 20}},
        {"family": "xgboost", "params": {"n_estimators": 20}},
    ]
    if task == "classification":
        models.append({"family": "hist_gradient_boosting", "params": {"max_iter": 20}})
    config = _config(task, models)
    train, test = _frame(300, task, 5), _frame(100, task, 6)
    runs = [train_candidates(config, train, tmp_path / run, n_jobs=1) for run in ("a", "b")]

    for name in config.model_names:
        first, second = (r.models[name].artifact for r in runs)
        assert first.read_bytes() == second.read_bytes(), f"{name}: a rerun wrote different bytes"
        assert runs[0].models[name].artifact_sha256 == runs[1].models[name].artifact_sha256
    pd.testing.assert_frame_equal(runs[0].oof, runs[1].oof)
    evaluated = evaluate(config, train, test, {n: r.artifact for n, r in runs[0].models.items()})
    metric, baseline = ("roc_auc", "baseline_majority_class") if task == "classification" else ("r2", "baseline_mean")
    for name in config.model_names:
        assert evaluated.metrics[name][metric] > evaluated.metrics[baseline][metric] + 0.3, (name, evaluated.metrics)


UNTRACEABLE_NET = """
import torch
from torch import nn


class SvdNet(nn.Module):
    # torch.linalg.svdvals has no ONNX operator: the exporter refuses the whole network.
    def __init__(self, n_inputs):
        super().__init__()
        self.lin = nn.Linear(n_inputs, 1)

    def forward(self, x):
        return self.lin(x)[:, 0] + 0.0 * torch.linalg.svdvals(x.unsqueeze(1))[:, 0]


def build(n_inputs, params):
    return SvdNet(n_inputs)
"""


@pytest.mark.parametrize(("source", "status"), [(TORCH_NET, "exported"), (UNTRACEABLE_NET, "not_exportable")])
def test_a_torch_forecaster_exports_when_it_traces_and_says_why_when_not(plugins, tmp_path, source, status) -> None:
    from mlgraph.core.drive import DriveLayout
    from mlgraph.deployment.champion import Champion
    from mlgraph.deployment.export import export_champion

    module = plugins("exported_net", source)
    frame = _series_frame()
    config = _config("forecasting", [], forecast=TINY_FORECAST)
    y, ts = frame["y"].to_numpy()[:300], frame["ts"].to_numpy()[:300]
    fit = fc.fit_forecaster("torch", y, ts, config.forecast, {"epochs": 2}, 0, module=f"{module}:build", name="net")
    path = fc.save_forecaster(fit, tmp_path / "net.pt")
    champion = Champion(
        "forecast_test",
        "forecasting",
        "torch",
        path,
        "1",
        "run",
        "hash",
        None,
        name="net",
        import_path=f"{module}:build",
    )
    drive = DriveLayout.at(tmp_path / "drive")
    outcome = export_champion(drive, champion, fc.load_forecaster(None, path))
    assert outcome.status == status, outcome.report
    report = json.loads(drive.export_report_json("forecast_test").read_text())
    assert report["model"] == "net" and report["family"] == "torch"
    if status == "exported":
        assert drive.onnx_model_path("forecast_test").is_file()
    else:
        # The exporter's own words, and the user's import path, say why the native model is served.
        assert report["served"] == "native" and f"{module}:build" in report["reason"]
        assert "svdvals" in report["reason"] and not drive.onnx_model_path("forecast_test").exists()
