"""SlurmRunLauncher against the real local Slurm cluster and a real `dagster-daemon run`.

Needs `scripts/slurm-local up` (CI runs it). Skipped only when Slurm is not installed and CI is
not "true"; in CI a missing cluster fails the module. One daemon, one temporary DAGSTER_HOME
and one temporary shared drive serve the whole module; the time-limit run is submitted at
setup so that its minute-long wait overlaps the other tests.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.tags import COMPUTE_TAG, RUN_WORKER_HOST_TAG, RUN_WORKER_PID_TAG, slurm_tags
from mlgraph.slurm.client import SlurmClient
from tests.support import dagster_instance, wait_for
from tests.support.fixtures import shrink_experiment
from tests.support.slurm import harness
from tests.support.slurm.harness import PIPELINE_LOCATION, SUPPORT_LOCATION

pytestmark = [pytest.mark.timeout(420), pytest.mark.slurm, pytest.mark.daemon]

POLL_SECONDS = 2
# Launcher defaults for this instance: deliberately unlike the tags the tests pass.
DEFAULTS = {"route": "tagged", "cpus": 1, "mem": "768M", "time": "00:07:00"}
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class Cluster:
    """The module's instance, workspace and daemon, with helpers to start and watch runs."""

    def __init__(self, root: Path, instance: dg.DagsterInstance, workspace: WorkspaceProcessContext, daemon):
        self.root = root
        self.shared = root / "shared"
        self.instance = instance
        self.workspace = workspace
        self.daemon = daemon
        self.client = SlurmClient()
        self.timeout_run_id: str | None = None

    def submit(
        self,
        job: str,
        tags: Mapping[str, str],
        run_config: Mapping[str, Any] | None = None,
        location: str = SUPPORT_LOCATION,
    ) -> str:
        """Queue a run; the daemon's run coordinator dequeues it and calls the launcher."""
        context = self.workspace.create_request_context()
        run = harness.create_run(self.instance, context, location, job, tags=tags, run_config=run_config)
        self.instance.submit_run(run.run_id, context)
        return run.run_id

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def wait_status(self, run_id: str, statuses: set, timeout: float) -> dg.DagsterRun:
        return wait_for(
            lambda: (run := self.run(run_id)).status in statuses and run,
            timeout,
            f"run {run_id} to reach {sorted(s.value for s in statuses)} (now {self.run(run_id).status.value})",
        )

    def wait_finished(self, run_id: str, timeout: float) -> dg.DagsterRun:
        return self.wait_status(run_id, FINISHED, timeout)

    def wait_job_id(self, run_id: str, timeout: float = 60) -> str:
        return wait_for(lambda: self.run(run_id).tags.get("slurm/job_id"), timeout, f"a Slurm job for run {run_id}")

    def messages(self, run_id: str) -> str:
        return "\n".join(harness.run_messages(self.instance, run_id))

    def failure_message(self, run_id: str) -> str:
        """The RUN_FAILURE event's message (who failed the run, and why)."""
        events = self.instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        assert events, f"run {run_id} has no RUN_FAILURE event"
        return events[-1].message or ""


