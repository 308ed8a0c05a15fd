"""Zipping results on the client (orch/zipping.py), with real jobs: zips are built once the run is over, while the
payload is still Running, so that a terminate and the walltime cover them; big ones never hold up a small one;
partial zips are shared; what a job leaves in its folder is zipped without setuid bits and with plain names."""

import asyncio
import io
import stat
import time
import zipfile

import pytest

from orch import payloads, zipping
from orch.models import Payload
from orch.states import FINISHED
from tasks.runner import start_prepared
from tests.conftest import Node, multipart, payload_status, script, wait_for

DONE = {status.value for status in FINISHED}
# A file of zeros that takes the client many seconds to zip (it is sparse: it takes no room on disk).
HUGE = "truncate -s 40G huge.bin\n"


async def submitted(client: Node, body: str, **fields: str) -> int:
    files, content_type = multipart(fields, script(body))
    code, answer = await client.json("/submit", method="POST", body=files, headers={"Content-Type": content_type})
    assert code == 200, answer
    return answer["id"]


def zipping_its_result(client: Node, payload_id: int) -> bool:
    """run.sh is over (its exit status is recorded), yet the payload is Running: its result is being zipped."""
    return payloads.exit_file(client.ctx, payload_id).exists() and payload_status(payload_id) == "Running"


def control_files(client: Node) -> list[str]:
    return sorted(path.name for path in payloads.control_path(client.ctx).iterdir())


async def test_a_job_is_completed_once_its_result_is_zipped_setuid_bits_and_backslashes_gone(nodes):
    client = nodes("client", script_blocklist="false")
    body = "echo tool > tool\nchmod 4755 tool\necho evil > '..\\..\\evil.txt'\n"
    payload_id = await submitted(client, body)
    await start_prepared(client.ctx, time.time())

    def done() -> bool:
        status = payload_status(payload_id)
        assert status != "Completed" or payloads.result_file(client.ctx, payload_id).exists()  # there before it
        return status in DONE

    await wait_for(done)
    assert payload_status(payload_id) == "Completed"
    response = await client.fetch(f"/retrieve/{payload_id}")
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.read(".._.._evil.txt") == b"evil\n"
    assert stat.S_IMODE(archive.getinfo("tool").external_attr >> 16) == 0o755


async def test_a_terminate_while_the_result_is_zipped_stops_the_zip_and_the_job_ends_killed(nodes):
    client = nodes("client")
    payload_id = await submitted(client, HUGE)
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: zipping_its_result(client, payload_id))

    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"], answer["message"]) == (200, "Killed", "killed on request")
    assert control_files(client) == [f"{payload_id}.exit"]  # no result, no half-written zip


async def test_the_walltime_covers_the_zipping_of_the_result(nodes):
    client = nodes("client")
    payload_id = await submitted(client, HUGE, timeout="2")
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    payload = Payload.get_by_id(payload_id)
    assert payload.status == "Failed"
    assert payload.message == "timeout: run.sh and the zip of its result took longer than 2 s"
    assert control_files(client) == [f"{payload_id}.exit"]


async def test_big_results_being_zipped_hold_up_neither_a_small_one_nor_a_start(nodes):
    client = nodes("client")
    big = [await submitted(client, HUGE) for _ in range(zipping.ZIP_THREADS + 1)]  # more than their lane takes
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: all(zipping_its_result(client, payload_id) for payload_id in big))

    small = await submitted(client, "echo small > out.txt\n")
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(small) in DONE)
    assert payload_status(small) == "Completed"
    assert all(payload_status(payload_id) == "Running" for payload_id in big)  # still zipping

    # The one waiting for a thread is killed first: it leaves the queue at once, rather than after a big zip.
    stops = client.ctx.state(zipping.Zips).stops
    await wait_for(lambda: all(stops.get(payload_id) and stops[payload_id].queued for payload_id in big))
    big.sort(key=lambda payload_id: stops[payload_id].queued.running())
    for payload_id in big:
        code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
        assert (code, answer["status"]) == (200, "Killed")


