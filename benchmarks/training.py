"""Candidate training on the demo data: per-family fit and CV time, and the parallel wall time.

Uses the same code as the `candidate_models` asset (mlgraph.training.candidates), without
Dagster or MLflow: the demo generator and split give the experiment's real training split, every
configured family is cross-validated and fitted, the tasks spread over the machine's cores.
`fit_seconds` is the final fit on the whole training split; `cv_seconds` the sum of the fold fits
(+ predictions); `wall_seconds` what the asset waits for. Target (training issue): student_engagement
(5 families × 5 folds, 12,000 rows) within 90 s on 2 cores. `--repeat 2` also checks that the
second run's fold metrics are identical (determinism). `--models random_forest lightgbm xgboost` trains
those families instead of the YAML's specs (the YAML's params kept where it has the family), e.g. to set
LightGBM and XGBoost beside random forest; every spec's test-set metric is reported too.

    .venv/bin/python benchmarks/training.py [--experiments student_engagement salary demand_forecast]
                                           [--jobs N] [--repeat 2] [--models FAMILY ...]

Prints JSON.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlgraph.core.experiment import load_experiment_file
from mlgraph.data.generators import generate
from mlgraph.data.splitting import split_dataset
from mlgraph.training.candidates import available_cores, train_candidates
from mlgraph.training.evaluation import evaluate


def with_models(config, families: list[str] | None):
    """`config` training `families` instead of its specs (params from the YAML where it lists the family)."""
    if not families:
        return config
    specs = [{"family": f, "params": config.model_params(f)} for f in families]
    return type(config).model_validate({**config.model_dump(), "models": specs})


def bench(name: str, jobs: int | None, repeat: int, families: list[str] | None = None) -> dict:
    loaded = load_experiment_file(ROOT / "config" / "experiments" / f"{name}.yaml")
    config = with_models(loaded.config, families)
    dataset = config.dataset
    raw = generate(dataset.generator, dataset.rows, dataset.seed).to_pandas()
    split = split_dataset(raw, config)
    runs = []
    with tempfile.TemporaryDirectory(prefix="mlgraph-bench-") as tmp:
        for i in range(repeat):
            start = time.perf_counter()
            outcome = train_candidates(config, split.train, Path(tmp) / f"run{i}", n_jobs=jobs)
            runs.append((time.perf_counter() - start, outcome))
        wall, outcome = runs[0]
        artifacts = {n: r.artifact for n, r in outcome.models.items()}
        tested = evaluate(config, split.train, split.test, artifacts, None, outcome.data.scale).metrics
    metric = outcome.selection_metric or config.selection_metric
    result = {
        "task": config.task,
        "train_rows": len(split.train),
        "folds": config.cv_folds,
        "families": {
            family: {
                "fit_seconds": round(r.fit_seconds, 3),
                "cv_seconds": round(r.cv_seconds, 3),
                f"cv_{metric}_mean": round(r.cv[metric]["mean"], 6),
                f"cv_{metric}_std": round(r.cv[metric]["std"], 6),
                f"test_{metric}": round(tested[family][metric], 6),
                **({"epochs_run": len(r.history)} if r.history else {}),
            }
            for family, r in outcome.models.items()
        },
        "serial_seconds": round(sum(r.fit_seconds + r.cv_seconds for r in outcome.models.values()), 3),
        "workers": outcome.n_jobs,
        "wall_seconds": round(wall, 3),
        "wall_seconds_all_runs": [round(w, 3) for w, _ in runs],
    }
    if repeat > 1:
        result["deterministic"] = all(
            other.models[f].fold_metrics == outcome.models[f].fold_metrics
            for _, other in runs[1:]
            for f in outcome.models
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["student_engagement", "salary", "demand_forecast"])
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: the cores available)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=None, metavar="FAMILY", help="families to train instead")
    args = parser.parse_args()
    report = {
        "benchmark": "training",
        "machine": {
            "cores_available": available_cores(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "target": "student_engagement candidate_models within 90 s on 2 cores",
        "experiments": {name: bench(name, args.jobs, args.repeat, args.models) for name in args.experiments},
    }
    se = report["experiments"].get("student_engagement")
    if se is not None:
        report["student_engagement_within_target"] = se["wall_seconds"] <= 90
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