def slow(seconds: float) -> dict[str, Any]:
    return {"ops": {"slow_asset": {"config": {"seconds": seconds}}}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    harness.require_slurm()
    root = tmp_path_factory.mktemp("slurm_it")
    shared, home, config = root / "shared", root / "dagster_home", root / "config"
    shared.mkdir()
    shutil.copytree(PROJECT_ROOT / "config", config)
    shrink_experiment(config, "salary", rows=300)
    harness.write_slurm_instance(home, DEFAULTS, poll_seconds=POLL_SECONDS)
    workspace_yaml = harness.write_workspace(root / "workspace.yaml")

    with pytest.MonkeyPatch.context() as mp:
        # The module's own shared drive / config dir / instance (what the shared_drive and
        # config_dir fixtures do per test); the daemon and every Slurm job inherit them.
        mp.setenv("SHARED_DRIVE", str(shared))
        mp.setenv("MLGRAPH_CONFIG_DIR", str(config))
        mp.setenv("DAGSTER_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        daemon = harness.Daemon(workspace_yaml, dict(os.environ), root / "daemon.log")
        with (
            dagster_instance(home) as instance,
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_yaml)])) as workspace,
        ):
            instance.add_dynamic_partitions("experiment", ["salary"])
            c = Cluster(root, instance, workspace, daemon)
            try:
                daemon.start(instance)
                # Slurm checks time limits about every 30 s: start this run now, check it last.
                c.timeout_run_id = c.submit("slow_job", {COMPUTE_TAG: "slurm", "slurm/time": "00:01:00"}, slow(300))
                yield c
            finally:
                daemon.stop()
                for run in instance.get_runs():
                    job_id = run.tags.get("slurm/job_id")
                    if job_id and harness.squeue_state(job_id) in {"PENDING", "RUNNING", "CONFIGURING"}:
                        subprocess.run(["scancel", job_id], check=False, timeout=30)


def test_tagged_run_goes_through_sbatch_and_materializes(cluster: Cluster) -> None:
    tags = {**slurm_tags(cpus=1, mem="1G", time="00:10:00", kind="evaluation"), "dagster/partition": "salary"}
    run_id = cluster.submit("data_job", tags, location=PIPELINE_LOCATION)

    run = cluster.wait_finished(run_id, timeout=150)
    assert run.status == dg.DagsterRunStatus.SUCCESS, cluster.messages(run_id)
    job_id = run.tags["slurm/job_id"]
    log = cluster.shared / "logs" / "evaluation" / f"{job_id}.log"
    assert run.tags["slurm/log"] == str(log)
    assert log.exists() and (cluster.shared / "logs" / "evaluation" / f"{job_id}.err").exists()
    assert f"Submitted Slurm job {job_id}" in cluster.messages(run_id)

    for key in ("raw_dataset", "dataset_fingerprint", "train_test_split"):
        event = cluster.instance.get_latest_materialization_event(dg.AssetKey(key))
        assert event is not None and event.run_id == run_id, key
        assert event.dagster_event.partition == "salary"
    assert (cluster.shared / "datasets" / "salary").is_dir()

    # Slurm itself granted what the tags asked for (the job ends after the footer, just after the run).
    job = wait_for(lambda: (j := cluster.client.job(job_id)) and j.is_terminal and j, 60, f"Slurm job {job_id} to end")
    assert job.state == "COMPLETED"
    assert (job.cpus, job.mem) == (1, "1G")
    assert job.time_limit in {"00:10:00", "10:00"}
    script = Path(run.tags["slurm/script"]).read_text()
    for directive in ("--cpus-per-task=1", "--mem=1G", "--time=00:10:00", f"--output={log.parent}/%j.log"):
        assert f"#SBATCH {directive}" in script

    # The footer attaches Slurm's own figures once the worker has exited.
    figures = wait_for(
        lambda: (tags := cluster.run(run_id).tags).get("slurm/elapsed") and tags, 30, "Slurm figures on the run"
    )
    assert figures["slurm/state"] == "COMPLETED"
    assert figures["slurm/cpus_alloc"] == "1" and figures["slurm/mem_req"] == "1G"
    assert figures["slurm/max_rss"].rstrip("KMG").isdigit()


def test_defaults_apply_without_resource_tags(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {COMPUTE_TAG: "slurm"}, slow(0.5))

    run = cluster.wait_finished(run_id, timeout=90)
    assert run.status == dg.DagsterRunStatus.SUCCESS, cluster.messages(run_id)
    job_id = run.tags["slurm/job_id"]
    assert run.tags["slurm/log"] == str(cluster.shared / "logs" / "training" / f"{job_id}.log")
    script = Path(run.tags["slurm/script"]).read_text()
    assert "#SBATCH --mem=768M" in script and "#SBATCH --time=00:07:00" in script
    assert "--partition" not in script and "--gres" not in script
    job = cluster.client.job(job_id)
    assert job is not None and job.mem == "768M" and job.cpus == 1


