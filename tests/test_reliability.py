"""Exactly-once dispatch, client identity, backoff, lost clients, walltimes and adoption of runs, on real server
and client apps over loopback HTTP with real run.sh processes."""

import time
from pathlib import Path

import pytest

from orch import jobs, payloads, processes, sandbox
from orch.database import client_instance
from orch.executors import local
from orch.models import Job, Payload, transition
from orch.quotas import next_jobs
from orch.states import FINISHED, Status
from orch.tracking import Health
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import (
    Node,
    data_files,
    job_processes,
    job_status,
    multipart,
    payload_status,
    script,
    services,
    upload,
    wait_for,
)

pytestmark = pytest.mark.both_databases

DONE = {status.value for status in FINISHED}
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.01; done\n"  # a run that lasts until the test creates `go`
# Payload folders are DATA_PATH/<id> with DATA_PATH = tmp_path/client: `../../shared/ledger` is in tmp_path/shared,
# outside everything the client owns, which the client lets jobs write to. Each run appends one line to it.
LEDGER_LINE = 'echo "ran $$" >> ../../shared/ledger\n'


@pytest.fixture
def client(nodes, shared) -> Node:
    """A client app whose tasks are not running, whose jobs may write to the ledger's folder."""
    return nodes("client", job_write_paths=shared)


def ledger_lines(tmp_path: Path) -> list[str]:
    ledger = tmp_path / "shared" / "ledger"
    return ledger.read_text().splitlines() if ledger.exists() else []


async def submit(client: Node, files: dict[str, bytes], **fields: str) -> tuple[int, dict]:
    """POST /submit as the server does, with text `fields` (job_key, timeout); returns the code and JSON."""
    body, content_type = multipart(fields, files)
    return await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})


async def submitted(client: Node, files: dict[str, bytes], **fields: str) -> int:
    code, payload = await submit(client, files, **fields)
    assert (code, payload["status"]) == (200, "Prepared"), payload
    return payload["id"]


async def dispatched(server: Node, files: dict[str, bytes]) -> Job:
    """Upload a job and send it to the client; returns the Submitted job."""
    _, body = await upload(server, files)
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert job.status == "Submitted"
    return job


async def run_on_client(client: Node, payload_ids: list[int], until: set[str] = DONE) -> None:
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: all(payload_status(payload_id) in until for payload_id in payload_ids))


async def poll(server: Node, now: float | None = None) -> None:
    await poll_dispatched(server.ctx, time.time() if now is None else now)
    await server.settle()


def digit_folders(root: Path) -> list[str]:
    return sorted(entry.name for entry in root.iterdir() if entry.name.isdigit())


# Exactly once: the job key.


async def test_a_repeated_submit_with_the_same_job_key_answers_the_same_payload_and_runs_it_once(client, tmp_path):
    data = client.config.data_path
    first = await submitted(client, script(LEDGER_LINE), job_key="abc")
    code, again = await submit(client, {**script("echo second > second.txt\n"), "extra.txt": b"x"}, job_key="abc")
    assert (code, again["id"], again["job_key"]) == (200, first, "abc")
    assert Payload.select().count() == 1
    assert digit_folders(data) == [str(first)]
    assert data_files(data) == [f"{first}/run.sh"]  # the second submit's files are dropped, nothing in .tmp
    assert (data / str(first) / "run.sh").read_text() == LEDGER_LINE

    await run_on_client(client, [first])
    assert payload_status(first) == "Completed"
    code, late = await submit(client, script(LEDGER_LINE), job_key="abc")  # even once it has finished
    assert (code, late["id"], late["status"]) == (200, first, "Completed")
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    assert len(ledger_lines(tmp_path)) == 1
    assert digit_folders(data) == [str(first)]


async def test_submits_without_a_job_key_or_with_different_keys_make_different_payloads(client):
    ids = {
        await submitted(client, script("exit 0\n")),
        await submitted(client, script("exit 0\n")),
        await submitted(client, script("exit 0\n"), job_key="a"),
        await submitted(client, script("exit 0\n"), job_key="b"),
    }
    assert len(ids) == 4


async def test_the_sender_sends_the_jobs_key_and_records_the_clients_instance(server, client):
    job = await dispatched(server, script("exit 0\n"))
    payload = Payload.get_by_id(job.dest_id)
    assert payload.job_key == job.folder
    assert job.dest_instance == client_instance() == payloads.instance(client.ctx)
    response = await client.fetch(f"/retrieve/{job.dest_id}")
    assert response.headers["X-Orchestrator-Job"] == job.folder
    assert response.headers["X-Orchestrator-Instance"] == job.dest_instance


