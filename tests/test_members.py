"""Clients that join by themselves (`orch.members`): the server's `POST /clients`, leases, and a real client app
that announces itself and receives work."""

import json
import logging

import pytest

from orch import members, placement, tracking
from orch.models import JoinedClient
from orch.tracking import Tracking
from tests.conftest import Node, job_status, script, upload, wait_for

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


@pytest.fixture
def server(nodes) -> Node:
    """A server with a token and services `example` and `other` that list no client, tasks not running."""
    return nodes("server", orch_token=TOKEN, service_example_clients="", service_other_clients="", client_lease=30)


async def announce(server: Node, body: object, headers: dict | None = None) -> tuple[int, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await server.json("/clients", method="POST", body=raw, headers=AUTH if headers is None else headers)


NODE = {"url": "http://node1:9000", "services": ["example"], "slots": 4}


async def test_an_announced_client_joins_its_services_until_its_lease_ends(server):
    code, answer = await announce(server, NODE)
    assert (code, answer) == (
        200,
        {"url": "http://node1:9000", "services": ["example"], "ignored": [], "slots": 4, "lease": 30},
    )
    now = server.ctx.clock()
    (member,) = members.joined(now)
    assert (member.client.address, member.services, member.slots) == ("http://node1:9000", {"example"}, 4)
    assert members.joined(now + 31) == []  # no announcement since: its lease ended


async def test_announcing_again_renews_the_lease_of_the_same_row(server):
    t0 = server.ctx.clock()
    server.ctx.clock = lambda: t0
    await announce(server, NODE)
    first = JoinedClient.get()
    assert (first.joined_at, first.expires_at) == (t0, t0 + 30)
    server.ctx.clock = lambda: t0 + 10  # ten seconds later, well within its lease
    code, _ = await announce(server, {**NODE, "url": "http://node1:9000/", "slots": 6})  # the same address
    assert code == 200
    (again,) = JoinedClient.select()
    assert (again.address, again.slots, again.joined_at) == ("http://node1:9000", 6, first.joined_at)
    assert again.expires_at >= first.expires_at
    assert again.expires_at == t0 + 10 + 30  # a whole lease from the second announcement


async def test_services_not_configured_here_are_ignored_and_said_so(server):
    code, answer = await announce(server, {**NODE, "services": ["example", "haddock", "OTHER"]})
    assert (code, answer["services"], answer["ignored"]) == (200, ["example", "other"], ["haddock"])


async def test_an_announcement_of_no_service_configured_here_is_refused(server):
    code, answer = await announce(server, {**NODE, "services": ["haddock"]})
    assert (code, answer["status"]) == (400, "Unknown")
    assert "haddock" in answer["message"] and "not configured" in answer["message"]
    assert JoinedClient.select().count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        {"services": ["example"], "slots": 1},
        {**NODE, "url": "node1:9000"},
        {**NODE, "url": "ftp://node1"},
        {**NODE, "url": "http://node1:9000/?x=1"},
        {**NODE, "url": "http://node 1:9000"},
        {**NODE, "url": "http://node1:9000/caf\u00e9"},
        {**NODE, "url": 7},
        {**NODE, "services": []},
        {**NODE, "services": "example"},
        {**NODE, "services": ["ex ample"]},
        {**NODE, "services": [None]},
        {**NODE, "slots": 0},
        {**NODE, "slots": True},
        {**NODE, "slots": "4"},
        {**NODE, "slots": 10**9},
        {**NODE, "instance": "x" * 200},
    ],
    ids=lambda body: repr(body)[:60],
)
async def test_a_malformed_announcement_is_400_with_the_reason_and_records_nothing(server, body):
    code, answer = await announce(server, body)
    assert code == 400 and set(answer) == {"id", "status", "message"} and answer["message"]
    assert JoinedClient.select().count() == 0


async def test_announcing_needs_the_servers_token(server):
    code, answer = await announce(server, NODE, headers={"Authorization": "Bearer wrong"})
    assert (code, answer["status"]) == (401, "Unknown")
    code, _ = await announce(server, NODE, headers={})
    assert code == 401
    assert JoinedClient.select().count() == 0


async def test_a_server_without_a_token_takes_no_announcements(nodes):
    server = nodes("server", service_example_clients="")
    code, answer = await announce(server, NODE, headers={"Content-Type": "application/json"})
    assert code == 403 and "ORCH_TOKEN" in answer["message"]
    assert JoinedClient.select().count() == 0


async def test_a_client_started_with_server_url_joins_by_itself_and_receives_work(nodes, caplog):
    caplog.set_level(logging.INFO)
    server = nodes("server", tasks=True, orch_token=TOKEN, service_example_clients="", client_lease=3)
    client = nodes("client", tasks=True, orch_token=TOKEN, server_url=server.url, services="example,haddock", slots=3)
    (member,) = await wait_for(lambda: members.joined(server.ctx.clock()))
    assert (member.client.address, member.services, member.slots) == (client.url, {"example"}, 3)
    assert any("joined" in r.getMessage() and "haddock not configured" in r.getMessage() for r in caplog.records)
    _, body = await upload(server, script("echo hello > out.txt\n"))
    await wait_for(lambda: job_status(body["id"]) == "Completed")
    (seen,) = await wait_for(lambda: [c for c in placement.clients(server.ctx, server.ctx.clock()) if c["followed"]])
    assert (seen["address"], seen["services"], seen["slots"]) == (client.url, ["example"], 3)  # its stream is followed

    # It renews its lease every second (a third of 3 s): still there well after the first lease would end.
    first = JoinedClient.get().expires_at
    await wait_for(lambda: JoinedClient.get().expires_at > first + 1)

    # Once it stops announcing itself, its lease runs out: no more work goes to it, its stream is let go.
    client.stop()
    later = JoinedClient.get().expires_at + 1
    assert members.joined(later) == []
    assert tracking.follow_clients(server.ctx, later) == 0
    await wait_for(lambda: client.url not in server.ctx.state(Tracking).follows)


async def test_a_client_whose_announcements_are_refused_says_why_once_and_keeps_trying(nodes, caplog):
    server = nodes("server", orch_token=TOKEN, service_example_clients="")
    client = nodes("client", orch_token="another-token", server_url=server.url, services="example")
    now = client.ctx.clock()
    state = client.ctx.state(members.Announcing)
    assert await members.announce(client.ctx, now) is False
    assert state.next_at == now + members.RETRY
    assert await members.announce(client.ctx, now + 1) is False  # not yet: it waits a few seconds
    assert state.next_at == now + members.RETRY  # it did not try: its next try is still the same
    assert await members.announce(client.ctx, now + members.RETRY) is False
    assert state.next_at == now + members.RETRY + members.RETRY  # it tried again, and waits as long again
    warnings = [r.getMessage() for r in caplog.records if r.name == "orch.members" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "401" in warnings[0]
    assert JoinedClient.select().count() == 0
