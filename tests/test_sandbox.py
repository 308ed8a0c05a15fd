"""What a job sees and may do, per SANDBOX setting (orch/sandbox.py), with real run.sh processes in real bubblewrap
sandboxes: its own folder and the system, read-only, and nothing of the client or of other jobs; its network cut
when asked; an unprivileged user when the client is root; and what it gets without a sandbox."""

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from orch import processes, sandbox
from orch.models import Payload
from orch.states import FINISHED
from tasks.runner import start_prepared
from tests.conftest import Node, job_status, multipart, payload_status, script, services, upload, wait_for

DONE = {status.value for status in FINISHED}
AS_ROOT = os.geteuid() == 0
NOBODY = 65534
# What a job reports about the world it sees, one `name: value` line each, in report.txt.
LOOK_AROUND = """
report() { echo "$1: $2" >> report.txt; }
report uid "$(id -u)"
report parent "$(ls -A .. | tr '\\n' ' ')"
report processes "$(ls /proc | grep -c '^[0-9]')"
report control "$(ls -A ../.control 2>&1 | head -1)"
touch /usr/x 2>/dev/null && report usr writable || report usr read-only
touch /etc/x 2>/dev/null && report etc writable || report etc read-only
echo mine > "/tmp/job-${PWD##*/}" && report tmp writable || report tmp read-only
report tmp_files "$(ls -A /tmp | tr '\\n' ' ')"
report home "$HOME"
"""


async def run(client: Node, body: str, **fields: str) -> Payload:
    """Submit a run.sh to the client, run it, and return its payload once it has finished."""
    files, content_type = multipart(fields, script(body))
    code, answer = await client.json("/submit", method="POST", body=files, headers={"Content-Type": content_type})
    assert code == 200, answer
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(answer["id"]) in DONE)
    return Payload.get_by_id(answer["id"])


def report(client: Node, payload: Payload) -> dict[str, str]:
    lines = (client.config.data_path / str(payload.id) / "report.txt").read_text().splitlines()
    return dict(line.split(": ", 1) if ": " in line else (line.rstrip(":"), "") for line in lines)


@pytest.fixture
def sandboxed(nodes) -> Node:
    client = nodes("client", sandbox="bwrap", script_blocklist="false", job_env="PATH,HOME", home="/root")
    assert sandbox.of(client.ctx).bwrap is not None
    return client


async def test_a_sandboxed_job_sees_its_folder_and_the_system_read_only_and_nothing_else(sandboxed):
    first = await run(sandboxed, LOOK_AROUND)
    second = await run(sandboxed, LOOK_AROUND)
    assert (first.status, second.status) == ("Completed", "Completed")
    seen = report(sandboxed, second)
    assert seen["uid"] == str(NOBODY if AS_ROOT else os.getuid())
    assert seen["parent"].split() == [str(second.id)]  # not the first job's folder, nor .control, .tmp, .lock
    assert "No such file" in seen["control"]
    assert int(seen["processes"]) <= 5  # its own: bwrap's init, bash, ls, grep, and the $( ) subshell
    assert (seen["usr"], seen["etc"], seen["tmp"]) == ("read-only", "read-only", "writable")
    assert f"job-{second.id}" in seen["tmp_files"].split()
    assert f"job-{first.id}" not in seen["tmp_files"].split()  # the first job's /tmp was its own
    assert seen["home"] == "/tmp"  # HOME is passed (JOB_ENV), made one the job can write to


async def test_a_job_runs_as_the_job_user_with_its_folder_for_itself_and_gets_it_taken_back(nodes):
    if not AS_ROOT:
        pytest.skip("jobs run as another user only when the client runs as root")
    client = nodes("client", script_blocklist="false")
    payload = await run(client, 'stat -c "%u %a" . > owner.txt\nid -G > groups.txt\n')
    folder = client.config.data_path / str(payload.id)
    assert payload.status == "Completed"
    assert (folder / "owner.txt").read_text().split() == [str(NOBODY), "700"]
    assert (folder / "groups.txt").read_text().split() == [str(NOBODY)]  # no supplementary group
    assert (folder / "owner.txt").stat().st_uid == NOBODY
    assert (folder.stat().st_uid, stat.S_IMODE(folder.stat().st_mode)) == (0, 0o700)  # taken back


