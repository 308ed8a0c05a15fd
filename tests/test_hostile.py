"""Hostile input: Schemathesis against the OpenAPI document of both modes (real orchestrator.py processes), then
hand-made malformed, oversized, odd and slow uploads over real HTTP. Whatever comes in, the answer is a clear 4xx
or a correct job, never a 5xx or a crash, and nothing is left half-written on disk."""

import asyncio
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orch.models import Job, Payload
from tasks.sender import send_queued
from tests.conftest import WAIT_TIMEOUT, data_files, job_status, payload_status, script, upload, wait_for
from tests.test_e2e import Process
from tests.test_e2e import request as http_request

BOUNDARY = b"hostile-boundary-0123456789"
FIELDS = {"user_id": b"1", "service": b"example"}
RUN_SH = b"echo hello > out.txt\n"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
SCHEMATHESIS_EXAMPLES = 20  # per operation: about 15 s per mode, phases coverage, fuzzing and stateful
SCHEMATHESIS_TIMEOUT = 120.0


# --- building bodies byte by byte ---


def part(disposition: bytes, content: bytes = b"", headers: bytes = b"", boundary: bytes = BOUNDARY) -> bytes:
    """One multipart part, exactly as given (no quoting, no escaping)."""
    head = b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n" + headers
    return head + b"\r\n" + content + b"\r\n"


def field(name: bytes, value: bytes, boundary: bytes = BOUNDARY) -> bytes:
    return part(b'form-data; name="' + name + b'"', value, boundary=boundary)


def file_part(filename: bytes, content: bytes = b"", boundary: bytes = BOUNDARY) -> bytes:
    return part(
        b'form-data; name="file"; filename="' + filename + b'"',
        content,
        b"Content-Type: application/octet-stream\r\n",
        boundary,
    )


def body(*parts: bytes, fields: dict[str, bytes] = FIELDS, boundary: bytes = BOUNDARY) -> bytes:
    """A whole multipart body: the text `fields` first, then `parts`, then the closing boundary."""
    head = b"".join(field(name.encode(), value, boundary) for name, value in fields.items())
    return head + b"".join(parts) + b"--" + boundary + b"--\r\n"


def content_type(boundary: bytes = BOUNDARY) -> str:
    return f"multipart/form-data; boundary={boundary.decode()}"


async def post(node, path: str, payload: bytes, boundary: bytes = BOUNDARY) -> tuple[int, dict | None]:
    """POST a raw multipart body; the code and the JSON answer (None when the answer is not JSON)."""
    response = await node.fetch(path, method="POST", body=payload, headers={"Content-Type": content_type(boundary)})
    try:
        answer = json.loads(response.body)
    except ValueError:
        answer = None
    return response.code, answer


def port_of(node) -> int:
    return int(node.url.rsplit(":", 1)[1])


async def raw_exchange(node, data: bytes) -> tuple[int | None, bytes]:
    """Send `data` as is on a new connection and read until the server closes it: the status code (None when
    the server closed without answering) and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT_TIMEOUT)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
        await writer.wait_closed()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return (int(match[1]) if match else None), answer


def request_head(path: str, *headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def staged(node) -> list[Path]:
    """The folders of uploads being received: on a server, job folders that no job names yet; on a client,
    what is in its scratch folder."""
    if node.config.mode == "server":
        known = {job.folder for job in Job.select(Job.folder)}
        return [
            path
            for path in node.config.data_path.iterdir()
            if path.is_dir() and not path.name.startswith(".") and path.name not in known
        ]
    return list(node.config.tmp_path.iterdir()) if node.config.tmp_path.exists() else []


def error_logs(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


# --- what a refused or accepted upload leaves ---


def assert_server_left_nothing(server) -> None:
    """No job row, no file under DATA_PATH, and no folder but an empty .tmp."""
    assert Job.select().count() == 0
    assert data_files(server.config.data_path) == []
    left = {str(path.relative_to(server.config.data_path)) for path in server.config.data_path.rglob("*")}
    assert left <= {".tmp", ".lock", ".identity"}


def assert_client_left_nothing(client) -> None:
    """No payload row, no file under DATA_PATH, and no folder but an empty .tmp and the control folder."""
    assert Payload.select().count() == 0
    assert data_files(client.config.data_path) == []
    left = {str(path.relative_to(client.config.data_path)) for path in client.config.data_path.rglob("*")}
    assert left <= {".tmp", ".control", ".lock", ".identity"}


def job_inputs(server, job_id: int) -> list[str]:
    """The names of the files in the job's folder; every file under DATA_PATH must be one of them."""
    folder = Job.get_by_id(job_id).folder
    files = data_files(server.config.data_path)
    assert all(name.startswith(f"{folder}/") for name in files), files
    return [name.split("/", 1)[1] for name in files]


