"""Declarative automation: the policy in-process, the source sensor alone, and the whole loop on a real daemon.

The in-process tests evaluate the production policy (`pipeline_assets.automation`) tick by tick on a
stand-in graph with the real asset names and shape (data → experiment × constraint sweep → experiment
summary, training on the Slurm sensor) but empty bodies, executing each tick's requests as the daemon
would: one run per sensor and partition. The daemon test runs the real graph on a tiny experiment.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.scheduler.instigation import InstigatorType, TickStatus

from mlgraph.core.tags import COMPUTE_TAG
from mlgraph.data.sources import SourceVersion, source_version
from pipeline_assets.automation import automation_sensors, with_automation
from pipeline_assets.data import source_assets
from pipeline_assets.data.source_assets import source_observation
from pipeline_assets.jobs import SLURM_RUN_TAGS
from pipeline_assets.partitions import experiment_from_constraints_mapping as per_experiment
from resources.experiments import ExperimentCatalog
from sensors.sources import experiment_source_sensor
from tests.support import dagster_instance, wait_for
from tests.support.daemon import DagsterDaemon
from tests.support.instance import LOCAL_RUN_LAUNCHER, write_instance_config

# --- a stand-in graph: the production names and edges, trivial bodies ------------------------------
# Static partitions: Dagster's condition tester re-reads dynamic partitions for every condition node.

experiment = dg.StaticPartitionsDefinition(["e"])
sweep = dg.MultiPartitionsDefinition(
    {"experiment": experiment, "constraint": dg.StaticPartitionsDefinition(["c1", "c2"])}
)
CHECK_PASSES = {"train_test_split": True}
# Which train_test_split materialization batch_features was built from (the sweep's check compares them).
LINEAGE: dict[str, int | None] = {"train_test_split": 0, "batch_features": None}


def _asset(name, deps=(), partitions_def=experiment, group="data"):
    @dg.asset(name=name, deps=list(deps), partitions_def=partitions_def, group_name=group, code_version="1")
    def _body() -> None:
        """A stand-in."""

    return _body


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)

    @dg.multi_observable_source_asset(
        specs=[dg.AssetSpec("experiment_source", partitions_def=experiment)],
        partitions_def=experiment,
        group_name="data",
    )
    def experiment_source() -> dg.ObserveResult:
        return dg.ObserveResult()


raw_dataset = _asset("raw_dataset", [experiment_source])


@dg.asset(deps=[raw_dataset], partitions_def=experiment, group_name="data", code_version="1")
def train_test_split() -> None:
    LINEAGE["train_test_split"] += 1


@dg.asset(deps=[train_test_split], partitions_def=experiment, group_name="preprocessing", code_version="1")
def batch_features() -> None:
    LINEAGE["batch_features"] = LINEAGE["train_test_split"]


significance_tests = _asset("significance_tests", [train_test_split], group="analysis")
candidate_models = _asset("candidate_models", [train_test_split], group="training")
champion_model = _asset("champion_model", [candidate_models], group="training")
streaming_features = _asset(
    "streaming_features",
    [dg.AssetDep(train_test_split, partition_mapping=per_experiment)],
    partitions_def=sweep,
    group="preprocessing",
)
constraint_probe_result = _asset(
    "constraint_probe_result", [streaming_features], partitions_def=sweep, group="preprocessing"
)
constraint_sweep_table = _asset(
    "constraint_sweep_table", [dg.AssetDep(constraint_probe_result, partition_mapping=per_experiment)], group="analysis"
)
tradeoff_plots = _asset("tradeoff_plots", [constraint_sweep_table], group="analysis")
run_manifest = _asset(
    "run_manifest", [batch_features, significance_tests, constraint_sweep_table, tradeoff_plots], group="analysis"
)
run_summary = _asset("run_summary", [run_manifest], group="analysis")
checkpoint_evaluation = _asset("checkpoint_evaluation", [train_test_split], group="external")


@dg.asset_check(asset=train_test_split, blocking=True)
def train_test_split_proportions() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=CHECK_PASSES["train_test_split"])


@dg.asset_check(
    asset=streaming_features,
    blocking=True,
    additional_deps=[dg.AssetDep(batch_features, partition_mapping=per_experiment)],
)
def streaming_features_match_batch() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=LINEAGE["batch_features"] == LINEAGE["train_test_split"])


STAND_INS = [
    raw_dataset,
    train_test_split,
    batch_features,
    significance_tests,
    candidate_models,
    champion_model,
    streaming_features,
    constraint_probe_result,
    constraint_sweep_table,
    tradeoff_plots,
    run_manifest,
    run_summary,
    checkpoint_evaluation,
]
DOWNSTREAM_OF_SOURCE = {a.key.to_user_string() for a in STAND_INS} - {"checkpoint_evaluation"}


def stand_in_defs(code_versions: dict[str, str] | None = None) -> dg.Definitions:
    assets = STAND_INS
    if code_versions:
        assets = [
            a.map_asset_specs(lambda s: s.replace_attributes(code_version=code_versions.get(s.key.path[-1], "1")))
            for a in assets
        ]
    return dg.Definitions(
        assets=with_automation([experiment_source, *assets]),
        asset_checks=[train_test_split_proportions, streaming_features_match_batch],
    )


class Daemonless:
    """Evaluates both automation sensors' conditions and executes what they request, like the daemon."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions):
        self.instance, self.defs = instance, defs
        self.sensors = automation_sensors()
        self.cursors: dict[str, object] = {}
        self.runs: list[tuple[str, str, tuple[str, ...]]] = []  # (sensor, partition, assets requested)
        self.materialized: list[tuple[str, str]] = []

    def tick(self) -> int:
        """One tick of each sensor, then the runs they requested (the Slurm sensor's first: runs of two
        sensors race in the daemon); returns the number of runs."""
        requested = []
        for sensor in self.sensors:
            result = dg.evaluate_automation_conditions(
                defs=self.defs,
                instance=self.instance,
                asset_selection=sensor.asset_selection,
                cursor=self.cursors.get(sensor.name),
            )
            self.cursors[sensor.name] = result.cursor
            by_partition: dict[str, list[dg.AssetKey]] = {}
            for res in result.results:
                if isinstance(res.key, dg.AssetKey):
                    for partition in result.get_requested_partitions(res.key):
                        by_partition.setdefault(partition, []).append(res.key)
            requested = [(sensor, p, keys) for p, keys in sorted(by_partition.items())] + requested
        job = self.defs.resolve_implicit_global_asset_job_def()
        for sensor, partition, keys in requested:
            result = job.execute_in_process(
                instance=self.instance,
                partition_key=partition,
                asset_selection=keys,
                raise_on_error=False,
                tags=dict(sensor.run_tags),
            )
            self.materialized += [
                (e.asset_key.to_user_string(), str(e.partition)) for e in result.get_asset_materialization_events()
            ]
            self.runs.append((sensor.name, str(partition), tuple(sorted(k.to_user_string() for k in keys))))
        return len(requested)

    def settle(self, max_ticks: int = 8) -> Counter:
        """Tick until a tick starts nothing (the next would see the same state); count the materializations."""
        started = len(self.materialized)
        for _ in range(max_ticks):
            if self.tick() == 0:
                return Counter(self.materialized[started:])
        raise AssertionError(f"automation did not settle in {max_ticks} ticks: {self.runs[started:]}")