async def test_a_send_repeated_after_a_crash_finds_the_payload_of_the_first_send_and_runs_the_job_once(
    server, client, tmp_path
):
    """The server claimed a job and its send reached the client, then the server died before recording it:
    recovery requeues the job, and the next send gets the same payload instead of a second run."""
    _, body = await upload(server, {**script(LEDGER_LINE + "echo done > out.txt\n"), "input.txt": b"42"})
    job_id = body["id"]
    assert transition(Job, job_id, Status.QUEUED, Status.PROCESSING, time.time())
    job = Job.get_by_id(job_id)
    inputs = jobs.folder(server.ctx, job)
    first = await submitted(
        client, {path.name: path.read_bytes() for path in inputs.iterdir()}, job_key=job.folder
    )  # the first send, whose answer was lost in the crash

    jobs.recover(server.ctx)
    assert job_status(job_id) == "Queued"
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    job = Job.get_by_id(job_id)
    assert (job.status, job.dest_id, job.dest_instance) == ("Submitted", first, client_instance())
    assert Payload.select().count() == 1
    assert digit_folders(client.config.data_path) == [str(first)]

    await run_on_client(client, [first])
    await poll(server)
    assert job_status(job_id) == "Completed"
    assert len(ledger_lines(tmp_path)) == 1


# Identity: the server never takes another instance's or another job's payload for a job's.


async def test_a_send_repeated_after_a_crash_that_finds_the_job_ended_fetches_it_at_once(server, client, tmp_path):
    """The first send's payload ran to its end while the server was down: no event will ever report it to the
    restarted server, so the repeated send's answer (the payload, Completed) has the result fetched at once."""
    _, body = await upload(server, script(LEDGER_LINE + "echo done > out.txt\n"))
    job_id = body["id"]
    assert transition(Job, job_id, Status.QUEUED, Status.PROCESSING, time.time())
    job = Job.get_by_id(job_id)
    first = await submitted(
        client, {path.name: path.read_bytes() for path in jobs.folder(server.ctx, job).iterdir()}, job_key=job.folder
    )
    await run_on_client(client, [first])

    jobs.recover(server.ctx)
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()  # the send, and the poll it started: no getter round
    assert job_status(job_id) == "Completed"
    assert len(ledger_lines(tmp_path)) == 1


async def test_a_job_answered_by_another_client_instance_ends_unknown_without_its_result(server, client):
    job_a = await dispatched(server, script("echo a > out.txt\n"))
    job_b = await dispatched(server, script("echo b > out.txt\n"))
    await run_on_client(client, [job_a.dest_id, job_b.dest_id])
    assert Job.update(dest_instance="other").where(Job.id == job_a.id).execute() == 1

    await poll(server)
    a = Job.get_by_id(job_a.id)
    assert a.status == "Unknown"
    assert "another client instance" in a.message and "(other)" in a.message
    assert client_instance() in a.message
    assert not jobs.result_file(server.ctx, a).exists()
    assert data_files(server.config.tmp_path) == []  # nor half a zip
    assert job_status(job_b.id) == "Completed"
    assert jobs.result_file(server.ctx, job_b).exists()


async def test_a_job_pointing_at_another_jobs_payload_ends_unknown_and_the_other_job_is_unaffected(server, client):
    job_a = await dispatched(server, script("echo a > out.txt\n"))
    job_b = await dispatched(server, script("echo b > out.txt\n"))
    await run_on_client(client, [job_a.dest_id, job_b.dest_id])
    assert Job.update(dest_id=job_a.dest_id).where(Job.id == job_b.id).execute() == 1

    await poll(server)
    b = Job.get_by_id(job_b.id)
    assert b.status == "Unknown"
    assert "another job's payload" in b.message
    assert not jobs.result_file(server.ctx, b).exists()
    assert job_status(job_a.id) == "Completed"
    code, answer = await server.json(f"/download/{job_b.id}")
    assert (code, answer["status"]) == (200, "Unknown")
    response = await server.fetch(f"/download/{job_a.id}")
    assert response.headers["Content-Type"] == "application/zip"


def mismatch(job: Job, other: Job, kind: str) -> None:
    """Make the server's record of `job` name another client instance, or `other`'s payload."""
    changes = {"dest_instance": "other"} if kind == "instance" else {"dest_id": other.dest_id}
    assert Job.update(changes).where(Job.id == job.id).execute() == 1