def test_untagged_run_starts_locally(cluster: Cluster) -> None:
    run_id = cluster.submit("quick_job", {})

    run = cluster.wait_finished(run_id, timeout=90)
    assert run.status == dg.DagsterRunStatus.SUCCESS, cluster.messages(run_id)
    assert "slurm/job_id" not in run.tags
    assert "Submitted Slurm job" not in cluster.messages(run_id)
    # Started warm (mlgraph.launcher.warm_local): the tagged worker is the process that ran it.
    pid = run.tags[RUN_WORKER_PID_TAG]
    assert f"Started process for run (pid: {pid})." in cluster.messages(run_id)
    assert run.tags[RUN_WORKER_HOST_TAG] == socket.gethostname()


def _local_worker(cluster: Cluster, run_id: str) -> psutil.Process:
    cluster.wait_status(run_id, {dg.DagsterRunStatus.STARTED}, timeout=60)
    return psutil.Process(int(cluster.run(run_id).tags[RUN_WORKER_PID_TAG]))


def test_terminating_a_local_run_interrupts_its_worker(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {}, slow(300))
    worker = _local_worker(cluster, run_id)

    assert cluster.instance.run_launcher.terminate(run_id) is True

    run = cluster.wait_finished(run_id, timeout=40)
    assert run.status == dg.DagsterRunStatus.CANCELED, cluster.messages(run_id)
    worker.wait(30)  # the interrupted worker exits by itself


def test_a_local_worker_killed_fails_its_run_through_run_monitoring(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {}, slow(300))
    worker = _local_worker(cluster, run_id)

    worker.kill()  # as the OOM killer would: no word to Dagster
    run = cluster.wait_finished(run_id, timeout=POLL_SECONDS + 30)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert f"run worker process {worker.pid} exited without reporting the run's end" in cluster.failure_message(run_id)


def test_scancel_mid_run_fails_run_with_slurm_state(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {COMPUTE_TAG: "slurm"}, slow(300))
    job_id = cluster.wait_job_id(run_id)
    cluster.wait_status(run_id, {dg.DagsterRunStatus.STARTED}, timeout=60)

    cancelled_at = time.monotonic()
    subprocess.run(["scancel", job_id], check=True, timeout=30)
    run = cluster.wait_finished(run_id, timeout=POLL_SECONDS + 20)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert time.monotonic() - cancelled_at < POLL_SECONDS + 20
    wait_for(lambda: f"Slurm job {job_id} CANCELLED" in cluster.messages(run_id), 30, "the Slurm state in the run log")
    assert cluster.run(run_id).tags["slurm/state"] == "CANCELLED"
    wait_for(lambda: (job := cluster.client.job(job_id)) and job.state == "CANCELLED", 30, "Slurm to end the job")


def test_terminate_from_dagster_cancels_the_slurm_job(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {COMPUTE_TAG: "slurm"}, slow(300))
    job_id = cluster.wait_job_id(run_id)
    cluster.wait_status(run_id, {dg.DagsterRunStatus.STARTED}, timeout=60)

    assert cluster.instance.run_launcher.terminate(run_id) is True

    wait_for(lambda: (job := cluster.client.job(job_id)) and job.state == "CANCELLED", 30, "Slurm to cancel the job")
    run = cluster.wait_finished(run_id, timeout=40)
    assert run.status == dg.DagsterRunStatus.CANCELED, cluster.messages(run_id)
    assert f"Cancelled Slurm job {job_id} (scancel)" in cluster.messages(run_id)


def test_sbatch_failure_fails_run_without_orphan_job(cluster: Cluster) -> None:
    run_id = cluster.submit("quick_job", {COMPUTE_TAG: "slurm", "slurm/partition": "no_such_partition"})

    run = cluster.wait_finished(run_id, timeout=60)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = cluster.failure_message(run_id)
    assert "sbatch did not submit the job" in failure and "invalid partition" in failure.lower(), failure
    assert "slurm/job_id" not in run.tags
    assert cluster.client.queue(name=f"mlgraph-{run_id[:8]}") == []


