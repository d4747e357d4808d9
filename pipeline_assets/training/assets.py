"""Training assets: candidate models, the decision threshold, test evaluation and champion promotion.

Thin wrappers over plain-Python modules: candidates.py (training), threshold.py, evaluation.py,
promotion.py (the baseline gate and the promotion itself), model_files.py (what each asset reads and
writes on the drive) and mlflow_runs.py (this Dagster run's MLflow parent and child runs). The
champion is chosen on the cross-validated (out-of-fold) selection metric, never on the test set: the
test set stays an unbiased estimate and the baseline gate in front of promotion is a real hold-out
test. That also lets `decision_threshold` write the threshold of the very model that will be promoted
before the test set is touched.
"""

import contextlib
import datetime as dt
from collections.abc import Iterator

import dagster as dg

from mlgraph.core import evaluation_store
from mlgraph.core.hashing import sha256_text
from mlgraph.core.markdown import md_image, md_table
from mlgraph.core.metrics import mlflow_metric_key
from mlgraph.training import model_files
from mlgraph.training.mlflow_runs import ExecutionRun, later_steps
from mlgraph.training.user_code import ModelSpecError
from pipeline_assets.partitions import experiment_partitions_def
from pipeline_assets.training.sweeping import SweepProgress, runner_for, sweep_summary
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from resources.tracking import MlflowTracking
from resources.warehouse import Warehouse

BASELINE_CHECK = "champion_model_beats_baseline"


class ChampionConfig(dg.Config):
    """Launchpad config of champion_model."""

    force: bool = False  # promote even when this config hash and data are already promoted


def _run_assets(context: dg.AssetExecutionContext) -> set[str]:
    """The assets this Dagster run materializes: its asset selection, else every asset it planned."""
    selection = context.run.asset_selection
    if not selection:
        # A whole-job run has no selection; Dagster records each planned asset when it creates the run.
        planned = context.instance.all_logs(
            context.run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED
        )
        selection = {e.dagster_event.asset_key for e in planned if e.dagster_event and e.dagster_event.asset_key}
    return {key.to_user_string() for key in selection}


@contextlib.contextmanager
def _mlflow_execution(context: dg.AssetExecutionContext, tracking: MlflowTracking, step: str) -> Iterator[ExecutionRun]:
    """Wrap a whole step: the parent run ends FAILED if the step fails, FINISHED after the run's last training step.

    Ending it here, not in a per-op hook, keeps an early step's success from closing a run whose later
    steps then fail (dagster issue #21872); wrapping the whole body (not just the MLflow calls) means
    a failure anywhere in a later step still marks the run that an earlier step opened.
    """
    execution = ExecutionRun(
        tracking.tracker(context.partition_key),
        context.run.run_id,
        context.partition_key,
        context.job_name,
        context.run.tags,
    )
    try:
        yield execution
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | dg.DagsterExecutionInterruptedError) else "FAILED"
        try:
            run_id = execution.existing()
            if run_id:
                execution.tracker.set_status(run_id, status)
        except Exception as mark_error:  # the step's own error is the one to surface
            context.log.warning(f"could not mark the MLflow parent run {status}: {mark_error}")
        raise
    if execution.created:
        context.log.info(f"MLflow parent run {execution.run_id}")
    execution.finish(run_continues=bool(set(later_steps(step)) & _run_assets(context)))


