"""The closed loop on a real daemon: prediction log → drift_sensor → one retraining run → a better champion.

A small classification experiment `loop` is trained, promoted, deployed and baselined in-process on
data A. Then new labelled data B arrives (and is ingested: the data group runs): the population moved
(two features +4σ) and so did the concept (buyers are now the light watchers), which is what makes the
retrained candidate genuinely better than the champion on B's test split, as it is in real life when
drift is real. A real `mlgraph serve` answers the traffic and writes the prediction log: first
A-like traffic (no drift → no run), then traffic with the two features shifted by 4σ (drift → exactly
one retraining run, tagged, that promotes a new champion and moves the baseline; the service
hot-reloads it and answers as the new version), then A-like traffic again, which drifts from the new
baseline inside the cooldown (→ no run).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType

from mlgraph.cli.staging import materialize_experiments
from mlgraph.core.drive import DriveLayout
from mlgraph.core.tags import TAG_DRIFT_WINDOW, TAG_RETRAIN_REASON, TAG_TRIGGER
from mlgraph.monitoring.baseline import read_baseline
from mlgraph.training.promotion import PromotionStore
from pipeline_assets.definitions import defs
from resources.tracking import MlflowTracking
from tests.support import dagster_instance, wait_for
from tests.support.daemon import DagsterDaemon
from tests.support.instance import LOCAL_RUN_LAUNCHER, write_instance_config
from tests.support.serving import Server
from tests.test_automation import last_tick_after

NAME = "loop"
SHIFTED = ("days_on_platform", "courses_started")
DATA = ["raw_dataset", "dataset_fingerprint", "train_test_split"]
DEPLOYED = [
    *DATA,
    "candidate_models",
    "decision_threshold",
    "evaluation_metrics",
    "champion_model",
    "onnx_model",
    "onnx_int8_model",
    "inference_benchmark",
    "drift_baseline",
]
WINDOW = 300


@dataclass
class LoopExperiment:
    name: str
    drive: DriveLayout
    config_dir: Path
    csv: Path
    home: Path  # DAGSTER_HOME of the daemon

    @property
    def env(self) -> dict[str, str]:
        return {
            "SHARED_DRIVE": str(self.drive.root),
            "MLGRAPH_CONFIG_DIR": str(self.config_dir),
            "PYTHONWARNINGS": "ignore",
        }

    def config(self):
        from mlgraph.core.experiment import load_experiment_file

        return load_experiment_file(self.config_dir / "experiments" / f"{self.name}.yaml").config

    def champion(self) -> dict:
        return PromotionStore(self.drive.promotion_dir(self.config().config_hash)).current()


def population_a(rows: int, seed: int) -> pd.DataFrame:
    from mlgraph.data.generators import generate

    return generate("student_engagement", rows=rows, seed=seed).to_pandas()


def population_b(rows: int, seed: int, sigma: dict[str, float]) -> pd.DataFrame:
    """Two features moved by 4σ, and a new concept: buyers are now those who watch less than the median."""
    frame = population_a(rows, seed)
    for name in SHIFTED:
        frame[name] = frame[name] + np.round(4 * sigma[name]).astype(frame[name].dtype)
    frame["purchased"] = (frame["minutes_watched"] < frame["minutes_watched"].median()).astype(int)
    return frame


@pytest.fixture
def loop_experiment(tmp_path: Path, shared_drive: Path, monkeypatch: pytest.MonkeyPatch) -> LoopExperiment:
    """Experiment `loop` (two cheap families, 2 folds, a 300-prediction drift window) on data A."""
    config_dir = tmp_path / "config"
    (config_dir / "experiments").mkdir(parents=True)
    (config_dir / "constraints.yaml").write_text("chunk_sizes: [100]\nmemory_limits_mb: [256]\ncompute_limits: [1.0]\n")
    monkeypatch.setenv("MLGRAPH_CONFIG_DIR", str(config_dir))
    csv = config_dir / "experiments" / f"{NAME}.csv"
    population_a(600, 3).to_csv(csv, index=False)
    base = yaml.safe_load(
        (Path(__file__).parents[1] / "config" / "experiments" / "student_engagement.yaml").read_text()
    )
    config = {
        "name": NAME,
        "task": "classification",
        "dataset": {"path": csv.name},
        "target": "purchased",
        "columns": base["columns"],
        "split": {"test_size": 0.25, "seed": 1},
        "models": [{"family": "logistic_regression"}, {"family": "decision_tree", "params": {"max_depth": 3}}],
        "cv_folds": 2,
        "seed": 1,
        "drift": {"window": WINDOW, "min_window": 100},
    }
    (config_dir / "experiments" / f"{NAME}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return LoopExperiment(NAME, DriveLayout.at(shared_drive), config_dir, csv, tmp_path / "dagster_home")


@pytest.fixture
def deployed(loop_experiment: LoopExperiment) -> LoopExperiment:
    """Trained, promoted (v1), deployed and baselined in-process on data A, in the daemon's instance."""
    write_instance_config(loop_experiment.home, LOCAL_RUN_LAUNCHER)
    with dagster_instance(loop_experiment.home) as instance:
        summary = materialize_experiments(
            defs, instance, [NAME], selection=[dg.AssetKey(k) for k in DEPLOYED], echo=lambda _: None
        )
    assert summary.failed == [], summary.failed
    assert loop_experiment.champion()["model_version"] == "1"
    return loop_experiment


