"""ONNX export of LightGBM, XGBoost, histogram gradient boosting and the user's own estimators.

Real models fitted on small generated data, in the Pipeline shape families.build_model makes, exported
through export.export_champion and run with onnxruntime against the native predictions; then the demo
experiments through the release gates themselves (parity.py, runtime.py as the service uses them).
"""

from __future__ import annotations

import joblib
import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline

from mlgraph.core.drive import DriveLayout
from mlgraph.deployment import converters, export, gates, parity, quantize, runtime
from mlgraph.deployment.champion import Champion, Rows, read_champion
from mlgraph.training import families as fam
from tests.support.deployment import EXPERIMENT, demo_config, promote

SPEC = fam.FeatureSpec(("age", "income", "visits"), ("plan",))
TOLERANCE = 1e-5  # probabilities, or values in units of the target's standard deviation
FLOAT32_DIGITS = 1e-6  # relative: what a float32 output can hold of a float64 value
N_TRAIN = 400


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 12, n).round(1),  # discrete values: thresholds fall on data values
            "income": rng.lognormal(10, 1, n),
            "visits": rng.integers(0, 20, n).astype(float),
            "plan": rng.choice(["basic", "plus", "pro"], n).astype(object),
        }
    )
    frame.loc[::11, "income"] = np.nan
    frame.loc[::13, "plan"] = None
    return frame


def _score(frame: pd.DataFrame) -> np.ndarray:
    income = np.log(frame["income"].fillna(20000.0))
    return frame["age"] / 12 + frame["visits"] / 5 + (frame["plan"] == "pro") * 1.5 + income / 3


def _target(frame: pd.DataFrame, kind: str, seed: int) -> np.ndarray:
    score = _score(frame).to_numpy() + np.random.default_rng(seed).normal(0, 0.5, len(frame))
    if kind == "binary":
        return (score > np.median(score)).astype(int)
    if kind == "multiclass":
        return np.digitize(score, np.quantile(score, [1 / 3, 2 / 3])).astype(int)
    return score * 1000.0


def _rows() -> pd.DataFrame:
    """Test rows plus edge rows: a gap in every column, an unseen category, values far outside training."""
    test = _frame(150, seed=2)
    edges = pd.DataFrame(
        {
            "age": [np.nan, 40.0, 500.0, -500.0],
            "income": [np.nan, 1e4, 1e9, -1e9],
            "visits": [np.nan, 3.0, 1e4, -1e4],
            "plan": [None, "enterprise", "pro", "basic"],
        }
    )
    return fam.prepare_frame(pd.concat([test, edges], ignore_index=True), SPEC)


def _estimator(library: str, kind: str):
    classifier = kind != "regression"
    if library == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor

        cls = LGBMClassifier if classifier else LGBMRegressor
        return cls(n_estimators=25, num_leaves=15, min_child_samples=5, n_jobs=1, deterministic=True, verbose=-1)
    if library == "xgboost":
        from xgboost import XGBClassifier, XGBRegressor

        cls = XGBClassifier if classifier else XGBRegressor
        return cls(n_estimators=25, max_depth=4, tree_method="hist", n_jobs=1, random_state=0)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingClassifier if classifier else HistGradientBoostingRegressor
    return cls(max_iter=25, random_state=0)


def _fit(estimator, kind: str, seed: int = 1) -> Pipeline:
    """Pipeline(preprocess, model), the shape families.build_model makes."""
    train = _frame(N_TRAIN, seed)
    model = Pipeline([("preprocess", fam._preprocessor(SPEC)), ("model", estimator)])
    return model.fit(fam.prepare_frame(train, SPEC), _target(train, kind, seed))


def _champion(drive: DriveLayout, model, family: str, kind: str) -> Champion:
    path = drive.champion_bundle("boosting", "1") / f"{family}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    task = "regression" if kind == "regression" else "classification"
    return Champion("boosting", task, family, path, "1", "run-1", "hash", 0.5 if kind == "binary" else None)


