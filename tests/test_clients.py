"""Several clients per service: a server app driven here, and real client processes (`orchestrator.py client`)
on loopback, killed and restarted as a node would be.

A job's run.sh writes where it runs to a ledger, then waits for a `go` file in its client's folder: each
client's runs are let go separately."""

import io
import sqlite3
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from bench.cluster import Node as ClientProcess
from bench.cluster import end_runs
from orch import placement, tracking
from orch.models import Abandoned, Job, JobEvent
from tasks.getter import poll_dispatched
from tasks.sender import send_queued
from tests.conftest import job_status, round_of, script, upload, wait_for

TOKEN = "s3cret-token-for-tests"
LOST_AFTER = 10


@pytest.fixture
def remote_clients(tmp_path, shared):
    """Start client processes: `remote_clients(3, slots=2)`; all stopped, and their runs ended, after the test.
    Their jobs may write to `shared` (the ledger, and the gates of `let_go`)."""
    started: list[ClientProcess] = []

    def start(count: int, **settings) -> list[ClientProcess]:
        env = {"ORCH_TOKEN": TOKEN, "KILL_GRACE": "1", "RUNNER_INTERVAL": "0.05", "JOB_WRITE_PATHS": str(shared)}
        env.update({name.upper(): str(value) for name, value in settings.items()})
        for _ in range(count):
            started.append(ClientProcess("client", tmp_path / f"client{len(started)}", env))
            started[-1].start()
        return started[-count:]

    yield start
    for client in started:
        client.stop()
        end_runs(client)


def gated(shared: Path) -> dict[str, bytes]:
    """A run.sh that writes its folder to the ledger in `shared`, waits for its client's gate there (see
    `let_go`), then writes where.txt. (Its folder is <client>/data/client/<payload>: its client is named by it.)"""
    return script(
        f'echo "$PWD" >> {shared}/ledger\n'
        f'while [ ! -e "{shared}/go-$(basename "$(dirname "$(dirname "$(dirname "$PWD")")")")" ]; do sleep 0.01; done\n'
        'echo "$PWD" > where.txt\n'
    )


def let_go(shared: Path, *clients: ClientProcess) -> None:
    """Open the gates of these clients' jobs."""
    for client in clients:
        (shared / f"go-{client.folder.name}").touch()


def listed(clients: list[ClientProcess]) -> str:
    return ",".join(client.url for client in clients)


def on(clients: list[ClientProcess], address: str) -> ClientProcess:
    return next(client for client in clients if client.url == address)


def payload(client: ClientProcess, dest_id: int) -> dict:
    """The payload as its client's database holds it."""
    with sqlite3.connect(client.folder / "client.sqlite") as db:
        status, job_key = db.execute('SELECT "status", "job_key" FROM "payloads" WHERE "id" = ?', (dest_id,)).fetchone()
    return {"status": status, "job_key": job_key}


async def test_jobs_fill_each_clients_free_slots_as_its_status_says_and_no_more(
    nodes, remote_clients, tmp_path, shared
):
    clients = remote_clients(1, slots=1) + remote_clients(1, slots=2) + remote_clients(1, slots=3)
    server = nodes(
        "server",
        tasks=True,
        orch_token=TOKEN,
        service_example_clients=listed(clients),
        service_example_max_runs=10,
        service_example_runs_per_user=10,
    )
    await wait_for(lambda: all(placement.said_slots(server.ctx, client.url) for client in clients))
    ledger = shared / "ledger"
    ids = [(await upload(server, gated(shared), user_id=n % 3))[1]["id"] for n in range(8)]
    await wait_for(lambda: sum(job_status(job_id) == "Running" for job_id in ids) == 6)
    placed = Counter(Job.get_by_id(job_id).client for job_id in ids)
    assert placed == {clients[0].url: 1, clients[1].url: 2, clients[2].url: 3, None: 2}  # two wait in the queue
    let_go(shared, clients[0])  # its one slot frees: the two queued jobs go through it, one after the other
    await wait_for(lambda: sum(job_status(job_id) == "Completed" for job_id in ids) == 3)
    assert Counter(Job.get_by_id(job_id).client for job_id in ids)[clients[0].url] == 3
    let_go(shared, *clients)
    await wait_for(lambda: all(job_status(job_id) == "Completed" for job_id in ids))
    assert len(ledger.read_text().splitlines()) == 8  # each ran once


