"""The client's event stream (GET /events) and the server's watcher that follows it."""

import asyncio
import logging
import time

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from orch.config import ClientConfig
from orch.context import Inflight
from orch.dispatch import send
from orch.models import Job, JobEvent, transition
from orch.states import Status
from orch.tracking import Tracking, follow, poll_soon
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import job_status, multipart, payload_status, script, services, upload, wait_for

pytestmark = pytest.mark.both_databases


async def submit(client, body: bytes = b"echo done > out.txt\n", job_key: str = "key-1") -> int:
    data, content_type = multipart({"job_key": job_key}, {"run.sh": body})
    code, payload = await client.json("/submit", method="POST", body=data, headers={"Content-Type": content_type})
    assert code == 200
    return payload["id"]


async def test_without_after_the_stream_answers_at_once_where_it_stands(client):
    code, answer = await client.json("/events")
    assert (code, answer) == (200, {"last": 0, "events": []})
    await submit(client)
    code, answer = await client.json("/events?wait=30")
    assert answer["events"] == [] and answer["last"] >= 0


async def test_a_long_poll_answers_as_soon_as_a_payload_changes(client, io_loop):
    _, now = await client.json("/events")
    waiting = asyncio.ensure_future(client.json(f"/events?after={now['last']}&wait=30"))
    await asyncio.sleep(0)
    payload_id = await submit(client)
    await start_prepared(client.ctx, io_loop.time())
    code, answer = await waiting
    assert code == 200
    assert (answer["events"][0]["id"], answer["events"][0]["job_key"]) == (payload_id, "key-1")
    assert answer["last"] == answer["events"][-1]["seq"]
    await wait_for(lambda: payload_status(payload_id) == "Completed")
    _, later = await client.json(f"/events?after={answer['last']}&wait=0")
    assert [event["status"] for event in answer["events"] + later["events"]] == ["Prepared", "Running", "Completed"]


async def test_a_stream_asked_from_beyond_its_end_restarts_from_where_it_stands(client):
    """A server that followed another client instance (whose database was replaced) is not left waiting."""
    code, answer = await client.json("/events?after=999&wait=30")
    assert (code, answer) == (200, {"last": 0, "events": []})


async def test_bad_stream_arguments_are_400(client):
    for query in ("after=x", "after=-1", "wait=x", "wait=61", "wait=-1"):
        code, answer = await client.json(f"/events?{query}")
        assert code == 400, query
        assert answer.keys() == {"id", "status", "message"}


async def test_the_server_learns_from_the_stream_alone_that_a_job_ran_and_finished(nodes, caplog):
    """With the getter's rounds an hour apart, only the event stream can move the job on; it asks the
    client once, for the result, and not when the job was prepared or started."""
    caplog.set_level(logging.DEBUG, "tornado.access")
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, getter_interval=3600, **services(client))
    _, body = await upload(server, script("echo hello > out.txt\n"))
    await wait_for(lambda: job_status(body["id"]) == "Completed")
    response = await server.fetch(f"/download/{body['id']}")
    assert response.headers["Content-Type"] == "application/zip"
    assert "Running" in [event.dst for event in JobEvent.select().where(JobEvent.job == body["id"])]
    assert len([record for record in caplog.records if " /retrieve/" in record.getMessage()]) == 1


@pytest.mark.parametrize(
    ("body", "reached"),
    [
        ("echo done > out.txt\n", "Completed"),
        ("while [ ! -e ../../gate ]; do sleep 0.01; done\n", "Running"),
    ],
    ids=["ended", "started"],
)
async def test_a_job_that_changes_before_its_send_is_recorded_is_asked_about_as_soon_as_it_is(
    server, client, tmp_path, body, reached
):
    """A quick job on a busy server: the client reports that it ended (or started) while the server still
    waits for the answer to its send. With the stream live the getter would ask only at its next sweep, half
    a minute later; the sender asks once the send is recorded."""
    watch = asyncio.ensure_future(follow(server.ctx, server.ctx.config.services["example"].clients[0]))
    _, uploaded = await upload(server, script(body))
    job_id = uploaded["id"]
    assert transition(Job, job_id, Status.QUEUED, Status.PROCESSING, time.time(), client=client.url)
    payload_id = await submit(client, body.encode(), job_key=Job.get_by_id(job_id).folder)  # the send arrived...
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: job_id in server.ctx.state(Tracking).changed_early)  # ...and the client reported the change
    await send(server.ctx, job_id, time.time())  # the send's answer comes back: the same payload, by its key
    try:
        await wait_for(lambda: job_status(job_id) == reached)
    finally:
        watch.cancel()
        (tmp_path / "gate").touch()
    assert Job.get_by_id(job_id).dest_id == payload_id
    assert server.ctx.state(Tracking).changed_early == set()