def _assert_parity(champion: Champion, model, path, rows: pd.DataFrame, unit: float) -> None:
    """The ONNX predictions as parity.py and the service read them match the native ones, batch and single row."""
    native = runtime.native_predictor(champion, model)
    onnx_fp32 = runtime.onnx_predictor(runtime.ONNX_FP32, champion.task, path)
    expected, actual = native(Rows(frame=rows)), onnx_fp32(Rows(frame=rows))
    assert expected.shape == actual.shape
    # A float32 output holds 7 digits: an extreme edge row's value (a network extrapolates) is judged on those.
    limit = TOLERANCE * unit + FLOAT32_DIGITS * np.abs(expected)
    np.testing.assert_array_less(np.abs(actual - expected), limit)
    for i in (0, len(rows) - 3, len(rows) - 1):  # a test row and edge rows, each alone
        one = onnx_fp32(Rows(frame=rows.iloc[i : i + 1]))
        np.testing.assert_array_less(np.abs(one - expected[i : i + 1]), limit[i : i + 1])


@pytest.mark.parametrize(
    ("library", "kind"),
    [
        (library, kind)
        for library in ("lightgbm", "xgboost", "hist_gradient_boosting")
        for kind in ("binary", "multiclass", "regression")
    ],
)
def test_boosting_pipeline_exports_with_native_parity(tmp_path, library, kind) -> None:
    drive = DriveLayout.at(tmp_path)
    model = _fit(_estimator(library, kind), kind)
    champion = _champion(drive, model, library, kind)

    outcome = export.export_champion(drive, champion, model)

    assert outcome.exported, outcome.report
    report = outcome.report
    if library != "hist_gradient_boosting":
        assert (
            f"onnxmltools {'LightGBM' if library == 'lightgbm' else 'XGBoost'} converter" in report["converter"]["name"]
        )
    assert [(i["name"], i["type"]) for i in report["inputs"]] == (
        [(c, "tensor(double)") for c in SPEC.numeric] + [(c, "tensor(string)") for c in SPEC.categorical]
    )
    written = onnx.load(str(outcome.path))
    domains = ["" if o.domain == "ai.onnx" else o.domain for o in written.opset_import]
    assert sorted(domains) == ["", "ai.onnx.ml"], "one opset per domain (quantize_dynamic needs it)"
    # LightGBM and HistGradientBoosting compare in float64: their trees keep float64 thresholds and read
    # float64 features (tree_precision.py); XGBoost compares in float32, as its graph does.
    (tree,) = [n for n in written.graph.node if n.op_type.startswith("TreeEnsemble")]
    thresholds = {a.name for a in tree.attribute} & {"nodes_values", "nodes_values_as_tensor"}
    assert thresholds == {"nodes_values" if library == "xgboost" else "nodes_values_as_tensor"}
    rows = _rows()
    if kind == "regression":
        assert report["outputs"] == ["variable"]
        _assert_parity(champion, model, outcome.path, rows, float(np.std(_target(_frame(N_TRAIN, 1), kind, 1))))
    else:
        k = 2 if kind == "binary" else 3
        assert report["outputs"] == ["label", "probabilities"]
        label, proba = runtime.session(outcome.path).run(None, runtime.onnx_feed(Rows(frame=rows), report["inputs"]))
        assert proba.shape == (len(rows), k)
        native = model.predict_proba(rows)
        assert np.abs(proba - native).max() < TOLERANCE
        decided = np.sort(native, axis=1)[:, -1] - np.sort(native, axis=1)[:, -2] > TOLERANCE  # not a tie
        np.testing.assert_array_equal(label[decided], model.predict(rows)[decided])
        _assert_parity(champion, model, outcome.path, rows, 1.0)
    # The same champion exports to the same bytes (lineage hashes them).
    assert export.export_champion(drive, champion, model).report["sha256"] == report["sha256"]
    # INT8: tree ensembles have nothing to quantize, and the quantizer must not trip on the graph's opsets.
    assert quantize.quantize_champion(drive, "boosting", report).status == quantize.NOT_APPLICABLE


