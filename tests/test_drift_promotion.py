"""A retrained candidate replaces the champion only when strictly better on the current test split.

The champion here is a real fitted model file, promoted as champion_model leaves it; its score on the
split is computed independently (sklearn's roc_auc_score on the promoted file's scores).
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
from sklearn.metrics import roc_auc_score

from mlgraph.core.drive import DriveLayout
from mlgraph.training import families as fam
from mlgraph.training.promotion import BaselineGate, PromotionStore, challenge_champion, contested, decide
from tests.support.deployment import tabular_champion


def gate(candidate_test: float) -> BaselineGate:
    return BaselineGate(
        metric="roc_auc",
        champion="decision_tree",
        cv_score=0.7,
        champion_test=candidate_test,
        baseline="baseline_majority_class",
        baseline_test=0.5,
        champion_metrics={},
    )


@pytest.fixture
def champion(tmp_path: Path, demo_frames):
    drive = DriveLayout.at(tmp_path)
    config = tabular_champion(drive, "classification", "logistic_regression", demo_frames)
    store = PromotionStore(drive.promotion_dir(config.config_hash))
    train, test = demo_frames["classification"]
    return config, store, train, test


def test_the_champion_is_scored_on_the_current_test_split(champion) -> None:
    config, store, train, test = champion
    current = store.current()
    model = joblib.load(current["model_path"])
    scores = fam.positive_scores(model, fam.prepare_frame(test, fam.feature_spec(train, config)))
    y_true = (test[config.target] == train[config.target].max()).astype(int)
    challenge = challenge_champion(config, gate(0.9), current, train, test)
    assert challenge.champion == "logistic_regression v1"
    assert challenge.champion_test == pytest.approx(roc_auc_score(y_true, scores))


def test_tie_or_loss_is_not_promoted_and_recorded_a_strict_win_is(champion) -> None:
    config, store, train, test = champion
    current = store.current()
    score = challenge_champion(config, gate(0.9), current, train, test).champion_test
    assert contested(current, config.config_hash, "new-data", force=False)
    for candidate in (score, score - 0.05):
        challenge = challenge_champion(config, gate(candidate), current, train, test)
        decision = decide(current, config.config_hash, "new-data", False, challenge)
        assert not decision.promote
        assert decision.reason.startswith(
            "not promoted: decision_tree does not beat the current champion "
            "logistic_regression v1 on the current test split"
        )
    store.record_not_promoted(challenge, decision, "run-dt", "dagster-run")
    [promoted, lost] = [json.loads(line) for line in store.history_path.read_text().splitlines()]
    assert lost["event"] == "not_promoted" and lost["reason"] == decision.reason
    assert lost["candidate_test_score"] == pytest.approx(score - 0.05) and lost["champion_test_score"] == score
    assert store.stack() == [{k: v for k, v in promoted.items() if k != "event"}]  # the champion stays
    better = decide(
        current,
        config.config_hash,
        "new-data",
        False,
        challenge_champion(config, gate(score + 1e-3), current, train, test),
    )
    assert better.promote and "decision_tree beats the current champion" in better.reason


def test_a_champion_that_cannot_score_the_split_is_beaten(champion) -> None:
    config, store, train, test = champion
    current = {**store.current(), "model_path": str(Path(store.current()["model_path"]).with_name("gone.joblib"))}
    challenge = challenge_champion(config, gate(0.6), current, train, test)
    assert challenge.champion_test is None and "FileNotFoundError" in challenge.error
    assert decide(current, config.config_hash, "new-data", False, challenge).promote


def test_same_data_or_force_is_not_contested(champion) -> None:
    config, store, _, _ = champion
    current = {**store.current(), "dataset_sha256": "d1"}
    assert not contested(current, config.config_hash, "d1", force=False)
    assert not contested(current, config.config_hash, "d2", force=True)
    assert not contested(None, config.config_hash, "d2", force=False)
    assert decide(current, config.config_hash, "d2", force=True).promote
