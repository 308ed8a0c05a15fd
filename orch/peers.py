"""Server processes sharing one database (several of them on one PostgreSQL; one alone on SQLite).

Each process registers itself and says it is alive every few seconds. The work only one of them may do at a
time (following a client: its event stream and its polls) is shared out through leases, rows that name their
holder and lapse unless renewed: a process killed with SIGKILL stops renewing, and another takes over within
LEASE seconds. What a dead process had claimed (jobs it was sending or terminating) is released by the others
(see `orch.jobs.release_orphans`). Times are the processes' own clocks: machines sharing a database keep theirs
in step (NTP), as any cluster does.
"""

import os
import socket

from orch.context import Context
from orch.models import Lease, Server, run, server_db

LEASE = 6.0  # seconds a lease, or a process's word that it is alive, holds without being renewed
FORGET = 86400.0  # seconds after which the row of a process long gone is removed
HOLD = (
    'INSERT INTO "leases" ("name", "holder", "expires_at") VALUES (?, ?, ?) ON CONFLICT ("name") DO UPDATE '
    'SET "holder" = excluded."holder", "expires_at" = excluded."expires_at" '
    'WHERE "leases"."holder" = excluded."holder" OR "leases"."expires_at" < ?'
)


def me(ctx: Context) -> str:
    """This server process's id (new at each start)."""
    return ctx.process


def register(ctx: Context, now: float) -> None:
    """Say that this process is alive (at start-up, before recovery, so that it does not take itself for dead).
    A process alone on its database (SQLite, locked) knows that whoever was there before is gone."""
    with server_db.atomic():
        if not ctx.config.shares_data:
            Lease.delete().execute()
            Server.delete().execute()
        Server.insert(id=me(ctx), host=socket.gethostname(), pid=os.getpid(), started_at=now, seen_at=now).execute()


def heartbeat(ctx: Context, now: float) -> None:
    """Say again that this process is alive; forget processes gone for a day."""
    Server.update(seen_at=now).where(Server.id == me(ctx)).execute()
    Server.delete().where(Server.seen_at < now - FORGET).execute()


def alive(now: float) -> set[str]:
    """The ids of the server processes that said they were alive within LEASE seconds of `now`."""
    return {row.id for row in Server.select(Server.id).where(Server.seen_at >= now - LEASE)}


def hold(ctx: Context, name: str, now: float) -> bool:
    """Take or renew the lease `name` for this process until `now + LEASE`; False if another process holds it."""
    return run(server_db, HOLD, (name, me(ctx), now + LEASE, now)).rowcount == 1


def unregister(ctx: Context) -> None:
    """Leave at a clean stop: give the leases back at once, and stop counting as alive."""
    with server_db.atomic():
        Lease.delete().where(Lease.holder == me(ctx)).execute()
        Server.delete().where(Server.id == me(ctx)).execute()
