"""Failing over between a service's clients (server side, real apps on loopback): a send that cannot have
reached a client lets the job go to another one; a send that may have reached it keeps the job bound to that
client; a job its client lost runs again as a new attempt when its service allows."""

import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler, stream_request_body

from orch import members, tracking
from orch.config import ClientConfig
from orch.dispatch import claim
from orch.models import Abandoned, Job, JobEvent, Payload
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import Node, job_status, multipart, payload_status, round_of, script, upload, wait_for

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def closed_port() -> Iterator[str]:
    """The address of a loopback port that refuses connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@dataclass
class FailingClient:
    """A client at `url` that fails every submit; `posts`: how many it received."""

    url: str
    posts: int = 0


@pytest.fixture
def failing(io_loop) -> Iterator[FailingClient]:
    """A client that reads a whole submit, then fails (500): it may have made a payload. It counts the submits."""
    received = []

    @stream_request_body
    class Submit(RequestHandler):
        def data_received(self, chunk: bytes) -> None:
            received.append(chunk)

        def post(self) -> None:
            fake.posts += 1
            self.set_status(500)
            self.finish('{"message": "disk full"}')

    sock, port = bind_unused_port()
    fake = FailingClient(f"http://127.0.0.1:{port}")
    server = HTTPServer(Application([(r"/submit", Submit)], log_function=lambda handler: None))
    server.add_socket(sock)
    yield fake
    server.stop()


async def test_a_send_that_could_not_connect_leaves_the_job_free_to_go_to_another_client(nodes, closed_port):
    client = nodes("client", tasks=True, slots=1)
    server = nodes("server", service_example_clients=f"{closed_port},{client.url}")
    now = time.time()
    _, body = await upload(server, script("exit 0\n"))
    await round_of(server, send_queued, now)  # to the client that says nothing of its slots: it counts 10
    job = Job.get_by_id(body["id"])
    assert (job.status, job.client) == ("Queued", None)  # nothing of it can be there
    assert job.message.startswith(f"waiting for the example client at {closed_port}")
    await round_of(server, send_queued, now)  # that client waits out its backoff: the other takes the job
    assert (job_status(job.id), Job.get_by_id(job.id).client) == ("Submitted", client.url)


async def bound_to_failing(server: Node, good: Node, now: float) -> int:
    """Upload a job and send it to `failing` (the good client waits out a failure in that round); its id."""
    _, body = await upload(server, script("exit 0\n"))
    tracking.failed(server.ctx, ClientConfig.at(good.url), now, "busy")
    await round_of(server, send_queued, now)
    tracking.answered(server.ctx, ClientConfig.at(good.url))
    return body["id"]


async def test_a_send_that_may_have_reached_its_client_keeps_the_job_bound_to_it_until_it_is_lost(nodes, failing):
    client = nodes("client", tasks=True)
    server = nodes("server", service_example_clients=f"{failing.url},{client.url}", client_lost_after=10)
    now = time.time()
    job_id = await bound_to_failing(server, client, now)
    job = Job.get_by_id(job_id)
    assert (job.status, job.client) == ("Queued", failing.url)
    assert "disk full" in job.message
    assert failing.posts == 1
    await round_of(server, send_queued, now + 0.5)  # its backoff is not over: it waits, though the other is free
    assert (job_status(job_id), Job.get_by_id(job_id).client) == ("Queued", failing.url)
    assert failing.posts == 1
    await round_of(server, send_queued, now + 1)  # sent to the same client again (and it fails again)
    assert (job_status(job_id), Job.get_by_id(job_id).client) == ("Queued", failing.url)
    assert failing.posts == 2
    await round_of(server, send_queued, now + 20)  # failing for longer than CLIENT_LOST_AFTER
    job = Job.get_by_id(job_id)
    assert job.status == "Failed"
    assert job.message.startswith(f"could not reach the example client for 20 s at {failing.url}")


async def test_with_retry_lost_a_job_bound_to_a_lost_client_runs_again_elsewhere_as_its_next_attempt(nodes, failing):
    client = nodes("client", tasks=True)
    server = nodes(
        "server",
        service_example_clients=f"{failing.url},{client.url}",
        client_lost_after=10,
        service_example_retry_lost=1,
    )
    now = time.time()
    job_id = await bound_to_failing(server, client, now)
    await round_of(server, send_queued, now + 20)
    job = Job.get_by_id(job_id)
    assert (job.status, job.attempt, job.client) == ("Queued", 2, None)
    assert job.message.endswith("queued again (attempt 2 of 2)")
    await round_of(server, send_queued, now + 20)
    job = Job.get_by_id(job_id)
    assert (job.status, job.client) == ("Submitted", client.url)
    assert Payload.get_by_id(job.dest_id).job_key == f"{job.folder}.2"
    await wait_for(lambda: payload_status(job.dest_id) == "Completed")
    await round_of(server, poll_dispatched, now + 20)
    assert job_status(job_id) == "Completed"


@pytest.mark.parametrize("retry_lost", [0, 1])
async def test_a_job_its_client_no_longer_knows_ends_unknown_or_runs_again(nodes, retry_lost):
    client = nodes("client")
    server = nodes("server", service_example_clients=client.url, service_example_retry_lost=retry_lost)
    _, body = await upload(server, script("exit 0\n"))
    now = time.time()
    await round_of(server, send_queued, now)
    first = Job.get_by_id(body["id"])
    Payload.delete_by_id(first.dest_id)  # the client lost it, with its history and files
    shutil.rmtree(client.config.data_path / str(first.dest_id))
    await round_of(server, poll_dispatched, now)
    job = Job.get_by_id(first.id)
    if not retry_lost:
        assert (job.status, job.message) == (
            "Unknown",
            f"the client no longer knows this job (payload {first.dest_id})",
        )
        return
    assert (job.status, job.attempt) == ("Queued", 2)
    await round_of(server, send_queued, now)
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(Job.get_by_id(first.id).dest_id) == "Completed")
    await round_of(server, poll_dispatched, now)
    assert job_status(first.id) == "Completed"
    history = [(event.src, event.dst) for event in JobEvent.select().where(JobEvent.job == first.id)]
    assert ("Submitted", "Queued") in history and history[-1][1] == "Completed"


async def test_a_payload_left_on_a_client_lost_for_longer_than_max_age_is_given_up(nodes, closed_port):
    server = nodes("server", service_example_clients=closed_port, max_age=100)
    _, body = await upload(server, script("exit 0\n"))
    now = time.time()
    Abandoned.create(job=body["id"], client=closed_port, dest_id=1, dest_instance=None, job_key="k", at=now)
    assert await poll_dispatched(server.ctx, now + 50) == 1  # tried: the client is still out of reach
    await server.settle()
    assert Abandoned.select().count() == 1
    assert await poll_dispatched(server.ctx, now + 101) == 0
    assert Abandoned.select().count() == 0


async def test_a_job_being_sent_when_the_server_stopped_goes_back_to_that_client_and_runs_once(nodes):
    """The send reached the client, then the server stopped before recording it. Restarted, the server sends the
    job to that client again (the key finds the payload it made), though another client has more free slots."""
    client = nodes("client", orch_token=TOKEN, slots=1)
    first = nodes("server", orch_token=TOKEN, service_example_clients=client.url)
    _, body = await upload(first, script("exit 0\n"))
    now = time.time()
    assert await claim(first.ctx, now) == [body["id"]]  # Processing, placed on the client...
    job = Job.get_by_id(body["id"])
    data, content_type = multipart({"job_key": job.folder}, script("exit 0\n"))
    code, made = await client.json(
        "/submit", method="POST", body=data, headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
    )
    assert code == 200  # ...which took it, and the server stops before it hears so
    first.stop()

    server = nodes("server", orch_token=TOKEN, service_example_clients=client.url)
    assert (job_status(job.id), Job.get_by_id(job.id).client) == ("Queued", client.url)  # bound to it
    members.record(server.ctx, {"url": "http://127.0.0.1:9", "services": ["example"], "slots": 100}, now)
    await round_of(server, send_queued, now)
    job = Job.get_by_id(job.id)
    assert (job.status, job.client, job.dest_id) == ("Submitted", client.url, made["id"])
    assert Payload.select().count() == 1
