"""Bringing up one process of either mode: its database, recovery, and (client) process handling.

Shared by `orchestrator.py` and the tests, so that both start exactly the same way.
"""

import psutil
from tornado.httpclient import AsyncHTTPClient
from tornado.process import Subprocess

from orch import jobs, payloads, processes
from orch.config import Config
from orch.context import Context
from orch.models import client_instance, open_client_db, open_server_db

MAX_RESPONSE_BODY = 2**40  # result zips stream to disk: no practical limit


def open_node(config: Config) -> Context:
    """Open the mode's database and make it consistent with the disk; return the context to serve with.
    Call it with the IOLoop running (a client installs its SIGCHLD handling on it)."""
    http = AsyncHTTPClient(force_instance=True, max_clients=100, max_body_size=MAX_RESPONSE_BODY)
    ctx = Context(config, http=http)
    if config.mode == "server":
        open_server_db(config.db_path)
        jobs.recover(ctx)
    else:
        open_client_db(config.db_path)
        ctx.instance = client_instance()
        payloads.recover(ctx)
        processes.become_subreaper()
        Subprocess.initialize()
        psutil.cpu_percent(interval=None)  # /load reports the use since the previous call: start counting
    return ctx
