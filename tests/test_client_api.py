"""The client's HTTP API over real loopback HTTP: submit, retrieve, partial retrieve, kill, load, ping, health
and its OpenAPI document. The runner runs only when a test calls its tick; run.sh scripts are real bash."""

import io
import json
import time
import zipfile
from pathlib import Path

import psutil
import pytest

from orch.models import Payload
from tasks.cleaner import clean_payloads
from tasks.runner import start_prepared
from tests.conftest import data_files, multipart, payload_status, script, wait_for

PAYLOAD_KEYS = {"id", "input", "status", "loc", "pid", "killed"}
ERROR_KEYS = {"id", "status", "message"}


async def submit(client, files: dict[str, bytes], file_field: str = "file") -> tuple[int, dict]:
    """POST /submit as the server does; returns the code and the JSON body."""
    body, content_type = multipart(files=files, file_field=file_field)
    return await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})


async def submitted(client, files: dict[str, bytes]) -> int:
    code, body = await submit(client, files)
    assert code == 200
    return body["id"]


async def finished(client, files: dict[str, bytes]) -> int:
    """A payload whose run.sh has run to its end through the runner."""
    payload_id = await submitted(client, files)
    assert await start_prepared(client.ctx, time.time()) == 1
    await client.settle()
    return payload_id


def assert_left_nothing(client) -> None:
    """A refused submit leaves no payload row and no file under DATA_PATH."""
    assert Payload.select().count() == 0
    assert data_files(client.config.data_path) == []
    left = [str(path.relative_to(client.config.data_path)) for path in client.config.data_path.rglob("*")]
    assert set(left) <= {".tmp", ".control", ".lock", ".identity"}  # not even an empty folder


def gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


# --- submit ---


async def test_submit_answers_the_prepared_payload_with_the_originals_keys(client):
    code, body = await submit(client, script("echo hi\n"))
    assert code == 200
    assert PAYLOAD_KEYS <= body.keys()
    assert isinstance(body["id"], int) and body["id"] > 0
    assert (body["status"], body["input"], body["pid"], body["killed"]) == ("Prepared", {}, 0, False)
    assert body["loc"] == str(client.config.data_path / str(body["id"]))
    assert payload_status(body["id"]) == "Prepared"


async def test_submitted_files_land_in_the_payload_folder_under_safe_names(client):
    files = {"run.sh": b"echo hi\n", "../../evil.txt": b"evil", "/abs/data.txt": b"data"}
    code, body = await submit(client, files, file_field="anything")
    assert code == 200
    folder = client.config.data_path / str(body["id"])
    assert data_files(client.config.data_path) == [
        f"{body['id']}/{name}" for name in ("data.txt", "evil.txt", "run.sh")
    ]
    assert (folder / "evil.txt").read_bytes() == b"evil"
    assert (folder / "data.txt").read_bytes() == b"data"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"{}"),
        ("multipart/form-data; boundary=x", b"this is not a multipart body at all"),
        (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="run.sh"\r\n\r\necho cut short',
        ),
    ],
    ids=["not-multipart", "garbage", "cut-short"],
)
async def test_submit_of_a_malformed_body_is_400_and_leaves_nothing(client, content_type, body):
    code, answer = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
    assert code == 400
    assert answer.keys() == ERROR_KEYS
    assert_left_nothing(client)


async def test_submit_over_max_upload_size_is_413_and_leaves_nothing(nodes):
    client = nodes("client", max_upload_size=1000)
    code, answer = await submit(client, {"run.sh": b"x" * 2000})
    assert code == 413
    assert answer.keys() == ERROR_KEYS
    assert_left_nothing(client)
    code, _ = await submit(client, {"run.sh": b"x" * 100})
    assert code == 200


# --- retrieve ---


async def test_retrieve_of_an_unknown_payload_is_404(client):
    code, body = await client.json("/retrieve/9999")
    assert code == 404
    assert body.keys() == ERROR_KEYS


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "99999999999"])
async def test_retrieve_with_an_id_that_is_not_a_whole_number_is_400(client, raw):
    code, body = await client.json(f"/retrieve/{raw}")
    assert code == 400
    assert body.keys() == ERROR_KEYS


