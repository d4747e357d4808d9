"""Demo generators: deterministic bytes, the documented schemas, block-size independence."""

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlgraph.core.hashing import sha256_file as sha
from mlgraph.data import generators


@pytest.mark.parametrize("name", sorted(generators.GENERATORS))
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_same_seed_same_bytes(tmp_path, name, suffix):
    a = generators.write_dataset(name, tmp_path / f"a{suffix}", rows=3000, seed=5)
    b = generators.write_dataset(name, tmp_path / f"b{suffix}", rows=3000, seed=5)
    c = generators.write_dataset(name, tmp_path / f"c{suffix}", rows=3000, seed=6)
    assert sha(a) == sha(b)
    assert sha(a) != sha(c)


def test_rows_are_a_prefix_across_sizes(monkeypatch):
    # A small file's rows are the first rows of a big one, whatever the block size splits.
    monkeypatch.setattr(generators, "BLOCK_ROWS", 1000)
    big = generators.generate("salary", rows=2500, seed=1)
    small = generators.generate("salary", rows=700, seed=1)
    assert big.slice(0, 700).equals(small)
    assert big.num_rows == 2500


def test_student_engagement_schema_and_imbalance():
    table = generators.generate("student_engagement", rows=20000, seed=11)
    assert table.column_names == [
        "student_country",
        "days_on_platform",
        "minutes_watched",
        "courses_started",
        "practice_exams_started",
        "practice_exams_passed",
        "minutes_spent_on_exams",
        "purchased",
    ]
    positive = pc.mean(table["purchased"]).as_py()
    assert 0.05 < positive < 0.25, positive
    passed = table["practice_exams_passed"].to_numpy()
    started = table["practice_exams_started"].to_numpy()
    assert (passed <= started).all()


def test_salary_has_numeric_categorical_and_gaps():
    table = generators.generate("salary", rows=5000, seed=7)
    assert "salary" in table.column_names
    assert table.schema.field("education").type == "string"
    assert table["hours_per_week"].null_count > 0
    assert pc.min(table["salary"]).as_py() > 0


def test_demand_forecast_is_hourly_with_seasonality(tmp_path):
    path = generators.write_dataset("demand_forecast", tmp_path / "d.parquet", seed=3)
    table = pq.read_table(path)
    assert table.num_rows == 16000
    assert 15 <= table.num_columns <= 19
    ts = table["timestamp"].to_numpy()
    assert (np.diff(ts) == np.timedelta64(1, "h")).all()
    frame = table.to_pandas()
    by_hour = frame.groupby("hour")["demand"].mean()
    by_weekend = frame.groupby("is_weekend")["demand"].mean()
    assert by_hour.max() - by_hour.min() > 20  # daily cycle
    assert by_weekend[False] - by_weekend[True] > 15  # weekly cycle
    first, last = frame["demand"].iloc[:2000].mean(), frame["demand"].iloc[-2000:].mean()
    assert last > first + 30  # trend


def test_unknown_generator_and_bad_rows():
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        generators.generate("nope", rows=10)
    with pytest.raises(ValueError, match="rows must be positive"):
        list(generators.iter_blocks("salary", 0, 1))