def payload_files(client, payload_id: int) -> list[str]:
    """The names of the files in the payload's folder; every file under DATA_PATH must be one of them."""
    files = data_files(client.config.data_path)
    assert all(name.startswith(f"{payload_id}/") for name in files), files
    return [name.split("/", 1)[1] for name in files]


async def dispatch(server, client, job_id: int) -> Path:
    """Send the job to the client (real HTTP); return the folder of its payload there."""
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    assert job_status(job_id) == "Submitted"
    dest_id = Job.get_by_id(job_id).dest_id
    assert payload_status(dest_id) == "Prepared"
    return client.config.data_path / str(dest_id)


# --- Schemathesis against both modes, as real processes ---


@pytest.fixture
def orchestrators(tmp_path):
    """A client process and a server process whose service `example` is that client; both killed at the end."""
    client = Process("client", tmp_path / "client", {"DB_PATH": "client.sqlite", "DATA_PATH": "data"})
    started = [client]
    try:
        server = Process(
            "server",
            tmp_path / "server",
            {
                "DB_PATH": "server.sqlite",
                "DATA_PATH": "data",
                "SERVICE_EXAMPLE_UPLOAD_URL": f"{client.url}/submit",
                "SERVICE_EXAMPLE_DOWNLOAD_URL": f"{client.url}/retrieve",
            },
        )
        started.append(server)
        yield {"server": server, "client": client}
    finally:
        for process in started:
            if process.popen.poll() is None:
                process.popen.kill()
                process.popen.wait(WAIT_TIMEOUT)


def folders_without_a_row(data_path: Path, db_path: Path, query: str) -> list[str]:
    """Folders under DATA_PATH (but .tmp and .control) that no row of the (stopped) node's database names."""
    with sqlite3.connect(db_path) as db:
        known = {str(name) for (name,) in db.execute(query)}
    return sorted(
        entry.name
        for entry in data_path.iterdir()
        if entry.is_dir() and entry.name not in (".tmp", ".control") and entry.name not in known
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["server", "client"])
def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_openapi_document(orchestrators, tmp_path, mode):
    """Schemathesis (coverage, fuzzing and stateful phases) against one mode's OpenAPI document: no 5xx, every
    answer as documented; both processes still serve afterwards, logged no traceback, and left no folder that
    belongs to no job or payload."""
    target = orchestrators[mode]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{target.url}/api-docs/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--generation-deterministic",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=SCHEMATHESIS_TIMEOUT,
    )

    for process in orchestrators.values():
        assert process.popen.poll() is None, process.log.read_text()[-4000:]
        code, _, answer = http_request(f"{process.url}/health")
        assert (code, json.loads(answer)) == (200, {"status": "ok", "database": "ok"})
        assert process.stop() == 0
    assert (
        folders_without_a_row(
            tmp_path / "server" / "data", tmp_path / "server" / "server.sqlite", "SELECT folder FROM jobs"
        )
        == []
    )
    assert (
        folders_without_a_row(
            tmp_path / "client" / "data", tmp_path / "client" / "client.sqlite", "SELECT id FROM payloads"
        )
        == []
    )
    problems = []
    if run.returncode != 0:
        problems.append(f"schemathesis exited with {run.returncode}:\n{run.stdout[-8000:]}{run.stderr[-2000:]}")
    for name, process in orchestrators.items():
        log = process.log.read_text()
        if "Traceback" in log:
            first = log.index("Traceback")
            problems.append(f"the {name}'s log has a traceback:\n{log[max(0, first - 500) : first + 3000]}")
    assert not problems, "\n\n".join(problems)


