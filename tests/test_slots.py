"""A client's slots: it never starts more than SLOTS payloads at once, whoever sends them, and says what it can
take at `GET /status`."""

import os
import time

from orch import VERSION, payloads
from orch.config import load
from tasks.runner import start_prepared
from tests.conftest import multipart, payload_status, script, wait_for

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def submit(client, body: str) -> int:
    data, content_type = multipart(files=script(body))
    code, payload = await client.json(
        "/submit", method="POST", body=data, headers={"Content-Type": content_type, **AUTH}
    )
    assert code == 200
    return payload["id"]


async def test_a_client_starts_no_more_than_its_slots_and_the_next_as_soon_as_one_ends(nodes, shared):
    # runner_interval=60: only wakes start runs
    client = nodes("client", tasks=True, orch_token=TOKEN, slots=2, runner_interval=60, job_write_paths=shared)
    gates = [shared / f"gate{n}" for n in range(5)]
    ids = [await submit(client, f"while [ ! -e {gate} ]; do sleep 0.01; done\n") for gate in gates]
    await wait_for(lambda: [payload_status(i) for i in ids] == ["Running"] * 2 + ["Prepared"] * 3)
    assert await start_prepared(client.ctx, time.time()) == 0  # a round more changes nothing
    gates[0].touch()
    await wait_for(lambda: [payload_status(i) for i in ids] == ["Completed"] + ["Running"] * 2 + ["Prepared"] * 2)
    for gate in gates:
        gate.touch()
    await wait_for(lambda: all(payload_status(i) == "Completed" for i in ids))


async def test_status_says_the_instance_slots_payloads_load_and_free_disk(nodes, shared):
    client = nodes("client", orch_token=TOKEN, slots=3, job_write_paths=shared)
    gate = shared / "gate"
    for _ in range(4):
        await submit(client, f"while [ ! -e {gate} ]; do sleep 0.01; done\n")
    await start_prepared(client.ctx, time.time())
    try:
        code, status = await client.json("/status", headers=AUTH)
        assert code == 200
        assert status.keys() == {
            "instance",
            "version",
            "slots",
            "prepared",
            "running",
            "executor",
            "load",
            "cpus",
            "disk_free",
        }
        assert (status["instance"], status["version"], status["slots"]) == (payloads.instance(client.ctx), VERSION, 3)
        assert (status["prepared"], status["running"], status["executor"]) == (1, 3, "local")
        assert status["load"] >= 0 and status["cpus"] == os.cpu_count()
        assert isinstance(status["disk_free"], int) and status["disk_free"] > 0
    finally:
        gate.touch()
        await client.settle()


async def test_status_needs_the_token(nodes):
    client = nodes("client", orch_token=TOKEN)
    code, body = await client.json("/status")
    assert code == 401 and set(body) == {"id", "status", "message"}


def test_slots_default_to_the_number_of_cpus():
    assert load("client", {}).slots == (os.cpu_count() or 1)
