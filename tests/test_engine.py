"""The streaming preprocessing engine without Dagster: operators, streaming == batch, memory, resume, errors."""

import json
import math
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.hashing import canonical_json
from mlgraph.data.generators import write_dataset
from mlgraph.preprocessing import engine, spill
from mlgraph.preprocessing.compute import compute_cap, threads_for
from mlgraph.preprocessing.fitting import GramAccumulator, StatisticsAccumulator, finish_selection
from mlgraph.preprocessing.normalized import Roles, normalize_table
from mlgraph.preprocessing.operators import encode_scale, feature_engineering, feature_selection, preprocess
from mlgraph.preprocessing.options import MB, EngineInputError, EngineOptions, MemoryLimitError

SALARY = EngineOptions(
    target="salary", column_types={"education": "categorical", "job_title": "categorical", "city": "categorical"}
)


def fit_of(table: pa.Table, options: EngineOptions):
    """The fit the engine's batch mode computes, step by step (statistics, then selection)."""
    roles = Roles.of(table.schema, options, "test")
    target_type = pa.float64() if options.task != "classification" else table.schema.field(options.target).type
    normalized = normalize_table(table, roles, options.task)
    stats = StatisticsAccumulator(roles, options, target_type, "test")
    stats.add(normalized)
    fit = stats.finish()
    gram = GramAccumulator(len(fit.features))
    block = feature_engineering(preprocess(table, fit), fit)
    gram.add([block.numeric[n] for n in fit.features])
    finish_selection(fit, gram)
    return fit


@pytest.fixture(scope="module")
def salary_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("salary")
    return {
        "csv": write_dataset("salary", directory / "salary.csv", rows=6000, seed=3),
        "parquet": write_dataset("salary", directory / "salary.parquet", rows=6000, seed=3),
    }


def test_preprocess_drops_missing_targets_imputes_and_clips_exactly():
    table = pa.table(
        {
            "x": [1.0, 2.0, 3.0, None, 100.0],
            "c": ["a", "b", "a", None, "z"],
            "y": [10.0, 20.0, 30.0, 40.0, None],
        }
    )
    options = EngineOptions(target="y", outlier_z=1.0)
    fit = fit_of(table, options)
    # Statistics come from the rows that have a target: x = 1, 2, 3 (one missing).
    assert fit.rows == 4 and fit.rows_dropped_missing_target == 1
    mean, std = 2.0, math.sqrt(2 / 3)
    assert fit.impute["x"] == pytest.approx(mean, abs=1e-15)
    assert fit.clip_low["x"] == pytest.approx(mean - std, abs=1e-15)
    assert fit.clip_high["x"] == pytest.approx(mean + std, abs=1e-15)
    assert fit.categories["c"] == ["a", "b"] and fit.category_fill["c"] == "a"

    block = preprocess(table, fit)
    assert block.rows == 4
    np.testing.assert_allclose(block.numeric["x"], [mean - std, 2.0, mean + std, 2.0], rtol=0, atol=1e-15)
    assert block.codes["c"].tolist() == [0, 1, 0, 0]  # the missing level takes the mode
    assert block.target.to_pylist() == [10.0, 20.0, 30.0, 40.0]


def test_feature_engineering_logs_ratios_and_calendar_features():
    hours = np.array(
        ["2023-01-02T10:00:00", "2023-01-07T23:00:00", "2023-03-15T00:00:00", "2023-01-03T05:00:00"],
        dtype="datetime64[s]",
    )
    table = pa.table(
        {
            "t": pa.array(hours, pa.timestamp("s")),
            "a": [0.0, 1.0, 2.0, 100.0],  # skewed and non-negative → log1p
            "b": [1.0, 3.0, 1.0, 3.0],
            "y": [1.0, 2.0, 3.0, 4.0],
        }
    )
    fit = fit_of(table, EngineOptions(target="y", time_column="t", outlier_z=10.0))
    assert fit.log_columns == ["a"] and fit.ratio_pairs == [["a", "b"]]
    block = feature_engineering(preprocess(table, fit), fit)
    np.testing.assert_array_equal(block.numeric["log1p_a"], np.log1p([0.0, 1.0, 2.0, 100.0]))
    np.testing.assert_array_equal(block.numeric["a_per_b"], [0.0, 0.25, 1.0, 25.0])
    assert block.numeric["t_hour"].tolist() == [10, 23, 0, 5]
    assert block.numeric["t_dow"].tolist() == [0, 5, 2, 1]  # Monday, Saturday, Wednesday, Tuesday
    assert block.numeric["t_month"].tolist() == [1, 1, 3, 1]
    np.testing.assert_allclose(block.numeric["t_hour_sin"], np.sin(2 * np.pi * np.array([10, 23, 0, 5]) / 24))


