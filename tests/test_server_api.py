"""The server's HTTP API over real loopback HTTP: upload, download, partial download, terminate, ping, health
and docs. Partial downloads and terminations talk to a real client app; a client that is down is a closed port."""

import asyncio
import io
import json
import logging
import re
import time
import zipfile
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.testing import bind_unused_port

from orch import database, jobs
from orch.models import Job, JobEvent, Payload, server_db, transition
from orch.states import Status
from tasks.sender import send_queued
from tests.conftest import (
    accept_error_logs,
    data_files,
    job_status,
    multipart,
    payload_status,
    script,
    services,
    upload,
    wait_for,
)

pytestmark = pytest.mark.both_databases

RUN_SH = script("echo hello > out.txt\n")
ERROR_KEYS = {"id", "status", "message"}


async def post_upload(
    server, fields: dict[str, str], files: dict[str, bytes] | None = None, file_field: str = "file"
) -> tuple[int, dict]:
    """POST /upload with exactly these text fields and files."""
    body, content_type = multipart(fields, files, file_field)
    return await server.json("/upload", method="POST", body=body, headers={"Content-Type": content_type})


def assert_left_nothing(server) -> None:
    """A refused upload leaves no job row and no file anywhere under DATA_PATH."""
    assert Job.select().count() == 0
    assert data_files(server.config.data_path) == []
    data = server.config.data_path
    left = [str(path.relative_to(data)) for path in data.rglob("*")]
    scratch = str(server.ctx.tmp_path.relative_to(data))  # the process's own when it shares the data folder
    assert set(left) <= {".tmp", scratch, ".lock", ".identity"}  # not even an empty folder


def move(job_id: int, *path: Status, **values) -> None:
    """Walk a job from its current status along `path`, the way the tasks would (values set on the last step)."""
    current = Status(job_status(job_id))
    for i, status in enumerate(path):
        assert transition(Job, job_id, current, status, time.time(), **(values if i == len(path) - 1 else {}))
        current = status


async def queued_job(server, files: dict[str, bytes] = RUN_SH) -> int:
    code, body = await upload(server, files)
    assert code == 201
    return body["id"]


async def dispatched_job(server) -> int:
    """A job sent to the server's (real) client: Submitted there, its payload Prepared (the runner is off)."""
    job_id = await queued_job(server)
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    assert job_status(job_id) == "Submitted"
    return job_id


def closed_port() -> int:
    """A loopback port that nothing listens on."""
    sock, port = bind_unused_port()
    sock.close()
    return port


@pytest.fixture
def lonely_server(nodes):
    """A server whose `example` service points to a client that is down (a closed port)."""
    down = f"http://127.0.0.1:{closed_port()}"
    return nodes("server", service_example_upload_url=f"{down}/submit", service_example_download_url=f"{down}/retrieve")


@pytest.fixture
def small_server(nodes, client):
    """A server that accepts uploads of at most 1000 bytes."""
    return nodes("server", max_upload_size=1000, **services(client))


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


# --- upload ---


