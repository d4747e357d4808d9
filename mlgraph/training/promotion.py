"""Champion selection, the promotion pointer, its history, rollback, and the MLflow registry alias.

Layout (design document 002): `model-promotion/global/{config_hash}/current.json` holds the promoted
model (run_id, model_type, config_hash, model_uri, score, timestamp, ...); `history.jsonl` beside it
records every event, one JSON object a line: {"event": "promote", ...pointer} or
{"event": "rollback", ...restored pointer, "rolled_back_run_id": ...}; a retrained candidate that does
not beat the champion on the current test split leaves {"event": "not_promoted", "reason": ...}. Replaying
the history as a stack (promote pushes, rollback pops) gives the current champion and the one a
rollback restores.

The champion is chosen on the cross-validated selection metric, never on the test set, so the gate
in front of promotion (`baseline_gate`: the champion must beat the task's trivial baseline on the
test set) is a real hold-out test.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_append_line, atomic_write_bytes, atomic_write_json
from mlgraph.core.drive import LINEAGE_JSON, DrivePaths
from mlgraph.core.experiment import ExperimentConfig, LoadedExperiment
from mlgraph.core.metrics import better, lower_is_better, mlflow_metric_key
from mlgraph.core.tracking import is_already_exists, with_retry
from mlgraph.core.untrusted import Unusable, read_regular_file
from mlgraph.training.evaluation import BASELINE
from mlgraph.training.lineage import write_lineage
from mlgraph.training.model_files import ARGMAX_DECISION, classes, copy_file, is_multiclass, model_family

# The drive is writable by anyone: the pointer and its history are read as untrusted (regular files only,
# bounded), so a FIFO or a link to /dev/zero planted there cannot hang the service's reload or the daemon.
POINTER_MAX_BYTES = 1 << 20
HISTORY_MAX_BYTES = 64 << 20
CHAMPION_ALIAS = "champion"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def select_champion(scores: Mapping[str, float], metric: str, order: list[str]) -> str:
    """The family with the best score for `metric`; ties go to the family listed first in `order`."""
    usable = [f for f in order if f in scores and scores[f] == scores[f]]  # NaN never wins
    if not usable:
        raise ValueError(f"no family has a finite {metric!r} score: {dict(scores)}")
    best = usable[0]
    for family in usable[1:]:
        if better(metric, scores[family], scores[best]):
            best = family
    return best


@dataclass(frozen=True)
class BaselineGate:
    """The champion (best cross-validated family) against the task's trivial baseline on the test set."""

    metric: str
    champion: str
    cv_score: float
    champion_test: float
    baseline: str
    baseline_test: float
    champion_metrics: dict[str, float]  # every test metric of the champion

    @property
    def beats(self) -> bool:
        return bool(better(self.metric, self.champion_test, self.baseline_test))

    def check_metadata(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "rule": "lower is better" if lower_is_better(self.metric) else "higher is better",
            "champion": self.champion,
            "champion_test_value": self.champion_test,
            "baseline": self.baseline,
            "baseline_test_value": self.baseline_test,
        }

    def run_metrics(self) -> dict[str, float]:
        """What the parent MLflow run records about the champion (per-class names in MLflow's spelling)."""
        summary = {f"test_{mlflow_metric_key(k)}": v for k, v in self.champion_metrics.items()}
        summary.update({f"cv_{self.metric}": self.cv_score, f"baseline_test_{self.metric}": self.baseline_test})
        return summary

    def failure(self) -> str:
        return (
            f"{self.champion} does not beat {self.baseline} on test {self.metric} "
            f"({self.champion_test:.4f} vs {self.baseline_test:.4f}): not promoted"
        )