def test_selection_drops_constant_and_collinear_then_scales_and_one_hot_encodes():
    table = pa.table(
        {
            "x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "x_twice": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0],  # r = 1 with x
            "flat": [7.0] * 6,
            "noise": [0.3, -1.0, 0.5, 2.0, -0.7, 0.1],
            "c": ["p", "q", "p", "r", "q", "p"],
            "y": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0],
        }
    )
    fit = fit_of(table, EngineOptions(target="y", outlier_z=10.0, max_ratio_columns=0, skew_threshold=99))
    assert fit.dropped_constant == ["flat"]
    assert [d["feature"] for d in fit.dropped_correlated] == ["x_twice"]
    assert fit.dropped_correlated[0]["correlated_with"] == "x"
    assert fit.selected == ["x", "noise"]
    out = encode_scale(feature_selection(feature_engineering(preprocess(table, fit), fit), fit), fit)
    assert out.column_names == ["x", "noise", "c=p", "c=q", "c=r", "y"]
    x = out["x"].to_numpy()
    np.testing.assert_allclose([x.mean(), x.std()], [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(x, (np.arange(1, 7) - 3.5) / np.std(np.arange(1, 7)), atol=1e-12)
    assert out["c=p"].to_pylist() == [1, 0, 1, 0, 0, 1] and out["c=r"].to_pylist() == [0, 0, 0, 1, 0, 0]
    assert out.schema.field("c=p").type == pa.uint8()


def test_rare_levels_go_to_other_and_unseen_levels_encode_as_zeros():
    table = pa.table({"c": ["a", "a", "a", "b", "b", "c", "d"], "v": [1.0, 2, 3, 4, 5, 6, 7], "y": [0.0] * 7})
    fit = fit_of(table, EngineOptions(target="y", max_categories=2, max_ratio_columns=0))
    assert fit.categories["c"] == ["a", "b"] and fit.category_other["c"]
    out = engine.transform_table(pa.table({"c": ["c", "a", "zzz"], "v": [1.0, 2, 3], "y": [0.0] * 3}), fit)
    assert [out[f"c={v}"].to_pylist() for v in ("a", "b", "__other__")] == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]


def test_fit_round_trips_through_json_exactly(salary_files):
    result = engine.run_batch(salary_files["parquet"], SALARY)
    restored = engine.Fit.from_json(json.loads(canonical_json(result.fit.to_json())))
    assert restored.fit_id == result.fit.fit_id
    again = engine.transform_table(pq.read_table(salary_files["parquet"]), restored)
    assert again.equals(result.table)


@pytest.mark.parametrize("kind", ["csv", "parquet"])
@pytest.mark.parametrize("chunk_size", [1000, 2333, 6000, 50_000])
def test_streaming_equals_batch_for_demo_data(salary_files, kind, chunk_size):
    batch = engine.run_batch(salary_files[kind], SALARY)
    streaming = engine.run_streaming(salary_files[kind], SALARY, chunk_size=chunk_size, collect=True)
    report = engine.compare_features(streaming.table, batch.table)
    assert report["passed"], report
    assert streaming.chunks == math.ceil(6000 / chunk_size)
    assert streaming.table.num_rows == 6000 and len(streaming.table.column_names) > 20


@st.composite
def frames(draw):
    rows = draw(st.integers(min_value=1, max_value=120))
    values = st.one_of(st.none(), st.integers(min_value=-50, max_value=500).map(lambda v: v / 4))
    columns = {
        "a": draw(st.lists(values, min_size=rows, max_size=rows)),
        "b": draw(st.lists(st.integers(min_value=0, max_value=1000).map(float), min_size=rows, max_size=rows)),
        "c": draw(st.lists(st.one_of(st.none(), st.sampled_from(["x", "y", "z", "w"])), min_size=rows, max_size=rows)),
        "flag": draw(st.lists(st.booleans(), min_size=rows, max_size=rows)),
    }
    target = draw(st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)), min_size=rows, max_size=rows))
    if all(t is None for t in target):
        target[0] = 1.0
    columns["y"] = target
    chunk_size = draw(st.integers(min_value=1, max_value=rows + 5))
    return pa.table(columns), chunk_size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_streaming_equals_batch_property(case):
    table, chunk_size = case
    options = EngineOptions(target="y", max_categories=3, outlier_z=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.parquet"
        pq.write_table(table, path, row_group_size=17)  # row groups that do not line up with chunks
        batch = engine.run_batch(path, options)
        streaming = engine.run_streaming(path, options, chunk_size=chunk_size, collect=True)
    report = engine.compare_features(streaming.table, batch.table)
    assert report["passed"], report
    assert streaming.rows_out == sum(t is not None for t in table["y"].to_pylist())


# One thread: no read-ahead thread allocates while a chunk is measured, so a chunk's measured
# memory is the same from run to run and a limit set from one run holds for the next.
ONE_THREAD = 1e-6


def test_memory_limit_halves_oversized_chunks_and_retries(salary_files):
    free = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=6000, compute_limit=ONE_THREAD)
    biggest = max(r.memory_mb for r in free.records)
    limit = 0.7 * biggest
    limited = engine.run_streaming(
        salary_files["parquet"], SALARY, chunk_size=6000, memory_limit_mb=limit, compute_limit=ONE_THREAD, collect=True
    )
    exceeded = [r for r in limited.records if r.memory_exceeded]
    accepted = [r for r in limited.records if not r.memory_exceeded]
    # Calibrated on two dry runs, the engine halves chunks that would exceed before reading them.
    assert exceeded and all(r.memory_mb > limit for r in exceeded)
    assert any(r.predicted for r in exceeded)
    assert all(r.memory_mb <= limit for r in accepted)
    assert any(r.retries >= 1 for r in accepted)
    assert limited.final_chunk_size < 6000
    assert {r.chunk_size_used for r in limited.transform_records if not r.memory_exceeded} == {limited.final_chunk_size}
    # Halving changes the chunking, never the features.
    assert engine.compare_features(limited.table, engine.run_batch(salary_files["parquet"], SALARY).table)["passed"]


