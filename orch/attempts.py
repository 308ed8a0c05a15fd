"""A job's attempts (server): what becomes of a job its client lost, and of what that client may still hold.

A job runs once. When its client is lost (out of reach for CLIENT_LOST_AFTER) or has lost it (its data, or the
payload), the job ends Unknown (Failed if no send of it got through), unless its service declares its jobs safe
to run again (`SERVICE_<NAME>_RETRY_LOST=N`): then it is queued again as its next attempt, at most N times,
ahead of newer work of its user (the queue goes by id). Such a service's jobs run at least once, not exactly
once: an attempt cut off with its client may have run, in part or to its end.

Each attempt has its own key (`orch.jobs.key`), so a client that still holds an earlier attempt never takes it
for the new one, and what it says of it (events, answers) changes nothing. What a client out of reach may still
run for a job that went on without it is recorded (`Abandoned`) and stopped once the client answers again: it
neither runs on nor holds a slot there. Records older than MAX_AGE are dropped: that client is gone for good.
"""

import logging

from orch import jobs
from orch.context import Context
from orch.errors import ClientError
from orch.models import Abandoned, Job, run, server_db
from orch.states import Status
from orch.wire import GONE, Destination

log = logging.getLogger(__name__)

ABANDONED = 'SELECT "id", "job_id", "client", "dest_id", "dest_instance", "job_key" FROM "abandoned_payloads"'
FORGET = 'DELETE FROM "abandoned_payloads" WHERE "id" = ?'
EXPIRE = 'DELETE FROM "abandoned_payloads" WHERE "at" < ?'


def lose(ctx: Context, job: Job, reason: str, held: bool) -> bool:
    """The job (as read, in its current status) was lost with its client, `reason` says how: queued again as
    its next attempt if its service allows, else finished (Unknown; Failed if it was being sent). `held`: the
    client may still hold its payload (it is out of reach, not emptied): it is stopped once it answers again.
    Returns False if the job had moved on meanwhile."""
    service = ctx.config.services.get(job.service)
    retries = service.retry_lost if service is not None else 0
    src = Status(job.status)
    with server_db.atomic():
        if job.attempt <= retries:
            again = f"{reason}; queued again (attempt {job.attempt + 1} of {retries + 1})"
            moved = jobs.move(
                ctx,
                job.id,
                src,
                Status.QUEUED,
                again,
                at_attempt=job.attempt,
                attempt=job.attempt + 1,
                client=None,
                dest_id=None,
                dest_instance=None,
            )
        else:
            end = Status.FAILED if src == Status.PROCESSING else Status.UNKNOWN
            moved = jobs.move(ctx, job.id, src, end, reason, at_attempt=job.attempt)
        if moved and held and job.dest_id is not None:
            Abandoned.create(
                job=job.id,
                client=job.client,
                dest_id=job.dest_id,
                dest_instance=job.dest_instance,
                job_key=jobs.key(job),
                at=ctx.clock(),
            )
    if moved:
        ctx.wake("sender")  # a slot is free, or a job is back in the queue
    return moved


def abandoned(ctx: Context, now: float) -> list[tuple[int, int, str, Destination]]:
    """(record id, job id, client address, destination) of each payload to stop (records older than MAX_AGE
    are dropped first)."""
    run(server_db, EXPIRE, (now - ctx.config.max_age,))
    return [
        (record, job_id, client, Destination(dest_id, instance, job_key))
        for record, job_id, client, dest_id, instance, job_key in run(server_db, ABANDONED).fetchall()
    ]


async def stop_abandoned(ctx: Context, record: int, job_id: int, address: str, dest: Destination) -> None:
    """Stop an abandoned payload on its client and forget it; ClientError when the client cannot be reached
    (tried again later). A client that no longer has it (or is another instance) holds nothing to stop."""
    try:
        answer = await ctx.clients.kill(ctx.config.client_at(address), dest)
    except ClientError as e:
        if e.code not in (404, GONE):
            raise
        answer = {"status": "gone"}
    run(server_db, FORGET, (record,))
    log.info(
        "job %s: what %s still held of it (payload %s, %s) is stopped: %s",
        job_id,
        address,
        dest.dest_id,
        dest.job_key,
        answer.get("status", Status.KILLED),
    )
