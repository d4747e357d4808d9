"""The trainer-side completion hook: runs on the GPU machine, never in the daemon.

It imports only `core` (no Dagster, no torch, no mlflow at import), so a training script on a
machine that only mounts the drive can call it:

    from mlgraph.trainer import signal_training_complete
"""

from mlgraph.trainer.hook import HookResult, signal_training_complete

__all__ = ["HookResult", "signal_training_complete"]
