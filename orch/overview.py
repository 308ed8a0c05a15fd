"""What an operator watches (server): per service its queue, running jobs and quota use; per user the waiting and
running counts; the clients and their load; the recent failures. The dashboard and the metrics read these.

Every count comes from the unfinished jobs only (an index seek on status), so it costs the same whatever the
length of the history. The clients are those `orch.placement.clients` sums up, with their load.
"""

import asyncio

from orch import placement
from orch.context import Context
from orch.errors import ClientError
from orch.models import Job, run, server_db
from orch.states import ACTIVE, Status

UNFINISHED = sorted(ACTIVE | {Status.QUEUED})
FAILED = (Status.FAILED, Status.UNKNOWN, Status.INVALID)
LOAD_TIMEOUT = 2.0  # seconds the dashboard waits for a client's load
MAX_USERS = 100  # users the dashboard lists (those with the most queued jobs)
COUNTS = (
    f'SELECT "service", "user_id", "status", COUNT(*) FROM "jobs" WHERE "status" IN '
    f'({", ".join("?" * len(UNFINISHED))}) GROUP BY "service", "user_id", "status"'
)


async def snapshot(ctx: Context) -> dict:
    """What the dashboard shows: `services`, `users` (the MAX_USERS with the most queued jobs), `clients` with
    their `load`, the recent `failures`, and when (`at`)."""
    services, users = queues(ctx)
    found = placement.clients(ctx, ctx.clock())
    cpu = await loads(ctx, [client["address"] for client in found if client["up"]])  # not wait for the others
    for client in found:
        client["load"] = cpu.get(client["address"])
    return {
        "services": services,
        "users": users[:MAX_USERS],
        "clients": found,
        "failures": failures(),
        "at": ctx.clock(),
    }


def queues(ctx: Context) -> tuple[list[dict], list[dict]]:
    """Per configured service (and service with unfinished jobs): `queued`, `running` (Running), `active` (every
    job holding a slot) against `max_runs`, and `runs_per_user`; per user of a service with unfinished jobs:
    `queued`, `running` and `active`. Users with the most queued jobs first."""
    services = {
        name: {
            "name": name,
            "queued": 0,
            "running": 0,
            "active": 0,
            "max_runs": config.max_runs,
            "runs_per_user": config.runs_per_user,
        }
        for name, config in sorted(ctx.config.services.items())
    }
    users: dict[tuple[str, int], dict] = {}
    for service, user_id, status, count in run(server_db, COUNTS, UNFINISHED).fetchall():
        entry = services.setdefault(
            service,
            {"name": service, "queued": 0, "running": 0, "active": 0, "max_runs": None, "runs_per_user": None},
        )
        user = users.setdefault(
            (service, user_id), {"service": service, "user_id": user_id, "queued": 0, "running": 0, "active": 0}
        )
        for counts in (entry, user):
            if status == Status.QUEUED:
                counts["queued"] += count
            else:
                counts["active"] += count
                if status == Status.RUNNING:
                    counts["running"] += count
    ranked = sorted(
        users.values(), key=lambda user: (-user["queued"], -user["active"], user["service"], user["user_id"])
    )
    return list(services.values()), ranked


async def loads(ctx: Context, addresses: list[str]) -> dict[str, float | None]:
    """The CPU use in percent of the clients at `addresses`, asked all at once (None for a client that does not
    answer within LOAD_TIMEOUT)."""

    async def load(address: str) -> float | None:
        try:
            return await ctx.clients.load(ctx.config.client_at(address), LOAD_TIMEOUT)
        except ClientError:
            return None

    return dict(zip(addresses, await asyncio.gather(*(load(address) for address in addresses)), strict=True))


def failures(limit: int = 10) -> list[dict]:
    """The jobs that ended Failed, Unknown or Invalid most recently, newest first, with their reasons."""
    columns = (Job.id, Job.user_id, Job.service, Job.status, Job.message, Job.client, Job.finished_at)
    recent = [
        job
        for status in FAILED  # one index range per status (status, finished_at), read from its newest end
        for job in Job.select(*columns)
        .where(Job.status == status, Job.finished_at.is_null(False))
        .order_by(Job.finished_at.desc())
        .limit(limit)
        .dicts()
    ]
    return sorted(recent, key=lambda job: (-job["finished_at"], -job["id"]))[:limit]
