"""Data assets materialized in-process on a temporary shared drive, checked by content."""

import json
import textwrap

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from mlgraph.cli.staging import materialize_experiments
from pipeline_assets.definitions import defs
from tests.support.fixtures import shrink_experiment

DATA_KEYS = [dg.AssetKey(k) for k in ("raw_dataset", "dataset_fingerprint", "train_test_split")]


def materialize(instance, experiments, raise_on_error=True):
    return materialize_experiments(
        defs, instance, experiments, selection=DATA_KEYS, echo=lambda _: None, raise_on_error=raise_on_error
    )


def stale_status(instance, key: str, partition: str) -> StaleStatus:
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance, graph, loading_context=view).get_status(dg.AssetKey(key), partition)


@pytest.fixture
def small_demo(config_dir):
    shrink_experiment(config_dir, "salary", 3000)
    shrink_experiment(config_dir, "student_engagement", 4000)
    shrink_experiment(config_dir, "demand_forecast", 2000)
    return config_dir


def test_demo_data_assets_content(instance, shared_drive, small_demo):
    summary = materialize(instance, ["salary", "student_engagement", "demand_forecast"])
    assert summary.failed == []

    salary = shared_drive / "datasets" / "salary"
    raw = pq.read_table(salary / "raw.parquet")
    train, test = pq.read_table(salary / "train.parquet"), pq.read_table(salary / "test.parquet")
    assert raw.num_rows == 3000
    assert train.num_rows + test.num_rows == 3000
    assert test.num_rows == 600  # test_size 0.2
    meta = json.loads((salary / "meta.json").read_text())
    assert meta["split_method"] == "shuffled" and meta["train_rows_after"] == 2400
    fingerprint = json.loads((salary / "fingerprint.json").read_text())
    assert fingerprint["rows"] == 3000 and len(fingerprint["source_sha256"]) == 64

    students = shared_drive / "datasets" / "student_engagement"
    tr = pq.read_table(students / "train.parquet").to_pandas()["purchased"].mean()
    te = pq.read_table(students / "test.parquet").to_pandas()["purchased"].mean()
    assert abs(tr - te) < 0.01  # stratification preserved

    demand = shared_drive / "datasets" / "demand_forecast"
    tr = pq.read_table(demand / "train.parquet").to_pandas()
    te = pq.read_table(demand / "test.parquet").to_pandas()
    assert tr["timestamp"].is_monotonic_increasing and te["timestamp"].is_monotonic_increasing
    assert tr["timestamp"].max() < te["timestamp"].min()
    assert len(te) == 400


def test_data_checks_pass(instance, shared_drive, small_demo):
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(instance=instance, partition_key="student_engagement", asset_selection=DATA_KEYS)
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["train_test_split_proportions"].passed
    metadata = evaluations["train_test_split_proportions"].metadata
    assert metadata["max_class_share_gap"].value <= metadata["class_share_gap_limit"].value
    assert evaluations["raw_dataset_missing_values"].passed


def test_rematerializing_writes_identical_bytes(instance, shared_drive, small_demo):
    materialize(instance, ["salary"])
    directory = shared_drive / "datasets" / "salary"
    first = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    materialize(instance, ["salary"])
    second = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    assert first.keys() == {"raw.parquet", "train.parquet", "test.parquet", "meta.json", "fingerprint.json"}
    assert first == second
    # Identical data → identical data version → downstream is not stale.
    assert stale_status(instance, "train_test_split", "salary") == StaleStatus.FRESH


USER_CSV = textwrap.dedent(
    """\
    city,rooms,area_m2,heating,price
    Lyon,3,70.5,gas,310000
    Paris,2,,electric,520000
    Lyon,,55.0,gas,240000
    Nice,4,98.0,,450000
    Paris,1,30.0,electric,
    Nice,3,80.0,gas,390000
    Lyon,2,48.5,electric,205000
    Paris,3,75.0,gas,610000
    Nice,2,52.0,electric,300000
    Lyon,5,120.0,gas,480000
    """
)


def user_experiment(config_dir, csv_text=USER_CSV, extra=""):
    data_dir = config_dir / "experiments" / "data"
    data_dir.mkdir(exist_ok=True)
    (data_dir / "homes.csv").write_text(csv_text)
    (config_dir / "experiments" / "homes.yaml").write_text(
        "name: homes\ntask: regression\ndataset:\n  path: data/homes.csv\ntarget: price\n"
        "split:\n  test_size: 0.3\n" + extra
    )


def test_user_csv_with_missing_values_and_categories(instance, shared_drive, config_dir):
    user_experiment(config_dir)
    instance.add_dynamic_partitions("experiment", ["homes"])
    materialize(instance, ["homes"])
    directory = shared_drive / "datasets" / "homes"
    raw = pq.read_table(directory / "raw.parquet")
    assert raw.num_rows == 10 and raw.schema.field("heating").type == "string"
    train = pq.read_table(directory / "train.parquet").to_pandas()
    test = pq.read_table(directory / "test.parquet").to_pandas()
    assert len(train) + len(test) == 9  # the row without a price is dropped
    assert train["rooms"].isna().sum() + test["rooms"].isna().sum() == 1  # features keep their gaps
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["rows_dropped_missing_target"] == 1
    fingerprint = json.loads((directory / "fingerprint.json").read_text())
    assert fingerprint["source"].endswith("homes.csv")