async def test_retrieve_of_a_prepared_payload_is_its_json(client):
    payload_id = await submitted(client, script("echo hi\n"))
    response = await client.fetch(f"/retrieve/{payload_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert PAYLOAD_KEYS <= body.keys()
    assert (body["id"], body["status"], body["input"]) == (payload_id, "Prepared", {})


async def test_retrieve_of_a_completed_payload_is_a_zip_of_its_outputs_and_log(client):
    payload_id = await finished(client, script("echo result > out.txt\nmkdir sub\necho deep > sub/x\necho logged\n"))
    assert payload_status(payload_id) == "Completed"
    response = await client.fetch(f"/retrieve/{payload_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert {"run.sh", "out.txt", "sub/x", "run.log"} <= set(archive.namelist())
    assert archive.read("out.txt") == b"result\n"
    assert archive.read("sub/x") == b"deep\n"
    assert archive.read("run.log") == b"logged\n"

    head = await client.fetch(f"/retrieve/{payload_id}", method="HEAD")
    assert (head.code, head.body) == (200, b"")
    for name in ("Content-Type", "Content-Length"):
        assert head.headers[name] == response.headers[name]


async def test_head_of_retrieve_for_a_payload_json_has_no_body(client):
    payload_id = await submitted(client, script("echo hi\n"))
    get = await client.fetch(f"/retrieve/{payload_id}")
    head = await client.fetch(f"/retrieve/{payload_id}", method="HEAD")
    assert (head.code, head.body) == (200, b"")
    assert head.headers["Content-Type"] == "application/json"
    assert head.headers["Content-Length"] == str(len(get.body))


async def test_retrieve_of_a_failed_payload_is_its_json_with_the_reason(client):
    payload_id = await finished(client, script("exit 3\n"))
    code, body = await client.json(f"/retrieve/{payload_id}")
    assert code == 200
    assert (body["status"], body["message"]) == ("Failed", "run.sh exited with code 3")


# --- retrieve_partial ---


async def test_retrieve_partial_of_a_prepared_payload_is_a_zip_of_its_files(client):
    payload_id = await submitted(client, {"run.sh": b"echo hi\n", "test.txt": b"partial data"})
    response = await client.fetch(f"/retrieve_partial/{payload_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert sorted(archive.namelist()) == ["run.sh", "test.txt"]
    assert archive.read("test.txt") == b"partial data"
    head = await client.fetch(f"/retrieve_partial/{payload_id}", method="HEAD")
    assert (head.code, head.body, head.headers["Content-Type"]) == (200, b"", "application/zip")
    assert data_files(client.ctx.tmp_path) == []  # the scratch zips are removed once sent


async def test_retrieve_partial_of_an_unknown_payload_is_404(client):
    code, body = await client.json("/retrieve_partial/9999")
    assert code == 404
    assert body.keys() == ERROR_KEYS


async def test_retrieve_partial_is_404_once_the_cleaner_removed_the_payloads_files(client):
    payload_id = await finished(client, script("echo done > out.txt\n"))
    assert await clean_payloads(client.ctx, time.time() + client.config.max_age) == 1
    assert not (client.config.data_path / str(payload_id)).exists()
    code, body = await client.json(f"/retrieve_partial/{payload_id}")
    assert code == 404
    assert body.keys() == ERROR_KEYS
    code, body = await client.json(f"/retrieve/{payload_id}")
    assert (code, body["status"]) == (200, "Cleaned")


# --- kill ---


async def test_kill_of_an_unknown_payload_is_404(client):
    code, body = await client.json("/kill/9999", method="POST", body=b"")
    assert code == 404
    assert body.keys() == ERROR_KEYS


async def test_killed_prepared_payload_never_starts(client):
    payload_id = await submitted(client, script("echo started > started.txt\n"))
    code, body = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert code == 200
    assert (body["id"], body["status"], body["killed"]) == (payload_id, "Killed", True)

    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.pid) == ("Killed", 0)
    folder = client.config.data_path / str(payload_id)
    assert not (folder / "run.log").exists() and not (folder / "started.txt").exists()


async def test_kill_of_a_running_payload_stops_its_whole_process_tree(client):
    payload_id = await submitted(client, script("sleep 300 &\necho $! > child.pid\nsleep 300\n"))
    assert await start_prepared(client.ctx, time.time()) == 1
    folder = client.config.data_path / str(payload_id)
    child = int(await wait_for(lambda: read(folder / "child.pid")))
    payload = Payload.get_by_id(payload_id)
    assert payload.status == "Running" and payload.pid > 0
    assert not gone(payload.pid) and not gone(child)

    code, body = await client.json(f"/kill/{payload_id}", method="POST", body=b"")

    assert code == 200
    assert (body["id"], body["status"], body["killed"]) == (payload_id, "Killed", True)
    assert payload_status(payload_id) == "Killed"
    assert gone(payload.pid)
    await wait_for(lambda: gone(child))


async def test_kill_of_a_finished_payload_leaves_it_as_it_was(client):
    payload_id = await finished(client, script("echo result > out.txt\n"))
    before = Payload.get_by_id(payload_id)
    assert before.status == "Completed"
    code, body = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert code == 200
    assert body["status"] == "Completed"
    after = Payload.get_by_id(payload_id)
    assert (after.status, after.exit_code, after.finished_at) == ("Completed", 0, before.finished_at)
    response = await client.fetch(f"/retrieve/{payload_id}")
    assert response.headers["Content-Type"] == "application/zip"
    assert zipfile.ZipFile(io.BytesIO(response.body)).read("out.txt") == b"result\n"


# --- load, ping, health, docs ---


async def test_load_is_a_bare_percentage(client):
    for _ in range(2):  # the first answer measures since start-up, the second since the first
        response = await client.fetch("/load")
        assert response.code == 200
        load = json.loads(response.body)
        assert isinstance(load, int | float) and not isinstance(load, bool)
        assert 0 <= load <= 100


async def test_ping_and_health(client):
    assert await client.json("/") == (200, {"message": "pong"})
    assert await client.json("/health") == (200, {"status": "ok", "database": "ok"})


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/kill/1", 405),
        ("POST", "/retrieve/1", 405),
        ("GET", "/submit", 405),
    ],
)
async def test_unknown_paths_and_wrong_methods_answer_json_errors(client, method, path, code):
    response = await client.fetch(path, method=method, body=b"" if method == "POST" else None)
    assert response.code == code
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body).keys() == ERROR_KEYS


async def test_client_openapi_document_lists_its_routes(client):
    code, spec = await client.json("/api-docs/openapi.json")
    assert code == 200
    assert spec["openapi"].startswith("3.")
    methods = {path: set(operations) for path, operations in spec["paths"].items()}
    assert methods == {
        "/submit": {"post"},
        "/events": {"get"},
        "/retrieve/{payload_id}": {"get", "head"},
        "/retrieve_partial/{payload_id}": {"get", "head"},
        "/kill/{payload_id}": {"post"},
        "/status": {"get"},
        "/load": {"get"},
        "/metrics": {"get"},
        "/": {"get"},
        "/health": {"get"},
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "Invalid Swagger" not in operation.get("tags", []), (path, method)
