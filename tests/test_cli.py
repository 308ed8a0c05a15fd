"""The command line and the Python client (`orch.portal`) against real server and client processes: a job
submitted, followed, downloaded, cancelled, listed; every failure one line, never a traceback."""

import os
import pty
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.cluster import Cluster
from bench.harness import ROOT, free_port
from orch.portal import Orchestrator, OrchestratorError

TIMEOUT = 60

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), {"SERVICE_EXAMPLE_RUNS_PER_USER": "1"}, {})
    cluster.start()
    yield cluster
    cluster.stop()


def cli(*args: str, cwd: Path, url: str | None = None) -> subprocess.CompletedProcess:
    """`python orchestrator.py <args>` with ORCH_URL set to `url`."""
    env = {"PATH": os.environ["PATH"], **({"ORCH_URL": url} if url else {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def files(folder: Path, **contents: str) -> list[str]:
    for name, text in contents.items():
        (folder / name).write_text(text)
    return [str(folder / name) for name in contents]


def test_submit_wait_saves_the_result_and_tells_each_status(cluster, tmp_path):
    job_files = files(tmp_path, **{"run.sh": "cat input.pdb > out.txt\n", "input.pdb": "ATOM 1\n"})
    done = cli(
        "submit", "--service", "example", "--user", "1", *job_files, "--wait", "-o", "results.zip",
        cwd=tmp_path, url=cluster.server.url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    job = int(lines[0].split()[1].rstrip(":"))
    assert lines[0] == f"job {job}: Queued: Job successfully uploaded"
    assert lines[-2] == f"job {job}: Completed" and lines[-1].startswith("saved results.zip (")
    with zipfile.ZipFile(tmp_path / "results.zip") as result:
        assert result.read("out.txt") == b"ATOM 1\n"
    assert done.stderr == ""  # no progress bar where nobody watches a terminal

    status = cli("status", str(job), cwd=tmp_path, url=cluster.server.url)
    assert status.returncode == 0
    assert status.stdout.splitlines()[0] == f"job {job}: Completed"
    assert "attempts 1" in status.stdout and "new -> Queued  uploaded" in status.stdout
    assert "Running -> Completed" in status.stdout or "Submitted -> Completed" in status.stdout


def test_a_job_that_fails_exits_1_with_its_reason(cluster, tmp_path):
    failing = cli(
        "submit", "--url", cluster.server.url, "--service", "example", "--user", "2",
        *files(tmp_path, **{"run.sh": "exit 5\n"}), "--wait",
        cwd=tmp_path,
    )  # fmt: skip
    assert failing.returncode == 1
    assert failing.stdout.splitlines()[-1].endswith(": Failed: run.sh exited with code 5")
    listed = cli("jobs", "--status", "Failed", "--user", "2", cwd=tmp_path, url=cluster.server.url)
    assert listed.returncode == 0
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "SERVICE", "USER", "CREATED", "MESSAGE"]
    assert len(rows) == 1 and "Failed" in rows[0] and "run.sh exited with code 5" in rows[0]


def test_cancel_download_of_an_unfinished_job_and_errors_are_one_line(cluster, tmp_path):
    held = cli(
        "submit", "--service", "example", "--user", "3", *files(tmp_path, **{"run.sh": "sleep 60\n"}),
        cwd=tmp_path, url=cluster.server.url,
    )  # fmt: skip
    job = held.stdout.split()[1].rstrip(":")
    early = cli("download", job, "-o", "early.zip", cwd=tmp_path, url=cluster.server.url)
    assert early.returncode == 1 and not (tmp_path / "early.zip").exists()
    assert early.stderr.startswith(f"job-orchestrator download: job {job} is ")
    cancelled = cli("cancel", job, cwd=tmp_path, url=cluster.server.url)
    assert cancelled.returncode == 0 and cancelled.stdout == f"job {job}: Killed: job terminated\n"
    again = cli("cancel", job, cwd=tmp_path, url=cluster.server.url)
    assert (again.returncode, again.stderr) == (1, f"job-orchestrator cancel: job {job} is already Killed\n")
    missing = cli("status", "999999", cwd=tmp_path, url=cluster.server.url)
    assert missing.stderr == "job-orchestrator status: Job 999999 not found in the database\n"
    wrong = cli("submit", "--service", "nope", "--user", "1", *files(tmp_path, **{"run.sh": ""}), cwd=tmp_path,
                url=cluster.server.url)  # fmt: skip
    assert wrong.stderr == "job-orchestrator submit: Invalid service 'nope': the configured services are example\n"
    unreadable = cli("submit", "--service", "example", "--user", "1", "absent.sh", cwd=tmp_path, url=cluster.server.url)
    assert unreadable.returncode == 1 and unreadable.stderr.count("\n") == 1 and "absent.sh" in unreadable.stderr
    nobody = cli("jobs", cwd=tmp_path, url=f"http://127.0.0.1:{free_port()}")
    assert nobody.returncode == 1 and nobody.stderr.startswith("job-orchestrator jobs: cannot reach the server at")
    for answer in (early, again, missing, wrong, unreadable, nobody):
        assert "Traceback" not in answer.stderr and answer.stderr.count("\n") == 1


def test_the_upload_shows_a_progress_bar_on_a_terminal(cluster, tmp_path):
    big = tmp_path / "input.bin"
    big.write_bytes(os.urandom(3_000_000))
    job_files = [*files(tmp_path, **{"run.sh": "exit 0\n"}), str(big)]
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, str(ROOT / "orchestrator.py"), "submit", "--service", "example", "--user", "4", *job_files],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"], "ORCH_URL": cluster.server.url},
        stdout=subprocess.PIPE,
        stderr=follower,
    ) as submit:
        os.close(follower)
        shown = b""
        while chunk := _read(leader):
            shown += chunk
        assert submit.wait(TIMEOUT) == 0
    os.close(leader)
    assert b"upload [##############################] 100% 3.0 MB of 3.0 MB" in shown
    assert shown.endswith(b"\r\n")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the other end closed
        return b""


def test_the_python_client_submits_waits_downloads_and_cancels(cluster, tmp_path):
    server = Orchestrator(cluster.server.url)
    seen = []
    job = server.submit("example", 5, files(tmp_path, **{"run.sh": "echo hi > out.txt\n"}))
    assert job["status"] == "Queued"
    finished = server.wait(job["id"], on_change=lambda state: seen.append(state["status"]), interval=0.05)
    assert finished["status"] == "Completed" and seen[-1] == "Completed" and len(seen) == len(set(seen))
    saved = server.download(job["id"], tmp_path / "out.zip")
    with zipfile.ZipFile(saved) as result:
        assert result.read("out.txt") == b"hi\n"
    assert [entry["id"] for entry in server.jobs(user_id=5)["jobs"]] == [job["id"]]
    held = server.submit("example", 6, files(tmp_path, **{"run.sh": "sleep 60\n"}))
    with pytest.raises(OrchestratorError, match="still"):
        server.wait(held["id"], interval=0.05, timeout=0.2)
    assert server.cancel(held["id"])["status"] == "Killed"
    with pytest.raises(OrchestratorError) as refused:
        server.cancel(held["id"])
    assert refused.value.code == 409


def test_a_server_with_api_tokens_needs_one_from_the_command_line_and_the_python_client(tmp_path):
    guarded = Cluster(tmp_path / "guarded", {"API_TOKEN": "portal-one,portal-two"}, {})
    guarded.start()
    try:
        job_files = files(tmp_path, **{"run.sh": "exit 0\n"})
        refused = cli("submit", "--service", "example", "--user", "1", *job_files, cwd=tmp_path,
                      url=guarded.server.url)  # fmt: skip
        assert (refused.returncode, refused.stderr) == (
            1,
            "job-orchestrator submit: missing or wrong token: calls to this server need API_TOKEN\n",
        )
        taken = cli("submit", "--service", "example", "--user", "1", *job_files, "--token", "portal-two", "--wait",
                    cwd=tmp_path, url=guarded.server.url)  # fmt: skip
        assert taken.returncode == 0 and taken.stdout.splitlines()[-1].endswith(": Completed"), taken.stderr
        with pytest.raises(OrchestratorError) as without:
            Orchestrator(guarded.server.url).jobs()
        assert without.value.code == 401
        assert Orchestrator(guarded.server.url, token="portal-one").jobs()["jobs"][0]["status"] == "Completed"

        # The server refuses the upload from its headers and closes the connection on the rest of the body: the
        # client still reads why, rather than "Broken pipe".
        (tmp_path / "big.bin").write_bytes(os.urandom(32 * 1024 * 1024))
        with pytest.raises(OrchestratorError) as refused_big:
            Orchestrator(guarded.server.url, token="wrong").submit("example", 1, [*job_files, tmp_path / "big.bin"])
        assert (refused_big.value.code, refused_big.value.message) == (
            401,
            "missing or wrong token: calls to this server need API_TOKEN",
        )
    finally:
        guarded.stop()


def test_a_download_cut_short_raises_and_writes_nothing(tmp_path):
    """The server dies while it sends a result: the Python client says so and leaves no file behind, complete or
    partial."""
    dying = Cluster(tmp_path / "dying", {}, {})
    dying.start()
    try:
        server = Orchestrator(dying.server.url)
        job = server.submit("example", 1, files(tmp_path, **{"run.sh": "head -c 64000000 /dev/urandom > big.bin\n"}))
        assert server.wait(job["id"], interval=0.05)["status"] == "Completed"

        def kill_the_server(done: int, total: int) -> None:
            if dying.server.popen.poll() is None:
                dying.server.kill()

        with pytest.raises(OrchestratorError, match=f"the download of job {job['id']} was cut short"):
            server.download(job["id"], tmp_path / "result.zip", progress=kill_the_server)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["dying", "run.sh"]
    finally:
        dying.stop()
