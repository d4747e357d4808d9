"""Asset jobs; heavy ones carry Slurm tags so the run launcher can send them to the cluster."""

import dagster as dg

# Run tags understood by resources.slurm_launcher.SlurmRunLauncher.
COMPUTE_TAG = "mlgraph/compute"


def slurm_tags(cpus: int = 2, mem: str = "4G", time: str = "01:00:00", kind: str = "training") -> dict[str, str]:
    """Tags that route a run to Slurm with these resources (`kind` picks the log directory)."""
    return {
        COMPUTE_TAG: "slurm",
        "slurm/cpus": str(cpus),
        "slurm/mem": mem,
        "slurm/time": time,
        "slurm/kind": kind,
    }


data_job = dg.define_asset_job(
    "data_job",
    selection=dg.AssetSelection.groups("data"),
    description="Load, fingerprint and split one experiment's data.",
)

JOBS = [data_job]
