"""The server's getter tick (`tasks.getter.poll_dispatched`) against a real client app over loopback HTTP."""

import asyncio
import io
import logging
import time
import zipfile

import pytest

from orch import jobs
from orch.models import Job, Payload, transition
from orch.states import Status
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import Node, job_status, payload_status, script, services, upload, wait_for

pytestmark = pytest.mark.both_databases

WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.01; done\n"  # a run that lasts until the test creates `go`


async def dispatched(server: Node, files: dict[str, bytes]) -> tuple[int, int]:
    """Upload a job and send it to the client; returns the job's id and its payload's id on the client."""
    _, body = await upload(server, files)
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert job.status == "Submitted"
    return job.id, job.dest_id


async def run_on_client(client: Node, payload_id: int, until: set[str]) -> None:
    """Run the client's runner tick and wait until the payload reaches one of the statuses `until`."""
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in until)


async def poll(server: Node, now: float | None = None) -> int:
    """One getter round at `now`, waiting for the polls it started; returns how many it started."""
    started = await poll_dispatched(server.ctx, time.time() if now is None else now)
    await server.settle()
    return started


async def test_a_job_still_prepared_on_its_client_stays_submitted(server, client):
    job_id, payload_id = await dispatched(server, script("exit 0\n"))
    assert payload_status(payload_id) == "Prepared"
    assert await poll(server) == 1
    assert Job.get_by_id(job_id).status == "Submitted"


async def test_a_job_running_on_its_client_becomes_running(server, client):
    job_id, payload_id = await dispatched(server, script(WAIT_FOR_GO))
    await run_on_client(client, payload_id, {"Running"})
    assert await poll(server) == 1
    assert Job.get_by_id(job_id).status == "Running"
    assert await poll(server) == 1  # Running jobs are polled on
    (client.config.data_path / str(payload_id) / "go").touch()
    await wait_for(lambda: payload_status(payload_id) == "Completed")
    assert await poll(server) == 1
    assert Job.get_by_id(job_id).status == "Completed"


async def test_a_completed_job_has_its_zip_saved_in_the_job_folder_and_is_completed(server, client):
    job_id, payload_id = await dispatched(server, script("echo hello > out.txt\n"))
    await run_on_client(client, payload_id, {"Completed"})
    assert await poll(server) == 1
    job = Job.get_by_id(job_id)
    assert (job.status, job.message) == ("Completed", "")
    result = jobs.result_file(server.ctx, job)
    archive = zipfile.ZipFile(result)
    assert archive.read("out.txt") == b"hello\n"
    assert {"run.sh", "run.log"} <= set(archive.namelist())
    response = await server.fetch(f"/download/{job_id}")
    assert (response.code, response.headers["Content-Type"]) == (200, "application/zip")
    assert zipfile.ZipFile(io.BytesIO(response.body)).read("out.txt") == b"hello\n"
    assert await poll(server) == 0  # a finished job is not polled any more


@pytest.mark.parametrize(
    ("files", "status"), [(script("exit 3\n"), "Failed"), ({"input.txt": b"x"}, "Invalid")], ids=["failed", "invalid"]
)
async def test_a_job_that_failed_or_was_invalid_on_its_client_gets_that_status_and_the_clients_message(
    server, client, files, status
):
    job_id, payload_id = await dispatched(server, files)
    await run_on_client(client, payload_id, {status})
    assert await poll(server) == 1
    job, payload = Job.get_by_id(job_id), Payload.get_by_id(payload_id)
    assert payload.message
    assert (job.status, job.message) == (status, payload.message)
    assert not jobs.result_file(server.ctx, job).exists()
    code, answer = await server.json(f"/download/{job_id}")
    assert (code, answer) == (200, {"id": job_id, "status": status, "message": payload.message})