def test_reactive_check_catches_what_no_prediction_covers(salary_files):
    # Chunks of ≤ 2048 rows are not calibrated: the only guard is measuring after the chunk ran.
    free = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=2000, compute_limit=ONE_THREAD)
    limit = 0.75 * max(r.memory_mb for r in free.records)
    limited = engine.run_streaming(
        salary_files["parquet"], SALARY, chunk_size=2000, memory_limit_mb=limit, compute_limit=ONE_THREAD
    )
    exceeded = [r for r in limited.records if r.memory_exceeded]
    assert exceeded and not any(r.predicted for r in exceeded)
    assert all(r.input_bytes > 0 and r.memory_mb > limit for r in exceeded)  # they really ran
    assert all(r.memory_mb <= limit for r in limited.records if not r.memory_exceeded)


def test_working_memory_counts_at_least_the_chunk_input(salary_files):
    # The bounded, machine-independent part of "bigger chunks need more memory" (the measured
    # ordering is in benchmarks/streaming.py): every chunk's memory includes its input.
    small = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=1000)
    large = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=6000)
    for result in (small, large):
        assert all(r.memory_mb >= round(r.input_bytes / MB, 4) for r in result.records)
    assert max(r.input_bytes for r in large.records) > max(r.input_bytes for r in small.records)
    assert large.peak_memory_mb >= max(r.input_bytes for r in large.records) / MB - 1e-4


def test_memory_limit_below_the_floor_fails_clearly(salary_files, tmp_path):
    out = tmp_path / "features.parquet"
    with pytest.raises(
        MemoryLimitError, match=r"salary\.parquet: .*chunk 0 of 500 rows .* Fix: raise the memory limit"
    ):
        engine.run_streaming(
            salary_files["parquet"], SALARY, chunk_size=4000, memory_limit_mb=0.001, min_chunk_size=500, output=out
        )
    assert not out.exists()


class Crash(RuntimeError):
    pass


def crash_after_third(record):
    if record.chunk_id == 2:
        raise Crash("injected failure after chunk 2")


