"""Training assets: candidate models, the decision threshold, test evaluation and champion promotion.

Thin wrappers: the work is in candidates.py, threshold.py, evaluation.py, promotion.py and
lineage.py; MLflow bookkeeping in mlflow_runs.py. The champion is chosen on the cross-validated
(out-of-fold) selection metric, never on the test set: the test set stays an unbiased estimate and
the baseline gate in front of promotion is a real hold-out test. That also lets `decision_threshold`
write the threshold of the very model that will be promoted before the test set is touched.
"""

import contextlib
import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from core.evaluation_store import write_metrics
from pipeline_assets.partitions import experiment_partitions_def
from core.experiment import LoadedExperiment
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from core.atomic import atomic_path, atomic_write_json, atomic_write_text
from resources.tracking import MlflowTracking

TRAINING_STEPS = ("candidate_models", "decision_threshold", "evaluation_metrics", "champion_model")
MANIFEST = "candidates.json"
OOF_FILE = "oof_predictions.parquet"
THRESHOLDS_FILE = "thresholds.json"
THRESHOLD_FILE = "threshold.txt"
LINEAGE_FILE = "lineage.json"
CHAMPIONS_DIR = "champions"
BASELINE_CHECK = "champion_model_beats_baseline"


class ChampionConfig(dg.Config):
    """Launchpad config of champion_model."""

    force: bool = False  # promote even when this config hash and data are already promoted


