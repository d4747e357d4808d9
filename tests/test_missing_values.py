"""Data as users bring it (issue 10): missing cells are nulls in every column type, CSV and parquet alike,
row-id columns are flagged, and `exclude_columns` keeps columns out of every model."""

from __future__ import annotations

import json

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.experiment import load_experiment_file
from mlgraph.data import loading
from mlgraph.data.quality import id_like_columns
from mlgraph.data.splitting import split_dataset
from pipeline_assets.definitions import defs

DATA_KEYS = [dg.AssetKey(k) for k in ("raw_dataset", "dataset_fingerprint", "train_test_split")]
MISSING_SPELLINGS = ["", "NA", "N/A", "NaN", "null", "None", "nan", "<NA>"]


def penguins_csv(rows: int = 80) -> tuple[str, dict[str, int]]:
    """An R-style export: a `rownames` column, and gaps spelled every usual way in every column type.

    Returns the CSV text and, per column, how many of its cells are missing.
    """
    rng = np.random.default_rng(0)
    lines = ["rownames,bill_length_mm,flipper_length_mm,island,sex"]
    missing = {"bill_length_mm": 0, "flipper_length_mm": 0, "island": 0, "sex": 0}
    for i in range(rows):
        sex = "female" if i % 2 else "male"
        bill = f"{(40.0 if sex == 'female' else 46.0) + rng.normal(0, 1.5):.1f}"
        flipper = str(int(190 + (10 if sex == "male" else 0) + rng.integers(0, 6)))
        island = ["Biscoe", "Dream", "Torgersen"][i % 3]
        cells = {"bill_length_mm": bill, "flipper_length_mm": flipper, "island": island, "sex": sex}
        for offset, column in enumerate(cells):
            if (i + offset) % 9 == 4:  # each column gets gaps, spelled in turn as every missing spelling
                cells[column] = MISSING_SPELLINGS[(i // 9 + offset) % len(MISSING_SPELLINGS)]
                missing[column] += 1
        lines.append(f"{i + 1},{cells['bill_length_mm']},{cells['flipper_length_mm']},{cells['island']},{cells['sex']}")
    return "\n".join(lines) + "\n", missing


def write_experiment(config_dir, extra: str = "", models: str = "") -> tuple[str, dict[str, int]]:
    text, missing = penguins_csv()
    data_dir = config_dir / "experiments" / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "penguins.csv").write_text(text)
    (config_dir / "experiments" / "penguins.yaml").write_text(
        "name: penguins\ntask: classification\ndataset:\n  path: data/penguins.csv\ntarget: sex\n"
        "split:\n  test_size: 0.25\ncv_folds: 2\n" + models + extra
    )
    return text, missing


def test_pandas_missing_spellings_are_the_default():
    parsers = pytest.importorskip("pandas._libs.parsers")
    assert loading.PANDAS_NA_VALUES == parsers.STR_NA_VALUES
    assert loading.missing_spellings(["-999"]) == ["", "-999"]  # the empty cell is always missing


def test_csv_and_parquet_read_missing_cells_as_nulls(tmp_path):
    text, missing = penguins_csv()
    csv_path = tmp_path / "penguins.csv"
    csv_path.write_text(text)
    table, read_as_missing = loading.read_source_file(csv_path)
    assert {name: table[name].null_count for name in missing} == missing
    assert read_as_missing == sum(missing.values())
    assert pa.types.is_floating(table.schema.field("bill_length_mm").type)
    assert pa.types.is_integer(table.schema.field("flipper_length_mm").type)  # "None" did not make it text
    assert set(table["sex"].drop_null().to_pylist()) == {"female", "male"}

    # The same data as parquet written by a converter that kept the spellings as text.
    as_text = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    parquet_path = tmp_path / "penguins.parquet"
    as_text.to_parquet(parquet_path)
    table, converted = loading.read_source_file(parquet_path)
    assert {name: table[name].null_count for name in missing} == missing
    assert converted == sum(missing.values())

    # A dataset whose values include "NA" (Namibia) opts out; its own spelling of a gap opts in.
    (tmp_path / "countries.csv").write_text("country,score\nNA,1\nDE,-999\nFR,3\n")
    table, _ = loading.read_source_file(tmp_path / "countries.csv", na_values=["-999"])
    assert table["country"].to_pylist() == ["NA", "DE", "FR"]
    assert table["score"].to_pylist() == [1, None, 3]


def test_string_target_with_gaps_trains_binary(instance, shared_drive, config_dir):
    _, missing = write_experiment(
        config_dir,
        extra="exclude_columns: [rownames]\n",
        models="models:\n  - family: logistic_regression\n  - family: decision_tree\n",
    )
    instance.add_dynamic_partitions("experiment", ["penguins"])
    summary = materialize_experiments(
        defs, instance, ["penguins"], selection=[*DATA_KEYS, dg.AssetKey("candidate_models")], echo=lambda _: None
    )
    assert summary.failed == []

    directory = shared_drive / "datasets" / "penguins"
    raw = pq.read_table(directory / "raw.parquet")
    assert {name: raw[name].null_count for name in missing} == missing
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["rows_dropped_missing_target"] == missing["sex"]
    assert meta["missing_cells"] == sum(missing.values())
    assert meta["excluded_columns"] == ["rownames"]
    train = pq.read_table(directory / "train.parquet").to_pandas()
    test = pq.read_table(directory / "test.parquet").to_pandas()
    assert len(train) + len(test) == 80 - missing["sex"]
    assert set(train["sex"]) == {"female", "male"}
    assert "rownames" not in train.columns and "rownames" not in test.columns

    import joblib

    from mlgraph.preprocessing.engine import EngineOptions
    from mlgraph.preprocessing.normalized import Roles

    config = load_experiment_file(config_dir / "experiments" / "penguins.yaml").config
    for family in ("logistic_regression", "decision_tree"):
        model = joblib.load(shared_drive / "models" / "penguins" / f"{family}.joblib")
        features = list(model.named_steps["preprocess"].feature_names_in_)
        assert features == ["bill_length_mm", "flipper_length_mm", "island"], family
        encoder = model.named_steps["preprocess"].named_transformers_["categorical"].named_steps["onehot"]
        assert "" not in encoder.categories_[0] and "NA" not in encoder.categories_[0]
    roles = Roles.of(pq.read_schema(directory / "train.parquet"), EngineOptions.from_config(config), "train.parquet")
    assert "rownames" not in {*roles.numeric, *roles.categorical}


def _id_check(instance, name: str = "penguins") -> dg.AssetCheckEvaluation:
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, partition_key=name, asset_selection=DATA_KEYS[:1], raise_on_error=True
    )
    return {e.check_name: e for e in result.get_asset_check_evaluations()}["raw_dataset_id_columns"]


