"""Placing jobs on a service's clients (`orch.placement`, `orch.dispatch.claim`), on a real server database: the
clients here join by announcing themselves at addresses where nothing listens (claiming sends nothing)."""

import uuid

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from orch import members, placement, tracking
from orch.config import ClientConfig
from orch.dispatch import claim
from orch.models import Job, create, server_db, transition
from orch.states import Status
from tests.conftest import Node

NOW = 1_700_000_000.0
A, B, C = "http://a.invalid:9000", "http://b.invalid:9000", "http://c.invalid:9000"


@pytest.fixture
def server(nodes) -> Node:
    """A server whose service `example` lists no client (clients join it), with a token, tasks not running."""
    return nodes(
        "server",
        orch_token="t" * 20,
        service_example_clients="",
        service_example_max_runs=10,
        service_example_runs_per_user=10,
    )


def join(server: Node, address: str, slots: int, now: float = NOW) -> None:
    members.record(server.ctx, {"url": address, "services": ["example"], "slots": slots}, now)


def queue(count: int, user_id: int = 1, client: str | None = None) -> list[int]:
    with server_db.atomic():
        return [
            create(
                Job, Status.QUEUED, NOW, user_id=user_id, service="example", folder=uuid.uuid4().hex, client=client
            ).id
            for _ in range(count)
        ]


def placed_on(job_ids: list[int]) -> list[str | None]:
    return [Job.get_by_id(job_id).client for job_id in job_ids]


async def test_jobs_go_to_the_clients_with_the_most_free_slots_ties_in_turn_and_never_beyond_their_slots(server):
    for address, slots in ((A, 1), (B, 2), (C, 3)):
        join(server, address, slots)
    ids = queue(8)
    claimed = await claim(server.ctx, NOW)
    assert claimed == ids[:6]
    # C (3 free), then B and C (2 each) in turn, then A, B and C (1 each) in turn.
    assert placed_on(claimed) == [C, B, C, A, B, C]
    assert await claim(server.ctx, NOW) == []  # every slot is taken: the rest waits in the queue, not on a client
    assert placed_on(ids[6:]) == [None, None]
    assert transition(Job, claimed[1], Status.PROCESSING, Status.FAILED, NOW)  # a slot of B frees
    assert await claim(server.ctx, NOW) == [ids[6]]
    assert placed_on([ids[6]]) == [B]


async def test_a_client_waiting_out_a_failure_is_passed_over_and_the_others_take_its_share(server):
    for address in (A, B, C):
        join(server, address, 2)
    tracking.failed(server.ctx, ClientConfig.at(B), NOW, "connection refused")
    ids = queue(6)
    claimed = await claim(server.ctx, NOW)
    assert sorted(placed_on(claimed)) == [A, A, C, C]
    assert await claim(server.ctx, NOW + 1) == ids[4:]  # B's backoff is over
    assert placed_on(ids[4:]) == [B, B]


async def test_a_job_bound_to_a_client_goes_back_there_even_when_it_is_full_and_waits_out_its_backoff(server):
    join(server, A, 1)
    join(server, B, 1)
    (free,) = queue(1)
    assert placed_on(await claim(server.ctx, NOW)) == [A]  # A's only slot is taken
    (bound,) = queue(1, client=A)  # a send of it may have reached A
    tracking.failed(server.ctx, ClientConfig.at(A), NOW, "timed out")
    assert await claim(server.ctx, NOW) == []  # B is free, but the job waits for A
    assert await claim(server.ctx, NOW + 1) == [bound]
    assert placed_on([free, bound]) == [A, A]


async def test_quotas_and_the_round_robin_between_users_hold_across_clients(nodes):
    server = nodes("server", orch_token="t" * 20, service_example_clients="", **{"service_example_runs_per_user": 2})
    for address in (A, B, C):
        join(server, address, 4)
    heavy = queue(10, user_id=1)
    light = queue(2, user_id=2)
    claimed = await claim(server.ctx, NOW)
    assert sorted(claimed) == sorted(heavy[:2] + light)  # 2 per user, whatever the free slots
    assert len(set(placed_on(claimed))) == 3  # spread over the three clients


async def test_a_client_of_the_original_counts_as_having_the_services_max_runs(nodes):
    """It has no /status (nor anything else this project adds): asked once, it says nothing of its slots."""
    asked = []

    class Original(RequestHandler):
        def get(self) -> None:
            asked.append(self.request.path)
            self.set_status(404)

    sock, port = bind_unused_port()
    original = HTTPServer(Application([(r"/.*", Original)], log_function=lambda handler: None))
    original.add_socket(sock)
    address = f"http://127.0.0.1:{port}"
    server = nodes(
        "server",
        service_example_upload_url=f"{address}/submit",
        service_example_download_url=f"{address}/retrieve",
        service_example_max_runs=3,
    )
    try:
        ids = queue(5)
        assert await claim(server.ctx, NOW) == ids[:3]
        assert placed_on(ids) == [address, address, address, None, None]
        assert await claim(server.ctx, NOW) == []
        assert asked == ["/status"]  # once
    finally:
        original.stop()


async def test_a_client_whose_status_failed_is_asked_again_once_its_backoff_is_over(nodes):
    """Until it says its slots, it would count as having the service's MAX_RUNS."""
    asked = []

    class Restarting(RequestHandler):
        def get(self) -> None:
            asked.append(self.request.path)
            if len(asked) == 1:
                self.set_status(503)  # restarting
            self.write({"slots": 1})

    sock, port = bind_unused_port()
    listening = HTTPServer(Application([(r"/status", Restarting)], log_function=lambda handler: None))
    listening.add_socket(sock)
    address = f"http://127.0.0.1:{port}"
    server = nodes("server", service_example_clients=address, service_example_max_runs=3)
    try:
        assert await claim(server.ctx, NOW) == []  # nothing queued; its /status fails
        ids = queue(3)
        assert await claim(server.ctx, NOW + 1) == ids[:1]  # its backoff is over: asked again, it has 1 slot
        assert asked == ["/status", "/status"]
    finally:
        listening.stop()


async def test_a_client_whose_lease_ended_takes_no_more_jobs(server):
    join(server, A, 2, now=NOW)
    join(server, B, 2, now=NOW + 20)
    lease = server.config.client_lease
    ids = queue(4)
    assert placed_on(await claim(server.ctx, NOW + lease + 1)) == [B, B]  # A's announcements stopped
    assert placed_on(ids[2:]) == [None, None]


async def test_what_people_see_of_each_client(server):
    join(server, A, 2)
    join(server, B, 3)
    tracking.failed(server.ctx, ClientConfig.at(B), NOW, "connection refused")
    queue(1)
    await claim(server.ctx, NOW)
    seen = {client["address"]: client for client in placement.clients(server.ctx, NOW + 5)}
    assert seen[A] | {"lease_ends": None} == {
        "address": A,
        "services": ["example"],
        "slots": 2,
        "jobs": 1,
        "running": 0,
        "up": True,
        "down_for": 0,
        "reason": "",
        "followed": False,
        "lease_ends": None,
    }
    assert seen[A]["lease_ends"] == NOW + server.config.client_lease
    assert (seen[B]["jobs"], seen[B]["up"], seen[B]["down_for"], seen[B]["reason"]) == (
        0,
        False,
        5,
        "connection refused",
    )
