"""Analysis assets in-process over one experiment × two constraints: the CSV/JSONL/PNG artifacts and the warehouse."""

import json

import dagster as dg
import duckdb
import pytest
import yaml

from mlgraph.analysis.significance import COLUMNS as SIGNIFICANCE_COLUMNS
from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.drive import OPERATOR_PROFILE_CSV, STREAMING_CHUNKS_JSONL
from mlgraph.preprocessing import outputs
from pipeline_assets.definitions import defs
from tests.support.fixtures import shrink_experiment

CONSTRAINTS = ["c2000-m256-p50", "c10000-m1024-p100"]
MY_KEYS = [
    dg.AssetKey(k)
    for k in (
        "raw_dataset",
        "dataset_fingerprint",
        "train_test_split",
        "batch_features",
        "streaming_features",
        "constraint_probe_result",
        "constraint_sweep_table",
        "significance_tests",
        "tradeoff_plots",
        "run_manifest",
        "run_summary",
    )
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def small_salary(config_dir, rows=6000, significance_runs=4):
    shrink_experiment(config_dir, "salary", rows)
    path = config_dir / "experiments" / "salary.yaml"
    data = yaml.safe_load(path.read_text())
    data["preprocessing"] = {"significance_runs": significance_runs}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def materialize_salary(instance):
    summary = materialize_experiments(
        defs,
        instance,
        ["salary"],
        selection=MY_KEYS,
        constraints=CONSTRAINTS,
        echo=lambda _: None,
        raise_on_error=True,
    )
    assert summary.failed == [] and summary.runs == 4


@pytest.fixture
def salary_sweep(instance, shared_drive, config_dir):
    small_salary(config_dir)
    materialize_salary(instance)
    return shared_drive / "artifacts" / "salary"


def test_constraint_experiment_table_reports_and_warehouse(instance, shared_drive, salary_sweep):
    rows = outputs.read_csv_rows(salary_sweep / "benchmarks" / "constraint_experiment.csv")
    assert list(rows[0])[:8] == [
        "chunk_size",
        "memory_limit_mb",
        "compute_limit",
        "preprocessing_latency_s",
        "peak_memory_mb",
        "training_time_s",
        "model_accuracy_r2",
        "model_rmse",
    ]
    assert [r["constraint"] for r in rows] == CONSTRAINTS
    for r in rows:
        assert float(r["preprocessing_latency_s"]) > 0 and float(r["training_time_s"]) > 0
        assert 0.8 < float(r["model_accuracy_r2"]) <= 1 and float(r["model_rmse"]) > 0
    # Bigger chunks, more working memory; the features (hence the probe model) do not change.
    assert float(rows[1]["peak_memory_mb"]) > float(rows[0]["peak_memory_mb"])
    assert float(rows[0]["model_rmse"]) == pytest.approx(float(rows[1]["model_rmse"]), rel=1e-9)

    combined = outputs.read_records(salary_sweep / "reports" / STREAMING_CHUNKS_JSONL)
    assert {r["constraint"] for r in combined} == set(CONSTRAINTS)
    profile = outputs.read_csv_rows(salary_sweep / "profiles" / OPERATOR_PROFILE_CSV)
    assert list(profile[0]) == ["constraint", *outputs.PROFILE_COLUMNS]
    assert sum(1 for p in profile if p["constraint"] == "c2000-m256-p50") == 3  # 4800 train rows / 2000

    def warehouse_rows():
        with duckdb.connect(str(shared_drive / "state" / "warehouse.duckdb"), read_only=True) as con:
            return con.sql(
                'select "constraint", chunk_size, model_accuracy_r2 from constraint_experiment '
                "where experiment = 'salary' order by chunk_size"
            ).fetchall()

    first = warehouse_rows()
    assert [r[0] for r in first] == CONSTRAINTS and all(0.8 < r[2] <= 1 for r in first)
    # Rematerializing replaces the experiment's rows instead of appending.
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, partition_key="salary", asset_selection=[dg.AssetKey("constraint_sweep_table")]
    )
    assert result.success
    assert warehouse_rows() == first
    coverage = {e.check_name: e for e in result.get_asset_check_evaluations()}["constraint_sweep_table_covers_grid"]
    assert not coverage.passed and len(coverage.metadata["missing"].value) == 6  # 2 of the 8 grid keys ran


def test_significance_plots_and_pipeline_report(instance, salary_sweep):
    rows = outputs.read_csv_rows(salary_sweep / "benchmarks" / "significance_tests.csv")
    assert len(rows) == 1 and list(rows[0]) == SIGNIFICANCE_COLUMNS
    row = rows[0]
    assert 0 <= float(row["latency_pvalue"]) <= 1 and 0 <= float(row["throughput_pvalue"]) <= 1
    assert int(row["runs_per_mode"]) == 4
    assert float(row["latency_mean_delta_s"]) == pytest.approx(
        float(row["streaming_latency_mean_s"]) - float(row["batch_latency_mean_s"]), abs=1e-12
    )
    runs = outputs.read_csv_rows(salary_sweep / "benchmarks" / "significance_runs.csv")
    assert sorted(r["mode"] for r in runs) == ["batch"] * 4 + ["streaming"] * 4

    for name in ("latency_vs_accuracy", "memory_vs_accuracy", "latency_memory_accuracy"):
        data = (salary_sweep / "plots" / f"{name}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    event = instance.get_latest_materialization_event(dg.AssetKey("tradeoff_plots"))
    metadata = event.asset_materialization.metadata
    assert metadata["latency_vs_accuracy"].value.startswith("![latency_vs_accuracy](data:image/png;base64,")

    report = json.loads((salary_sweep / "reports" / "pipeline_report.json").read_text())
    assert {
        "dataset_fingerprint",
        "reproducibility",
        "chunk_metrics",
        "constraint_experiment",
        "significance",
        "checks",
    } <= set(report)
    assert report["dataset_fingerprint"]["rows"] == 6000
    assert report["reproducibility"]["dataset"]["sha256"] == report["dataset_fingerprint"]["raw_parquet_sha256"]
    per_constraint = report["chunk_metrics"]["per_constraint"]
    assert per_constraint["c2000-m256-p50"]["chunks"] == 3 and per_constraint["c10000-m1024-p100"]["chunks"] == 1
    checks = report["checks"]
    assert all(c["passed"] for c in checks["streaming_features_match_batch"].values())
    assert all(c["passed"] for c in checks["streaming_features_memory_within_limit"].values())
    assert checks["run_manifest_verifies"] == {"differences": [], "passed": True}
    assert 0 <= report["significance"]["latency_pvalue"] <= 1