def observe(instance: dg.DagsterInstance, sha: str) -> None:
    instance.report_runless_asset_event(source_observation(SourceVersion("e", "config", "e.csv", sha, None)))


def once_each(assets: set[str]) -> Counter:
    sweep_assets = {"streaming_features", "constraint_probe_result"}
    return Counter({(a, p): 1 for a in assets for p in (["c1|e", "c2|e"] if a in sweep_assets else ["e"])})


@pytest.fixture
def daemonless():
    CHECK_PASSES["train_test_split"] = True
    LINEAGE.update(train_test_split=0, batch_features=None)
    with dagster_instance() as instance:
        yield Daemonless(instance, stand_in_defs())


def test_automation_runs_what_is_missing_then_each_change_once(daemonless):
    instance = daemonless.instance
    observe(instance, "v1")
    # Missing when the sensors first look (e.g. registered before the daemon started): materialized.
    assert daemonless.settle() == once_each(DOWNSTREAM_OF_SOURCE)
    # Heavy work on the Slurm sensor (with its tags), the rest on the local one; the sweep and the
    # experiment summary wait for what they read, so nothing runs twice.
    by_sensor = {(s, p): assets for s, p, assets in daemonless.runs}
    assert by_sensor[("slurm_automation_sensor", "e")] == ("candidate_models", "champion_model")
    assert by_sensor[("slurm_automation_sensor", "c1|e")] == ("constraint_probe_result", "streaming_features")
    assert ("automation_sensor", "e") in by_sensor

    observe(instance, "v1")  # the same version again (e.g. the sensor's cursor was cleared)
    assert daemonless.settle() == Counter()
    observe(instance, "v2")
    assert daemonless.settle() == once_each(DOWNSTREAM_OF_SOURCE)


