"""Dispatching queued jobs (server): claiming what the quotas allow, placing each on one of its service's clients
(`orch.placement`), and sending it there.

A claimed job (Queued -> Processing) holds its quota slot, and a slot on its client, until its send ends:
Submitted when the client took it; Failed when the client refused it; back to Queued when the client could not
be reached (tried again after the client's backoff), or Failed once it has been unreachable for
CLIENT_LOST_AFTER. The job's key goes with it, so a send repeated after a crash or a lost answer finds the
payload the first one made instead of running the job twice. For the same reason a job whose send may have
reached its client (the whole body went out, then the answer failed; or the server stopped meanwhile) stays
bound to that client and is sent there again; one whose send cannot have reached it (it could not connect, or
was refused before anything was done) may go to any client.
"""

import logging
from dataclasses import dataclass, field

from orch import attempts, jobs, members, placement, quotas, tracking
from orch.config import ClientConfig, ServiceConfig
from orch.context import Context
from orch.errors import ClientError
from orch.members import Member
from orch.models import serialize, server_db
from orch.states import Status

log = logging.getLogger(__name__)


@dataclass
class Sending:
    """Jobs claimed while bound to their client, until their send ends (a restart binds every job that was
    being sent: see `orch.jobs.recover`)."""

    bound: set[int] = field(default_factory=set)


async def claim(ctx: Context, now: float) -> list[int]:
    """Claim (Queued -> Processing) the jobs each service may start now, in the fair order of `orch.quotas`,
    each placed on a client with a free slot; return their ids. A service none of whose clients may be called
    now is passed over."""
    joined = members.joined(now)
    up = {name: placement.up(ctx, service, joined, now) for name, service in ctx.config.services.items()}
    announced = {member.client.address for member in joined}
    unsaid = [client for clients in up.values() for client in clients if client.address not in announced]
    await placement.learn_slots(ctx, unsaid, now)
    load = jobs.placed()
    claimed = []
    for name, service in sorted(ctx.config.services.items()):
        clients = up[name]
        if not clients:
            continue
        with server_db.atomic():
            serialize(server_db, f"claim {name}")  # server processes sharing PostgreSQL claim in turn: fair, in quota
            picks = quotas.next_jobs(service)
            pins = jobs.pins([job for job, _ in picks])
            mine = []
            for job, user in picks:
                client = _place(ctx, service, pins.get(job), clients, joined, load, now)
                if client is None:
                    continue
                moved = jobs.move(
                    ctx,
                    job,
                    Status.QUEUED,
                    Status.PROCESSING,
                    message="",
                    now=now,
                    client=client.address,
                    owner=ctx.process,
                )
                if moved:
                    load[client.address] = load.get(client.address, 0) + 1
                    mine.append((job, user))
                    if job in pins:
                        ctx.state(Sending).bound.add(job)
            if mine:
                quotas.move_cursor(name, mine[-1][1])
        claimed += [job for job, _ in mine]
    return claimed


def _place(
    ctx: Context,
    service: ServiceConfig,
    pin: str | None,
    clients: list[ClientConfig],
    joined: list[Member],
    load: dict[str, int],
    now: float,
) -> ClientConfig | None:
    """Where a job goes in this round: back to the client it is bound to (unless that one is waiting out a
    failure; a lost one is called anyway: the job ends at its send), else where `orch.placement` says."""
    if pin is None:
        return placement.pick(ctx, service, clients, joined, load)
    client = ctx.config.client_at(pin)
    if tracking.ready(ctx, client, now) or tracking.lost(ctx, pin, now) is not None:
        return client
    return None


def start_send(ctx: Context, job_id: int, now: float) -> None:
    """Send a job claimed in the round at `now`, in the background (one slow client holds up nobody else)."""
    ctx.inflight.start(("send", job_id), lambda: send(ctx, job_id, now))


async def send(ctx: Context, job_id: int, now: float) -> None:
    """Send a claimed job and record the outcome (see the module's docstring)."""
    payload_status = None
    try:
        payload_status = await _submit(ctx, job_id, now)
    finally:
        ctx.state(Sending).bound.discard(job_id)
        tracking.send_ended(ctx, job_id, payload_status)


async def _submit(ctx: Context, job_id: int, now: float) -> str | None:
    """Send one claimed job to the client it is placed on and record the outcome; return the status of its
    payload if the client took it."""
    job = jobs.get(job_id)
    service = ctx.config.services[job.service]
    client = ctx.config.client_at(job.client)
    try:
        files = sorted(path for path in jobs.folder(ctx, job).iterdir() if path.is_file())
        dest, payload_status = await ctx.clients.submit(client, files, jobs.key(job), service)
    except ClientError as e:
        if not e.transient:
            log.warning("sender: job %s refused: %s", job_id, e.message)
            _fail(ctx, job_id, f"the client refused the job: {e.message}")
            return None
        bound = e.may_have_acted or job_id in ctx.state(Sending).bound
        delay = tracking.failed(ctx, client, now, e.message)
        if (why := tracking.lost(ctx, client.address, now)) is not None:
            reason = f"could not reach the {service.name} client {why}"
            if bound:  # it may be there: queued again only as another attempt, if the service allows
                attempts.lose(ctx, jobs.get(job_id), reason, held=False)
            else:
                _fail(ctx, job_id, reason)
            return None
        log.warning("sender: job %s not sent, next try in %.0f s: %s", job_id, delay, e.message)
        jobs.move(
            ctx,
            job_id,
            Status.PROCESSING,
            Status.QUEUED,
            f"waiting for the {service.name} client at {client.address}: {e.message}",
            client=client.address if bound else None,
        )
        return None
    except Exception:
        log.exception("sender: job %s failed", job_id)
        _fail(ctx, job_id, "internal error while sending the job")
        return None
    tracking.answered(ctx, client)
    jobs.move(ctx, job_id, Status.PROCESSING, Status.SUBMITTED, "", dest_id=dest.dest_id, dest_instance=dest.instance)
    return payload_status


def _fail(ctx: Context, job_id: int, reason: str) -> None:
    jobs.move(ctx, job_id, Status.PROCESSING, Status.FAILED, reason)
    ctx.wake("sender")  # its slot is free
