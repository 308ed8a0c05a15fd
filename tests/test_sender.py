"""The server's sender tick (`tasks.sender.send_queued`) against a real client app over loopback HTTP."""

import logging
import socket
import time
from collections.abc import Iterator

import pytest
from tornado.httpserver import HTTPServer

from handlers import make_app
from orch.models import Job, Payload
from tasks.sender import send_queued
from tests.conftest import data_files, job_status, script, services, upload

pytestmark = pytest.mark.both_databases

FILES = {**script("echo hello > out.txt\n"), "data.txt": b"some input"}


@pytest.fixture
def closed_port() -> Iterator[socket.socket]:
    """A loopback socket bound to a port but not listening: connections to it are refused until it listens."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def routed_to(port: int) -> dict[str, str]:
    """Settings that route service `example` to whatever listens (or not) on `port`."""
    base = f"http://127.0.0.1:{port}"
    return {"service_example_upload_url": f"{base}/submit", "service_example_download_url": f"{base}/retrieve"}


def sender_warnings(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "orch.dispatch" and record.levelno == logging.WARNING
    ]


async def test_a_queued_job_is_claimed_then_sent_and_the_client_has_its_files(server, client):
    _, body = await upload(server, FILES)
    now = time.time()
    assert await send_queued(server.ctx, now) == 1
    assert job_status(body["id"]) == "Processing"
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert job.status == "Submitted"
    payload = Payload.get_by_id(job.dest_id)  # the client's payload id
    assert payload.status == "Prepared"
    folder = client.config.data_path / str(payload.id)
    assert data_files(folder) == ["data.txt", "run.sh"]
    assert {name: (folder / name).read_bytes() for name in FILES} == FILES
    assert await send_queued(server.ctx, now) == 0  # nothing is sent twice


async def test_the_quota_limits_how_many_jobs_a_round_claims(nodes, client):
    server = nodes("server", **services(client, max_runs=2))
    ids = [(await upload(server, FILES))[1]["id"] for _ in range(5)]
    now = time.time()
    assert await send_queued(server.ctx, now) == 2
    await server.settle()
    assert [job_status(job_id) for job_id in ids] == ["Submitted"] * 2 + ["Queued"] * 3
    assert Payload.select().count() == 2
    assert await send_queued(server.ctx, now + 1) == 0  # both slots are still taken


async def test_a_client_that_is_down_puts_the_job_back_in_the_queue_and_the_service_in_backoff(
    nodes, closed_port, caplog
):
    server = nodes("server", **routed_to(closed_port.getsockname()[1]))
    _, body = await upload(server, FILES)
    now = time.time()
    assert await send_queued(server.ctx, now) == 1
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert (job.status, job.dest_id) == ("Queued", None)
    assert "waiting for the example client" in job.message
    assert len(sender_warnings(caplog)) == 1
    assert await send_queued(server.ctx, now) == 0  # backing off
    assert job_status(body["id"]) == "Queued"


async def test_a_client_that_is_down_is_tried_again_one_second_later(nodes, closed_port):
    server = nodes("server", **routed_to(closed_port.getsockname()[1]))
    _, body = await upload(server, FILES)
    now = time.time()
    assert await send_queued(server.ctx, now) == 1
    await server.settle()
    assert job_status(body["id"]) == "Queued"
    assert await send_queued(server.ctx, now + 1) == 1  # the first backoff lasts 1 s
    await server.settle()
    assert job_status(body["id"]) == "Queued"


async def test_a_client_that_refuses_the_job_with_a_4xx_fails_it_with_the_reason(nodes, client):
    server = nodes(
        "server", service_example_upload_url=f"{client.url}/nope", service_example_download_url=f"{client.url}/retrieve"
    )
    _, body = await upload(server, FILES)
    now = time.time()
    assert await send_queued(server.ctx, now) == 1
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert (job.status, job.dest_id) == ("Failed", None)
    assert "refused" in job.message and "404" in job.message and "/nope" in job.message
    assert Payload.select().count() == 0
    _, second = await upload(server, FILES)
    assert await send_queued(server.ctx, now) == 1  # a refusal is about the job, not a reason to back off
    assert job_status(second["id"]) == "Processing"
    await server.settle()


async def test_backoff_starts_again_from_one_second_after_a_success(nodes, client, closed_port, caplog):
    server = nodes("server", **routed_to(closed_port.getsockname()[1]))
    _, first = await upload(server, FILES)
    now = time.time()
    assert await send_queued(server.ctx, now) == 1
    await server.settle()
    assert job_status(first["id"]) == "Queued"

    # The client comes up on that port: the next round after the backoff sends the job.
    closed_port.setblocking(False)
    closed_port.listen(128)
    revived = HTTPServer(make_app(client.ctx))
    revived.add_socket(closed_port)
    try:
        assert await send_queued(server.ctx, now + 60) == 1
        await server.settle()
        assert job_status(first["id"]) == "Submitted"
    finally:
        revived.stop()  # and the client is down again
        await revived.close_all_connections()

    _, second = await upload(server, FILES)
    assert await send_queued(server.ctx, now + 60) == 1
    await server.settle()
    assert job_status(second["id"]) == "Queued"
    first_failure, second_failure = sender_warnings(caplog)
    assert "next try in 1 s" in first_failure
    assert "next try in 1 s" in second_failure  # not 2 s: the success reset the count