@pytest.mark.parametrize("kind", ["instance", "job_key"])
async def test_terminate_of_a_job_whose_payload_is_not_its_own_kills_nothing_on_the_client(server, client, kind):
    """The job's payload is gone from the server's point of view, so it is Killed; the payload that the
    client holds under that id (another job's, or another instance's) keeps running."""
    job_a = await dispatched(server, script(WAIT_FOR_GO + "echo a > out.txt\n"))
    job_b = await dispatched(server, script("exit 0\n"))
    await run_on_client(client, [job_a.dest_id], {"Running"})
    target = job_a if kind == "instance" else job_b
    mismatch(target, job_a, kind)

    code, answer = await server.json(f"/terminate/{target.id}", method="POST", body=b"")
    assert (code, answer["status"]) == (200, "Killed")
    assert job_status(target.id) == "Killed"
    payload = Payload.get_by_id(job_a.dest_id)
    assert (payload.status, payload.killed) == ("Running", False)
    (client.config.data_path / str(job_a.dest_id) / "go").touch()
    await wait_for(lambda: payload_status(job_a.dest_id) in DONE)
    assert payload_status(job_a.dest_id) == "Completed"


@pytest.mark.parametrize("kind", ["instance", "job_key"])
async def test_partial_download_of_a_job_whose_payload_is_not_its_own_is_404(server, client, kind):
    job_a = await dispatched(server, script(WAIT_FOR_GO))
    job_b = await dispatched(server, script("exit 0\n"))
    await run_on_client(client, [job_a.dest_id], {"Running"})
    target = job_a if kind == "instance" else job_b
    mismatch(target, job_a, kind)

    code, answer = await server.json(f"/download_partial/{target.id}")
    assert (code, answer["id"]) == (404, target.id)
    assert "not found" in answer["message"]
    assert data_files(server.config.tmp_path) == []  # the zip it received is not kept
    (client.config.data_path / str(job_a.dest_id) / "go").touch()
    await wait_for(lambda: payload_status(job_a.dest_id) in DONE)


# Backoff of a failing client.


def test_backoff_delays_double_from_1_s_up_to_a_cap_of_60_s():
    backoff = Health()
    now, delays = 1000.0, []
    for _ in range(9):
        delays.append(backoff.failed("example", now))
        assert not backoff.ready("example", now)
        now += delays[-1]
        assert backoff.ready("example", now)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_backoff_counts_failures_of_calls_made_in_one_round_once():
    backoff = Health()
    assert backoff.failed("example", 1000.0) == 1
    assert backoff.failed("example", 1000.0) == 1  # another job of the same round
    assert backoff.failed("example", 1000.5) == 0.5  # a poll started in that round, failing later
    assert backoff.failed("example", 1001.0) == 2  # the next round
    assert backoff.failed("example", 1003.0) == 4


def test_backoff_down_for_counts_from_the_first_failure_and_success_resets_everything():
    backoff = Health()
    assert backoff.down_for("example", 1000.0) == 0
    backoff.failed("example", 1000.0)
    backoff.failed("example", 1001.0)
    assert backoff.down_for("example", 1041.0) == 41
    assert backoff.down_for("other", 1041.0) == 0  # per client
    assert backoff.ready("other", 1000.0)
    backoff.succeeded("example")
    assert backoff.down_for("example", 1041.0) == 0
    assert backoff.ready("example", 1001.5)
    assert backoff.failed("example", 1100.0) == 1
    assert backoff.down_for("example", 1110.0) == 10


# A client that stays unreachable.


async def test_a_job_for_a_client_unreachable_for_client_lost_after_fails_and_frees_its_slot(nodes):
    client = nodes("client")
    server = nodes("server", client_lost_after=30, **services(client, max_runs=1))
    client.stop()
    first = (await upload(server, script("exit 0\n")))[1]["id"]
    second = (await upload(server, script("exit 0\n")))[1]["id"]
    now = time.time()

    assert await send_queued(server.ctx, now) == 1
    await server.settle()
    job = Job.get_by_id(first)
    assert job.status == "Queued"
    assert "waiting for the example client" in job.message
    assert await send_queued(server.ctx, now + 0.5) == 0  # backoff

    assert await send_queued(server.ctx, now + 40) == 1
    await server.settle()
    job = Job.get_by_id(first)
    assert job.status == "Failed"
    assert "could not reach the example client for 40 s" in job.message
    assert job_status(second) == "Queued"
    assert next_jobs(server.config.services["example"]) == [(second, 1)]  # the slot is free
    assert await send_queued(server.ctx, now + 60) == 1
    await server.settle()
    assert job_status(second) == "Failed"


# Walltime.


async def test_a_job_over_its_services_timeout_fails_with_timeout_and_its_processes_are_gone(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client, timeout=1))
    _, body = await upload(server, script("sleep 3103 &\nwait\n"))
    await wait_for(lambda: job_status(body["id"]) in DONE)
    code, answer = await server.json(f"/download/{body['id']}")
    assert (code, answer["status"]) == (200, "Failed")
    assert "timeout" in answer["message"]
    payload = Payload.get_by_id(Job.get_by_id(body["id"]).dest_id)
    assert payload.walltime == 1
    await wait_for(lambda: not job_processes("sleep", "3103"))
    assert not processes.alive(payload.pid, payload.started_at)