def test_row_id_column_warns_until_excluded(instance, shared_drive, config_dir):
    write_experiment(config_dir)
    instance.add_dynamic_partitions("experiment", ["penguins"])
    flagged = _id_check(instance)
    assert not flagged.passed and flagged.severity == dg.AssetCheckSeverity.WARN
    assert flagged.metadata["id_like_columns"].value == "rownames"
    fix = flagged.metadata["fix"].value
    assert 'exclude_columns: ["rownames"]' in fix and "penguins.yaml" in fix

    write_experiment(config_dir, extra="exclude_columns: [rownames]\n")
    passed = _id_check(instance)
    assert passed.passed and passed.metadata["excluded_columns"].value == "rownames"


def test_excluded_column_must_exist(instance, shared_drive, config_dir):
    write_experiment(config_dir, extra="exclude_columns: [row_names]\n")
    instance.add_dynamic_partitions("experiment", ["penguins"])
    job = defs.resolve_implicit_global_asset_job_def()
    with pytest.raises(Exception, match=r"(?s)\['row_names'\] under 'exclude_columns' in .*penguins\.yaml not found"):
        job.execute_in_process(instance=instance, partition_key="penguins", asset_selection=DATA_KEYS[:1])


@pytest.mark.parametrize(
    ("values", "flagged"),
    [
        (list(range(1, 31)), True),  # R's rownames
        ([float(v) for v in range(100, 70, -1)], True),  # decreasing, stored as floats
        ([str(v) for v in range(5, 35)], True),  # digits stored as text
        ([1, 2, *range(2, 30)], False),  # a repeat: not unique
        ([*range(1, 30), None], False),  # a gap: not an id
        ([v + 0.5 for v in range(30)], False),  # not whole numbers
        (list(np.random.default_rng(1).permutation(30)), False),  # unique but unordered
        (list(range(1, 11)), False),  # too few rows to tell
    ],
)
def test_id_like_columns(values, flagged):
    table = pa.table({"candidate": values, "y": [0, 1] * (len(values) // 2)})
    assert id_like_columns(table, skip={"y"}) == (["candidate"] if flagged else [])


def test_split_drops_excluded_columns(tmp_path):
    frame = pd.DataFrame({"id": range(40), "x": np.arange(40.0), "y": [0, 1] * 20})
    path = tmp_path / "experiments" / "tiny.yaml"
    path.parent.mkdir()
    path.write_text("name: tiny\ntask: classification\ndataset:\n  path: t.csv\ntarget: y\nexclude_columns: [id]\n")
    result = split_dataset(frame, load_experiment_file(path).config)
    assert list(result.train.columns) == ["x", "y"] and list(result.test.columns) == ["x", "y"]
