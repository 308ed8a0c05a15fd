"""The Slurm cluster of the test suite runs real jobs: exit codes, cancellation and a burst of jobs end as Slurm
reports them, and nothing of a job is left running. (Time limits, which cost a minute and more, are tested once,
through the Slurm executor: tests/test_slurm_executor.py.)"""

import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bench.slurm import TIMINGS, SlurmCluster, wait

ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
}


def sbatch(slurm: SlurmCluster, script: Path, *options: str) -> str:
    """Submit `script` from its folder, its output next to it; the job id."""
    output = slurm.run(
        "sbatch",
        "--parsable",
        "-p",
        slurm.partition,
        "-D",
        str(script.parent),
        "-o",
        str(script.parent / "slurm-%j.out"),
        *options,
        str(script),
    )
    return output.strip().split(";")[0]


def state(slurm: SlurmCluster, job_id: str) -> str:
    """The job's state as squeue shows it, "" once Slurm forgot it."""
    return slurm.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False).strip()


def wait_state(slurm: SlurmCluster, job_id: str, wanted: set[str], timeout: float = 30.0) -> str:
    try:
        return wait(lambda: (found := state(slurm, job_id)) in wanted and found, timeout, f"job {job_id} {wanted}")
    except TimeoutError as e:
        pytest.fail(f"{e}: it is {state(slurm, job_id)!r}")


def accounting(slurm: SlurmCluster, job_id: str) -> str:
    """`JobID|State|ExitCode` of an ended job, from the jobcomp file (no slurmdbd needed)."""
    return slurm.run("sacct", "-c", "-j", job_id, "-n", "-P", "-o", "JobID,State,ExitCode").strip()


def write(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    return path


def test_a_job_that_exits_3_ends_failed_with_its_exit_code(slurm, tmp_path):
    script = write(tmp_path / "run.sh", 'echo "ran on $SLURM_JOB_PARTITION" > result.txt\nexit 3\n')
    started = time.monotonic()
    job_id = sbatch(slurm, script)
    assert wait_state(slurm, job_id, ENDED) == "FAILED"
    took = time.monotonic() - started
    TIMINGS.append(f"one trivial job: {took:.2f} s from sbatch to its end state in squeue")
    assert (tmp_path / "result.txt").read_text() == f"ran on {slurm.partition}\n"
    assert accounting(slurm, job_id) == f"{job_id}|FAILED|3:0"
    assert "ExitCode=3:0" in slurm.run("scontrol", "show", "job", job_id, "-o").split()


def test_a_cancelled_job_ends_cancelled_and_leaves_no_process(slurm, tmp_path):
    script = write(tmp_path / "run.sh", "sleep 300 &\necho $$ $! > pids\nwait\n")
    job_id = sbatch(slurm, script)
    wait_state(slurm, job_id, {"RUNNING"})
    pids = [
        int(pid)
        for pid in wait(
            lambda: (tmp_path / "pids").exists() and (tmp_path / "pids").read_text().split(), 30, "the job's pids"
        )
    ]
    assert all(running(pid) for pid in pids)
    slurm.run("scancel", job_id)
    assert wait_state(slurm, job_id, ENDED) == "CANCELLED"
    wait(lambda: not any(running(pid) for pid in pids), 10, "the job's processes to end")
    assert accounting(slurm, job_id).startswith(f"{job_id}|CANCELLED")


def test_fifty_jobs_submitted_at_once_all_complete(slurm, tmp_path):
    started = time.monotonic()
    submits = []
    for n in range(50):
        folder = tmp_path / str(n)
        folder.mkdir()
        write(folder / "run.sh", "echo done > result.txt\n")
        submits.append(
            subprocess.Popen(
                ["sbatch", "--parsable", "-p", slurm.partition, "-D", str(folder), "-o", "/dev/null", "run.sh"],
                cwd=folder,
                env={**os.environ, **slurm.env},
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    job_ids = [submit.communicate(timeout=30)[0].strip().split(";")[0] for submit in submits]
    assert all(submit.returncode == 0 for submit in submits) and len(set(job_ids)) == 50
    submitted = time.monotonic() - started

    def ended() -> list[str] | None:
        """Each job's end state once all have ended (one squeue for all)."""
        states = dict(line.split() for line in slurm.run("squeue", "-h", "-t", "all", "-o", "%i %T").splitlines())
        found = [states.get(job_id) for job_id in job_ids]
        return found if all(each in ENDED for each in found) else None

    assert wait(ended, 60, "the 50 jobs to end") == ["COMPLETED"] * 50
    TIMINGS.append(f"50 trivial jobs: submitted in {submitted:.2f} s, all ended in {time.monotonic() - started:.2f} s")
    assert all((tmp_path / str(n) / "result.txt").read_text() == "done\n" for n in range(50))


def test_slurm_forgets_ended_jobs(slurm, tmp_path):
    job_id = sbatch(slurm, write(tmp_path / "run.sh", "true\n"))
    wait_state(slurm, job_id, ENDED)
    started = time.monotonic()
    slurm.wait_no_jobs()
    TIMINGS.append(f"Slurm forgot every ended job {time.monotonic() - started:.1f} s after the last one ended")
    assert state(slurm, job_id) == ""
    assert accounting(slurm, job_id) == f"{job_id}|COMPLETED|0:0"  # still in the jobcomp file


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
