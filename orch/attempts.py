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
from dataclasses import dataclass

from orch import jobs
from orch.context import Context
from orch.errors import ClientError
from orch.models import Abandoned, Job, run, server_db
from orch.states import Status
from orch.wire import GONE, Destination

log = logging.getLogger(__name__)

ABANDONED = 'SELECT "id", "job_id", "client", "dest_id", "dest_instance", "job_key", "at" FROM "abandoned_payloads"'
FORGET = 'DELETE FROM "abandoned_payloads" WHERE "id" = ?'


@dataclass(frozen=True)
class Leftover:
    """A payload that a lost client may still run for a job that went on without it."""

    record: int
    job_id: int
    address: str
    dest: Destination
    since: float


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


def leftovers() -> list[Leftover]:
    """Every payload still to stop on a client that was lost."""
    return [
        Leftover(record, job_id, address, Destination(dest_id, instance, job_key), since)
        for record, job_id, address, dest_id, instance, job_key, since in run(server_db, ABANDONED).fetchall()
    ]


async def stop(ctx: Context, leftover: Leftover) -> None:
    """Stop a leftover payload on its client and forget it; ClientError when the client cannot be reached
    (tried again later). A client that no longer has it (or is another instance) holds nothing to stop."""
    try:
        answer = await ctx.clients.kill(ctx.config.client_at(leftover.address), leftover.dest)
    except ClientError as e:
        if e.code not in (404, GONE):
            raise
        answer = {"status": "gone"}
    forget(leftover, f"stopped: {answer.get('status', Status.KILLED)}")


def forget(leftover: Leftover, outcome: str) -> None:
    """Stop trying to stop a leftover payload (`outcome` says why)."""
    run(server_db, FORGET, (leftover.record,))
    log.info(
        "job %s: what %s held of it (payload %s, %s): %s",
        leftover.job_id,
        leftover.address,
        leftover.dest.dest_id,
        leftover.dest.job_key,
        outcome,
    )
