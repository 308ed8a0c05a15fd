"""Placing jobs on clients (server): which of a service's clients takes each job.

A service's clients are those its configuration lists and those that joined it (`orch.members`). Among those
that are up (not waiting out a failure), a job goes to the one with the most free slots: its slots minus the
unfinished jobs the server has placed on it (of every service it serves), counted in the database without
asking it; ties are taken in turn. A client's slots are what it announced when it joined, else what its
`/status` said when the server began to follow it; one that said nothing (a client of the original) counts as
having the service's MAX_RUNS. Where no slot is free the job waits in the server's queue, where it can still go
to whichever client frees one first and fairness between users still holds, rather than on a client.
"""

from dataclasses import dataclass, field

from orch import tracking
from orch.config import ClientConfig, ServiceConfig
from orch.context import Context
from orch.members import Member, clients_of


@dataclass
class Turns:
    """Per service, the client chosen last: where the next tie is broken."""

    last: dict[str, str] = field(default_factory=dict)


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
    known = tracking.slots(ctx, client.address)
    return service.max_runs if known is None else known


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
    turns = ctx.state(Turns).last
    last = turns.get(service.name)
    chosen = next((address for address in tied if last is None or address > last), tied[0])
    turns[service.name] = chosen
    return next(client for client in clients if client.address == chosen)
