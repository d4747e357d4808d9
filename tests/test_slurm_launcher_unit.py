"""SlurmRunLauncher with an injected fake Slurm client: every state mapping, routing, scripts, failures.

The Dagster side is real (a persistent temporary instance); only Slurm is scripted, so every
state the controller can report is reachable without a cluster.
"""

import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.code_pointer import FileCodePointer
from dagster._core.events import DagsterEventType
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import create_run_for_test
from dagster._serdes import deserialize_value

from mlgraph.core.drive import PROJECT_ROOT
from mlgraph.core.tags import COMPUTE_TAG
from mlgraph.core.tags import SLURM_JOB_ID_TAG as JOB_ID_TAG
from mlgraph.core.tags import SLURM_RESOURCE_TAGS as RESOURCE_TAGS
from mlgraph.launcher.batch_script import SlurmConfigError, validate_resources
from mlgraph.launcher.job_end import record_job_end
from mlgraph.launcher.slurm_launcher import SlurmRunLauncher
from mlgraph.slurm.client import SlurmError
from mlgraph.slurm.jobs import SlurmJob
from tests.support import dagster_instance
from tests.support.slurm.harness import SUPPORT_DEFS

SLURM = {"mlgraph/compute": "slurm"}


class FakeClient:
    """Scripted stand-in for mlgraph.slurm.client.SlurmClient."""

    def __init__(self, available: bool = True):
        self.jobs: dict[str, SlurmJob] = {}
        self.submitted: list[dict] = []
        self.cancelled: list[str] = []
        self.submit_error: SlurmError | None = None
        self.job_error: SlurmError | None = None
        self.is_available = available
        self.max_rss: str | None = None
        self._next_id = 100

    def available(self) -> bool:
        return self.is_available

    def submit(self, script, *, job_name=None, export=(), env=None, extra_args=()):
        if self.submit_error:
            raise self.submit_error
        job_id = str(self._next_id)
        self._next_id += 1
        self.submitted.append(
            {"script": Path(script), "job_name": job_name, "export": list(export), "extra_args": list(extra_args)}
        )
        self.jobs[job_id] = SlurmJob(job_id=job_id, state="PENDING", source="fake")
        return job_id

    def job(self, job_id):
        if self.job_error:
            raise self.job_error
        return self.jobs.get(job_id)

    def show_job(self, job_id):
        return self.jobs.get(job_id)

    def step_max_rss(self, job_id, step="batch"):
        return self.max_rss

    def cancel(self, job_id, **_):
        self.cancelled.append(job_id)


class FakeLocalLauncher(RunLauncher):
    """Records what the Slurm launcher delegates to its local (DefaultRunLauncher) half."""

    def __init__(self):
        super().__init__()
        self.launched: list[str] = []
        self.terminated: list[str] = []
        self.checked: list[str] = []

    def launch_run(self, context: LaunchRunContext) -> None:
        self.launched.append(context.dagster_run.run_id)

    def terminate(self, run_id: str) -> bool:
        self.terminated.append(run_id)
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        self.checked.append(run.run_id)
        return CheckRunHealthResult(WorkerStatus.FAILED, "local worker gone")


