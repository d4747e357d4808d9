"""SlurmClient: retries and backoff through an injected runner, record parsing, and the real cluster."""

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from mlgraph.slurm.client import SlurmClient, SlurmError, _reverse_lines
from mlgraph.slurm.jobs import parse_key_values
from tests.support import wait_for
from tests.support.slurm import harness

CONTROLLER_DOWN = "squeue: error: Unable to contact slurm controller (connect failure)"
SCONTROL_LINE = (
    "JobId=42 JobName=mlgraph-1a2b3c4d UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
    "Account=(null) QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=0 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:15 RunTime=00:01:10 TimeLimit=00:01:00 TimeMin=N/A "
    "SubmitTime=2026-11-22T20:58:20 Partition=debug NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=2 "
    "NumTasks=1 CPUs/Task=2 ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=1G,node=1,billing=2 Socks/Node=* "
    "MinCPUsNode=2 MinMemoryNode=1G Command=/shared/logs/training/run one.sbatch "
    "WorkDir=/work/main StdErr=/shared/logs/training/42.err StdOut=/shared/logs/training/42.log Power="
)
JOBCOMP_LINE = (
    "JobId={id} UserId=root(0) GroupId=root(0) Name=mlgraph-1a2b3c4d JobState={state} Partition=debug "
    "TimeLimit=10 StartTime=2026-11-22T20:52:01 EndTime=2026-11-22T20:53:04 NodeList=vm NodeCnt=1 "
    "ProcCnt=1 WorkDir=/tmp ReservationName= Tres=cpu=1,mem=768M,node=1,billing=1 Account= QOS= WcKey= "
    "Cluster=unknown SubmitTime=2026-11-22T20:51:59 EligibleTime=2026-11-22T20:51:59 "
    "DerivedExitCode=0:0 ExitCode={exit} "
)