def baseline_gate(
    config: ExperimentConfig,
    cv_scores: Mapping[str, float],
    test: Mapping[str, Mapping[str, float]],
    where: Path,
    metric: str | None = None,
) -> BaselineGate:
    """Pick the champion on `cv_scores` and set it against the baseline's `test` value (model → metric → value).

    `metric` is the selection metric candidate_models resolved (a multiclass target's default differs).
    """
    metric = metric or config.selection_metric
    baseline = BASELINE[config.task]
    missing = [m for m in [*config.model_names, baseline] if metric not in test.get(m, {})]
    if missing:
        raise ValueError(
            f"{where}: no test {metric!r} for {missing}. Fix: materialize evaluation_metrics for this experiment first."
        )
    champion = select_champion(cv_scores, metric, config.model_names)
    return BaselineGate(
        metric=metric,
        champion=champion,
        cv_score=cv_scores[champion],
        champion_test=test[champion][metric],
        baseline=baseline,
        baseline_test=test[baseline][metric],
        champion_metrics=dict(test[champion]),
    )


def pointer_model_name(pointer: Mapping[str, Any]) -> str:
    """The promoted spec's name (pointers written before spec names carry only the family, which was the name)."""
    return str(pointer.get("model_name") or pointer.get("model_type"))


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


@dataclass(frozen=True)
class Challenge:
    """The new candidate against the current champion, both scored on the current test split."""

    metric: str
    candidate: str
    candidate_test: float
    champion: str  # "<family> v<version>"
    champion_test: float | None  # None: the champion could not score the current test split (`error` says why)
    error: str | None = None

    @property
    def beats(self) -> bool:
        """Strictly better (a tie keeps the champion); a champion that cannot score the split is beaten."""
        return self.champion_test is None or bool(better(self.metric, self.candidate_test, self.champion_test))

    def describe(self) -> str:
        if self.champion_test is None:
            return f"the current champion {self.champion} cannot score the current test split ({self.error})"
        verb = "beats" if self.beats else "does not beat"
        return (
            f"{self.candidate} {verb} the current champion {self.champion} on the current test split "
            f"(test {self.metric} {self.candidate_test:.4f} vs {self.champion_test:.4f})"
        )


def promoted_on(current: Mapping[str, Any], config_hash: str, dataset_sha256: str) -> bool:
    """Whether the current champion was promoted for this config hash and these data."""
    return current.get("config_hash") == config_hash and current.get("dataset_sha256") == dataset_sha256


def contested(current: Mapping[str, Any] | None, config_hash: str, dataset_sha256: str, force: bool) -> bool:
    """Whether a champion promoted on other data must be beaten on the current test split first."""
    return current is not None and not force and not promoted_on(current, config_hash, dataset_sha256)


def challenge_champion(
    config: ExperimentConfig,
    gate: BaselineGate,
    current: Mapping[str, Any],
    train: Any,
    test: Any,
    scale: float | None = None,
) -> Challenge:
    """Score the current champion (its promoted file and threshold) on the current test split, beside the candidate."""
    from mlgraph.training.evaluation import evaluate

    name = pointer_model_name(current)
    label = f"{name} v{current.get('model_version')}"
    threshold = current.get("threshold")
    try:
        outcome = evaluate(
            config,
            train,
            test,
            {name: Path(current["model_path"])},
            {name: float(threshold)} if threshold is not None else None,
            scale,
        )
        score = float(outcome.metrics[name][gate.metric])
    except (
        OSError,
        KeyError,
        ValueError,
        TypeError,
    ) as exc:  # missing file, changed columns: it cannot serve this data
        return Challenge(gate.metric, gate.champion, gate.champion_test, label, None, f"{type(exc).__name__}: {exc}")
    return Challenge(gate.metric, gate.champion, gate.champion_test, label, score)


def decide(
    current: Mapping[str, Any] | None,
    config_hash: str,
    dataset_sha256: str,
    force: bool,
    challenge: Challenge | None = None,
) -> PromotionDecision:
    """Promote when there is no champion, when forced, or (the data changed) when the candidate beats the champion
    on the current test split (`challenge`); never twice for the same config hash and data unless forced."""
    if current is None:
        return PromotionDecision(True, "no champion yet for this config hash")
    same = promoted_on(current, config_hash, dataset_sha256)
    if force:
        return PromotionDecision(
            True, "forced" + (": same config hash and data as the current champion" if same else "")
        )
    if same:
        return PromotionDecision(
            False,
            f"already promoted for this config hash and data ({current.get('model_type')}, run "
            f"{current.get('run_id')}, {current.get('timestamp')}); set force to promote again",
        )
    if challenge is None:
        return PromotionDecision(True, "the data changed since the current champion was promoted")
    if challenge.beats:
        return PromotionDecision(True, f"the data changed and {challenge.describe()}")
    return PromotionDecision(False, f"not promoted: {challenge.describe()}")


