"""What the deployment tests share: podman with this machine's settings and what a test created with it, HTTP
and curl as a portal uses them, and the times the steps took (printed at the end of the session)."""

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
SYSTEM = ROOT / "tests" / "system"
WAIT = 60.0  # seconds to wait for a container to answer, or a job to end
COMMAND_TIMEOUT = 600.0

TIMINGS: list[str] = []


def timed(what: str, started: float) -> float:
    """Record how long `what` took since `started` (time.monotonic()), for the summary; return it."""
    elapsed = time.monotonic() - started
    TIMINGS.append(f"{what}: {elapsed:.1f} s")
    return elapsed


class Podman:
    """podman (and podman-compose) with the tests' settings; what `run`, `volume` and `network` create is
    removed by `remove_all`."""

    def __init__(self) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(SYSTEM / "containers.conf")}
        self.prefix = f"orchtest-{secrets.token_hex(4)}"
        self.containers: list[str] = []
        self.volumes: list[str] = []
        self.networks: list[str] = []

    def __call__(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """`podman <args>`; fails the test on an error unless not `check`."""
        return self.command("podman", *args, check=check, **kwargs)

    def command(self, *argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        """Any command with podman's settings (podman-compose, a script), its output captured."""
        kwargs.setdefault("timeout", COMMAND_TIMEOUT)
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, **kwargs)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(argv)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def name(self, what: str) -> str:
        """A name for a container, volume, network or compose project of this test, unlike any other's."""
        return f"{self.prefix}-{what}"

    def run(self, name: str, *args: str) -> str:
        """`podman run -d --name <name> <args>`; the container is removed after the test."""
        self.containers.append(name)
        self("run", "-d", "--name", name, *args)
        return name

    def run_once(self, *args: str) -> subprocess.CompletedProcess:
        """`podman run --rm <args>` in the foreground, its output captured; removed after the test if it is
        still there (a timeout)."""
        name = self.name(f"once-{len(self.containers)}")
        self.containers.append(name)
        return self("run", "--rm", "--name", name, *args, check=False)

    def network(self, what: str) -> str:
        name = self.name(what)
        self.networks.append(name)
        self("network", "create", name)
        return name

    def volume(self, what: str) -> str:
        name = self.name(what)
        self.volumes.append(name)
        return name

    def exit_code(self, container: str) -> int:
        return int(self("inspect", "--format", "{{.State.ExitCode}}", container).stdout)

    def logs(self, container: str) -> str:
        done = self("logs", container, check=False)
        return done.stdout + done.stderr

    def remove_all(self) -> None:
        for container in self.containers:
            self("rm", "--force", "--volumes", "--time", "0", container, check=False)  # and its anonymous /data
        for volume in self.volumes:
            self("volume", "rm", "--force", volume, check=False)
        for network in self.networks:
            self("network", "rm", "--force", network, check=False)
        left = self("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split()
        assert not [name for name in left if name.startswith(self.prefix)], left


def get(url: str, timeout: float = 10.0) -> tuple[int, str, bytes]:
    """GET `url`: its status, content type and body (an error status is an answer too)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def wait_until_healthy(url: str) -> float:
    """Wait until `url`/health answers 200 (the server or client behind it is up); the seconds it took."""
    started = time.monotonic()
    while True:
        try:
            if get(url + "/health", timeout=2)[0] == 200:
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > WAIT:
            pytest.fail(f"{url}/health did not answer within {WAIT} s")
        time.sleep(0.1)


def curl(*args: str, cwd: Path) -> str:
    """Run curl as the README does (`-s`: no progress meter); its output."""
    done = subprocess.run(["curl", "-s", *args], cwd=cwd, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, f"curl {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def wait_for_status(url: str, job_id: int, statuses: set[str]) -> dict:
    """Poll GET /download/{id} (a JSON status until the zip) until the job has one of `statuses`."""
    deadline = time.monotonic() + WAIT
    while True:
        code, kind, body = get(f"{url}/download/{job_id}")
        status = {"status": "Completed"} if kind == "application/zip" else json.loads(body)
        if status["status"] in statuses:
            return status
        assert code == 200 and time.monotonic() < deadline, (code, status)
        time.sleep(0.1)
