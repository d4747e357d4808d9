"""Peak RSS of one variant in a fresh process: load the model, predict one batch, print JSON.

Run as `python -m mlgraph.deployment.rss_probe KIND MODEL INPUTS [FAMILY]` (bench.py does):
KIND is native_sklearn, native_torch or onnx. Only what the variant itself needs is imported, so
the number is the footprint of serving it: onnxruntime + numpy for ONNX, sklearn or torch for native.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np


def run(kind: str, model_path: str, inputs_path: str, family: str = "") -> dict[str, float]:
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        with np.load(inputs_path, allow_pickle=True) as stored:
            feed = {name: stored[name] for name in stored.files}
        rows = len(next(iter(feed.values())))
        session.run(None, feed)
    elif kind == "native_sklearn":
        import joblib
        import pandas as pd

        from mlgraph.core.plugins import ensure_on_path

        ensure_on_path()  # a user estimator's class is unpickled from the plugins folder
        model = joblib.load(model_path)
        frame = pd.read_pickle(inputs_path)
        rows = len(frame)
        model.predict_proba(frame) if hasattr(model, "predict_proba") else model.predict(frame)
    elif kind == "native_torch":
        import torch

        from mlgraph.training.forecasting import load_forecaster

        fit = load_forecaster(family, model_path)
        windows = np.load(inputs_path)
        rows = len(windows)
        with torch.no_grad():  # raw windows: the model's transform is inside the module
            fit.model(torch.from_numpy(windows.astype(np.float32)).unsqueeze(-1))
    else:
        raise ValueError(f"unknown variant kind {kind!r}; expected onnx, native_sklearn or native_torch")
    return {"peak_rss_mb": peak_rss_mb(), "rows": rows}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM belongs to the address space, which exec replaces; ru_maxrss
    survives exec on Linux and would report the parent's peak at fork time instead of ours."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux; not reached there


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:])))