async def test_upload_queues_the_job_and_saves_its_files_in_the_job_folder(server):
    code, body = await upload(server, {"run.sh": b"echo hi\n", "data.txt": b"some data"}, user_id=7)
    assert code == 201
    assert body == {"id": body["id"], "status": "Queued", "message": "Job successfully uploaded"}
    assert isinstance(body["id"], int) and body["id"] > 0
    job = Job.get_by_id(body["id"])
    assert (job.status, job.user_id, job.service) == ("Queued", 7, "example")
    inputs = server.config.data_path / job.folder
    assert (inputs / "run.sh").read_bytes() == b"echo hi\n"
    assert (inputs / "data.txt").read_bytes() == b"some data"
    assert data_files(server.config.data_path) == [f"{job.folder}/data.txt", f"{job.folder}/run.sh"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"service": "example"}, "Missing user_id field"),
        ({"user_id": "abc", "service": "example"}, "Invalid user_id, should be a number"),
        ({"user_id": " 1", "service": "example"}, "Invalid user_id, should be a number"),
        ({"user_id": "1.0", "service": "example"}, "Invalid user_id, should be a number"),
        ({"user_id": "99999999999", "service": "example"}, "Invalid user_id, should be a number"),
        ({"user_id": "", "service": "example"}, "Invalid user_id, should be a number"),
        ({"user_id": "1"}, "Missing service field"),
        (
            {"user_id": "1", "service": "unknownservice"},
            "Invalid service 'unknownservice': the configured services are example",
        ),
        ({"user_id": "1", "service": "Example"}, "Invalid service 'Example': the configured services are example"),
    ],
)
async def test_upload_with_a_missing_or_wrong_field_is_refused_with_the_originals_message(server, fields, message):
    code, body = await post_upload(server, fields, RUN_SH)
    assert code == 400
    assert body == {"id": 0, "status": "Unknown", "message": message}
    assert_left_nothing(server)


async def test_upload_accepts_a_negative_user_id(server):
    code, body = await upload(server, RUN_SH, user_id="-5")
    assert code == 201
    assert Job.get_by_id(body["id"]).user_id == -5


async def test_upload_accepts_a_job_without_files(server):
    code, body = await upload(server, {})
    assert (code, body["status"]) == (201, "Queued")
    assert job_status(body["id"]) == "Queued"
    assert data_files(server.config.data_path) == []


async def test_upload_takes_any_part_with_a_filename_as_a_file_whatever_its_field_name(server):
    code, body = await post_upload(server, {"user_id": "1", "service": "example"}, RUN_SH, file_field="attachment")
    assert code == 201
    job = Job.get_by_id(body["id"])
    assert (server.config.data_path / job.folder / "run.sh").read_bytes() == RUN_SH["run.sh"]


async def test_upload_saves_files_under_their_base_name_inside_the_job_folder(server, tmp_path):
    code, body = await upload(server, {"../../etc/passwd": b"not yours", "/abs/x": b"absolute"})
    assert code == 201
    job = Job.get_by_id(body["id"])
    assert data_files(server.config.data_path) == [f"{job.folder}/passwd", f"{job.folder}/x"]
    escaped = sorted(path.name for path in tmp_path.rglob("*") if path.name in ("passwd", "x", "etc", "abs"))
    assert escaped == ["passwd", "x"]  # only the two saved in the job folder: nothing outside it
    assert (server.config.data_path / job.folder / "passwd").read_bytes() == b"not yours"


async def test_upload_with_a_content_length_over_the_limit_is_refused_with_413(small_server):
    body, content_type = multipart({"user_id": "1", "service": "example"}, {"run.sh": b"x" * 2000})
    code, answer = await small_server.json("/upload", method="POST", body=body, headers={"Content-Type": content_type})
    assert code == 413
    assert answer.keys() == ERROR_KEYS and "limit" in answer["message"]
    assert_left_nothing(small_server)


async def test_upload_under_the_limit_is_accepted_by_a_server_with_a_small_limit(small_server):
    code, _ = await upload(small_server, {"run.sh": b"x" * 100})
    assert code == 201


