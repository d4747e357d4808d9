"""Forecasting on series as users bring them: trending, gappy, irregular (issue 10, item 3). No Dagster.

The headline test trains GRU, LSTM and seasonal naive through the pipeline's own code (train_candidates,
evaluate) on a generated hourly series with a trend, two seasonalities and gaps; the recurrent models
must beat seasonal naive on test RMSE. With the original level targets (`target_mode: level`) they lose
to it by 1.5-2x on this series, as on the public CO2 series of the issue.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlgraph.core.experiment import ConfigError, ExperimentConfig, parse_experiment
from mlgraph.training import forecast_data as fd
from mlgraph.training import forecasting as fc
from mlgraph.training.candidates import train_candidates
from mlgraph.training.evaluation import evaluate

HOUR = np.timedelta64(1, "h")


def trending_gappy_series(n: int = 1200, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """Hourly series with trend, daily and 12-hour seasonality, noise; 12 gaps of 1-9 hours. (frame, rows dropped)"""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 100 + 0.05 * t + 10 * np.sin(2 * np.pi * t / 24) + 4 * np.sin(2 * np.pi * t / 12) + rng.normal(0, 1.0, n)
    keep = np.ones(n, dtype=bool)
    for start in rng.choice(np.arange(50, n - 20), size=12, replace=False):
        keep[start : start + rng.integers(1, 10)] = False
    ts = np.datetime64("2024-01-01T00", "h") + t.astype("timedelta64[h]")
    return pd.DataFrame({"ts": ts[keep], "y": y[keep]}), int((~keep).sum())


def forecasting_config(families: tuple[str, ...], **forecast) -> ExperimentConfig:
    settings = {
        "window": 24,
        "seasonal_period": 24,
        "epochs": 10,
        "patience": 3,
        "hidden_size": 16,
        "batch_size": 32,
        "learning_rate": 0.01,
        **forecast,
    }
    return ExperimentConfig.model_validate(
        {
            "name": "gappy",
            "task": "forecasting",
            "dataset": {"generator": "demand_forecast"},
            "target": "y",
            "time_column": "ts",
            "models": [{"family": f} for f in families],
            "cv_folds": 2,
            "forecast": settings,
        }
    )


def test_gru_and_lstm_beat_seasonal_naive_on_a_trending_gappy_series(tmp_path) -> None:
    frame, dropped = trending_gappy_series()
    cut = int(len(frame) * 0.8)
    train, test = frame.iloc[:cut], frame.iloc[cut:]
    config = forecasting_config(("gru", "lstm", "seasonal_naive"))

    outcome = train_candidates(config, train, tmp_path, n_jobs=1)
    series = outcome.data.series
    assert series["frequency"] == "h" and series["frequency_source"] == "inferred"
    dropped_in_train = int((train["ts"].iloc[-1] - train["ts"].iloc[0]) / HOUR) + 1 - len(train)
    assert series["missing_points"] == dropped_in_train > 0
    assert "seasonal" in series["fill"] and "not scored" in series["masked"]
    # Cross-validation scores observed points only: no filled value appears as a truth.
    assert outcome.data.observed[outcome.oof["row"].to_numpy()].all()

    evaluated = evaluate(
        config, train, test, {f: r.artifact for f, r in outcome.models.items()}, None, outcome.data.scale
    )
    rmse = {model: round(m["rmse"], 3) for model, m in evaluated.metrics.items()}
    assert evaluated.series["missing_points"] == dropped
    assert len(evaluated.predictions.query("model == 'gru'")) == len(test)  # every observed test point, no more
    naive = rmse["baseline_seasonal_naive"]
    assert rmse["seasonal_naive"] == naive
    for family in fc.RECURRENT:
        assert rmse[family] < 0.9 * naive, rmse
    print(f"test RMSE on the trending gappy series: {rmse}")


def test_change_targets_do_not_depend_on_the_level() -> None:
    frame, _ = trending_gappy_series(n=400)
    config = forecasting_config(("gru",), epochs=1)
    series = fd.training_series(frame, config)
    fit = fc.fit_forecaster("gru", series.values, series.timestamps, config.forecast, {}, 0, series.observed)
    assert fit.metadata["target_mode"] == "change"
    assert fit.metadata["filled_targets_skipped"] == int((~series.observed[24:]).sum()) > 0
    positions = np.arange(300, 340)
    base = fc.predict_forecaster(fit, series.values, series.timestamps, positions)
    # A level the model never saw: the forecast moves with it (float32 windows: a few ulps of 1,000).
    shifted = fc.predict_forecaster(fit, series.values + 1000.0, series.timestamps, positions)
    np.testing.assert_allclose(shifted - base, 1000.0, atol=1e-3)


def test_model_files_saved_before_change_targets_still_load_as_level_models(tmp_path) -> None:
    frame, _ = trending_gappy_series(n=300)
    config = forecasting_config(("lstm",), epochs=1, target_mode="level")
    series = fd.training_series(frame, config)
    fit = fc.fit_forecaster("lstm", series.values, series.timestamps, config.forecast, {}, 0)
    positions = np.arange(250, 280)
    expected = fc.predict_forecaster(fit, series.values, series.timestamps, positions)
    old = fc.ForecastFit("lstm", fit.model, {k: v for k, v in fit.metadata.items() if k != "target_mode"})
    loaded = fc.load_forecaster("lstm", fc.save_forecaster(old, tmp_path / "lstm.pt"))
    np.testing.assert_array_equal(fc.predict_forecaster(loaded, series.values, series.timestamps, positions), expected)


def test_same_seed_same_model_bytes(tmp_path) -> None:
    frame, _ = trending_gappy_series(n=300)
    config = forecasting_config(("gru",), epochs=2)
    series = fd.training_series(frame, config)
    paths = []
    for run in ("a", "b"):
        fit = fc.fit_forecaster("gru", series.values, series.timestamps, config.forecast, {}, 7, series.observed)
        paths.append(fc.save_forecaster(fit, tmp_path / run / "gru.pt"))
    assert paths[0].read_bytes() == paths[1].read_bytes()


def _hourly(n: int) -> np.ndarray:
    return np.datetime64("2024-01-01T00", "s") + (np.arange(n) * 3600).astype("timedelta64[s]")


def test_reindexing_counts_gaps_and_fills_from_the_past_only() -> None:
    ts = _hourly(100)
    y = np.arange(100, dtype=np.float64) + 10 * np.sin(2 * np.pi * np.arange(100) / 24)
    keep = np.ones(100, dtype=bool)
    keep[[40, 41, 42, 70]] = False
    freq = fd.resolve_frequency(ts[keep], None, "x.parquet")
    series = fd.regular_series(ts[keep], y[keep], freq, 24, "x.parquet")
    report = series.report
    assert (report["grid_points"], report["missing_points"], report["gaps"], report["longest_gap"]) == (100, 4, 2, 3)
    assert series.timestamps.dtype == ts.dtype and (series.timestamps == ts).all()
    assert series.observed.tolist() == keep.tolist()
    # Linear trend + exact daily season: the seasonal fill recovers the missing values.
    np.testing.assert_allclose(series.values, y, atol=1e-9)
    # Causal: what comes after a gap never changes how the gap was filled.
    later = y.copy()
    later[43:] += 500
    refilled = fd.regular_series(ts[keep], later[keep], freq, 24, "x.parquet")
    np.testing.assert_array_equal(refilled.values[:43], series.values[:43])


def test_reindexing_moves_off_grid_rows_and_merges_duplicates() -> None:
    ts = _hourly(50)
    ts[10] += np.timedelta64(600, "s")  # ten minutes late
    ts = np.insert(ts, 20, ts[20])  # a duplicate timestamp
    y = np.arange(51, dtype=np.float64)
    series = fd.regular_series(ts, y, fd.resolve_frequency(ts, None, "x"), 24, "x")
    assert (series.report["off_grid_rows"], series.report["merged_rows"], series.report["missing_points"]) == (1, 1, 0)
    assert series.values.size == 50 and series.values[20] == 20.5


def test_monthly_series_with_gaps_follows_the_calendar() -> None:
    months = pd.date_range("2015-01-01", periods=96, freq="MS").to_numpy()
    kept = np.delete(months, [5, 6, 40])
    freq = fd.resolve_frequency(kept, None, "x")
    assert freq.label == "MS" and freq.step is None
    series = fd.regular_series(kept, np.arange(kept.size, dtype=np.float64), freq, 12, "x")
    assert series.report["missing_points"] == 3 and (series.timestamps == months).all()


def test_a_frequency_that_empties_the_grid_is_refused_with_the_fix() -> None:
    ts = _hourly(30)
    with pytest.raises(
        ValueError, match=r"x\.parquet: reindexing to the config frequency '15min'.*Fix: set forecast\.frequency"
    ):
        fd.regular_series(ts, np.ones(30), fd.resolve_frequency(ts, "15min", "x.parquet"), 24, "x.parquet")


def test_frequency_field_is_checked_and_left_out_of_the_hash_when_unset(tmp_path) -> None:
    base = {
        "name": "f",
        "task": "forecasting",
        "dataset": {"generator": "demand_forecast"},
        "target": "y",
        "time_column": "ts",
    }
    with pytest.raises(ConfigError, match=r"(?s)f\.yaml.*forecast\.frequency.*not a pandas frequency"):
        parse_experiment(tmp_path / "f.yaml", {**base, "forecast": {"frequency": "fortnightly"}})
    plain = parse_experiment(tmp_path / "f.yaml", base).config_hash
    defaults = {"forecast": {"frequency": None, "target_mode": "change"}}
    assert parse_experiment(tmp_path / "f.yaml", {**base, **defaults}).config_hash == plain
    assert parse_experiment(tmp_path / "f.yaml", {**base, "forecast": {"frequency": "1h"}}).config_hash != plain
    assert parse_experiment(tmp_path / "f.yaml", {**base, "forecast": {"target_mode": "level"}}).config_hash != plain


def test_recurrent_champion_on_a_gappy_series_exports_and_passes_the_parity_gates(tmp_path) -> None:
    from mlgraph.core.drive import DriveLayout
    from mlgraph.deployment import gates, parity, quantize
    from tests.support.deployment import export_current, promote

    drive = DriveLayout.at(tmp_path)
    frame, _ = trending_gappy_series(n=500)
    config = forecasting_config(("gru",), epochs=2)
    train, test = frame.iloc[:400], frame.iloc[400:]
    for split, part in (("train", train), ("test", test)):
        path = drive.dataset_path(config.name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        part.to_parquet(path, index=False)
    series = fd.training_series(train, config)
    fit = fc.fit_forecaster("gru", series.values, series.timestamps, config.forecast, {}, 0, series.observed)
    model_file = fc.save_forecaster(fit, drive.champion_bundle(config.name, "1") / "gru.pt")
    promote(drive, config, "gru", model_file)

    outcome = export_current(drive, config)
    assert outcome.exported
    fp32 = gates.fp32_parity(drive, config)
    assert fp32.result.passed, fp32.result.metadata()
    assert gates.schema(drive, config).differences == ()
    int8 = quantize.quantize_champion(drive, config.name, outcome.report)
    assert int8.applicable
    gate = gates.int8_parity(drive, config, parity.Int8Budget())
    assert gate.applicable and gate.result.metric_loss["name"] == "rmse_relative_increase"
    print(
        f"gappy GRU champion: fp32 {fp32.result.metadata()} int8 passed={gate.result.passed} {gate.result.metric_loss}"
    )
