"""The one way a test gets a Dagster instance, and the one dagster.yaml a test writes.

- `dagster_instance()`: ephemeral (in memory), or the instance on a DAGSTER_HOME, with experiments
  registered as `experiment` partitions when asked; disposed on exit.
- `write_instance_config(home, ...)`: the dagster.yaml (and pipeline workspace.yaml) of an instance a real
  `dagster-daemon` runs on: queued runs, the given run launcher, run monitoring, automation on or off,
  SQLite under `home` unless a storage is given.
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from mlgraph.core.drive import PROJECT_ROOT

# The demo experiments (config/experiments/*.yaml), as `make demo` registers them.
DEMO = ["salary", "student_engagement", "demand_forecast"]
DEFAULT_RUN_LAUNCHER: dict[str, Any] = {"module": "dagster.core.launcher", "class": "DefaultRunLauncher"}
# What the shipped SlurmRunLauncher does with every run it keeps local: start it warm (a fork of a preloaded
# fork server, mlgraph.launcher.warm_local). The daemon tests run local runs this way, as users do.
LOCAL_RUN_LAUNCHER: dict[str, Any] = {"module": "mlgraph.launcher.warm_local", "class": "WarmLocalRunLauncher"}
# Instance-level switch for declarative automation. Its sensors are on by default in code; a test that
# is not about automation turns them off here, or they would materialize every registered experiment.
AUTOMATION_OFF: dict[str, Any] = {"enabled": False, "use_sensors": False}
TELEMETRY_OFF: dict[str, Any] = {"telemetry": {"enabled": False}}


@contextmanager
def dagster_instance(
    home: Path | None = None, *, config: Mapping[str, Any] | None = None, experiments: Sequence[str] = ()
) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance for a test, disposed on exit.

    Without `home`: an ephemeral instance (nothing persists; runs cannot leave the process). With `home`
    (a DAGSTER_HOME): the instance its dagster.yaml describes; where there is none yet, a minimal one is
    written first (telemetry off, then `config`, e.g. a `run_launcher` block), so SQLite storage lands
    under `home`. `experiments` are registered as `experiment` partitions.
    """
    if home is None:
        if config:
            raise ValueError("an ephemeral instance takes no dagster.yaml config: pass a home")
        opened = dg.DagsterInstance.ephemeral()
    else:
        settings = home / "dagster.yaml"
        if config and settings.exists():
            raise ValueError(f"{settings} exists: write the whole file (write_instance_config) or pass no config")
        if not settings.exists():
            home.mkdir(parents=True, exist_ok=True)
            settings.write_text(yaml.safe_dump({**TELEMETRY_OFF, **(config or {})}, sort_keys=False))
        opened = dg.DagsterInstance.from_config(str(home))
    with opened as instance:
        if experiments:
            instance.add_dynamic_partitions("experiment", list(experiments))
        yield instance


def write_instance_config(
    home: Path,
    run_launcher: Mapping[str, Any] | None = None,
    automation: bool = False,
    storage: Mapping[str, Any] | None = None,
    *,
    max_concurrent_runs: int = 2,
    run_monitoring: Mapping[str, Any] | None = None,
    dequeue_interval_seconds: int = 1,
) -> Path:
    """dagster.yaml (queued runs, the given launcher, run monitoring with `run_monitoring` on top, automation on
    or off, storage: SQLite under `home` unless given) and workspace.yaml (the pipeline); returns the latter."""
    home.mkdir(parents=True, exist_ok=True)
    config = {
        **TELEMETRY_OFF,
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": max_concurrent_runs,
                "dequeue_interval_seconds": dequeue_interval_seconds,
            },
        },
        "run_launcher": dict(run_launcher or LOCAL_RUN_LAUNCHER),
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": 180,
            "poll_interval_seconds": 5,
            **(run_monitoring or {}),
        },
        "sensors": {"use_threads": True, "num_workers": 4},  # as the shipped dagster.yaml
    }
    if not automation:
        config["auto_materialize"] = AUTOMATION_OFF
    if storage:
        config["storage"] = dict(storage)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    workspace = home / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "pipeline_assets.definitions",
                            "location_name": "mlgraph",
                            "working_directory": str(PROJECT_ROOT),
                        }
                    }
                ]
            },
            sort_keys=False,
        )
    )
    return workspace
