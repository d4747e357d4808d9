"""Deployment domain: ONNX export and parity of every family, INT8, release gates, benchmark table (no Dagster)."""

from __future__ import annotations

import dataclasses
import json

import duckdb
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlgraph.core.drive import DriveLayout
from mlgraph.core.experiment import ForecastConfig
from mlgraph.core.hashing import sha256_file
from mlgraph.deployment import bench, export, gates, parity, quantize, runtime, sklearn_graph
from mlgraph.deployment.champion import Rows, read_champion
from mlgraph.training import families as fam
from mlgraph.training import forecasting as fc
from tests.support.deployment import demo_config, export_current, perturb_first_weight, promote, tabular_champion


@pytest.mark.parametrize(
    ("task", "family"),
    [(t, f) for t in ("classification", "regression") for f in fam.DEFAULT_PARAMS[t]],
)
def test_tabular_family_exports_and_passes_parity(tmp_path, demo_frames, task, family) -> None:
    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, task, family, demo_frames)
    outcome = export_current(drive, config)

    assert outcome.exported and outcome.path == drive.onnx_model_path(config.name)
    report = json.loads(drive.export_report_json(config.name).read_text())
    assert report["sha256"] == sha256_file(outcome.path) == export.onnx_hashes(drive, config.name)["onnx_model"]
    assert report["opset"]["ai.onnx"] >= 17 and report["conversion_seconds"] >= 0 and report["bytes"] > 0
    # The same champion exports to the same bytes (lineage.json and the data version hash them).
    assert sha256_file(export_current(drive, config).path) == report["sha256"]
    spec = fam.feature_spec(demo_frames[task][0], config)
    assert [(i["name"], i["type"]) for i in report["inputs"]] == (
        [(c, "tensor(double)") for c in spec.numeric] + [(c, "tensor(string)") for c in spec.categorical]
    )
    gate = gates.fp32_parity(drive, config)
    assert gate.applicable and gate.result.passed, gate.result.failures
    assert gate.result.max_abs_err < 1e-4, "float64 preprocessing should leave only float32 rounding"
    if task == "classification":
        assert gate.result.label_agreement == 1.0
        # The label output is sklearn's predict, for a batch and for a single row alike.
        champion = read_champion(drive, config)
        model, frame = champion.load(), fam.prepare_frame(demo_frames[task][1], spec)
        session = runtime.session(outcome.path)
        for rows in (frame, frame.iloc[:1]):
            feed = runtime.onnx_feed(Rows(frame=rows), report["inputs"])
            np.testing.assert_array_equal(session.run(["label"], feed)[0], model.predict(rows))
    assert gates.schema(drive, config).differences == ()


def test_categorical_gap_seen_in_training_encodes_like_sklearn(tmp_path, demo_frames) -> None:
    # prepare_frame turns gaps into None; sklearn's imputer leaves None alone and the encoder learns it
    # as a category of its own. The graph's "" must land in that column.
    def with_gaps(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[::5, "student_country"] = None
        return frame

    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames, edit=with_gaps)
    assert export_current(drive, config).exported
    gate = gates.fp32_parity(drive, config)
    assert gate.result.passed and gate.result.max_abs_err < 1e-5, gate.result.metadata()


@pytest.fixture(scope="module")
def recurrent_fits() -> dict[str, fc.ForecastFit]:
    t = np.arange(400, dtype=np.float64)
    series = 100 + 0.05 * t + 10 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 1, t.size)
    cfg = ForecastConfig(window=12, seasonal_period=24, epochs=2, patience=1, hidden_size=8, batch_size=32)
    return {f: fc.fit_forecaster(f, series, t, cfg, {}, seed=0) for f in fc.RECURRENT}


@pytest.mark.parametrize("family", fc.RECURRENT)
def test_recurrent_parity_at_two_lengths_and_batch_sizes(recurrent_fits, family) -> None:
    fit = recurrent_fits[family]
    session = runtime.session(export.recurrent_to_onnx(fit).SerializeToString())
    fp32 = runtime.Predictor(runtime.ONNX_FP32, "forecasting", session)
    native = runtime.Predictor(runtime.NATIVE, "forecasting", fit)
    rng = np.random.default_rng(1)
    for steps in (12, 30):  # the trained window and a longer one: the sequence axis is dynamic
        for batch in (1, 17):
            windows = 100 + 10 * rng.standard_normal((batch, steps))
            expected, actual = native(Rows(windows=windows)), fp32(Rows(windows=windows))
            assert actual.shape == (batch,)
            assert np.max(np.abs(actual - expected)) / fit.metadata["std"] < 1e-4, (steps, batch)


