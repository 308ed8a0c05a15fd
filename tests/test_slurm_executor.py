"""The Slurm executor (EXECUTOR=slurm) against a real one-node Slurm (bench/slurm.py): payloads run as Slurm jobs,
end as Slurm says, are cancelled with scancel, are followed with one squeue per round, and are neither lost nor run
twice when the client or slurmctld stops. Skipped, with the reason, where Slurm cannot run."""

import asyncio
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from bench.cluster import ROOT, request, wait
from bench.cluster import Node as Process
from bench.slurm import SlurmCluster
from orch import executors, payloads
from orch.executors import Ending
from orch.executors import slurm as slurm_executor
from orch.executors.slurm_commands import Commands, Row
from orch.models import Payload, transition
from orch.states import FINISHED, Status
from tasks.runner import start_prepared
from tests.conftest import (
    Node,
    job_processes,
    job_status,
    multipart,
    payload_status,
    script,
    services,
    upload,
    wait_for,
)

DONE = {status.value for status in FINISHED}
TOKEN = "slurm-tests-token"
AS_ROOT = os.geteuid() == 0  # then jobs run in Slurm as the job user, nobody


@pytest.fixture
def root():
    """A folder for the client's DATA_PATH that jobs running as the job user can reach (tmp_path's parents are
    closed to others), with a `shared` folder every job may write to (its ledger)."""
    folder = Path(tempfile.mkdtemp(prefix="orch-slurm-"))
    folder.chmod(0o711)
    (folder / "shared").mkdir(mode=0o777)
    (folder / "shared").chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def settings(slurm: SlurmCluster, root: Path, **more) -> dict[str, str]:
    return {
        "executor": "slurm",
        "slurm_conf": slurm.env["SLURM_CONF"],
        "slurm_partition": slurm.partition,
        "slurm_poll_interval": "0.1",
        "data_path": str(root / "client"),
        **more,
    }


@pytest.fixture
def slurm_client(slurm, nodes, root):
    """Start a client app whose executor is Slurm (`slurm_client(tasks=True, **settings)`); the jobs it leaves are
    cancelled after the test, so that its runs end before the client is stopped."""
    yield lambda tasks=True, **more: nodes("client", tasks=tasks, **settings(slurm, root, **more))
    slurm.cancel_all()


def ledger(root: Path) -> list[str]:
    path = root / "shared" / "ledger"
    return path.read_text().splitlines() if path.exists() else []


def ledger_line(root: Path) -> str:
    return f'echo "ran $SLURM_JOB_ID" >> {root}/shared/ledger\n'


def accounting(slurm: SlurmCluster, name: str) -> list[str]:
    """`JobID|State|ExitCode` of every ended job named `name`, from the job completion file."""
    lines = slurm.run("sacct", "-c", "-n", "-P", "-o", "JobID,JobName,State,ExitCode").splitlines()
    return [f"{i}|{state}|{code}" for i, job, state, code in (line.split("|") for line in lines) if job == name]


def job_name(client: Node, payload_id: int) -> str:
    return executors.of(client.ctx).job_name(payload_id)


async def submitted(client: Node, body: str, **fields: str) -> int:
    form, content_type = multipart(fields, script(body))
    code, payload = await client.json("/submit", method="POST", body=form, headers={"Content-Type": content_type})
    assert (code, payload["status"]) == (200, "Prepared"), payload
    return payload["id"]


async def finished(client: Node, payload_id: int, timeout: float = 60) -> Payload:
    await wait_for(lambda: payload_status(payload_id) in DONE, timeout)
    return Payload.get_by_id(payload_id)


def state(slurm: SlurmCluster, job_id: str) -> str:
    return slurm.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T", check=False).strip()


JOB = """echo hello > out.txt
echo to stdout; echo to stderr >&2
echo "$SLURM_CPUS_PER_TASK" > cpus.txt
squeue -h -j "$SLURM_JOB_ID" -o %l > limit.txt
env > env.txt
id -un > user.txt
pwd > pwd.txt
"""


