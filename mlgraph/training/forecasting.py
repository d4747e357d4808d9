"""Forecasting families: GRU and LSTM (torch), Prophet, and the seasonal-naive baseline.

All four forecast the target one `horizon` ahead from the series itself (univariate: covariates would
need their own forecasts at serving time), on the regular grid of forecast_data.py (gaps filled and
masked there). Evaluation is rolling-origin: the prediction for time step p may use every value up to
p - horizon, so the recurrent models read the `window` values ending there and seasonal naive repeats
the value one season earlier; Prophet predicts each timestamp from its fitted trend and seasonalities.

GRU/LSTM targets (`forecast.target_mode`):
- "change" (default): the net learns y[p] - last, where `last` is the window's last value, from the
  window minus `last`. Inputs and target are changes from `last`, so both are divided by one scale, the
  root mean square of the training targets' change (one unit: the net can copy a same-phase value of
  the window, as seasonal naive does, with a unit weight). Nothing depends on the level, so a trend
  that carries the test stretch above every training value costs nothing, and the naive "no change"
  forecast is the net's zero output.
- "level": the window and target standardised by the training series' mean and std (the original
  method; a level outside the training range then lies outside what the net has seen).
The transform is part of the torch module, so every consumer passes raw windows and gets raw forecasts.

torch and prophet are imported inside functions: this module is scanned when the code location loads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlgraph.core.atomic import atomic_path, atomic_write_json
from mlgraph.core.experiment import ForecastConfig
from mlgraph.training.forecast_data import window_inputs

RECURRENT = ("gru", "lstm")
# Trained by the torch loop below: the built-in recurrent nets and the user's own network (`family: torch`).
TORCH_FORECASTERS = (*RECURRENT, "torch")
CUBLAS_WORKSPACE_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"
ARTIFACT_SUFFIX = {"gru": ".pt", "lstm": ".pt", "torch": ".pt", "prophet": ".json", "seasonal_naive": ".json"}
CHANGE, LEVEL = "change", "level"


@dataclass
class ForecastFit:
    """What fitting one forecaster produced (the model itself is saved by `save`)."""

    family: str
    model: Any
    metadata: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch losses (torch)
    seconds: float = 0.0


def min_history(family: str, cfg: ForecastConfig) -> int:
    """Observed steps a forecaster needs before its first prediction."""
    if family in TORCH_FORECASTERS:
        return cfg.window + cfg.horizon
    if family == "seasonal_naive":
        return seasonal_lag(cfg) + 1
    return 2


def seasonal_lag(cfg: ForecastConfig) -> int:
    # The newest same-phase value that is already observed `horizon` steps ahead.
    return cfg.seasonal_period * math.ceil(cfg.horizon / cfg.seasonal_period)


def torch_device(name: str):
    """The torch device for `forecast.device`; asking for CUDA without one is an error, not a silent CPU run."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "forecast.device is 'cuda' but torch sees no CUDA device "
            f"(torch {torch.__version__}). Fix: set forecast.device: cpu, or run on a GPU node."
        )
    return torch.device(name)


@contextlib.contextmanager
def _cublas_workspace(device_type: str) -> Iterator[None]:
    """CUBLAS_WORKSPACE_CONFIG for the block only, on CUDA, unless the process already sets it.

    Deterministic cuBLAS (use_deterministic_algorithms on CUDA) needs it, and PyTorch reads it from the
    process environment when a cuBLAS kernel runs and when it first sizes the workspace: there is no
    torch API for it. Setting it for the block, not for the process, leaves the environment of
    everything else in the process (the daemon's run worker, other assets) as it was.
    """
    if device_type != "cuda" or CUBLAS_WORKSPACE_ENV in os.environ:
        yield
        return
    os.environ[CUBLAS_WORKSPACE_ENV] = CUBLAS_DETERMINISTIC_WORKSPACE
    try:
        yield
    finally:
        os.environ.pop(CUBLAS_WORKSPACE_ENV, None)


@contextlib.contextmanager
def torch_deterministic(seed: int, threads: int = 1, device_type: str = "cpu") -> Iterator[None]:
    """Seeded, deterministic, fixed-thread torch for the block; restores the previous settings after."""
    import torch

    previous_threads = torch.get_num_threads()
    previous_det = torch.are_deterministic_algorithms_enabled()
    with _cublas_workspace(device_type):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.use_deterministic_algorithms(previous_det)


