"""How candidate_models runs a spec's sweep inside Dagster: where trials run, and what the UI shows.

Trials run as Slurm jobs when the run itself was routed to Slurm by the instance's SlurmRunLauncher,
otherwise in a pool of local worker processes (up to the cores, bounded by the spec's max_parallel).
Progress goes to the run's log (a line per trial with its MLflow run) and, as an observation of
candidate_models, to the asset's page (done / running / failed / pruned of the total).
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from mlgraph.core.experiment import ExperimentConfig, ModelSpec
from mlgraph.training.mlflow_runs import SweepTracking, run_link
from mlgraph.training.sweep_runners import LocalRunner, Runner
from mlgraph.training.sweeps import Progress, local_slots


def runner_for(context: dg.AssetExecutionContext, spec: ModelSpec) -> Runner:
    from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
    from mlgraph.training.candidates import available_cores

    launcher = context.instance.run_launcher
    if isinstance(launcher, SlurmRunLauncher) and launcher.routes_to_slurm(context.run)[0]:
        from mlgraph.launcher.sweep_jobs import SlurmTrialRunner

        assert spec.sweep is not None
        # On a cluster every trial may run at once (the scheduler queues what does not fit).
        slots = spec.sweep.max_parallel or trial_count(spec)
        context.log.info(f"sweep {spec.key}: trials go to Slurm, up to {slots} at once")
        return SlurmTrialRunner(launcher, context.run, slots)
    slots = local_slots(spec, available_cores())
    context.log.info(f"sweep {spec.key}: trials run in {slots} local worker process(es)")
    return LocalRunner(slots)


def trial_count(spec: ModelSpec) -> int:
    sweep = spec.sweep
    assert sweep is not None
    if sweep.grid is not None:
        count = 1
        for values in sweep.grid.values():
            count *= len(values)
        return count
    assert sweep.search is not None
    return sweep.search.n_trials


class SweepProgress:
    """The Progress callbacks of every sweep in one candidate_models step, and their MLflow runs."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        tracker: Any,
        parent_id: str,
        tags: dict[str, str],
        tracking_uri: str,
        config: ExperimentConfig,
    ):
        self.context, self.tracker, self.parent_id, self.tags = context, tracker, parent_id, tags
        self.tracking_uri = tracking_uri
        self.config = config
        self.tracking: dict[str, SweepTracking] = {}

    def __call__(self, spec: ModelSpec, sweep_key: str, metric: str) -> Progress:
        tracking = SweepTracking(self.tracker, self.parent_id, self.tags, spec, sweep_key, metric)
        self.tracking[spec.key] = tracking
        total = trial_count(spec)
        log = self.context.log

        def ended(record: dict[str, Any], running: Any) -> None:
            run_id = tracking.trial_ended(record, running)
            link = run_link(self.tracking_uri, self.tracker.experiment_id, run_id)
            cv = (record.get("cv") or {}).get(metric, {}).get("mean")
            result = f"cv {metric} {cv:.4f}" if cv is not None else record.get("error", "")
            log.info(
                f"sweep {spec.key} trial {record['number']} {record['status']} {record['params']}: {result} [MLflow {link}]"
            )

        def counted(counts: dict[str, int]) -> None:
            log.info(
                f"sweep {spec.key}: {counts['done']}/{total} done, {counts['running']} running, "
                f"{counts['failed']} failed, {counts['pruned']} pruned"
            )
            self.context.log_event(
                dg.AssetObservation(
                    asset_key=self.context.asset_key,
                    partition=self.context.partition_key,
                    metadata={
                        "sweep": spec.key,
                        "trials_total": total,
                        **{f"trials_{k}": v for k, v in counts.items()},
                    },
                )
            )

        return Progress(on_start=tracking.trial_started, on_end=ended, on_count=counted)

    def finish(self, sweeps: dict[str, Any]) -> dict[str, str]:
        """Close each sweep's MLflow run; spec → the best trial's MLflow run id."""
        best_runs = {}
        for name, outcome in sweeps.items():
            best_run = outcome.best.get("mlflow_run_id") if outcome.best else None
            self.tracking[name].finish(outcome, best_run)
            if best_run:
                best_runs[name] = best_run
        return best_runs


def sweep_summary(sweeps: dict[str, Any]) -> str:
    """One line per swept spec for candidate_models' metadata."""
    from mlgraph.core.markdown import md_table

    rows = []
    for name, outcome in sweeps.items():
        counts = outcome.counts()
        best = outcome.best or {}
        cv = best.get("cv", {}).get(outcome.metric, {}).get("mean")
        rows.append(
            [
                name,
                outcome.kind,
                outcome.runner,
                f"{counts['finished']} / {counts['failed']} / {counts['pruned']}",
                f"{outcome.reused} reused, {outcome.ran} ran",
                f"#{best.get('number')} {best.get('params')}",
                f"{cv:.4f}" if cv is not None else "-",
                f"{outcome.wall_seconds:.1f}",
            ]
        )
    return md_table(
        ["spec", "sweep", "runner", "finished / failed / pruned", "trials", "best trial", "best cv", "wall s"], rows
    )
