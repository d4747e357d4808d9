"""labels_sensor: delayed labels in, live_performance out (issue 22).

Each tick, for every registered experiment:
- labels files dropped into `serving/{experiment}/labels/` (CSV/parquet: request id, label, optional time)
  that have settled are validated and ingested into the labels store, then moved to `processed/`; a bad
  one is moved to `rejected/` with its reason and raises a `labels_rejected` alert
  (mlgraph/monitoring/label_files.py). One bad file, or one broken experiment, never stops the others;
- when the labels store changed (files ingested here, or `POST /feedback` on the service), one
  `live_performance` run is requested for the experiment, keyed by the store's size and time, so the same
  store never starts two runs even when the cursor is lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mlgraph.core.cursor import JsonCursor
from mlgraph.core.experiment import ConfigError
from pipeline_assets.partitions import experiment_partitions_def
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive

LIVE_PERFORMANCE = dg.AssetKey("live_performance")
MIN_INTERVAL_SECONDS = 30


@dataclass
class LabelsCursor(JsonCursor):
    """The labels store version (size-mtime) each experiment's last live_performance request saw."""

    KIND = "a labels cursor"
    SENSOR = "labels_sensor"
    AFTER_RESET = "each experiment with labels then gets one live_performance run."

    stores: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> LabelsCursor:
        return cls(stores={str(k): str(v) for k, v in dict(data["stores"]).items()})

    def to_json(self) -> dict:
        return {"stores": self.stores}


def ingest_inbox(storage: SharedDrive, config: Any, notes: list[str]) -> list:
    """Ingest the experiment's settled labels files; the alert changes for the rejected ones."""
    from mlgraph.monitoring import label_files
    from mlgraph.monitoring.labels import append_labels
    from mlgraph.ops.alerts import labels_rejected_change

    name, inbox, root = config.name, storage.labels_inbox_dir(config.name), storage.root_path
    changes = []

    def rejected(path, size: int, reason: str) -> None:
        label_files.reject(path, reason)
        notes.append(f"{name}: rejected {path.name}")
        changes.append(labels_rejected_change(f"{name}/{path.name}:{size}", reason, name))

    for odd in label_files.odd_entries(inbox):
        rejected(odd, 0, f"{odd.name}: not a regular file (a link, FIFO or directory); it was not opened")
    ready = label_files.pending_files(inbox)
    if not ready:
        return changes
    classes = label_files.known_classes(storage, config)
    for item in ready:
        try:
            batch = label_files.read_labels_file(item.path, config.task, classes, root)
        except label_files.Rejected as exc:
            rejected(item.path, item.size, str(exc))
            continue
        append_labels(storage.labels_store_path(name), batch, f"file:{item.path.name}", within=root)
        label_files.mark_processed(item.path)
        summary = batch.summary()
        notes.append(
            f"{name}: {item.path.name}: {summary['accepted']} labels, {summary['duplicates']} duplicate, "
            f"{summary['unknown_ids']} unknown ids"
        )
    return changes


@dg.sensor(
    asset_selection=[LIVE_PERFORMANCE],
    minimum_interval_seconds=MIN_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def labels_sensor(
    context: dg.SensorEvaluationContext, storage: SharedDrive, catalog: ExperimentCatalog
) -> dg.SensorResult:
    """Ingests dropped labels files and requests live_performance when an experiment's labels changed."""
    from mlgraph.monitoring.labels import store_version
    from mlgraph.ops import alerts

    cursor = LabelsCursor.load_or_reset(context.cursor, context.log.warning)
    requests, notes, changes = [], [], []
    for name in sorted(context.instance.get_dynamic_partitions(experiment_partitions_def.name)):
        try:
            config = catalog.load(name).config
            changes += ingest_inbox(storage, config, notes)
        except (ConfigError, OSError, ValueError) as exc:
            # Files stay in the inbox (retried next tick); the other experiments go on.
            context.log.warning(f"{name}: {exc}")
            notes.append(f"{name}: error ({type(exc).__name__})")
        version = store_version(storage.labels_store_path(name))
        if version is None or cursor.stores.get(name) == version:
            continue
        requests.append(
            dg.RunRequest(run_key=f"labels:{name}:{version}", partition_key=name, asset_selection=[LIVE_PERFORMANCE])
        )
        cursor.stores[name] = version
    alerts.record(storage.layout, changes)
    for note in notes:
        context.log.info(note)
    skip = None if requests else ("; ".join(notes) or "no new labels")
    return dg.SensorResult(run_requests=requests, cursor=cursor.dump(), skip_reason=skip)
