"""End to end: `orchestrator.py server` and `orchestrator.py client` as real processes, driven over HTTP."""

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import multipart

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")
TIMEOUT = 30.0


class Process:
    """An orchestrator.py process started in `folder` with `env` (and nothing from the test's environment
    but PATH), its output in a file."""

    def __init__(self, mode: str, folder: Path, env: dict[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.log = folder / f"{mode}.log"
        with open(self.log, "wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, str(ROOT / "orchestrator.py"), mode, "--port", "0"],
                cwd=folder,
                env={"PATH": os.environ["PATH"], **env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        match = wait(lambda: LISTENING.search(self.log.read_text()) or self.popen.poll() is not None)
        assert isinstance(match, re.Match), self.log.read_text()
        self.url = f"http://127.0.0.1:{match[1]}"

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(TIMEOUT)


@pytest.fixture
def processes():
    started: list[Process] = []

    def start(mode: str, folder: Path, **env: str) -> Process:
        started.append(Process(mode, folder, env))
        return started[-1]

    yield start
    for process in started:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait(TIMEOUT)


def wait(condition, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting after {timeout} s")
        time.sleep(0.02)
    return result


def request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, headers=headers or {}), timeout=10) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_a_job_goes_through_two_orchestrator_processes(processes, tmp_path):
    client = processes("client", tmp_path / "client")
    server = processes(
        "server",
        tmp_path / "server",
        SERVICE_EXAMPLE_UPLOAD_URL=f"{client.url}/submit",
        SERVICE_EXAMPLE_DOWNLOAD_URL=f"{client.url}/retrieve",
    )
    body, content_type = multipart(
        {"user_id": "7", "service": "example"}, {"run.sh": b"echo computed > answer.txt\n", "input.txt": b"42"}
    )
    code, _, answer = request(f"{server.url}/upload", body, {"Content-Type": content_type})
    assert code == 201
    job_id = json.loads(answer)["id"]

    code, kind, result = wait(lambda: (r := request(f"{server.url}/download/{job_id}"))[1] == "application/zip" and r)

    archive = zipfile.ZipFile(io.BytesIO(result))
    assert archive.read("answer.txt") == b"computed\n"
    assert archive.read("input.txt") == b"42"
    assert server.stop() == 0
    assert client.stop() == 0
    assert (tmp_path / "server" / "server.sqlite").exists() and (tmp_path / "client" / "client.sqlite").exists()


def test_a_client_on_a_port_picked_for_it_joins_the_server_at_its_real_url(processes, tmp_path):
    token = "s3cret-token-for-tests"
    server = processes("server", tmp_path / "server", ORCH_TOKEN=token, SERVICE_EXAMPLE_CLIENTS="")
    client = processes("client", tmp_path / "client", ORCH_TOKEN=token, SERVER_URL=server.url, SERVICES="example")
    body, content_type = multipart({"user_id": "7", "service": "example"}, {"run.sh": b"echo hi > out.txt\n"})
    code, _, answer = request(f"{server.url}/upload", body, {"Content-Type": content_type})
    job_id = json.loads(answer)["id"]
    wait(lambda: request(f"{server.url}/download/{job_id}")[1] == "application/zip")
    with sqlite3.connect(tmp_path / "server" / "server.sqlite") as db:
        assert db.execute("SELECT address FROM joined_clients").fetchall() == [(client.url,)]
    assert "joined " in client.log.read_text()
    assert server.stop() == 0 and client.stop() == 0


def test_a_bad_setting_stops_start_up_with_one_line_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "server"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            "PATH": os.environ["PATH"],
            "SERVICE_EXAMPLE_UPLOAD_URL": "ftp://x/submit",
            "SERVICE_EXAMPLE_DOWNLOAD_URL": "http://x/retrieve",
        },
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "SERVICE_EXAMPLE_UPLOAD_URL" in result.stderr and "Traceback" not in result.stderr


def start_client(folder: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "client"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], **env},
        timeout=TIMEOUT,
    )


def test_settings_are_read_from_dotenv_in_the_current_folder(tmp_path):
    (tmp_path / ".env").write_text("MAX_AGE=not-a-number\n")
    result = start_client(tmp_path)
    assert result.returncode == 2
    assert "MAX_AGE must be a whole number, got 'not-a-number'" in result.stderr


def test_the_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("PORT=9001\n")
    result = start_client(tmp_path, PORT="70000")
    assert result.returncode == 2
    assert "PORT must be between 0 and 65535, got 70000" in result.stderr


def test_version_and_help():
    version = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "--version"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert version.returncode == 0 and version.stdout.startswith("job-orchestrator ")
    usage = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "--help"], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert usage.returncode == 0 and "server" in usage.stdout and "submit" in usage.stdout
    server_usage = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), "server", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert server_usage.returncode == 0 and "--port" in server_usage.stdout