def test_crash_then_resume_gives_identical_bytes(salary_files, tmp_path):
    clean = tmp_path / "clean.parquet"
    first = engine.run_streaming(
        salary_files["csv"], SALARY, chunk_size=1000, spill_dir=tmp_path / "spill_a", output=clean
    )
    assert first.resume == "fresh" and not first.started_over

    resumed_out = tmp_path / "resumed.parquet"
    spill_dir = tmp_path / "spill_b"
    with pytest.raises(Crash):
        engine.run_streaming(
            salary_files["csv"],
            SALARY,
            chunk_size=1000,
            spill_dir=spill_dir,
            output=resumed_out,
            on_chunk=crash_after_third,
        )
    manifest = json.loads((spill_dir / spill.MANIFEST).read_text())
    assert not manifest["complete"] and len(manifest["chunks"]) == 3
    assert not resumed_out.exists()  # nothing partial looks complete
    result = engine.run_streaming(salary_files["csv"], SALARY, chunk_size=1000, spill_dir=spill_dir, output=resumed_out)
    assert result.resumed_chunks == 3 and result.chunks == 6
    assert result.resume == "resumed after 3 chunk(s)" and not result.started_over
    assert resumed_out.read_bytes() == clean.read_bytes()
    assert json.loads((spill_dir / spill.MANIFEST).read_text())["complete"]
    assert not (spill_dir / spill.SPOOL_FILE).exists()


def _truncate(text: str) -> str:
    return text[: len(text) // 2]


def _drop_chunks(text: str) -> str:
    data = json.loads(text)
    del data["chunks"]
    return json.dumps(data)


def _other_fit(text: str) -> str:
    return json.dumps({**json.loads(text), "fit_id": "0" * 64})


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (_truncate, r"manifest\.json is not readable JSON"),
        (_drop_chunks, r"manifest\.json: missing chunks"),
        (_other_fit, r"manifest\.json names fit 000000000000, fit\.json holds [0-9a-f]{12}"),
    ],
)
def test_corrupt_manifest_is_reported_then_the_run_starts_over(salary_files, tmp_path, caplog, corrupt, reason):
    clean = tmp_path / "clean.parquet"
    engine.run_streaming(salary_files["csv"], SALARY, chunk_size=1000, output=clean)
    spill_dir, out = tmp_path / "spill", tmp_path / "features.parquet"
    with pytest.raises(Crash):
        engine.run_streaming(
            salary_files["csv"], SALARY, chunk_size=1000, spill_dir=spill_dir, output=out, on_chunk=crash_after_third
        )
    manifest = spill_dir / spill.MANIFEST
    manifest.write_text(corrupt(manifest.read_text()))

    with caplog.at_level("WARNING", logger=engine.__name__):
        result = engine.run_streaming(salary_files["csv"], SALARY, chunk_size=1000, spill_dir=spill_dir, output=out)
    assert result.started_over and result.resumed_chunks == 0 and result.chunks == 6
    assert re.fullmatch(rf"manifest corrupt \({reason}.*\), started over", result.resume), result.resume
    assert result.resume in caplog.text  # the run's log says so too
    assert out.read_bytes() == clean.read_bytes()
    assert json.loads(manifest.read_text())["complete"]


