"""The distribution drift tests (mlgraph/monitoring/distribution.py, issue 22): each on a shifted and an unshifted
sample, their agreement with scipy on the raw samples, the noise floors, JS for categoricals, `drift.tests`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp, wasserstein_distance

from mlgraph.core.experiment import DRIFT_TESTS, ConfigError, DriftConfig, load_experiment_file
from mlgraph.monitoring import distribution, drift
from mlgraph.monitoring.baseline import categorical_stats, numeric_stats

DEFAULTS = DriftConfig()
EVERY_TEST = DriftConfig(tests=list(DRIFT_TESTS))
TRAINING = np.random.default_rng(0).normal(10, 2, 20_000)
STATS = numeric_stats(pd.Series(TRAINING))


def window(rows: int = 3000, mean: float = 10, std: float = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, rows)


def judged(values: np.ndarray, stats=STATS, config: DriftConfig = EVERY_TEST) -> dict:
    return drift.numeric_drift(values, stats, config)


def flags(result: dict) -> set[str]:
    return {name for name, test in result["tests"].items() if test["flagged"]}


def test_the_sketch_summarizes_without_listing_rows() -> None:
    assert len(STATS["sketch"]) == distribution.SKETCH_POINTS and STATS["sketch"] == sorted(STATS["sketch"])
    assert STATS["sketch"][0] == TRAINING.min() and STATS["sketch"][-1] == TRAINING.max()
    small = numeric_stats(pd.Series(np.arange(55.0)))
    assert len(small["sketch"]) == 6  # one point per ten values at most: not the column value by value
    assert distribution.sketch_points(20) == 1001 and distribution.sketch_points(10_000) == 101


def test_an_unshifted_sample_flags_no_test() -> None:
    result = judged(window())
    assert flags(result) == set() and not result["drift"]
    tests = result["tests"]
    assert tests["wasserstein"]["statistic"] < 0.1 and tests["psi"]["statistic"] < 0.05
    assert tests["ks"]["p_value"] > 0.05 and abs(tests["z"]["statistic"]) < 0.2


def test_spread_tripled_around_the_same_mean_is_missed_by_z_and_seen_by_every_distribution_test() -> None:
    result = judged(window(std=6))
    tests = result["tests"]
    assert not tests["z"]["flagged"] and abs(tests["z"]["statistic"]) < 0.2
    assert flags(result) == {"ks", "wasserstein", "psi"} and result["drift"]
    # N(0, 3) against N(0, 1): W1 = 2 E|Z| = 1.6 σ; KS D = max |Φ(x) - Φ(x/3)| = 0.25.
    assert tests["wasserstein"]["statistic"] == pytest.approx(1.6, abs=0.08)
    assert tests["ks"]["statistic"] == pytest.approx(0.25, abs=0.03) and tests["ks"]["p_value"] < 1e-50
    assert tests["psi"]["statistic"] > 0.5
    assert not judged(window(std=6), config=DriftConfig(tests=["z"]))["drift"]  # the mean rule alone: no drift


def test_a_moved_mean_under_the_z_threshold_is_seen_by_the_distribution_tests() -> None:
    result = judged(window(mean=11))  # +0.5 σ: z = 0.5
    assert flags(result) == {"ks", "wasserstein", "psi"}
    assert result["tests"]["wasserstein"]["statistic"] == pytest.approx(0.5, abs=0.05)


def test_statistics_agree_with_scipy_on_the_raw_samples() -> None:
    for values in (window(), window(std=6), window(mean=11, rows=500)):
        tests = judged(values)["tests"]
        exact = ks_2samp(values, TRAINING)
        # The sketch has 1,001 points: D within 1/1000 of the two-sample statistic on the rows themselves.
        assert tests["ks"]["statistic"] == pytest.approx(exact.statistic, abs=1.5e-3)
        assert tests["ks"]["p_value"] == pytest.approx(exact.pvalue, rel=0.5, abs=0.02)
        w1 = wasserstein_distance(values, TRAINING) / TRAINING.std()
        assert tests["wasserstein"]["statistic"] == pytest.approx(w1, rel=0.02, abs=2e-3)


def test_psi_over_training_deciles_and_a_window_beyond_the_training_range() -> None:
    sketch = distribution.Sketch(STATS["sketch"], STATS["count"])
    same, bins = distribution.psi(np.sort(window()), sketch)
    assert bins == 10 and same < 0.02
    beyond, _ = distribution.psi(np.sort(window(mean=100)), sketch)  # every value in the open top bin
    # 0.9 of the mass left its bins (share 0.1 → 1e-4 each) and the top bin holds it all: finite, huge.
    assert np.isfinite(beyond) and beyond > 5


def test_a_discrete_feature_is_judged_on_its_atoms() -> None:
    rng = np.random.default_rng(4)
    stats = numeric_stats(pd.Series(rng.choice([0.0, 1.0], 20_000, p=[0.7, 0.3])))
    steady = judged(rng.choice([0.0, 1.0], 3000, p=[0.7, 0.3]), stats)
    assert flags(steady) == set() and steady["tests"]["psi"]["bins"] <= 4  # tied decile edges merged
    assert steady["tests"]["ks"]["statistic"] < 0.03
    moved = judged(rng.choice([0.0, 1.0], 3000, p=[0.3, 0.7]), stats)
    assert flags(moved) == {"ks", "wasserstein", "psi"}
    assert moved["tests"]["ks"]["statistic"] == pytest.approx(0.4, abs=0.03)  # the CDF's step at 0: 0.7 → 0.3
    assert moved["tests"]["psi"]["statistic"] == pytest.approx(2 * 0.4 * np.log(0.7 / 0.3), abs=0.1)


def test_noise_floors_keep_small_windows_quiet_and_name_their_threshold() -> None:
    # 200 predictions of the training distribution: W1 alone is often above 0.1 σ here (sampling noise).
    results = [judged(window(rows=200, seed=seed)) for seed in range(40)]
    assert any(r["tests"]["wasserstein"]["statistic"] >= 0.1 for r in results)
    assert not any(r["tests"]["wasserstein"]["flagged"] or r["tests"]["psi"]["flagged"] for r in results)
    test = results[0]["tests"]["wasserstein"]
    assert test["threshold"] == 0.1 and test["noise_floor"] == pytest.approx(4 / np.sqrt(200 * 20_000 / 20_200))
    large = judged(window(rows=20_000))["tests"]["wasserstein"]
    assert large["noise_floor"] < 0.1 and not large["flagged"]  # the configured 0.1 governs from ~1,600 on


def test_constant_training_feature_and_empty_window() -> None:
    constant = numeric_stats(pd.Series(np.full(1000, 3.0)))
    moved = judged(np.full(500, 4.0), constant)
    assert moved["tests"]["wasserstein"]["note"] == "constant in training" and moved["tests"]["z"]["flagged"]
    assert moved["tests"]["psi"]["flagged"] and moved["tests"]["ks"]["statistic"] == 1.0
    assert not judged(np.full(500, 3.0), constant)["drift"]
    empty = judged(np.full(10, np.nan))
    assert not empty["drift"] and empty["tests"]["ks"]["note"] == "no values to compare"


def test_jensen_shannon_on_categoricals() -> None:
    rng = np.random.default_rng(5)
    stats = categorical_stats(pd.Series(rng.choice(["a", "b", "c"], 20_000, p=[0.5, 0.3, 0.2])))
    same = drift.categorical_drift(Counter(rng.choice(["a", "b", "c"], 3000, p=[0.5, 0.3, 0.2])), stats, DEFAULTS)
    assert not same["drift"] and same["tests"]["jensen_shannon"]["statistic"] < 0.03
    # A moved share chi-square would also catch; JS alone decides here.
    js_only = DriftConfig(tests=["jensen_shannon"])
    moved = drift.categorical_drift(Counter(rng.choice(["a", "b", "c"], 3000, p=[0.2, 0.3, 0.5])), stats, js_only)
    assert moved["flagged_by"] == ["jensen_shannon"] and moved["tests"]["jensen_shannon"]["statistic"] > 0.2
    assert not moved["tests"]["chi2"]["decides"] and moved["tests"]["chi2"]["flagged"]
    # Unseen categories are pooled with the training's "other" (here none): they move the distance too.
    unseen = drift.categorical_drift(Counter({"a": 500, "b": 300, "zzz": 200}), stats, js_only)
    assert unseen["drift"] and unseen["tests"]["jensen_shannon"]["statistic"] > 0.25


def test_jensen_shannon_noise_floor_with_many_categories() -> None:
    rng = np.random.default_rng(6)
    names = [f"c{i}" for i in range(150)]
    stats = categorical_stats(pd.Series(rng.choice(names, 30_000)))
    small = drift.categorical_drift(Counter(rng.choice(names, 200)), stats, DEFAULTS)["tests"]["jensen_shannon"]
    # 200 draws over 150 categories sit ~0.3 apart from the training shares by sampling alone.
    assert small["statistic"] > 0.2 and small["noise_floor"] > small["statistic"] and not small["flagged"]


def test_only_the_chosen_tests_decide() -> None:
    shifted = window(std=6)
    ks_only = judged(shifted, config=DriftConfig(tests=["ks"]))
    assert ks_only["flagged_by"] == ["ks"]
    assert [n for n, t in ks_only["tests"].items() if t["decides"]] == ["ks"]
    assert ks_only["tests"]["wasserstein"]["flagged"]  # computed and reported all the same


def test_unknown_test_names_fail_naming_the_field_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown test\(s\) 'kolmogorov'.*drift\.tests.*wasserstein, psi"):
        DriftConfig(tests=["z", "kolmogorov"])
    with pytest.raises(ValueError, match=r"no test\. Fix: set drift\.tests"):
        DriftConfig(tests=[])
    assert DriftConfig(tests=["psi", "z", "psi"]).tests == ["psi", "z"]
    path = tmp_path / "shop.yaml"
    path.write_text(
        "name: shop\ntask: classification\ntarget: y\ndataset: {generator: student_engagement}\n"
        "drift: {tests: [z, wasserstien]}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_experiment_file(path)
    message = str(error.value)
    assert str(path) in message and "drift.tests" in message and "'wasserstien'" in message
    assert ", ".join(DRIFT_TESTS) in message