def _read_json(path: Path, producer: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize {producer} for this experiment first.")
    return json.loads(path.read_text(encoding="utf-8"))


def _split_meta(storage: SharedDrive, experiment: str) -> dict[str, Any]:
    path = storage.dataset_dir(experiment) / "meta.json"
    meta = _read_json(path, "train_test_split")
    for key in ("train_sha256", "test_sha256"):
        if key not in meta:
            raise ValueError(f"{path}: field {key!r} missing. Fix: materialize train_test_split again.")
    # The digest train_test_split uses as its data version: it names the data a model was trained on.
    meta["dataset_sha256"] = hashlib.sha256((meta["train_sha256"] + meta["test_sha256"]).encode()).hexdigest()
    return meta


def _read_split(storage: SharedDrive, experiment: str, split: str) -> pd.DataFrame:
    path = storage.dataset_path(experiment, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing. Fix: materialize train_test_split for {experiment!r} first.")
    return pd.read_parquet(path)


def _manifest(storage: SharedDrive, experiment: str) -> dict[str, Any]:
    return _read_json(storage.models_dir(experiment) / MANIFEST, "candidate_models")


def _current_manifest(storage: SharedDrive, loaded: LoadedExperiment, meta: dict[str, Any]) -> dict[str, Any]:
    manifest = _manifest(storage, loaded.config.name)
    if manifest.get("config_hash") != loaded.config.config_hash or manifest.get("dataset_sha256") != meta["dataset_sha256"]:
        raise ValueError(
            f"{storage.models_dir(loaded.config.name) / MANIFEST} was trained for another config or dataset "
            f"than {loaded.path} and the current split. Fix: materialize candidate_models again."
        )
    return manifest


def _py(value: Any) -> Any:
    """numpy scalars → plain Python, so JSON and MLflow see numbers, not strings."""
    return value.item() if hasattr(value, "item") else value


def _fmt(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def _copy_file(source: Path, target: Path) -> Path:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def _selected_steps(context: dg.AssetExecutionContext) -> set[str]:
    selection = context.run.asset_selection or context.job_def.asset_layer.selected_asset_keys
    return {key.to_user_string() for key in selection}


def _execution_params(loaded: LoadedExperiment, meta: dict[str, Any]) -> dict[str, Any]:
    """The execution's inputs, as the comparison table shows them."""
    config = loaded.config
    params = {
        "experiment": config.name,
        "task": config.task,
        "config_hash": config.config_hash,
        "families": ",".join(config.families),
        "selection_metric": config.selection_metric,
        "cv_folds": config.cv_folds,
        "seed": config.seed,
        "sampling.strategy": config.sampling.strategy,
        "sampling.train_rows": config.sampling.train_rows,
        "sampling.test_rows": config.sampling.test_rows,
        "split.test_size": config.split.test_size,
        "train_rows": meta.get("train_rows_after"),
        "test_rows": meta.get("test_rows_after"),
    }
    if config.task == "classification":
        params["precision_target"] = config.precision_target
    if config.task == "forecasting":
        params.update({f"forecast.{k}": v for k, v in config.forecast.model_dump().items()})
        params.update({f"composite.{k}": v for k, v in config.selection.composite_weights.items()})
    return params


class _Execution:
    """This Dagster run's MLflow parent run, as one step sees it."""

    def __init__(self, context: dg.AssetExecutionContext, tracking: MlflowTracking):
        self.context = context
        self.tracker = tracking.tracker(context.partition_key)
        self.run_id: str | None = None
        self.failed = False  # set when the step knows the Dagster run will fail (a blocking check)

    def open(self, loaded: LoadedExperiment, meta: dict[str, Any]) -> str:
        """Create the parent run (first step of the Dagster run) or reopen it; returns its id."""
        config = loaded.config
        tags = {
            "mlgraph.experiment": config.name,
            "mlgraph.partition": self.context.partition_key,
            "mlgraph.config_hash": config.config_hash,
            "mlgraph.dataset_sha256": meta["dataset_sha256"],
            "mlgraph.train_sha256": meta["train_sha256"],
            "mlgraph.test_sha256": meta["test_sha256"],
            "mlgraph.job": self.context.job_name,
            "mlgraph.config_file": str(loaded.path),
        }
        name = f"{config.name}-{self.context.run.run_id[:8]}"
        self.run_id, created = self.tracker.parent_run(self.context.run.run_id, name, tags, _execution_params(loaded, meta))
        if created:
            self.context.log.info(f"MLflow parent run {self.run_id} ({name})")
        return self.run_id

    def existing(self) -> str | None:
        return self.run_id or self.tracker.find_parent(self.context.run.run_id)


@contextlib.contextmanager
def _mlflow_execution(context: dg.AssetExecutionContext, tracking: MlflowTracking, step: str) -> Iterator[_Execution]:
    """Wrap a whole step: the parent run ends FAILED if the step fails, FINISHED after the run's last training step.

    Ending it here, not in a per-op hook, keeps an early step's success from closing a run whose later
    steps then fail (dagster issue #21872); wrapping the whole body (not just the MLflow calls) means
    a failure anywhere in a later step still marks the run that an earlier step opened.
    """
    execution = _Execution(context, tracking)
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
    run_id = execution.existing()
    if run_id is None:
        return
    if execution.failed:
        execution.tracker.set_status(run_id, "FAILED")
    elif not set(TRAINING_STEPS[TRAINING_STEPS.index(step) + 1 :]) & _selected_steps(context):
        execution.tracker.set_status(run_id, "FINISHED")


@dg.asset(
    partitions_def=experiment_partitions_def,
    group_name="training",
    # By key: importing the data asset here would make the group loader claim it for 'training'.
    deps=[dg.AssetKey("train_test_split")],
    kinds={"sklearn", "pytorch", "mlflow"},
)
def candidate_models(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Every configured model family, cross-validated and fitted in parallel, one MLflow child run each."""
    from pipeline_assets.training.candidates import train_candidates
    from pipeline_assets.training.mlflow_runs import log_candidate

    with _mlflow_execution(context, mlflow, "candidate_models") as execution:
        loaded = catalog.load(context.partition_key)
        config = loaded.config
        meta = _split_meta(storage, config.name)
        train_path = storage.dataset_path(config.name, "train")
        train = _read_split(storage, config.name, "train")
        models_dir = storage.models_dir(config.name)
        parent_id = execution.open(loaded, meta)

        outcome = train_candidates(config, train, models_dir, where=str(train_path))
        context.log.info(
            f"{len(outcome.families)} families × {config.cv_folds} folds on {len(train)} rows "
            f"in {outcome.wall_seconds:.1f}s with {outcome.n_jobs} worker(s)"
        )
        child_tags = {
            "dagster_run_id": context.run.run_id,
            "mlgraph.experiment": config.name,
            "mlgraph.partition": context.partition_key,
            "mlgraph.config_hash": config.config_hash,
            "mlgraph.dataset_sha256": meta["dataset_sha256"],
            "mlgraph.train_sha256": meta["train_sha256"],
            "mlgraph.task": config.task,
        }
        # Written here, one after another, once the workers are done: the workers never touch MLflow.
        run_ids = {
            family: log_candidate(execution.tracker, parent_id, result, child_tags, config)
            for family, result in outcome.families.items()
        }
        execution.tracker.log(parent_id, metrics={"training_seconds": outcome.wall_seconds, "workers": outcome.n_jobs})

        with atomic_path(models_dir / OOF_FILE) as tmp:
            outcome.oof.to_parquet(tmp, index=False)
        atomic_write_json(
            models_dir / MANIFEST,
            {
                "experiment": config.name,
                "task": config.task,
                "config_hash": config.config_hash,
                "dataset_sha256": meta["dataset_sha256"],
                "train_sha256": meta["train_sha256"],
                "test_sha256": meta["test_sha256"],
                "selection_metric": config.selection_metric,
                "dagster_run_id": context.run.run_id,
                "parent_run_id": parent_id,
                "positive_label": _py(outcome.data.positive_label),
                "scale": outcome.data.scale,
                "features": outcome.data.features.to_dict() if outcome.data.features else None,
                "workers": outcome.n_jobs,
                "wall_seconds": round(outcome.wall_seconds, 3),
                "families": {
                    family: {
                        "artifact": r.artifact.name,
                        "artifact_sha256": r.artifact_sha256,
                        "run_id": run_ids[family],
                        "model_uri": f"runs:/{run_ids[family]}/{family}",
                        "params": r.params,
                        "fit_seconds": round(r.fit_seconds, 3),
                        "cv_seconds": round(r.cv_seconds, 3),
                        "cv": r.cv,
                        "folds": r.fold_metrics,
                        "epochs_run": len(r.history) or None,
                        "best_epoch": r.metadata.get("best_epoch"),
                    }
                    for family, r in outcome.families.items()
                },
            },
        )

    selection = config.selection_metric
    table = [f"| family | cv {selection} | fit s | cv s | MLflow run |", "|---|---|---|---|---|"]
    for family, r in outcome.families.items():
        table.append(f"| {family} | {_fmt(r.cv[selection])} | {r.fit_seconds:.2f} | {r.cv_seconds:.2f} | `{run_ids[family]}` |")
    # Pickle bytes can differ between identical fits (memo sharing across worker processes), so the
    # version hashes what the models do: their fold metrics and out-of-fold predictions.
    semantic = json.dumps({f: r.fold_metrics for f, r in outcome.families.items()}, sort_keys=True)
    semantic += str(pd.util.hash_pandas_object(outcome.oof, index=False).sum())
    digest = hashlib.sha256(semantic.encode()).hexdigest()
    return dg.MaterializeResult(
        metadata={
            "families": dg.MetadataValue.md("\n".join(table)),
            "wall_seconds": round(outcome.wall_seconds, 2),
            "workers": outcome.n_jobs,
            "train_rows": len(train),
            "cv_folds": config.cv_folds,
            "mlflow_parent_run_id": parent_id,
            "models_dir": dg.MetadataValue.path(str(models_dir)),
        },
        # Deterministic training → the same version: downstream stays fresh after an identical rerun.
        data_version=dg.DataVersion(digest),
    )


@dg.asset(partitions_def=experiment_partitions_def, group_name="training", deps=[candidate_models], kinds={"sklearn"})
def decision_threshold(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Classification cut-off: most out-of-fold recall with precision ≥ the target (not applicable to other tasks)."""
    from pipeline_assets.training.promotion import select_champion
    from pipeline_assets.training.threshold import calibrate_threshold

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
        meta = _split_meta(storage, config.name)
        models_dir = storage.models_dir(config.name)
        manifest = _current_manifest(storage, loaded, meta)
        oof = pd.read_parquet(models_dir / OOF_FILE)
        execution.open(loaded, meta)

        results = {}
        for family, entry in manifest["families"].items():
            part = oof[oof["model"] == family]
            result = calibrate_threshold(part["y_true"].to_numpy(), part["y_score"].to_numpy(), config.precision_target)
            results[family] = result
            execution.tracker.log(
                entry["run_id"],
                metrics={"threshold": result.threshold, "oof_precision_at_threshold": result.precision,
                         "oof_recall_at_threshold": result.recall},
                tags={"mlgraph.threshold_reached_target": str(result.reached_target).lower()},
            )
        cv_scores = {f: v["cv"][config.selection_metric]["mean"] for f, v in manifest["families"].items()}
        # Ties go to the family listed first in the config (the manifest's JSON keys are sorted).
        chosen = select_champion(cv_scores, config.selection_metric, config.families)
        best = results[chosen]
        atomic_write_json(
            models_dir / THRESHOLDS_FILE,
            {"precision_target": config.precision_target, "champion_candidate": chosen,
             "config_hash": config.config_hash, "families": {f: r.to_dict() for f, r in results.items()}},
        )
        atomic_write_text(models_dir / THRESHOLD_FILE, f"{best.threshold!r}\n")
        execution.tracker.log(execution.run_id, metrics={"threshold": best.threshold})

    if not best.reached_target:
        context.log.warning(
            f"{chosen}: no threshold reaches out-of-fold precision {config.precision_target}; using the "
            f"highest-precision one ({best.threshold:.4f}, precision {best.precision:.3f})"
        )
    table = ["| family | threshold | oof precision | oof recall | target reached |", "|---|---|---|---|---|"]
    for family, r in results.items():
        table.append(
            f"| {family} | {r.threshold:.4f} | {r.precision:.4f} | {r.recall:.4f} | {'yes' if r.reached_target else 'NO'} |"
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
            "per_family": dg.MetadataValue.md("\n".join(table)),
            "path": dg.MetadataValue.path(str(models_dir / THRESHOLD_FILE)),
        },
        data_version=dg.DataVersion(
            hashlib.sha256(repr(sorted((f, r.threshold) for f, r in results.items())).encode()).hexdigest()
        ),
    )


@dg.asset(
    partitions_def=experiment_partitions_def,
    group_name="training",
    deps=[candidate_models, decision_threshold],
    kinds={"parquet", "duckdb"},
)
def evaluation_metrics(
    context: dg.AssetExecutionContext, storage: SharedDrive, catalog: ExperimentCatalog, mlflow: MlflowTracking
) -> dg.MaterializeResult:
    """Test-set metrics of every family and the trivial baseline, as hive-partitioned parquet plus predictions."""
    from pipeline_assets.training.evaluation import evaluate, metric_records, scoreboard_markdown
    from pipeline_assets.training.promotion import select_champion

    with _mlflow_execution(context, mlflow, "evaluation_metrics") as execution:
        loaded = catalog.load(context.partition_key)
        config = loaded.config
        meta = _split_meta(storage, config.name)
        manifest = _current_manifest(storage, loaded, meta)
        models_dir = storage.models_dir(config.name)
        thresholds: dict[str, float] = {}
        if config.task == "classification":
            recorded = _read_json(models_dir / THRESHOLDS_FILE, "decision_threshold")
            thresholds = {f: r["threshold"] for f, r in recorded["families"].items()}
        train = _read_split(storage, config.name, "train")
        test = _read_split(storage, config.name, "test")
        evaluation_dir = storage.evaluation_dir(config.name)
        execution.open(loaded, meta)

        artifacts = {family: models_dir / entry["artifact"] for family, entry in manifest["families"].items()}
        outcome = evaluate(config, train, test, artifacts, thresholds, manifest.get("scale"))
        cv_values = {}
        for family, entry in manifest["families"].items():
            cv_values[family] = {m: s["mean"] for m, s in entry["cv"].items()}
            cv_values[family].update({f"{m}_std": s["std"] for m, s in entry["cv"].items()})
            if family in thresholds:
                cv_values[family]["threshold"] = thresholds[family]
        now = dt.datetime.now(dt.UTC)
        records = metric_records(config.name, config.config_hash, "test", outcome.metrics, now)
        records += metric_records(config.name, config.config_hash, "cv", cv_values, now)
        written = write_metrics(evaluation_dir, records, source="candidates")
        with atomic_path(evaluation_dir / "predictions" / "test.parquet") as tmp:
            outcome.predictions.to_parquet(tmp, index=False)
        with atomic_path(evaluation_dir / "predictions" / "cv.parquet") as tmp:
            pd.read_parquet(models_dir / OOF_FILE).to_parquet(tmp, index=False)
        for family, entry in manifest["families"].items():
            execution.tracker.log(entry["run_id"], metrics={f"test_{m}": v for m, v in outcome.metrics[family].items()})

    selection = config.selection_metric
    cv = {f: v["cv"] for f, v in manifest["families"].items()}
    leader = select_champion({f: s[selection]["mean"] for f, s in cv.items()}, selection, config.families)
    scoreboard = scoreboard_markdown(config.task, selection, cv, outcome.metrics, leader)
    context.log.info(f"{config.name} scoreboard (ranked by cv {selection}; test metrics beside):\n{scoreboard}")
    return dg.MaterializeResult(
        metadata={
            "scoreboard": dg.MetadataValue.md(scoreboard),
            "selection_metric": selection,
            "leader": leader,
            "baseline": outcome.baseline,
            "metric_files": len(written),
            "test_rows": len(test),
            "metrics_dir": dg.MetadataValue.path(str(evaluation_dir / "metrics")),
            "predictions": dg.MetadataValue.path(str(evaluation_dir / "predictions" / "test.parquet")),
            "duckdb": f"SELECT * FROM read_parquet('{evaluation_dir}/metrics/*/*/*.parquet', hive_partitioning = true)",
        }
    )


def _test_metrics(evaluation_dir: Path, config_hash: str) -> dict[str, dict[str, float]]:
    """model → metric → value from this asset group's own test-metric files, read through DuckDB."""
    import duckdb

    pattern = evaluation_dir / "metrics" / "dataset=test" / "*" / "candidates.parquet"
    rows = duckdb.sql(
        f"SELECT model, metric, value FROM read_parquet('{pattern}', hive_partitioning = true) WHERE config_hash = ?",
        params=[config_hash],
    ).fetchall()
    test: dict[str, dict[str, float]] = {}
    for model, metric, value in rows:
        test.setdefault(model, {})[metric] = value
    return test


@dg.asset(
    partitions_def=experiment_partitions_def,
    group_name="training",
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
)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    storage: SharedDrive,
    catalog: ExperimentCatalog,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The best family by the experiment's rule, gated on the baseline, promoted (pointer, history, registry alias)."""
    from pipeline_assets.training import promotion
    from pipeline_assets.training.evaluation import BASELINE
    from pipeline_assets.training.lineage import write_lineage
    from pipeline_assets.training.metrics import better, lower_is_better

    with _mlflow_execution(context, mlflow, "champion_model") as execution:
        loaded = catalog.load(context.partition_key)
        exp = loaded.config
        meta = _split_meta(storage, exp.name)
        manifest = _current_manifest(storage, loaded, meta)
        models_dir = storage.models_dir(exp.name)
        metric = exp.selection_metric
        families = exp.families
        baseline = BASELINE[exp.task]
        test = _test_metrics(storage.evaluation_dir(exp.name), exp.config_hash)
        missing = [m for m in [*families, baseline] if metric not in test.get(m, {})]
        if missing:
            raise ValueError(
                f"{storage.evaluation_dir(exp.name) / 'metrics'}: no test {metric!r} for {missing}. "
                "Fix: materialize evaluation_metrics for this experiment first."
            )
        parent_id = execution.open(loaded, meta)

        cv_scores = {f: manifest["families"][f]["cv"][metric]["mean"] for f in families}
        champion = promotion.select_champion(cv_scores, metric, families)
        entry = manifest["families"][champion]
        champion_test, baseline_test = test[champion][metric], test[baseline][metric]
        beats = better(metric, champion_test, baseline_test)
        check = dg.AssetCheckResult(
            check_name=BASELINE_CHECK,
            passed=bool(beats),
            metadata={
                "metric": metric,
                "rule": "lower is better" if lower_is_better(metric) else "higher is better",
                "champion": champion,
                "champion_test_value": champion_test,
                "baseline": baseline,
                "baseline_test_value": baseline_test,
            },
        )
        summary = {f"test_{k}": v for k, v in test[champion].items()}
        summary.update({f"cv_{metric}": cv_scores[champion], f"baseline_test_{metric}": baseline_test})
        execution.tracker.log(parent_id, metrics=summary, tags={"mlgraph.champion": champion})
        if not beats:
            execution.failed = True  # the failed blocking check fails this Dagster run
            execution.tracker.log(parent_id, tags={"mlgraph.promoted": "false"})
            context.log.error(
                f"{champion} does not beat {baseline} on test {metric} "
                f"({champion_test:.4f} vs {baseline_test:.4f}): not promoted"
            )
            return dg.MaterializeResult(
                metadata={"champion": champion, "promoted": False, "reason": f"does not beat {baseline}"},
                check_results=[check],
            )

        store = promotion.PromotionStore(storage.promotion_dir(exp.config_hash))
        decision = promotion.decide(store.current(), exp.config_hash, meta["dataset_sha256"], config.force)
        if decision.promote:
            client = execution.tracker.client
            registered = mlflow.registered_model_name(exp.name)
            version = promotion.register_version(
                client, registered, entry["model_uri"], entry["run_id"],
                {"config_hash": exp.config_hash, "model_type": champion, "dataset_sha256": meta["dataset_sha256"]},
            )
            # One bundle per registered version: retraining rewrites models/{exp}/<family>.*, but a promoted
            # model, its threshold and its lineage stay as promoted (and a rollback finds them).
            bundle = models_dir / CHAMPIONS_DIR / f"v{version}"
            champion_file = _copy_file(models_dir / entry["artifact"], bundle / entry["artifact"])
            threshold_file = None
            if exp.task == "classification":
                threshold_file = _copy_file(models_dir / THRESHOLD_FILE, bundle / THRESHOLD_FILE)
            pointer = {
                "run_id": entry["run_id"],
                "model_type": champion,
                "config_hash": exp.config_hash,
                "model_uri": entry["model_uri"],
                "score": cv_scores[champion],
                "metric": metric,
                "score_source": "cv",
                "test_score": champion_test,
                "baseline_test_score": baseline_test,
                "timestamp": promotion.utc_now(),
                "experiment": exp.name,
                "dataset_sha256": meta["dataset_sha256"],
                "registered_model": registered,
                "model_version": version,
                "model_path": str(champion_file),
                "artifact_sha256": entry["artifact_sha256"],
                "lineage_path": str(bundle / LINEAGE_FILE),
                "parent_run_id": manifest["parent_run_id"],
                "dagster_run_id": context.run.run_id,
            }
            if threshold_file is not None:
                pointer["threshold"] = float(threshold_file.read_text().strip())
                pointer["threshold_path"] = str(threshold_file)
            write_lineage(
                bundle / LINEAGE_FILE,
                {key: pointer[key] for key in ("experiment", "run_id", "parent_run_id", "dagster_run_id", "model_type",
                                                "model_uri", "registered_model", "model_version", "config_hash",
                                                "dataset_sha256", "timestamp")},
                {
                    "dataset_train": storage.dataset_path(exp.name, "train"),
                    "dataset_test": storage.dataset_path(exp.name, "test"),
                    "config": loaded.path,
                    "model": champion_file,
                    "threshold": threshold_file,
                },
            )
            _copy_file(bundle / LINEAGE_FILE, models_dir / LINEAGE_FILE)
            promotion.move_alias(client, registered, version)
            store.promote(pointer)
            execution.tracker.log(parent_id, tags={"mlgraph.promoted": "true", "mlgraph.model_version": version})
            context.log.info(f"promoted {champion} ({registered} v{version}, alias champion): {decision.reason}")
        else:
            execution.tracker.log(parent_id, tags={"mlgraph.promoted": "false"})
            context.log.info(f"not promoted again: {decision.reason}")
        current = store.current() or {}

    return dg.MaterializeResult(
        metadata={
            "champion": champion,
            "promoted": decision.promote,
            "reason": decision.reason,
            "metric": metric,
            "cv_score": cv_scores[champion],
            "test_score": champion_test,
            "baseline_test_score": baseline_test,
            "current_run_id": str(current.get("run_id", "")),
            "model_version": str(current.get("model_version", "")),
            "pointer": dg.MetadataValue.path(str(store.current_path)),
        },
        check_results=[check],
    )
