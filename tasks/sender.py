"""Sender (server): claims the queued jobs that quotas allow and sends each to its service's client."""

import logging

from orch import jobs
from orch.context import Context
from orch.errors import ClientError
from orch.models import Job, fetch, server_db, transition
from orch.quotas import move_cursor, next_jobs
from orch.states import Status
from tasks.getter import poll_soon

log = logging.getLogger(__name__)


async def send_queued(ctx: Context, now: float) -> int:
    """Claim (Queued -> Processing) what each service may start now and start sending it; return the count.

    A service whose client just failed is skipped until its backoff ends. Sends run in the background (one
    slow client holds up nobody else); a claimed job holds its quota slot until the send ends.
    """
    claimed = []
    for name in sorted(ctx.config.services):
        if not ctx.backoff.ready(name, now):
            continue
        picks = next_jobs(ctx.config.services[name])
        if not picks:
            continue
        with server_db.atomic():
            mine = [(job, user) for job, user in picks
                    if transition(Job, job, Status.QUEUED, Status.PROCESSING, now, message="")]
            if mine:
                move_cursor(name, mine[-1][1])
        claimed += [job for job, _ in mine]
    for job_id in claimed:
        ctx.inflight.start(("send", job_id), lambda job_id=job_id: send(ctx, job_id, now))
    return len(claimed)


async def send(ctx: Context, job_id: int, now: float) -> None:
    """Send a claimed job (see `_send`); if its payload started or ended before the send was recorded (a quick
    job on a busy server, or a send repeated after a crash), ask about it now rather than at a getter round."""
    try:
        await _send(ctx, job_id, now)
    finally:
        if job_id in ctx.changed_early:
            ctx.changed_early.discard(job_id)
            if fetch(Job, job_id).status == Status.SUBMITTED:
                poll_soon(ctx, job_id)


async def _send(ctx: Context, job_id: int, now: float) -> None:
    """Send one job claimed in the round at `now`: Submitted with its payload id when the client accepts it;
    back to Queued when the client is unreachable or failing (its service retried from `now` plus a backoff),
    Failed once it has been so for CLIENT_LOST_AFTER; Failed when the client refuses the job.

    The job's key goes with it, so a send repeated after a crash or a lost answer finds the payload that
    the first one made instead of running the job twice."""
    job = fetch(Job, job_id)
    service = ctx.config.services[job.service]
    try:
        files = sorted(path for path in jobs.folder(ctx, job).iterdir() if path.is_file())
        dest, payload_status = await ctx.clients.submit(service.client, files, job.folder, service.timeout)
    except ClientError as e:
        if e.transient:
            delay = ctx.backoff.failed(service.name, now)
            down = ctx.backoff.down_for(service.name, now)
            if down >= ctx.config.client_lost_after:
                transition(Job, job_id, Status.PROCESSING, Status.FAILED, ctx.clock(),
                           f"could not reach the {service.name} client for {down:.0f} s: {e.message}")
                ctx.wake("sender")
                return
            log.warning("sender: job %s not sent, next try in %.0f s: %s", job_id, delay, e.message)
            transition(Job, job_id, Status.PROCESSING, Status.QUEUED, ctx.clock(),
                       f"waiting for the {service.name} client: {e.message}")
        else:
            log.warning("sender: job %s refused: %s", job_id, e.message)
            transition(Job, job_id, Status.PROCESSING, Status.FAILED, ctx.clock(),
                       f"the client refused the job: {e.message}")
            ctx.wake("sender")
        return
    except Exception:
        log.exception("sender: job %s failed", job_id)
        transition(Job, job_id, Status.PROCESSING, Status.FAILED, ctx.clock(), "internal error while sending the job")
        ctx.wake("sender")
        return
    ctx.backoff.succeeded(service.name)
    transition(Job, job_id, Status.PROCESSING, Status.SUBMITTED, ctx.clock(), "", dest_id=dest.dest_id,
               dest_instance=dest.instance, client=service.client.address)
    if payload_status != Status.PREPARED:  # a repeated send found the payload of the first one further on
        ctx.changed_early.add(job_id)