async def test_a_job_whose_run_sh_cannot_start_gets_its_folder_taken_back_from_the_job_user(nodes, monkeypatch):
    if not AS_ROOT:
        pytest.skip("jobs run as another user only when the client runs as root")
    client = nodes("client", script_blocklist="false")

    def cannot_start(*args, **kwargs):
        raise OSError("no luck")

    monkeypatch.setattr(processes, "spawn", cannot_start)
    payload = await run(client, "echo ran > ran.txt\n")
    folder = client.config.data_path / str(payload.id)
    assert (payload.status, payload.message) == ("Failed", "could not start run.sh: no luck")
    assert folder.stat().st_uid == 0


async def test_a_pool_of_job_users_gives_each_running_job_its_own_user_and_the_next_waits(nodes, shared):
    if not AS_ROOT:
        pytest.skip("jobs run as other users only when the client runs as root")
    users = ["daemon", "bin"]  # two unprivileged users every Debian has
    client = nodes("client", job_users=",".join(users), job_write_paths=shared)
    body = f"id -u > uid.txt\nwhile [ ! -e {shared}/go ]; do sleep 0.01; done\n"
    ids = []
    for _ in range(3):
        files, content_type = multipart(files=script(body))
        ids.append(
            (await client.json("/submit", method="POST", body=files, headers={"Content-Type": content_type}))[1]["id"]
        )
    assert await start_prepared(client.ctx, time.time()) == 2
    assert [payload_status(payload_id) for payload_id in ids] == ["Running", "Running", "Prepared"]
    folders = [client.config.data_path / str(payload_id) for payload_id in ids]
    await wait_for(lambda: all((folder / "uid.txt").exists() for folder in folders[:2]))
    uids = {int((folder / "uid.txt").read_text()) for folder in folders[:2]}
    assert uids == {sandbox.of(client.ctx).users[0].uid, sandbox.of(client.ctx).users[1].uid}

    (shared / "go").touch()
    await wait_for(lambda: payload_status(ids[0]) in DONE and payload_status(ids[1]) in DONE)
    await wait_for(lambda: start_prepared(client.ctx, time.time()))  # a user is free again: the third starts
    await wait_for(lambda: payload_status(ids[2]) in DONE)
    assert {payload_status(payload_id) for payload_id in ids} == {"Completed"}
    assert int((folders[2] / "uid.txt").read_text()) in uids


async def test_a_terminated_sandboxed_job_gets_sigterm_and_its_grace_period(nodes):
    client = nodes("client", kill_grace="5")
    body = "trap 'sleep 0.2; echo cleaned > cleaned.txt; exit 1' TERM\necho started > started.txt\nsleep 300 & wait\n"
    files, content_type = multipart(files=script(body))
    payload_id = (await client.json("/submit", method="POST", body=files, headers={"Content-Type": content_type}))[1][
        "id"
    ]
    await start_prepared(client.ctx, time.time())
    folder = client.config.data_path / str(payload_id)
    await wait_for(lambda: (folder / "started.txt").exists())
    code, answer = await client.json(f"/kill/{payload_id}", method="POST", body=b"")
    assert (code, answer["status"]) == (200, "Killed")
    assert (folder / "cleaned.txt").read_text() == "cleaned\n"


@pytest.mark.parametrize("where", ["service", "client"])
async def test_a_job_whose_network_is_cut_reaches_nothing_and_others_reach_the_network(nodes, where):
    """SERVICE_<NAME>_NETWORK=false travels with the job; JOB_NETWORK=none cuts every job of the client. The job
    tries the server's own port, on loopback."""
    client = nodes("client", tasks=True, script_blocklist="false", job_network="none" if where == "client" else "host")
    cut = {"network": "false"} if where == "service" else {}
    server = nodes("server", tasks=True, **services(client, **cut), **services(client, "open"))
    port = server.url.rsplit(":", 1)[1]
    body = f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo reached > net.txt || echo cut > net.txt\n"
    _, closed = await upload(server, script(body))
    _, opened = await upload(server, script(body), service="open")
    await wait_for(lambda: {job_status(closed["id"]), job_status(opened["id"])} <= DONE)

    def seen(job_id: int) -> str:
        from orch.models import Job

        return (client.config.data_path / str(Job.get_by_id(job_id).dest_id) / "net.txt").read_text().strip()

    assert seen(closed["id"]) == "cut"
    assert seen(opened["id"]) == ("cut" if where == "client" else "reached")


