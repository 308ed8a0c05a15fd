#!/usr/bin/env python3
"""job-orchestrator: `python orchestrator.py server` or `python orchestrator.py client` (installed: the
`job-orchestrator` command), and the commands that talk to a server (`submit`, `status`, `wait`...).

The only entry point and the only reader of the environment: settings come from `.env` (in the current
folder), then environment variables, then flags; the Config they make is passed down to everything else.
"""

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys

from dotenv import dotenv_values
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers import make_app
from orch import VERSION, cli, peers
from orch.config import Config, load
from orch.node import open_node
from tasks import start_tasks

MAX_BUFFERED_BODY = 1024 * 1024  # for requests that are not streamed (everything but upload and submit)
CHUNK_SIZE = 1024 * 1024  # bytes read from a request body at a time (with Tornado's 64 KiB, uploads ran 2x slower)
IDLE_TIMEOUT = 300.0  # seconds a connection may stay open without a request
BODY_TIMEOUT = 3600.0  # seconds a request body may take to arrive (a large upload on a slow link)
SHUTDOWN_GRACE = 10.0  # seconds that sends and polls in flight get to end on a stop

log = logging.getLogger("orchestrator")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=os.path.basename(sys.argv[0]) or "orchestrator.py",
        description="Runs jobs for scientific web portals: a server queues them, clients run them.",
        epilog="Settings come from .env, then the environment, then these flags; see .env.sample and the README.",
    )
    parser.add_argument("--version", action="version", version=f"job-orchestrator {VERSION}")
    modes = parser.add_subparsers(dest="mode", required=True, metavar="COMMAND")
    server = modes.add_parser("server", help="the portals' API and the queue")
    client = modes.add_parser("client", help="runs the jobs on a compute node")
    for mode in (server, client):
        mode.add_argument("--port", help="port to listen on (PORT; server 5000, client 9000; 0 picks a free one)")
        mode.add_argument("--host", help="address to listen on (HOST; server 0.0.0.0, client 127.0.0.1)")
    client.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond this machine without ORCH_TOKEN (only on a network where nobody else can reach it)",
    )
    cli.add_commands(modes)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {key: value for key, value in dotenv_values(".env").items() if value is not None}
    env.update(os.environ)
    if args.mode not in ("server", "client"):
        url = args.url or env.get("ORCH_URL") or cli.DEFAULT_URL
        return cli.run(args, url, args.token or env.get("ORCH_API_TOKEN"))
    flags = {name: value for name, value in (("PORT", args.port), ("HOST", args.host)) if value is not None}
    try:
        config = load(args.mode, env, flags, insecure=getattr(args, "insecure", False))
    except ValueError as e:
        print(f"orchestrator {args.mode}: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("peewee").setLevel(max(logging.INFO, logging.getLevelName(config.log_level)))  # no SQL
    try:
        asyncio.run(serve(config))
    except ValueError as e:  # port taken, database or data folder in use or unusable
        print(f"orchestrator {args.mode}: {e}", file=sys.stderr)
        return 1
    return 0


def listen(config: Config) -> list[socket.socket]:
    """Claim the port (before anything on disk is touched, so that a start that fails changes nothing);
    ValueError naming HOST or PORT when it cannot be had."""
    try:
        return bind_sockets(config.port, config.host)
    except socket.gaierror as e:
        raise ValueError(f"HOST is {config.host!r}, which is not an address of this machine: {e.strerror}") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ValueError(
                f"PORT {config.port} is already in use on {config.host} (another orchestrator, or "
                f"another program): stop it or choose another PORT"
            ) from None
        raise ValueError(f"cannot listen on HOST {config.host!r}, PORT {config.port}: {e.strerror}") from None


async def serve(config: Config) -> None:
    """Listen, lock and open the database and data folder, recover, run the tasks; return after SIGINT or
    SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)  # before anything else: a stop is never missed
    sockets = listen(config)
    if config.port == 0:  # a free port was picked: the settings name it (a client announces its URL with it)
        config = dataclasses.replace(config, port=sockets[0].getsockname()[1])
    try:
        ctx = open_node(config)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    server = HTTPServer(
        make_app(ctx),
        max_body_size=MAX_BUFFERED_BODY,
        idle_connection_timeout=IDLE_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        chunk_size=CHUNK_SIZE,
    )
    server.add_sockets(sockets)
    log.info("%s listening on http://%s:%d (API documentation at /swagger-ui/)", config.mode, config.host, config.port)
    beats = start_tasks(ctx)
    await stop.wait()

    log.info("stopping")
    server.stop()
    for beat in beats:
        beat.stop()
    # Runs of run.sh go on without the client (a restarted client adopts them); sends and polls get a
    # moment to end, and whatever they leave half-done is recovered at the next start.
    ending = [
        asyncio.ensure_future(ctx.inflight.wait("send", "poll")),
        asyncio.ensure_future(server.close_all_connections()),
    ]
    await asyncio.wait(ending, timeout=SHUTDOWN_GRACE)
    if config.mode == "server":
        peers.unregister(ctx)  # its peers take over its clients at once
    ctx.close()


if __name__ == "__main__":
    sys.exit(main())
