"""Fixtures: real server and client apps on free loopback ports, with real SQLite files in a temporary folder.

`nodes(mode, tasks=False, **settings)` starts one: settings are variables in lower case (`max_age=1`).
With `tasks=True` its background tasks run as in production; without, tests call the ticks themselves.
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.process import Subprocess
from tornado.testing import bind_unused_port

from handlers import make_app
from orch import database, ownership, payloads, peers, processes, tracking
from orch.config import Config, load
from orch.context import Context
from orch.models import Job, Payload, client_db, server_db
from orch.node import open_node
from orch.states import Status
from tasks import Beat, start_tasks

pytest_plugins = ["tests.services.postgres", "tests.services.slurm"]  # their fixtures

WAIT_TIMEOUT = 30.0  # generous: waits poll every few ms and end as soon as their condition holds


@pytest.fixture
def io_loop():
    """A fresh IOLoop per test, without the deprecated make_current/clear_current of pytest-tornasync."""
    loop = IOLoop(make_current=False)
    asyncio.set_event_loop(loop.asyncio_loop)
    yield loop
    Subprocess.uninitialize()
    asyncio.set_event_loop(None)
    loop.close(all_fds=True)


@dataclass(eq=False)
class Node:
    """A running server or client app, reached over real HTTP on loopback."""

    ctx: Context
    url: str
    http_server: HTTPServer
    beats: list[Beat] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return self.ctx.config

    async def fetch(self, path: str, **kwargs) -> HTTPResponse:
        kwargs.setdefault("raise_error", False)
        return await self.ctx.http.fetch(self.url + path, **kwargs)

    async def json(self, path: str, **kwargs) -> tuple[int, object]:
        response = await self.fetch(path, **kwargs)
        return response.code, json.loads(response.body)

    async def settle(self) -> None:
        """Wait for the background work that ticks started (sends, polls, runs) to end."""
        await asyncio.wait_for(self.ctx.inflight.wait(), WAIT_TIMEOUT)

    def stop(self) -> None:
        """Stop serving and give the database and data folder back (another node may open them)."""
        for beat in self.beats:
            beat.stop()
        self.http_server.stop()
        if self.config.mode == "server":
            tracking.unfollow_all(self.ctx)
            peers.unregister(self.ctx)
        self.ctx.owner.release()


def pytest_generate_tests(metafunc):
    """Tests of modules marked `both_databases` run once on SQLite and once on PostgreSQL: their server's
    database (`server_database`) is a SQLite file, then a fresh database on the suite's PostgreSQL. A test of
    such a module marked `sqlite` is about SQLite alone."""
    marked = metafunc.definition.get_closest_marker("both_databases")
    if "server_database" in metafunc.fixturenames and marked and not metafunc.definition.get_closest_marker("sqlite"):
        metafunc.parametrize("server_database", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def server_database(request, tmp_path) -> Path | str:
    """Where a test's server keeps its jobs: a SQLite file (the default), or a PostgreSQL URL."""
    if getattr(request, "param", "sqlite") == "postgresql":
        return request.getfixturevalue("postgres_url")
    return tmp_path / "server.sqlite"


@pytest.fixture
def nodes(io_loop, tmp_path, server_database):
    """Start server or client nodes; everything they started is stopped (and any run.sh killed) after the test.
    Servers keep their jobs in `server_database`."""
    started: list[Node] = []

    def start(mode: str, tasks: bool = False, **settings) -> Node:
        database = {"DB_URL": server_database} if isinstance(server_database, str) and mode == "server" else {}
        sock, port = bind_unused_port()  # first, as a process claims its port: its settings name the real one
        env = {
            "DB_PATH": str(tmp_path / f"{mode}.sqlite"),
            **database,
            "DATA_PATH": str(tmp_path / mode),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "KILL_GRACE": "1",
            "SENDER_INTERVAL": "0.05",
            "GETTER_INTERVAL": "0.05",
            "RUNNER_INTERVAL": "0.05",
            "SLOTS": "100",  # tests that run many jobs at once are not about a client's slots
        }
        env.update({name.upper(): str(value) for name, value in settings.items()})
        try:
            ctx = open_node(load(mode, env))
        except BaseException:
            sock.close()
            raise
        http_server = HTTPServer(make_app(ctx))
        http_server.add_socket(sock)
        node = Node(ctx, f"http://127.0.0.1:{port}", http_server)
        if tasks:
            node.beats = start_tasks(ctx)
        started.append(node)
        return node

    yield start

    async def teardown() -> None:
        for node in started:
            node.stop()
            if node.config.mode == "client" and client_db.obj is not None and not client_db.is_closed():
                for payload in Payload.select().where(Payload.status == Status.RUNNING.value):
                    await processes.kill_tree(payloads.run_of(node.ctx, payload), 0)
                payloads.stop_leftovers(node.ctx)  # and any other process of its runs, whatever its state
            await asyncio.wait_for(node.ctx.inflight.wait(), WAIT_TIMEOUT)
            await node.http_server.close_all_connections()
            node.ctx.close()

    io_loop.run_sync(teardown)
    for db in (server_db, client_db):
        database.close(db)