# --- the server's /upload ---


async def test_ten_thousand_files_in_one_upload_make_one_job_that_reaches_its_client_whole(server, client):
    names = [f"f{i:05d}.txt" for i in range(10_000)]
    code, answer = await post(server, "/upload", body(*(file_part(name.encode(), name.encode()) for name in names)))
    assert code == 201, answer
    job_id = answer["id"]
    assert sorted(job_inputs(server, job_id)) == names

    payload_folder = await dispatch(server, client, job_id)

    assert sorted(payload_files(client, payload_folder.name)) == names
    assert (payload_folder / "f09999.txt").read_bytes() == b"f09999.txt"


UNICODE_NAMES = ["αβγ δ.txt", "数据-データ.csv", "🧪🔬.dat", "café.txt", "e\u0301.txt", "ÄÖÜ ß"]


async def test_unicode_file_names_are_kept_on_the_server_and_on_the_client(server, client):
    files = {name: name.encode() for name in UNICODE_NAMES}
    code, answer = await upload(server, files)
    assert code == 201, answer
    assert sorted(job_inputs(server, answer["id"])) == sorted(UNICODE_NAMES)

    payload_folder = await dispatch(server, client, answer["id"])

    assert sorted(payload_files(client, payload_folder.name)) == sorted(UNICODE_NAMES)
    assert all((payload_folder / name).read_bytes() == name.encode() for name in UNICODE_NAMES)


@pytest.mark.parametrize(
    ("raw", "saved"),
    [
        (b"a\tb.txt", "ab.txt"),
        (b"a\x00b.txt", "ab.txt"),
        (b"\x1b[31mred\x7f.txt", "[31mred.txt"),
        (b"a\rb.txt", None),  # a bare CR in a header line is malformed too
        (b"a\nb.txt", "ab.txt"),
        (b"a\r\nb.txt", None),  # a line break inside the part's header: the header is malformed
        (b"../\x00../etc/passwd", "passwd"),
        (b"\t\r\n", None),
    ],
    ids=["tab", "nul", "escape-and-del", "cr", "lf", "crlf", "nul-in-traversal", "only-controls"],
)
async def test_control_characters_in_file_names_are_removed_or_the_upload_is_refused(server, tmp_path, raw, saved):
    """Control characters never reach a file name: removed (the file lands in the job's folder) or, when they
    break the part's header, the upload is a 400 that leaves nothing."""
    code, answer = await post(server, "/upload", body(file_part(raw, b"data"), file_part(b"run.sh", RUN_SH)))
    if saved is None:
        assert code == 400, answer
        assert answer["message"].startswith("malformed multipart body")
        assert_server_left_nothing(server)
    else:
        assert code == 201, answer
        assert sorted(job_inputs(server, answer["id"])) == sorted([saved, "run.sh"])
        folder = server.config.data_path / Job.get_by_id(answer["id"]).folder
        assert (folder / saved).read_bytes() == b"data"
    outside = [path for path in tmp_path.rglob("*") if path.name in ("passwd", "etc") or "b.txt" in path.name]
    assert all(server.config.data_path in path.parents for path in outside), outside


@pytest.mark.parametrize("name", [b"user_id", b"service", b"comment"])
async def test_a_text_field_of_one_megabyte_is_refused_with_400_and_the_files_before_it_removed(server, name):
    code, answer = await post(server, "/upload", body(file_part(b"run.sh", RUN_SH), field(name, b"1" * 1024 * 1024)))
    assert code == 400
    assert answer == {"id": 0, "status": "Unknown", "message": f"field '{name.decode()}' is larger than 65536 bytes"}
    assert_server_left_nothing(server)