async def test_a_job_runs_as_a_slurm_job_with_its_services_settings_and_completes_with_its_result(
    nodes, slurm, slurm_client
):
    client = slurm_client(
        orch_token=TOKEN,
        slurm_time_limit="300",
        slurm_extra_args="--cpus-per-task=1",
        slurm_extra_args_example="--cpus-per-task=2",
    )
    server = nodes("server", tasks=True, orch_token=TOKEN, **services(client, timeout=600))
    _, job = await upload(server, script(JOB))
    await wait_for(lambda: job_status(job["id"]) in DONE, 60)
    assert job_status(job["id"]) == "Completed"
    response = await server.fetch(f"/download/{job['id']}")
    files = zipfile.ZipFile(io.BytesIO(response.body))
    payload = Payload.get()
    folder = payloads.folder(client.ctx, payload.id)
    assert files.read("out.txt") == b"hello\n"
    assert files.read("run.log") == b"to stdout\nto stderr\n"  # stdout and stderr, as with the local executor
    assert files.read("pwd.txt").decode() == f"{folder}\n"
    assert files.read("cpus.txt") == b"2\n"  # the service's SLURM_EXTRA_ARGS_EXAMPLE, not SLURM_EXTRA_ARGS
    assert files.read("limit.txt") == b"5:00\n"  # SLURM_TIME_LIMIT, shorter than the service's TIMEOUT
    assert files.read("user.txt").decode() == ("nobody\n" if AS_ROOT else f"{psutil.Process().username()}\n")
    assert TOKEN not in files.read("env.txt").decode()  # only JOB_ENV's variables, as with the local executor
    assert (payload.executor, payload.service, payload.status) == ("slurm", "example", "Completed")
    assert accounting(slurm, job_name(client, payload.id)) == [f"{payload.run_id}|COMPLETED|0:0"]


async def test_a_job_exiting_3_fails_with_exit_code_3_as_slurm_reports_it(slurm, slurm_client):
    client = slurm_client()
    payload = await finished(client, await submitted(client, "echo working\nexit 3\n"))
    assert (payload.status, payload.exit_code, payload.message) == ("Failed", 3, "run.sh exited with code 3")
    assert accounting(slurm, job_name(client, payload.id)) == [f"{payload.run_id}|FAILED|3:0"]


async def test_killing_a_running_payload_cancels_its_job_and_leaves_no_process(slurm, slurm_client):
    client = slurm_client()
    payload_id = await submitted(client, "sleep 3203 &\nwait\n")
    await wait_for(lambda: job_processes("sleep", "3203"))
    job_id = Payload.get_by_id(payload_id).run_id
    assert state(slurm, job_id) == "RUNNING"

    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"], answer["message"]) == (200, "Killed", "killed on request")
    assert slurm.jobs(active_only=True) == []  # nothing pending, running or ending: scancel took the whole job
    assert not job_processes("sleep", "3203")
    assert accounting(slurm, job_name(client, payload_id))[0].startswith(f"{job_id}|CANCELLED")


async def test_a_payload_killed_while_its_job_waits_in_slurm_never_starts(slurm, slurm_client, root):
    """Also: /status and /load count the payloads in Slurm against SLOTS, not the machine's CPUs."""
    client = slurm_client(slurm_extra_args="--begin=now+600", slots="4")
    payload_id = await submitted(client, f"touch {root}/shared/started\n")
    job_id = await wait_for(lambda: Payload.get_by_id(payload_id).run_id)
    assert state(slurm, job_id) == "PENDING"
    code, status = await client.json("/status")
    assert (status["executor"], status["slots"], status["running"], status["load"], status["cpus"]) == (
        "slurm",
        4,
        1,
        1.0,
        4,
    )
    assert await client.json("/load") == (200, 25.0)

    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"]) == (200, "Killed")
    assert state(slurm, job_id) == "CANCELLED"
    assert not (root / "shared" / "started").exists()
    assert await client.json("/load") == (200, 0.0)