def pytest_sessionstart(session):
    """Have every process the suite starts, even one that leaves its parent, end up a child of this one, so
    that the check below sees it."""
    processes.become_subreaper()


LEFTOVERS: list[str] = []


def pytest_sessionfinish(session):
    """Fail the run if anything the suite started is still alive once every test and fixture ended; name it,
    then kill it, so that nothing outlives the suite. Ended processes not reaped yet (a sandbox's init that came to
    this subreaper) are reaped, rather than left to the machine's init."""
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                if child.ppid() == os.getpid():
                    os.waitpid(child.pid, os.WNOHANG)
                continue
            LEFTOVERS.append(f"pid {child.pid}: {' '.join(child.cmdline())[:200]}")
            child.kill()
        except (psutil.Error, ChildProcessError):
            pass  # ended, or reaped, meanwhile
    if LEFTOVERS:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if LEFTOVERS:
        terminalreporter.section("processes left running by the suite (now killed)", red=True)
        for line in LEFTOVERS:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def no_error_logs(caplog):
    """Fail a test that logs an error it did not expect (a test expecting one clears caplog)."""
    yield
    errors = [
        record.getMessage()
        for when in ("setup", "call")
        for record in caplog.get_records(when)
        if record.levelno >= logging.ERROR
    ]
    assert not errors


def accept_error_logs(caplog, *expected: str) -> None:
    """Check that the errors logged so far are exactly `expected` (each a part of one message, in order),
    and accept them so that `no_error_logs` does not fail the test."""
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == len(expected), errors
    assert all(part in error for part, error in zip(expected, errors, strict=True)), errors
    caplog.clear()


def services(client: Node, name: str = "example", **limits) -> dict[str, str]:
    """Settings that route service `name` to `client` (limits: runs_per_user=..., max_runs=...)."""
    prefix = f"service_{name}_"
    settings = {prefix + "upload_url": f"{client.url}/submit", prefix + "download_url": f"{client.url}/retrieve"}
    settings.update({prefix + key: value for key, value in limits.items()})
    return settings


@pytest.fixture
def client(nodes) -> Node:
    """A client app whose tasks are not running (call the ticks)."""
    return nodes("client")


@pytest.fixture
def server(nodes, client) -> Node:
    """A server app with service `example` on `client`, tasks not running (call the ticks)."""
    return nodes("server", **services(client))


def multipart(
    fields: dict[str, str] | None = None, files: dict[str, bytes] | None = None, file_field: str = "file"
) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, content in (files or {}).items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        )
        parts.append(head.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def upload(
    server: Node, files: dict[str, bytes], user_id: object = 1, service: str = "example", **extra_fields
) -> tuple[int, dict]:
    """POST /upload as a portal does; returns the code and the JSON body."""
    body, content_type = multipart({"user_id": str(user_id), "service": service, **extra_fields}, files)
    return await server.json("/upload", method="POST", body=body, headers={"Content-Type": content_type})


async def wait_for(condition: Callable[[], object | Awaitable[object]], timeout: float = WAIT_TIMEOUT) -> object:
    """Poll `condition` until it returns something truthy (and return it); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting after {timeout} s")
        await asyncio.sleep(0.01)


async def round_of(server: Node, tick, now: float) -> None:
    """One round of a task's `tick` on `server` at `now`, and the work it started, to its end."""
    await tick(server.ctx, now)
    await server.settle()


def job_status(job_id: int) -> str:
    return Job.get_by_id(job_id).status


def payload_status(payload_id: int) -> str:
    return Payload.get_by_id(payload_id).status


def script(body: str) -> dict[str, bytes]:
    """The files of a job made of one run.sh."""
    return {"run.sh": body.encode()}


@pytest.fixture
def shared(tmp_path) -> Path:
    """A folder jobs may write to besides their own (give the client `job_write_paths=shared`): where tests learn
    what runs did (ledgers) and tell them when to go on (gates)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)  # jobs run as another user when the suite runs as root
    return folder


def job_processes(*argv: str) -> list[psutil.Process]:
    """The living processes of this run of the suite whose command line is `argv`: how a test finds a job's
    processes, whose pids in their sandbox are not the pids seen from here. Only this process's descendants (it is
    a child subreaper: whatever its children start stays below it), so that another run of the suite on the same
    machine, with the same jobs, is never taken for this one."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.cmdline() == list(argv) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            pass  # ended meanwhile
    return found


def data_files(root: Path) -> list[str]:
    """Every file under the data folder `root`, relative, sorted (to check that nothing is left behind), but
    its lock and identity."""
    own = {root / ownership.LOCK, root / ownership.IDENTITY}
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file() and path not in own)
