"""training_complete_sensor and eval_complete_sensor on a real drive and instance: run requests and cursors."""

import json
import logging
import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.drive import DriveLayout
from mlgraph.core.hashing import sha256_bytes
from mlgraph.core.signals import MAX_SIGNAL_BYTES
from mlgraph.external import signal_scan
from mlgraph.external.signal_scan import MAX_CURSOR_KEYS, SignalCursor
from pipeline_assets.analysis.report_assets import AnalysisReportConfig
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from sensors.signal_sensors import MAX_LISTED_REJECTIONS, ConfigHashCache, build_signal_sensors

TRAINING_SENSOR, EVAL_SENSOR = build_signal_sensors(settle_seconds=0, listen_seconds=0)


def write_training(drive: Path, directory: str, checkpoint: str = "ck1", **fields) -> Path:
    """models/{directory}/.training_complete for a fresh checkpoint; `fields` override the signal's."""
    ckpt = drive / "models" / directory / "checkpoints" / checkpoint / "final"
    ckpt.mkdir(parents=True, exist_ok=True)
    signal = {
        "timestamp": "2025-09-30T14:32:15Z",
        "experiment": directory,
        "checkpoint_path": str(ckpt),
        "hostname": "wild_west",
        "user": "trainer",
        **fields,
    }
    return atomic_write_text(drive / "models" / directory / ".training_complete", json.dumps(signal))


def write_eval(drive: Path, experiment: str, name: str = ".eval_complete", **fields) -> Path:
    signal = {"timestamp": "2025-09-30T15:00:00Z", "experiment": experiment, "job_id": "77", **fields}
    if name == ".eval_complete":
        signal.setdefault("status", "complete")
    else:
        signal.setdefault("error_message", "CUDA out of memory")
    return atomic_write_text(drive / "evaluation" / experiment / name, json.dumps(signal))


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def tick(
    sensor, instance, drive: Path, config_dir: Path, cursor: str | None = None, records: Records | None = None
) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": SharedDrive(root=str(drive)), "catalog": ExperimentCatalog(config_dir=str(config_dir))},
    )
    if records is not None:
        context.log.addHandler(records)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def key(drive: Path, path: Path) -> str:
    return f"{path.relative_to(drive).as_posix()}:{sha256_bytes(path.read_bytes())}"


def ctime_ns(path: Path) -> int:
    return path.stat().st_ctime_ns


def position(drive: Path, path: Path) -> tuple[int, str]:
    """Where a file stands in the sensors' order: (ctime, path relative to the drive)."""
    return ctime_ns(path), path.relative_to(drive).as_posix()


def add_experiment(config_dir: Path, name: str) -> None:
    """config/experiments/{name}.yaml, a copy of salary's."""
    salary = (config_dir / "experiments" / "salary.yaml").read_text()
    (config_dir / "experiments" / f"{name}.yaml").write_text(salary.replace("name: salary", f"name: {name}"))


@pytest.fixture
def env(shared_drive: Path, config_dir: Path, instance):
    return shared_drive, config_dir, instance