def test_automation_stops_below_a_failed_blocking_check(daemonless):
    instance = daemonless.instance
    observe(instance, "v1")
    daemonless.settle()
    CHECK_PASSES["train_test_split"] = False
    observe(instance, "v2")
    assert daemonless.settle() == once_each({"raw_dataset", "train_test_split"})
    CHECK_PASSES["train_test_split"] = True
    observe(instance, "v3")
    assert daemonless.settle() == once_each(DOWNSTREAM_OF_SOURCE)


def test_automation_holds_an_asset_until_what_its_blocking_check_reads_is_fresh(daemonless):
    observe(daemonless.instance, "v1")
    daemonless.settle()
    # train_test_split rematerialized by hand: batch_features (read by the sweep's blocking check) is
    # outdated, so the sweep waits for it instead of failing its check against the old batch features.
    daemonless.defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=daemonless.instance, partition_key="e", asset_selection=[train_test_split.key]
    )
    assert daemonless.settle() == once_each(DOWNSTREAM_OF_SOURCE - {"raw_dataset", "train_test_split"})


def test_automation_reruns_a_bumped_code_version_and_its_downstream(daemonless):
    instance = daemonless.instance
    observe(instance, "v1")
    daemonless.settle()
    daemonless.defs = stand_in_defs({"significance_tests": "2"})
    assert daemonless.settle() == once_each({"significance_tests", "run_manifest", "run_summary"})


def test_signal_driven_assets_have_no_automation():
    graph = stand_in_defs().resolve_asset_graph()
    assert graph.get(dg.AssetKey("checkpoint_evaluation")).automation_condition is None
    assert graph.get(dg.AssetKey("raw_dataset")).automation_condition.get_label() == "keep_fresh"


# --- experiment_source_sensor alone --------------------------------------------------------------