async def test_chunked_upload_over_the_limit_is_refused_with_413_and_its_partial_files_removed(small_server):
    body, content_type = multipart({"user_id": "1", "service": "example"}, {"run.sh": b"x" * 5000})

    async def produce(write) -> None:
        for start in range(0, len(body), 500):
            await write(body[start : start + 500])

    request = HTTPRequest(
        small_server.url + "/upload", method="POST", headers={"Content-Type": content_type}, body_producer=produce
    )
    response = await small_server.ctx.http.fetch(request, raise_error=False)
    assert "Content-Length" not in request.headers
    assert response.code == 413
    assert json.loads(response.body).keys() == ERROR_KEYS
    assert_left_nothing(small_server)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"user_id": 1, "service": "example"}'),
        ("multipart/form-data", b"--x\r\n"),
        ("multipart/form-data; boundary=x", b"this is not a multipart body at all"),
        ("multipart/form-data; boundary=x", b"--x\r\nno-disposition: here\r\n\r\nvalue\r\n--x--\r\n"),
    ],
    ids=["not-multipart", "no-boundary", "garbage", "part-without-disposition"],
)
async def test_upload_of_a_body_that_is_not_valid_multipart_is_refused_with_400(server, content_type, body):
    code, answer = await server.json("/upload", method="POST", body=body, headers={"Content-Type": content_type})
    assert code == 400
    assert answer.keys() == ERROR_KEYS
    assert_left_nothing(server)


async def test_upload_cut_before_its_closing_boundary_is_refused_with_400_and_its_files_removed(server):
    body, content_type = multipart({"user_id": "1", "service": "example"}, RUN_SH)
    cut = body[: body.rindex(b"--" + content_type.split("=")[1].encode())]
    code, answer = await server.json("/upload", method="POST", body=cut, headers={"Content-Type": content_type})
    assert code == 400
    assert "closing boundary" in answer["message"]
    assert_left_nothing(server)


async def test_upload_dropped_by_the_portal_half_way_leaves_nothing_behind(server):
    body, content_type = multipart({"user_id": "1", "service": "example"}, {"run.sh": b"x" * 100_000})
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:50_000]
    )
    await writer.drain()
    await wait_for(lambda: data_files(server.config.data_path))  # the file part is being written
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: not data_files(server.config.data_path))
    assert Job.select().count() == 0


async def test_upload_wakes_no_task_when_tasks_are_off(server):
    job_id = await queued_job(server)
    await server.settle()
    assert job_status(job_id) == "Queued"
    assert Payload.select().count() == 0


# --- download ---


async def test_download_of_an_unknown_job_is_404_json_naming_it(server):
    code, body = await server.json("/download/9999")
    assert code == 404
    assert body.keys() == ERROR_KEYS
    assert "not found" in body["message"] and "9999" in body["message"]


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "99999999999"])
async def test_download_with_an_id_that_is_not_a_whole_number_is_400(server, raw):
    code, body = await server.json(f"/download/{raw}")
    assert code == 400
    assert body.keys() == ERROR_KEYS