async def test_a_client_that_cannot_be_reached_is_passed_over_and_the_others_run_everything(
    nodes, remote_clients, tmp_path
):
    clients = remote_clients(3, slots=2)
    dead = clients[1]
    dead.kill()
    server = nodes("server", tasks=True, orch_token=TOKEN, service_example_clients=listed(clients))
    ids = [(await upload(server, script("echo $PWD > where.txt\n"), user_id=n))[1]["id"] for n in range(8)]
    await wait_for(lambda: all(job_status(job_id) == "Completed" for job_id in ids))
    assert {Job.get_by_id(job_id).client for job_id in ids} == {clients[0].url, clients[2].url}
    seen = {client["address"]: client for client in placement.clients(server.ctx, time.time())}
    assert not seen[dead.url]["up"] and "could not be reached" in seen[dead.url]["reason"]


async def test_every_call_for_a_job_goes_to_the_client_that_took_it_even_once_it_is_no_longer_listed(
    nodes, remote_clients, tmp_path, shared
):
    clients = remote_clients(2, slots=1)
    first = nodes("server", orch_token=TOKEN, service_example_clients=listed(clients))
    _, body = await upload(first, gated(shared))
    await round_of(first, send_queued, time.time())
    job = Job.get_by_id(body["id"])
    taker, other = on(clients, job.client), on(clients, next(c.url for c in clients if c.url != job.client))
    first.stop()

    server = nodes("server", orch_token=TOKEN, service_example_clients=other.url)  # the taker is no longer listed
    await wait_for(lambda: (taker.folder / "data" / "client" / str(job.dest_id) / "run.log").exists())
    response = await server.fetch(f"/download_partial/{job.id}")
    assert response.code == 200
    assert "run.sh" in zipfile.ZipFile(io.BytesIO(response.body)).namelist()
    code, answer = await server.json(f"/terminate/{job.id}", method="POST", body=b"")
    assert (code, answer["status"]) == (200, "Killed")
    assert payload(taker, job.dest_id)["status"] == "Killed"
    assert not list((other.folder / "data" / "client").glob("[0-9]*"))  # nothing ever went to the other


@pytest.mark.parametrize("retry_lost", [0, 1])
async def test_a_job_lost_with_its_client_ends_or_runs_again_elsewhere_and_the_copy_left_there_is_stopped(
    nodes, remote_clients, tmp_path, retry_lost, shared
):
    """The client running a job is killed and stays out of reach for CLIENT_LOST_AFTER: the job ends Unknown,
    or (RETRY_LOST) is queued again as its second attempt and runs on the other client. When the lost client
    comes back, still running its copy, that copy is stopped: it neither runs on nor gives the job a result."""
    clients = remote_clients(2, slots=1)
    server = nodes(
        "server",
        orch_token=TOKEN,
        service_example_clients=listed(clients),
        service_example_retry_lost=retry_lost,
        client_lost_after=LOST_AFTER,
    )
    ledger = shared / "ledger"
    _, body = await upload(server, gated(shared))
    t0 = time.time()
    await round_of(server, send_queued, t0)
    first = Job.get_by_id(body["id"])
    lost, other = on(clients, first.client), next(client for client in clients if client.url != first.client)
    await wait_for(lambda: ledger.exists())
    lost.kill()  # its run goes on without it

    await round_of(server, poll_dispatched, t0 + 1)  # out of reach...
    t1 = t0 + 1 + LOST_AFTER + 60
    await round_of(server, poll_dispatched, t1)  # ...for longer than CLIENT_LOST_AFTER
    job = Job.get_by_id(first.id)
    reason = f"lost contact with the example client for {LOST_AFTER + 60} s at {lost.url}"
    if retry_lost:
        assert (job.status, job.attempt, job.client, job.dest_id) == ("Queued", 2, None, None)
        assert job.message.startswith(reason) and job.message.endswith("queued again (attempt 2 of 2)")
        await round_of(server, send_queued, t1)
        job = Job.get_by_id(first.id)
        assert (job.status, job.client) == ("Submitted", other.url)
        assert payload(other, job.dest_id)["job_key"] == f"{job.folder}.2"
    else:
        assert (job.status, job.attempt) == ("Unknown", 1)
        assert job.message.startswith(reason)
    assert Abandoned.select().count() == 1

    lost.start()  # it comes back, still running the first attempt
    assert payload(lost, first.dest_id)["status"] == "Running"
    await round_of(server, poll_dispatched, t1 + 100)
    assert payload(lost, first.dest_id)["status"] == "Killed"
    assert Abandoned.select().count() == 0
    assert not (lost.folder / "data" / "client" / str(first.dest_id) / "where.txt").exists()

    let_go(shared, lost, other)
    if retry_lost:
        await wait_for(lambda: payload(other, Job.get_by_id(first.id).dest_id)["status"] == "Completed")
        await round_of(server, poll_dispatched, t1 + 100)
        assert job_status(first.id) == "Completed"
        response = await server.fetch(f"/download/{first.id}")
        where = zipfile.ZipFile(io.BytesIO(response.body)).read("where.txt").decode()
        assert where.startswith(str(other.folder))
        assert [line.startswith(str(lost.folder)) for line in ledger.read_text().splitlines()] == [True, False]
        reasons = [event.reason for event in JobEvent.select().where(JobEvent.job == first.id)]
        assert any("queued again (attempt 2 of 2)" in reason for reason in reasons)
    else:
        assert job_status(first.id) == "Unknown"
        assert len(ledger.read_text().splitlines()) == 1


