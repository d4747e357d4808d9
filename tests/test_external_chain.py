"""External checkpoints end to end: the evaluation and report assets in-process, the comparison statistics,
and the whole chain on the real daemon (an external trainer signals → evaluation run → .eval_complete →
analysis run → HTML report), where a daemon killed with SIGKILL mid-way and restarted loses and repeats
nothing.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from mlgraph.analysis import checkpoint_comparison as comparison
from mlgraph.cli.staging import materialize_experiments
from mlgraph.core import evaluation_store
from mlgraph.core.hashing import sha256_bytes
from mlgraph.core.signals import (
    EVAL_COMPLETE,
    EVAL_FAILED,
    TRAINING_COMPLETE,
    EvalComplete,
    EvalFailed,
    read_signal,
)
from pipeline_assets.definitions import defs
from resources.experiments import ExperimentCatalog
from tests.support import dagster_instance, wait_for
from tests.support.chain import (
    ANALYSIS_JOB,
    DATA_KEYS,
    EVAL_JOB,
    RUN_TIMEOUT,
    SLURM_RUN_LAUNCHER,
    load_trainer,
    materialize,
    run_diagnostics,
    run_trainer,
    runs_of,
    succeeded,
)
from tests.support.daemon import DagsterDaemon
from tests.support.fixtures import shrink_experiment
from tests.support.instance import LOCAL_RUN_LAUNCHER, write_instance_config
from tests.support.slurm.harness import require_slurm


def run_metrics_check(partition: str) -> dg.AssetCheckResult:
    """checkpoint_evaluation_metrics_complete alone, on what the drive holds now (invoked directly)."""
    # A job of checks alone cannot be partitioned ("no PartitionsDefinition shared by all the provided
    # assets") and build_asset_check_context takes no partition key: wrap an op context that has one.
    from dagster._core.execution.context.invocation import DirectAssetCheckExecutionContext

    from pipeline_assets.external.checks import checkpoint_evaluation_metrics_complete as check
    from resources.storage import SharedDrive

    resources = {"storage": SharedDrive(), "catalog": ExperimentCatalog()}
    return check(DirectAssetCheckExecutionContext(dg.build_op_context(partition_key=partition, resources=resources)))


def test_holm_and_paired_statistics():
    assert comparison.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    rng = np.random.default_rng(0)
    base = rng.normal(size=400)
    better = comparison.paired_test(np.abs(base) * 0.5, np.abs(base))
    assert better["mean_diff"] < 0 and better["ci_high"] < 0 and better["p_value"] < 1e-6
    same = comparison.paired_test(np.abs(base), np.abs(base))
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    preds = comparison.ModelPredictions("m", base, base + rng.normal(scale=0.1, size=400), None, "x")
    ci = comparison.bootstrap_ci("regression", preds, n_boot=200, seed=1)
    for est, low, high in ci.values():
        assert low <= est <= high
    assert ci == comparison.bootstrap_ci("regression", preds, n_boot=200, seed=1)  # seeded
    table = comparison.latex_table(pd.DataFrame({"model": ["checkpoint:a_b"], "p": [0.5]}), "50% & more", "tab:x")
    assert r"checkpoint:a\_b & 0.5 \\" in table and r"50\% \& more" in table


def test_candidate_predictions_long_and_wide(tmp_path: Path):
    long = tmp_path / "long.parquet"
    pd.DataFrame(
        {
            "model": ["b", "a", "a", "b"],
            "row": [1, 1, 0, 0],
            "y_true": [1.0, 1.0, 0.0, 0.0],
            "y_pred": [0.9, 0.8, 0.1, 0.2],
        }
    ).to_parquet(long)
    models = comparison.read_candidate_predictions(long)
    assert [m.model for m in models] == ["a", "b"]
    assert models[0].y_pred.tolist() == [0.1, 0.8] and models[0].y_true.tolist() == [0.0, 1.0]
    scored = tmp_path / "scored.parquet"  # the training group's classification layout
    pd.DataFrame(
        {"model": ["lr", "lr"], "row": [0, 1], "y_true": [0, 1], "y_pred": [0.3, 0.6], "label": [0, 1]}
    ).to_parquet(scored)
    [lr] = comparison.read_candidate_predictions(scored)
    assert lr.y_pred.tolist() == [0.0, 1.0] and lr.y_score.tolist() == [0.3, 0.6]
    wide = tmp_path / "wide.parquet"
    pd.DataFrame({"row": [0, 1], "y_true": [3.0, 4.0], "ridge": [3.1, 3.9], "knn": [2.0, 5.0]}).to_parquet(wide)
    assert sorted(m.model for m in comparison.read_candidate_predictions(wide)) == ["knn", "ridge"]


def test_feature_spec_survives_metadata_json():
    from mlgraph.core.hashing import canonical_json
    from mlgraph.trainer.checkpoint import FeatureSpec

    frame = pd.DataFrame({"z": [1.0, 2.0, 4.0], "b": ["x", "y", "x"], "a": ["p", "p", "q"]})
    spec = FeatureSpec.fit(frame, ["z"], ["b", "a"])
    again = FeatureSpec.from_dict(json.loads(canonical_json(spec.to_dict())))
    assert again.names == spec.names == ["z", "b=x", "b=y", "a=p", "a=q"]
    assert np.array_equal(again.transform(frame), spec.transform(frame))
    unseen = again.transform(pd.DataFrame({"z": [None], "b": ["new"], "a": ["q"]}))
    assert unseen.tolist() == [[0.0, 0.0, 0.0, 0.0, 1.0]]


def test_evaluation_and_report_in_process(shared_drive: Path, config_dir: Path, instance, capsys):
    shrink_experiment(config_dir, "salary", 1500)
    materialize_experiments(defs, instance, ["salary"], selection=DATA_KEYS, echo=lambda _: None, raise_on_error=True)
    assert load_trainer().main(["--experiment", "salary", "--epochs", "15", "--no-mlflow"]) == 0
    trained = json.loads(capsys.readouterr().out)
    ckpt_id = trained["checkpoint_id"]

    result = materialize(instance, "checkpoint_evaluation", "salary")
    [check] = result.get_asset_check_evaluations()
    assert check.passed, check.metadata
    eval_dir = shared_drive / "evaluation" / "salary"
    # The check takes the task from the experiment, not from the metric names it finds: a regression
    # checkpoint whose r2 row is gone is still a regression, missing r2.
    r2_rows = evaluation_store.metrics_dir(eval_dir) / "dataset=test" / "metric=r2" / f"checkpoint-{ckpt_id}.parquet"
    saved = r2_rows.read_bytes()
    r2_rows.unlink()
    gap = run_metrics_check("salary")
    assert not gap.passed
    assert gap.metadata["task"].value == "regression" and gap.metadata["missing_metrics"].value == "r2"
    r2_rows.write_bytes(saved)
    assert run_metrics_check("salary").passed
    done, _ = read_signal(eval_dir / EVAL_COMPLETE, EvalComplete)
    assert done.checkpoint_id == ckpt_id and done.model == f"checkpoint:{ckpt_id}" and done.mlflow_run_id
    with duckdb.connect() as con:
        rows = con.sql(f"SELECT * FROM {evaluation_store.read_metrics_sql(eval_dir)} ORDER BY metric").df()
    assert list(rows["metric"]) == ["mae", "r2", "rmse"] and set(rows["model"]) == {f"checkpoint:{ckpt_id}"}
    assert set(evaluation_store.METRIC_COLUMNS) <= set(rows.columns)
    r2 = float(rows.loc[rows["metric"] == "r2", "value"].iloc[0])
    assert r2 > 0.5 and done.metrics_summary["r2"] == pytest.approx(r2)

    # Two stand-in candidates on the same test rows: a near-perfect one and the constant mean.
    checkpoint_preds = pd.read_parquet(eval_dir / "predictions" / f"test-checkpoint-{ckpt_id}.parquet")
    y = checkpoint_preds["y_true"].to_numpy()
    noise = np.random.default_rng(0).normal(scale=y.std() * 0.01, size=len(y))
    candidates = pd.concat(
        [
            pd.DataFrame({"model": "oracle", "row": checkpoint_preds["row"], "y_true": y, "y_pred": y + noise}),
            pd.DataFrame(
                {"model": "mean", "row": checkpoint_preds["row"], "y_true": y, "y_pred": np.full(len(y), y.mean())}
            ),
        ]
    )
    candidates.to_parquet(eval_dir / "predictions" / "test.parquet")
    evaluation_store.write_metrics(
        eval_dir,
        [
            {
                "experiment": "salary",
                "model": m,
                "dataset": "test",
                "metric": "r2",
                "value": v,
                "config_hash": "c",
                "timestamp": pd.Timestamp("2025-01-01", tz="UTC"),
            }
            for m, v in (("oracle", 0.99), ("mean", 0.0))
        ],
        source="candidates",
    )

    result = materialize(instance, "checkpoint_comparison_report", "salary")
    metadata = result.asset_materializations_for_node("checkpoint_comparison_report")[0].metadata
    assert metadata["candidates_compared"].value == 2 and metadata["models_in_metrics"].value == 3
    paired = pd.read_csv(shared_drive / "analysis" / "salary" / "tables" / "checkpoint_paired_tests.csv")
    verdicts = dict(zip(paired["candidate"], paired["verdict"], strict=True))
    assert verdicts == {"mean": "checkpoint better", "oracle": "checkpoint worse"}
    tex = (shared_drive / "analysis" / "salary" / "tables" / "checkpoint_paired_tests.tex").read_text()
    assert r"\begin{tabular}" in tex and "oracle" in tex
    html = (shared_drive / "analysis" / "salary" / "reports" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "No candidate" not in html and "<img" in html
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    figures = sorted(p.name for p in (shared_drive / "analysis" / "salary" / "figures").iterdir())
    assert figures == ["checkpoint_loss_distribution.png", "checkpoint_metric_ci.png", "checkpoint_predictions.png"]
    # Same inputs, same report bytes.
    first = html
    materialize(instance, "checkpoint_comparison_report", "salary")
    assert (shared_drive / "analysis" / "salary" / "reports" / "report.html").read_text() == first


def test_broken_checkpoint_writes_eval_failed_and_fails_the_run(shared_drive: Path, config_dir: Path, instance):
    shrink_experiment(config_dir, "salary", 600)
    materialize_experiments(defs, instance, ["salary"], selection=DATA_KEYS, echo=lambda _: None, raise_on_error=True)
    ckpt = shared_drive / "models" / "salary" / "checkpoints" / "broken" / "final"
    ckpt.mkdir(parents=True)
    (ckpt / "metadata.json").write_text(json.dumps({"format": "mlgraph-mlp/1", "task": "regression"}))
    from mlgraph.trainer import signal_training_complete

    assert signal_training_complete("salary", ckpt, mlflow=False)
    result = materialize(instance, "checkpoint_evaluation", "salary", raise_on_error=False)
    assert not result.success
    failed, _ = read_signal(shared_drive / "evaluation" / "salary" / EVAL_FAILED, EvalFailed)
    assert failed.error_type == "CheckpointError" and "weights_sha256" in failed.error_message
    assert failed.checkpoint_id == "broken" and failed.dagster_run_id == result.run_id
    assert not (shared_drive / "evaluation" / "salary" / EVAL_COMPLETE).exists()


def sensor_ticks_after(instance: dg.DagsterInstance, name: str, after: float) -> int:
    states = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == name
    ]
    return sum(
        1
        for s in states
        for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=20)
        if t.timestamp > after and t.status != TickStatus.STARTED
    )


@pytest.mark.daemon
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "run_launcher",
    [
        pytest.param(LOCAL_RUN_LAUNCHER, id="local-launcher"),
        pytest.param(SLURM_RUN_LAUNCHER, id="slurm-launcher", marks=pytest.mark.slurm),
    ],
)
def test_signal_to_report_survives_daemon_kill(
    tmp_path: Path, shared_drive: Path, config_dir: Path, run_launcher: dict[str, Any]
):
    on_slurm = run_launcher is SLURM_RUN_LAUNCHER
    if on_slurm:
        require_slurm()
    for name in ("salary", "student_engagement"):
        shrink_experiment(config_dir, name, 1500)
    home = tmp_path / "dagster_home"
    write_instance_config(home, run_launcher)
    env = {"SHARED_DRIVE": str(shared_drive), "MLGRAPH_CONFIG_DIR": str(config_dir), "PYTHONWARNINGS": "ignore"}
    trainer_env = {**os.environ, **env}
    trainer_env.pop("MLFLOW_TRACKING_URI", None)
    daemon = DagsterDaemon(home, env, tmp_path)
    with dagster_instance(home) as instance:
        summary = materialize_experiments(
            defs,
            instance,
            ["salary", "student_engagement"],
            selection=DATA_KEYS,
            echo=lambda _: None,
            raise_on_error=True,
        )
        assert not summary.failed

        def diagnostics() -> str:

            return run_diagnostics(instance, daemon)

        try:
            daemon.start()
            salary = run_trainer("salary", trainer_env)
            eval_salary = wait_for(
                lambda: succeeded(instance, EVAL_JOB, "salary"),
                RUN_TIMEOUT,
                "the salary evaluation run",
                on_timeout=diagnostics,
            )
            assert (shared_drive / "evaluation" / "salary" / EVAL_COMPLETE).is_file()
            # Crash the daemon while the analysis of salary is due (requested or not yet), then signal
            # a second experiment while nothing watches the drive.
            daemon.kill()
            engagement = run_trainer("student_engagement", trainer_env)
            daemon.start()
            for job, partition in (
                (ANALYSIS_JOB, "salary"),
                (EVAL_JOB, "student_engagement"),
                (ANALYSIS_JOB, "student_engagement"),
            ):
                wait_for(
                    lambda j=job, p=partition: succeeded(instance, j, p),
                    RUN_TIMEOUT,
                    f"{job}[{partition}]",
                    on_timeout=diagnostics,
                )
            # Later ticks see every file again and must start nothing new.
            quiet_since = time.time()
            for sensor in ("training_complete_sensor", "eval_complete_sensor"):
                wait_for(
                    lambda s=sensor: sensor_ticks_after(instance, s, quiet_since) >= 2,
                    40,
                    f"two more {sensor} ticks",
                    on_timeout=diagnostics,
                )
        finally:
            daemon.stop_all()
        assert daemon.descendants() == []

        for job in (EVAL_JOB, ANALYSIS_JOB):
            for partition in ("salary", "student_engagement"):
                runs = runs_of(instance, job, partition)
                assert [r.status for r in runs] == [dg.DagsterRunStatus.SUCCESS], (job, partition, diagnostics())

        catalog = ExperimentCatalog(config_dir=str(config_dir))
        for experiment, trained in (("salary", salary), ("student_engagement", engagement)):
            signal_file = shared_drive / "models" / experiment / TRAINING_COMPLETE
            [eval_run] = runs_of(instance, EVAL_JOB, experiment)
            [analysis_run] = runs_of(instance, ANALYSIS_JOB, experiment)
            tags = eval_run.tags
            assert tags["mlgraph/signal_file"] == str(signal_file)
            assert tags["mlgraph/signal_sha256"] == sha256_bytes(signal_file.read_bytes())
            assert tags["mlgraph/checkpoint_id"] == trained["checkpoint_id"]
            assert tags["mlgraph/config_hash"] == catalog.load(experiment).config.config_hash
            assert tags["mlgraph/compute"] == "slurm" and tags["slurm/kind"] == "evaluation"
            if on_slurm:
                # The evaluation went through sbatch: its job id is on the run, its log where the template says.
                job_id = tags["slurm/job_id"]
                assert (shared_drive / "logs" / "evaluation" / f"{job_id}.log").is_file()
                assert analysis_run.tags["slurm/job_id"] != job_id
            else:
                assert "slurm/job_id" not in tags
            assert tags["mlgraph/mlflow_run_id"]  # added by the evaluation itself
            assert tags["dagster/sensor_name"] == "training_complete_sensor"

            done, _ = read_signal(shared_drive / "evaluation" / experiment / EVAL_COMPLETE, EvalComplete)
            assert done.status == "complete" and done.dagster_run_id == eval_run.run_id
            assert done.checkpoint_id == trained["checkpoint_id"]
            assert analysis_run.tags["mlgraph/eval_run_id"] == eval_run.run_id
            assert analysis_run.tags["slurm/kind"] == "analysis"

            report = shared_drive / "analysis" / experiment / "reports" / "report.html"
            html = report.read_text()
            assert trained["checkpoint_id"] in html and html.count("data:image/png;base64,") == 3

            event = instance.get_latest_materialization_event(dg.AssetKey("external_checkpoint"))
            assert event is not None
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("external_checkpoint"), asset_partitions=[experiment]),
                limit=10,
            ).records
            assert [r.asset_materialization.metadata["checkpoint_id"].value for r in records] == [
                trained["checkpoint_id"]
            ]
        # The salary evaluation finished before the kill and was not repeated by the second daemon.
        assert eval_salary.run_id == runs_of(instance, EVAL_JOB, "salary")[0].run_id