def test_killed_process_resumes_from_the_manifest(salary_files, tmp_path, monkeypatch):
    """A hard kill (os._exit: no cleanup runs) mid-run, then a resume in a fresh process."""
    spill_dir, out = tmp_path / "spill", tmp_path / "features.parquet"
    script = textwrap.dedent(f"""
        import os, sys
        from mlgraph.preprocessing import engine
        SALARY = engine.EngineOptions(target="salary")
        kill_at = int(sys.argv[1])
        def maybe_die(record):
            if record.chunk_id == kill_at:
                os._exit(17)
        r = engine.run_streaming({str(salary_files["parquet"])!r}, SALARY, chunk_size=1500,
                                 spill_dir={str(spill_dir)!r}, output={str(out)!r}, on_chunk=maybe_die)
        print(r.resumed_chunks)
    """)
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT))
    killed = subprocess.run(
        [sys.executable, "-c", script, "1"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == 17, killed.stderr
    assert not out.exists()
    resumed = subprocess.run(
        [sys.executable, "-c", script, "-1"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "2"
    reference = tmp_path / "reference.parquet"
    engine.run_streaming(
        salary_files["parquet"],
        EngineOptions(target="salary"),
        chunk_size=1500,
        spill_dir=tmp_path / "ref",
        output=reference,
    )
    assert out.read_bytes() == reference.read_bytes()


def test_records_and_operator_profile(salary_files):
    result = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=2500)
    transform = result.transform_records
    assert [r.chunk_id for r in transform] == [0, 1, 2]
    assert [r.rows for r in transform] == [2500, 2500, 1000]
    expected = {
        "chunk_id",
        "rows",
        "input_bytes",
        "chunk_size_used",
        "preprocess_s",
        "feature_engineering_s",
        "feature_selection_s",
        "encode_scale_s",
        "memory_mb",
        "memory_exceeded",
        "retries",
        "spilled",
    }
    assert expected <= set(transform[0].to_json())
    assert all(r.input_bytes > 0 and r.memory_mb > 0 for r in transform)
    profile = engine.operator_profile_rows(result.records)
    assert list(profile[0]) == [
        "chunk_id",
        "preprocess_s",
        "feature_engineering_s",
        "feature_selection_s",
        "encode_scale_s",
        "estimated_input_bandwidth_mb_s",
        "input_bytes",
    ]
    assert all(p["estimated_input_bandwidth_mb_s"] > 0 for p in profile)


def test_batch_and_streaming_records_carry_the_same_fields(salary_files):
    batch = engine.run_batch(salary_files["parquet"], SALARY, collect=False)
    streaming = engine.run_streaming(salary_files["parquet"], SALARY, chunk_size=2500)
    assert [r.stage for r in batch.records] == ["batch"]
    assert set(batch.records[0].to_json()) == set(streaming.records[0].to_json())
    assert batch.records[0].memory_budget_mb is None and batch.records[0].predicted is False


def test_compute_cap_sets_and_restores_thread_pools():
    from threadpoolctl import threadpool_info

    assert threads_for(0.5, cores=2) == 1 and threads_for(1.0, cores=2) == 2 and threads_for(0.3, cores=10) == 3
    assert threads_for(0.01, cores=2) == 1
    before_cpu, before_io = pa.cpu_count(), pa.io_thread_count()
    with compute_cap(0.5, cores=4) as threads:
        assert threads == 2
        assert pa.cpu_count() == 2 and pa.io_thread_count() == 2
        assert all(pool["num_threads"] <= 2 for pool in threadpool_info())
    assert (pa.cpu_count(), pa.io_thread_count()) == (before_cpu, before_io)
    with pytest.raises(ValueError, match="compute_limit"):
        threads_for(1.5)


# --- bad input -------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_ragged_csv_row_names_the_line(tmp_path):
    path = write(tmp_path / "ragged.csv", "a,b,y\n1,2,3\n4,5,6\n7,8\n9,10,11\n")
    out = tmp_path / "out.parquet"
    with pytest.raises(EngineInputError, match=r"ragged\.csv: line 4: expected 3 fields \(a, b, y\), found 2\. Fix:"):
        engine.run_streaming(path, EngineOptions(target="y"), chunk_size=2, output=out)
    assert not out.exists()


def test_text_in_a_declared_numeric_column_names_line_and_column(tmp_path):
    rows = "".join(f"{i},{i * 2},{i}\n" for i in range(50)) + "51,abc,3\n"
    path = write(tmp_path / "typed.csv", "a,b,y\n" + rows)
    options = EngineOptions(target="y", column_types={"b": "numeric"})
    with pytest.raises(EngineInputError, match=r"typed\.csv: line 52, column 'b': 'abc' is not a number\. Fix:"):
        engine.run_streaming(path, options, chunk_size=10)


def test_text_in_an_undeclared_numeric_column_is_not_one_hot_encoded(tmp_path):
    rows = "".join(f"{i},{i * 2},{i}\n" for i in range(40)) + "41,n/a?,3\n"
    path = write(tmp_path / "stray.csv", "a,b,y\n" + rows)
    with pytest.raises(EngineInputError, match=r"stray\.csv: line 42, column 'b': 'n/a\?' is not a number"):
        engine.run_batch(path, EngineOptions(target="y"))


def test_empty_header_only_and_missing_target(tmp_path):
    with pytest.raises(EngineInputError, match=r"empty\.csv: the file is empty\. Fix:"):
        engine.run_streaming(write(tmp_path / "empty.csv", ""), EngineOptions(target="y"), chunk_size=10)
    with pytest.raises(EngineInputError, match=r"header\.csv: no data rows\. Fix:"):
        engine.run_streaming(write(tmp_path / "header.csv", "a,y\n"), EngineOptions(target="y"), chunk_size=10)
    with pytest.raises(EngineInputError, match=r"notarget\.csv: target column 'y' not found \(columns: a, b\)\. Fix:"):
        engine.run_streaming(write(tmp_path / "notarget.csv", "a,b\n1,2\n"), EngineOptions(target="y"), chunk_size=10)
    with pytest.raises(EngineInputError, match=r"nulltarget\.csv: every row's target 'y' is missing"):
        engine.run_batch(write(tmp_path / "nulltarget.csv", "a,y\n1,\n2,\n"), EngineOptions(target="y"))