async def test_a_second_attempt_sent_to_the_client_that_lost_the_first_is_a_new_payload_there(
    nodes, remote_clients, tmp_path, shared
):
    """The only client is lost, then comes back: the job's second attempt goes to it under its own key (it is
    not taken for the first), the first is stopped, and the second runs in the slot that frees."""
    (client,) = remote_clients(1, slots=1)
    server = nodes(
        "server",
        orch_token=TOKEN,
        service_example_clients=client.url,
        service_example_retry_lost=1,
        client_lost_after=LOST_AFTER,
    )
    ledger = shared / "ledger"
    _, body = await upload(server, gated(shared))
    t0 = time.time()
    await round_of(server, send_queued, t0)
    first = Job.get_by_id(body["id"])
    await wait_for(lambda: ledger.exists())
    client.kill()
    await round_of(server, poll_dispatched, t0 + 1)
    t1 = t0 + 1 + LOST_AFTER + 60
    await round_of(server, poll_dispatched, t1)
    assert job_status(first.id) == "Queued"

    client.start()
    await round_of(server, send_queued, t1 + 100)
    second = Job.get_by_id(first.id)
    assert (second.status, second.client, second.attempt) == ("Submitted", client.url, 2)
    assert second.dest_id != first.dest_id
    assert payload(client, second.dest_id)["status"] == "Prepared"  # its one slot is held by the first attempt
    await round_of(server, poll_dispatched, t1 + 100)
    assert payload(client, first.dest_id)["status"] == "Killed"
    await wait_for(lambda: payload(client, second.dest_id)["status"] == "Running")
    let_go(shared, client)
    await wait_for(lambda: payload(client, second.dest_id)["status"] == "Completed")
    await round_of(server, poll_dispatched, t1 + 100)
    assert job_status(first.id) == "Completed"
    assert (payload(client, first.dest_id)["job_key"], payload(client, second.dest_id)["job_key"]) == (
        first.folder,
        f"{first.folder}.2",
    )


async def test_an_earlier_attempt_that_ended_while_its_client_was_away_gives_the_job_nothing(
    nodes, remote_clients, tmp_path, shared
):
    """The lost client's copy of the job runs to its end while the job runs again elsewhere; when that client
    comes back and reports it (events, answers), the job keeps waiting for its own attempt's result."""
    clients = remote_clients(2, slots=1)
    server = nodes(
        "server",
        tasks=True,
        orch_token=TOKEN,
        service_example_clients=listed(clients),
        service_example_retry_lost=1,
        client_lost_after=1,
    )
    _, body = await upload(server, gated(shared))
    await wait_for(lambda: job_status(body["id"]) == "Running")
    first = Job.get_by_id(body["id"])
    lost, other = on(clients, first.client), next(client for client in clients if client.url != first.client)
    lost.kill()
    let_go(shared, lost)  # its copy ends while it is away
    await wait_for(lambda: Job.get_by_id(first.id).attempt == 2 and job_status(first.id) == "Running")
    assert Job.get_by_id(first.id).client == other.url

    lost.start()
    await wait_for(lambda: payload(lost, first.dest_id)["status"] == "Completed")
    await wait_for(lambda: Abandoned.select().count() == 0)  # the stop found it ended
    await wait_for(lambda: lost.url in server.ctx.state(tracking.Tracking).live)  # its events are read again
    await server.settle()
    assert (job_status(first.id), Job.get_by_id(first.id).client) == ("Running", other.url)

    let_go(shared, other)
    await wait_for(lambda: job_status(first.id) == "Completed")
    response = await server.fetch(f"/download/{first.id}")
    assert zipfile.ZipFile(io.BytesIO(response.body)).read("where.txt").decode().startswith(str(other.folder))