@pytest.mark.parametrize(
    "huge",
    [
        b"X-Padding: " + b"a" * 100_000 + b"\r\n",
        b"Content-Type: text/plain; charset=" + b"a" * 100_000 + b"\r\n",
    ],
    ids=["extra-header", "content-type"],
)
async def test_a_part_header_line_of_100_kb_is_refused_with_4xx_and_leaves_nothing(server, huge):
    code, answer = await post(
        server,
        "/upload",
        body(file_part(b"before.txt", b"x"), part(b'form-data; name="file"; filename="a.txt"', b"x", huge)),
    )
    assert 400 <= code < 500, answer
    assert answer["message"].startswith("malformed multipart body")
    assert_server_left_nothing(server)


async def test_a_file_name_of_100_kb_is_refused_with_4xx_and_leaves_nothing(server):
    code, answer = await post(server, "/upload", body(file_part(b"x" * 100_000, b"x")))
    assert 400 <= code < 500, answer
    assert_server_left_nothing(server)


@pytest.mark.parametrize("length", [70, 200, 1000])
async def test_a_long_boundary_makes_a_job_or_a_4xx_never_a_5xx(server, length):
    """RFC 2046 caps boundaries at 70 characters; longer ones are either parsed (a correct job) or refused."""
    boundary = b"b" * length
    payload = body(file_part(b"run.sh", RUN_SH, boundary), fields={}, boundary=boundary)
    payload = field(b"user_id", b"1", boundary) + field(b"service", b"example", boundary) + payload
    code, answer = await post(server, "/upload", payload, boundary)
    if code == 201:
        assert job_inputs(server, answer["id"]) == ["run.sh"]
        assert Job.get_by_id(answer["id"]).user_id == 1
    else:
        assert 400 <= code < 500, answer
        assert answer["message"].startswith("bad multipart boundary")
        assert_server_left_nothing(server)


async def test_a_body_shorter_than_its_content_length_then_a_close_leaves_nothing(server):
    payload = body(file_part(b"run.sh", RUN_SH), file_part(b"big.bin", b"x" * 100_000))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(
        request_head("/upload", f"Content-Type: {content_type()}", f"Content-Length: {len(payload) + 5000}") + payload
    )
    await writer.drain()
    await wait_for(lambda: sum(len(data_files(folder)) for folder in staged(server)) == 2)  # written, rest awaited
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: not staged(server))
    assert_server_left_nothing(server)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def chunked(payload: bytes, framing: str) -> bytes:
    """`payload` in two chunks and the last one, with one framing error (or none: "good")."""
    first, second = payload[: len(payload) // 2], payload[len(payload) // 2 :]
    last = b"0\r\n\r\n"
    return {
        "good": chunk(first) + chunk(second) + last,
        "size-not-hex": chunk(first) + b"zz\r\n" + second + b"\r\n" + last,
        "negative-size": chunk(first) + f"-{len(second):x}\r\n".encode() + second + b"\r\n" + last,
        "size-with-extension-junk": chunk(first) + f"{len(second):x};\x00\r\n".encode() + second + b"\r\n" + last,
        "size-line-over-64-bytes": chunk(first) + f"{len(second):0100x}\r\n".encode() + second + b"\r\n" + last,
        "no-crlf-after-data": f"{len(first):x}\r\n".encode() + first + b"XX" + chunk(second) + last,
        "size-over-the-body-limit": chunk(first) + b"ffffffffffff\r\n" + second + b"\r\n" + last,
        "size-bigger-than-sent-then-close": chunk(first) + f"{len(second) + 100:x}\r\n".encode() + second,
        "no-last-chunk-then-close": chunk(first) + chunk(second),
    }[framing]


BAD_FRAMINGS = [
    "size-not-hex",
    "negative-size",
    "size-with-extension-junk",
    "size-line-over-64-bytes",
    "no-crlf-after-data",
    "size-over-the-body-limit",
    "size-bigger-than-sent-then-close",
    "no-last-chunk-then-close",
]


async def send_chunked(node, path: str, payload: bytes, framing: str) -> tuple[int | None, bytes]:
    """POST `payload` with chunked framing on a raw connection, closing our side once sent (the server answers
    or closes); the status code (None when it closed without answering) and the whole answer."""
    head = request_head(path, f"Content-Type: {content_type()}", "Transfer-Encoding: chunked", "Connection: close")
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(node))
    writer.write(head + chunked(payload, framing))
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), WAIT_TIMEOUT)
    writer.close()
    await writer.wait_closed()
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    return (int(match[1]) if match else None), answer