def send(server: Server, frame: pd.DataFrame) -> set[str]:
    """The frame's rows (target dropped) as client traffic through /batch_predict; the versions that answered."""
    features = frame.drop(columns=["purchased"]).astype(object)
    rows = [
        {k: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        for row in features.to_dict("records")
    ]
    response = server.client.post("/batch_predict", json={"rows": rows})
    assert response.status_code == 200, response.text
    return {response.json()["model_version"]}


def logged_rows(loop: LoopExperiment) -> int:
    path = loop.drive.prediction_log_path(NAME)
    return len(path.read_text().splitlines()) if path.exists() else 0


def latest_skip(instance: dg.DagsterInstance) -> str:
    """The skip message of drift_sensor's latest tick."""
    [state] = [
        s
        for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
        if s.instigator_name == "drift_sensor"
    ]
    [tick] = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    return tick.skip_reason or ""


@pytest.mark.daemon
@pytest.mark.timeout(300)
def test_drift_retrains_once_promotes_a_better_champion_and_respects_the_cooldown(deployed: LoopExperiment) -> None:
    loop = deployed
    baseline_a = read_baseline(loop.drive, NAME)
    sigma = {n: baseline_a["numeric"][n]["std"] for n in SHIFTED}
    # New labelled data arrives and is ingested (the data group; automation would do it in production).
    population_b(600, 4, sigma).to_csv(loop.csv, index=False)
    with dagster_instance(loop.home) as instance:
        assert (
            materialize_experiments(
                defs, instance, [NAME], selection=[dg.AssetKey(k) for k in DATA], echo=lambda _: None
            ).failed
            == []
        )
    daemon = DagsterDaemon(loop.home, loop.env, loop.home.parent)
    server = Server(loop.drive.root, loop.config_dir, NAME)
    with dagster_instance(loop.home) as instance:

        def runs() -> list[dg.DagsterRun]:
            return [r for r in instance.get_runs() if r.job_name == "retraining_job"]

        def diagnostics() -> str:
            return f"runs: {[(r.run_id[:8], r.status.value) for r in runs()]}\n{daemon.logs()}"

        def tick_after(moment: float) -> None:
            wait_for(
                lambda: last_tick_after(instance, "drift_sensor", moment),
                60,
                "a drift_sensor tick",
                on_timeout=diagnostics,
            )

        def traffic(frame: pd.DataFrame) -> set[str]:
            """Send the frame and wait until the service's log holds it (fsynced at least once a second)."""
            before = logged_rows(loop)
            versions = send(server, frame)
            wait_for(lambda: logged_rows(loop) >= before + len(frame), 10, "the prediction log to hold the traffic")
            return versions

        try:
            assert server.wait_up()["model_version"] == "1"
            # 1. A-like traffic against the A baseline: no drift, no run.
            assert traffic(population_a(WINDOW, 5)) == {"1"}
            written = time.time()
            daemon.start()
            tick_after(written)
            assert runs() == [], diagnostics()

            # 2. The two features shifted by 4σ: exactly one retraining run, tagged with why and when.
            drifted = population_a(WINDOW, 6)
            for name in SHIFTED:  # integer counts: the shift is rounded, as population_b does
                drifted[name] = drifted[name] + np.round(4 * sigma[name]).astype(drifted[name].dtype)
            drift_sent = dt.datetime.now(dt.UTC)
            assert traffic(drifted) == {"1"}
            [run] = wait_for(runs, 90, "a retraining run", on_timeout=diagnostics)
            assert run.tags[TAG_TRIGGER] == "drift" and "feature drift" in run.tags[TAG_RETRAIN_REASON]
            window_first = dt.datetime.fromisoformat(run.tags[TAG_DRIFT_WINDOW].split("/")[0])
            assert window_first >= drift_sent - dt.timedelta(seconds=1), run.tags[TAG_DRIFT_WINDOW]
            assert run.tags["dagster/partition"] == NAME
            finished = wait_for(
                lambda: (r := instance.get_run_by_id(run.run_id)).is_finished and r,
                150,
                "the retraining run to finish",
                on_timeout=diagnostics,
            )
            assert finished.status == dg.DagsterRunStatus.SUCCESS, diagnostics()

            # A new champion, strictly better on the current test split; the baseline moved with it.
            champion = loop.champion()
            assert champion["model_version"] == "2" and champion["dagster_run_id"] == run.run_id
            history = [
                json.loads(line)
                for line in PromotionStore(loop.drive.promotion_dir(loop.config().config_hash))
                .history_path.read_text()
                .splitlines()
            ]
            assert [e["event"] for e in history] == ["promote", "promote"]
            assert read_baseline(loop.drive, NAME)["champion_version"] == "2"
            latest = {
                key: instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=[NAME]), limit=1
                ).records[0]
                for key in ("champion_model", "onnx_model", "drift_baseline")
            }
            assert {r.run_id for r in latest.values()} == {run.run_id}  # promoted, deployed, baselined in the run
            reason = latest["champion_model"].asset_materialization.metadata["reason"].value
            assert re.search(r"beats the current champion (logistic_regression|decision_tree) v1", reason), reason
            tracking = MlflowTracking()
            client = tracking.client()
            experiment = client.get_experiment_by_name(tracking.experiment_name(NAME))
            [parent] = client.search_runs(
                [experiment.experiment_id],
                f"tags.dagster_run_id = '{run.run_id}' and tags.`mlgraph.role` = 'execution'",
            )
            assert parent.data.tags["mlgraph.trigger"] == "drift"
            assert parent.data.tags["mlgraph.retrain_reason"] == run.tags[TAG_RETRAIN_REASON]

            # The running service hot-reloads the new champion and answers as it.
            wait_for(
                lambda: server.client.get("/health").json()["model_version"] == "2",
                30,
                "the service to serve champion v2",
                on_timeout=lambda: server.log.read_text()[-3000:],
            )

            # 3. The daemon crashes and restarts (the cursor survives in the instance). A-like traffic again
            # drifts from the new baseline, inside the cooldown: no second run.
            daemon.kill()
            daemon.start()
            assert traffic(population_a(WINDOW, 8)) == {"2"}
            written = time.time()
            tick_after(written)
            assert len(runs()) == 1, diagnostics()
            assert "cooldown" in latest_skip(instance), diagnostics()
        finally:
            server.stop()
            daemon.stop_all()
        assert daemon.descendants() == []
