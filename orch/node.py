"""Bringing up one process of either mode: its locks, its database, recovery, and (client) process handling and
the executor of its jobs (with their sandbox).

Shared by `orchestrator.py` and the tests, so that both start exactly the same way.
"""

import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psutil
from peewee import Model
from tornado.httpclient import AsyncHTTPClient
from tornado.process import Subprocess

from orch import database, executors, jobs, ownership, payloads, peers, processes
from orch.config import Config
from orch.context import Context
from orch.models import ClientFact, ServerFact, fact, set_fact

MAX_RESPONSE_BODY = 2**40  # result zips stream to disk: no practical limit


def open_node(config: Config) -> Context:
    """Lock the mode's database and data folder, open the database, check that the two belong together, and
    make them consistent; return the context to serve with (`ctx.close()` gives the locks back).

    Call it with the IOLoop running (a client installs its SIGCHLD handling on it) and the port already
    bound, so that a start that fails changes nothing. Raises ValueError with one line naming the setting.

    Everything the process creates from then on (databases, job folders, results) is for its user only (umask
    077); a client's jobs run as other users only where it hands them their folder."""
    os.umask(0o077)
    owner = ownership.claim(None if config.db_url else config.db_path, config.data_path, config.shares_data)
    try:
        http = AsyncHTTPClient(force_instance=True, max_clients=100, max_body_size=MAX_RESPONSE_BODY)
        ctx = Context(config, http=http, owner=owner)
        if config.mode == "client":
            executors.setup(ctx)  # a setting it refuses stops the start before the database is touched
        if config.mode == "server":
            _open(config, database.open_server_db, ServerFact, jobs, "job")
            peers.register(ctx, ctx.clock())
            jobs.recover(ctx)
        else:
            _open(config, database.open_client_db, ClientFact, payloads, "payload")
            payloads.identify(ctx, database.client_instance())
            executors.check_running(ctx, payloads.started_by())
            payloads.recover(ctx)
            processes.become_subreaper()
            Subprocess.initialize()
            psutil.cpu_percent(interval=None)  # /load reports the use since the previous call: start counting
    except BaseException:
        owner.release()
        raise
    return ctx


def _open(
    config: Config, opener: Callable[[Path | str], None], facts: type[Model], domain: ModuleType, kind: str
) -> None:
    """Open the database with `opener` and pair it with the data folder (see `orch.ownership.check`); `domain`
    (`orch.jobs` or `orch.payloads`) tells what of theirs they hold. A database file that does not exist yet is
    not created for a data folder that belongs to another one."""
    has_files = domain.has_folders(config.data_path)
    name = database.label(config.database)
    if not config.db_url and not config.db_path.exists():
        ownership.check(None, False, has_files, name, config.data_path, kind)
    opener(config.database)
    stored = fact(facts, database.IDENTITY)
    identity = ownership.check(stored, domain.kept(), has_files, name, config.data_path, kind)
    if identity is not None:
        set_fact(facts, database.IDENTITY, identity)
        ownership.mark(config.data_path, identity)
