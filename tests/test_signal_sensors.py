"""training_complete_sensor and eval_complete_sensor on a real drive and instance: run requests and cursors."""

import json
import os
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from mlgraph.core.atomic import atomic_write_text
from mlgraph.core.hashing import sha256_bytes
from mlgraph.core.signals import MAX_SIGNAL_BYTES
from mlgraph.external.signal_scan import SignalCursor
from pipeline_assets.analysis.report_assets import AnalysisReportConfig
from resources.experiments import ExperimentCatalog
from resources.storage import SharedDrive
from sensors.signal_sensors import ConfigHashCache, build_signal_sensors

TRAINING_SENSOR, EVAL_SENSOR = build_signal_sensors(settle_seconds=0)


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


def tick(sensor, instance, drive: Path, config_dir: Path, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={"storage": SharedDrive(root=str(drive)), "catalog": ExperimentCatalog(config_dir=str(config_dir))},
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def key(drive: Path, path: Path) -> str:
    return f"{path.relative_to(drive).as_posix()}:{sha256_bytes(path.read_bytes())}"


def changed_ns(path: Path) -> int:
    st = path.stat()
    return max(st.st_mtime_ns, st.st_ctime_ns)


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
    assert cursor == SignalCursor(changed_ns(first), [first_key])

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
    assert SignalCursor.load(result.cursor) == SignalCursor(changed_ns(rewritten), [key(drive, rewritten)])

    # A signal whose mtime is a day older than everything handled (moved in with its temp file's mtime).
    older = write_training(drive, "student_engagement", "ck9")
    day_ago = time.time() - 86_400
    os.utime(older, (day_ago, day_ago))
    assert older.stat().st_mtime_ns < SignalCursor.load(result.cursor).high_water_ns
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
    write_training(drive, "wages", experiment="salary")  # field disagrees with its directory
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
    assert cursor.high_water_ns == max(changed_ns(broken), changed_ns(good)) and key(drive, broken) in cursor.keys
    assert tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor).run_requests == []


def test_unsettled_files_wait_for_a_later_tick(env):
    drive, config_dir, instance = env
    patient, _ = build_signal_sensors(settle_seconds=60)
    path = write_training(drive, "salary")
    result = tick(patient, instance, drive, config_dir)
    assert result.run_requests == []
    assert "1 settling: models/salary/.training_complete" in result.skip_reason.skip_message
    assert SignalCursor.load(result.cursor) == SignalCursor()
    # Once settled (here: a sensor with a shorter settle time), the same cursor takes it.
    assert [r.run_key for r in tick(TRAINING_SENSOR, instance, drive, config_dir, result.cursor).run_requests] == [
        key(drive, path)
    ]


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
    assert SignalCursor.load(result.cursor).keys == [key(drive, path)]


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
    assert set(cursor.keys) <= {key(drive, p) for p in (done, failed, failed_status)}
    assert cursor.high_water_ns == max(changed_ns(p) for p in (done, failed, failed_status))

    again = tick(EVAL_SENSOR, instance, drive, config_dir, result.cursor)
    assert again.run_requests == [] and again.asset_events == []


def test_a_backlog_drains_over_several_ticks_in_change_order(env, config_dir):
    drive, config_dir, instance = env
    names = [f"exp{i}" for i in range(5)]
    salary = (config_dir / "experiments" / "salary.yaml").read_text()
    # Distinct change times, oldest first, set explicitly: an hour ahead, so each mtime (not the ctime
    # the write just set) is the file's change time; the sensor's clock stands after all of them.
    base = time.time_ns() + 3600 * 10**9
    for i, name in enumerate(names):
        (config_dir / "experiments" / f"{name}.yaml").write_text(salary.replace("name: salary", f"name: {name}"))
        path = write_training(drive, name)
        os.utime(path, ns=(base + i * 10**9, base + i * 10**9))
        assert changed_ns(path) == base + i * 10**9
    small, _ = build_signal_sensors(settle_seconds=0, max_per_tick=2, clock=lambda: base + 60 * 10**9)
    seen, cursor = [], None
    for expected in (2, 2, 1, 0):
        result = tick(small, instance, drive, config_dir, cursor)
        assert len(result.run_requests) == expected
        seen += [r.partition_key for r in result.run_requests]
        cursor = result.cursor
    assert seen == names


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