@pytest.fixture
def instance(shared_drive: Path, tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A persistent instance (SQLite under a temporary DAGSTER_HOME): the launcher refuses an ephemeral one."""
    with dagster_instance(tmp_path / "dagster_home") as inst:
        yield inst


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def local() -> FakeLocalLauncher:
    return FakeLocalLauncher()


def make_launcher(instance, client, local, **config) -> SlurmRunLauncher:
    launcher = SlurmRunLauncher(client=client, local_launcher=local, **{"route": "tagged", **config})
    launcher.register_instance(instance)
    return launcher


def make_run(instance, tags=None, status=None) -> dg.DagsterRun:
    origin = JobPythonOrigin(
        job_name="slow_job",
        repository_origin=RepositoryPythonOrigin(
            executable_path=sys.executable,
            code_pointer=FileCodePointer(
                python_file=str(SUPPORT_DEFS),
                fn_name="defs",
                working_directory=str(PROJECT_ROOT),
            ),
            container_image=None,
            entry_point=["dagster"],
            container_context={},
        ),
    )
    return create_run_for_test(instance, job_name="slow_job", tags=tags or {}, status=status, job_code_origin=origin)


def launch(launcher, instance, tags=None) -> dg.DagsterRun:
    run = make_run(instance, tags)
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return instance.get_run_by_id(run.run_id)


def messages(instance, run_id) -> str:
    return "\n".join(record.message or "" for record in instance.all_logs(run_id))


def failure_message(instance, run_id) -> str:
    events = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
    assert events, "no RUN_FAILURE event"
    return events[-1].message or ""


def started_slurm_run(instance, launcher, client, state: str, **job_fields) -> dg.DagsterRun:
    run = launch(launcher, instance, SLURM)
    job_id = run.tags[JOB_ID_TAG]
    client.jobs[job_id] = SlurmJob(job_id=job_id, state=state, source="fake", **job_fields)
    return instance.get_run_by_id(run.run_id)


# --- state mapping -------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED"])
def test_in_progress_states_are_running(instance, client, local, state):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, state)

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.RUNNING
    assert f"Slurm job {run.tags[JOB_ID_TAG]} {state}" in result.msg


@pytest.mark.parametrize(
    "state",
    ["FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"],
)
def test_failed_states_fail_with_the_state_and_record_figures(instance, client, local, state):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(
        instance, launcher, client, state, exit_code="0:9", elapsed="00:01:02", cpus=2, mem="1G", reason="None"
    )

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.FAILED
    assert f"Slurm job {run.tags[JOB_ID_TAG]} {state}" in result.msg and "exit 0:9" in result.msg
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags["slurm/state"] == state
    assert (tags["slurm/elapsed"], tags["slurm/cpus_alloc"], tags["slurm/mem_req"]) == ("00:01:02", "2", "1G")
    assert f"Slurm job {run.tags[JOB_ID_TAG]} {state}: elapsed 00:01:02" in messages(instance, run.run_id)


def test_failed_state_message_quotes_slurmstepd_from_the_job_stderr(instance, client, local, tmp_path):
    launcher = make_launcher(instance, client, local)
    err = tmp_path / "7.err"
    err.write_text(
        "Traceback ...\nslurmstepd-vm: error: StepId=7.batch exceeded memory limit (900 > 400), being killed\n"
        "slurmstepd-vm: error: Exceeded job memory limit\n"
    )
    run = started_slurm_run(instance, launcher, client, "FAILED", stderr=str(err))

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.FAILED
    assert "Exceeded job memory limit" in result.msg and "exceeded memory limit (900 > 400)" in result.msg


def test_completed_job_of_a_finished_run_is_success(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, "COMPLETED", exit_code="0:0")
    instance.report_run_failed(run, "finished by its worker")  # any end event: the run is finished

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.SUCCESS and "COMPLETED" in result.msg


def test_completed_job_whose_run_never_ended_is_a_failure(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, "COMPLETED", exit_code="0:0")

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.FAILED
    assert "COMPLETED" in result.msg and "without reporting the run's end" in result.msg


def test_unknown_state_is_unknown(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, "SOMETHING_NEW")

    assert launcher.check_run_worker_health(run).status == WorkerStatus.UNKNOWN


def test_job_unknown_everywhere_is_not_found(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, SLURM)
    client.jobs.clear()

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.NOT_FOUND and run.tags[JOB_ID_TAG] in result.msg


def test_unreachable_controller_is_tolerated_then_bounded(instance, client, local):
    launcher = make_launcher(instance, client, local, controller_grace_seconds=3600)
    run = launch(launcher, instance, SLURM)
    client.job_error = SlurmError(["scontrol"], 1, "Unable to contact slurm controller (connect failure)", True)

    first = launcher.check_run_worker_health(run)
    assert first.status == WorkerStatus.RUNNING and first.transient
    assert "unreachable" in first.msg

    launcher.controller_grace_seconds = 0
    second = launcher.check_run_worker_health(run)
    assert second.status == WorkerStatus.UNKNOWN and "giving up" in second.msg


def test_non_transient_client_error_is_unknown_with_the_error(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, SLURM)
    client.job_error = SlurmError(["scontrol", "show", "job"], 1, "Access/permission denied")

    result = launcher.check_run_worker_health(run)

    assert result.status == WorkerStatus.UNKNOWN and "Access/permission denied" in result.msg


def test_local_runs_are_checked_by_the_local_launcher(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, {})

    assert launcher.check_run_worker_health(run).msg == "local worker gone"
    assert local.launched == local.checked == [run.run_id] and client.submitted == []


# --- launch_run ----------------------------------------------------------------------------


def test_launch_submits_a_script_matching_the_tags_and_tags_the_run(instance, client, local, shared_drive):
    launcher = make_launcher(instance, client, local)
    tags = {
        **SLURM,
        "slurm/cpus": "4",
        "slurm/mem": "8g",
        "slurm/time": "02:00:00",
        "slurm/partition": "gpu",
        "slurm/gres": "gpu:1",
        "slurm/kind": "analysis",
    }

    run = launch(launcher, instance, tags)

    job_id = run.tags[JOB_ID_TAG]
    assert job_id == "100" and local.launched == []
    assert run.tags["slurm/log"] == str(shared_drive / "logs" / "analysis" / "100.log")
    script = client.submitted[0]["script"]
    assert run.tags["slurm/script"] == str(script) and script.parent == shared_drive / "logs" / "analysis"
    text = script.read_text()
    for directive in (
        f"--job-name=mlgraph-{run.run_id[:8]}",
        f"--output={shared_drive}/logs/analysis/%j.log",
        f"--error={shared_drive}/logs/analysis/%j.err",
        "--time=02:00:00",
        "--mem=8G",
        "--cpus-per-task=4",
        "--partition=gpu",
        "--gres=gpu:1",
        "--no-requeue",
    ):
        assert f"#SBATCH {directive}\n" in text
    assert client.submitted[0]["job_name"] == f"mlgraph-{run.run_id[:8]}"
    assert "Submitted Slurm job 100 (4 CPUs, 8G, time 02:00:00, partition gpu, gres gpu:1)" in messages(
        instance, run.run_id
    )
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


def test_defaults_apply_without_resource_tags(instance, client, local, shared_drive):
    launcher = make_launcher(instance, client, local, cpus=3, mem="1500M", time="45")

    run = launch(launcher, instance, SLURM)

    text = client.submitted[0]["script"].read_text()
    assert "#SBATCH --cpus-per-task=3\n" in text and "#SBATCH --mem=1500M\n" in text
    assert "#SBATCH --time=45\n" in text and "--partition" not in text and "--gres" not in text
    assert run.tags["slurm/log"].startswith(str(shared_drive / "logs" / "training"))


def test_script_runs_execute_run_for_the_run_with_a_safely_quoted_argument(instance, client, local):
    launcher = make_launcher(instance, client, local, python_executable="/opt/venv/bin/python")

    run = launch(launcher, instance, SLURM)

    text = client.submitted[0]["script"].read_text()
    line = next(line for line in text.splitlines() if " api execute_run " in line)
    argv = shlex.split(line.rstrip(" &"))
    assert argv[:5] == ["/opt/venv/bin/python", "-m", "dagster", "api", "execute_run"]
    args = deserialize_value(argv[5])
    assert args.run_id == run.run_id and args.set_exit_code_on_failure is True
    assert json.loads(argv[5])["instance_ref"]["local_artifact_storage_data"]["config_yaml"].startswith("base_dir")
    assert f"cd {PROJECT_ROOT} || exit 1" in text


def test_script_exports_whitelisted_paths_and_never_secret_values(instance, client, local, monkeypatch, config_dir):
    monkeypatch.setenv("TRAINING_API_TOKEN", "s3cr3t-token-value")
    monkeypatch.setenv("UNLISTED_SECRET", "other-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:pa55word@mlflow.example.org")
    launcher = make_launcher(instance, client, local, env_vars=["TRAINING_API_TOKEN"])

    launch(launcher, instance, SLURM)

    text = client.submitted[0]["script"].read_text()
    for secret in ("s3cr3t-token-value", "other-secret-value", "pa55word", "UNLISTED_SECRET"):
        assert secret not in text
    export = client.submitted[0]["export"]
    assert "TRAINING_API_TOKEN" in export and "MLFLOW_TRACKING_URI" in export
    assert "UNLISTED_SECRET" not in export
    assert f"export MLGRAPH_CONFIG_DIR={config_dir}\n" in text
    assert f"export DAGSTER_HOME={instance.root_directory}\n" in text


def test_plain_tracking_uri_is_written_into_the_script(instance, client, local, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    launcher = make_launcher(instance, client, local)

    launch(launcher, instance, SLURM)

    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\n" in client.submitted[0]["script"].read_text()
    assert "MLFLOW_TRACKING_URI" not in client.submitted[0]["export"]


def test_sbatch_failure_fails_the_run_with_sbatch_message(instance, client, local):
    launcher = make_launcher(instance, client, local)
    client.submit_error = SlurmError(
        ["sbatch", "--parsable", "x.sbatch"], 1, "sbatch: error: invalid partition specified: nope"
    )

    run = launch(launcher, instance, {**SLURM, "slurm/partition": "nope"})

    assert run.status == dg.DagsterRunStatus.FAILURE and JOB_ID_TAG not in run.tags
    assert "sbatch did not submit the job" in failure_message(instance, run.run_id)
    assert "invalid partition specified: nope" in failure_message(instance, run.run_id)


@pytest.mark.parametrize(
    ("tag", "value", "fix"),
    [
        ("slurm/cpus", "two", "whole number of CPUs"),
        ("slurm/cpus", "0", "between 1 and 4096"),
        ("slurm/mem", "lots", "memory size"),
        ("slurm/mem", "0", "memory size"),
        ("slurm/time", "1h", "time limit"),
        ("slurm/partition", "a b", "partition name"),
        ("slurm/gres", "gpu;rm -rf", "GRES"),
        ("slurm/kind", "serving", "training, evaluation, analysis"),
    ],
)
def test_invalid_tag_fails_the_run_before_sbatch(instance, client, local, tag, value, fix):
    launcher = make_launcher(instance, client, local)

    run = launch(launcher, instance, {**SLURM, tag: value})

    assert run.status == dg.DagsterRunStatus.FAILURE and client.submitted == []
    message = failure_message(instance, run.run_id)
    assert f"run tag {tag}={value!r} is not valid" in message and fix in message


@pytest.mark.parametrize("value", ["30", "30:00", "01:30:00", "2-00", "1-12:00:00", "UNLIMITED"])
def test_slurm_time_formats_are_accepted(value):
    assert validate_resources({"cpus": 1, "mem": "1G", "time": value}, "t ").time == value


def test_ephemeral_instance_cannot_send_runs_to_slurm(client, local):
    with dagster_instance() as ephemeral:
        launcher = make_launcher(ephemeral, client, local)
        run = launch(launcher, ephemeral, SLURM)
        assert run.status == dg.DagsterRunStatus.FAILURE and client.submitted == []
        assert "needs a persistent instance" in failure_message(ephemeral, run.run_id)


# --- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "available", "tags", "to_slurm"),
    [
        ("tagged", True, SLURM, True),
        ("tagged", True, {}, False),
        ("tagged", True, {"mlgraph/compute": "local"}, False),
        ("all", True, {}, True),
        ("none", True, SLURM, False),
        ("auto", True, SLURM, True),
        ("auto", True, {}, False),
        ("auto", False, SLURM, False),
    ],
)
def test_routing(instance, local, route, available, tags, to_slurm):
    client = FakeClient(available=available)
    launcher = make_launcher(instance, client, local, route=route)

    run = launch(launcher, instance, tags)

    assert (JOB_ID_TAG in run.tags) is to_slurm
    assert (local.launched == [run.run_id]) is (not to_slurm)


def test_auto_route_without_slurm_runs_locally_and_says_so(instance, local):
    launcher = make_launcher(instance, FakeClient(available=False), local, route="auto")

    run = launch(launcher, instance, SLURM)

    assert local.launched == [run.run_id]
    assert "Slurm was not found (no sbatch on PATH); running it locally" in messages(instance, run.run_id)


# --- terminate -----------------------------------------------------------------------------


def test_terminate_pending_job_cancels_it_and_the_run(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, SLURM)

    assert launcher.terminate(run.run_id) is True

    assert client.cancelled == [run.tags[JOB_ID_TAG]]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED


def test_terminate_running_job_leaves_the_run_canceling_for_its_worker(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, "RUNNING")

    assert launcher.terminate(run.run_id) is True

    assert client.cancelled == [run.tags[JOB_ID_TAG]]
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELING
    assert f"Cancelled Slurm job {run.tags[JOB_ID_TAG]} (scancel); it was RUNNING" in messages(instance, run.run_id)


def test_terminate_finished_run_does_nothing(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, SLURM)
    instance.report_run_failed(run, "done")

    assert launcher.terminate(run.run_id) is False
    assert client.cancelled == []


def test_terminate_local_run_delegates(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = launch(launcher, instance, {})

    assert launcher.terminate(run.run_id) is True
    assert local.terminated == [run.run_id] and client.cancelled == []


# --- the batch script's footer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("exit_code", "terminated", "reason", "state"),
    [
        (0, False, "None", "COMPLETED"),
        (1, False, "None", "FAILED"),
        (143, True, "TimeLimit", "TIMEOUT"),
        (143, True, "None", "CANCELLED"),
    ],
)
def test_footer_records_slurm_figures(instance, client, local, exit_code, terminated, reason, state):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(
        instance,
        launcher,
        client,
        "COMPLETING" if terminated else "RUNNING",
        reason=reason,
        elapsed="00:00:42",
        cpus=2,
        mem="1G",
    )
    client.max_rss = "183M"

    figures = record_job_end(instance, run.run_id, run.tags[JOB_ID_TAG], exit_code, terminated, client=client)

    tags = instance.get_run_by_id(run.run_id).tags
    assert tags["slurm/state"] == figures["slurm/state"] == state
    assert (tags["slurm/elapsed"], tags["slurm/cpus_alloc"], tags["slurm/mem_req"]) == ("00:00:42", "2", "1G")
    assert tags["slurm/exit_code"] == str(exit_code)
    assert tags.get("slurm/max_rss") == (None if terminated else "183M")
    assert f"Slurm job {run.tags[JOB_ID_TAG]} {state}: elapsed 00:00:42" in messages(instance, run.run_id)


def test_figures_recorded_by_the_footer_are_not_repeated(instance, client, local):
    launcher = make_launcher(instance, client, local)
    run = started_slurm_run(instance, launcher, client, "RUNNING", elapsed="00:00:05", cpus=1, mem="1G")
    record_job_end(instance, run.run_id, run.tags[JOB_ID_TAG], 137, False, client=client)
    client.jobs[run.tags[JOB_ID_TAG]] = SlurmJob(run.tags[JOB_ID_TAG], "FAILED", "fake", exit_code="137:0")

    launcher.check_run_worker_health(instance.get_run_by_id(run.run_id))

    assert messages(instance, run.run_id).count(f"Slurm job {run.tags[JOB_ID_TAG]} FAILED:") == 1


# --- configuration -------------------------------------------------------------------------


def test_instance_builds_the_launcher_from_dagster_yaml_config(shared_drive, tmp_path):
    overrides = {
        "run_launcher": {
            "module": "mlgraph.launcher.slurm_launcher",
            "class": "SlurmRunLauncher",
            "config": {"route": "all", "cpus": 2, "mem": "4G", "partition": "debug", "env_vars": ["HF_TOKEN"]},
        }
    }
    with dagster_instance(tmp_path / "dagster_home", config=overrides) as inst:
        launcher = inst.run_launcher
        assert isinstance(launcher, SlurmRunLauncher)
        assert launcher.route == "all" and launcher.env_vars == ["HF_TOKEN"]
        assert (launcher.defaults.cpus, launcher.defaults.mem, launcher.defaults.partition) == (2, "4G", "debug")
        assert launcher.supports_check_run_worker_health


def test_repository_dagster_yaml_configures_the_slurm_launcher(tmp_path, shared_drive):
    config = yaml.safe_load((PROJECT_ROOT / "dagster.yaml").read_text())
    assert config["run_launcher"]["class"] == "SlurmRunLauncher"
    with dagster_instance(tmp_path / "dagster_home", config={"run_launcher": config["run_launcher"]}) as inst:
        assert isinstance(inst.run_launcher, SlurmRunLauncher) and inst.run_launcher.route == "auto"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"route": "sometimes"}, "route='sometimes'"),
        ({"mem": "4 GB"}, "config.mem='4 GB' is not valid"),
        ({"env_vars": ["TOKEN=abc"]}, "list names only"),
        ({"extra_sbatch_args": ["-A ml"]}, "write long options"),
    ],
)
def test_bad_launcher_settings_are_rejected_with_the_setting_named(config, message):
    with pytest.raises(SlurmConfigError, match=message.replace("(", r"\(")):
        SlurmRunLauncher(client=FakeClient(), **config)


def test_job_tag_helper_speaks_the_launchers_tags(instance, client, local):
    from mlgraph.core.tags import slurm_tags

    tags = slurm_tags(cpus=3, mem="2G", time="00:30:00", kind="evaluation")
    assert set(tags) - {COMPUTE_TAG} <= set(RESOURCE_TAGS)
    launcher = make_launcher(instance, client, local)

    resources = launcher.resources_for(make_run(instance, tags))

    assert (resources.cpus, resources.mem, resources.time, resources.kind) == (3, "2G", "00:30:00", "evaluation")