@dg.asset(
    partitions_def=experiment_partitions_def,
    # By key: importing the data asset here would make the group loader claim it for 'training'.
    deps=[dg.AssetKey("train_test_split")],
    kinds={"sklearn", "pytorch", "mlflow"},
    code_version="1",
)
def candidate_models(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Every configured model spec, cross-validated and fitted in parallel, one MLflow child run each."""
    from mlgraph.training.candidates import train_candidates
    from mlgraph.training.labels import class_count
    from mlgraph.training.mlflow_runs import log_candidates
    from mlgraph.training.sweep_training import swept_specs, train_with_sweeps
    from mlgraph.training.sweeps import SweepError

    with _mlflow_execution(context, mlflow, "candidate_models") as execution:
        loaded = catalog.load(context.partition_key)
        config = loaded.config
        meta = model_files.split_meta(storage, config.name)
        train = model_files.read_split(storage, config.name, "train")
        parent_id = execution.open(loaded, meta, config.selection_metric_for(class_count(train, config)))
        where = str(storage.dataset_path(config.name, "train"))
        child_tags = execution.child_tags(loaded, meta)
        sweeps, best_runs = {}, {}
        try:
            if swept_specs(config):
                progress = SweepProgress(
                    context, execution.tracker, parent_id, child_tags, mlflow.resolved_tracking_uri, config
                )
                swept = train_with_sweeps(
                    config,
                    train,
                    storage,
                    meta["dataset_sha256"],
                    lambda spec: runner_for(context, spec),
                    progress,
                    where=where,
                    before_training=lambda done: best_runs.update(progress.finish(done)),
                )
                outcome, sweeps = swept.outcome, swept.sweeps
            else:
                outcome = train_candidates(config, train, storage.models_dir(config.name), where=where)
        except (ModelSpecError, SweepError) as exc:
            # The user's code or sweep is wrong: one message, no traceback of ours.
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        context.log.info(
            f"{len(outcome.models)} model(s) × {config.cv_folds} folds on {len(train)} rows "
            f"in {outcome.wall_seconds:.1f}s with {outcome.n_jobs} worker(s)"
        )
        model_files.write_oof(storage, config, outcome)
        run_ids = log_candidates(execution.tracker, parent_id, outcome, child_tags, config, best_runs)
        model_files.write_candidates(storage, config, meta, outcome, run_ids, context.run.run_id, parent_id)

    selection = outcome.selection_metric
    table = md_table(
        ["model", "family", f"cv {selection}", "fit s", "cv s", "MLflow run"],
        [
            [
                name,
                r.family,
                f"{r.cv[selection]['mean']:.4f} ± {r.cv[selection]['std']:.4f}",
                f"{r.fit_seconds:.2f}",
                f"{r.cv_seconds:.2f}",
                f"`{run_ids[name]}`",
            ]
            for name, r in outcome.models.items()
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "families": dg.MetadataValue.md(table),
            "wall_seconds": round(outcome.wall_seconds, 2),
            "workers": outcome.n_jobs,
            "train_rows": len(train),
            "cv_folds": config.cv_folds,
            **_class_metadata(outcome.data.classes, selection),
            **({"sweeps": dg.MetadataValue.md(sweep_summary(sweeps))} if sweeps else {}),
            # Forecasting: the series on its regular grid — missing points and how they were filled.
            **({"series": dg.MetadataValue.json(outcome.data.series)} if outcome.data.series else {}),
            "mlflow_parent_run_id": parent_id,
            "models_dir": dg.MetadataValue.path(str(storage.models_dir(config.name))),
        },
        # Deterministic training → the same version: downstream stays fresh after an identical rerun.
        data_version=dg.DataVersion(model_files.candidates_version(outcome)),
    )


@dg.asset(partitions_def=experiment_partitions_def, deps=[candidate_models], kinds={"sklearn"}, code_version="1")
def decision_threshold(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Binary cut-off: most out-of-fold recall with precision ≥ the target (multiclass: argmax; other tasks: none)."""
    from mlgraph.training.mlflow_runs import log_thresholds
    from mlgraph.training.promotion import select_champion
    from mlgraph.training.threshold import calibrate_families

    with _mlflow_execution(context, mlflow, "decision_threshold") as execution:
        loaded = catalog.load(context.partition_key)
        config = loaded.config
        if config.task != "classification":
            # Regression and forecasting predict values, not classes: there is no cut-off to calibrate.
            # The asset still materializes (and says so) so every experiment has the same graph.
            return dg.MaterializeResult(
                metadata={"applicable": False, "reason": f"task {config.task!r} predicts values, not classes"},
                data_version=dg.DataVersion(f"not-applicable-{config.task}"),
            )
        meta = model_files.split_meta(storage, config.name)
        manifest = model_files.current_manifest(storage, loaded, meta)
        metric = model_files.selection_metric(manifest, config)
        execution.open(loaded, meta, metric)
        # Ties go to the family listed first in the config (the manifest's JSON keys are sorted).
        chosen = select_champion(model_files.cv_scores(manifest, metric), metric, config.model_names)
        if model_files.is_multiclass(manifest):
            path = model_files.write_argmax_decision(storage, config, manifest, chosen)
            return _argmax_decision(model_files.classes(manifest), chosen, path)
        oof = model_files.read_oof(storage, config.name)
        results = calibrate_families(manifest["families"], oof, config.precision_target)
        path = model_files.write_thresholds(storage, config, results, chosen)
        log_thresholds(execution.tracker, execution.run_id, manifest, results, chosen)

    best = results[chosen]
    if not best.reached_target:
        context.log.warning(
            f"{chosen}: no threshold reaches out-of-fold precision {config.precision_target}; using the "
            f"highest-precision one ({best.threshold:.4f}, precision {best.precision:.3f})"
        )
    table = md_table(
        ["family", "threshold", "oof precision", "oof recall", "target reached"],
        [
            [f, f"{r.threshold:.4f}", f"{r.precision:.4f}", f"{r.recall:.4f}", "yes" if r.reached_target else "NO"]
            for f, r in results.items()
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "applicable": True,
            "family": chosen,
            "threshold": best.threshold,
            "oof_precision": best.precision,
            "oof_recall": best.recall,
            "precision_target": config.precision_target,
            "target_reached": best.reached_target,
            "note": "target reached" if best.reached_target else "target NOT reached: highest-precision threshold used",
            "per_family": dg.MetadataValue.md(table),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(model_files.thresholds_version(results)),
    )


def _class_metadata(classes, selection: str) -> dict:
    """A classifier's classes and the selection metric resolved for them (multiclass: f1_macro by default)."""
    if classes is None:
        return {}
    return {"classes": dg.MetadataValue.json([str(c) for c in classes]), "selection_metric": selection}


def _argmax_decision(classes: list, chosen: str, path) -> dg.MaterializeResult:
    """decision_threshold of a multiclass target: recorded, not calibrated (the precision target is binary)."""
    return dg.MaterializeResult(
        metadata={
            "applicable": False,
            "decision": model_files.ARGMAX_DECISION,
            "reason": f"multiclass target ({len(classes)} classes): the label is the most probable class; "
            "precision_target applies to binary targets only",
            "family": chosen,
            "classes": dg.MetadataValue.json([str(c) for c in classes]),
            "path": dg.MetadataValue.path(str(path)),
        },
        data_version=dg.DataVersion(f"argmax-{sha256_text(repr(classes))[:16]}"),
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[candidate_models, decision_threshold],
    kinds={"parquet", "duckdb"},
    code_version="1",
)
def evaluation_metrics(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Test-set metrics of every family and the trivial baseline, as hive-partitioned parquet plus predictions."""
    from mlgraph.training import evaluation
    from mlgraph.training.promotion import select_champion

    with _mlflow_execution(context, mlflow, "evaluation_metrics") as execution:
        loaded = catalog.load(context.partition_key)
        config = loaded.config
        meta = model_files.split_meta(storage, config.name)
        manifest = model_files.current_manifest(storage, loaded, meta)
        thresholds = model_files.read_thresholds(storage, config.name) if config.task == "classification" else {}
        train = model_files.read_split(storage, config.name, "train")
        test = model_files.read_split(storage, config.name, "test")
        selection = model_files.selection_metric(manifest, config)
        execution.open(loaded, meta, selection)
        artifacts = model_files.artifacts(storage, config.name, manifest)
        outcome = evaluation.evaluate(config, train, test, artifacts, thresholds, manifest.get("scale"))
        written = evaluation.write_evaluation(storage, config, manifest, thresholds, outcome, dt.datetime.now(dt.UTC))
        for family, entry in manifest["families"].items():
            execution.tracker.log(
                entry["run_id"], metrics={f"test_{mlflow_metric_key(m)}": v for m, v in outcome.metrics[family].items()}
            )

    cv = {f: v["cv"] for f, v in manifest["families"].items()}
    leader = select_champion(model_files.cv_scores(manifest, selection), selection, config.model_names)
    classes = model_files.classes(manifest)
    scoreboard = evaluation.scoreboard_markdown(
        config.task, selection, cv, outcome.metrics, leader, len(classes) if classes else None
    )
    per_class = {}
    if outcome.classes is not None:
        table = evaluation.per_class_markdown(outcome.metrics, outcome.classes, outcome.predictions)
        context.log.info(f"{config.name} per-class test metrics:\n{table}")
        per_class = {"per_class": dg.MetadataValue.md(table)}
    context.log.info(f"{config.name} scoreboard (ranked by cv {selection}; test metrics beside):\n{scoreboard}")
    evaluation_dir = storage.evaluation_dir(config.name)
    return dg.MaterializeResult(
        metadata={
            "scoreboard": dg.MetadataValue.md(scoreboard),
            **per_class,
            "selection_metric": selection,
            "leader": leader,
            "baseline": outcome.baseline,
            "metric_files": len(written),
            "test_rows": len(test),
            **({"series": dg.MetadataValue.json(outcome.series)} if outcome.series else {}),
            "metrics_dir": dg.MetadataValue.path(str(evaluation_store.metrics_dir(evaluation_dir))),
            "predictions": dg.MetadataValue.path(str(storage.predictions_path(config.name, "test"))),
            "duckdb": f"SELECT * FROM read_parquet('{evaluation_store.metrics_glob(evaluation_dir)}', "
            "hive_partitioning = true)",
        }
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[candidate_models, decision_threshold, evaluation_metrics],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            BASELINE_CHECK,
            asset="champion_model",
            blocking=True,
            description="The champion beats the task's trivial baseline on the test set; otherwise it is not promoted.",
        )
    ],
    code_version="1",
)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The best family by the experiment's rule, gated on the baseline, promoted (pointer, history, registry alias)."""
    from mlgraph.training import promotion
    from mlgraph.training.evaluation import read_test_metrics

    with _mlflow_execution(context, mlflow, "champion_model") as execution:
        loaded = catalog.load(context.partition_key)
        exp = loaded.config
        meta = model_files.split_meta(storage, exp.name)
        manifest = model_files.current_manifest(storage, loaded, meta)
        test = read_test_metrics(storage, exp.name, exp.config_hash)
        where = evaluation_store.metrics_dir(storage.evaluation_dir(exp.name))
        metric = model_files.selection_metric(manifest, exp)
        gate = promotion.baseline_gate(exp, model_files.cv_scores(manifest, metric), test, where, metric)
        parent_id = execution.open(loaded, meta, metric)
        execution.tracker.log(parent_id, metrics=gate.run_metrics(), tags={"mlgraph.champion": gate.champion})
        check = dg.AssetCheckResult(check_name=BASELINE_CHECK, passed=gate.beats, metadata=gate.check_metadata())
        if not gate.beats:
            execution.failed = True  # the failed blocking check fails this Dagster run
            execution.tracker.log(parent_id, tags={"mlgraph.promoted": "false"})
            context.log.error(gate.failure())
            return dg.MaterializeResult(
                metadata={"champion": gate.champion, "promoted": False, "reason": f"does not beat {gate.baseline}"},
                check_results=[check],
            )
        store = promotion.PromotionStore(storage.promotion_dir(exp.config_hash))
        current, challenge = store.current(), None
        if promotion.contested(current, exp.config_hash, meta["dataset_sha256"], config.force):
            # New data (a retraining): the champion is replaced only by a strictly better model on today's test split.
            challenge = promotion.challenge_champion(
                exp,
                gate,
                current,
                model_files.read_split(storage, exp.name, "train"),
                model_files.read_split(storage, exp.name, "test"),
                manifest.get("scale"),
            )
        decision = promotion.decide(current, exp.config_hash, meta["dataset_sha256"], config.force, challenge)
        tags = {"mlgraph.promoted": str(decision.promote).lower()}
        if decision.promote:
            pointer = promotion.promote_champion(
                store,
                storage,
                loaded,
                meta,
                manifest,
                gate,
                execution.tracker.client,
                mlflow.registered_model_name(exp.name),
                context.run.run_id,
            )
            tags["mlgraph.model_version"] = pointer["model_version"]
            context.log.info(
                f"promoted {gate.champion} ({pointer['registered_model']} v{pointer['model_version']}, "
                f"alias champion): {decision.reason}"
            )
        elif challenge is not None:
            store.record_not_promoted(
                challenge, decision, manifest["families"][gate.champion]["run_id"], context.run.run_id
            )
            context.log.info(decision.reason)
        else:
            context.log.info(f"not promoted again: {decision.reason}")
        execution.tracker.log(parent_id, tags=tags)
        current = store.current() or {}

    return dg.MaterializeResult(
        metadata={
            "champion": gate.champion,
            "promoted": decision.promote,
            "reason": decision.reason,
            "metric": gate.metric,
            "cv_score": gate.cv_score,
            "test_score": gate.champion_test,
            "baseline_test_score": gate.baseline_test,
            **(
                {"champion_test_score_now": challenge.champion_test}
                if challenge and challenge.champion_test is not None
                else {}
            ),
            "current_run_id": str(current.get("run_id", "")),
            "model_version": str(current.get("model_version", "")),
            "pointer": dg.MetadataValue.path(str(store.current_path)),
        },
        check_results=[check],
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    deps=[candidate_models],
    kinds={"csv", "duckdb", "mlflow"},
    code_version="1",
)
def sweep_results(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, warehouse: Warehouse
) -> dg.MaterializeResult:
    """One row per sweep trial (inputs, metrics, reduced per-epoch losses, duration, status) with its plots."""
    from mlgraph.training.sweep_report import build_sweep_results

    loaded = catalog.load(context.partition_key)
    config = loaded.config
    meta = model_files.split_meta(storage, config.name)
    results = build_sweep_results(storage, config, meta["dataset_sha256"])
    if results is None:
        # No spec has a sweep: the asset still materializes (and says so) so every experiment has one graph.
        return dg.MaterializeResult(
            metadata={"applicable": False, "reason": "no model spec of this experiment has a 'sweep:' section"},
            data_version=dg.DataVersion("no-sweeps"),
        )
    with warehouse.get_connection() as connection:
        stored = results.store(connection)
    return dg.MaterializeResult(
        metadata={
            "applicable": True,
            "trials": len(results.rows),
            "preview": dg.MetadataValue.md(results.preview_markdown()),
            "csv": dg.MetadataValue.path(str(results.csv_path)),
            "warehouse_table": results.table,
            "warehouse_rows": stored,
            **{name: dg.MetadataValue.md(md_image(path, name)) for name, path in results.plots.items()},
        },
        data_version=dg.DataVersion(results.version),
    )
