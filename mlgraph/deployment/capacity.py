"""Serving capacity: the events a replay sends, the champion's service started for a sweep, the record the
serving_capacity asset keeps, and the release rule the service applies to it.

- Events are request rows: the experiment's features (as training derives them from the train split's
  columns, the service's request schema) taken from the test split or a user's CSV / parquet / JSONL
  file; a forecaster's rows are windows of past target values.
- `measure` starts `mlgraph serve` for the current champion on a free loopback port (its own process,
  prediction log on but in a scratch file: replayed test rows must not enter the log drift reads), runs the
  open-loop sweep (mlgraph.deployment.loadgen) against the experiment's SLO, and writes the curve (CSV +
  PNG) and the record (JSON, and one line of history per measurement) under artifacts/{experiment}/capacity/.
- `release_hold`, the release rule `mlgraph serve` applies before loading a champion: one whose own
  record says it saturates below `min_rps` is never released; one not measured yet is held while
  another model is served (in a deployment that measures capacity), so a running service keeps the
  previous champion until serving_capacity has passed the new one, and keeps it for good when the
  new one fails. With nothing served, an unmeasured champion is released (there is nothing else to
  answer with, and serving_capacity itself measures a champion that way).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlgraph.core.atomic import atomic_append_line, atomic_write_json
from mlgraph.core.drive import DrivePaths
from mlgraph.core.experiment import ExperimentConfig
from mlgraph.deployment import loadgen, saturation
from mlgraph.deployment.champion import Champion

READY_TIMEOUT_S = 60.0
MAX_EVENTS = 2000  # distinct request bodies cycled through (bounded memory, varied inputs)
SOURCE_SUFFIXES = (".csv", ".parquet", ".jsonl", ".ndjson")
CHECK = "serving_capacity_meets_slo"
# Steps of 2 s: long enough that a backlog (the log writer falling behind) shows, short enough to keep the
# asset within ~25 s on the demo machine (server start included); two bisections
# after the first failing step give ~12 % resolution (1.6 ** 0.25).
ASSET_SWEEP = saturation.SweepSettings(start_rps=250.0, factor=1.6, max_rps=8000.0, step_seconds=2.0, refine_steps=2)


# ---------------------------------------------------------------------------------------------- events


def feature_names(drive: DrivePaths, config: ExperimentConfig) -> list[str]:
    """The columns one request row holds (what `mlgraph serve` takes), from the train split's schema."""
    import pyarrow.parquet as pq

    from mlgraph.training.families import feature_spec

    path = drive.dataset_path(config.name, "train")
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the request schema comes from the train split. "
            f"Fix: materialize train_test_split for {config.name!r} first."
        )
    spec = feature_spec(pq.read_schema(path).empty_table().to_pandas(), config)
    return [*spec.numeric, *spec.categorical]