async def test_partial_downloads_of_a_job_share_one_zip_built_at_most_every_few_seconds(nodes):
    client = nodes("client")
    payload_id = await submitted(client, "echo one > one.txt\nwhile [ ! -e go ]; do sleep 0.01; done\n")
    await start_prepared(client.ctx, time.time())
    folder = payloads.folder(client.ctx, payload_id)
    await wait_for(lambda: (folder / "one.txt").exists())

    async def partial() -> list[str]:
        response = await client.fetch(f"/retrieve_partial/{payload_id}")
        assert (response.code, response.headers["Content-Type"]) == (200, "application/zip")
        return sorted(zipfile.ZipFile(io.BytesIO(response.body)).namelist())

    at_once = await asyncio.gather(*(partial() for _ in range(6)))
    assert all(names == at_once[0] for names in at_once) and "one.txt" in at_once[0]
    (folder / "two.txt").write_text("two\n")
    assert "two.txt" not in await partial()  # the zip of a moment ago, shared
    start = client.ctx.clock()
    client.ctx.clock = lambda: start + zipping.PARTIAL_EVERY
    assert "two.txt" in await partial()  # a new one, a few seconds later

    (folder / "go").touch()
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert not payloads.partial_file(client.ctx, payload_id).exists()  # gone with the run


async def test_a_partial_download_of_a_finished_job_leaves_nothing_of_its_zip_behind(nodes):
    client = nodes("client")
    payload_id = await submitted(client, "echo one > one.txt\n")
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)

    response = await client.fetch(f"/retrieve_partial/{payload_id}")
    assert "one.txt" in zipfile.ZipFile(io.BytesIO(response.body)).namelist()
    assert control_files(client) == [f"{payload_id}.exit", f"{payload_id}.zip"]
    assert payload_id not in client.ctx.state(zipping.Zips).partials


def partial_zip_reading_huge(client: Node, payload_id: int) -> bool:
    """A partial zip of the payload is being written past its first bytes: it is reading huge.bin (its first file)."""
    control = payloads.control_path(client.ctx)
    return any(path.stat().st_size > 0 for path in control.glob(f".{payload_id}.partial.zip.*.tmp"))


@pytest.mark.parametrize("stop", ["kill", "walltime"])
async def test_a_stop_of_the_payload_stops_its_partial_zip_and_the_download_gets_what_is_left(nodes, stop):
    client = nodes("client")
    body = HUGE + "while [ ! -e go ]; do sleep 0.01; done\n"
    payload_id = await submitted(client, body, **({"timeout": "5"} if stop == "walltime" else {}))
    await start_prepared(client.ctx, time.time())
    folder = payloads.folder(client.ctx, payload_id)
    await wait_for(lambda: (folder / "huge.bin").exists())
    download = asyncio.ensure_future(client.fetch(f"/retrieve_partial/{payload_id}"))
    await wait_for(lambda: partial_zip_reading_huge(client, payload_id))
    (folder / "huge.bin").unlink()  # the partial zip reads it to its end, unless stopped
    (folder / "go").touch()
    await wait_for(lambda: payload_id in client.ctx.state(zipping.Zips).stops)  # the result's zip waits for it

    start = time.monotonic()
    if stop == "kill":
        code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
        assert (code, answer["status"]) == (200, "Killed")
    else:
        await wait_for(lambda: payload_status(payload_id) in DONE)
        assert Payload.get_by_id(payload_id).message == "timeout: run.sh and the zip of its result took longer than 5 s"
    assert time.monotonic() - start < 8

    response = await download
    assert sorted(zipfile.ZipFile(io.BytesIO(response.body)).namelist()) == ["go", "run.log", "run.sh"]
    assert control_files(client) == [f"{payload_id}.exit"]