async def test_a_job_that_ends_within_its_services_timeout_completes(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client, timeout=1))
    _, body = await upload(server, script("echo done > out.txt\n"))
    await wait_for(lambda: job_status(body["id"]) in DONE)
    assert job_status(body["id"]) == "Completed"


async def test_a_submit_with_a_timeout_stores_the_walltime_and_the_run_fails_with_timeout(client):
    payload_id = await submitted(client, script("sleep 60\n"), timeout="1")
    assert Payload.get_by_id(payload_id).walltime == 1.0
    now = time.time()
    assert await start_prepared(client.ctx, now) == 1
    assert Payload.get_by_id(payload_id).deadline == now + 1
    await wait_for(lambda: payload_status(payload_id) in DONE)
    payload = Payload.get_by_id(payload_id)
    assert payload.status == "Failed"
    assert payload.message.startswith("timeout")
    assert not processes.alive(payload.pid, payload.started_at)


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "inf", "nan", "1e999"])
async def test_a_submit_with_an_invalid_timeout_is_400_and_leaves_nothing(client, raw):
    code, answer = await submit(client, script("exit 0\n"), timeout=raw)
    assert code == 400
    assert "timeout" in answer["message"]
    assert Payload.select().count() == 0
    assert data_files(client.config.data_path) == []
    assert digit_folders(client.config.data_path) == []


# Adoption of runs that a previous client process left Running.


async def test_a_running_payload_without_pid_process_or_exit_status_goes_back_to_prepared_and_runs_once(
    client, tmp_path
):
    payload_id = await submitted(client, script(LEDGER_LINE))
    assert transition(Payload, payload_id, Status.PREPARED, Status.RUNNING, time.time())  # pid stays 0
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    assert payload_status(payload_id) == "Prepared"

    assert await start_prepared(client.ctx, time.time()) == 1
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert payload_status(payload_id) == "Completed"
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    assert len(ledger_lines(tmp_path)) == 1


def spawn_as_a_previous_client(client: Node, payload_id: int):
    """Start a payload's run the way the runner does (a client that stopped before it recorded the pid)."""
    return local.launch(client.ctx, Payload.get_by_id(payload_id), sandbox.of(client.ctx).free_user([]))


async def test_a_running_payload_without_pid_whose_run_is_alive_is_found_and_not_started_twice(client, tmp_path):
    payload_id = await submitted(client, script(WAIT_FOR_GO + LEDGER_LINE + "exit 5\n"))
    assert transition(Payload, payload_id, Status.PREPARED, Status.RUNNING, time.time())
    process = spawn_as_a_previous_client(client, payload_id)
    exited = process.wait_for_exit(raise_error=False)
    # A restarted client finds the wrapper by its command line, which reads empty until the kernel has
    # finished exec'ing it, a while after Popen returns on a loaded machine (seen: 8 in 300 starts with both
    # cores busy). A client that restarts takes far longer than that; this test, which looks at once, waits.
    await wait_for(lambda: processes.find_run(payloads.exit_file(client.ctx, payload_id)))

    assert await start_prepared(client.ctx, time.time()) == 0
    await wait_for(lambda: Payload.get_by_id(payload_id).pid == process.pid)
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.started_at) == ("Running", processes.start_time(process.pid))
    assert await start_prepared(client.ctx, time.time()) == 0

    (payloads.folder(client.ctx, payload_id) / "go").touch()
    await wait_for(lambda: payload_status(payload_id) in DONE)
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.exit_code) == ("Failed", 5)
    assert "exited with code 5" in payload.message
    assert await exited == 5
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    assert len(ledger_lines(tmp_path)) == 1


async def test_an_adopted_run_past_its_deadline_is_killed_and_fails_with_timeout(client):
    payload_id = await submitted(client, script("sleep 3104 &\nwait\n"), timeout="30")
    assert transition(Payload, payload_id, Status.PREPARED, Status.RUNNING, time.time())
    process = spawn_as_a_previous_client(client, payload_id)
    exited = process.wait_for_exit(raise_error=False)
    await wait_for(lambda: job_processes("sleep", "3104"))
    Payload.update(pid=process.pid, started_at=processes.start_time(process.pid), deadline=time.time() - 1).where(
        Payload.id == payload_id
    ).execute()

    assert await start_prepared(client.ctx, time.time()) == 0
    await wait_for(lambda: payload_status(payload_id) in DONE)
    payload = Payload.get_by_id(payload_id)
    assert payload.status == "Failed"
    assert payload.message.startswith("timeout")
    assert await exited != 0
    await wait_for(lambda: not job_processes("sleep", "3104"))