async def test_download_of_a_queued_job_is_its_status(server):
    job_id = await queued_job(server)
    response = await server.fetch(f"/download/{job_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body) == {"id": job_id, "status": "Queued", "message": ""}


async def test_download_of_a_running_job_is_its_status(server):
    job_id = await queued_job(server)
    move(job_id, Status.PROCESSING, Status.SUBMITTED, Status.RUNNING, dest_id=1)
    code, body = await server.json(f"/download/{job_id}")
    assert (code, body) == (200, {"id": job_id, "status": "Running", "message": ""})


async def test_download_of_a_failed_job_carries_the_reason(server):
    job_id = await queued_job(server)
    assert transition(Job, job_id, Status.QUEUED, Status.FAILED, time.time(), "the client refused the job")
    code, body = await server.json(f"/download/{job_id}")
    assert (code, body) == (200, {"id": job_id, "status": "Failed", "message": "the client refused the job"})


async def completed_job(server) -> tuple[int, bytes]:
    """A Completed job whose result zip is in place; returns its id and the zip's bytes."""
    job_id = await queued_job(server)
    result = zip_bytes({"out.txt": b"hello\n", "run.log": b""})
    jobs.result_file(server.ctx, Job.get_by_id(job_id)).write_bytes(result)
    move(job_id, Status.PROCESSING, Status.SUBMITTED, Status.COMPLETED, dest_id=1)
    return job_id, result


async def test_download_of_a_completed_job_is_its_result_zip_as_an_attachment(server):
    job_id, result = await completed_job(server)
    response = await server.fetch(f"/download/{job_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    assert re.fullmatch(r'attachment; filename="[^"/]+\.zip"', response.headers["Content-Disposition"])
    assert int(response.headers["Content-Length"]) == len(result)
    assert response.body == result
    assert zipfile.ZipFile(io.BytesIO(response.body)).read("out.txt") == b"hello\n"


async def test_head_of_a_completed_download_has_the_headers_of_get_and_no_body(server):
    job_id, result = await completed_job(server)
    get = await server.fetch(f"/download/{job_id}")
    head = await server.fetch(f"/download/{job_id}", method="HEAD")
    assert (head.code, head.body) == (200, b"")
    for name in ("Content-Type", "Content-Length", "Content-Disposition"):
        assert head.headers[name] == get.headers[name]
    assert int(head.headers["Content-Length"]) == len(result)


async def test_head_of_a_status_download_has_the_headers_of_get_and_no_body(server):
    job_id = await queued_job(server)
    get = await server.fetch(f"/download/{job_id}")
    head = await server.fetch(f"/download/{job_id}", method="HEAD")
    assert (head.code, head.body) == (200, b"")
    assert head.headers["Content-Type"] == get.headers["Content-Type"] == "application/json"
    assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.body))
    unknown = await server.fetch("/download/9999", method="HEAD")
    assert (unknown.code, unknown.body) == (404, b"")


async def test_download_of_a_completed_job_whose_zip_is_missing_is_500_json_without_traceback(server, caplog):
    job_id, _ = await completed_job(server)
    jobs.result_file(server.ctx, Job.get_by_id(job_id)).unlink()
    caplog.set_level(logging.DEBUG)
    response = await server.fetch(f"/download/{job_id}")
    assert response.code == 500
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body == {"id": job_id, "status": "Completed", "message": "Error reading output file"}
    assert "output file" in body["message"]
    assert not [record for record in caplog.records if record.exc_info]
    accept_error_logs(caplog, f"500 GET /download/{job_id}")


# --- download_partial ---


async def test_partial_download_of_an_unknown_job_is_404(server):
    code, body = await server.json("/download_partial/9999")
    assert code == 404
    assert "not found" in body["message"] and "9999" in body["message"]


async def test_partial_download_of_a_job_never_dispatched_is_404(server):
    job_id = await queued_job(server)
    code, body = await server.json(f"/download_partial/{job_id}")
    assert (code, body["id"], body["message"]) == (404, job_id, "Job payload not found on client")


async def test_partial_download_of_a_dispatched_job_is_a_zip_of_its_folder_on_the_client(server, client):
    job_id = await dispatched_job(server)
    response = await server.fetch(f"/download_partial/{job_id}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.read("run.sh") == RUN_SH["run.sh"]
    assert payload_status(Job.get_by_id(job_id).dest_id) == "Prepared"
    head = await server.fetch(f"/download_partial/{job_id}", method="HEAD")
    assert (head.code, head.body, head.headers["Content-Type"]) == (200, b"", "application/zip")
    assert data_files(server.ctx.tmp_path) == []  # the spooled zips are removed once sent


async def test_partial_download_is_404_when_the_client_no_longer_knows_the_payload(server, client):
    job_id = await dispatched_job(server)
    Job.update(dest_id=424242).where(Job.id == job_id).execute()
    code, body = await server.json(f"/download_partial/{job_id}")
    assert (code, body["message"]) == (404, "Job payload not found on client")


async def test_partial_download_is_502_json_when_the_client_is_down(lonely_server, caplog):
    job_id = await queued_job(lonely_server)
    move(job_id, Status.PROCESSING, Status.SUBMITTED, dest_id=1)
    code, body = await lonely_server.json(f"/download_partial/{job_id}")
    assert code == 502
    assert body.keys() == ERROR_KEYS
    assert "Error retrieving partial data from client" in body["message"]
    accept_error_logs(caplog, f"502 GET /download_partial/{job_id}")


# --- terminate ---


async def test_terminate_of_an_unknown_job_is_404(server):
    code, body = await server.json("/terminate/9999", method="POST", body=b"")
    assert code == 404
    assert "not found" in body["message"] and "9999" in body["message"]


async def test_terminate_of_a_queued_job_cancels_it_without_the_client(server, client):
    job_id = await queued_job(server)
    code, body = await server.json(f"/terminate/{job_id}", method="POST", body=b"")
    assert (code, body) == (200, {"id": job_id, "status": "Killed", "message": "job terminated"})
    assert job_status(job_id) == "Killed"
    assert await send_queued(server.ctx, time.time()) == 0
    await server.settle()
    assert Payload.select().count() == 0


async def test_terminate_of_a_dispatched_job_kills_its_payload_on_the_client(server, client):
    job_id = await dispatched_job(server)
    code, body = await server.json(f"/terminate/{job_id}", method="POST", body=b"")
    assert (code, body) == (200, {"id": job_id, "status": "Killed", "message": "job terminated"})
    assert job_status(job_id) == "Killed"
    assert payload_status(Job.get_by_id(job_id).dest_id) == "Killed"


@pytest.mark.parametrize(
    "path",
    [
        (Status.PROCESSING, Status.SUBMITTED, Status.COMPLETED),
        (Status.FAILED,),
        (Status.KILLED,),
    ],
    ids=["Completed", "Failed", "Killed"],
)
async def test_terminate_of_a_finished_job_is_409_with_its_status_and_changes_nothing(server, client, path):
    job_id = await queued_job(server)
    move(job_id, *path, **({"dest_id": 1} if Status.SUBMITTED in path else {}))
    before = Job.get_by_id(job_id)
    events = JobEvent.select().where(JobEvent.job == job_id).count()
    code, body = await server.json(f"/terminate/{job_id}", method="POST", body=b"")
    assert code == 409
    assert (body["id"], body["status"]) == (job_id, path[-1].value)
    after = Job.get_by_id(job_id)
    assert (after.status, after.updated_at, after.message) == (before.status, before.updated_at, before.message)
    assert JobEvent.select().where(JobEvent.job == job_id).count() == events


async def test_terminate_is_502_when_the_client_is_down_and_the_job_keeps_its_status(lonely_server, caplog):
    job_id = await queued_job(lonely_server)
    move(job_id, Status.PROCESSING, Status.SUBMITTED, dest_id=1)
    code, body = await lonely_server.json(f"/terminate/{job_id}", method="POST", body=b"")
    assert code == 502
    assert body.keys() == ERROR_KEYS
    assert "could not terminate" in body["message"]
    assert job_status(job_id) == "Submitted"
    accept_error_logs(caplog, f"502 POST /terminate/{job_id}")


async def test_errors_about_a_job_whose_client_is_down_name_the_job_in_their_body(lonely_server, caplog):
    """As the original does (`{"id": <id>, ...}`), so a portal can tell which job could not be reached."""
    job_id = await queued_job(lonely_server)
    move(job_id, Status.PROCESSING, Status.SUBMITTED, dest_id=1)
    for path, method in ((f"/download_partial/{job_id}", "GET"), (f"/terminate/{job_id}", "POST")):
        code, body = await lonely_server.json(path, method=method, body=b"" if method == "POST" else None)
        assert (code, body["id"]) == (502, job_id), path
    accept_error_logs(caplog, "502 GET /download_partial", "502 POST /terminate")


# --- ping, health, errors ---


async def test_ping_answers_pong(server):
    assert await server.json("/") == (200, {"message": "pong"})


async def test_health_is_ok_while_the_database_answers(server):
    assert await server.json("/health") == (200, {"status": "ok", "database": "ok"})


async def test_health_is_503_json_when_the_database_cannot_be_opened(server, tmp_path, caplog):
    closed, port = bind_unused_port()  # nothing accepts there
    closed.close()
    database.close(server_db)
    if isinstance(server.config.database, Path):
        server_db.initialize(database.connect(tmp_path / "gone" / "server.sqlite"))
    else:
        server_db.initialize(database.connect(f"postgresql://nobody@127.0.0.1:{port}/gone"))
    response = await server.fetch("/health")
    assert response.code == 503
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body)
    assert body["status"] != "ok" and body["database"] != "ok"
    accept_error_logs(caplog, "503 GET /health")
    server_db.initialize(database.connect(server.config.database))  # back, for the node to stop as usual


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/no/such/endpoint", 404),
        ("POST", "/no/such/endpoint", 404),
        ("GET", "/upload", 405),
        ("DELETE", "/download/1", 405),
        ("GET", "/terminate/1", 405),
        ("POST", "/download/1", 405),
    ],
)
async def test_unknown_paths_and_wrong_methods_answer_the_one_json_error_body(server, method, path, code):
    response = await server.fetch(path, method=method, body=b"" if method == "POST" else None)
    assert response.code == code
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body).keys() == ERROR_KEYS


