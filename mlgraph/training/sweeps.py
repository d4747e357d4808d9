"""Hyperparameter sweeps: a model spec's `sweep:` run as one execution per trial, in parallel.

The orchestrator (this module) runs inside `candidate_models`. It plans the trials — every point of a
grid, or Optuna's suggestions for a search — and hands each to a runner: a pool of local worker
processes, or Slurm worker jobs pulling from the sweep's queue (mlgraph.launcher.sweep_jobs). The
worker side is mlgraph.training.sweep_trial; the drive is the only channel between the two:

    artifacts/{experiment}/sweeps/{spec}/trials/{trial_key}/
        request.json   what to run (written before the worker starts)
        claim.json     who runs it: this process (local pool) or a Slurm job id
        trial.json     the record, written last by the worker: finished | failed | pruned
        {spec}.joblib / .pt, oof.parquet   the trial's model and out-of-fold predictions

A trial's key is the hash of its params, the experiment's config (its sweeps left out, so growing a
search reuses what ran) and the training data. Rerunning a sweep reuses every finished or pruned
trial, reruns failed ones, and waits for a trial whose claim is still alive (a Slurm job, or another
process) instead of starting it twice. Optuna's study lives in memory and is rebuilt from the records
each time: the drive, not a study database, is the source of truth.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_write_json
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.core.hashing import sha256_text
from mlgraph.core.metrics import better, lower_is_better
from mlgraph.core.model_spec import ModelSpec, Range
from mlgraph.training.sweep_runners import Owner, Runner
from mlgraph.training.sweep_trial import (
    FAILED,
    FINISHED,
    PRUNED,
    RECORD_FILE,
    PruneSetup,
    TrialRequest,
    read_record,
)

CLAIM_FILE = "claim.json"
POLL_SECONDS = 0.2
# Suggestions in a row that had already run before a search takes its space as used up.
MAX_REPEATS = 50


class SweepError(ValueError):
    """A sweep that cannot start (its params are not the family's): one message naming the spec and the fix."""


def sweep_key(config: ExperimentConfig, spec: ModelSpec, dataset_sha256: str) -> str:
    """What every trial of this spec shares: the config with its sweeps left out, the spec's name, the data."""
    plain = config.model_copy(update={"models": [m.model_copy(update={"sweep": None}) for m in config.models]})
    return sha256_text(json.dumps([plain.config_hash, spec.key, dataset_sha256]))[:16]


def trial_key(base: str, params: Mapping[str, Any]) -> str:
    return sha256_text(json.dumps([base, params], sort_keys=True, default=str))[:16]


def grid_points(spec: ModelSpec) -> list[dict[str, Any]]:
    """Every combination of a grid, the first param varying slowest (the order the YAML lists them)."""
    grid = spec.sweep.grid or {}  # type: ignore[union-attr]
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def distributions(spec: ModelSpec) -> dict[str, Any]:
    """The search space as Optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, space in spec.sweep.search.space.items():  # type: ignore[union-attr]
        if isinstance(space, Range):
            if space.type == "int":
                step = int(space.step or 1)
                out[name] = IntDistribution(int(space.low), int(space.high), log=space.log, step=step)
            else:
                out[name] = FloatDistribution(float(space.low), float(space.high), log=space.log, step=space.step)
        else:
            out[name] = CategoricalDistribution(space)
    return out


def check_params(config: ExperimentConfig, spec: ModelSpec, points: list[dict[str, Any]]) -> None:
    """Every planned point must be settings the family takes: a typo fails the sweep before any trial runs."""
    from mlgraph.training.candidates import spec_params

    for params in points[:1] or [{}]:
        trial_spec = spec.model_copy(update={"params": {**spec.params, **params}, "sweep": None})
        try:
            spec_params(config, trial_spec)
        except (ValueError, TypeError) as exc:
            raise SweepError(f"models[{spec.key}].sweep: {exc}") from None


@dataclass
class Running:
    number: int
    key: str
    params: dict[str, Any]
    owner: Owner
    trial_dir: Path
    submitted: float
    optuna_trial: Any = None  # the study's trial object for trials this orchestrator asked for
    adopted: bool = False
    mlflow_run_id: str | None = None


@dataclass
class SweepOutcome:
    spec: str
    sweep_key: str
    kind: str  # grid | search
    metric: str
    records: list[dict[str, Any]]  # every trial of this sweep, by number
    reused: int
    ran: int
    wall_seconds: float
    runner: str
    best: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        out = {FINISHED: 0, FAILED: 0, PRUNED: 0}
        for record in self.records:
            out[record["status"]] = out.get(record["status"], 0) + 1
        return out


@dataclass
class Progress:
    """What the sweep reports as it goes (the UI's progress lines, MLflow's trial runs)."""

    on_start: Callable[[Running], None] = lambda running: None  # may set running.mlflow_run_id
    on_end: Callable[[dict[str, Any], Running | None], None] = lambda record, running: None
    on_count: Callable[[dict[str, int]], None] = lambda counts: None


def score(record: Mapping[str, Any], metric: str) -> float | None:
    """A finished trial's cross-validated selection metric (None for a failed or pruned one)."""
    if record.get("status") != FINISHED:
        return None
    value = record.get("cv", {}).get(metric, {}).get("mean")
    return float(value) if value is not None and value == value else None


def best_trial(records: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The finished trial with the best CV score, direction-aware; ties go to the earlier trial."""
    best = None
    for record in sorted(records, key=lambda r: r["number"]):
        value = score(record, metric)
        if value is not None and (best is None or better(metric, value, score(best, metric))):
            best = record
    return best


def existing_records(root: Path, base: str) -> Iterator[dict[str, Any]]:
    """Ended trials on the drive that belong to this sweep (same config, data and spec)."""
    if not root.is_dir():
        return
    for trial_dir in sorted(root.iterdir()):
        record = read_record(trial_dir)
        if record is not None and record.get("sweep_key") == base:
            yield record


def _read_claim(trial_dir: Path) -> tuple[Owner, dict[str, Any]] | None:
    try:
        data = json.loads((trial_dir / CLAIM_FILE).read_text(encoding="utf-8"))
        return Owner(**data["owner"]), data
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Sweep:
    """One spec's sweep, run to completion by `run()`."""

    def __init__(
        self,
        config: ExperimentConfig,
        spec: ModelSpec,
        metric: str,
        dataset_sha256: str,
        trials_root: Path,
        train_path: Path,
        test_path: Path,
        runner: Runner,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        assert spec.sweep is not None
        self.config, self.spec, self.sweep, self.metric = config, spec, spec.sweep, metric
        self.base = sweep_key(config, spec, dataset_sha256)
        self.root = trials_root
        self.train_path, self.test_path = train_path, test_path
        self.runner = runner
        self.progress = progress or Progress()
        self.clock = clock
        self.records: dict[str, dict[str, Any]] = {r["key"]: r for r in existing_records(self.root, self.base)}
        self.reused = {k for k, r in self.records.items() if r["status"] in (FINISHED, PRUNED)}
        self.running: dict[str, Running] = {}
        self.ran = 0
        self.config_json = config.model_dump_json()

    # -- one trial --------------------------------------------------------------------------------
    def _done(self, key: str) -> dict[str, Any] | None:
        record = self.records.get(key)
        return record if record is not None and record["status"] in (FINISHED, PRUNED) else None

    def _adopt(self, key: str, number: int, params: dict[str, Any]) -> bool:
        """A trial claimed by an owner that is still alive is waited for, never started twice."""
        trial_dir = self.root / key
        claimed = _read_claim(trial_dir)
        if claimed is None or key in self.records:  # a record: its owner ended it
            return False
        owner, data = claimed
        if self.runner.ended(owner, key) is not None:
            return False
        self.running[key] = Running(
            number, key, params, owner, trial_dir, self.clock(), adopted=True, mlflow_run_id=data.get("mlflow_run_id")
        )
        return True

    def _start(self, number: int, params: dict[str, Any], optuna_trial: Any = None) -> None:
        key = trial_key(self.base, params)
        trial_dir = self.root / key
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / RECORD_FILE).unlink(missing_ok=True)  # a failed record is replaced, never mixed
        request = TrialRequest(
            experiment_json=self.config_json,
            spec=self.spec.key,
            params=params,
            number=number,
            key=key,
            sweep_key=self.base,
            train_path=str(self.train_path),
            test_path=str(self.test_path),
            trial_dir=str(trial_dir),
            prune=self._prune_setup(),
            parent_pid=os.getpid() if self.runner.kind == "local" else None,
        )
        path = request.write()
        running = Running(number, key, params, Owner("pending"), trial_dir, self.clock(), optuna_trial)
        running.owner = self.runner.start(request, path)
        self.progress.on_start(running)
        claim = {"owner": running.owner.__dict__, "number": number, "mlflow_run_id": running.mlflow_run_id}
        atomic_write_json(trial_dir / CLAIM_FILE, {**claim, "claimed_at": time.time()})
        self.running[key] = running
        self.ran += 1

    def _report_unlogged(self) -> None:
        """Trials that ended after their orchestrator died (a crash): log them now, into the run it opened."""
        for key, record in self.records.items():
            if record.get("mlflow_run_id"):
                continue
            trial_dir = self.root / key
            claimed = _read_claim(trial_dir)
            owner, data = claimed if claimed else (Owner("unknown"), {})
            running = Running(
                record["number"],
                key,
                record["params"],
                owner,
                trial_dir,
                self.clock(),
                adopted=True,
                mlflow_run_id=data.get("mlflow_run_id"),
            )
            self.progress.on_end(record, running)
            if running.mlflow_run_id:
                record["mlflow_run_id"] = running.mlflow_run_id
                atomic_write_json(trial_dir / RECORD_FILE, record)

    def _prune_setup(self) -> PruneSetup | None:
        if not self.sweep.prune:
            return None
        completed = [r.get("prune_losses") or [] for r in self.records.values() if r["status"] == FINISHED]
        return PruneSetup(self.sweep.prune_startup_trials, self.sweep.prune_warmup_epochs, completed)

    def _collect(self) -> list[tuple[dict[str, Any], Running]]:
        """Trials that ended since the last look (a record, or an owner that died without one)."""
        ended = []
        for key, running in list(self.running.items()):
            record = read_record(running.trial_dir)
            if record is None:
                why = self.runner.ended(running.owner, key)
                if why is None:
                    continue
                record = read_record(running.trial_dir)  # written just before the owner ended?
                if record is None:
                    record = {
                        "key": key,
                        "sweep_key": self.base,
                        "spec": self.spec.key,
                        "number": running.number,
                        "params": running.params,
                        "status": FAILED,
                        "error": f"no record: {why}",
                    }
                    atomic_write_json(running.trial_dir / RECORD_FILE, record)
            # Seen from here: submission to record, so it includes the runner's own cost (a Slurm job's start).
            record["trial_wall_seconds"] = self.clock() - running.submitted
            if "fit_seconds" in record:
                fit = record["fit_seconds"] + record["cv_seconds"]
                record["overhead_seconds"] = record["trial_wall_seconds"] - fit
            del self.running[key]
            self.records[key] = record
            self.progress.on_end(record, running)
            if running.mlflow_run_id:  # kept with the record: a later rerun that reuses it links the same run
                record["mlflow_run_id"] = running.mlflow_run_id
            atomic_write_json(running.trial_dir / RECORD_FILE, record)
            ended.append((record, running))
        if ended:
            self.progress.on_count(self._counts())
        return ended

    def _counts(self) -> dict[str, int]:
        counts = {"done": 0, "running": len(self.running), "failed": 0, "pruned": 0}
        for record in self.records.values():
            counts[{FINISHED: "done", FAILED: "failed", PRUNED: "pruned"}[record["status"]]] += 1
        return counts

    def _wait(self) -> list[tuple[dict[str, Any], Running]]:
        while self.running:
            ended = self._collect()
            if ended:
                return ended
            time.sleep(POLL_SECONDS)
        return []

    # -- the sweep ------------------------------------------------------------------------------------
    def run(self) -> SweepOutcome:
        start = self.clock()
        self._report_unlogged()
        try:
            numbered = self._run_grid() if self.sweep.grid is not None else self._run_search()
        except BaseException:
            self.runner.close(abandon=True)
            raise
        self.runner.close()
        records = sorted(numbered, key=lambda r: r["number"])
        return SweepOutcome(
            spec=self.spec.key,
            sweep_key=self.base,
            kind="grid" if self.sweep.grid is not None else "search",
            metric=self.metric,
            records=records,
            reused=len([r for r in records if r["key"] in self.reused]),
            ran=self.ran,
            wall_seconds=self.clock() - start,
            runner=self.runner.kind,
            best=best_trial(records, self.metric),
        )

    def _run_grid(self) -> list[dict[str, Any]]:
        points = grid_points(self.spec)
        check_params(self.config, self.spec, points)
        keys = []
        for number, params in enumerate(points):
            key = trial_key(self.base, params)
            keys.append(key)
            if self._done(key) is not None:
                self._done(key)["number"] = number  # type: ignore[index]
                continue
            if self._adopt(key, number, params):
                continue
            while len(self.running) >= self.runner.slots:
                self._wait()
            self._start(number, params)
        self._wait_all()
        return [self.records[k] for k in keys]

    def _wait_all(self) -> None:
        while self.running:
            self._wait()

    def _run_search(self) -> list[dict[str, Any]]:
        import optuna
        from optuna.trial import TrialState, create_trial

        search = self.sweep.search
        assert search is not None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = distributions(self.spec)
        seed = search.seed if search.seed is not None else self.config.seed
        ended = len([r for r in self.records.values() if r["status"] in (FINISHED, PRUNED)])
        # A rebuilt study's sampler starts afresh: seeded as on the first run it would repeat that run's
        # first points, so the seed moves with the number of trials already on the drive.
        seed = seed if ended == 0 else int(sha256_text(f"{seed}:{ended}")[:8], 16)
        sampler = (
            optuna.samplers.TPESampler(seed=seed) if search.sampler == "tpe" else optuna.samplers.RandomSampler(seed)
        )
        direction = "minimize" if lower_is_better(self.metric) else "maximize"
        study = optuna.create_study(direction=direction, sampler=sampler)
        check_params(self.config, self.spec, [{k: _example(d) for k, d in dists.items()}])

        def add(record: dict[str, Any]) -> None:
            params = {k: record["params"][k] for k in dists if k in record["params"]}
            if len(params) != len(dists):
                return  # a record from before the space changed: kept on the drive, not in the study
            value = score(record, self.metric)
            state = TrialState.COMPLETE if value is not None else TrialState.PRUNED
            if record["status"] == FAILED:
                return
            study.add_trial(create_trial(params=params, distributions=dists, value=value, state=state))

        finished = sorted(
            (r for r in self.records.values() if r["status"] in (FINISHED, PRUNED)), key=lambda r: r["number"]
        )
        for record in finished:
            add(record)
        ours: list[dict[str, Any]] = list(finished)
        number = max((r["number"] for r in self.records.values()), default=-1) + 1
        budget = search.n_trials - len(finished)
        deadline = self.clock() + search.timeout if search.timeout else None
        repeats = 0
        # Trials another owner is still running count against the budget and are waited for.
        for trial_dir in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            claimed = _read_claim(trial_dir)
            key = trial_dir.name
            request = _read_request(trial_dir) if claimed and budget > 0 else None
            if (
                request is not None
                and request.sweep_key == self.base
                and self._adopt(key, request.number, request.params)
            ):
                budget -= 1
        while budget > 0 or self.running:
            while budget > 0 and len(self.running) < self.runner.slots:
                if deadline is not None and self.clock() >= deadline:
                    budget = 0
                    break
                trial = study.ask(dists)
                params = dict(trial.params)
                done = self._done(trial_key(self.base, params))
                if done is not None:  # the sampler came back to a point that already ran: ask again
                    study.tell(trial, score(done, self.metric), state=_state(done))
                    repeats += 1
                    if repeats >= MAX_REPEATS:  # a small discrete space is used up
                        budget = 0
                    continue
                repeats = 0
                budget -= 1
                self._start(number, params, trial)
                number += 1
            for record, running in self._wait():
                ours.append(record)
                if running.optuna_trial is not None:
                    study.tell(running.optuna_trial, score(record, self.metric), state=_state(record))
                else:
                    add(record)
        return ours


def _state(record: Mapping[str, Any]) -> Any:
    from optuna.trial import TrialState

    return {FINISHED: TrialState.COMPLETE, PRUNED: TrialState.PRUNED}.get(record["status"], TrialState.FAIL)


def _example(distribution: Any) -> Any:
    """A point of the space, to check the params' names before any trial runs."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    return distribution.low


def _read_request(trial_dir: Path) -> TrialRequest | None:
    try:
        return TrialRequest.read(trial_dir / "request.json")
    except (OSError, ValueError, TypeError):
        return None


def local_slots(spec: ModelSpec, cores: int) -> int:
    """Trials at once on this machine: the cores, bounded by the spec's max_parallel."""
    limit = spec.sweep.max_parallel if spec.sweep and spec.sweep.max_parallel else cores
    return max(1, min(limit, cores))