@pytest.mark.parametrize("family", fc.RECURRENT)
def test_native_recurrent_predictor_is_the_training_forecast(recurrent_fits, family) -> None:
    fit = recurrent_fits[family]
    series = 100 + np.sin(np.arange(120) / 3.0) * 10
    positions = np.arange(60, 120)
    windows = fc.window_inputs(series, positions, fit.metadata["window"], fit.metadata["horizon"])
    native = runtime.Predictor(runtime.NATIVE, "forecasting", fit)(Rows(windows=windows))
    np.testing.assert_array_equal(native, fc.predict_forecaster(fit, series, np.arange(series.size), positions))


def test_int8_quantizes_the_matmul_of_a_linear_model(tmp_path, demo_frames) -> None:
    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    outcome = export_current(drive, config)
    fp32_ops = quantize.op_histogram(onnx.load(str(outcome.path)))
    assert fp32_ops["MatMul"] == 1 and "LinearClassifier" not in fp32_ops

    result = quantize.quantize_champion(drive, config.name, outcome.report)
    assert result.applicable and result.report["quantized_nodes"] == {"MatMul": 1}
    int8 = onnx.load(str(drive.onnx_int8_model_path(config.name)))
    assert sum(n.op_type in quantize.QUANTIZED_FORMS for n in int8.graph.node) > 0
    assert result.report["sha256"] == sha256_file(drive.onnx_int8_model_path(config.name))
    gate = gates.int8_parity(drive, config, parity.Int8Budget.of(config))
    assert gate.applicable and gate.result.passed, gate.result.failures
    assert gate.result.metric_loss["name"] == "roc_auc_loss" and gate.result.metric_loss["limit"] == 0.01
    # The YAML's budget is the gate's limit: a budget below the measured loss fails the gate.
    strict = config.model_copy(
        update={"deployment": config.deployment.model_copy(update={"int8_max_roc_auc_loss": -1.0})}
    )
    tight = gates.int8_parity(drive, config, parity.Int8Budget.of(strict))
    assert tight.result.metric_loss["limit"] == -1.0 and not tight.result.passed


def test_int8_of_a_tree_graph_is_not_applicable_and_writes_no_int8_file(tmp_path, demo_frames) -> None:
    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "regression", "decision_tree", demo_frames)
    outcome = export_current(drive, config)
    stale = drive.onnx_int8_model_path(config.name)
    stale.write_bytes(b"an earlier champion's INT8 graph")

    result = quantize.quantize_champion(drive, config.name, outcome.report)
    assert not result.applicable and result.report["summary"] == "INT8 not applicable: 0 quantizable nodes"
    assert result.report["quantized_nodes"] == {} and result.report["fp32_ops"]["TreeEnsembleRegressor"] == 1
    assert not stale.exists()
    gate = gates.int8_parity(drive, config, parity.Int8Budget())
    assert not gate.applicable and gate.reason == "INT8 not applicable: 0 quantizable nodes"


def _matmul_model(opsets: list[tuple[str, int]]):
    weight = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4) / 7, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = sklearn_graph.IR_VERSION
    return model


def test_duplicate_default_opset_is_deduplicated_before_quantization() -> None:
    model = _matmul_model([("", 17), ("ai.onnx", 15), ("", 17), ("ai.onnx.ml", 1), ("ai.onnx.ml", 3)])
    removed = runtime.dedupe_opsets(model)
    assert runtime.opsets(model) == {"ai.onnx": 17, "ai.onnx.ml": 3}
    assert sorted(removed) == sorted(["ai.onnx:15", "ai.onnx:17", "ai.onnx.ml:1"])

    payload, counts, removed_again = quantize.quantize_model(_matmul_model([("", 17), ("", 17), ("ai.onnx.ml", 1)]))
    assert counts == {"MatMul": 1} and removed_again == ["ai.onnx:17"]
    x = np.ones((2, 8), dtype=np.float32)
    y = runtime.session(payload).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, x @ (np.arange(32, dtype=np.float32).reshape(8, 4) / 7), rtol=0.05)


