"""compose.yaml, started for real with podman-compose (Debian's package): the README's walk-through works against it
as it is written (the CLI's submit, curl's uploads, statuses and zips, a slow job's partial zip, a cancel); the
client is reachable from the server only, and its jobs reach nothing; `stop` ends both with SIGTERM, cleanly,
within 5 s; `down -v` leaves nothing behind."""

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from bench.harness import free_port
from tests.deploy.support import ROOT, WAIT, timed, wait_for_status, wait_until_healthy

pytestmark = pytest.mark.slow

STOP_WITHIN = 5.0


def test_compose_up_runs_the_readme_walk_through_and_stop_ends_both_cleanly(podman, image, tmp_path):
    # The project as a user has it: compose.yaml, the env file with the token beside it, the example job.
    shutil.copy(ROOT / "compose.yaml", tmp_path)
    shutil.copytree(ROOT / "example", tmp_path / "example")
    (tmp_path / "compose.env").write_text("ORCH_TOKEN=" + podman.prefix + "-secret\n")
    port = free_port()
    podman.env.update(ORCH_IMAGE=image, ORCH_PORT=f"127.0.0.1:{port}")  # the image built for the test, a free port
    project = podman.name("compose")
    compose = ("podman-compose", "--project-name", project)
    started = time.monotonic()
    try:
        podman.command(*compose, "up", "--detach", cwd=tmp_path)
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(url)
        timed("compose: up, server answering", started)
        walk_through(url, tmp_path)

        server, client = f"{project}_server_1", f"{project}_client_1"
        for name in (server, client):
            assert podman("healthcheck", "run", name, check=False).returncode == 0, podman.logs(name)
        # The client has no port of its own on this machine, and its network leads nowhere but to the server.
        assert podman("port", client).stdout.strip() == ""
        reach = "import socket; socket.create_connection(('1.1.1.1', 80), timeout=5)"  # no route: refused at once
        done = podman("exec", client, "python3", "-c", reach, check=False)
        assert done.returncode != 0 and "Error" in done.stderr, done.stdout + done.stderr

        started = time.monotonic()
        podman.command(*compose, "stop", "--timeout", "30", cwd=tmp_path)  # SIGTERM; SIGKILL only after 30 s
        assert timed("compose: stop (SIGTERM to both)", started) < STOP_WITHIN
        for name in (server, client):
            logs = podman.logs(name)
            assert podman.exit_code(name) == 0, logs
            assert "stopping" in logs and "Traceback" not in logs, logs
    finally:
        podman.command(*compose, "down", "--volumes", "--timeout", "0", cwd=tmp_path, check=False)
        # podman-compose 1.0 leaves a project's networks behind.
        for network in ("public", "jobs"):
            podman("network", "rm", "--force", f"{project}_{network}", check=False)
    left = podman("ps", "--all", "--filter", f"label=io.podman.compose.project={project}", "--quiet").stdout
    assert left.strip() == ""
    assert project not in podman("volume", "ls", "--quiet").stdout


def walk_through(url: str, folder: Path) -> None:
    """Every line of the README's walk-through, in order, as written but for the server's address and the
    program's path, with the pauses a reader makes (until a job has ended, or has run a little)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"^## Walk-through$.*?^```sh$(.*?)^```$", readme, re.M | re.S)[1]
    lines = [line for line in (re.sub(r"(^|\s)#.*", "", line).strip() for line in block.splitlines()) if line]
    assert len(lines) == 10 and lines[0].startswith(".venv/bin/python orchestrator.py submit"), lines
    env = {**os.environ, "ORCH_URL": url}
    outputs = []
    started = time.monotonic()
    for line in lines:
        if "result2.zip" in line:
            wait_for_status(url, 2, {"Completed", "Failed", "Invalid", "Unknown"})
        if "download_partial/3" in line:
            wait_for_status(url, 3, {"Running"})
            time.sleep(1.5)  # a step or so
        command = line.replace("http://localhost:5000", url)
        command = command.replace(".venv/bin/python orchestrator.py", f"{sys.executable} {ROOT / 'orchestrator.py'}")
        done = subprocess.run(["sh", "-c", command], cwd=folder, env=env, capture_output=True, text=True, timeout=WAIT)
        assert done.returncode == 0, f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        outputs.append(done.stdout + done.stderr)
    timed("compose: the README's walk-through", started)

    submitted, uploaded, status, _, _, slow, partial, _, cancelled, jobs = outputs
    assert "job 1: Completed" in submitted and "saved result.zip" in submitted
    assert '"id": 2, "status": "Queued"' in uploaded and '"id": 2' in status
    assert '"id": 3, "status": "Queued"' in slow and "progress.txt" in partial
    assert "job 3: Killed: job terminated" in cancelled
    assert "Completed" in jobs and "Killed" in jobs
    for zipped in ("result.zip", "result2.zip"):
        with zipfile.ZipFile(folder / zipped) as result:
            assert result.read("result.txt").startswith(b"Hello from ")