async def test_a_job_past_its_walltime_fails_with_slurms_timeout(slurm, slurm_client):
    """The walltime (timeout) becomes the job's --time, which Slurm counts in whole minutes and checks every 30 s:
    this takes 60 to 90 s, the price of the only test of it (tests/test_slurm_service.py leaves it here)."""
    client = slurm_client()
    payload_id = await submitted(client, "sleep 3204\n", timeout="1")
    payload = await finished(client, payload_id, timeout=150)
    assert payload.status == "Failed"
    assert payload.message == f"timeout: run.sh ran past its time limit in Slurm (job {payload.run_id}: TIMEOUT)"
    assert accounting(slurm, job_name(client, payload_id))[0].startswith(f"{payload.run_id}|TIMEOUT")
    assert not job_processes("sleep", "3204")


async def test_a_payload_recorded_running_whose_sbatch_never_ran_is_submitted_once_after_a_restart(
    slurm, slurm_client, root
):
    """A client that stopped between recording the payload Running and running sbatch: Slurm knows no job of that
    name, so the payload is started again, once."""
    client = slurm_client(tasks=False)
    payload_id = await submitted(client, ledger_line(root))
    assert transition(Payload, payload_id, Status.PREPARED, Status.RUNNING, time.time(), executor="slurm")
    assert await start_prepared(client.ctx, time.time()) == 0  # the restarted client's first round adopts it
    await wait_for(lambda: payload_status(payload_id) == "Prepared")
    assert await start_prepared(client.ctx, time.time()) == 1
    payload = await finished(client, payload_id)
    assert payload.status == "Completed"
    assert len(ledger(root)) == 1 and accounting(slurm, job_name(client, payload_id)) == [
        f"{payload.run_id}|COMPLETED|0:0"
    ]


async def test_fifty_payloads_through_one_client_are_followed_with_one_squeue_per_round(slurm, slurm_client, root):
    """Every Slurm command the client runs goes through a wrapper on its PATH that counts it."""
    counted = root / "bin"
    counted.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scancel"):
        wrapper = counted / name
        wrapper.write_text(f'#!/bin/sh\necho "$*" >> {root}/{name}.calls\nexec {shutil.which(name)} "$@"\n')
        wrapper.chmod(0o755)
    client = slurm_client(tasks=False, path=f"{counted}:{os.environ['PATH']}", slurm_poll_interval="0.5")
    ids = [await submitted(client, f"echo {n} > out.txt\n{ledger_line(root)}") for n in range(50)]
    assert await start_prepared(client.ctx, time.time()) == 50
    await wait_for(lambda: all(payload_status(payload_id) == "Completed" for payload_id in ids), 120)

    def calls(name: str) -> list[str]:
        path = root / f"{name}.calls"
        return path.read_text().splitlines() if path.exists() else []

    squeues = [call.split("--jobs=")[1].split(",") for call in calls("squeue")]
    assert len(squeues) == executors.of(client.ctx).rounds  # one squeue per round, whatever the number of jobs
    assert max(len(asked) for asked in squeues) == 50  # a round asks about every payload in Slurm at once
    assert len(squeues) < 25  # rounds, not payloads
    assert (len(calls("sbatch")), calls("sacct"), calls("scancel")) == (50, [], [])
    assert sorted(line.split()[1] for line in ledger(root)) == sorted(Payload.get_by_id(i).run_id for i in ids)


async def test_payloads_wait_out_a_slurmctld_restart_and_each_completes_once(slurm, slurm_client, root, caplog):
    """While slurmctld is down, sbatch and squeue fail (after Slurm's own retries, ~10 s): the client tries them again
    with backoff, and answers its API meanwhile."""
    client = slurm_client()
    first = await submitted(client, ledger_line(root) + "while [ ! -e go ]; do sleep 0.05; done\n")
    await wait_for(lambda: len(ledger(root)) == 1)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, slurm.stop_controller)
    try:
        second = await submitted(client, ledger_line(root))
        (payloads.folder(client.ctx, first) / "go").touch()

        def warned(*parts: str) -> bool:
            return any(
                all(part in r.getMessage() for part in parts) for r in caplog.records if r.levelno == logging.WARNING
            )

        await wait_for(lambda: warned(f"payload {second}: sbatch", "trying again") and warned("squeue", "asking again"))
        code, status = await client.json("/status")
        assert (code, status["running"]) == (200, 2)
    finally:
        await loop.run_in_executor(None, slurm.start_controller)
    for payload_id in (first, second):
        assert (await finished(client, payload_id)).status == "Completed"
        assert len(accounting(slurm, job_name(client, payload_id))) == 1
    assert len(ledger(root)) == 2


