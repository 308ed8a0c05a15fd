"""Server and client apps talking real HTTP on loopback, their tasks running, real run.sh scripts."""

import io
import zipfile
from pathlib import Path

import psutil
import pytest

from orch.models import Job, Payload
from orch.states import ACTIVE
from tests.conftest import job_processes, job_status, script, services, upload, wait_for

pytestmark = pytest.mark.both_databases


def gated(ledger: Path, gate: Path, user: int) -> dict[str, bytes]:
    """A run.sh that logs its start and end (with the time) in `ledger`, and waits for `gate` to exist between."""
    return script(
        f'echo "start {user} $(date +%s%N)" >> {ledger}\n'
        f"while [ ! -e {gate} ]; do sleep 0.01; done\n"
        f'echo "end {user} $(date +%s%N)" >> {ledger}\n'
    )


def most_at_once(ledger: Path) -> tuple[int, dict[int, int]]:
    """From a ledger of start/end lines: the most runs at once, overall and per user."""
    lines = (line.split() for line in ledger.read_text().splitlines())
    events = sorted((int(at), kind, int(user)) for kind, user, at in lines)
    running, by_user, peak, peak_by_user = 0, {}, 0, {}
    for _, kind, user in events:
        step = 1 if kind == "start" else -1
        running += step
        by_user[user] = by_user.get(user, 0) + step
        peak = max(peak, running)
        peak_by_user[user] = max(peak_by_user.get(user, 0), by_user[user])
    return peak, peak_by_user


async def test_job_goes_from_queued_to_completed_and_its_zip_downloads(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    code, body = await upload(server, script("echo hello > out.txt\necho to the log\n"))
    assert (code, body["status"], body["message"]) == (201, "Queued", "Job successfully uploaded")
    await wait_for(lambda: job_status(body["id"]) == "Completed")
    response = await server.fetch(f"/download/{body['id']}")
    assert response.code == 200
    assert response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert archive.read("out.txt") == b"hello\n"
    assert archive.read("run.log") == b"to the log\n"
    assert "run.sh" in archive.namelist()


async def test_failing_script_ends_failed_with_its_exit_code_in_the_message(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    _, body = await upload(server, script("exit 3\n"))
    await wait_for(lambda: job_status(body["id"]) == "Failed")
    code, status = await server.json(f"/download/{body['id']}")
    assert code == 200
    assert status == {"id": body["id"], "status": "Failed", "message": "run.sh exited with code 3"}


async def test_job_without_run_sh_ends_invalid_with_the_reason(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    _, body = await upload(server, {"input.txt": b"data"})
    await wait_for(lambda: job_status(body["id"]) == "Invalid")
    _, status = await server.json(f"/download/{body['id']}")
    assert "run.sh not found" in status["message"]


async def test_long_job_is_terminated_and_no_process_of_it_is_left(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    _, body = await upload(server, script("sleep 3102 &\nsleep 300\n"))
    await wait_for(lambda: job_status(body["id"]) == "Running")
    payload = Payload.get_by_id(Job.get_by_id(body["id"]).dest_id)
    await wait_for(lambda: job_processes("sleep", "3102"))

    code, answer = await server.json(f"/terminate/{body['id']}", method="POST", body=b"")

    assert (code, answer) == (200, {"id": body["id"], "status": "Killed", "message": "job terminated"})
    assert job_status(body["id"]) == "Killed"
    assert Payload.get_by_id(payload.id).status == "Killed"
    assert not psutil.pid_exists(payload.pid) or psutil.Process(payload.pid).status() == psutil.STATUS_ZOMBIE
    assert not job_processes("sleep", "3102")


async def test_partial_download_of_a_running_job_shows_its_progress(nodes):
    client = nodes("client", tasks=True)
    server = nodes("server", tasks=True, **services(client))
    job = "echo 'step 1 of 2' > progress.txt\nwhile [ ! -e gate ]; do sleep 0.01; done\n"
    _, body = await upload(server, script(job))
    await wait_for(lambda: job_status(body["id"]) == "Running")
    gate = client.config.data_path / str(Job.get_by_id(body["id"]).dest_id) / "gate"

    async def progress() -> bytes | None:
        response = await server.fetch(f"/download_partial/{body['id']}")
        assert response.code == 200 and response.headers["Content-Type"] == "application/zip"
        archive = zipfile.ZipFile(io.BytesIO(response.body))
        return archive.read("progress.txt") if "progress.txt" in archive.namelist() else None

    assert await wait_for(progress) == b"step 1 of 2\n"
    gate.touch()
    await wait_for(lambda: job_status(body["id"]) == "Completed")


async def test_quotas_hold_and_both_users_are_served(nodes, shared):
    """RUNS_PER_USER=2 and MAX_RUNS=3 with two users submitting four jobs each: three run at once, both users
    among them, never more than two of one user; all eight complete."""
    client = nodes("client", tasks=True, job_write_paths=shared)
    server = nodes("server", tasks=True, **services(client, runs_per_user=2, max_runs=3))
    ledger, gate = shared / "ledger", shared / "gate"
    ids = []
    for user in (1, 1, 1, 1, 2, 2, 2, 2):
        _, body = await upload(server, gated(ledger, gate, user), user_id=user)
        ids.append(body["id"])

    await wait_for(lambda: len(ledger.read_text().splitlines()) == 3 if ledger.exists() else False)
    active = list(Job.select().where(Job.status.in_(list(ACTIVE))))
    assert len(active) == 3
    assert {job.user_id for job in active} == {1, 2}

    gate.touch()
    await wait_for(lambda: all(job_status(job_id) == "Completed" for job_id in ids))
    peak, peak_by_user = most_at_once(ledger)
    assert peak == 3
    assert set(peak_by_user) == {1, 2} and max(peak_by_user.values()) == 2


async def test_a_user_with_one_job_behind_another_users_many_starts_at_the_next_free_slot(nodes, shared):
    client = nodes("client", tasks=True, job_write_paths=shared)
    server = nodes("server", tasks=True, **services(client, runs_per_user=1, max_runs=1))
    ledger, gate = shared / "ledger", shared / "gate"
    for _ in range(10):
        await upload(server, gated(ledger, gate, 1), user_id=1)
    _, late = await upload(server, gated(ledger, gate, 2), user_id=2)
    await wait_for(lambda: ledger.exists())
    gate.touch()
    await wait_for(lambda: job_status(late["id"]) == "Completed")
    starts = [line.split()[1] for line in ledger.read_text().splitlines() if line.startswith("start")]
    assert starts[:2] == ["1", "2"]