async def test_a_well_framed_chunked_upload_makes_a_job(server):
    """The control for the bad framings below: the same body, well framed, is a job."""
    code, answer = await send_chunked(server, "/upload", body(file_part(b"run.sh", RUN_SH)), "good")
    assert code == 201, answer
    assert len(data_files(server.config.data_path)) == 1


@pytest.mark.parametrize("framing", BAD_FRAMINGS)
async def test_chunked_upload_with_bad_framing_is_4xx_or_closed_and_leaves_nothing(server, framing):
    code, answer = await send_chunked(server, "/upload", body(file_part(b"run.sh", RUN_SH)), framing)
    assert code is None or 400 <= code < 500, answer
    await wait_for(lambda: not staged(server))
    assert_server_left_nothing(server)


MALFORMED = {
    "no-boundary-parameter": ("multipart/form-data", body(file_part(b"run.sh", RUN_SH))),
    "boundary-of-another-body": (content_type(b"other"), body(file_part(b"run.sh", RUN_SH))),
    "empty-body": (content_type(), b""),
    "only-a-preamble": (content_type(), b"nothing but a preamble\r\n"),
    "file-then-a-broken-delimiter": (content_type(), body(file_part(b"run.sh", RUN_SH))[:-8] + b"\x00\x00garbage"),
    "no-closing-boundary": (content_type(), body(file_part(b"run.sh", RUN_SH))[: -len(BOUNDARY) - 6]),
    "headers-never-end": (
        content_type(),
        body(file_part(b"run.sh", RUN_SH))[: -len(BOUNDARY) - 6] + b"--" + BOUNDARY + b"\r\nX-Header: never ends",
    ),
}