def tiny_experiment(config_dir: Path, rows: int = 600, constraints: str | None = None) -> Path:
    """A small CSV classification experiment `tiny` (two cheap families, 2 folds); returns its CSV."""
    from mlgraph.data.generators import write_dataset

    (config_dir / "experiments").mkdir(parents=True, exist_ok=True)
    data = write_dataset("student_engagement", config_dir / "experiments" / "tiny.csv", rows=rows, seed=3)
    base = yaml.safe_load(
        (Path(__file__).parents[1] / "config" / "experiments" / "student_engagement.yaml").read_text()
    )
    config = {
        "name": "tiny",
        "task": "classification",
        "dataset": {"path": "tiny.csv"},
        "target": base["target"],
        "columns": base.get("columns", {}),
        "split": {"test_size": 0.25, "seed": 1},
        "models": [{"family": "logistic_regression"}, {"family": "decision_tree", "params": {"max_depth": 3}}],
        "cv_folds": 2,
        "preprocessing": {"significance_runs": 2},
        # Automation is under test, not the host's speed: the daemon runs the graph's runs side by side on
        # 2 cores, and the served champion must only sustain a few requests a second for its release.
        # A short capacity sweep (5 → 20 req/s): this test is about automation, not the service's saturation.
        "deployment": {"slo": {"min_rps": 5.0, "p99_ms": 60000.0, "sweep_max_rps": 20.0}},
        "seed": 1,
    }
    (config_dir / "experiments" / "tiny.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if constraints is not None:
        (config_dir / "constraints.yaml").write_text(constraints)
    return data


def source_tick(instance, config_dir, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"catalog": ExperimentCatalog(config_dir=str(config_dir))}
    )
    return experiment_source_sensor(context)


def change_one_byte(path: Path) -> None:
    """One digit of the last row's days_on_platform (an integer feature): same size and schema, new content."""
    data = bytearray(path.read_bytes())
    last_row = data.rstrip(b"\n").rindex(b"\n") + 1
    index = data.index(b",", data.index(b",", last_row) + 1) - 1  # last character of the second field
    data[index] = ord("8") if data[index] == ord("9") else data[index] + 1
    path.write_bytes(bytes(data))


def test_source_sensor_reports_only_new_versions_for_automation(tmp_path):
    csv = tiny_experiment(tmp_path)
    before = csv.read_bytes()
    change_one_byte(csv)
    after = csv.read_bytes()
    assert len(before) == len(after) and sum(a != b for a, b in zip(before, after, strict=True)) == 1
    csv.write_bytes(before)
    with dagster_instance() as instance:
        instance.add_dynamic_partitions("experiment", ["tiny"])
        first = source_tick(instance, tmp_path, None)
        [observation] = first.asset_events
        assert observation.partition == "tiny" and observation.asset_key == dg.AssetKey("experiment_source")
        version = observation.tags["dagster/data_version"]
        assert version == source_version(ExperimentCatalog(config_dir=str(tmp_path)).load("tiny")).data_version

        # "Observe" in the UI runs the asset's own function: the same version.
        observed = dg.Definitions(
            assets=[source_assets.experiment_source], resources={"catalog": ExperimentCatalog(config_dir=str(tmp_path))}
        )
        observed.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, partition_key="tiny", asset_selection=[source_assets.EXPERIMENT_SOURCE]
        )
        [record] = instance.fetch_observations(
            dg.AssetRecordsFilter(asset_key=source_assets.EXPERIMENT_SOURCE, asset_partitions=["tiny"]), limit=1
        ).records
        assert record.asset_observation.tags["dagster/data_version"] == version

        assert source_tick(instance, tmp_path, first.cursor).asset_events == []
        os.utime(csv, ns=(time.time_ns(), time.time_ns()))  # touched: hashed again, same content, same version
        assert source_tick(instance, tmp_path, first.cursor).asset_events == []
        description = (tmp_path / "experiments" / "tiny.yaml").read_text() + "description: prose only\n"
        (tmp_path / "experiments" / "tiny.yaml").write_text(description)  # not part of the config hash
        assert source_tick(instance, tmp_path, first.cursor).asset_events == []

        change_one_byte(csv)
        [changed] = source_tick(instance, tmp_path, first.cursor).asset_events
        assert changed.tags["dagster/data_version"] != version
        assert changed.metadata["source_sha256"].value != observation.metadata["source_sha256"].value

        csv.unlink()  # a broken experiment is skipped (and logged), keeping what was last seen
        gone = source_tick(instance, tmp_path, first.cursor)
        assert gone.asset_events == [] and "1 experiment source(s) unchanged" in gone.skip_reason.skip_message