async def test_a_job_killed_on_its_client_is_killed(server, client):
    job_id, payload_id = await dispatched(server, script(WAIT_FOR_GO))
    await run_on_client(client, payload_id, {"Running"})
    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"]) == (200, "Killed")
    assert await poll(server) == 1
    assert Job.get_by_id(job_id).status == "Killed"


async def test_a_job_its_client_no_longer_knows_becomes_unknown_with_the_reason(server, client):
    job_id, payload_id = await dispatched(server, script("exit 0\n"))
    Payload.delete().where(Payload.id == payload_id).execute()  # the client lost it
    code, _ = await client.json(f"/retrieve/{payload_id}")
    assert code == 404
    assert await poll(server) == 1
    job = Job.get_by_id(job_id)
    assert job.status == "Unknown"
    assert "no longer knows" in job.message and str(payload_id) in job.message
    _, answer = await server.json(f"/download/{job_id}")
    assert (answer["status"], answer["message"]) == ("Unknown", job.message)
    assert await poll(server) == 0


async def test_a_job_its_client_no_longer_knows_ends_unknown_even_if_an_event_marked_it_running_meanwhile(
    server, client
):
    """The answer comes after the client's event stream moved the job on (Submitted to Running): it is about the
    same attempt, so it still ends the job."""
    job_id, payload_id = await dispatched(server, script("exit 0\n"))
    Payload.delete().where(Payload.id == payload_id).execute()  # the client lost it
    assert await poll_dispatched(server.ctx, time.time()) == 1
    await asyncio.sleep(0)  # the poll has read the job and waits for the client's answer
    assert transition(Job, job_id, Status.SUBMITTED, Status.RUNNING, time.time())
    await server.settle()
    job = Job.get_by_id(job_id)
    assert job.status == "Unknown" and "no longer knows" in job.message


async def test_a_client_that_is_down_leaves_the_job_as_it_is_and_it_is_polled_again_after_a_backoff(
    server, client, caplog
):
    job_id, _ = await dispatched(server, script("exit 0\n"))
    before = Job.get_by_id(job_id)
    client.stop()
    now = time.time()
    assert await poll(server, now) == 1
    after = Job.get_by_id(job_id)
    assert (after.status, after.message, after.updated_at) == ("Submitted", before.message, before.updated_at)
    assert any(
        record.name == "orch.tracking" and "could not be reached" in record.getMessage() for record in caplog.records
    )
    assert await poll(server, now + 0.5) == 0  # the client is in backoff
    assert await poll(server, now + 1) == 1


async def test_a_client_unreachable_for_client_lost_after_ends_its_jobs_unknown(nodes, caplog):
    client = nodes("client")
    server = nodes("server", client_lost_after=30, **services(client))
    job_id, _ = await dispatched(server, script("exit 0\n"))
    client.stop()
    now = time.time()
    assert await poll(server, now) == 1
    assert job_status(job_id) == "Submitted"
    assert await poll(server, now + 29) == 1
    assert job_status(job_id) == "Submitted"
    assert await poll(server, now + 40) == 1  # the first try after CLIENT_LOST_AFTER (and the backoff)
    job = Job.get_by_id(job_id)
    assert job.status == "Unknown"
    assert job.message.startswith("lost contact with the example client for 40 s")


async def test_a_poll_in_flight_is_not_started_twice(server, client, caplog):
    caplog.set_level(logging.DEBUG, logger="tornado.access")
    job_id, payload_id = await dispatched(server, script("exit 0\n"))
    now = time.time()
    assert await poll_dispatched(server.ctx, now) == 1
    assert await poll_dispatched(server.ctx, now) == 0
    assert server.ctx.inflight.keys("poll") == [("poll", job_id)]
    await server.settle()
    retrieves = [
        record
        for record in caplog.records
        if record.name == "tornado.access" and f"GET /retrieve/{payload_id} " in record.getMessage()
    ]
    assert len(retrieves) == 1
    assert await poll_dispatched(server.ctx, now) == 1  # once it is done, the next round polls again
    await server.settle()