def test_one_byte_changes_fingerprint_and_makes_downstream_stale(instance, shared_drive, config_dir):
    user_experiment(config_dir)
    instance.add_dynamic_partitions("experiment", ["homes"])
    materialize(instance, ["homes"])
    before = json.loads((shared_drive / "datasets" / "homes" / "fingerprint.json").read_text())
    assert stale_status(instance, "train_test_split", "homes") == StaleStatus.FRESH

    user_experiment(config_dir, USER_CSV.replace("310000", "310001"))
    job = defs.resolve_implicit_global_asset_job_def()
    job.execute_in_process(instance=instance, partition_key="homes", asset_selection=DATA_KEYS[:2], raise_on_error=True)
    after = json.loads((shared_drive / "datasets" / "homes" / "fingerprint.json").read_text())
    assert after["source_sha256"] != before["source_sha256"]
    assert after["schema_hash"] == before["schema_hash"]
    assert stale_status(instance, "train_test_split", "homes") == StaleStatus.STALE


@pytest.mark.parametrize(
    ("csv_text", "extra", "expected"),
    [
        ("", "", r"homes.csv: the file is empty"),
        ("city,price\n", "", r"no data rows"),
        ("city,city,price\nA,B,1\n", "", r"duplicate column name\(s\) \['city'\]"),
        ("city,cost\nA,1\nB,2\n", "", r"target column 'price' not found.*Fix: set 'target'"),
        ("city,empty,price\nA,,1\nB,,2\n", "", r"column\(s\) \['empty'\] hold no values"),
        ("city,price\nA,1\nB,2,3\n", "", r"cannot parse as CSV.*Fix: every row needs the header's 2 fields"),
        (
            "rooms,price\n3,1\nthree,2\n",
            "columns:\n  rooms: integer\n",
            r"column 'rooms' is declared integer.*data row 2: 'three'",
        ),
    ],
)
def test_bad_input_fails_with_a_clear_error(instance, shared_drive, config_dir, csv_text, extra, expected):
    user_experiment(config_dir, csv_text, extra)
    instance.add_dynamic_partitions("experiment", ["homes"])
    job = defs.resolve_implicit_global_asset_job_def()
    with pytest.raises(Exception, match=f"(?s){expected}"):
        job.execute_in_process(instance=instance, partition_key="homes", asset_selection=DATA_KEYS[:1])
    assert not (shared_drive / "datasets" / "homes" / "raw.parquet").exists()


def test_parquet_source(instance, shared_drive, config_dir, tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, 5.0], "label": [0, 1, 0, 1, 0]})
    path = tmp_path / "tiny.parquet"
    frame.to_parquet(path)
    (config_dir / "experiments" / "tiny.yaml").write_text(
        f"name: tiny\ntask: classification\ndataset:\n  path: {path}\ntarget: label\nsplit:\n  test_size: 0.4\n"
    )
    instance.add_dynamic_partitions("experiment", ["tiny"])
    materialize(instance, ["tiny"])
    test = pq.read_table(shared_drive / "datasets" / "tiny" / "test.parquet").to_pandas()
    assert sorted(test["label"]) == [0, 1]


def test_split_report_fails_on_bad_splits():
    import pyarrow as pa

    from mlgraph.core.drive import PROJECT_ROOT
    from mlgraph.core.experiment import load_experiment_file
    from mlgraph.data.quality import split_report

    students = load_experiment_file(PROJECT_ROOT / "config/experiments/student_engagement.yaml").config
    meta = {
        "train_rows_before": 800,
        "test_rows_before": 200,
        "train_class_shares": {"0": 0.9, "1": 0.1},
        "test_class_shares": {"0": 0.7, "1": 0.3},
    }
    report = split_report(meta, pa.table({}), pa.table({}), students)
    assert not report.passed and report.metadata["max_class_share_gap"] == pytest.approx(0.2)

    demand = load_experiment_file(PROJECT_ROOT / "config/experiments/demand_forecast.yaml").config
    ts = pd.to_datetime(["2024-01-02", "2024-01-01"])
    meta = {"train_rows_before": 800, "test_rows_before": 200}
    report = split_report(meta, pa.table({"timestamp": ts[:1]}), pa.table({"timestamp": ts[1:]}), demand)
    assert not report.passed and report.metadata["chronological"] is False
    meta = {"train_rows_before": 700, "test_rows_before": 300}
    report = split_report(meta, pa.table({"timestamp": ts[1:]}), pa.table({"timestamp": ts[:1]}), demand)
    assert not report.passed and report.metadata["test_share"] == pytest.approx(0.3)