@pytest.mark.parametrize("family", ["seasonal_naive", "prophet"])
def test_family_without_faithful_export_is_recorded_not_placeheld(tmp_path, family) -> None:
    drive = DriveLayout.at(tmp_path)
    config = demo_config("demand_forecast")
    path = drive.champion_bundle(config.name, "1") / f"{family}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"metadata": {"family": family}}))
    promote(drive, config, family, path)
    for stale in (drive.onnx_model_path(config.name), drive.onnx_int8_model_path(config.name)):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"an earlier champion's graph")

    champion = read_champion(drive, config)
    outcome = export.export_champion(drive, champion, native=None)
    assert outcome.status == export.NOT_EXPORTABLE and family.split("_")[0] in outcome.report["reason"].lower()
    assert not drive.onnx_model_path(config.name).exists() and not drive.onnx_int8_model_path(config.name).exists()
    assert export.onnx_lineage_files(drive, config.name) == {}
    assert quantize.quantize_champion(drive, config.name, outcome.report).status == quantize.NOT_APPLICABLE
    assert not gates.fp32_parity(drive, config).applicable and not gates.schema(drive, config).applicable


def test_failed_export_names_family_and_converter_and_leaves_nothing(tmp_path, demo_frames, monkeypatch) -> None:
    from skl2onnx.common.exceptions import MissingShapeCalculator

    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "regression", "knn", demo_frames)
    assert export_current(drive, config).exported  # an earlier export that must not survive a failed one

    def refuse(parts, classifier):
        raise MissingShapeCalculator("Unable to find a shape calculator for type '<class 'KNeighborsRegressor'>'.")

    monkeypatch.setattr(sklearn_graph, "estimator_to_onnx", refuse)
    with pytest.raises(export.ExportError) as caught:
        export_current(drive, config)
    message = str(caught.value)
    assert "knn v1" in message and "Unable to find a shape calculator" in message and "Fix:" in message
    assert "native model stays served" in message
    assert not drive.onnx_model_path(config.name).exists() and not drive.export_report_json(config.name).exists()


def test_one_changed_weight_fails_the_parity_gate(tmp_path, demo_frames) -> None:
    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    outcome = export_current(drive, config)
    model = onnx.load(str(outcome.path))
    perturb_first_weight(model)
    runtime.write_model(model, outcome.path)
    report = {**outcome.report, "sha256": sha256_file(outcome.path)}  # as if the exporter itself were wrong
    drive.export_report_json(config.name).write_text(json.dumps(report))

    result = gates.fp32_parity(drive, config).result
    assert not result.passed and result.max_abs_err > parity.MAX_ABS_ERR_LIMIT
    assert any("max abs error" in f for f in result.failures)
    assert result.metadata()["max_abs_err_limit"] == parity.MAX_ABS_ERR_LIMIT


def test_schema_differences_name_each_mismatch() -> None:
    expected = [{"name": "age", "type": "tensor(double)"}, {"name": "city", "type": "tensor(string)"}]
    assert parity.schema_differences(expected, expected) == []
    actual = [
        {"name": "city", "type": "tensor(string)"},
        {"name": "age", "type": "tensor(float)"},
        {"name": "extra", "type": "tensor(double)"},
    ]
    assert parity.schema_differences(actual, expected) == [
        "unexpected input 'extra' (tensor(double))",
        "input 'age' is tensor(float), training feature needs tensor(double)",
    ]
    reordered = parity.schema_differences(expected[::-1], expected)
    assert reordered == ["inputs are in another order than the training features"]


TINY = bench.BenchSettings(
    "tiny",
    warmup=2,
    latency_runs=40,
    min_seconds=0.0,
    min_repeats=1,
    rss_rows=16,
    latency_seconds=0.0,
    batch_sizes=(1, 8),
)


