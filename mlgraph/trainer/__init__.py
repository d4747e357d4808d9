"""The trainer-side kit: the completion hook and the checkpoint format, for a GPU machine, never the daemon.

It imports only `mlgraph.core` (no Dagster, no torch, no mlflow at import), so a training script on a
machine that only mounts the drive can call it:

    from mlgraph.trainer import signal_training_complete
"""

from mlgraph.trainer.hook import HookResult, signal_training_complete

__all__ = ["HookResult", "signal_training_complete"]