@pytest.mark.parametrize(("kind", "payload"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_multipart_body_is_400_and_leaves_nothing(server, kind, payload):
    response = await server.fetch("/upload", method="POST", body=payload, headers={"Content-Type": kind})
    assert response.code == 400, response.body
    assert json.loads(response.body).keys() == {"id", "status", "message"}
    assert_server_left_nothing(server)


@pytest.mark.parametrize(
    "kind",
    [
        f'multipart/form-data; boundary="{BOUNDARY.decode()}"',
        f"multipart/form-data; charset=utf-8; boundary={BOUNDARY.decode()}",
        f"Multipart/Form-Data; BOUNDARY={BOUNDARY.decode()}",
    ],
    ids=["quoted", "extra-parameter", "upper-case"],
)
async def test_a_content_type_written_differently_but_valid_makes_a_job(server, kind):
    response = await server.fetch(
        "/upload", method="POST", body=body(file_part(b"run.sh", RUN_SH)), headers={"Content-Type": kind}
    )
    assert response.code == 201, response.body
    assert job_inputs(server, json.loads(response.body)["id"]) == ["run.sh"]


async def test_a_nested_multipart_mixed_part_is_a_text_field_and_the_job_keeps_its_other_files(server):
    """RFC 7578 deprecates multipart/mixed inside form-data; as in the original, such a part is a text field
    (ignored) and never unpacked into files."""
    inner = b"inner-boundary"
    mixed = (
        b"--"
        + inner
        + b'\r\nContent-Disposition: file; filename="nested.txt"\r\n\r\nnested\r\n'
        + b"--"
        + inner
        + b'\r\nContent-Disposition: file; filename="../escape.txt"\r\n\r\nescape\r\n'
        + b"--"
        + inner
        + b"--\r\n"
    )
    mixed_part = part(b'form-data; name="files"', mixed, b"Content-Type: multipart/mixed; boundary=inner-boundary\r\n")
    code, answer = await post(server, "/upload", body(mixed_part, file_part(b"run.sh", RUN_SH)))
    assert code == 201, answer
    assert job_inputs(server, answer["id"]) == ["run.sh"]


async def test_a_part_with_a_filename_but_no_name_is_a_file(server):
    code, answer = await post(server, "/upload", body(part(b'form-data; filename="run.sh"', RUN_SH)))
    assert code == 201, answer
    assert job_inputs(server, answer["id"]) == ["run.sh"]
    folder = server.config.data_path / Job.get_by_id(answer["id"]).folder
    assert (folder / "run.sh").read_bytes() == RUN_SH


@pytest.mark.parametrize(
    ("values", "user_id"),
    [
        ((b"1", b"2"), 2),
        ((b"abc", b"3"), 3),
        ((b"3", b"abc"), None),
        ((b"4", b""), None),
    ],
    ids=["both-valid", "first-invalid", "last-invalid", "last-empty"],
)
async def test_the_last_of_duplicate_user_id_fields_wins_as_in_the_original(server, values, user_id):
    parts = [field(b"user_id", value) for value in values]
    code, answer = await post(
        server, "/upload", body(*parts, file_part(b"run.sh", RUN_SH), fields={"service": b"example"})
    )
    if user_id is None:
        assert (code, answer["message"]) == (400, "Invalid user_id, should be a number")
        assert_server_left_nothing(server)
    else:
        assert code == 201, answer
        assert Job.get_by_id(answer["id"]).user_id == user_id


async def test_empty_file_parts_are_saved_as_empty_files_and_sent_to_the_client(server, client):
    code, answer = await post(server, "/upload", body(file_part(b"run.sh"), file_part(b"empty.txt"), file_part(b"")))
    assert code == 201, answer
    assert sorted(job_inputs(server, answer["id"])) == ["empty.txt", "file", "run.sh"]
    folder = server.config.data_path / Job.get_by_id(answer["id"]).folder
    assert all(path.stat().st_size == 0 for path in folder.iterdir())

    payload_folder = await dispatch(server, client, answer["id"])

    assert sorted(payload_files(client, payload_folder.name)) == ["empty.txt", "file", "run.sh"]
    assert all(path.stat().st_size == 0 for path in payload_folder.iterdir())


@pytest.mark.parametrize(
    ("raw", "saved"),
    [
        (b".tmp", ".tmp"),
        (b"../.tmp", ".tmp"),
        (b"..", "file"),
        (b".", "file"),
        (b"../..", "file"),
        (b"/", "file"),
    ],
)
async def test_dot_names_stay_inside_the_jobs_folder(server, raw, saved):
    """`.tmp` (the name of the server's scratch folder), `..` and `.` are plain file names inside the job's
    folder; nothing lands in the scratch folder."""
    code, answer = await post(server, "/upload", body(file_part(raw, b"dots"), file_part(b"run.sh", RUN_SH)))
    assert code == 201, answer
    assert sorted(job_inputs(server, answer["id"])) == sorted([saved, "run.sh"])
    folder = server.config.data_path / Job.get_by_id(answer["id"]).folder
    assert (folder / saved).read_bytes() == b"dots"
    assert not server.config.tmp_path.exists() or not any(server.config.tmp_path.iterdir())


@pytest.mark.parametrize("path", ["/upload", "/health"])
async def test_a_method_tornado_does_not_know_is_405_json_without_an_error_log(server, caplog, path):
    """TRACE and other methods outside Tornado's list are refused before `prepare()` runs."""
    code, answer = await raw_exchange(server, request_head(path, "Connection: close", method="TRACE"))
    assert code == 405, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["message"] == "Method Not Allowed"
    assert error_logs(caplog) == []
    assert_server_left_nothing(server)


# --- slow uploads ---


@pytest.mark.parametrize(
    "sent",
    [
        request_head("/upload", f"Content-Type: {content_type()}", "Content-Length: 100000"),
        request_head("/upload", f"Content-Type: {content_type()}", "Transfer-Encoding: chunked"),
        b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multip",
    ],
    ids=["headers-no-body", "chunked-no-chunk", "half-the-headers"],
)
async def test_an_upload_that_never_sends_its_body_does_not_block_other_uploads(server, sent):
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    writer.write(sent)
    await writer.drain()
    if sent.endswith(b"\r\n\r\n"):
        await wait_for(lambda: staged(server))  # the slow upload has reached its handler

    code, answer = await upload(server, script("exit 0\n"))

    assert code == 201, answer
    assert job_inputs(server, answer["id"]) == ["run.sh"]
    assert len(staged(server)) == (1 if sent.endswith(b"\r\n\r\n") else 0)  # the slow one still hangs
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: not staged(server))
    assert Job.select().count() == 1


# --- the client's /submit ---


async def test_submit_keeps_unicode_names_and_removes_control_characters(client):
    names = {name.encode(): name for name in UNICODE_NAMES}
    names.update({b"a\tb\x00c.txt": "abc.txt", b"\x1bx\x7f": "x"})
    code, answer = await post(client, "/submit", body(*(file_part(raw, b"z") for raw in names), fields={}))
    assert code == 200, answer
    assert sorted(payload_files(client, answer["id"])) == sorted(names.values())


@pytest.mark.parametrize(
    ("raw", "saved"), [(b".control", ".control"), (b".tmp", ".tmp"), (b"..", "file"), (b"../.control/1.exit", "1.exit")]
)
async def test_submit_of_dot_names_keeps_them_inside_the_payload_folder(client, raw, saved):
    code, answer = await post(client, "/submit", body(file_part(raw, b"dots"), fields={}))
    assert code == 200, answer
    assert payload_files(client, answer["id"]) == [saved]
    assert (client.config.data_path / str(answer["id"]) / saved).read_bytes() == b"dots"
    assert not any((client.config.data_path / ".control").iterdir())


@pytest.mark.parametrize("name", [b"job_key", b"timeout", b"comment"])
async def test_submit_with_a_text_field_of_one_megabyte_is_400_and_leaves_nothing(client, name):
    code, answer = await post(
        client, "/submit", body(file_part(b"run.sh", RUN_SH), field(name, b"1" * 1024 * 1024), fields={})
    )
    assert code == 400
    assert answer["message"] == f"field '{name.decode()}' is larger than 65536 bytes"
    assert_client_left_nothing(client)


async def test_submit_with_a_part_header_of_100_kb_is_4xx_and_leaves_nothing(client):
    huge = part(b'form-data; name="file"; filename="a.txt"', b"x", b"X-Padding: " + b"a" * 100_000 + b"\r\n")
    code, answer = await post(client, "/submit", body(file_part(b"run.sh", RUN_SH), huge, fields={}))
    assert 400 <= code < 500, answer
    assert_client_left_nothing(client)


@pytest.mark.parametrize(
    "job_key", ["1\U0007299b", "clé", "a\x01b", "a\tb", " "], ids=["astral", "latin-1", "control", "tab", "space"]
)
async def test_submit_with_a_job_key_a_header_cannot_carry_is_refused_or_served_never_500(client, job_key):
    """The job key comes back in a response header: a key that a header cannot carry is refused with a 400
    (nothing kept) or the payload is made and can be retrieved, never a 500 that leaves a payload behind."""
    code, answer = await post(
        client, "/submit", body(file_part(b"run.sh", RUN_SH), fields={"job_key": job_key.encode()})
    )
    assert code in (200, 400), answer
    if code == 400:
        assert_client_left_nothing(client)
        return
    retrieved = await client.fetch(f"/retrieve/{answer['id']}")
    assert retrieved.code == 200
    assert json.loads(retrieved.body)["status"] == "Prepared"


async def test_submit_shorter_than_its_content_length_then_closed_leaves_nothing(client):
    payload = body(file_part(b"run.sh", RUN_SH), fields={"job_key": b"k"})
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(client))
    writer.write(
        request_head("/submit", f"Content-Type: {content_type()}", f"Content-Length: {len(payload) + 100}") + payload
    )
    await writer.drain()
    await wait_for(lambda: data_files(client.config.tmp_path))
    writer.close()
    await writer.wait_closed()
    await wait_for(lambda: not staged(client))
    assert_client_left_nothing(client)


