"""Train a small torch MLP outside Dagster, as a trainer on a GPU box would, then call the completion hook.

    SHARED_DRIVE=/mnt/shared python examples/train_external.py --experiment salary --epochs 20

Reads the experiment's train split from `$SHARED_DRIVE/datasets/{experiment}/train.parquet` (written
by the data assets), saves `models/{experiment}/checkpoints/<id>/final/` (model.pt + metadata.json:
architecture, feature columns, preprocessing statistics) and writes
`models/{experiment}/.training_complete` through `mlgraph.trainer.signal_training_complete`. The
training_complete_sensor then evaluates the checkpoint, and the eval_complete_sensor analyzes it.
A regression target gets one output (the standardized value); a binary one one output (the logit of the
larger class, BCE loss); a target with k > 2 classes k outputs (one logit per class in sorted-class
order, cross-entropy loss).
Prints a JSON summary; exits 0 when the signal was written, 2 when training succeeded but the signal
was not, 1 when training failed.
"""

import argparse
import hashlib
import json
import logging
import sys
import time

from mlgraph.core.catalog import ConfigCatalog
from mlgraph.core.drive import DriveLayout
from mlgraph.trainer.hook import shared_drive_root, signal_training_complete


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--experiment", required=True, help="a regression or classification (binary or multiclass) experiment"
    )
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--hidden", default="64,32", help="hidden layer widths, comma-separated")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rows", type=int, default=None, help="train on the first N rows only (quick runs)")
    p.add_argument("--checkpoint-id", default=None, help="default: mlp-<hash of config, data and settings>")
    p.add_argument("--shared-drive", default=None, help="default: $SHARED_DRIVE")
    p.add_argument("--no-signal", action="store_true", help="save the checkpoint without signalling")
    p.add_argument(
        "--mlflow",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log final metrics to MLflow (default: when MLFLOW_TRACKING_URI is set)",
    )
    return p.parse_args(argv)


def train(args: argparse.Namespace) -> dict:
    import numpy as np
    import pandas as pd
    import torch

    from mlgraph.trainer.checkpoint import FeatureSpec, build_model, feature_columns, plain, save_checkpoint

    drive = shared_drive_root(args.shared_drive)
    loaded = ConfigCatalog().load(args.experiment)
    config = loaded.config
    if config.task not in ("regression", "classification"):
        raise SystemExit(f"{loaded.path}: task {config.task!r}; this example trains regression or classification")
    train_path = DriveLayout(drive).dataset_path(config.name, "train")
    if not train_path.is_file():
        raise SystemExit(
            f"{train_path}: missing. Fix: materialize the data first "
            f"(dagster asset materialize -m pipeline_assets.definitions --select train_test_split --partition {config.name})"
        )
    frame = pd.read_parquet(train_path)
    if args.max_rows:
        frame = frame.iloc[: args.max_rows]
    numeric, categorical = feature_columns(config.columns, frame, config.target, exclude=[config.time_column or ""])
    features = FeatureSpec.fit(frame, numeric, categorical)
    x = torch.from_numpy(features.transform(frame, str(train_path)))
    meta: dict = {}
    outputs = 1
    # A target of three or more classes may hold any labels (strings too); the others must be numeric.
    labels = frame[config.target].dropna().unique() if config.task == "classification" else []
    if len(labels) > 2:
        if frame[config.target].isna().any():
            raise SystemExit(f"{train_path}: target {config.target!r} has missing values; drop those rows first")
        # Sorted, like the built-in candidates' class indices; plain values, so metadata.json keeps 2 as 2.
        classes = sorted(plain(c) for c in labels)
        codes = pd.Categorical(frame[config.target], categories=classes).codes.astype("int64")
        y = torch.from_numpy(codes)
        meta["classes"] = classes
        outputs = len(classes)
        loss_fn = torch.nn.CrossEntropyLoss()
    elif config.task == "regression":
        y_raw = pd.to_numeric(frame[config.target]).to_numpy("float64")
        mean, std = float(y_raw.mean()), float(y_raw.std()) or 1.0
        y = torch.from_numpy(((y_raw - mean) / std).astype("float32"))[:, None]
        meta["target_scaling"] = {"mean": mean, "std": std}
        loss_fn = torch.nn.MSELoss()
    else:
        y_raw = pd.to_numeric(frame[config.target]).to_numpy("float64")
        classes = sorted(np.unique(y_raw).tolist())
        if len(classes) != 2:
            raise SystemExit(f"{train_path}: target {config.target!r} has {len(classes)} classes; need two or more")
        y = torch.from_numpy((y_raw == classes[1]).astype("float32"))[:, None]
        meta.update(classes=classes, threshold=0.5)
        loss_fn = torch.nn.BCEWithLogitsLoss()

    hidden = [int(h) for h in args.hidden.split(",") if h]
    architecture = {
        "type": "mlp",
        "input_dim": int(x.shape[1]),
        "hidden": hidden,
        "output_dim": outputs,
        "activation": "relu",
    }
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # deterministic and polite on a shared machine
    model = build_model(architecture)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    steps, epoch_loss, start = 0, float("nan"), time.perf_counter()
    for _ in range(args.epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for i in range(0, len(x), args.batch_size):
            idx = order[i : i + args.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            steps += 1
        epoch_loss = total / len(x)

    settings = {
        "hidden": hidden,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "seed": args.seed,
        "rows": len(frame),
    }
    digest = hashlib.sha256(json.dumps([config.config_hash, settings], sort_keys=True).encode()).hexdigest()
    ckpt_id = args.checkpoint_id or f"mlp-{digest[:12]}"
    directory = drive / "models" / config.name / "checkpoints" / ckpt_id / "final"
    save_checkpoint(
        directory,
        model,
        {
            **meta,
            "experiment": config.name,
            "task": config.task,
            "target": config.target,
            "architecture": architecture,
            "features": features.to_dict(),
            "feature_names": features.names,
            "config_hash": config.config_hash,
            "training": {
                **settings,
                "final_loss": epoch_loss,
                "total_steps": steps,
                "seconds": round(time.perf_counter() - start, 3),
                "train_path": str(train_path),
            },
        },
    )
    return {
        "experiment": config.name,
        "checkpoint": str(directory),
        "checkpoint_id": ckpt_id,
        "config_path": str(loaded.path),
        "final_loss": epoch_loss,
        "epochs": args.epochs,
        "steps": steps,
        "settings": settings,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        trained = train(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    summary = {**trained, "signal": None}
    if not args.no_signal:
        result = signal_training_complete(
            trained["experiment"],
            trained["checkpoint"],
            config_path=trained["config_path"],
            num_epochs=trained["epochs"],
            final_loss=trained["final_loss"],
            total_steps=trained["steps"],
            params=trained["settings"],
            shared_drive=args.shared_drive,
            mlflow=args.mlflow,
        )
        summary.update(
            signal=str(result.signal_path) if result else None,
            signal_error=result.error,
            mlflow_run_id=result.mlflow_run_id,
        )
    print(json.dumps(summary, indent=2, default=str))
    return 0 if args.no_signal or summary["signal"] else 2


if __name__ == "__main__":
    sys.exit(main())
