"""The cleaners (`tasks.cleaner`) of both modes, called with an explicit `now`, and the start-up recovery that
makes the disk and the database of each mode consistent (`orch.jobs.recover`, `orch.payloads.recover`)."""

import time
import uuid
from itertools import pairwise

import pytest

from orch import jobs, payloads
from orch.models import Job, Payload, transition
from orch.states import FINISHED, Status
from tasks.cleaner import clean_jobs, clean_payloads
from tasks.runner import start_prepared
from tests.conftest import Node, multipart, payload_status, script, services, upload, wait_for

pytestmark = pytest.mark.both_databases

S = Status
# How each job is moved, through the state machine, to the status the test needs.
PATHS = {
    S.COMPLETED: [S.QUEUED, S.PROCESSING, S.SUBMITTED, S.COMPLETED],
    S.FAILED: [S.QUEUED, S.FAILED],
    S.INVALID: [S.QUEUED, S.PROCESSING, S.SUBMITTED, S.INVALID],
    S.KILLED: [S.QUEUED, S.KILLED],
    S.UNKNOWN: [S.QUEUED, S.PROCESSING, S.SUBMITTED, S.UNKNOWN],
    S.RUNNING: [S.QUEUED, S.PROCESSING, S.SUBMITTED, S.RUNNING],
    S.PROCESSING: [S.QUEUED, S.PROCESSING],
    S.LOCKED: [S.QUEUED, S.PROCESSING, S.SUBMITTED, S.RUNNING, S.LOCKED],
    S.QUEUED: [S.QUEUED],
}
DONE = {status.value for status in FINISHED}
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.01; done\n"  # a run that lasts until the test creates `go`


async def job_in(server: Node, status: Status, at: float, service: str = "example") -> Job:
    """A job uploaded over HTTP (so it has its folder), then moved to `status` at time `at`."""
    code, body = await upload(server, script("exit 0\n"), service=service)
    assert code == 201
    for src, dst in pairwise(PATHS[status]):
        assert transition(Job, body["id"], src, dst, at, f"{dst} for the test")
    return Job.get_by_id(body["id"])


async def submit(client: Node, files: dict[str, bytes]) -> int:
    body, content_type = multipart(files=files)
    code, payload = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
    assert code == 200
    return payload["id"]


async def test_clean_jobs_cleans_jobs_finished_max_age_ago_and_keeps_the_rest(nodes, client):
    server = nodes("server", max_age=1000, **services(client))
    now = time.time()
    finished = {status: await job_in(server, status, now) for status in FINISHED}
    queued = await job_in(server, S.QUEUED, now)
    running = await job_in(server, S.RUNNING, now)
    recent = await job_in(server, S.COMPLETED, now + 10)  # finished less than MAX_AGE before the round
    folders = {job.id: jobs.folder(server.ctx, job) for job in [*finished.values(), queued, running, recent]}
    assert all(folder.is_dir() for folder in folders.values())

    assert await clean_jobs(server.ctx, now + 999) == 0  # nothing is old enough yet
    assert await clean_jobs(server.ctx, now + 1000) == len(FINISHED)

    for job in finished.values():
        cleaned = Job.get_by_id(job.id)
        assert cleaned.status == "Cleaned"
        assert not folders[job.id].exists()
    for job, status in ((queued, "Queued"), (running, "Running"), (recent, "Completed")):
        assert Job.get_by_id(job.id).status == status
        assert folders[job.id].is_dir()
    assert Job.select().count() == len(FINISHED) + 3  # rows are kept
    assert await clean_jobs(server.ctx, now + 1000) == 0
    assert await clean_jobs(server.ctx, now + 1010) == 1  # the recent one's turn
    assert not folders[recent.id].exists()


async def test_download_of_a_cleaned_job_answers_json_cleaned(server):
    now = time.time()
    job = await job_in(server, S.COMPLETED, now)
    assert await clean_jobs(server.ctx, now + server.config.max_age) == 1
    response = await server.fetch(f"/download/{job.id}")
    assert (response.code, response.headers["Content-Type"]) == (200, "application/json")
    _, answer = await server.json(f"/download/{job.id}")
    assert (answer["id"], answer["status"]) == (job.id, "Cleaned")


