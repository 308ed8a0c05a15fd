"""Dispatching queued jobs (server): claiming what the quotas allow, and sending each to its service's client.

A claimed job (Queued -> Processing) holds its quota slot until its send ends: Submitted when the client took
it, back to Queued when the client could not be reached (tried again after the client's backoff), Failed when
the client refused it or stayed unreachable for CLIENT_LOST_AFTER. The job's key goes with it, so a send
repeated after a crash or a lost answer finds the payload the first one made instead of running the job twice.
"""

import logging

from orch import jobs, quotas, tracking
from orch.context import Context
from orch.errors import ClientError
from orch.models import server_db
from orch.states import Status

log = logging.getLogger(__name__)


def claim(ctx: Context, now: float) -> list[int]:
    """Claim (Queued -> Processing) the jobs each service may start now, in the fair order of `orch.quotas`;
    return their ids. A service whose client is waiting out a failure is passed over."""
    claimed = []
    for name, service in sorted(ctx.config.services.items()):
        client = service.client
        if not tracking.ready(ctx, client, now) and tracking.lost(ctx, client.address, now) is None:
            continue  # waiting out a failure (a lost client is called anyway: its jobs end at their send)
        picks = quotas.next_jobs(service)
        if not picks:
            continue
        with server_db.atomic():
            mine = [
                (job, user)
                for job, user in picks
                if jobs.move(ctx, job, Status.QUEUED, Status.PROCESSING, message="", now=now)
            ]
            if mine:
                quotas.move_cursor(name, mine[-1][1])
        claimed += [job for job, _ in mine]
    return claimed


def start_send(ctx: Context, job_id: int, now: float) -> None:
    """Send a job claimed in the round at `now`, in the background (one slow client holds up nobody else)."""
    ctx.inflight.start(("send", job_id), lambda: send(ctx, job_id, now))


async def send(ctx: Context, job_id: int, now: float) -> None:
    """Send a claimed job and record the outcome (see the module's docstring)."""
    payload_status = None
    try:
        payload_status = await _submit(ctx, job_id, now)
    finally:
        tracking.send_ended(ctx, job_id, payload_status)


async def _submit(ctx: Context, job_id: int, now: float) -> str | None:
    """Send one claimed job and record the outcome; return the status of its payload if the client took it."""
    job = jobs.get(job_id)
    service = ctx.config.services[job.service]
    client = service.client
    try:
        files = sorted(path for path in jobs.folder(ctx, job).iterdir() if path.is_file())
        dest, payload_status = await ctx.clients.submit(client, files, job.folder, service.timeout, service.network)
    except ClientError as e:
        if not e.transient:
            log.warning("sender: job %s refused: %s", job_id, e.message)
            _fail(ctx, job_id, f"the client refused the job: {e.message}")
            return None
        delay = tracking.failed(ctx, client, now, e.message)
        if (why := tracking.lost(ctx, client.address, now)) is not None:
            _fail(ctx, job_id, f"could not reach the {service.name} client {why}")
            return None
        log.warning("sender: job %s not sent, next try in %.0f s: %s", job_id, delay, e.message)
        jobs.move(
            ctx,
            job_id,
            Status.PROCESSING,
            Status.QUEUED,
            f"waiting for the {service.name} client at {client.address}: {e.message}",
        )
        return None
    except Exception:
        log.exception("sender: job %s failed", job_id)
        _fail(ctx, job_id, "internal error while sending the job")
        return None
    tracking.answered(ctx, client)
    jobs.move(
        ctx,
        job_id,
        Status.PROCESSING,
        Status.SUBMITTED,
        "",
        dest_id=dest.dest_id,
        dest_instance=dest.instance,
        client=client.address,
    )
    return payload_status


def _fail(ctx: Context, job_id: int, reason: str) -> None:
    jobs.move(ctx, job_id, Status.PROCESSING, Status.FAILED, reason)
    ctx.wake("sender")  # its slot is free