def test_benchmark_table_has_every_column(tmp_path, demo_frames) -> None:
    from mlgraph.deployment.champion import evaluation_split

    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    outcome = export_current(drive, config)
    quantized = quantize.quantize_champion(drive, config.name, outcome.report)
    champion = read_champion(drive, config)
    native = champion.load()
    train, test = demo_frames["classification"]
    evaluation = evaluation_split(config, train, test, native)
    variants = bench.variants(champion, outcome.path, quantized.path)
    rows = bench.run_benchmark(config, champion, native, variants, evaluation, TINY, threads=(1, 2))

    assert len(rows) == 3 * 2 * 2  # variants × threads × batch sizes
    table = pd.read_csv(bench.write_csv(rows, drive.inference_benchmark_csv(config.name)))
    assert list(table.columns) == bench.COLUMNS
    assert not table.isna().any().any(), table[table.isna().any(axis=1)]
    assert set(table["variant"]) == {"native", "onnx_fp32", "onnx_int8"} and set(table["threads"]) == {1, 2}
    assert (table[["throughput_rows_per_s", "latency_p50_us", "peak_rss_mb", "model_bytes"]] > 0).all().all()
    assert (table["latency_p50_us"] <= table["latency_p99_us"]).all() and table["pareto_optimal"].any()
    assert (table["latency_runs"] == bench.MIN_LATENCY_RUNS).all()  # latency_seconds=0: the floor, no more
    png = bench.pareto_plot(rows, config.selection_metric, drive.plot_path(config.name, "inference_pareto"), "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_only_undominated_points() -> None:
    points = {"a": (10.0, 0.80), "b": (20.0, 0.90), "c": (30.0, 0.85), "d": (10.0, 0.80)}
    assert bench.pareto_front(points, lower_is_better=False) == ["a", "d", "b"]
    assert bench.pareto_front({"x": (5.0, 2.0), "y": (1.0, 3.0)}, lower_is_better=True) == ["y", "x"]


def _row(version: str, variant: str, batch: int, p50: float, rps: float, measured_at: str) -> dict:
    row = dict.fromkeys(bench.COLUMNS)
    row.update(
        {
            "experiment": "e",
            "model_version": version,
            "run_id": "r",
            "family": "f",
            "variant": variant,
            "threads": 1,
            "batch_size": batch,
            "throughput_rows_per_s": rps,
            "latency_p50_us": p50,
            "settings": "light",
            "measured_at": measured_at,
            "pareto_optimal": False,
        }
    )
    return row


def test_warehouse_keeps_versions_and_compares_with_the_previous_champion() -> None:
    connection = duckdb.connect(":memory:")
    assert bench.previous_champion_rows(connection, "e", "1", "light") == []
    v1 = [
        _row("1", "onnx_fp32", 1, 40.0, 25_000.0, "2026-01-01T00:00:00"),
        _row("1", "onnx_fp32", 8, 90.0, 80_000.0, "2026-01-01T00:00:00"),
    ]
    assert bench.store_rows(connection, v1) == 2
    assert bench.store_rows(connection, v1) == 2  # replacing a version's rows is idempotent
    v2 = [
        _row("2", "onnx_fp32", 1, 20.0, 50_000.0, "2026-02-01T00:00:00"),
        _row("2", "onnx_fp32", 8, 90.0, 40_000.0, "2026-02-01T00:00:00"),
    ]
    previous = bench.previous_champion_rows(connection, "e", "2", "light")
    assert {r["model_version"] for r in previous} == {"1"} and len(previous) == 2
    bench.store_rows(connection, v2)
    assert connection.execute(f"SELECT count(*) FROM {bench.WAREHOUSE_TABLE}").fetchall()[0][0] == 4

    changes = {(c["figure"], c["change"]) for c in bench.compare_with_previous(v2, previous)}
    assert changes == {("one-row p50 (µs)", "2.00× faster"), ("rows/s at batch 8", "2.00× slower")}
    assert bench.compare_with_previous(v2, []) == []


def test_gate_result_lists_every_failure_with_its_limit() -> None:
    result = parity.ParityResult(
        "onnx_int8",
        10,
        0.05,
        0.02,
        "test row 3",
        1.0,
        label_agreement=0.99,
        threshold=0.5,
        metric_loss={
            "metric": "roc_auc",
            "fp32": 0.9,
            "int8": 0.85,
            "name": "roc_auc_loss",
            "loss": 0.05,
            "limit": 0.01,
        },
    )
    assert len(result.failures) == 4 and not result.passed
    meta = result.metadata()
    assert meta["roc_auc_loss"] == 0.05 and meta["roc_auc_loss_limit"] == 0.01
    assert dataclasses.replace(result, max_abs_err=0.0, mean_abs_err=0.0, label_agreement=1.0, metric_loss={}).passed