def client_process(slurm: SlurmCluster, root: Path) -> Process:
    """A client process (orchestrator.py) whose executor is Slurm, started."""
    env = {name.upper(): value for name, value in settings(slurm, root).items()}
    process = Process("client", root / "process", env)
    process.start()
    return process


def submit(client: Process, body: str) -> int:
    form, content_type = multipart(files=script(body))
    code, _, answer = request(f"{client.url}/submit", form, {"Content-Type": content_type})
    assert code == 200, answer
    return json.loads(answer)["id"]


def status(client: Process, payload_id: int) -> str | None:
    code, kind, answer = request(f"{client.url}/retrieve/{payload_id}")
    if code != 200:
        return None
    return "Completed" if kind == "application/zip" else json.loads(answer)["status"]


def name_of(client: Process, payload_id: int) -> str:
    """The name of the payload's Slurm job (after its client instance)."""
    return f"orch-{payload_id}-{json.loads(request(f'{client.url}/status')[2])['instance']}"


def test_a_client_killed_mid_run_follows_its_job_after_a_restart_and_it_completes_once(slurm, root):
    client = client_process(slurm, root)
    try:
        payload_id = submit(client, ledger_line(root) + "while [ ! -e go ]; do sleep 0.05; done\necho done > out.txt\n")
        wait(lambda: ledger(root), what="the job to start")
        client.kill()
        client.start()
        (root / "client" / str(payload_id) / "go").touch()
        wait(lambda: status(client, payload_id) in DONE, 60, "the payload to end")
        assert status(client, payload_id) == "Completed"
        assert "found by its name" not in client.log()  # followed by the job id it had recorded
        name = name_of(client, payload_id)
    finally:
        client.stop()
    assert len(ledger(root)) == 1
    assert [line.split("|", 1)[1] for line in accounting(slurm, name)] == ["COMPLETED|0:0"]


def test_a_client_killed_while_its_sbatch_waits_for_slurm_finds_the_job_by_its_name_and_submits_nothing_more(
    slurm, root
):
    """sbatch waits while slurmctld is stopped (SIGSTOP): the client is killed with the payload recorded Running and
    no job id; Slurm takes the job once it goes on. The restarted client finds it by its name."""
    client = client_process(slurm, root)
    controller = psutil.Process(slurm.daemons[0].pid)
    try:
        controller.suspend()
        try:
            payload_id = submit(client, ledger_line(root))
            flag = f"--job-name=orch-{payload_id}-"
            wait(
                lambda: any(
                    any(arg.startswith(flag) for arg in p.info["cmdline"] or [])
                    for p in psutil.process_iter(["cmdline"])
                ),
                what="sbatch to wait for slurmctld",
            )
            client.kill()
        finally:
            controller.resume()
        client.start()
        wait(lambda: status(client, payload_id) in DONE, 60, "the payload to end")
        assert status(client, payload_id) == "Completed"
        assert "found by its name" in client.log()
        name = name_of(client, payload_id)
    finally:
        client.stop()
    assert len(ledger(root)) == 1
    assert [line.split("|", 1)[1] for line in accounting(slurm, name)] == ["COMPLETED|0:0"]