def test_xgboost_fitted_on_named_columns_exports(tmp_path) -> None:
    # A preprocess step that outputs a frame gives the booster column names instead of f0..fN, which
    # onnxmltools cannot read; the export converts a copy without them and leaves the champion untouched.
    drive = DriveLayout.at(tmp_path)
    model = _fit(_estimator("xgboost", "binary"), "binary")
    model.set_output(transform="pandas")
    model.fit(fam.prepare_frame(_frame(N_TRAIN, 1), SPEC), _target(_frame(N_TRAIN, 1), "binary", 1))
    names = model.named_steps["model"].get_booster().feature_names
    assert names[0] != "f0"
    champion = _champion(drive, model, "xgboost", "binary")

    outcome = export.export_champion(drive, champion, model)

    assert outcome.exported
    assert model.named_steps["model"].get_booster().feature_names == names
    _assert_parity(champion, model, outcome.path, _rows(), 1.0)


def test_boosting_converters_register_lazily_and_once() -> None:
    import subprocess
    import sys

    from skl2onnx import get_model_alias

    # Loading the deployment code imports none of the converter libraries (the code location loads it).
    heavy = ("lightgbm", "xgboost", "onnxmltools", "skl2onnx", "onnxruntime", "torch", "sklearn.ensemble")
    probe = (
        "import sys; import mlgraph.deployment.export, mlgraph.deployment.sklearn_graph, "
        "mlgraph.deployment.converters, mlgraph.deployment.torch_graph, mlgraph.deployment.tree_precision; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    from xgboost import XGBRegressor

    converters.register_external(XGBRegressor())
    converters.register_external(XGBRegressor())
    assert get_model_alias(XGBRegressor) == "XGBoostXGBRegressor"
    assert converters._register_xgboost.cache_info().misses == 1


class NearestMean(ClassifierMixin, BaseEstimator):
    """The user's estimator: softmax over minus the squared distance to each class's mean."""

    def fit(self, X, y):
        from sklearn.utils.validation import validate_data

        X = validate_data(self, X, ensure_all_finite=False)
        self.classes_ = np.unique(y)
        self.means_ = np.stack([np.nanmean(X[y == c], axis=0) for c in self.classes_])
        return self

    def _logits(self, X) -> np.ndarray:
        from sklearn.utils.validation import validate_data

        X = validate_data(self, X, reset=False)
        return 2 * X @ self.means_.T - (self.means_**2).sum(axis=1)  # -|x - m|² + |x|²

    def predict_proba(self, X) -> np.ndarray:
        logits = self._logits(X)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[self._logits(X).argmax(axis=1)]


class RegisteredNearestMean(NearestMean):
    """The same estimator under a class the user registered a converter for (below)."""


def _nearest_mean_converter(scope, operator, container) -> None:
    from onnx import TensorProto

    est = operator.raw_operator
    weight, bias = scope.get_unique_variable_name("weight"), scope.get_unique_variable_name("bias")
    product, logits = scope.get_unique_variable_name("product"), scope.get_unique_variable_name("logits")
    means = est.means_.astype(np.float64)
    container.add_initializer(weight, TensorProto.FLOAT, list(means.T.shape), (2 * means.T).ravel().tolist())
    container.add_initializer(bias, TensorProto.FLOAT, [len(est.classes_)], (-(means**2).sum(axis=1)).tolist())
    container.add_node(
        "MatMul", [operator.inputs[0].full_name, weight], product, name=scope.get_unique_operator_name("MatMul")
    )
    container.add_node("Add", [product, bias], logits, name=scope.get_unique_operator_name("Add"))
    container.add_node(
        "Softmax", logits, operator.outputs[1].full_name, axis=1, name=scope.get_unique_operator_name("Softmax")
    )
    container.add_node(
        "ArgMax",
        logits,
        operator.outputs[0].full_name,
        axis=1,
        keepdims=0,
        name=scope.get_unique_operator_name("ArgMax"),
    )


@pytest.fixture(scope="module")
def registered_nearest_mean() -> type:
    """What the user's plugin module does at import: register a converter for their class."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    update_registered_converter(
        RegisteredNearestMean,
        "TestsRegisteredNearestMean",
        calculate_linear_classifier_output_shapes,
        _nearest_mean_converter,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},  # as skl2onnx's classifiers
    )
    return RegisteredNearestMean


def _reason(cls: type) -> str:
    return (
        f"no skl2onnx converter is registered for {cls.__module__}.{cls.__qualname__}; register one with "
        "skl2onnx.update_registered_converter in the plugin module, or the service serves the native model"
    )


def test_user_estimator_without_converter_is_not_exportable(tmp_path) -> None:
    drive = DriveLayout.at(tmp_path)
    model = _fit(NearestMean(), "multiclass")
    champion = _champion(drive, model, "estimator", "multiclass")
    stale = drive.onnx_model_path("boosting")  # an earlier champion's graph must not survive
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"stale")

    outcome = export.export_champion(drive, champion, model)

    assert outcome.status == export.NOT_EXPORTABLE and outcome.path is None
    assert outcome.report["reason"] == _reason(NearestMean) and outcome.report["served"] == "native"
    assert not stale.exists()
    assert quantize.quantize_champion(drive, "boosting", outcome.report).status == quantize.NOT_APPLICABLE


def test_user_estimator_with_registered_converter_exports(tmp_path, registered_nearest_mean) -> None:
    drive = DriveLayout.at(tmp_path)
    model = _fit(registered_nearest_mean(), "multiclass")
    champion = _champion(drive, model, "estimator", "multiclass")

    outcome = export.export_champion(drive, champion, model)

    assert outcome.exported and outcome.report["outputs"] == ["label", "probabilities"]
    _assert_parity(champion, model, outcome.path, _rows(), 1.0)


def _whole(tmp_path, estimator, kind: str, with_split: bool = False):
    """The user's estimator as the whole pipeline (`preprocessing: none`) on the raw numeric columns."""
    spec = fam.FeatureSpec(SPEC.numeric, ())
    train = _frame(N_TRAIN, 1).fillna({"income": 20000.0})
    model = estimator.fit(fam.prepare_frame(train, spec), _target(train, kind, 1))
    drive = DriveLayout.at(tmp_path)
    if with_split:
        path = drive.dataset_path("boosting", "train")
        path.parent.mkdir(parents=True, exist_ok=True)
        train.to_parquet(path, index=False)
    rows = fam.prepare_frame(_frame(150, 2).fillna({"income": 20000.0}), spec)
    return drive, model, _champion(drive, model, "estimator", kind), spec, rows


def test_whole_pipeline_user_estimator_exports_with_its_converter(tmp_path, registered_nearest_mean) -> None:
    drive, model, champion, spec, rows = _whole(tmp_path, registered_nearest_mean(), "binary", with_split=True)

    outcome = export.export_champion(drive, champion, model)  # the raw columns read from the model + split

    assert outcome.exported and "whole pipeline" in outcome.report["converter"]["name"]
    assert [(i["name"], i["type"]) for i in outcome.report["inputs"]] == [(c, "tensor(double)") for c in spec.numeric]
    _assert_parity(champion, model, outcome.path, rows, 1.0)


def test_whole_pipeline_without_converter_is_not_exportable(tmp_path) -> None:
    drive, model, champion, spec, _ = _whole(tmp_path, NearestMean(), "binary")

    outcome = export.export_champion(drive, champion, model, spec)

    assert outcome.status == export.NOT_EXPORTABLE and outcome.report["reason"] == _reason(NearestMean)


def test_whole_pipeline_sklearn_pipeline_with_raw_categoricals_exports(tmp_path) -> None:
    # The user's own Pipeline selects the raw columns by name: one typed input each, strings included.
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    drive = DriveLayout.at(tmp_path)
    numeric = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    columns = ColumnTransformer(
        [("num", numeric, list(SPEC.numeric)), ("cat", OneHotEncoder(handle_unknown="ignore"), ["plan"])]
    )
    model = Pipeline([("columns", columns), ("booster", _estimator("lightgbm", "binary"))])
    # Continuous ages: skl2onnx's imputer and scaler compute in float32 and its graph gives the trees float32
    # thresholds (sklearn_graph's own preprocessing does not), so a test value on a threshold of a discrete
    # feature could take the other branch there; the parity gate, not this export, judges that case.
    jitter = np.random.default_rng(5).uniform(0, 0.1, N_TRAIN + 150)
    train = _frame(N_TRAIN, 1).fillna({"plan": "basic"})
    train["age"] += jitter[:N_TRAIN]
    model.fit(fam.prepare_frame(train, SPEC), _target(train, "binary", 1))
    champion = _champion(drive, model, "estimator", "binary")

    outcome = export.export_champion(drive, champion, model, SPEC)

    assert outcome.exported
    assert [i["type"] for i in outcome.report["inputs"]] == ["tensor(double)"] * 3 + ["tensor(string)"]
    test = _frame(150, 2).fillna({"plan": "basic"})
    test["age"] += jitter[N_TRAIN:]
    rows = fam.prepare_frame(test, SPEC)
    native = runtime.native_predictor(champion, model)
    onnx_fp32 = runtime.onnx_predictor(runtime.ONNX_FP32, "classification", outcome.path)
    err = np.abs(native(Rows(frame=rows)) - onnx_fp32(Rows(frame=rows)))
    assert err.max() < parity.MAX_ABS_ERR_LIMIT and err.mean() < parity.MEAN_ABS_ERR_LIMIT


def build_net(n_inputs: int, params: dict):
    """The user's torch network (`family: torch`, module "tests.test_export_boosting:build_net")."""
    from torch import nn

    return nn.Sequential(nn.Linear(n_inputs, 16), nn.ReLU(), nn.Linear(16, int(params["n_outputs"])))


@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_tabular_torch_module_exports_with_native_parity(tmp_path, kind) -> None:
    from mlgraph.training.torch_tabular import TorchTabularModel

    drive = DriveLayout.at(tmp_path)
    task = "regression" if kind == "regression" else "classification"
    net = TorchTabularModel(module=f"{__name__}:build_net", params={}, task=task, seed=0, epochs=3)
    model = _fit(net, kind)
    champion = _champion(drive, model, "torch", kind)

    outcome = export.export_champion(drive, champion, model)

    assert outcome.exported and "torch.onnx.export" in outcome.report["converter"]["name"]
    assert outcome.report["outputs"] == (["variable"] if kind == "regression" else ["label", "probabilities"])
    unit = float(np.std(_target(_frame(N_TRAIN, 1), kind, 1))) if kind == "regression" else 1.0
    _assert_parity(champion, model, outcome.path, _rows(), unit)
    assert export.export_champion(drive, champion, model).report["sha256"] == outcome.report["sha256"]


def test_other_tabular_torch_model_is_not_exportable_with_its_reason() -> None:
    class TorchRegressor(BaseEstimator):
        """The user's own wrapper of a torch module, with no skl2onnx converter."""

    reason = converters.missing_reason(TorchRegressor(), "torch")
    assert "not the platform's TorchTabularModel" in reason and "serves the native model" in reason


# The demo experiments, through the release gates the deployment assets and the service run.
GATED = [
    ("classification", "lightgbm"),
    ("regression", "lightgbm"),
    ("classification", "xgboost"),
    ("regression", "xgboost"),
    ("classification", "hist_gradient_boosting"),
]


@pytest.mark.parametrize(("task", "library"), GATED)
def test_demo_boosting_champion_passes_the_release_gates(tmp_path, demo_frames, task, library) -> None:
    drive = DriveLayout.at(tmp_path)
    config = demo_config(EXPERIMENT[task])
    train, test = demo_frames[task]
    for split, frame in (("train", train), ("test", test)):
        path = drive.dataset_path(config.name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    spec = fam.feature_spec(train, config)
    y = train[config.target]
    kind = "binary" if task == "classification" else "regression"
    model = Pipeline([("preprocess", fam._preprocessor(spec)), ("model", _estimator(library, kind))])
    model.fit(fam.prepare_frame(train, spec), (y == y.max()).astype(int) if task == "classification" else y)
    path = drive.champion_bundle(config.name, "1") / f"{library}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    promote(drive, config, library, path, threshold=0.35 if task == "classification" else None)
    champion = read_champion(drive, config)

    assert export.export_champion(drive, champion, champion.load()).exported

    gate = gates.fp32_parity(drive, config)
    assert gate.applicable and gate.result.passed, gate.result.failures
    assert gate.result.max_abs_err < TOLERANCE, gate.result.metadata()
    if task == "classification":
        assert gate.result.label_agreement == 1.0
    assert gates.schema(drive, config).differences == ()