def test_new_same_rewritten_and_older_mtime(env, monkeypatch):
    drive, config_dir, instance = env
    monkeypatch.delenv("MLGRAPH_SIGNAL_COMPUTE", raising=False)
    first = write_training(drive, "salary", "ck1", mlflow_run_id="abc123")
    first_key = key(drive, first)
    result = tick(TRAINING_SENSOR, instance, drive, config_dir)
    [request] = result.run_requests
    assert request.run_key == first_key and request.partition_key == "salary"
    ckpt = drive / "models" / "salary" / "checkpoints" / "ck1" / "final"
    assert request.run_config["ops"] == {"checkpoint_evaluation": {"config": {"checkpoint_path": str(ckpt)}}}
    assert request.tags["mlgraph/signal_file"] == str(first)
    assert request.tags["mlgraph/checkpoint_id"] == "ck1"
    assert request.tags["mlgraph/training_mlflow_run_id"] == "abc123"
    assert (
        request.tags["mlgraph/config_hash"]
        == ExperimentCatalog(config_dir=str(config_dir)).load("salary").config.config_hash
    )
    assert request.tags["mlgraph/compute"] == "slurm" and request.tags["slurm/kind"] == "evaluation"
    [event] = result.asset_events
    assert isinstance(event, dg.AssetMaterialization) and event.asset_key == dg.AssetKey("external_checkpoint")
    assert event.partition == "salary" and event.metadata["checkpoint_id"].value == "ck1"
    assert event.metadata["hostname"].value == "wild_west"
    assert result.dynamic_partitions_requests == []  # salary is registered already
    cursor = SignalCursor.load(result.cursor)
    assert cursor == SignalCursor(*position(drive, first), {first_key})

    again = tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor)
    assert again.run_requests == [] and "no new signal files (1 seen" in again.skip_reason.skip_message
    assert again.cursor == result.cursor

    # Touched, same content: nothing to do.
    os.utime(first)
    touched = tick(TRAINING_SENSOR, instance, drive, config_dir, again.cursor)
    assert touched.run_requests == []

    rewritten = write_training(drive, "salary", "ck2")
    result = tick(TRAINING_SENSOR, instance, drive, config_dir, touched.cursor)
    [request] = result.run_requests
    assert request.run_key == key(drive, rewritten) != first_key
    assert request.tags["mlgraph/checkpoint_id"] == "ck2"
    # The new content's key replaces the old one: one key per path.
    assert SignalCursor.load(result.cursor) == SignalCursor(*position(drive, rewritten), {key(drive, rewritten)})

    # A signal whose mtime is a day older than everything handled (moved in with its temp file's mtime).
    older = write_training(drive, "student_engagement", "ck9")
    day_ago = time.time() - 86_400
    os.utime(older, (day_ago, day_ago))
    assert older.stat().st_mtime_ns < SignalCursor.load(result.cursor).ctime_ns
    late = tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor)
    [request] = late.run_requests
    assert request.partition_key == "student_engagement" and request.run_key == key(drive, older)
    assert tick(TRAINING_SENSOR, instance, drive, config_dir, late.cursor).run_requests == []


def test_bad_files_are_reported_and_never_block_good_ones(env, tmp_path: Path):
    drive, config_dir, instance = env
    outside = tmp_path / "outside"
    outside.mkdir()
    truncated = drive / "models" / "salary" / ".training_complete"
    truncated.parent.mkdir(parents=True)
    truncated.write_text('{"timestamp": "2025-09-30T14:32:15Z", "experiment": "sal')
    write_training(drive, "student_engagement", checkpoint_path="models/../../outside")
    write_training(drive, "demand_forecast", checkpoint_path=str(drive / "models" / "nope"))
    write_training(drive, "ghost")  # no config/experiments/ghost.yaml
    add_experiment(config_dir, "wages")
    write_training(drive, "wages", experiment="salary")  # field disagrees with its directory
    # Known experiments, so that their files are read (a directory that names none is rejected unread).
    for name in ("huge", "escape", "binary"):
        add_experiment(config_dir, name)
    (drive / "models" / "Bad..Name").mkdir()
    (drive / "models" / "Bad..Name" / ".training_complete").write_text("{}")
    (drive / "models" / "huge").mkdir()
    (drive / "models" / "huge" / ".training_complete").write_bytes(b" " * (MAX_SIGNAL_BYTES + 1))
    (drive / "models" / "escape").symlink_to(outside)
    (outside / ".training_complete").write_text("{}")
    (drive / "models" / "binary").mkdir()
    (drive / "models" / "binary" / ".training_complete").write_bytes(b'{"experiment": "\xff"}')

    result = tick(TRAINING_SENSOR, instance, drive, config_dir)
    assert result.run_requests == []
    message = result.skip_reason.skip_message
    assert message.startswith("rejected 9: ")
    for expected in (
        "models/salary/.training_complete: not valid JSON",
        "models/student_engagement/.training_complete: field 'checkpoint_path'",
        "outside the shared drive",
        "models/demand_forecast/.training_complete: field 'checkpoint_path'",
        "does not exist",
        "models/ghost/.training_complete: experiment 'ghost' is unknown",
        "ghost.yaml: no such experiment config. Fix: add that config",
        "field 'experiment' is 'salary' but the file is in directory 'wages'",
        "directory name 'Bad..Name' is not an experiment name",
        "models/huge/.training_complete: 1048577 bytes, over the",
        "models/escape/.training_complete: symlink leads outside the shared drive",
        "models/binary/.training_complete: not UTF-8",
    ):
        assert expected in message, expected
    # Reported once: the cursor moved past them, so the next tick is quiet.
    quiet = tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor)
    assert quiet.skip_reason.skip_message.startswith("no new signal files")

    # A fixed file beside broken ones runs, and a new broken one does not stop it.
    good = write_training(drive, "salary", "ck3")
    (drive / "models" / "student_engagement" / ".training_complete").write_text("not json")
    result = tick(TRAINING_SENSOR, instance, drive, config_dir, quiet.cursor)
    assert [r.run_key for r in result.run_requests] == [key(drive, good)]
    assert result.skip_reason is None
    broken = drive / "models" / "student_engagement" / ".training_complete"
    cursor = SignalCursor.load(result.cursor)
    assert (cursor.ctime_ns, cursor.path) == max(position(drive, broken), position(drive, good))
    assert key(drive, broken) in cursor.keys
    assert tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor).run_requests == []