async def test_a_well_framed_chunked_submit_makes_a_payload(client):
    code, answer = await send_chunked(client, "/submit", body(file_part(b"run.sh", RUN_SH), fields={}), "good")
    assert code == 200, answer
    assert payload_files(client, Payload.get().id) == ["run.sh"]


@pytest.mark.parametrize("framing", BAD_FRAMINGS)
async def test_chunked_submit_with_bad_framing_is_4xx_or_closed_and_leaves_nothing(client, framing):
    code, answer = await send_chunked(client, "/submit", body(file_part(b"run.sh", RUN_SH), fields={}), framing)
    assert code is None or 400 <= code < 500, answer
    await wait_for(lambda: not staged(client))
    assert_client_left_nothing(client)


async def test_submit_with_a_method_tornado_does_not_know_is_405_json_without_an_error_log(client, caplog):
    code, answer = await raw_exchange(client, request_head("/submit", "Connection: close", method="TRACE"))
    assert code == 405, answer
    assert error_logs(caplog) == []
    assert_client_left_nothing(client)


# --- limits on text fields, and input that once made a 500 ---


async def test_more_than_a_hundred_text_fields_are_refused_with_400_and_leave_nothing(server):
    many = b"".join(field(f"f{n}".encode(), b"x") for n in range(101))
    code, answer = await post(server, "/upload", body(file_part(b"run.sh", RUN_SH), many))
    assert (code, answer["message"]) == (400, "more than 100 text fields")
    assert_server_left_nothing(server)