class PromotionStore:
    """current.json + history.jsonl of one config hash."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    @property
    def current_path(self) -> Path:
        return self.directory / "current.json"

    @property
    def history_path(self) -> Path:
        return self.directory / "history.jsonl"

    def _read(self, path: Path, max_bytes: int) -> str | None:
        if not path.exists() and not path.is_symlink():
            return None
        try:
            return read_regular_file(path, max_bytes).decode("utf-8", errors="replace")
        except Unusable as exc:
            raise ValueError(f"{path}: {exc}") from None

    def current(self) -> dict[str, Any] | None:
        if (text := self._read(self.current_path, POINTER_MAX_BYTES)) is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{self.current_path}: not valid JSON ({exc}). Fix: restore it with `mlgraph promote --rollback` "
                "or delete it to let the next run promote afresh."
            ) from None

    def history(self) -> list[dict[str, Any]]:
        if (text := self._read(self.history_path, HISTORY_MAX_BYTES)) is None:
            return []
        events = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.history_path}: line {number} is not valid JSON ({exc})") from None
        return events

    def stack(self) -> list[dict[str, Any]]:
        """Promoted pointers still in force, oldest first (the last is the current champion)."""
        stack: list[dict[str, Any]] = []
        for event in self.history():
            pointer = {k: v for k, v in event.items() if k not in ("event", "rolled_back_run_id")}
            if event.get("event") == "promote":
                stack.append(pointer)
            elif event.get("event") == "rollback" and stack:
                stack.pop()
        return stack

    def record_not_promoted(
        self, challenge: Challenge, decision: PromotionDecision, candidate_run_id: str, dagster_run_id: str
    ) -> None:
        """A history line for a candidate that lost to the champion (the pointer stays; replays skip the event)."""
        line = {
            "event": "not_promoted",
            "reason": decision.reason,
            "metric": challenge.metric,
            "candidate": challenge.candidate,
            "candidate_run_id": candidate_run_id,
            "candidate_test_score": challenge.candidate_test,
            "champion": challenge.champion,
            "champion_test_score": challenge.champion_test,
            "dagster_run_id": dagster_run_id,
            "timestamp": utc_now(),
        }
        atomic_append_line(self.history_path, json.dumps(line, sort_keys=True))

    def promote(self, pointer: Mapping[str, Any]) -> None:
        """Pointer first (readers act on it), then the history line that records it."""
        atomic_write_json(self.current_path, dict(pointer))
        atomic_append_line(self.history_path, json.dumps({"event": "promote", **pointer}, sort_keys=True))

    def rollback_target(self) -> dict[str, Any]:
        stack = self.stack()
        if len(stack) < 2:
            raise ValueError(
                f"{self.history_path}: no previous champion to roll back to ({len(stack)} promotion(s) in force)."
            )
        return stack[-2]

    def rollback(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the previous champion; returns (rolled back, restored)."""
        stack = self.stack()
        target = self.rollback_target()
        rolled_back = stack[-1]
        atomic_write_json(self.current_path, target)
        line = {
            "event": "rollback",
            **target,
            "rolled_back_run_id": rolled_back.get("run_id"),
            "rolled_back_at": utc_now(),
        }
        atomic_append_line(self.history_path, json.dumps(line, sort_keys=True))
        return rolled_back, target