@functools.cache
def _forecaster_classes():
    """The torch module classes, built on first use so that importing this module never imports torch."""
    import torch
    from torch import nn

    class ScaledForecaster(nn.Module):
        """Raw window (N, steps, 1) in, raw forecast (N,) out, around a net that works in scaled units.

        `scaled` is the net alone; `forward` wraps it in the transform of the module docstring, so
        training, evaluation, the native predictor and the ONNX export run one graph. The constants are
        plain attributes, not buffers: the state_dict holds the weights only, as it always did.
        """

        def __init__(self, transform: dict[str, Any]):
            super().__init__()
            self.target_mode = transform.get("target_mode", LEVEL)  # files saved before "change" existed
            self.mean, self.std = float(transform["mean"]), float(transform["std"])
            if self.target_mode == CHANGE:
                self.change_scale = float(transform["change_scale"])

        def forward(self, window: torch.Tensor) -> torch.Tensor:
            if self.target_mode == CHANGE:
                last = window[:, -1:, :]
                return self.scaled((window - last) / self.change_scale) * self.change_scale + last[:, 0, 0]
            return self.scaled((window - self.mean) / self.std) * self.std + self.mean

    class RecurrentForecaster(ScaledForecaster):
        """GRU or LSTM with a linear head on the last state."""

        def __init__(self, cell: str, hidden_size: int, transform: dict[str, Any]):
            super().__init__(transform)
            rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
            self.rnn = rnn(input_size=1, hidden_size=hidden_size, batch_first=True)
            self.head = nn.Linear(hidden_size, 1)

        def scaled(self, x: torch.Tensor) -> torch.Tensor:
            """Scaled windows (N, steps, 1) → scaled targets (N,)."""
            out, _ = self.rnn(x)
            # The head on a 3-D slice exports as MatMul + Add (quantizable), on a 2-D one as Gemm (not).
            return self.head(out[:, -1:, :])[:, 0, 0]

    class UserForecaster(ScaledForecaster):
        """The user's network (`family: torch`): scaled windows (N, steps) → one scaled forecast each."""

        def __init__(self, net: nn.Module, transform: dict[str, Any]):
            super().__init__(transform)
            self.net = net

        def scaled(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x[:, :, 0]).reshape(x.shape[0])

    return RecurrentForecaster, UserForecaster


def recurrent_model(family: str, metadata: dict[str, Any]):
    """A torch forecaster (untrained) with the size, transform and user code recorded in `metadata`."""
    recurrent, user = _forecaster_classes()
    if family == "torch":
        from mlgraph.core.experiment import ModelSpec
        from mlgraph.training.user_code import build_torch_module

        spec = ModelSpec(name=metadata.get("name"), family="torch", module=metadata["module"])
        return user(build_torch_module(spec, int(metadata["window"]), metadata["build_params"]), metadata)
    return recurrent(family, int(metadata["hidden_size"]), metadata)


def fit_transform(y: np.ndarray, positions: np.ndarray, horizon: int, mode: str) -> dict[str, Any]:
    """The scaling constants of `mode` from the training targets at `positions` (module docstring)."""
    transform: dict[str, Any] = {"target_mode": mode, "mean": float(np.mean(y)), "std": float(np.std(y)) or 1.0}
    if mode == CHANGE:
        last = y[positions - horizon]
        transform["change_scale"] = float(np.sqrt(np.mean((y[positions] - last) ** 2))) or 1.0
    return transform


