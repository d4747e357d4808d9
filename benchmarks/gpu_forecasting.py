"""GRU/LSTM forecasters trained on the CPU (the baseline) and on CUDA, same data, seed and batches.

Reports per device: fit seconds, seconds per epoch, epochs run, best validation loss, test RMSE; and
CPU-vs-CUDA parity of the test predictions. Without CUDA only the CPU rows are printed. Prints JSON.

    python benchmarks/gpu_forecasting.py [--rows 16000] [--epochs 10] [--batch-size 64] [--hidden 32]
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()

    import numpy as np
    import torch

    from mlgraph.core.experiment import ForecastConfig
    from mlgraph.data.generators import generate
    from mlgraph.training import forecasting as fc

    table = generate("demand_forecast", rows=args.rows, seed=3)
    y = table["demand"].to_numpy()
    ts = table["timestamp"].to_numpy()
    cut = int(len(y) * 0.8)
    positions = np.arange(cut, len(y))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    # patience = epochs: every device runs every epoch, so the timings compare like for like.
    cfg = ForecastConfig(epochs=args.epochs, patience=args.epochs, batch_size=args.batch_size, hidden_size=args.hidden)

    results: dict = {}
    for family in fc.RECURRENT:
        per_device, predictions = {}, {}
        for device in devices:
            start = time.perf_counter()
            fit = fc.fit_forecaster(family, y[:cut], ts[:cut], cfg.model_copy(update={"device": device}), {}, seed=0)
            seconds = time.perf_counter() - start
            preds = fc.predict_forecaster(fit, y, ts, positions)
            predictions[device] = preds
            per_device[device] = {
                "fit_s": round(seconds, 3),
                "s_per_epoch": round(seconds / len(fit.history), 4),
                "epochs_run": len(fit.history),
                "best_val_loss": round(fit.metadata["best_val_loss"], 6),
                "test_rmse": round(float(np.sqrt(np.mean((preds - y[positions]) ** 2))), 4),
            }
        entry = {"devices": per_device}
        if "cuda" in predictions:
            diff = np.abs(predictions["cuda"] - predictions["cpu"])
            entry["parity"] = {
                "max_abs_pred_diff": round(float(diff.max()), 6),
                "mean_abs_pred_diff": round(float(diff.mean()), 6),
                "test_rmse_rel_diff": round(
                    abs(per_device["cuda"]["test_rmse"] - per_device["cpu"]["test_rmse"])
                    / per_device["cpu"]["test_rmse"],
                    4,
                ),
                "cuda_speedup": round(per_device["cpu"]["fit_s"] / per_device["cuda"]["fit_s"], 2),
            }
        results[family] = entry

    print(
        json.dumps(
            {
                "benchmark": "gpu_forecasting",
                "torch": torch.__version__,
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "cpu_threads": 1,
                "rows": args.rows,
                "train_rows": cut,
                "test_rows": len(positions),
                "window": cfg.window,
                "hidden_size": cfg.hidden_size,
                "batch_size": cfg.batch_size,
                "epochs": cfg.epochs,
                "families": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
