"""The client's runner tick (`tasks.runner.start_prepared`) on a real client app: real run.sh processes under
bash, real SQLite, payloads submitted over HTTP."""

import subprocess
import time
from pathlib import Path

import psutil

from orch import payloads
from orch.models import Payload, transition
from orch.states import FINISHED, Status
from tasks.runner import start_prepared
from tests.conftest import Node, job_processes, multipart, payload_status, script, wait_for
from tests.services import service_processes

DONE = {status.value for status in FINISHED}
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.01; done\n"  # a run that lasts until the test creates `go`


async def submit(client: Node, files: dict[str, bytes]) -> int:
    """POST /submit as the server does; returns the new payload's id."""
    body, content_type = multipart(files=files)
    code, payload = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
    assert (code, payload["status"]) == (200, "Prepared")
    return payload["id"]


async def run(client: Node, files: dict[str, bytes]) -> Payload:
    """Submit a payload, run the runner tick once, and return the payload once it has finished."""
    payload_id = await submit(client, files)
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    return Payload.get_by_id(payload_id)


def folder(client: Node, payload_id: int) -> Path:
    return client.config.data_path / str(payload_id)


async def test_script_exiting_0_completes_with_exit_code_0(client):
    payload = await run(client, script("echo hello > out.txt\n"))
    assert (payload.status, payload.exit_code, payload.message) == ("Completed", 0, "")
    assert (folder(client, payload.id) / "out.txt").read_text() == "hello\n"


async def test_script_exiting_3_fails_with_the_code_in_the_message(client):
    payload = await run(client, script("exit 3\n"))
    assert (payload.status, payload.exit_code) == ("Failed", 3)
    assert "exited with code 3" in payload.message


async def test_script_with_the_original_exit_trap_completes(client):
    payload = await run(client, script("trap 'echo $? > .orchestrator.exit' EXIT\necho working\n"))
    assert (payload.status, payload.exit_code) == ("Completed", 0)


async def test_script_with_the_original_exit_trap_that_exits_1_fails(client):
    payload = await run(client, script("trap 'echo $? > .orchestrator.exit' EXIT\nexit 1\n"))
    assert (payload.status, payload.exit_code) == ("Failed", 1)
    assert "exited with code 1" in payload.message


async def test_the_real_exit_status_decides_even_if_the_job_writes_0_in_its_own_exit_file(client):
    payload = await run(client, script("echo 0 > .orchestrator.exit\nexit 2\n"))
    assert (payload.status, payload.exit_code) == ("Failed", 2)
    assert "exited with code 2" in payload.message


async def test_payload_without_run_sh_is_invalid_with_the_reason(client):
    payload_id = await submit(client, {"input.txt": b"data"})
    assert await start_prepared(client.ctx, time.time()) == 0
    payload = Payload.get_by_id(payload_id)
    assert payload.status == "Invalid"
    assert "run.sh not found" in payload.message
    assert payload.pid == 0


async def test_stdout_and_stderr_end_up_in_run_log_in_the_payload_folder(client):
    payload = await run(client, script("echo to stdout\necho to stderr >&2\n"))
    assert (folder(client, payload.id) / "run.log").read_text() == "to stdout\nto stderr\n"


async def test_run_sh_runs_in_its_folder_without_exec_bit_or_shebang(client):
    payload_id = await submit(client, script("pwd > where.txt\n"))
    run_sh = folder(client, payload_id) / "run.sh"
    assert run_sh.stat().st_mode & 0o111 == 0 and not run_sh.read_bytes().startswith(b"#!")
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert payload_status(payload_id) == "Completed"
    where = (folder(client, payload_id) / "where.txt").read_text().strip()
    assert Path(where).samefile(folder(client, payload_id))


async def test_payload_killed_before_it_starts_never_starts(client):
    payload_id = await submit(client, script("touch started\n"))
    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"], answer["killed"]) == (200, "Killed", True)
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.pid) == ("Killed", 0)
    assert not (folder(client, payload_id) / "started").exists()
    assert not (folder(client, payload_id) / "run.log").exists()


