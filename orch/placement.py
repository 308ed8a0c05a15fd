"""Placing jobs on clients (server): which of a service's clients takes each job, and what the server knows of
each client's capacity.

A service's clients are those its configuration lists and those that joined it (`orch.members`). Among those
that are up (not waiting out a failure), a job goes to the one with the most free slots: its slots minus the
unfinished jobs the server has placed on it (of every service it serves), counted in the database without
asking it; ties are taken in turn. A client's slots are what it announced when it joined, else what its
`/status` says (asked when the server first meets it, then every REFRESH seconds); one that says nothing (a
client of the original) counts as having the service's MAX_RUNS. Where no slot is free the job waits in the
server's queue, where it can still go to whichever client frees one first and fairness between users still
holds, rather than on a client.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from orch import jobs, tracking
from orch.config import ClientConfig, ServiceConfig
from orch.context import Context
from orch.errors import ClientError
from orch.members import Member, clients_of, joined

log = logging.getLogger(__name__)

SLOTS_WAIT = 1.0  # seconds a dispatch round waits for clients met for the first time to say their slots
REFRESH = 60.0  # seconds between two asks of a client's slots (it may have restarted with others)


@dataclass
class Known:
    """Per service, the client chosen last (where the next tie is broken); per client, what its /status said of
    its slots (None: it does not say) and when it was asked."""

    last: dict[str, str] = field(default_factory=dict)
    slots: dict[str, int | None] = field(default_factory=dict)
    asked_at: dict[str, float] = field(default_factory=dict)


def said_slots(ctx: Context, address: str) -> int | None:
    """How many payloads the client at `address` said at its /status that it runs at once (None until then)."""
    return ctx.state(Known).slots.get(address)


async def learn_slots(ctx: Context, clients: list[ClientConfig], now: float) -> None:
    """Ask each of `clients` how many slots it has: those never asked all at once, waiting up to SLOTS_WAIT for
    their answers so that jobs are placed by them from the first (a client stopped or out of reach is not
    waited for longer); those asked more than REFRESH seconds ago in the background."""
    known = ctx.state(Known)
    first = []
    for client in clients:
        asked = known.asked_at.get(client.address)
        if (asked is None or now - asked >= REFRESH) and ("status", client.address) not in ctx.inflight:
            known.asked_at[client.address] = now
            task = ctx.inflight.start(("status", client.address), lambda client=client: _ask_slots(ctx, client, now))
            if asked is None:
                first.append(task)
    if first:
        await asyncio.wait(first, timeout=SLOTS_WAIT)


async def _ask_slots(ctx: Context, client: ClientConfig, now: float) -> None:
    """Learn the client's slots from its `/status` in the round at `now` (None if it does not say; as they were
    if it cannot be reached, which is recorded as any failure to call it, and it is asked again once its backoff
    is over: until it says, it would count as having MAX_RUNS)."""
    known = ctx.state(Known)
    try:
        status = await ctx.clients.status(client)
    except ClientError as e:
        log.debug("%s did not say its slots: %s", client.address, e.message)
        known.slots.setdefault(client.address, None)
        if e.code not in (404, 405):  # a client of the original answers so: it has no /status
            tracking.failed(ctx, client, now, e.message)
            known.asked_at.pop(client.address, None)
        return
    tracking.answered(ctx, client)
    said = status.get("slots")
    known.slots[client.address] = said if isinstance(said, int) and not isinstance(said, bool) and said > 0 else None


def up(ctx: Context, service: ServiceConfig, members: list[Member], now: float) -> list[ClientConfig]:
    """The clients of `service` a job may be placed on in the round at `now`: those not waiting out a failure.
    When every one of them is lost, all of them: the sends end the jobs, as with a single lost client."""
    clients = clients_of(service, members)
    ready = [client for client in clients if tracking.ready(ctx, client, now)]
    if not ready and clients and all(tracking.lost(ctx, client.address, now) for client in clients):
        return clients
    return ready


def slots(ctx: Context, service: ServiceConfig, client: ClientConfig, members: list[Member]) -> int:
    """How many jobs `client` runs at once: as it announced, or said in its `/status`, else MAX_RUNS."""
    for member in members:
        if member.client.address == client.address:
            return member.slots
    said = said_slots(ctx, client.address)
    return service.max_runs if said is None else said


def pick(
    ctx: Context, service: ServiceConfig, clients: list[ClientConfig], members: list[Member], load: dict[str, int]
) -> ClientConfig | None:
    """The client among `clients` with the most free slots given `load` (jobs placed, by address), ties in
    turn; None when none has a free slot. The caller adds the job to `load` once it is placed."""
    free = {client.address: slots(ctx, service, client, members) - load.get(client.address, 0) for client in clients}
    most = max(free.values(), default=0)
    if most <= 0:
        return None
    tied = sorted(address for address, count in free.items() if count == most)
    turns = ctx.state(Known).last
    last = turns.get(service.name)
    chosen = next((address for address in tied if last is None or address > last), tied[0])
    turns[service.name] = chosen
    return next(client for client in clients if client.address == chosen)


def clients(ctx: Context, now: float) -> list[dict]:
    """Every client the server knows (listed, joined, or holding jobs), by address, for people to look at:
    the services it serves, its slots, the unfinished jobs placed on it (`jobs`) and those `running`, whether it
    answers (`up`; when not, for how long, `down_for`, and why, `reason`), whether its events are followed live,
    and when its lease ends if it joined."""
    members = {member.client.address: member for member in joined(now)}
    placed, running = jobs.placed(), jobs.running_on()
    served: dict[str, set[str]] = {}
    for service in ctx.config.services.values():
        for client in clients_of(service, list(members.values())):
            served.setdefault(client.address, set()).add(service.name)
    seen = []
    for address in sorted(served.keys() | placed.keys()):
        failing = tracking.failing(ctx, address, now)
        down_for, reason = failing or (0.0, "")
        member = members.get(address)
        seen.append(
            {
                "address": address,
                "services": sorted(served.get(address, ())),
                "slots": member.slots if member else said_slots(ctx, address),
                "jobs": placed.get(address, 0),
                "running": running.get(address, 0),
                "up": failing is None,
                "down_for": down_for,
                "reason": reason,
                "followed": tracking.followed(ctx, address),
                "lease_ends": member.expires_at if member else None,
            }
        )
    return seen