def _json_value(value: Any) -> Any:
    import pandas as pd

    if value is None or (not isinstance(value, (list, tuple, dict, str)) and pd.isna(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def rows_from_frame(frame: Any, names: Sequence[str], limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """The first `limit` rows of `frame` as a client sends them (missing → null, numpy → Python)."""
    head = frame[list(names)].head(limit)
    return [{c: _json_value(v) for c, v in row.items()} for row in head.to_dict("records")]


def windows_from_series(values: Sequence[float], window: int, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """Forecaster requests: sliding windows of `window` past values (gaps carried forward)."""
    import numpy as np
    import pandas as pd

    series = pd.Series(np.asarray(values, dtype=float)).ffill().bfill().to_numpy()
    if len(series) < window or not np.isfinite(series).all():
        raise ValueError(f"the series has {len(series)} usable values; a forecaster's request needs {window}")
    return [{"window": series[i : i + window].tolist()} for i in range(min(limit, len(series) - window + 1))]


def held_out_events(drive: DrivePaths, config: ExperimentConfig, limit: int = MAX_EVENTS) -> list[dict[str, Any]]:
    """Requests built from the experiment's test split on the drive (the target dropped)."""
    from mlgraph.training.model_files import read_split

    test = read_split(drive, config.name, "test")
    if config.task == "forecasting":
        return windows_from_series(test[config.target].to_numpy(), config.forecast.window, limit)
    return rows_from_frame(test, feature_names(drive, config), limit)


def read_source(path: Path) -> Any:
    """A CSV, parquet or JSONL file as a DataFrame; a clear error for anything else."""
    import pandas as pd

    if not path.is_file():
        raise loadgen.ReplayError(f"--source {path}: no such file. Fix: give a CSV, parquet or JSONL file of events.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
    except ValueError as exc:
        raise loadgen.ReplayError(f"--source {path}: cannot be read as {suffix[1:]} ({exc})") from None
    raise loadgen.ReplayError(
        f"--source {path}: unknown file type {suffix or '(none)'}. Fix: use one of {', '.join(SOURCE_SUFFIXES)}."
    )


def source_events(
    path: Path, drive: DrivePaths, config: ExperimentConfig, limit: int = MAX_EVENTS
) -> list[dict[str, Any]]:
    """Requests from a user's event file: rows with the experiment's feature columns (extra columns, such as
    the target or an id, are dropped); a forecaster's file has a `window` column of lists."""
    frame = read_source(path)
    if len(frame) == 0:
        raise loadgen.ReplayError(f"--source {path}: no rows. Fix: give a file with at least one event.")
    if config.task == "forecasting":
        if "window" not in frame.columns:
            raise loadgen.ReplayError(
                f"--source {path}: column 'window' is missing; a forecaster's event is "
                f'{{"window": [{config.forecast.window} past values]}}. Fix: write JSONL rows of that form.'
            )
        return [{"window": [float(v) for v in w]} for w in frame["window"].head(limit)]
    names = feature_names(drive, config)
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise loadgen.ReplayError(
            f"--source {path}: column(s) {', '.join(map(repr, missing))} missing; experiment {config.name!r} "
            f"takes {names}. Fix: add the columns (empty cells are sent as null)."
        )
    return rows_from_frame(frame, names, limit)


# --------------------------------------------------------------------------------------------- service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotServable(RuntimeError):
    """`mlgraph serve` refuses the champion itself (e.g. a forecaster it does not serve): no capacity to measure."""


class ServiceProcess:
    """`mlgraph serve` for one experiment in a process of its own on a free loopback port; stop() kills it by PID."""

    def __init__(
        self,
        drive_root: Path,
        config_dir: Path,
        experiment: str,
        *extra: str,
        log_path: Path | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MLGRAPH_CONFIG_DIR": str(config_dir), "SHARED_DRIVE": str(drive_root)}
        command = [sys.executable, "-m", "mlgraph.cli.main", "serve", "--experiment", experiment]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--drive", str(drive_root), *extra]
        self.log_path = log_path
        out = open(log_path, "wb") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - closed in stop()
        self._out = out
        self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)

    def _tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-2000:]

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """The /ready answer once the champion is loaded; RuntimeError (with the server's output) after `timeout`."""
        import httpx

        deadline, last = time.monotonic() + timeout, "no answer"
        with httpx.Client(base_url=self.url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlgraph serve exited with {self.proc.returncode}: {self._tail()}")
                try:
                    answer = client.get("/ready")
                    health = client.get("/health").json() if answer.status_code != 200 else {}
                except httpx.TransportError as exc:
                    last = str(exc)
                else:
                    if answer.status_code == 200:
                        return answer.json()
                    last = answer.text
                    failure = (health.get("last_load_failure") or {}).get("error", "")
                    # The champion itself (not a passing read error, nor a champion changing mid-load).
                    if failure.startswith("ModelRefused") and "changed while" not in failure:
                        raise NotServable(failure)
                time.sleep(0.1)
        raise RuntimeError(f"mlgraph serve on {self.url} not ready after {timeout:g} s ({last}). {self._tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._out is not subprocess.DEVNULL:
            self._out.close()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- record


def slo_of(config: ExperimentConfig) -> saturation.SLO:
    slo = config.deployment.slo
    return saturation.SLO(p99_ms=slo.p99_ms, min_rps=slo.min_rps)


def read_record(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}). Fix: materialize serving_capacity again.") from None


def previous_record(drive: DrivePaths, experiment: str, model_version: str) -> dict[str, Any] | None:
    """The latest measurement of another champion (the one this one replaces), from the history."""
    path = drive.capacity_history_jsonl(experiment)
    if not path.exists():
        return None
    previous = None
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a torn last line of an interrupted append: skipped, the rest is intact
            continue
        if str(record.get("model_version")) != str(model_version):
            previous = record
    return previous


@contextlib.contextmanager
def _removed(directory: Path) -> Iterator[Path]:
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Measurement:
    record: dict[str, Any]
    sweep: saturation.Sweep | None  # None: the service refuses the champion (record["reason"] says why)
    previous: dict[str, Any] | None
    csv_path: Path | None
    plot_path: Path | None
    record_path: Path


def gate_settings(settings: saturation.SweepSettings, slo: saturation.SLO) -> saturation.SweepSettings:
    """The sweep the gate runs: its first step at min_rps when that is below the usual start rate.

    The gate asks whether min_rps is sustained, so a slow or busy host that fails the usual start rate can
    still pass an SLO below it (and a champion's saturation is never reported as 0 for want of a lower step).
    """
    return dataclasses.replace(settings, start_rps=slo.min_rps) if settings.start_rps > slo.min_rps else settings


def measure(
    drive: DrivePaths,
    config: ExperimentConfig,
    champion: Champion,
    config_dir: Path,
    settings: saturation.SweepSettings = ASSET_SWEEP,
    slo: saturation.SLO | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> Measurement:
    """Start the champion's service, sweep it to saturation, write the curve and the record."""
    slo = slo or slo_of(config)
    settings = gate_settings(settings, slo)
    events = held_out_events(drive, config)
    directory = drive.capacity_dir(config.name)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # The prediction log on, as in production (its writer costs the service a large share of its
    # throughput), but into a scratch file: replayed test rows must never reach the log drift reads.
    # --no-release-hold: the champion is measured even when an earlier measurement of it failed the SLO.
    scratch = directory / "serving_capacity_scratch_log"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    with (
        ServiceProcess(
            drive.root_path,
            config_dir,
            config.name,
            "--prediction-log-path",
            str(scratch / "prediction_log.jsonl"),
            "--no-release-hold",
            log_path=directory / "serving_capacity_server.log",
        ) as service,
        _removed(scratch),
    ):
        try:
            ready = service.wait_ready()
        except NotServable as exc:
            return _not_servable(drive, config, champion, slo, str(exc), started)
        if str(ready.get("model_version")) != champion.model_version:
            raise RuntimeError(
                f"the service loaded model_version {ready.get('model_version')}, not the champion "
                f"{champion.label()}: the champion changed during the measurement. Fix: materialize again."
            )
        endpoint = loadgen.parse_url(service.url)
        sweep = saturation.run_sweep(endpoint, loadgen.encode_requests(endpoint, events), slo, settings, on_step)
    previous = previous_record(drive, config.name, champion.model_version)
    csv_path = saturation.write_curve_csv(sweep, drive.capacity_curve_csv(config.name))
    plot_path = saturation.curve_plot(
        sweep,
        drive.capacity_plot(config.name),
        f"{config.name}: {champion.label()} ({ready.get('runtime')}), open loop",
        previous.get("curve", []) if previous else (),
    )
    record = {
        "experiment": config.name,
        "model_version": champion.model_version,
        "run_id": champion.run_id,
        "config_hash": champion.config_hash,
        "runtime": ready.get("runtime"),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "events": len(events),
        "servable": True,
        "prediction_log": True,
        **sweep.summary(),
        "curve": saturation.curve_rows(sweep),
    }
    record_path = atomic_write_json(drive.capacity_json(config.name), record)
    atomic_append_line(drive.capacity_history_jsonl(config.name), json.dumps(record, separators=(",", ":")))
    return Measurement(record, sweep, previous, csv_path, plot_path, record_path)


def _not_servable(
    drive: DrivePaths, config: ExperimentConfig, champion: Champion, slo: saturation.SLO, reason: str, started: float
) -> Measurement:
    """The record of a champion the service refuses outright: nothing measured, nothing for the gate to hold."""
    record = {
        "experiment": config.name,
        "model_version": champion.model_version,
        "run_id": champion.run_id,
        "config_hash": champion.config_hash,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "servable": False,
        "reason": reason,
        "slo": slo.as_dict(),
        "saturation_rps": None,
        "saturated": None,
        "meets_slo": None,
        "curve": [],
    }
    record_path = atomic_write_json(drive.capacity_json(config.name), record)
    atomic_append_line(drive.capacity_history_jsonl(config.name), json.dumps(record, separators=(",", ":")))
    return Measurement(
        record, None, previous_record(drive, config.name, champion.model_version), None, None, record_path
    )


def champion_record(drive: DrivePaths, champion: Champion) -> dict[str, Any] | None:
    """The latest capacity record of exactly this champion (version and run), from the record or the history."""

    def mine(record: Mapping[str, Any] | None) -> bool:
        return (
            bool(record)
            and str(record.get("model_version")) == champion.model_version
            and (record.get("run_id") == champion.run_id)
        )

    latest = read_record(drive.capacity_json(champion.experiment))
    if mine(latest):
        return latest
    path, found = drive.capacity_history_jsonl(champion.experiment), None
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a torn line of an interrupted append
                continue
            if mine(record):
                found = record
    return found


def release_hold(drive: DrivePaths, champion: Champion, serving: str | None = None) -> str | None:
    """Why `champion` must not be released now (None: it may be).

    - Its own latest capacity record misses the SLO: never released.
    - Not measured yet while another model (`serving`, its version) is being served, in a deployment that
      measures capacity (the experiment has a capacity history): held until serving_capacity has run, so
      the served model keeps answering. With nothing served, or no capacity measured for the experiment
      at all, an unmeasured champion is released (as a champion whose ONNX export is not gated yet is
      served natively).
    """
    record = champion_record(drive, champion)
    if record is not None:
        if record.get("meets_slo") is not False:
            return None
        slo: Mapping[str, Any] = record.get("slo", {})
        return (
            f"gate {CHECK} failed for {champion.label()}: it sustains {record.get('saturation_rps')} requests/s "
            f"within p99 {slo.get('p99_ms')} ms, below min_rps {slo.get('min_rps')} (measured "
            f"{record.get('measured_at')}). Fix: promote a faster model, or roll back with `mlgraph promote --rollback`"
        )
    if serving is None or serving == champion.model_version:
        return None
    if not drive.capacity_history_jsonl(champion.experiment).exists():
        return None
    return (
        f"{champion.label()} awaits its serving-capacity measurement (gate {CHECK}); v{serving} keeps serving. "
        "Fix: materialize serving_capacity for this experiment"
    )