def register_version(client: Any, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """A new version of registered model `name` for `model_uri`; returns its version number."""
    from mlflow.exceptions import MlflowException

    try:
        with_retry(client.create_registered_model, name, description="mlgraph champion models of one experiment")
    except MlflowException as exc:
        if not is_already_exists(exc):
            raise
    version = with_retry(client.create_model_version, name, source=model_uri, run_id=run_id, tags=dict(tags))
    return str(version.version)


def move_alias(client: Any, name: str, version: str, alias: str = CHAMPION_ALIAS) -> None:
    with_retry(client.set_registered_model_alias, name, alias, version)


def alias_version(client: Any, name: str, alias: str = CHAMPION_ALIAS) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def rollback(store: PromotionStore, client: Any, models_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the previous champion: registry alias, then pointer and history, then models/{exp}/lineage.json.

    The alias moves first so that a registry failure leaves the pointer and history untouched.
    """
    target = store.rollback_target()
    if target.get("registered_model") and target.get("model_version"):
        move_alias(client, target["registered_model"], str(target["model_version"]))
    rolled_back, restored = store.rollback()
    lineage = Path(restored["lineage_path"]) if restored.get("lineage_path") else None
    if lineage is not None and lineage.exists():
        atomic_write_bytes(Path(models_dir) / LINEAGE_JSON, lineage.read_bytes())
    return rolled_back, restored


def promote_champion(
    store: PromotionStore,
    drive: DrivePaths,
    loaded: LoadedExperiment,
    meta: Mapping[str, Any],
    manifest: Mapping[str, Any],
    gate: BaselineGate,
    client: Any,
    registered: str,
    dagster_run_id: str,
) -> dict[str, Any]:
    """Register a model version, keep its bundle and lineage, move the alias, then the pointer; returns the pointer."""
    exp = loaded.config
    entry = manifest["families"][gate.champion]
    family = model_family(manifest, gate.champion)
    version = register_version(
        client,
        registered,
        entry["model_uri"],
        entry["run_id"],
        {
            "config_hash": exp.config_hash,
            "model_type": family,
            "model_name": gate.champion,
            "dataset_sha256": meta["dataset_sha256"],
        },
    )
    # One bundle per registered version: retraining rewrites models/{exp}/<family>.*, but a promoted
    # model, its threshold and its lineage stay as promoted (and a rollback finds them).
    bundle = drive.champion_bundle(exp.name, version)
    champion_file = copy_file(drive.models_dir(exp.name) / entry["artifact"], bundle / entry["artifact"])
    threshold_file = None
    multiclass = is_multiclass(manifest)
    if exp.task == "classification" and not multiclass:
        threshold = drive.threshold_txt(exp.name)
        threshold_file = copy_file(threshold, bundle / threshold.name)
    lineage = bundle / LINEAGE_JSON
    pointer = {
        "run_id": entry["run_id"],
        "model_type": family,
        "model_name": gate.champion,
        "config_hash": exp.config_hash,
        "model_uri": entry["model_uri"],
        "score": gate.cv_score,
        "metric": gate.metric,
        "score_source": "cv",
        "test_score": gate.champion_test,
        "baseline_test_score": gate.baseline_test,
        "timestamp": utc_now(),
        "experiment": exp.name,
        "dataset_sha256": meta["dataset_sha256"],
        "registered_model": registered,
        "model_version": version,
        "model_path": str(champion_file),
        "artifact_sha256": entry["artifact_sha256"],
        "lineage_path": str(lineage),
        "parent_run_id": manifest["parent_run_id"],
        "dagster_run_id": dagster_run_id,
    }
    if threshold_file is not None:
        pointer["threshold"] = float(threshold_file.read_text().strip())
        pointer["threshold_path"] = str(threshold_file)
    if multiclass:
        pointer.update({"decision": ARGMAX_DECISION, "classes": classes(manifest)})
    write_lineage(
        lineage,
        {
            key: pointer[key]
            for key in (
                "experiment",
                "run_id",
                "parent_run_id",
                "dagster_run_id",
                "model_type",
                "model_name",
                "model_uri",
                "registered_model",
                "model_version",
                "config_hash",
                "dataset_sha256",
                "timestamp",
            )
        },
        {
            "dataset_train": drive.dataset_path(exp.name, "train"),
            "dataset_test": drive.dataset_path(exp.name, "test"),
            "config": loaded.path,
            "model": champion_file,
            "threshold": threshold_file,
        },
    )
    copy_file(lineage, drive.lineage_json(exp.name))
    move_alias(client, registered, version)
    store.promote(pointer)
    return pointer