def test_a_complete_signal_is_taken_at_once_and_an_incomplete_one_waits_to_settle(env):
    drive, config_dir, instance = env
    patient, _ = build_signal_sensors(settle_seconds=60, listen_seconds=0)
    path = write_training(drive, "salary")
    # A writer still busy: the first half of a valid signal (no closing brace yet).
    whole = write_training(drive, "student_engagement").read_bytes()
    partial = drive / "models" / "student_engagement" / ".training_complete"
    partial.write_bytes(whole[: len(whole) // 2])
    result = tick(patient, instance, drive, config_dir)
    assert [r.run_key for r in result.run_requests] == [key(drive, path)]
    cursor = SignalCursor.load(result.cursor)
    # The cursor stays before both (a file with an earlier ctime may still appear); the taken one's key is kept.
    assert (cursor.ctime_ns, cursor.path) == (SignalCursor().ctime_ns, SignalCursor().path)
    assert key(drive, path) in cursor.keys
    again = tick(patient, instance, drive, config_dir, result.cursor)
    assert again.run_requests == []
    assert "1 settling: models/student_engagement/.training_complete" in again.skip_reason.skip_message
    # Once settled (here: a sensor with a shorter settle time): the taken file is not requested twice, and
    # the incomplete one is judged now.
    settled = tick(TRAINING_SENSOR, instance, drive, config_dir, again.cursor)
    assert settled.run_requests == []
    assert "models/student_engagement/.training_complete" in settled.skip_reason.skip_message
    assert SignalCursor.load(settled.cursor).ctime_ns == max(ctime_ns(path), ctime_ns(partial))


def test_experiment_with_yaml_but_no_partition_is_added(env):
    drive, config_dir, instance = env
    salary = (config_dir / "experiments" / "salary.yaml").read_text()
    (config_dir / "experiments" / "wages.yaml").write_text(salary.replace("name: salary", "name: wages"))
    write_training(drive, "wages")
    result = tick(TRAINING_SENSOR, instance, drive, config_dir)
    [add] = result.dynamic_partitions_requests
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and add.partition_keys == ["wages"]
    assert [r.partition_key for r in result.run_requests] == ["wages"]


def test_content_that_already_ran_is_not_requested_again(env):
    """After a crash the cursor may be behind; a run that exists for the key wins."""
    drive, config_dir, instance = env
    path = write_training(drive, "salary")
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(job_name="checkpoint_evaluation_job", run_id=run_id, tags={"dagster/run_key": key(drive, path)})
    )
    result = tick(TRAINING_SENSOR, instance, drive, config_dir, cursor=None)
    assert result.run_requests == []
    assert f"already evaluated by run {run_id}" in result.skip_reason.skip_message
    assert SignalCursor.load(result.cursor).keys == {key(drive, path)}


def test_local_compute_is_chosen_at_tick_time(env, monkeypatch):
    drive, config_dir, instance = env
    write_training(drive, "salary")
    monkeypatch.setenv("MLGRAPH_SIGNAL_COMPUTE", "local")
    [request] = tick(TRAINING_SENSOR, instance, drive, config_dir).run_requests
    assert request.tags["mlgraph/compute"] == "local" and "slurm/kind" not in request.tags


def test_corrupt_cursor_fails_with_the_fix(env):
    drive, config_dir, instance = env
    with pytest.raises(Exception, match="clear the cursor"):
        tick(TRAINING_SENSOR, instance, drive, config_dir, cursor="not json")


def test_eval_complete_runs_analysis_and_failures_are_reported(env):
    drive, config_dir, instance = env
    done = write_eval(
        drive, "salary", checkpoint_id="ck1", dagster_run_id="run-1", mlflow_run_id="mlf", config_hash="h" * 64
    )
    failed = write_eval(drive, "student_engagement", ".eval_failed", error_type="RuntimeError", checkpoint_id="ck2")
    failed_status = write_eval(drive, "demand_forecast", status="failed", error_message="diverged")
    result = tick(EVAL_SENSOR, instance, drive, config_dir)
    [request] = result.run_requests
    assert request.run_key == key(drive, done) and request.partition_key == "salary"
    # The checkpoint named by the signal; every other analysis option at its default.
    defaults = AnalysisReportConfig().model_dump()
    assert request.run_config["ops"] == {
        "checkpoint_comparison_report": {"config": {**defaults, "checkpoint_id": "ck1"}}
    }
    assert request.tags["mlgraph/eval_run_id"] == "run-1" and request.tags["mlgraph/mlflow_run_id"] == "mlf"
    assert request.tags["mlgraph/eval_job_id"] == "77" and request.tags["mlgraph/config_hash"] == "h" * 64
    assert request.tags["slurm/kind"] == "analysis"
    observations = {e.partition: e for e in result.asset_events}
    assert set(observations) == {"student_engagement", "demand_forecast"}
    for partition, message in (("student_engagement", "CUDA out of memory"), ("demand_forecast", "diverged")):
        event = observations[partition]
        assert isinstance(event, dg.AssetObservation) and event.asset_key == dg.AssetKey("checkpoint_evaluation")
        assert event.metadata["status"].value == "failed" and event.metadata["error_message"].value == message
    assert observations["student_engagement"].metadata["error_type"].value == "RuntimeError"
    cursor = SignalCursor.load(result.cursor)
    assert cursor.keys == {key(drive, p) for p in (done, failed, failed_status)}
    assert (cursor.ctime_ns, cursor.path) == max(position(drive, p) for p in (done, failed, failed_status))

    again = tick(EVAL_SENSOR, instance, drive, config_dir, result.cursor)
    assert again.run_requests == [] and again.asset_events == []


def test_a_backlog_drains_over_several_ticks_in_change_order(env, config_dir):
    drive, config_dir, instance = env
    names = [f"exp{i}" for i in range(5)]
    paths = []
    for name in names:
        add_experiment(config_dir, name)
        paths.append(write_training(drive, name))
    # Written one after the other: ctime order is write order (ties, on a coarse clock, go by path).
    assert sorted(paths, key=lambda p: position(drive, p)) == paths
    small, _ = build_signal_sensors(settle_seconds=0, max_per_tick=2, listen_seconds=0)
    seen, cursor = [], None
    for expected in (2, 2, 1, 0):
        result = tick(small, instance, drive, config_dir, cursor)
        assert len(result.run_requests) == expected
        seen += [r.partition_key for r in result.run_requests]
        cursor = result.cursor
    assert seen == names


def test_a_forged_future_mtime_neither_delays_a_signal_nor_hides_later_ones(env):
    """Only the ctime orders files: `os.utime` can date a file's mtime anywhere, never its ctime."""
    drive, config_dir, instance = env
    forged = write_training(drive, "salary")
    year_ahead = time.time_ns() + 365 * 86_400 * 10**9
    os.utime(forged, ns=(year_ahead, year_ahead))
    result = tick(TRAINING_SENSOR, instance, drive, config_dir)
    # Not left "settling" until next year.
    assert [r.run_key for r in result.run_requests] == [key(drive, forged)]
    assert SignalCursor.load(result.cursor).ctime_ns < time.time_ns()
    later = write_training(drive, "student_engagement")
    again = tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor)
    assert [r.run_key for r in again.run_requests] == [key(drive, later)]