# --- the real daemon ------------------------------------------------------------------------------

ONE_CONSTRAINT = "chunk_sizes: [100]\nmemory_limits_mb: [256]\ncompute_limits: [1.0]\n"
SWEEP_PARTITION = "c100-m256-p100|tiny"


def automated_assets() -> tuple[dict[str, str], set[str]]:
    """What automation keeps fresh for `tiny` (asset → partition), and what of it runs with the Slurm tags."""
    from pipeline_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    automated = {
        key.to_user_string(): SWEEP_PARTITION
        if isinstance(graph.get(key).partitions_def, dg.MultiPartitionsDefinition)
        else "tiny"
        for key in graph.materializable_asset_keys
        if graph.get(key).automation_condition is not None
    }
    slurm = defs.resolve_sensor_def("slurm_automation_sensor").asset_selection.resolve(graph)
    return automated, {k.to_user_string() for k in slurm}


# Each stage waits for a sensor tick (≤15 s) and a run process (a few seconds; sklearn and MLflow imports).
STAGE_TIMEOUT = 120


def materializations(instance: dg.DagsterInstance, automated: dict[str, str]) -> Counter:
    counts = Counter()
    for name, partition in automated.items():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), asset_partitions=[partition]), limit=10
        ).records
        counts[name] = len(records)
    return counts


def last_tick_after(instance: dg.DagsterInstance, sensor: str, since: float) -> float | None:
    """Start time of the sensor's latest finished tick if it started after `since`."""
    states = [
        s for s in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == sensor
    ]
    started = [
        t.timestamp
        for s in states
        for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=5)
        if t.timestamp > since and t.status != TickStatus.STARTED
    ]
    return max(started, default=None)


# The user's estimator in the daemon test's plugins folder: its source is part of the config hash.
PLUGIN_SOURCE = """
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class Centroid(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        X, y = np.asarray(X, dtype=float), np.asarray(y)
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict_proba(self, X):
        distance = ((np.asarray(X, dtype=float)[:, None, :] - self.means_[None]) ** 2).sum(axis=2)
        weights = np.exp(-(distance - distance.min(axis=1, keepdims=True)))
        return weights / weights.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
"""


def with_plugin_spec(config_dir: Path, plugins: Path) -> Path:
    """`tiny` also trains the user's estimator `centroid` (plugins/tiny_models.py); returns the plugin file."""
    plugins.mkdir(parents=True, exist_ok=True)
    plugin = plugins / "tiny_models.py"
    plugin.write_text(PLUGIN_SOURCE)
    yaml_file = config_dir / "experiments" / "tiny.yaml"
    config = yaml.safe_load(yaml_file.read_text())
    config["models"].append({"name": "centroid", "family": "estimator", "estimator": "tiny_models:Centroid"})
    yaml_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return plugin


def candidates_manifest(drive: Path) -> dict:
    return json.loads((drive / "models" / "tiny" / "candidates.json").read_text())


