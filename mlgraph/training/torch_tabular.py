"""The platform's training loop around a user's torch network, as a scikit-learn estimator (`family: torch`).

The user writes `build(n_inputs, params) -> nn.Module`; `params` gets `n_outputs` added (1 for regression,
the number of classes for classification, whose outputs are logits). The estimator sits after the
standard preprocessing in the Pipeline like every tabular family, so cross-validation, thresholds,
evaluation, promotion and native serving need nothing special. Training: Adam, mini-batches drawn from
the experiment's seed, early stopping on a seeded 10% validation slice, one thread, deterministic torch;
regression targets are standardised inside. Pickled as the build arguments plus the weights, so a
network whose class is defined inside `build` still saves and loads.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator


class TorchTabularModel(BaseEstimator):
    def __init__(
        self,
        module: str = "",
        params: dict[str, Any] | None = None,
        task: str = "regression",
        seed: int = 0,
        learning_rate: float = 1e-3,
        epochs: int = 50,
        batch_size: int = 64,
        patience: int = 5,
        weight_decay: float = 0.0,
        name: str | None = None,
    ):
        self.module = module
        self.params = params
        self.task = task
        self.seed = seed
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.weight_decay = weight_decay
        self.name = name  # the spec's name: errors from build() name the spec the user wrote

    def _build(self, n_inputs: int, n_outputs: int):
        from mlgraph.core.experiment import ModelSpec
        from mlgraph.training.user_code import build_torch_module

        spec = ModelSpec(name=self.name, family="torch", module=self.module)
        return build_torch_module(spec, n_inputs, {**(self.params or {}), "n_outputs": n_outputs})

    def fit(self, X: Any, y: Any) -> TorchTabularModel:
        import torch

        from mlgraph.training.epochs import report_epoch
        from mlgraph.training.forecasting import torch_deterministic

        x = _float32(X)
        y = np.asarray(y)
        if self.task == "classification":
            self.classes_ = np.unique(y)
            target = np.searchsorted(self.classes_, y).astype(np.int64)
            n_out = len(self.classes_)
            self.target_scale_ = (0.0, 1.0)
        else:
            std = float(np.std(y)) or 1.0
            self.target_scale_ = (float(np.mean(y)), std)
            target = ((y - self.target_scale_[0]) / std).astype(np.float32)
            n_out = 1
        self.n_features_in_ = x.shape[1]
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        n_val = max(1, int(round(0.1 * len(x)))) if len(x) >= 10 else 0
        val, tr = order[:n_val], order[n_val:]
        with torch_deterministic(self.seed):
            net = self._build(x.shape[1], n_out)
            optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
            X_t, t_t = torch.from_numpy(x), torch.from_numpy(target)
            generator = torch.Generator().manual_seed(self.seed)
            best, best_state, best_epoch, stale = math.inf, None, 0, 0
            self.history_: list[dict[str, float]] = []
            for epoch in range(1, int(self.epochs) + 1):
                net.train()
                total = 0.0
                perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=generator)]
                for i in range(0, len(perm), int(self.batch_size)):
                    idx = perm[i : i + int(self.batch_size)]
                    loss = self._loss(net(X_t[idx]), t_t[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    total += float(loss.item()) * len(idx)
                net.eval()
                with torch.no_grad():
                    held = torch.from_numpy(val if n_val else tr)
                    val_loss = float(self._loss(net(X_t[held]), t_t[held]))
                self.history_.append({"epoch": epoch, "train_loss": total / max(1, len(tr)), "val_loss": val_loss})
                report_epoch(epoch, val_loss)  # a sweep's pruner listens (mlgraph.training.epochs)
                if val_loss < best - 1e-9:
                    best, best_epoch, stale = val_loss, epoch, 0
                    best_state = copy.deepcopy(net.state_dict())
                else:
                    stale += 1
                    if stale >= int(self.patience):
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.best_epoch_ = best_epoch
        return self

    def _loss(self, out: Any, target: Any) -> Any:
        import torch

        if self.task == "classification":
            return torch.nn.functional.cross_entropy(out.reshape(len(target), -1), target)
        return torch.mean((out.reshape(-1) - target) ** 2)

    def _forward(self, X: Any) -> np.ndarray:
        import torch

        from mlgraph.training.forecasting import torch_deterministic

        with torch_deterministic(self.seed), torch.no_grad():
            return self.net_(torch.from_numpy(_float32(X))).numpy().astype(np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        logits = self._forward(X).reshape(len(X), -1)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        if self.task == "classification":
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        mean, std = self.target_scale_
        return self._forward(X).reshape(-1) * std + mean

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        net = state.pop("net_", None)
        if net is not None:
            state["net_state_"] = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.pop("net_state_", None)
        state.setdefault("name", None)  # pickled before the spec's name was kept
        self.__dict__.update(state)
        if weights is not None:
            import torch

            n_out = len(self.classes_) if self.task == "classification" else 1
            net = self._build(self.n_features_in_, n_out)
            net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})
            self.net_ = net.eval()


def torch_estimator(spec: Any, params: dict[str, Any], task: str, seed: int) -> TorchTabularModel:
    """The platform's estimator around a tabular `family: torch` spec (a core ModelSpec)."""
    from mlgraph.training.user_code import load_callable, split_torch_params

    load_callable(spec)  # fail here, with the spec's name, rather than inside a worker's fit
    loop, build_params = split_torch_params(params)
    return TorchTabularModel(module=spec.import_path, params=build_params, task=task, seed=seed, name=spec.key, **loop)


def _float32(X: Any) -> np.ndarray:
    values = X.to_numpy() if hasattr(X, "to_numpy") else np.asarray(X)
    return np.ascontiguousarray(values, dtype=np.float32)