def test_files_sharing_one_change_time_are_taken_a_few_per_tick(env):
    """Hard links share one inode, so one ctime: a tick stops inside it and the next resumes by path."""
    drive, config_dir, instance = env
    names = [f"exp{i}" for i in range(6)]
    for name in names:
        add_experiment(config_dir, name)
    first = write_training(drive, "exp0")
    for name in names[1:]:
        (drive / "models" / name).mkdir(parents=True)
        os.link(first, drive / "models" / name / ".training_complete")  # says exp0: rejected in exp1..exp5
    files = [drive / "models" / name / ".training_complete" for name in names]
    assert len({ctime_ns(f) for f in files}) == 1  # the case under test, not a coincidence of the clock
    small, _ = build_signal_sensors(settle_seconds=0, max_per_tick=2, listen_seconds=0)
    handled, positions, cursor = [], [], None
    for _ in range(3):
        records = Records()
        result = tick(small, instance, drive, config_dir, cursor, records)
        this_tick = [r.partition_key for r in result.run_requests]
        warnings = " ".join(line for level, line in records.lines if level == logging.WARNING)
        this_tick += [n for n in names if f"models/{n}/.training_complete: field 'experiment'" in warnings]
        assert len(this_tick) == 2, this_tick
        handled += this_tick
        cursor = result.cursor
        loaded = SignalCursor.load(cursor)
        positions.append((loaded.ctime_ns, loaded.path))
    assert sorted(handled) == names and len(set(handled)) == 6
    assert positions == [position(drive, files[i]) for i in (1, 3, 5)]
    quiet = tick(small, instance, drive, config_dir, cursor)
    assert quiet.skip_reason.skip_message.startswith("no new signal files")