def test_invalid_resource_tag_fails_run_before_sbatch(cluster: Cluster) -> None:
    run_id = cluster.submit("quick_job", {COMPUTE_TAG: "slurm", "slurm/mem": "plenty"})

    run = cluster.wait_finished(run_id, timeout=60)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "run tag slurm/mem='plenty' is not valid; use a Slurm memory size" in cluster.failure_message(run_id)
    assert "slurm/job_id" not in run.tags


def test_memory_limit_kill_fails_run_with_slurm_state(cluster: Cluster) -> None:
    # task/none + jobacct_gather OverMemoryKill: the step is SIGKILLed (job FAILED, not
    # OUT_OF_MEMORY, which needs cgroups); the worker cannot record anything, so run monitoring does.
    run_id = cluster.submit(
        "hungry_job",
        {COMPUTE_TAG: "slurm", "slurm/mem": "400M"},
        {"ops": {"hungry_asset": {"config": {"megabytes": 900, "hold_seconds": 30}}}},
    )
    job_id = cluster.wait_job_id(run_id)

    run = cluster.wait_finished(run_id, timeout=90)
    assert run.status == dg.DagsterRunStatus.FAILURE
    failure = cluster.failure_message(run_id)
    assert f"Slurm job {job_id} FAILED" in failure or f"Slurm job {job_id} OUT_OF_MEMORY" in failure, failure
    assert "exceeded memory limit" in failure.lower() or "OUT_OF_MEMORY" in failure
    assert cluster.run(run_id).tags["slurm/mem_req"] == "400M"


def test_daemon_restart_still_resolves_in_flight_run(cluster: Cluster) -> None:
    run_id = cluster.submit("slow_job", {COMPUTE_TAG: "slurm"}, slow(300))
    job_id = cluster.wait_job_id(run_id)
    cluster.wait_status(run_id, {dg.DagsterRunStatus.STARTED}, timeout=60)
    worker_pid = int(
        wait_for(
            lambda: next(
                (
                    m.split("pid: ")[1].rstrip(").")
                    for m in harness.run_messages(cluster.instance, run_id)
                    if m.startswith("Started process for run (pid:")
                ),
                None,
            ),
            30,
            "the run worker's pid",
        )
    )

    cluster.daemon.kill()
    # While no daemon watches, the run worker dies without a word (as on a node crash).
    os.kill(worker_pid, signal.SIGKILL)
    wait_for(lambda: (job := cluster.client.job(job_id)) and job.is_terminal, 30, "the Slurm job to end")
    assert cluster.run(run_id).status == dg.DagsterRunStatus.STARTED

    cluster.daemon.start(cluster.instance)
    run = cluster.wait_finished(run_id, timeout=POLL_SECONDS + 30)
    assert run.status == dg.DagsterRunStatus.FAILURE
    # Failed by run monitoring in the new daemon, from Slurm's record of the job.
    failure = cluster.failure_message(run_id)
    assert "Detected run worker status FAILED" in failure and f"Slurm job {job_id} FAILED" in failure, failure


def test_time_limit_fails_run_with_timeout(cluster: Cluster) -> None:
    """LONG (~1-1.5 min of Slurm time, overlapped with the tests above): slurm/time 00:01:00 on a 5-minute run."""
    run_id = cluster.timeout_run_id
    assert run_id is not None
    run = cluster.wait_finished(run_id, timeout=150)
    assert run.status == dg.DagsterRunStatus.FAILURE
    job_id = run.tags["slurm/job_id"]
    wait_for(lambda: f"Slurm job {job_id} TIMEOUT" in cluster.messages(run_id), 40, "TIMEOUT in the run log")
    assert cluster.run(run_id).tags["slurm/state"] == "TIMEOUT"
    wait_for(lambda: (job := cluster.client.job(job_id)) and job.state == "TIMEOUT", 30, "Slurm to end the job")