@pytest.mark.daemon
@pytest.mark.timeout(900)
def test_automation_on_the_daemon_new_yaml_changed_byte_and_quiet(tmp_path: Path, shared_drive: Path):
    config_dir = tmp_path / "config"
    csv = tiny_experiment(config_dir, constraints=ONE_CONSTRAINT)
    plugin = with_plugin_spec(config_dir, tmp_path / "plugins")
    home = tmp_path / "dagster_home"
    write_instance_config(home, LOCAL_RUN_LAUNCHER, automation=True)
    env = {
        "SHARED_DRIVE": str(shared_drive),
        "MLGRAPH_CONFIG_DIR": str(config_dir),
        "MLGRAPH_PLUGINS_DIR": str(tmp_path / "plugins"),
        "PYTHONWARNINGS": "ignore",
    }
    daemon = DagsterDaemon(home, env, tmp_path)
    automated, on_slurm = automated_assets()
    assert {"champion_model", "constraint_probe_result", "run_summary"} <= set(automated)
    with dagster_instance(home) as instance:

        def runs() -> list[dg.DagsterRun]:
            return list(instance.get_runs())

        def diagnostics() -> str:
            return (
                "materialized: "
                + str(dict(materializations(instance, automated)))
                + "\nruns: "
                + ", ".join(
                    f"{r.tags.get('dagster/partition')}:{sorted(r.asset_selection or [])}={r.status.value}"
                    for r in runs()
                )
                + "\n"
                + daemon.logs()
            )

        def settled(expected: int) -> bool:
            failed = [r for r in runs() if r.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
            assert not failed, diagnostics()
            return set(materializations(instance, automated).values()) == {expected} and all(
                r.is_finished for r in runs()
            )

        try:
            daemon.start()
            # (a) The YAML is new to this instance: experiment_config_sensor adds the partition, the source
            # sensor observes it, automation materializes the graph (through champion_model and beyond).
            wait_for(
                lambda: "tiny" in instance.get_dynamic_partitions("experiment"),
                120,
                "experiment_config_sensor to add the tiny partition",
                on_timeout=diagnostics,
            )
            wait_for(lambda: settled(1), STAGE_TIMEOUT * 3, "the graph materialized once", on_timeout=diagnostics)
            first_runs = runs()
            slurm = [r for r in first_runs if COMPUTE_TAG in r.tags]
            assert {a.to_user_string() for r in slurm for a in r.asset_selection} == on_slurm
            assert all(r.tags.get(k) == v for r in slurm for k, v in SLURM_RUN_TAGS.items())
            local = [r for r in first_runs if r not in slurm]
            assert {a.to_user_string() for r in local for a in r.asset_selection} == set(automated) - on_slurm

            # (b) One changed byte in the CSV: a new source version, and everything downstream once.
            change_one_byte(csv)
            wait_for(lambda: settled(2), STAGE_TIMEOUT * 3, "the graph rematerialized once", on_timeout=diagnostics)
            fingerprints = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("dataset_fingerprint"), asset_partitions=["tiny"]), limit=2
            ).records
            assert len({r.asset_materialization.tags["dagster/data_version"] for r in fingerprints}) == 2

            assert candidates_manifest(shared_drive)["families"]["centroid"]["family"] == "estimator"

            # (c) Unchanged (the files touched, the YAML's description edited): more ticks start nothing.
            os.utime(csv)
            os.utime(plugin)
            yaml_file = config_dir / "experiments" / "tiny.yaml"
            yaml_file.write_text(yaml_file.read_text() + "description: prose is not part of the config hash\n")
            edited, before = time.time(), len(runs())
            wait_for(
                lambda: last_tick_after(instance, "experiment_source_sensor", edited),
                60,
                "an experiment_source_sensor tick after the edits",
                on_timeout=diagnostics,
            )
            looked = time.time()
            for sensor in ("automation_sensor", "slurm_automation_sensor"):
                wait_for(
                    lambda s=sensor: last_tick_after(instance, s, looked),
                    60,
                    f"a {sensor} tick after the source was looked at",
                    on_timeout=diagnostics,
                )
            assert len(runs()) == before, diagnostics()
            assert set(materializations(instance, automated).values()) == {2}, diagnostics()

            # (d) A comment in the user's plugin: its digest, hence the config hash, changes; the graph
            # (training included) is materialized once more.
            trained_for = candidates_manifest(shared_drive)["config_hash"]
            plugin.write_text(plugin.read_text() + "\n# a comment changes the code digest\n")
            wait_for(lambda: settled(3), STAGE_TIMEOUT * 3, "the graph after the plugin edit", on_timeout=diagnostics)
            assert candidates_manifest(shared_drive)["config_hash"] != trained_for
        finally:
            daemon.stop_all()
        assert daemon.descendants() == []
