"""Shared by the serving tests: one drive of real promoted, exported champions (binary, regression,
multiclass) built once per session, and the service as a real uvicorn subprocess on a free port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
import yaml

from mlgraph.core.drive import PROJECT_ROOT, DriveLayout
from mlgraph.core.experiment import ExperimentConfig, load_experiment_file
from mlgraph.core.hashing import sha256_file
from mlgraph.data.generators import generate
from mlgraph.training import families as fam
from mlgraph.training.model_files import ARGMAX_DECISION
from mlgraph.training.promotion import PromotionStore
from tests.support.deployment import export_current
from tests.support.wait import wait_for

BINARY, REGRESSION, MULTICLASS, FORECAST = "student_engagement", "salary", "tiers", "demand_forecast"
TIERS = ("high", "low", "mid")


def _tiers(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    colour = rng.choice(["red", "green", "blue"], n)
    scores = np.stack([2 * x1, -1.5 * x1 + x2, 0.5 * x2 + (colour == "red") - 0.3], axis=1)
    label = np.array(TIERS)[np.argmax(scores + rng.normal(scale=0.6, size=(n, 3)), axis=1)]
    return pd.DataFrame({"x1": x1, "x2": x2, "colour": colour, "level": label})


def write_config_dir(target: Path) -> Path:
    """A copy of config/ plus `tiers`, a three-class experiment."""
    shutil.copytree(PROJECT_ROOT / "config", target)
    _tiers(400, 0).to_csv(target / "experiments" / "tiers.csv", index=False)
    data = {
        "name": MULTICLASS,
        "task": "classification",
        "dataset": {"path": "tiers.csv"},
        "target": "level",
        "columns": {"x1": "numeric", "x2": "numeric", "colour": "categorical", "level": "categorical"},
        "models": [{"family": "logistic_regression"}],
        "cv_folds": 3,
    }
    (target / "experiments" / "tiers.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.fixture(scope="session")
def serving_drive(tmp_path_factory) -> tuple[Path, Path]:
    """(drive root, config dir) with exported v1 champions of BINARY, REGRESSION and MULTICLASS."""
    base = tmp_path_factory.mktemp("serving")
    config_dir = write_config_dir(base / "config")
    build_drive(base / "shared", config_dir)
    return base / "shared", config_dir


def drive_copy(serving_drive: tuple[Path, Path], target: Path) -> Path:
    """A private copy of the session drive (for tests that promote or read the log)."""
    shutil.copytree(serving_drive[0], target, ignore=shutil.ignore_patterns("serving", "server-*.log"))
    return target


def forecasting_champion(root: Path, config_dir: Path) -> ExperimentConfig:
    """demand_forecast shrunk (600 rows, window 12, 2 epochs) with an exported GRU v1 champion."""
    from mlgraph.training import forecasting as fc
    from mlgraph.training.forecast_data import training_series

    path = config_dir / "experiments" / f"{FORECAST}.yaml"
    data = yaml.safe_load(path.read_text())
    data["dataset"]["rows"] = 600
    data["forecast"].update(window=12, epochs=2, patience=1, hidden_size=8)
    data["models"] = [{"family": "gru"}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    config = config_of(config_dir, FORECAST)
    drive = DriveLayout.at(root)
    train, _ = write_splits(drive, FORECAST, generate(FORECAST, rows=600, seed=config.dataset.seed).to_pandas())
    series = training_series(train, config)
    fit = fc.fit_forecaster("gru", series.values, series.timestamps, config.forecast, {}, config.seed, series.observed)
    model_path = fc.save_forecaster(fit, drive.champion_bundle(FORECAST, "1") / "gru.pt")
    PromotionStore(drive.promotion_dir(config.config_hash)).promote(
        {
            "model_path": str(model_path),
            "model_type": "gru",
            "model_version": "1",
            "run_id": "run-gru-1",
            "artifact_sha256": sha256_file(model_path),
            "config_hash": config.config_hash,
            "experiment": FORECAST,
        }
    )
    export_current(drive, config)
    return config


def config_of(config_dir: Path, name: str) -> ExperimentConfig:
    return load_experiment_file(config_dir / "experiments" / f"{name}.yaml").config


def promote_model(
    drive: DriveLayout,
    config: ExperimentConfig,
    model,
    family: str,
    version: str,
    threshold: float | None = None,
    classes: tuple | None = None,
    export: bool = True,
) -> None:
    """As champion_model leaves it (bundle file + pointer), then as onnx_model leaves it (export)."""
    path = drive.champion_bundle(config.name, version) / f"{family}.joblib"
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, path)
    pointer = {
        "model_path": str(path),
        "model_type": family,
        "model_version": version,
        "run_id": f"run-{family}-{version}",
        "artifact_sha256": sha256_file(path),
        "config_hash": config.config_hash,
        "experiment": config.name,
    }
    if threshold is not None:
        pointer["threshold"] = threshold
    if classes is not None:
        pointer.update(decision=ARGMAX_DECISION, classes=list(classes))
    PromotionStore(drive.promotion_dir(config.config_hash)).promote(pointer)
    if export:
        export_current(drive, config)


def fit(config: ExperimentConfig, train: pd.DataFrame, family: str, params: dict | None = None):
    spec = fam.feature_spec(train, config)
    task = config.task
    merged = {**fam.resolved_params(task, family, config.model_params(family)), **(params or {})}
    model = fam.build_model(task, family, merged, spec, config.seed)
    y = train[config.target]
    if task == "classification":
        classes = sorted(y.unique())
        y = y.map({c: i for i, c in enumerate(classes)}) if len(classes) > 2 else (y == classes[-1]).astype(int)
    return model.fit(fam.prepare_frame(train, spec), y)


def write_splits(drive: DriveLayout, name: str, data: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = int(len(data) * 0.8)
    train, test = data.iloc[:cut].reset_index(drop=True), data.iloc[cut:].reset_index(drop=True)
    for split, frame in (("train", train), ("test", test)):
        path = drive.dataset_path(name, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    return train, test


def build_drive(root: Path, config_dir: Path) -> DriveLayout:
    """Three experiments, each with splits and an exported v1 champion."""
    drive = DriveLayout.at(root)
    for name, family in ((BINARY, "logistic_regression"), (REGRESSION, "ridge")):
        config = config_of(config_dir, name)
        train, _ = write_splits(drive, name, generate(name, rows=600, seed=config.dataset.seed).to_pandas())
        threshold = 0.35 if config.task == "classification" else None
        promote_model(drive, config, fit(config, train, family), family, "1", threshold=threshold)
    config = config_of(config_dir, MULTICLASS)
    train, _ = write_splits(drive, MULTICLASS, _tiers(400, 0))
    promote_model(drive, config, fit(config, train, "logistic_regression"), "logistic_regression", "1", classes=TIERS)
    return drive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlgraph serve` in a subprocess; stop() kills it by PID (SIGTERM, then SIGKILL)."""

    def __init__(self, drive: Path, config_dir: Path, experiment: str, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = drive / f"server-{experiment}-{self.port}.log"
        env = {**os.environ, "MLGRAPH_CONFIG_DIR": str(config_dir), "SHARED_DRIVE": str(drive)}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlgraph.cli.main",
                    "serve",
                    "--experiment",
                    experiment,
                    "--port",
                    str(self.port),
                    "--drive",
                    str(drive),
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def wait_up(self, ready: bool = True, timeout: float = 60) -> dict:
        def probe():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                body = self.client.get("/health").json()
            except httpx.TransportError:
                return None
            return body if body["ready"] or not ready else None

        return wait_for(probe, timeout, f"{self.url}/health (ready={ready})", interval=0.05)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def json_rows(drive: DriveLayout, name: str, features: list[str], n: int) -> list[dict]:
    """`n` rows of the test split as a client would send them (NaN → null, numpy → Python)."""
    frame = pd.read_parquet(drive.dataset_path(name, "test"))[features].head(n)
    return [
        {c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for c, v in row.items()}
        for row in frame.to_dict("records")
    ]
