"""Example user model code: name these in an experiment's `models:` (see docs/models.md).

    - name: nearest_mean
      family: estimator
      estimator: "example_models:NearestMean"
    - name: mlp
      family: torch
      module: "example_models:build_mlp"
      params: {hidden: 32, epochs: 30}

Every run (local, the daemon's, a Slurm job's) and the model service import this folder's modules by name.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class NearestMean(ClassifierMixin, BaseEstimator):
    """A classifier that predicts the class whose mean feature vector is nearest (softmax over distances)."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        X = np.asarray(X, dtype=np.float64)
        distance = ((X[:, None, :] - self.means_[None, :, :]) ** 2).sum(axis=2)
        logits = -distance / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def build_mlp(n_inputs: int, params: dict):
    """A two-layer perceptron: tabular features (n_outputs from the platform) or a forecasting window (one)."""
    from torch import nn

    hidden = int(params.get("hidden", 32))
    return nn.Sequential(nn.Linear(n_inputs, hidden), nn.ReLU(), nn.Linear(hidden, int(params.get("n_outputs", 1))))