async def test_background_processes_left_by_a_finished_run_sh_are_killed(client):
    payload = await run(client, script("sleep 3105 &\n"))
    assert payload.status == "Completed"
    await wait_for(lambda: not job_processes("sleep", "3105"))


async def test_a_run_started_by_a_previous_client_is_adopted_and_ends_with_its_recorded_exit_status(nodes):
    first = nodes("client")
    succeeds = await submit(first, script(WAIT_FOR_GO + "echo done > out.txt\nexit 0\n"))
    fails = await submit(first, script(WAIT_FOR_GO + "exit 4\n"))
    assert await start_prepared(first.ctx, time.time()) == 2
    for payload_id in (succeeds, fails):
        code, answer = await first.json(f"/retrieve/{payload_id}")
        assert (code, answer["status"]) == (200, "Running")

    # The first client goes down: it no longer answers, nor watches its runs (which go on without it).
    first.stop()
    for key in first.ctx.inflight.keys("run"):
        first.ctx.inflight.get(key).cancel()
    await first.settle()

    second = nodes("client")  # same DB_PATH and DATA_PATH
    assert second.config.db_path == first.config.db_path and second.config.data_path == first.config.data_path
    assert await start_prepared(second.ctx, time.time()) == 0
    assert set(second.ctx.inflight.keys("run")) == {("run", succeeds), ("run", fails)}
    assert {payload_status(succeeds), payload_status(fails)} == {"Running"}

    for payload_id in (succeeds, fails):
        (folder(second, payload_id) / "go").touch()
    await wait_for(lambda: {payload_status(succeeds), payload_status(fails)} <= DONE)
    completed, failed = Payload.get_by_id(succeeds), Payload.get_by_id(fails)
    assert (completed.status, completed.exit_code) == ("Completed", 0)
    assert (folder(second, succeeds) / "out.txt").read_text() == "done\n"
    assert (failed.status, failed.exit_code) == ("Failed", 4)
    assert "exited with code 4" in failed.message


async def test_a_running_payload_whose_process_ended_while_the_client_was_down_fails(client):
    gone = subprocess.Popen(["sleep", "60"])
    started_at = psutil.Process(gone.pid).create_time()
    gone.kill()
    gone.wait()
    payload_id = await submit(client, script("exit 0\n"))
    # As a previous client process left it: Running, with the pid of a process that is gone, no exit file.
    assert transition(
        Payload, payload_id, Status.PREPARED, Status.RUNNING, time.time(), pid=gone.pid, started_at=started_at
    )
    assert not payloads.exit_file(client.ctx, payload_id).exists()

    assert await start_prepared(client.ctx, time.time()) == 0
    await wait_for(lambda: payload_status(payload_id) in DONE)
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.exit_code) == ("Failed", None)
    assert "client was down" in payload.message


async def test_no_child_or_zombie_process_remains_after_50_short_jobs(client):
    """Once the runs are over, the next round of the runner reaps what came to the client (the sandboxes' inits,
    whose parent ends with run.sh): nothing is left, not even a zombie."""
    ids = [await submit(client, script(f"echo {n} > n.txt\n")) for n in range(50)]
    assert await start_prepared(client.ctx, time.time()) == 50
    await wait_for(lambda: all(payload_status(payload_id) in DONE for payload_id in ids))
    assert {payload_status(payload_id) for payload_id in ids} == {"Completed"}

    async def nothing_left() -> bool:
        await start_prepared(client.ctx, time.time())
        return [child for child in psutil.Process().children(recursive=True) if child not in service_processes()] == []

    await wait_for(nothing_left)
    zombies = [
        p
        for p in psutil.process_iter(["ppid", "status"])
        if p.info["ppid"] == psutil.Process().pid and p.info["status"] == psutil.STATUS_ZOMBIE
    ]
    assert zombies == []