@pytest.mark.skipif(
    shutil.which("sbatch") is None, reason="Slurm's commands are not installed (tests/system/install.sh)"
)
@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"EXECUTOR": "condor"}, "EXECUTOR must be one of local, slurm, got 'condor'"),
        ({"SLURM_EXTRA_ARGS": "--mem=8G --job-name=x"}, "SLURM_EXTRA_ARGS may not set --job-name"),
        (
            {"SLURM_EXTRA_ARGS_EXAMPLE": "-p gpu"},
            "SLURM_EXTRA_ARGS_EXAMPLE may not set --partition: set SLURM_PARTITION",
        ),
        ({"SLURM_EXTRA_ARGS": '--comment="open'}, "SLURM_EXTRA_ARGS cannot be split into sbatch options"),
        ({"SLURM_TIME_LIMIT": "-5"}, "SLURM_TIME_LIMIT must be a number of seconds"),
        ({"SLURM_TIME_LIMIT_EXAMPLE": "1h"}, "SLURM_TIME_LIMIT_EXAMPLE must be a whole number of seconds"),
        ({"SANDBOX": "bwrap"}, "SANDBOX is about the local executor's sandbox"),
        ({"JOB_NETWORK": "none"}, "JOB_NETWORK is about the local executor's sandbox"),
        ({"PATH": "/nonexistent"}, "EXECUTOR is slurm, but sbatch, squeue, sacct, scancel is not on the PATH"),
    ],
)
def test_a_setting_the_slurm_executor_cannot_work_with_stops_the_start_with_one_line_naming_it(root, env, says):
    settings = {"PATH": os.environ["PATH"], "EXECUTOR": "slurm", "DATA_PATH": str(root / "client"), **env}
    result = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "client", "--port", "0"],
        cwd=root,
        env=settings,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # 2: a value wrong anywhere (orch.config); 1: one the Slurm executor cannot work with (orch.executors.slurm)
    assert result.returncode in (1, 2) and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, never a traceback
    assert not (root / "client.sqlite").exists()  # refused before the database is made


@pytest.mark.skipif(not AS_ROOT, reason="jobs run as another user only when the client runs as root")
def test_a_data_path_the_job_user_cannot_reach_is_refused_at_start(tmp_path):
    """tmp_path's parents are closed to others (0700): nobody could not open its folder on a compute node."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "client", "--port", "0"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "EXECUTOR": "slurm", "DATA_PATH": str(tmp_path / "client")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "its jobs run in Slurm as nobody, who cannot go through" in result.stderr, result.stderr


async def test_a_job_cancelled_outside_the_orchestrator_ends_killed_saying_so(slurm, slurm_client):
    client = slurm_client()
    payload_id = await submitted(client, "sleep 3205\n")
    job_id = await wait_for(lambda: Payload.get_by_id(payload_id).run_id)
    await wait_for(lambda: job_processes("sleep", "3205"))
    slurm.run("scancel", job_id)  # an administrator's
    payload = await finished(client, payload_id)
    assert (payload.status, payload.message) == (
        "Killed",
        f"Slurm job {job_id} was cancelled outside the orchestrator (CANCELLED)",
    )
    assert not job_processes("sleep", "3205")


@pytest.mark.parametrize(
    ("row", "status", "message"),
    [
        (
            Row("7", "OUT_OF_MEMORY", 0),
            Status.FAILED,
            "Slurm job 7 ended OUT_OF_MEMORY: it used more memory than the job was given",
        ),
        (Row("7", "NODE_FAIL", 0), Status.FAILED, "Slurm job 7 ended NODE_FAIL: its node failed"),
        (Row("7", "PREEMPTED", 0), Status.FAILED, "Slurm job 7 ended PREEMPTED: Slurm preempted it for other work"),
        (Row("7", "FAILED", None, "RaisedSignal:9"), Status.FAILED, "Slurm job 7 ended FAILED: RaisedSignal:9"),
        (None, Status.FAILED, "Slurm job 7 is gone, and Slurm keeps no record of how it ended"),
    ],
)
def test_slurms_own_failure_states_end_the_payload_with_slurms_words(row, status, message):
    """The states a one-node test cluster cannot bring about (no memory limits, no second node, no preemption), as
    squeue or sacct report them."""
    assert slurm_executor._ending("7", row) == Ending(None, message, status)


async def test_squeue_reads_each_jobs_wait_status_as_its_exit_status_or_the_signal_that_killed_it(monkeypatch):
    async def answer(*args) -> str:
        statuses = ["0", "768", "9", "15", "65280", "", "127"]
        return "".join(f"{job_id}|FAILED|{status}|None\n" for job_id, status in enumerate(statuses, 1))

    commands = Commands.__new__(Commands)  # no Slurm needed: its answer is given
    monkeypatch.setattr(commands, "run", answer)
    rows = await commands.squeue("--jobs=1,2,3,4,5,6,7")
    codes = {job_id: row.code for job_id, row in rows.items()}
    assert codes == {"1": 0, "2": 3, "3": -9, "4": -15, "5": 255, "6": None, "7": None}  # 127: stopped, not ended