async def test_clean_payloads_removes_folders_and_control_files_of_finished_payloads_only(nodes):
    client = nodes("client", max_age=1000)
    start = time.time()
    completed = await submit(client, script("echo hello > out.txt\n"))
    failed = await submit(client, script("exit 3\n"))
    invalid = await submit(client, {"input.txt": b"no run.sh"})
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: {payload_status(p) for p in (completed, failed, invalid)} <= DONE)
    response = await client.fetch(f"/retrieve/{completed}")  # builds the result zip in the control folder
    assert response.headers["Content-Type"] == "application/zip"
    running = await submit(client, script(WAIT_FOR_GO))
    await start_prepared(client.ctx, time.time())
    prepared = await submit(client, script("exit 0\n"))
    end = time.time()

    control = client.config.data_path / ".control"
    assert {path.name for path in control.iterdir()} == {f"{completed}.exit", f"{completed}.zip", f"{failed}.exit"}
    assert await clean_payloads(client.ctx, start + 999) == 0  # all finished after `start`
    assert await clean_payloads(client.ctx, end + 1000) == 3

    for payload_id in (completed, failed, invalid):
        assert payload_status(payload_id) == "Cleaned"
        assert not payloads.folder(client.ctx, payload_id).exists()
        _, answer = await client.json(f"/retrieve/{payload_id}")
        assert answer["status"] == "Cleaned"
    assert list(control.iterdir()) == []
    assert (payload_status(running), payload_status(prepared)) == ("Running", "Prepared")
    assert payloads.folder(client.ctx, running).is_dir() and payloads.folder(client.ctx, prepared).is_dir()
    assert Payload.select().count() == 5  # rows are kept
    (payloads.folder(client.ctx, running) / "go").touch()
    await wait_for(lambda: payload_status(running) == "Completed")


async def test_server_recovery_quarantines_stray_job_folders_and_unsticks_jobs(nodes, client):
    first = nodes("server", **services(client), **services(client, "retired"))
    now = time.time()
    queued = await job_in(first, S.QUEUED, now)
    processing = await job_in(first, S.PROCESSING, now)
    locked = await job_in(first, S.LOCKED, now)
    retired = await job_in(first, S.QUEUED, now, service="retired")
    data = first.config.data_path
    stray = data / uuid.uuid4().hex  # an upload cut short: a job folder with no row
    (stray / "input").mkdir(parents=True)
    (stray / "input" / "run.sh").write_text("exit 0\n")
    (data / "db.sqlite").write_text("an operator's file")
    (data / "archive").mkdir()
    (data / "archive" / "notes.txt").write_text("an unrelated folder")
    (data / ".tmp").mkdir(exist_ok=True)
    (data / ".tmp" / "leftover.zip").write_text("scratch")
    first.stop()

    second = nodes("server", **services(client))  # same DB_PATH and DATA_PATH; recovery runs at start-up
    assert second.config.data_path == data
    assert not stray.exists()
    (kept,) = (data / ".quarantine").iterdir()
    assert kept.name.endswith(stray.name) and (kept / "input" / "run.sh").read_text() == "exit 0\n"
    assert (data / "db.sqlite").read_text() == "an operator's file"
    assert (data / "archive" / "notes.txt").is_file()
    assert not (data / ".tmp" / "leftover.zip").exists()
    for job in (queued, processing, locked, retired):
        assert jobs.folder(second.ctx, job).is_dir()

    assert Job.get_by_id(queued.id).status == "Queued"
    requeued = Job.get_by_id(processing.id)
    assert (requeued.status, requeued.dest_id) == ("Queued", None)
    assert Job.get_by_id(locked.id).status == "Submitted"
    waiting = Job.get_by_id(retired.id)
    assert waiting.status == "Queued"
    assert "retired" in waiting.message and "not configured" in waiting.message


async def test_quarantined_entries_are_removed_by_the_cleaner_only_after_max_age(nodes, client):
    server = nodes("server", max_age=1000, **services(client))
    stray = server.config.data_path / uuid.uuid4().hex
    stray.mkdir()
    start = time.time()
    jobs.recover(server.ctx)
    assert not stray.exists() and len(list((server.config.data_path / ".quarantine").iterdir())) == 1
    assert await clean_jobs(server.ctx, start + 900) == 0
    assert len(list((server.config.data_path / ".quarantine").iterdir())) == 1
    assert await clean_jobs(server.ctx, start + 1001) == 1
    assert list((server.config.data_path / ".quarantine").iterdir()) == []


async def test_client_recovery_quarantines_numeric_folders_without_a_payload(client):
    kept = await submit(client, script("exit 0\n"))
    data = client.config.data_path
    (data / "999").mkdir()
    (data / "999" / "run.sh").write_text("exit 0\n")
    (data / ".control" / "999.exit").write_text("0")
    (data / "results").mkdir()
    (data / "results" / "notes.txt").write_text("an unrelated folder")

    payloads.recover(client.ctx)

    assert not (data / "999").exists()
    assert not (data / ".control" / "999.exit").exists()
    assert sorted(path.name.split("-", 1)[1] for path in (data / ".quarantine").iterdir()) == ["999", "999.exit"]
    assert (data / "results" / "notes.txt").is_file()
    assert (payloads.folder(client.ctx, kept) / "run.sh").is_file()
    assert payload_status(kept) == "Prepared"
