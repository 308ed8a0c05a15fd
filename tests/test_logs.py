"""Logs that help an operator: one INFO line per status change (job, from, to, reason), one access line per
request with the error it answered, no headers or secrets, nothing for a browser's favicon, and no error when a
server and its client stop together."""

import asyncio
import logging

from orch.tracking import Tracking
from tests.conftest import job_status, script, services, upload, wait_for


def lines(caplog, logger: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == logger]


async def test_each_status_change_of_a_job_is_one_info_line_with_its_reason(nodes, caplog):
    caplog.set_level(logging.INFO)
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    _, body = await upload(server, script("exit 3\n"))
    job = body["id"]
    await wait_for(lambda: job_status(job) == "Failed")
    await server.settle()
    moves = [line for line in lines(caplog, "orch.models") if line.startswith(f"job {job}:")]
    assert moves[:3] == [
        f"job {job}: new -> Queued: uploaded",
        f"job {job}: Queued -> Processing",
        f"job {job}: Processing -> Submitted",
    ]
    assert moves[3:-1] in ([], [f"job {job}: Submitted -> Running"])  # unless it ended before the server looked
    assert moves[-1].endswith(" -> Failed: run.sh exited with code 3")
    assert any(line.startswith("payload 1: Running -> Failed") for line in lines(caplog, "orch.models"))


async def test_a_refused_request_is_one_access_line_with_the_reason_and_no_header(server, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "Bearer very-secret-value"
    response = await server.fetch("/download/12345", headers={"Authorization": secret, "Cookie": "session=abc"})
    assert response.code == 404
    logged = [record for record in caplog.records if "/download/12345" in record.getMessage()]
    assert [(record.levelname, record.getMessage().split(" (")[0]) for record in logged] == [
        ("WARNING", "404 GET /download/12345")
    ]
    assert logged[0].getMessage().endswith(": Job 12345 not found in the database")
    everything = "\n".join(record.getMessage() for record in caplog.records)
    assert "very-secret-value" not in everything and "session=abc" not in everything


async def test_a_browsers_favicon_request_is_answered_without_a_warning(server, caplog):
    caplog.set_level(logging.DEBUG)
    response = await server.fetch("/favicon.ico")
    assert response.code == 200 and response.headers["Content-Type"] == "image/png"
    assert response.body.startswith(b"\x89PNG")
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


async def test_404_bodies_name_the_id_asked_for(server, client):
    assert await server.json("/download/4242") == (
        404,
        {"id": 4242, "status": "Unknown", "message": "Job 4242 not found in the database"},
    )
    assert (await server.json("/jobs/4243"))[1]["id"] == 4243
    assert (await client.json("/retrieve/4244"))[1] == {
        "id": 4244,
        "status": "Unknown",
        "message": "Payload 4244 not found",
    }


async def test_a_server_and_its_client_stopping_together_log_no_error(nodes):
    """The server stops following the client's event stream while a long-poll is in flight; the client then
    closes that connection as it stops. (Tornado logged "Exception after Future was cancelled" here.)"""
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    address = client.url
    await wait_for(lambda: address in server.ctx.state(Tracking).live)
    await asyncio.sleep(0.1)  # the next long-poll is under way
    for beat in server.beats:
        beat.stop()
    server.beats = []
    client.stop()
    await client.http_server.close_all_connections()
    await server.settle()
    await asyncio.sleep(0.2)  # the closed connection reaches the server
