"""Server processes sharing one PostgreSQL database (`orch.peers`): leases, liveness, what a dead process leaves,
fair claims and single cleaning across processes. Two server apps run in this process on one database."""

import asyncio
import time

import pytest

from orch import jobs, ownership, peers, tracking
from orch.models import Job, Lease, Server
from orch.states import Status
from tasks.cleaner import clean_jobs
from tasks.heartbeat import heartbeat
from tasks.sender import send_queued
from tests.conftest import multipart, script, services, upload, wait_for


@pytest.fixture
def pair(postgres_url, nodes, client):
    """Two server processes on one PostgreSQL database and one data folder, with service `example` on `client`."""

    def start(**settings):
        return [nodes("server", db_url=postgres_url, **services(client, **settings)) for _ in range(2)]

    return start


@pytest.mark.both_databases
def test_a_lease_is_held_by_one_process_and_taken_over_once_it_lapses(nodes, client, server_database):
    one = nodes("server", **services(client))
    other = type(one.ctx)(one.config)  # another process on the same database: another id
    now = time.time()
    assert peers.hold(one.ctx, "client x", now)
    assert peers.hold(one.ctx, "client x", now + 1)  # renewed
    assert not peers.hold(other, "client x", now + 1 + peers.LEASE - 0.1)
    assert peers.hold(other, "client x", now + 1 + peers.LEASE + 0.1)  # lapsed: taken over
    assert not peers.hold(one.ctx, "client x", now + 2 + peers.LEASE)
    assert Lease.get_by_id("client x").holder == other.process


async def test_only_one_process_follows_each_client_and_the_other_takes_over_when_it_stops(pair):
    first, second = pair()
    address = first.config.services["example"].clients[0].address
    now = time.time()
    assert await heartbeat(first.ctx, now) == 0
    assert tracking.follow_clients(first.ctx, now) == 1 and tracking.follow_clients(second.ctx, now) == 0
    first.stop()  # a clean stop gives its leases back at once
    assert tracking.follow_clients(second.ctx, now + 0.5) == 1
    assert Lease.get_by_id(f"client {address}").holder == second.ctx.process


async def test_a_process_alone_on_its_database_follows_its_clients_without_writing_leases(server):
    await upload(server, script("exit 0\n"))
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    now = time.time()
    assert tracking.follow_clients(server.ctx, now) == 1
    assert tracking.poll_due(server.ctx, now) == 1
    await server.settle()
    assert Lease.select().count() == 0


async def test_a_job_left_half_sent_by_a_dead_process_goes_back_to_the_queue_once_it_is_found_dead(pair):
    first, second = pair()
    _, body = await upload(first, script("exit 0\n"))
    now = time.time()
    assert jobs.move(first.ctx, body["id"], Status.QUEUED, Status.PROCESSING, owner=first.ctx.process)
    assert jobs.release_orphans(second.ctx, now) == 0  # its owner is alive
    Server.update(seen_at=now - 2 * peers.LEASE).where(Server.id == first.ctx.process).execute()  # it died
    assert jobs.release_orphans(second.ctx, now) == 1
    job = Job.get_by_id(body["id"])
    assert (job.status, job.message) == ("Queued", "the server stopped while sending it")


async def test_a_process_starting_leaves_alone_an_upload_that_another_is_receiving(postgres_url, nodes, client):
    first = nodes("server", db_url=postgres_url, **services(client))
    body, content_type = multipart({"user_id": "1", "service": "example"}, script("exit 0\n"))
    go_on = asyncio.Event()

    async def produce(write) -> None:
        await write(body[:-10])
        await go_on.wait()
        await write(body[-10:])

    uploading = asyncio.ensure_future(
        first.json("/upload", method="POST", body_producer=produce, headers={"Content-Type": content_type})
    )
    await wait_for(lambda: list(first.config.data_path.rglob("run.sh")))  # being received
    nodes("server", db_url=postgres_url, **services(client))  # it recovers the shared data folder as it starts
    go_on.set()
    code, answer = await uploading
    assert code == 201
    assert (jobs.folder(first.ctx, Job.get_by_id(answer["id"])) / "run.sh").read_bytes() == b"exit 0\n"
    assert not (first.config.data_path / ownership.QUARANTINE).exists()


async def test_claims_by_two_processes_take_turns_between_users_as_one_would(pair):
    first, second = pair(max_runs=1)
    ids = {}
    for user in (1, 1, 1, 2, 2, 2):
        _, body = await upload(first, script("exit 0\n"), user_id=user)
        ids[body["id"]] = user
    served = []
    for round_ in range(6):
        node = (first, second)[round_ % 2]
        assert await send_queued(node.ctx, time.time()) == 1
        await node.settle()
        (job,) = Job.select().where(Job.status.in_([Status.SUBMITTED, Status.RUNNING]))
        served.append(ids[job.id])
        assert jobs.move(node.ctx, job.id, Status(job.status), Status.FAILED, "stopped by the test")
    assert served == [1, 2, 1, 2, 1, 2]


async def test_two_processes_cleaning_at_once_remove_each_job_once(postgres_url, nodes, client, monkeypatch):
    first, second = (nodes("server", db_url=postgres_url, max_age=1, **services(client)) for _ in range(2))
    ids = []
    for _ in range(3):
        _, body = await upload(first, script("exit 0\n"))
        ids.append(body["id"])
        assert jobs.move(first.ctx, body["id"], Status.QUEUED, Status.KILLED, "by the test")
    later = time.time() + 10
    listed = jobs.expired(later - 1, 10)
    assert sorted(job.id for job in listed) == sorted(ids)
    # Both processes look at the same moment, before either cleaned anything: each finds all three.
    monkeypatch.setattr(jobs, "expired", lambda before, limit: list(listed))
    assert sum(await asyncio.gather(clean_jobs(first.ctx, later), clean_jobs(second.ctx, later))) == 3
    for job_id in ids:
        assert Job.get_by_id(job_id).status == "Cleaned"
        assert not jobs.folder(first.ctx, Job.get_by_id(job_id)).exists()


async def test_a_terminate_on_one_process_waits_for_the_send_of_another_to_end(pair):
    first, second = pair()
    _, body = await upload(first, script("exit 0\n"))
    assert jobs.move(first.ctx, body["id"], Status.QUEUED, Status.PROCESSING, owner=first.ctx.process)
    terminating = asyncio.ensure_future(second.json(f"/terminate/{body['id']}", method="POST", body=b""))
    await asyncio.sleep(0.3)
    assert not terminating.done()  # not a 409: the job is only being sent, by the other process
    assert jobs.move(first.ctx, body["id"], Status.PROCESSING, Status.QUEUED, "its client did not answer")
    code, answer = await terminating
    assert (code, answer["status"]) == (200, "Killed")
