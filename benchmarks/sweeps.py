"""Hyperparameter sweeps: parallel speed-up, per-trial overhead, and adaptive search against a grid.

Same code as the `candidate_models` asset (mlgraph.training.sweeps), without Dagster or MLflow:

1. The design documents' 3 learning rates x 3 batch sizes of a GRU on the demo forecasting data, run
   sequentially (1 worker) and with 2 local workers (the baseline and the figure, in the same run), and
   through Slurm (2 worker jobs pulling trials from the sweep's queue) when `sbatch` is on PATH. Per trial, overhead = trial wall time
   (submission to record, as the orchestrator sees it) minus its fit time (CV folds + final fit).
   Targets: speed-up >= 1.7x with 2 workers; overhead <= 1 s locally, <= 3 s through Slurm.
2. A 30-trial TPE search on LightGBM (learning_rate 0.01..0.3 log, num_leaves 8..64) against the
   9-point grid of the same space (3 x 3), on the demo regression data: best CV RMSE and wall time.

    .venv/bin/python benchmarks/sweeps.py [--rows 3000] [--epochs 8] [--trials 30] [--no-slurm]

Prints JSON.
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlgraph.core.experiment import ExperimentConfig, load_experiment_file
from mlgraph.data.generators import generate
from mlgraph.data.splitting import split_dataset
from mlgraph.training.sweep_runners import LocalRunner
from mlgraph.training.sweeps import Sweep

GRID = {"learning_rate": [0.001, 0.003, 0.01], "batch_size": [32, 64, 128]}


def prepared(name: str, rows: int, spec: dict, work: Path) -> tuple[ExperimentConfig, Path, Path]:
    loaded = load_experiment_file(ROOT / "config" / "experiments" / f"{name}.yaml")
    config = loaded.config
    raw = generate(config.dataset.generator, rows, config.dataset.seed).to_pandas()
    split = split_dataset(raw, config)
    work.mkdir(parents=True, exist_ok=True)
    split.train.to_parquet(work / "train.parquet")
    split.test.to_parquet(work / "test.parquet")
    data = json.loads(config.model_dump_json())
    data["models"] = [spec]
    return ExperimentConfig.model_validate_json(json.dumps(data)), work / "train.parquet", work / "test.parquet"


def summary(outcome, wall: float) -> dict:
    finished = [r for r in outcome.records if r["status"] == "finished"]
    overheads = [r["overhead_seconds"] for r in finished]
    fits = [r["fit_seconds"] + r["cv_seconds"] for r in finished]
    return {
        "wall_seconds": round(wall, 2),
        "trials": len(outcome.records),
        "finished": len(finished),
        "fit_seconds_sum": round(sum(fits), 2),
        "overhead_seconds_median": round(statistics.median(overheads), 3),
        "overhead_seconds_mean": round(statistics.mean(overheads), 3),
        "overhead_seconds_max": round(max(overheads), 3),
        "best_params": outcome.best["params"] if outcome.best else None,
        "best_cv": outcome.best["cv"][outcome.metric]["mean"] if outcome.best else None,
    }


def run(config, train, test, trials: Path, runner, metric: str):
    start = time.perf_counter()
    outcome = Sweep(config, config.models[0], metric, "bench", trials, train, test, runner).run()
    return outcome, time.perf_counter() - start


def slurm_runner(slots: int):
    """A SlurmTrialRunner as candidate_models builds it under the Slurm launcher (a throwaway instance)."""
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
    from mlgraph.launcher.sweep_jobs import SlurmTrialRunner

    instance = dg.DagsterInstance.ephemeral()
    launcher = SlurmRunLauncher(route="all", cpus=1, mem="1G", time="00:30:00")
    launcher.register_instance(instance)
    return SlurmTrialRunner(launcher, DagsterRun(job_name="benchmark", run_id="0" * 36), slots)


def gru_grid(args, work: Path) -> dict:
    spec = {
        "name": "gru-grid",
        "family": "gru",
        "params": {"epochs": args.epochs, "patience": args.epochs},
        "sweep": {"grid": GRID},
    }
    config, train, test = prepared("demand_forecast", args.rows, spec, work / "gru")
    config = config.model_copy(update={"cv_folds": 2})
    out = {}
    for label, runner in (("sequential", lambda: LocalRunner(1)), ("local_2_workers", lambda: LocalRunner(2))):
        outcome, wall = run(config, train, test, work / "gru" / label, runner(), "composite")
        out[label] = summary(outcome, wall)
    out["speedup_2_workers"] = round(out["sequential"]["wall_seconds"] / out["local_2_workers"]["wall_seconds"], 2)
    if not args.no_slurm:
        from mlgraph.slurm.client import SlurmClient

        if SlurmClient.available():
            outcome, wall = run(config, train, test, work / "gru" / "slurm", slurm_runner(2), "composite")
            out["slurm_2_workers"] = summary(outcome, wall)
        else:
            out["slurm_2_workers"] = "skipped: no sbatch on PATH"
    return out


def tpe_vs_grid(args, work: Path) -> dict:
    space = {
        "learning_rate": {"low": 0.01, "high": 0.3, "log": True},
        "num_leaves": {"low": 8, "high": 64, "type": "int"},
    }
    grid = {"learning_rate": [0.01, 0.055, 0.3], "num_leaves": [8, 24, 64]}
    base = {"name": "lgbm", "family": "lightgbm", "params": {"n_estimators": 100}}
    out = {}
    for label, sweep in (
        ("grid_9", {"grid": grid}),
        (f"tpe_{args.trials}", {"search": {"n_trials": args.trials, "space": space, "seed": 7}}),
    ):
        config, train, test = prepared("salary", args.rows, {**base, "sweep": sweep}, work / label)
        config = config.model_copy(update={"cv_folds": 3})
        outcome, wall = run(config, train, test, work / label / "trials", LocalRunner(2), "rmse")
        out[label] = summary(outcome, wall)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--no-slurm", action="store_true")
    parser.add_argument("--only", choices=("gru", "tpe"), default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlgraph-sweeps-") as tmp:
        result = {"machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()}}
        result["settings"] = {"rows": args.rows, "epochs": args.epochs, "trials": args.trials}
        if args.only in (None, "gru"):
            result["gru_3x3_grid"] = gru_grid(args, Path(tmp))
        if args.only in (None, "tpe"):
            result["lightgbm_tpe_vs_grid"] = tpe_vs_grid(args, Path(tmp))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
