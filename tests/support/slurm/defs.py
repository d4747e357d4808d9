"""A test-only code location: assets that sleep or allocate memory so Slurm jobs stay in flight."""

import time

import dagster as dg


class SleepConfig(dg.Config):
    seconds: float = 30.0


class MemoryConfig(dg.Config):
    megabytes: int = 600
    hold_seconds: float = 20.0


@dg.asset
def slow_asset(config: SleepConfig) -> dg.MaterializeResult:
    """Sleeps for the configured seconds (a run that stays in flight)."""
    # Short sleeps keep the process responsive to the interrupt Slurm sends on scancel.
    deadline = time.monotonic() + config.seconds
    while time.monotonic() < deadline:
        time.sleep(0.2)
    return dg.MaterializeResult(metadata={"slept_seconds": config.seconds})


@dg.asset
def hungry_asset(config: MemoryConfig) -> dg.MaterializeResult:
    """Holds the configured megabytes of touched memory (exceeds a small --mem)."""
    block = bytearray(config.megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(config.hold_seconds)
    return dg.MaterializeResult(metadata={"megabytes": config.megabytes})


@dg.asset
def quick_asset() -> dg.MaterializeResult:
    """Returns at once (launch-latency measurements)."""
    return dg.MaterializeResult(metadata={"ok": True})


slow_job = dg.define_asset_job("slow_job", selection=[slow_asset])
hungry_job = dg.define_asset_job("hungry_job", selection=[hungry_asset])
quick_job = dg.define_asset_job("quick_job", selection=[quick_asset])

defs = dg.Definitions(
    assets=[slow_asset, hungry_asset, quick_asset],
    jobs=[slow_job, hungry_job, quick_job],
    executor=dg.in_process_executor,
)