def plant_junk(drive: Path, count: int, mtime_ns: int) -> None:
    """`count` signal files nobody should act on, all with one forged mtime: well-formed signals in directories
    that name no experiment, half-written JSON, and directory names that are no experiment name."""
    checkpoint = drive / "models" / "salary" / "checkpoints" / "ck1" / "final"
    for i in range(count):
        directory = f"junk{i:06d}" if i % 3 else f"Junk.{i:06d}"
        path = drive / "models" / directory / ".training_complete"
        path.parent.mkdir(parents=True)
        if i % 3 == 1:
            signal = {"timestamp": "2025-09-30T14:32:15Z", "experiment": directory, "hostname": "h", "user": "u"}
            path.write_text(json.dumps({**signal, "checkpoint_path": str(checkpoint)}))
        else:
            path.write_text('{"timestamp": "2025-09-30T14:32:15Z", "experiment": ')
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_a_flood_of_junk_is_rejected_unread_once_and_real_signals_still_run_at_once(env, monkeypatch):
    drive, config_dir, instance = env
    reads: list[str] = []
    real_read = signal_scan.read_signal_bytes

    def counting_read(path, within=None):
        reads.append(Path(path).relative_to(drive).parent.name)
        return real_read(path, within=within)

    monkeypatch.setattr(signal_scan, "read_signal_bytes", counting_read)
    write_training(drive, "salary")  # the checkpoint the well-formed junk names
    handled = tick(TRAINING_SENSOR, instance, drive, config_dir)
    # An hour ahead when planted; the sensors' clock stands two hours ahead, as the daemon's will: the
    # forged moment has passed, so a sensor ordering by mtime would take them all as one change time.
    hour = 3600 * 10**9
    plant_junk(drive, 3000, time.time_ns() + hour)
    real = write_training(drive, "student_engagement")
    sensor, _ = build_signal_sensors(
        settle_seconds=0, max_per_tick=5, clock=lambda: time.time_ns() + 2 * hour, listen_seconds=0
    )
    reads.clear()
    records = Records()
    result = tick(sensor, instance, drive, config_dir, handled.cursor, records)
    assert [r.run_key for r in result.run_requests] == [key(drive, real)]
    assert reads == ["student_engagement"]  # not one junk file read
    # Reported once, in bounded form: the first few by name, the rest counted; one alert each.
    rejections = [line for level, line in records.lines if level == logging.WARNING and "rejected signal" in line]
    assert len(rejections) == MAX_LISTED_REJECTIONS + 1
    assert f"{3000 - MAX_LISTED_REJECTIONS} more signal files rejected" in rejections[-1]
    assert any("models/junk000001/.training_complete: experiment 'junk000001' is unknown" in r for r in rejections)
    assert any("directory name 'Junk.000000' is not an experiment name" in r for r in rejections)
    alerts = DriveLayout(drive).alerts_jsonl().read_text().splitlines()
    assert len(alerts) == MAX_LISTED_REJECTIONS + 1
    cursor = SignalCursor.load(result.cursor)
    assert cursor.keys == {key(drive, real)} | SignalCursor.load(handled.cursor).keys
    assert len(result.cursor) < 1000

    # A signal written after the flood runs on the next tick, and the junk is not looked at again.
    later = write_training(drive, "demand_forecast")
    reads.clear()
    records = Records()
    again = tick(sensor, instance, drive, config_dir, result.cursor, records)
    assert [r.run_key for r in again.run_requests] == [key(drive, later)]
    assert reads == ["demand_forecast"]
    assert not [line for _, line in records.lines if "rejected signal" in line]
    quiet = tick(sensor, instance, drive, config_dir, again.cursor)
    assert quiet.skip_reason.skip_message.startswith("no new signal files (3003 seen")