async def test_the_watcher_leaves_clients_without_a_stream_to_the_getter(io_loop, server):
    """A client of the original answers 404 to /events: the watch ends instead of retrying forever."""

    class Original(RequestHandler):
        def get(self) -> None:
            self.set_status(404)

    sock, port = bind_unused_port()
    original = HTTPServer(Application([(r"/.*", Original)]))
    original.add_socket(sock)
    try:
        await asyncio.wait_for(follow(server.ctx, ClientConfig.at(f"http://127.0.0.1:{port}")), 30)
    finally:
        original.stop()


async def test_while_a_stream_is_live_the_getter_leaves_running_jobs_to_it(nodes, tmp_path, caplog):
    """Asking about each running job at every round would cost a request per job and per round: while the
    stream answers, the getter asks once when it starts, then only every SWEEP seconds."""
    caplog.set_level(logging.DEBUG, "tornado.access")
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, getter_interval=0.02, **services(client))
    gate = tmp_path / "gate"
    _, body = await upload(server, script(f"while [ ! -e {gate} ]; do sleep 0.01; done\n"))
    await wait_for(lambda: job_status(body["id"]) == "Running")
    await wait_for(lambda: server.ctx.state(Tracking).live.get(client.url))  # the getter's sweep when it started
    await server.ctx.inflight.wait("poll")  # ...whose answer may still be on its way (on a busy machine)

    def retrieves() -> int:
        return len([record for record in caplog.records if " /retrieve/" in record.getMessage()])

    asked = retrieves()
    await asyncio.sleep(0.5)  # some 25 getter rounds
    assert retrieves() == asked
    gate.touch()
    await wait_for(lambda: job_status(body["id"]) == "Completed")
    assert retrieves() == asked + 1


async def test_a_stream_answered_by_another_client_instance_has_every_job_asked_about_again(server):
    """A client replaced behind the same address (its data lost) may not report the jobs it no longer has:
    the getter asks about all of them at its next round, which ends them with the reason."""
    answers: asyncio.Queue = asyncio.Queue()

    class Replaced(RequestHandler):
        async def get(self) -> None:
            instance, last = await answers.get()
            self.set_header("X-Orchestrator-Instance", instance)
            self.write({"last": last, "events": []})

    sock, port = bind_unused_port()
    fake = HTTPServer(Application([(r"/events", Replaced)]))
    fake.add_socket(sock)
    fake_client = ClientConfig.at(f"http://127.0.0.1:{port}")
    live = server.ctx.state(Tracking).live
    watch = asyncio.ensure_future(follow(server.ctx, fake_client))
    try:
        await answers.put(("first", 5))
        await wait_for(lambda: live.get(fake_client.address) == 0.0)  # due when the stream starts
        live[fake_client.address] = 100.0  # the getter asked
        await answers.put(("first", 5))
        await answers.put(("first", 7))
        await wait_for(lambda: answers.empty())
        await asyncio.sleep(0.05)
        assert live[fake_client.address] == 100.0  # the same client: nothing to ask
        await answers.put(("second", 9))
        await wait_for(lambda: live.get(fake_client.address) == 0.0)
        live[fake_client.address] = 100.0
        await answers.put(("second", 2))  # a sequence that went back: the client lost its database
        await wait_for(lambda: live.get(fake_client.address) == 0.0)
    finally:
        watch.cancel()
        fake.stop()
    await wait_for(lambda: fake_client.address not in live)  # a stopped watch no longer stands for the client


async def test_a_result_that_comes_back_after_the_stream_marked_the_job_running_completes_it(server, client):
    """The poll asked while the job was Submitted; the stream's Running event moved it on meanwhile: the
    answer (the result) still completes it."""
    _, body = await upload(server, script("echo done > out.txt\n"))
    await send_queued(server.ctx, time.time())
    await server.settle()
    job = Job.get_by_id(body["id"])
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(job.dest_id) == "Completed")
    poll_soon(server.ctx, job.id)
    await asyncio.sleep(0)  # the poll has read the job (Submitted) and waits for the client's answer
    assert transition(Job, job.id, Status.SUBMITTED, Status.RUNNING, time.time())  # what the Running event does
    await server.settle()
    assert job_status(job.id) == "Completed"


async def test_work_asked_for_just_as_the_task_of_its_key_ends_is_started_not_dropped(io_loop):
    """A client reports a change of a job just as the poll of that job ends, before its end is recorded: the new
    poll starts (it used to be taken as done by the ended one, and the change waited for the next sweep)."""
    inflight = Inflight()
    done = []

    async def second() -> None:
        done.append("second")

    async def first() -> None:
        done.append("first")
        asyncio.get_running_loop().call_soon(inflight.start, "poll", second)  # runs once it ended, not yet forgotten

    inflight.start("poll", first)
    await inflight.wait()
    assert done == ["first", "second"]
