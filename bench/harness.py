"""What the benchmarks share: a server and a client as real `orchestrator.py` processes in a scratch folder,
a portal-like HTTP driver, timing and memory helpers, and one way to print results."""

import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import psutil
from tornado.httpclient import AsyncHTTPClient

ROOT = Path(__file__).resolve().parent.parent
# Scratch space on the project's disk (set BENCH_SCRATCH to choose another): /tmp may be another disk, or
# the same one made slow by years of small files, and every job writes a few.
SCRATCH = Path(os.environ.get("BENCH_SCRATCH", ROOT / "bench" / ".scratch"))
SETTLE = 0.001  # seconds between two polls of a portal waiting for its result


def scratch() -> tempfile.TemporaryDirectory:
    """A new folder under SCRATCH, removed with what it holds when its `with` block ends."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=SCRATCH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """One orchestrator.py process; its resident memory can be sampled."""

    def __init__(self, mode: str, folder: Path, env: dict[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(folder / f"{mode}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            [sys.executable, str(ROOT / "orchestrator.py"), mode, "--port", str(self.port)],
            cwd=folder,
            env={"PATH": os.environ["PATH"], "LOG_LEVEL": "WARNING", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.popen.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        """Seconds of CPU the process has used so far."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not ended 30 s later."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


class Orchestrator:
    """A client and a server with service `bench` on it, in a scratch folder; used as a context manager.

    With `servers` above 1 (on PostgreSQL: `DB_URL` in `server_env`), that many server processes share the
    database and one data folder; `server` is the first."""

    def __init__(
        self,
        server_env: dict[str, str] | None = None,
        client_env: dict[str, str] | None = None,
        server_db: Path | None = None,
        servers: int = 1,
    ):
        assert servers == 1 or "DB_URL" in (server_env or {}), "server processes share only a PostgreSQL database"
        self._scratch = scratch()
        self.folder = Path(self._scratch.name)
        if server_db is not None:  # start the server on a copy of this database
            (self.folder / "server").mkdir()
            shutil.copy(server_db, self.folder / "server" / "server.sqlite")
        self.servers: list[Process] = []
        # As many slots as the service's MAX_RUNS sends: the benchmarks measure the orchestrator, not a node.
        client_env = {"KILL_GRACE": "1", "SLOTS": "1000", **(client_env or {})}
        self.client = Process("client", self.folder / "client", client_env)
        try:
            shared = {"DATA_PATH": str(self.folder / "data")} if servers > 1 else {}
            for n in range(servers):
                self.servers.append(
                    Process(
                        "server",
                        self.folder / ("server" if servers == 1 else f"server{n}"),
                        {
                            "SERVICE_BENCH_UPLOAD_URL": f"{self.client.url}/submit",
                            "SERVICE_BENCH_DOWNLOAD_URL": f"{self.client.url}/retrieve",
                            **shared,
                            **(server_env or {}),
                        },
                    )
                )
        except BaseException:
            self._stop()
            raise
        self.server = self.servers[0]
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64, max_body_size=2**40)

    async def __aenter__(self) -> "Orchestrator":
        try:
            for process in (self.client, *self.servers):
                while not await self._healthy(process):
                    assert process.popen.poll() is None, f"{process.popen.args} did not start"
                    await asyncio.sleep(0.02)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _healthy(self, process: Process) -> bool:
        try:
            return (await self.http.fetch(f"{process.url}/health", raise_error=False)).code == 200
        except OSError:
            return False

    async def __aexit__(self, *exc) -> None:
        self.http.close()
        self._stop()

    def _stop(self) -> None:
        try:
            for process in (*self.servers, self.client):
                process.stop()
        finally:
            self._scratch.cleanup()

    async def upload(self, body: bytes, content_type: str) -> int:
        response = await self.http.fetch(
            f"{self.server.url}/upload",
            method="POST",
            body=body,
            headers={"Content-Type": content_type},
            request_timeout=600,
        )
        assert response.code == 201, response.body
        return json.loads(response.body)["id"]

    async def all_running(self, ids: list[int]) -> bool:
        for job_id in ids:
            response = await self.http.fetch(f"{self.server.url}/download/{job_id}")
            if json.loads(response.body)["status"] != "Running":
                return False
        return True

    async def result(self, job_id: int) -> bytes:
        """Poll /download as a portal does until the result zip comes; return it."""
        while True:
            response = await self.http.fetch(
                f"{self.server.url}/download/{job_id}", raise_error=False, request_timeout=600
            )
            if response.headers.get("Content-Type") == "application/zip":
                return response.body
            status = json.loads(response.body)["status"]
            if status in ("Failed", "Invalid", "Killed", "Unknown", "Cleaned"):
                raise RuntimeError(f"job {job_id} ended {status}: {response.body!r}")
            await asyncio.sleep(SETTLE)


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n'.encode()
        + content
        + b"\r\n"
        for name, content in files.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def job_body(script: str, user_id: int = 1) -> tuple[bytes, str]:
    return multipart({"user_id": str(user_id), "service": "bench"}, {"run.sh": script.encode()})


@contextmanager
def timer():
    """`with timer() as elapsed: ...` then `elapsed()` is the seconds it took."""
    start = time.perf_counter()
    end = None

    def elapsed() -> float:
        return (end or time.perf_counter()) - start

    yield elapsed
    end = time.perf_counter()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def show(name: str, rows: list[tuple[str, str]]) -> None:
    """Print a benchmark's figures, one per line, aligned."""
    print(f"\n== {name}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label.ljust(width)}  {value}")
    sys.stdout.flush()