async def test_job_read_and_write_paths_are_the_only_other_folders_a_job_sees(nodes, tmp_path, shared):
    software = tmp_path / "software"
    software.mkdir()
    (software / "tool.txt").write_text("v1\n")
    software.chmod(0o755)
    (software / "tool.txt").chmod(0o644)
    client = nodes("client", job_read_paths=software, job_write_paths=shared)
    body = (
        f"cat {software}/tool.txt > tool.txt\n"
        f"touch {software}/x 2>/dev/null && echo writable > software.txt || echo read-only > software.txt\n"
        f"echo hello > {shared}/hello.txt\n"
        f"ls {tmp_path} > around.txt\n"
    )
    payload = await run(client, body)
    folder = client.config.data_path / str(payload.id)
    assert payload.status == "Completed", (folder / "run.log").read_text()
    assert (folder / "tool.txt").read_text() == "v1\n"
    assert (folder / "software.txt").read_text() == "read-only\n"
    assert (shared / "hello.txt").read_text() == "hello\n"
    assert (folder / "around.txt").read_text().split() == ["client", "shared", "software"]  # no server, no databases


@pytest.mark.parametrize(
    ("name", "path", "said"),
    [
        ("job_read_paths", "{data}", "DATA_PATH"),
        ("job_write_paths", "{data}/sub", "DATA_PATH"),
        ("job_read_paths", "{tmp}", "DATA_PATH"),
        ("job_read_paths", "{tmp}/missing", "does not exist"),
    ],
)
def test_paths_that_would_show_jobs_the_client_or_do_not_exist_are_refused_at_start(nodes, tmp_path, name, path, said):
    (tmp_path / "client" / "sub").mkdir(parents=True)
    value = path.format(data=tmp_path / "client", tmp=tmp_path)
    with pytest.raises(ValueError, match=said) as refused:
        nodes("client", **{name: value})
    assert name.upper() in str(refused.value)


async def test_with_sandbox_none_a_job_sees_the_machine_but_still_runs_as_the_job_user(nodes):
    client = nodes("client", sandbox="none", script_blocklist="false")
    payload = await run(client, "id -u > uid.txt\nls /proc | grep -c '^[0-9]' > processes.txt\n")
    folder = client.config.data_path / str(payload.id)
    assert payload.status == "Completed"
    assert int((folder / "uid.txt").read_text()) == (NOBODY if AS_ROOT else os.getuid())
    assert int((folder / "processes.txt").read_text()) > 5  # every process of the machine


async def test_a_job_whose_service_cuts_the_network_fails_on_a_client_without_sandbox(nodes):
    client = nodes("client", sandbox="none")
    payload = await run(client, "echo ran > ran.txt\n", network="false")
    assert payload.status == "Failed"
    assert "network" in payload.message and "without a sandbox" in payload.message
    assert not (client.config.data_path / str(payload.id) / "ran.txt").exists()
    assert [(event.src, event.dst) for event in payload.events] == [(None, "Prepared"), ("Prepared", "Failed")]


def without_bwrap(tmp_path: Path, monkeypatch) -> None:
    """A PATH on which every program the client needs is found, but bwrap."""
    bin_path = tmp_path / "bin"
    bin_path.mkdir()
    for program in ("setpriv", "sh", "bash", "env"):
        (bin_path / program).symlink_to(f"/usr/bin/{program}")
    monkeypatch.setenv("PATH", str(bin_path))


def test_sandbox_bwrap_refuses_to_start_where_bubblewrap_is_missing(nodes, tmp_path, monkeypatch):
    without_bwrap(tmp_path, monkeypatch)
    with pytest.raises(ValueError, match="SANDBOX is bwrap.*bwrap is not installed"):
        nodes("client", sandbox="bwrap")


async def test_sandbox_auto_without_bubblewrap_says_once_what_is_not_isolated_and_runs_jobs(
    nodes, tmp_path, monkeypatch, caplog
):
    without_bwrap(tmp_path, monkeypatch)
    client = nodes("client")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WITHOUT A SANDBOX" in warnings[0] and "SANDBOX=none" in warnings[0]
    monkeypatch.undo()  # the job's own PATH (JOB_ENV) was read at start
    payload = await run(client, "echo ran > ran.txt\n")
    assert payload.status == "Completed"


def test_job_network_none_without_a_sandbox_is_refused_at_start(nodes):
    with pytest.raises(ValueError, match="JOB_NETWORK"):
        nodes("client", sandbox="none", job_network="none")
