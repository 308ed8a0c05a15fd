"""The client as a remote-code-execution service: the shared token, start-up without one, nothing secret in logs
or in a job's environment, and result zips that ship nothing from outside a job's folder."""

import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from orch import payloads
from orch.config import load
from orch.models import Job, Payload
from orch.states import FINISHED
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import (
    Node,
    data_files,
    job_status,
    multipart,
    payload_status,
    script,
    services,
    upload,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
DONE = {status.value for status in FINISHED}
TOKEN = "s3cret"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(client: Node, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """One call to a protected endpoint of the client; returns the code, Content-Type and body."""
    kwargs: dict = {"method": method, "headers": dict(headers)}
    if path == "/submit":
        body, content_type = multipart(files=script("touch ran\n"))
        kwargs["body"] = body
        kwargs["headers"]["Content-Type"] = content_type
    elif method == "POST":
        kwargs["body"] = b""
    response = await client.fetch(path, **kwargs)
    return response.code, response.headers.get("Content-Type", ""), response.body


PROTECTED = [
    ("POST", "/submit"),
    ("GET", "/retrieve/1"),
    ("GET", "/retrieve_partial/1"),
    ("POST", "/kill/1"),
    ("GET", "/load"),
]
WRONG = [
    {},
    auth("wrong"),
    auth(TOKEN + "2"),
    auth(TOKEN[:-1]),
    {"Authorization": TOKEN},
    {"Authorization": "Basic czNjcmV0"},
]


# The token on the client's API.


@pytest.mark.parametrize("headers", WRONG, ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic"])
async def test_a_client_with_a_token_answers_401_json_to_calls_without_it_and_does_nothing(nodes, headers):
    client = nodes("client", orch_token=TOKEN)
    body, content_type = multipart(files=script("exit 0\n"))
    response = await client.fetch(
        "/submit", method="POST", body=body, headers={"Content-Type": content_type, **auth(TOKEN)}
    )
    assert json.loads(response.body)["id"] == 1

    for method, path in PROTECTED:
        code, kind, answer = await call(client, method, path, headers)
        assert (code, kind) == (401, "application/json"), (method, path)
        error = json.loads(answer)
        assert set(error) == {"id", "status", "message"} and "token" in error["message"], (method, path)
        assert TOKEN not in answer.decode()
    payload = Payload.get_by_id(1)
    assert (payload.status, payload.killed) == ("Prepared", False)  # the kill did nothing
    assert Payload.select().count() == 1  # the submit made nothing
    assert data_files(client.config.data_path) == ["1/run.sh"]


async def test_a_client_with_a_token_answers_calls_that_carry_it(nodes):
    client = nodes("client", orch_token=TOKEN)
    code, kind, answer = await call(client, "POST", "/submit", auth(TOKEN))
    assert (code, json.loads(answer)["id"], json.loads(answer)["status"]) == (200, 1, "Prepared")
    code, kind, answer = await call(client, "GET", "/retrieve/1", auth(TOKEN))
    assert (code, json.loads(answer)["status"]) == (200, "Prepared")
    code, kind, answer = await call(client, "GET", "/retrieve_partial/1", auth(TOKEN))
    assert (code, kind) == (200, "application/zip")
    assert zipfile.ZipFile(io.BytesIO(answer)).namelist() == ["run.sh"]
    code, kind, answer = await call(client, "POST", "/kill/1", auth(TOKEN))
    assert (code, json.loads(answer)["status"]) == (200, "Killed")
    code, kind, answer = await call(client, "GET", "/load", auth(TOKEN))
    assert code == 200 and 0 <= json.loads(answer) <= 100


@pytest.mark.parametrize("path", ["/", "/health", "/api-docs/openapi.json"])
async def test_ping_health_and_the_api_document_need_no_token(nodes, path):
    client = nodes("client", orch_token=TOKEN)
    response = await client.fetch(path)
    assert response.code == 200
    assert isinstance(json.loads(response.body), dict)


# The token between server and client.


async def test_a_job_goes_through_a_server_and_client_sharing_a_token(nodes):
    client = nodes("client", tasks=True, orch_token=TOKEN)
    server = nodes("server", tasks=True, orch_token=TOKEN, **services(client))
    _, body = await upload(server, script("echo hello > out.txt\n"))
    await wait_for(lambda: job_status(body["id"]) in DONE)
    assert job_status(body["id"]) == "Completed"
    response = await server.fetch(f"/download/{body['id']}")
    assert zipfile.ZipFile(io.BytesIO(response.body)).read("out.txt") == b"hello\n"


async def test_a_server_with_a_wrong_token_keeps_the_job_queued_and_creates_nothing_on_the_client(nodes, caplog):
    client = nodes("client", orch_token=TOKEN)
    server = nodes("server", orch_token="not-the-token", **services(client))
    _, body = await upload(server, script("touch ran\n"))
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    job = Job.get_by_id(body["id"])
    assert job.status == "Queued"
    assert "waiting for the example client" in job.message and "401" in job.message
    assert Payload.select().count() == 0
    assert data_files(client.config.data_path) == []
    assert all("not-the-token" not in record.getMessage() for record in caplog.records)


async def test_no_log_record_at_any_level_contains_the_token(nodes, caplog):
    caplog.set_level(logging.DEBUG)
    token = "t0k3n-that-must-not-leak"
    client = nodes("client", tasks=True, orch_token=token)
    server = nodes("server", tasks=True, orch_token=token, **services(client))
    _, done = await upload(server, script("echo hello > out.txt\n"))
    _, failing = await upload(server, script("exit 3\n"))
    _, killed = await upload(server, script("while [ ! -e go ]; do sleep 0.01; done\n"))
    await wait_for(
        lambda: {job_status(done["id"]), job_status(failing["id"])} <= DONE and job_status(killed["id"]) == "Running"
    )
    assert (await server.fetch(f"/download/{done['id']}")).code == 200
    assert (await server.fetch(f"/download_partial/{killed['id']}")).code == 200
    assert (await server.fetch(f"/terminate/{killed['id']}", method="POST", body=b"")).code == 200
    assert (await client.fetch("/retrieve/1")).code == 401  # a call without the token is logged too
    assert job_status(done["id"]) == "Completed" and job_status(killed["id"]) == "Killed"

    assert len(caplog.records) > 10  # the access log at DEBUG, the sender, the runner...
    for record in caplog.records:
        texts = [record.getMessage(), repr(record.args), record.exc_text or "", str(record.exc_info or "")]
        assert not any(token in text for text in texts), record.getMessage()


# A client listening beyond loopback.


def test_a_client_listening_beyond_loopback_without_a_token_does_not_load():
    with pytest.raises(ValueError, match="ORCH_TOKEN"):
        load("client", {"HOST": "0.0.0.0"})
    with pytest.raises(ValueError, match="ORCH_TOKEN"):
        load("client", {"HOST": "::"})
    with pytest.raises(ValueError, match="ORCH_TOKEN"):
        load("client", {}, {"HOST": "node-1.cluster"})


def test_a_client_beyond_loopback_loads_with_a_token_or_insecure():
    assert load("client", {"HOST": "0.0.0.0", "ORCH_TOKEN": TOKEN}).orch_token == TOKEN
    assert load("client", {"HOST": "0.0.0.0"}, insecure=True).insecure


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_a_client_on_loopback_needs_no_token(host):
    assert load("client", {"HOST": host}).host == host


def test_a_server_needs_no_token_to_listen_everywhere():
    assert load("server", {"HOST": "0.0.0.0"}).orch_token == ""


def test_orchestrator_client_beyond_loopback_without_a_token_exits_2_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "client", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "ORCH_TOKEN" in result.stderr and "--insecure" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "client.sqlite").exists()


async def test_orchestrator_client_beyond_loopback_with_insecure_starts_and_stops_cleanly(io_loop, tmp_path):
    log = tmp_path / "client.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "orchestrator.py"), "client", "--host", "0.0.0.0", "--port", "0", "--insecure"],
            cwd=tmp_path,
            env={"PATH": os.environ["PATH"]},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        await wait_for(lambda: "listening on" in log.read_text() or process.poll() is not None)
        assert "listening on http://0.0.0.0:" in log.read_text(), log.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(60)


# What a job sees of the client.


async def test_a_job_gets_only_the_variables_job_env_names(nodes):
    client = nodes(
        "client",
        job_env="PATH,FOO",
        foo="bar",
        orch_token="t0k3n",
        path=os.environ["PATH"],
        home="/home/someone",
        secret_key="abc",
    )
    body, content_type = multipart(files=script("env > env.txt\n"))
    response = await client.fetch(
        "/submit", method="POST", body=body, headers={"Content-Type": content_type, **auth("t0k3n")}
    )
    payload_id = json.loads(response.body)["id"]
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert payload_status(payload_id) == "Completed"

    lines = (client.config.data_path / str(payload_id) / "env.txt").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines)
    assert env["FOO"] == "bar"
    assert env["PATH"] == os.environ["PATH"]
    assert env["ORCHESTRATOR_RUN"] == f"{payloads.instance(client.ctx)}.{payload_id}"  # the run's tag, nothing secret
    assert "t0k3n" not in "\n".join(lines)
    # What bash itself sets (PWD, SHLVL, _), and nothing else.
    assert set(env) <= {"FOO", "PATH", "ORCHESTRATOR_RUN", "PWD", "SHLVL", "_", "OLDPWD"}, sorted(env)


# Result zips and control files.


async def submitted(client: Node, files: dict[str, bytes]) -> int:
    body, content_type = multipart(files=files)
    code, payload = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
    assert code == 200
    return payload["id"]


async def finished(client: Node, files: dict[str, bytes]) -> Payload:
    payload_id = await submitted(client, files)
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    return Payload.get_by_id(payload_id)


async def retrieved_zip(client: Node, payload_id: int) -> zipfile.ZipFile:
    response = await client.fetch(f"/retrieve/{payload_id}")
    assert (response.code, response.headers["Content-Type"]) == (200, "application/zip")
    return zipfile.ZipFile(io.BytesIO(response.body))


async def test_links_out_of_the_job_folder_are_zipped_as_links_never_followed(nodes):
    client = nodes("client", script_blocklist="false")  # the blocklist refuses any mention of /etc/passwd
    payload = await finished(client, script("ln -s /etc/passwd passwd_link\nln -s / root_link\n"))
    assert payload.status == "Completed"
    archive = await retrieved_zip(client, payload.id)
    entries = {info.filename: info for info in archive.infolist()}
    assert set(entries) == {"passwd_link", "root_link", "run.log", "run.sh"}  # nothing under root_link/
    for name, target in (("passwd_link", b"/etc/passwd"), ("root_link", b"/")):
        assert stat.S_ISLNK(entries[name].external_attr >> 16)
        assert archive.read(name) == target
    passwd = Path("/etc/passwd").read_bytes()
    assert all(passwd not in archive.read(name) for name in entries)


async def test_a_job_writing_a_file_with_two_dots_in_its_name_completes_and_ships_it(client):
    payload = await finished(client, script("echo x > v1..2.txt\n"))
    assert payload.status == "Completed"
    assert (await retrieved_zip(client, payload.id)).read("v1..2.txt") == b"x\n"


async def test_a_job_cannot_fake_its_exit_status_with_the_originals_exit_file(client):
    payload = await finished(client, script("echo 0 > .orchestrator.exit\nexit 3\n"))
    assert (payload.status, payload.exit_code) == ("Failed", 3)
    code, answer = await client.json(f"/retrieve/{payload.id}")
    assert (code, answer["status"], answer["exit_code"]) == (200, "Failed", 3)


async def test_uploaded_files_named_like_result_zips_do_not_replace_the_result(server, client):
    files = {**script("echo computed > out.txt\n"), "result.zip": b"fake result", "output.zip": b"fake output"}
    _, body = await upload(server, files)
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    payload_id = Job.get_by_id(body["id"]).dest_id
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    await poll_dispatched(server.ctx, time.time())
    await server.settle()
    assert job_status(body["id"]) == "Completed"

    response = await server.fetch(f"/download/{body['id']}")
    assert (response.code, response.headers["Content-Type"]) == (200, "application/zip")
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.read("out.txt") == b"computed\n"
    assert archive.read("result.zip") == b"fake result"
    assert archive.read("output.zip") == b"fake output"
    assert (await retrieved_zip(client, payload_id)).read("out.txt") == b"computed\n"


# The server's own API behind API_TOKEN.

SERVER_CALLS = [
    ("POST", "/upload"),
    ("GET", "/download/1"),
    ("HEAD", "/download/1"),
    ("GET", "/download_partial/1"),
    ("POST", "/terminate/1"),
]


async def server_call(server: Node, method: str, path: str, headers: dict[str, str]) -> tuple[int, dict | None]:
    kwargs: dict = {"method": method, "headers": dict(headers)}
    if path == "/upload":
        kwargs["body"], kwargs["headers"]["Content-Type"] = multipart(
            {"user_id": "1", "service": "example"}, script("echo hi\n")
        )
    elif method == "POST":
        kwargs["body"] = b""
    response = await server.fetch(path, **kwargs)
    return response.code, (json.loads(response.body) if response.body else None)


@pytest.mark.parametrize("headers", WRONG, ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic"])
async def test_a_server_with_api_tokens_answers_401_to_calls_without_one_and_does_nothing(nodes, client, headers):
    server = nodes("server", api_token="portal-a,portal-b", **services(client))
    for method, path in SERVER_CALLS:
        code, answer = await server_call(server, method, path, headers)
        assert code == 401, (method, path)
        if method != "HEAD":
            assert set(answer) == {"id", "status", "message"} and "API_TOKEN" in answer["message"]
            assert "portal-a" not in json.dumps(answer)
    assert Job.select().count() == 0
    assert data_files(server.config.data_path) == []


async def test_each_portal_calls_the_server_with_its_own_token(nodes):
    client = nodes("client", tasks=True, orch_token=TOKEN)
    server = nodes("server", tasks=True, orch_token=TOKEN, api_token="portal-a, portal-b", **services(client))
    code, first = await server_call(server, "POST", "/upload", auth("portal-a"))
    assert code == 201
    code, second = await server_call(server, "POST", "/upload", auth("portal-b"))
    assert code == 201
    await wait_for(lambda: {job_status(first["id"]), job_status(second["id"])} <= DONE)
    response = await server.fetch(f"/download/{first['id']}", headers=auth("portal-b"))
    assert (response.code, response.headers["Content-Type"]) == (200, "application/zip")
    code, answer = await server_call(server, "POST", f"/terminate/{second['id']}", auth("portal-a"))
    assert code == 409  # authorised: it had finished


@pytest.mark.parametrize("path", ["/", "/health", "/api-docs/openapi.json", "/swagger-ui/"])
async def test_ping_health_and_the_api_documentation_need_no_api_token(nodes, path):
    server = nodes("server", api_token="portal-a")
    assert (await server.fetch(path)).code == 200


@pytest.mark.parametrize("value", ["has space", "a,b c", "tab\there"])
def test_an_api_token_that_cannot_travel_in_a_header_is_refused_at_start(value):
    with pytest.raises(ValueError, match="API_TOKEN"):
        load("server", {"API_TOKEN": value})


# Permissions: job data for the processes' user only.


async def test_databases_folders_and_zips_are_for_the_process_user_only(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    _, body = await upload(server, script("echo hi > out.txt\n"))
    await wait_for(lambda: job_status(body["id"]) in DONE)
    assert (await server.fetch(f"/download/{body['id']}")).code == 200
    job = Job.get_by_id(body["id"])

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    server_data, client_data = server.config.data_path, client.config.data_path
    for database in (server.config.db_path, client.config.db_path):
        assert mode(database) == 0o600, database
        assert all(mode(path) == 0o600 for path in database.parent.glob(database.name + "-*")), database
    assert mode(server_data) == 0o700 and mode(server_data / job.folder) == 0o700
    assert mode(server_data / f"{job.folder}.zip") == 0o600
    assert mode(client_data) == 0o711  # job users go through to their folder, and see no other
    assert mode(client_data / ".control") == 0o700
    assert mode(client_data / str(job.dest_id)) == 0o700
    assert mode(client_data / ".control" / f"{job.dest_id}.zip") == 0o600
    assert all(mode(path) & 0o077 == 0 for path in (client_data / str(job.dest_id)).iterdir())