class ScriptedRunner:
    """Answers each command with the next scripted outcome: (returncode, stdout, stderr) or an exception."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls: list[list[str]] = []

    def __call__(self, args: Sequence[str], timeout: float, env) -> subprocess.CompletedProcess:
        self.calls.append(list(args))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        code, out, err = outcome
        return subprocess.CompletedProcess(list(args), code, out, err)


def client_with(runner, **kwargs) -> tuple[SlurmClient, list[float]]:
    sleeps: list[float] = []
    return SlurmClient(runner=runner, sleep=sleeps.append, **kwargs), sleeps


def test_transient_errors_are_retried_with_exponential_backoff():
    runner = ScriptedRunner((1, "", CONTROLLER_DOWN), (1, "", CONTROLLER_DOWN), (1, "", CONTROLLER_DOWN), (0, "ok", ""))
    client, sleeps = client_with(runner, retries=3, backoff_seconds=0.5)

    assert client.run(["squeue"]) == "ok"
    assert len(runner.calls) == 4
    assert sleeps == [0.5, 1.0, 2.0]


def test_backoff_is_capped():
    runner = ScriptedRunner(*[(1, "", "Socket timed out on send/recv operation")] * 5, (0, "ok", ""))
    client, sleeps = client_with(runner, retries=5, backoff_seconds=1.0, max_backoff_seconds=3.0)

    client.run(["scontrol", "ping"])
    assert sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


def test_transient_errors_give_up_after_the_retries_with_command_and_stderr():
    runner = ScriptedRunner(*[(1, "", CONTROLLER_DOWN)] * 3)
    client, sleeps = client_with(runner, retries=2)

    with pytest.raises(SlurmError) as caught:
        client.run(["squeue", "--noheader"])
    assert caught.value.transient and len(runner.calls) == 3 and len(sleeps) == 2
    assert caught.value.command == ["squeue", "--noheader"]
    assert "`squeue --noheader` failed (exit 1): squeue: error: Unable to contact slurm controller" in str(caught.value)


def test_command_timeouts_count_as_transient():
    runner = ScriptedRunner(subprocess.TimeoutExpired(["squeue"], 30), (0, "ok", ""))
    client, sleeps = client_with(runner)

    assert client.run(["squeue"]) == "ok" and sleeps == [0.5]


def test_non_transient_error_raises_at_once():
    runner = ScriptedRunner((1, "", "scancel: error: Kill job error on job id 7: Access/permission denied"))
    client, sleeps = client_with(runner)

    with pytest.raises(SlurmError, match="Access/permission denied") as caught:
        client.cancel("7")
    assert not caught.value.transient and len(runner.calls) == 1 and sleeps == []


def test_missing_binary_is_a_clear_error():
    client, _ = client_with(ScriptedRunner(FileNotFoundError(2, "No such file", "sbatch")))

    with pytest.raises(SlurmError, match="sbatch not found on PATH"):
        client.submit("job.sbatch")


def test_submit_parses_the_job_id_and_builds_the_command():
    runner = ScriptedRunner((0, "1234;mlgraph\n", ""))
    client, _ = client_with(runner)

    assert client.submit("/x/job.sbatch", export=["PATH", "HOME"], extra_args=["--account=ml"]) == "1234"
    assert runner.calls[0] == ["sbatch", "--parsable", "--export=PATH,HOME", "--account=ml", "/x/job.sbatch"]


def test_submit_rejects_unexpected_output():
    client, _ = client_with(ScriptedRunner((0, "Submitted batch job 12\n", "")))

    with pytest.raises(SlurmError, match="unexpected sbatch output"):
        client.submit("job.sbatch")


def test_submit_after_a_timeout_takes_the_job_that_did_reach_the_controller():
    queued = "77|PENDING|Priority|0:00|10:00|1|1G||debug|mlgraph-abcd1234\n"
    runner = ScriptedRunner((1, "", "sbatch: error: Socket timed out on send/recv operation"), (0, queued, ""))
    client, sleeps = client_with(runner)

    assert client.submit("job.sbatch", job_name="mlgraph-abcd1234") == "77"
    assert [call[0] for call in runner.calls] == ["sbatch", "squeue"] and sleeps == [0.5]
    assert "--name=mlgraph-abcd1234" in runner.calls[1]


def test_submit_resubmits_when_the_timed_out_job_is_not_queued():
    runner = ScriptedRunner((1, "", CONTROLLER_DOWN), (0, "", ""), (0, "88\n", ""))
    client, _ = client_with(runner)

    assert client.submit("job.sbatch", job_name="mlgraph-abcd1234") == "88"
    assert [call[0] for call in runner.calls] == ["sbatch", "squeue", "sbatch"]


def test_sbatch_refusal_is_not_retried():
    runner = ScriptedRunner((1, "", "sbatch: error: Batch job submission failed: Invalid partition name specified"))
    client, sleeps = client_with(runner)

    with pytest.raises(SlurmError, match="Invalid partition name"):
        client.submit("job.sbatch", job_name="x")
    assert len(runner.calls) == 1 and sleeps == []


def test_show_job_parses_scontrol_including_values_with_spaces():
    client, _ = client_with(ScriptedRunner((0, SCONTROL_LINE + "\n", "")))

    job = client.show_job("42")

    assert (job.state, job.reason, job.exit_code, job.elapsed) == ("TIMEOUT", "TimeLimit", "0:15", "00:01:10")
    assert (job.cpus, job.mem, job.node, job.time_limit) == (2, "1G", "vm", "00:01:00")
    assert job.stderr == "/shared/logs/training/42.err"
    assert job.raw["Command"] == "/shared/logs/training/run one.sbatch"
    assert job.describe().startswith("Slurm job 42 TIMEOUT (reason TimeLimit, exit 0:15")


def test_show_job_of_a_purged_job_is_none():
    client, _ = client_with(ScriptedRunner((1, "", "slurm_load_jobs error: Invalid job id specified")))

    assert client.show_job("9") is None


def test_job_falls_back_to_the_latest_completion_record(tmp_path: Path):
    jobcomp = tmp_path / "jobcomp.txt"
    jobcomp.write_text(
        JOBCOMP_LINE.format(id=5, state="NODE_FAIL", exit="0:0")
        + "\n"
        + JOBCOMP_LINE.format(id=50, state="COMPLETED", exit="0:0")
        + "\n"
        + JOBCOMP_LINE.format(id=5, state="CANCELLED", exit="0:15")
        + "\n"
    )
    runner = ScriptedRunner((1, "", "slurm_load_jobs error: Invalid job id specified"))
    client, _ = client_with(runner, jobcomp_file=str(jobcomp))

    job = client.job("5")

    assert job.source == "jobcomp" and job.state == "CANCELLED" and job.exit_code == "0:15"
    assert (job.elapsed, job.cpus, job.mem, job.time_limit) == ("00:01:03", 1, "768M", "00:10:00")


def test_completion_file_comes_from_the_cluster_config_and_sacct_needs_accounting(tmp_path: Path):
    jobcomp = tmp_path / "jobcomp.txt"
    jobcomp.write_text(JOBCOMP_LINE.format(id=8, state="COMPLETED", exit="0:0") + "\n")
    config = (
        f"JobCompLoc              = {jobcomp}\nJobCompType             = jobcomp/filetxt\n"
        "AccountingStorageType   = accounting_storage/none\n"
    )
    runner = ScriptedRunner((1, "", "Invalid job id specified"), (0, config, ""), (1, "", "Invalid job id specified"))
    client, _ = client_with(runner)

    assert client.job("8").state == "COMPLETED"
    # Unknown everywhere: jobcomp has no record and, without slurmdbd, sacct is not consulted.
    assert client.job("9") is None
    assert [call[0] for call in runner.calls] == ["scontrol", "scontrol", "scontrol"]


def test_sacct_record_carries_the_peak_rss_of_the_steps():
    config = "AccountingStorageType   = accounting_storage/slurmdbd\n"
    sacct = (
        "31|OUT_OF_MEMORY|0:125|00:00:12|00:10:00|2|1G||vm|debug|mlgraph-x\n"
        "31.batch|OUT_OF_MEMORY|0:125|00:00:12||2||1010M|vm||batch\n"
        "31.extern|COMPLETED|0:0|00:00:12||2||900K|vm||extern\n"
    )
    runner = ScriptedRunner((0, config, ""), (0, sacct, ""))
    client, _ = client_with(runner, jobcomp_file="/nonexistent/jobcomp.txt")

    job = client.accounting_record("31")

    assert (job.state, job.max_rss, job.cpus, job.source) == ("OUT_OF_MEMORY", "1010M", 2, "sacct")


def test_cancel_of_an_ended_job_is_not_an_error():
    ended = "scancel: error: Kill job error on job id 5: Job/step already completing or completed"
    runner = ScriptedRunner((1, "", ended))
    client, _ = client_with(runner)

    client.cancel("5")
    assert runner.calls == [["scancel", "5"]]


def test_reverse_lines_crosses_block_boundaries(tmp_path: Path):
    path = tmp_path / "f.txt"
    lines = [f"line {i} " + "x" * (i % 7) for i in range(50)]
    path.write_text("\n".join(lines) + "\n")

    assert list(_reverse_lines(path, block_size=16)) == lines[::-1]


def test_parse_key_values_keeps_empty_values():
    assert parse_key_values("A=1 B= C=x y") == {"A": "1", "B": "", "C": "x y"}


# --- the real local cluster ------------------------------------------------------------------


@pytest.fixture
def real_client() -> SlurmClient:
    harness.require_slurm()
    return SlurmClient()


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.sbatch"
    path.write_text(
        f"#!/bin/bash\n#SBATCH --job-name=mlgraph-clienttest\n#SBATCH --output={tmp_path}/%j.log\n"
        f"#SBATCH --time=00:02:00\n#SBATCH --mem=64M\n#SBATCH --cpus-per-task=1\n{body}\n"
    )
    return path


@pytest.mark.slurm
def test_real_cluster_job_is_visible_then_resolved_from_its_completion_record(real_client, tmp_path):
    job_id = real_client.submit(_script(tmp_path, "echo hello"), export=["PATH"])

    job = wait_for(lambda: (j := real_client.show_job(job_id)) and j.is_terminal and j, 60, f"job {job_id} to finish")
    assert job.state == "COMPLETED" and job.cpus == 1 and job.mem == "64M"
    assert (tmp_path / f"{job_id}.log").read_text().strip() == "hello"
    record = wait_for(lambda: real_client.completion_record(job_id), 30, "the jobcomp record")
    assert (record.state, record.exit_code, record.mem, record.source) == ("COMPLETED", "0:0", "64M", "jobcomp")


@pytest.mark.slurm
def test_real_cluster_cancel_and_refusal(real_client, tmp_path):
    job_id = real_client.submit(_script(tmp_path, "sleep 120"), export=["PATH"])
    assert [j.job_id for j in real_client.queue(job_ids=[job_id])] == [job_id]

    real_client.cancel(job_id)
    wait_for(lambda: (j := real_client.job(job_id)) and j.state == "CANCELLED", 45, f"job {job_id} to be cancelled")
    real_client.cancel(job_id)  # already ended: not an error

    started = time.monotonic()
    with pytest.raises(SlurmError, match="(?i)invalid partition") as caught:
        real_client.submit(_script(tmp_path, "true"), extra_args=["--partition=no_such_partition"])
    assert not caught.value.transient and time.monotonic() - started < 10