async def test_text_fields_over_a_mebibyte_in_all_are_refused_with_413_and_leave_nothing(server):
    big = b"".join(field(f"f{n}".encode(), b"x" * 60_000) for n in range(20))  # each under the 64 KiB of a field
    code, answer = await post(server, "/upload", body(file_part(b"run.sh", RUN_SH), big))
    assert (code, answer["message"]) == (413, "the text fields take more than 1048576 bytes in all")
    assert_server_left_nothing(server)


async def test_a_user_id_of_five_thousand_digits_is_400_not_500(server):
    code, answer = await post(
        server, "/upload", body(file_part(b"run.sh", RUN_SH), fields={"user_id": b"1" * 5000, "service": b"example"})
    )
    assert (code, answer["message"]) == (400, "Invalid user_id, should be a number")
    assert_server_left_nothing(server)


@pytest.mark.parametrize(
    "after",
    ["%C2%B2", "9" * 5000, "-1", "1.5", "%EF%BC%91"],
    ids=["superscript", "5000-digits", "negative", "decimal", "fullwidth"],
)
async def test_events_after_that_is_not_a_plain_whole_number_is_400_not_500(client, after):
    code, answer = await client.json(f"/events?after={after}&wait=0")
    assert (code, answer["message"]) == (400, "after must be a whole number of at most 18 digits")


@pytest.mark.parametrize("mode", ["server", "client"])
@pytest.mark.parametrize("path", ["/swagger-ui/%00", "/swagger-ui/index%00.html"])
async def test_a_nul_in_a_swagger_ui_path_is_400_json_not_500(nodes, caplog, mode, path):
    node = nodes(mode)
    response = await node.fetch(path)
    assert (response.code, response.headers["Content-Type"]) == (400, "application/json")
    assert json.loads(response.body)["message"] == "a path may not hold a NUL character"
    assert error_logs(caplog) == []