def test_a_cursor_of_the_old_format_still_loads_and_resumes(env):
    """Cursors stored by the sensors before the (ctime, path) order: {"high_water_ns": ..., "keys": [...]}."""
    drive, config_dir, instance = env
    handled = write_training(drive, "salary")
    st = handled.stat()
    old = json.dumps({"high_water_ns": max(st.st_mtime_ns, st.st_ctime_ns), "keys": [key(drive, handled)]})
    result = tick(TRAINING_SENSOR, instance, drive, config_dir, old)
    assert result.run_requests == []  # handled under the old cursor: not run again
    assert set(json.loads(result.cursor)) == {"ctime_ns", "path", "keys"}
    new = write_training(drive, "student_engagement")
    assert [r.run_key for r in tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor).run_requests] == [
        key(drive, new)
    ]


def test_the_cursor_keeps_a_bounded_set_of_keys(env):
    drive, config_dir, instance = env
    path = write_training(drive, "salary")
    # A cursor carried over from a drive flooded under the old format, with a key per junk file.
    flooded = SignalCursor(0, "", {f"models/junk{i:06d}/.training_complete:{i:064x}" for i in range(5000)})
    result = tick(TRAINING_SENSOR, instance, drive, config_dir, flooded.dump())
    assert [r.run_key for r in result.run_requests] == [key(drive, path)]
    keys = SignalCursor.load(result.cursor).keys
    assert len(keys) == MAX_CURSOR_KEYS and key(drive, path) in keys


def test_an_eval_complete_naming_a_checkpoint_outside_its_directory_is_rejected(env):
    drive, config_dir, instance = env
    write_eval(drive, "salary", checkpoint_id="x/../../../../etc/secrets")
    result = tick(EVAL_SENSOR, instance, drive, config_dir)
    assert result.run_requests == []
    message = result.skip_reason.skip_message
    assert "evaluation/salary/.eval_complete: invalid EvalComplete signal: field 'checkpoint_id'" in message
    assert "is not a valid id" in message and "Fix: write an id that follows that rule" in message