async def test_every_error_body_of_the_api_has_exactly_id_status_and_message(server, client):
    queued = await queued_job(server)
    finished = await queued_job(server)
    move(finished, Status.FAILED)
    answers = [
        await post_upload(server, {"service": "example"}),
        await server.json("/upload", method="POST", body=b"x", headers={"Content-Type": "text/plain"}),
        await server.json("/download/abc"),
        await server.json("/download/9999"),
        await server.json("/download_partial/9999"),
        await server.json(f"/download_partial/{queued}"),
        await server.json("/terminate/9999", method="POST", body=b""),
        await server.json(f"/terminate/{finished}", method="POST", body=b""),
        await server.json("/nowhere"),
        await server.json("/", method="POST", body=b""),
    ]
    for code, body in answers:
        assert code >= 400
        assert body.keys() == ERROR_KEYS, body
        assert isinstance(body["id"], int) and isinstance(body["status"], str) and body["message"]


# --- docs ---


async def test_openapi_document_describes_every_route_and_method(server):
    code, spec = await server.json("/api-docs/openapi.json")
    assert code == 200
    assert spec["openapi"].startswith("3.")
    methods = {path: set(operations) for path, operations in spec["paths"].items()}
    assert methods == {
        "/upload": {"post"},
        "/download/{job_id}": {"get", "head"},
        "/download_partial/{job_id}": {"get", "head"},
        "/terminate/{job_id}": {"post"},
        "/jobs": {"get"},
        "/jobs/{job_id}": {"get"},
        "/overview": {"get"},
        "/metrics": {"get"},
        "/clients": {"post"},
        "/": {"get"},
        "/health": {"get"},
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert "Invalid Swagger" not in operation.get("tags", []), (path, method)
            assert operation.get("responses"), (path, method)
    assert set(spec["components"]["schemas"]) == {"StatusBody", "JobSummary", "JobDetail", "Overview"}


async def test_swagger_ui_is_served_locally_without_a_cdn(server):
    page = await server.fetch("/swagger-ui/")
    assert page.code == 200
    html = page.body.decode()
    assert "swagger-ui-bundle.js" in html
    assert "https://" not in html
    bundle = await server.fetch("/swagger-ui/swagger-ui-bundle.js")
    assert bundle.code == 200 and len(bundle.body) > 0
    initializer = await server.fetch("/swagger-ui/swagger-initializer.js")
    assert initializer.code == 200 and b"/api-docs/openapi.json" in initializer.body


async def test_swagger_redirects_to_the_ui(server):
    response = await server.fetch("/swagger", follow_redirects=False)
    assert response.code in (301, 302)
    assert response.headers["Location"] == "/swagger-ui/"