def scaled_examples(
    y: np.ndarray, positions: np.ndarray, window: int, horizon: int, transform: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Scaled input windows (n, window, 1) and scaled targets (n,) for target `positions`, float32."""
    windows = window_inputs(y, positions, window, horizon)
    if transform["target_mode"] == CHANGE:
        last = windows[:, -1:]
        x = (windows - last) / transform["change_scale"]
        t = (y[positions] - last[:, 0]) / transform["change_scale"]
    else:
        x = (windows - transform["mean"]) / transform["std"]
        t = (y[positions] - transform["mean"]) / transform["std"]
    return x.astype(np.float32)[:, :, None], t.astype(np.float32)


def _fit_recurrent(
    family: str,
    y: np.ndarray,
    observed: np.ndarray,
    cfg: ForecastConfig,
    params: dict[str, Any],
    seed: int,
    module: str | None = None,
    name: str | None = None,
) -> ForecastFit:
    import copy

    import torch

    from mlgraph.training.epochs import report_epoch
    from mlgraph.training.user_code import TORCH_LOOP_KEYS

    lr = float(params.get("learning_rate", cfg.learning_rate))
    epochs = int(params.get("epochs", cfg.epochs))
    patience = int(params.get("patience", cfg.patience))
    batch_size = int(params.get("batch_size", cfg.batch_size))
    device = torch_device(str(params.get("device", cfg.device)))
    candidates = np.arange(cfg.window + cfg.horizon - 1, len(y))
    positions = candidates[observed[candidates]]  # a filled point is never a target
    if positions.size < 4:
        raise ValueError(f"{family}: {len(y)} time steps leave {positions.size} training windows; need at least 4")
    transform = fit_transform(y, positions, cfg.horizon, cfg.target_mode)
    # Early stopping watches the most recent 10% of windows: the forecaster's job is the future.
    n_val = max(1, int(round(0.1 * positions.size)))
    x, target = scaled_examples(y, positions, cfg.window, cfg.horizon, transform)
    X, t = torch.from_numpy(x).to(device), torch.from_numpy(target).to(device)
    X_tr, t_tr, X_va, t_va = X[:-n_val], t[:-n_val], X[-n_val:], t[-n_val:]
    metadata: dict[str, Any] = {"family": family, "window": cfg.window, "horizon": cfg.horizon}
    if family == "torch":  # what rebuilds the user's network: its import path and build() params
        skip = {*TORCH_LOOP_KEYS, "window", "horizon", "device"}
        # The spec's name too: an error rebuilding the network names the spec the user wrote.
        metadata.update(name=name, module=module, build_params={k: v for k, v in params.items() if k not in skip})
    else:
        metadata["hidden_size"] = int(params.get("hidden_size", cfg.hidden_size))
    metadata.update(transform)

    start = time.perf_counter()
    with torch_deterministic(seed, device_type=device.type):
        model = recurrent_model(family, metadata).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        generator = torch.Generator().manual_seed(seed)
        history: list[dict[str, float]] = []
        best_loss, best_state, best_epoch, stale = math.inf, None, 0, 0
        for epoch in range(1, epochs + 1):
            model.train()
            # The permutation is drawn on the CPU generator: the same batches on every device.
            order = torch.randperm(len(X_tr), generator=generator).to(device)
            total = 0.0
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                loss = torch.mean((model.scaled(X_tr[idx]) - t_tr[idx]) ** 2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
            model.eval()
            with torch.no_grad():
                val_loss = float(torch.mean((model.scaled(X_va) - t_va) ** 2))
            history.append({"epoch": epoch, "train_loss": total / len(X_tr), "val_loss": val_loss})
            report_epoch(epoch, val_loss)  # a sweep's pruner listens (mlgraph.training.epochs)
            if val_loss < best_loss - 1e-9:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= patience:
                    break
        model.load_state_dict(best_state)
        model = model.cpu().eval()
    metadata.update(
        {
            "learning_rate": lr,
            "batch_size": batch_size,
            "epochs_run": len(history),
            "best_epoch": best_epoch,
            "best_val_loss": best_loss,
            "training_windows": int(positions.size),
            "filled_targets_skipped": int(candidates.size - positions.size),
            "seed": seed,
            "device": device.type,
        }
    )
    return ForecastFit(family, model, metadata, history, time.perf_counter() - start)


def _quiet_prophet() -> None:
    # cmdstanpy logs every optimisation at INFO through its own handler (set up on first use, with
    # the logger at DEBUG); the asset log should carry our lines, not Stan's.
    from cmdstanpy.utils.logging import get_logger

    get_logger().setLevel(logging.WARNING)
    logging.getLogger("prophet").setLevel(logging.WARNING)


def _import_prophet():
    # prophet logs an ERROR at import when plotly is missing; plots are not used here.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    import prophet

    _quiet_prophet()
    return prophet


def _fit_prophet(y: np.ndarray, ts: np.ndarray, observed: np.ndarray, params: dict[str, Any], seed: int) -> ForecastFit:
    Prophet = _import_prophet().Prophet
    start = time.perf_counter()
    # No uncertainty sampling: the point forecast is all we score, and sampling is slow and random.
    try:
        model = Prophet(**{"uncertainty_samples": 0, **params})
    except TypeError as exc:
        raise ValueError(f"prophet: invalid params {params}: {exc}. Fix: correct models[prophet].params.") from None
    # Observed points only: Prophet needs no regular grid, and a filled value is not data.
    model.fit(pd.DataFrame({"ds": pd.to_datetime(np.asarray(ts)[observed]), "y": y[observed]}))
    return ForecastFit(
        "prophet", model, {"family": "prophet", "params": params, "seed": seed}, [], time.perf_counter() - start
    )


def fit_forecaster(
    family: str,
    y: np.ndarray,
    ts: np.ndarray,
    cfg: ForecastConfig,
    params: dict[str, Any],
    seed: int,
    observed: np.ndarray | None = None,
    module: str | None = None,
    name: str | None = None,
) -> ForecastFit:
    """Fit one forecaster on the regular series `y` (time order) with timestamps `ts`.

    `observed` (default: all) is False where forecast_data filled a gap: never a target, never fitted.
    `module` is the user's "module:build" for family "torch", `name` its spec's name.
    """
    y = np.asarray(y, dtype=np.float64)
    observed = np.ones(y.size, dtype=bool) if observed is None else np.asarray(observed, dtype=bool)
    if family in TORCH_FORECASTERS:
        return _fit_recurrent(family, y, observed, cfg, params, seed, module, name)
    if family == "prophet":
        return _fit_prophet(y, ts, observed, params, seed)
    if family == "seasonal_naive":
        meta = {
            "family": family,
            "seasonal_period": cfg.seasonal_period,
            "horizon": cfg.horizon,
            "lag": seasonal_lag(cfg),
        }
        return ForecastFit(family, None, meta)
    raise ValueError(f"no forecasting family {family!r}")


def predict_forecaster(fit: ForecastFit, series: np.ndarray, ts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Forecasts for `positions` of the regular `series` (history plus the evaluated stretch)."""
    series = np.asarray(series, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    family = fit.family
    if family in TORCH_FORECASTERS:
        import torch

        meta = fit.metadata
        # Raw windows in float32, exactly what the ONNX graph and the native predictor are given.
        X = torch.from_numpy(window_inputs(series, positions, meta["window"], meta["horizon"]).astype(np.float32))
        X = X.unsqueeze(-1)
        with torch_deterministic(meta["seed"]), torch.no_grad():
            out = (
                np.concatenate([fit.model(X[i : i + 4096]).numpy() for i in range(0, len(X), 4096)])
                if len(X)
                else np.array([])
            )
        return out.astype(np.float64)
    if family == "prophet":
        frame = pd.DataFrame({"ds": pd.to_datetime(np.asarray(ts)[positions])})
        return fit.model.predict(frame)["yhat"].to_numpy(dtype=np.float64)
    if family == "seasonal_naive":
        lag = fit.metadata["lag"]
        if positions.size and positions.min() < lag:
            raise ValueError(f"seasonal naive needs {lag} steps of history before the first forecast")
        return series[positions - lag]
    raise ValueError(f"no forecasting family {family!r}")


def save_forecaster(fit: ForecastFit, path: Path) -> Path:
    """Atomically write the artifact: torch state_dict + metadata (.pt), Prophet JSON, naive params."""
    path = Path(path)
    if fit.family in TORCH_FORECASTERS:
        import torch

        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # To a file object: given a path, torch names the archive's root folder after the (random)
            # temporary file name, and the same model would get different bytes on every save.
            torch.save({"state_dict": fit.model.state_dict(), "metadata": fit.metadata}, fh)
        return path
    if fit.family == "prophet":
        _import_prophet()
        from prophet.serialize import model_to_json

        payload = {"metadata": fit.metadata, "model": json.loads(model_to_json(fit.model))}
        return atomic_write_json(path, payload)
    return atomic_write_json(path, {"metadata": fit.metadata})


def load_forecaster(family: str | None, path: Path) -> ForecastFit:
    """A saved forecaster; `family` None reads it from the file (every artifact records its family)."""
    path = Path(path)
    if family is None:
        family = "gru" if path.suffix == ".pt" else json.loads(path.read_text())["metadata"]["family"]
    if family in TORCH_FORECASTERS:
        import torch

        payload = torch.load(path, map_location="cpu", weights_only=True)
        meta = payload["metadata"]
        family = meta.get("family", family)
        model = recurrent_model(family, meta)
        model.load_state_dict(payload["state_dict"])
        model.eval()
        return ForecastFit(family, model, meta)
    payload = json.loads(path.read_text())
    if family == "prophet":
        _import_prophet()
        from prophet.serialize import model_from_json

        return ForecastFit(family, model_from_json(json.dumps(payload["model"])), payload["metadata"])
    if family == "seasonal_naive":
        return ForecastFit(family, None, payload["metadata"])
    raise ValueError(f"{path}: no forecasting family {family!r}")