def test_config_hash_cache_is_bounded_and_keeps_one_entry_per_file(tmp_path: Path):
    cache = ConfigHashCache(max_entries=3)
    loads = []

    def hash_of(path: Path) -> str:
        def load() -> str:
            loads.append(path.name)
            return sha256_bytes(path.read_bytes())

        return cache.config_hash(path, load)

    files = [tmp_path / f"exp{i}.yaml" for i in range(5)]
    for i, path in enumerate(files):
        path.write_text(f"name: exp{i}\n")
    first = hash_of(files[0])
    assert hash_of(files[0]) == first and loads == ["exp0.yaml"]  # unchanged file: cached

    # A rewritten file replaces its own entry instead of adding one.
    files[0].write_text("name: exp0\nseed: 7\n")
    os.utime(files[0], ns=(10**9, 10**9))
    assert hash_of(files[0]) != first and len(cache) == 1 and loads == ["exp0.yaml"] * 2

    for path in files[1:]:
        hash_of(path)
    assert len(cache) == 3  # never more than max_entries
    assert files[0] not in cache and files[1] not in cache  # least recently used went first
    assert all(path in cache for path in files[2:])
    hash_of(files[2])  # used again: now the most recent
    hash_of(files[0])
    assert files[3] not in cache and files[2] in cache and len(cache) == 3
    with pytest.raises(ValueError, match="at least 1"):
        ConfigHashCache(max_entries=0)


def test_a_quiet_tick_listens_and_returns_as_soon_as_a_signal_settles(env):
    """A tick that finds nothing keeps scanning once a second: a signal written while it listens is requested
    by that same tick, a settle time after it was written, not at the daemon's next evaluation."""
    import threading

    drive, config_dir, instance = env
    listening, _ = build_signal_sensors(settle_seconds=0.5, listen_seconds=4.0)
    written: list[float] = []

    def writer() -> None:
        time.sleep(1.2)
        write_training(drive, "salary", "late")
        written.append(time.monotonic())

    thread = threading.Thread(target=writer)
    start = time.monotonic()
    thread.start()
    result = tick(listening, instance, drive, config_dir)
    returned = time.monotonic()
    thread.join()
    [request] = result.run_requests
    assert request.tags["mlgraph/checkpoint_id"] == "late"
    # Seen by a poll after settling: within settle + one poll interval of the write, before the window ends.
    assert returned - written[0] <= 0.5 + 1.0 + 0.5
    assert returned - start < 4.0

    # Nothing new: the tick listens for its whole window (4 polls at most), then says why it requests nothing.
    start = time.monotonic()
    quiet = tick(listening, instance, drive, config_dir, cursor=result.cursor)
    assert not quiet.run_requests and 3.0 <= time.monotonic() - start < 5.0


def test_listen_polls_once_a_second_and_stops_at_news():
    from sensors.signal_sensors import listen

    clock = [0.0]
    ticks: list[float] = []

    class Fake:
        def __init__(self, news: bool):
            self.news = news

        def has_news(self) -> bool:
            return self.news

    def make(news_at: float):
        def build() -> Fake:
            ticks.append(clock[0])
            return Fake(clock[0] >= news_at)

        return build

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    assert not listen(make(99.0), 4.0, sleep=sleep, monotonic=lambda: clock[0]).has_news()
    assert ticks == [0.0, 1.0, 2.0, 3.0, 4.0]  # one scan a second, the window's end included
    ticks.clear()
    clock[0] = 0.0
    assert listen(make(2.0), 4.0, sleep=sleep, monotonic=lambda: clock[0]).has_news()
    assert ticks == [0.0, 1.0, 2.0]
    ticks.clear()
    clock[0] = 0.0
    listen(make(99.0), 0.0, sleep=sleep, monotonic=lambda: clock[0])
    assert ticks == [0.0]  # listen 0: one scan, as before
