"""Getter (server): asks the clients how their dispatched jobs are doing and fetches the results."""

import logging

from orch import jobs
from orch.context import Context
from orch.errors import ClientError
from orch.models import Job, fetch, server_db, transition
from orch.states import FINISHED, Status
from orch.wire import GONE

log = logging.getLogger(__name__)

POLLED = (Status.SUBMITTED, Status.RUNNING)
STREAMED_SWEEP = 30.0  # seconds between two polls of the jobs of a client followed live
DISPATCHED = 'SELECT "id", "service" FROM "jobs" WHERE "status" IN (?, ?)'  # plain SQL: it runs every round
# What the client's statuses mean for the server's job; Prepared and Completed-as-JSON change nothing.
MIRRORED = {
    Status.RUNNING: Status.RUNNING,
    Status.FAILED: Status.FAILED,
    Status.INVALID: Status.INVALID,
    Status.KILLED: Status.KILLED,
    Status.CLEANED: Status.UNKNOWN,
    Status.UNKNOWN: Status.UNKNOWN,
}


async def poll_dispatched(ctx: Context, now: float) -> int:
    """Start a poll of every Submitted or Running job not being polled already and whose client is not in
    backoff; return how many started.

    Jobs of a client whose event stream is followed live are left to it (it reports every change), except
    every STREAMED_SWEEP seconds and once when the stream (re)starts: a safety net that costs little, where
    asking about each running job every round would cost a request per job and per round."""
    swept = {name for name, last in ctx.streams.items() if now - last >= STREAMED_SWEEP}
    started = 0
    for job_id, service in server_db.execute_sql(DISPATCHED, [s.value for s in POLLED]).fetchall():
        if service in ctx.streams and service not in swept:
            continue
        if ("poll", job_id) not in ctx.inflight and ctx.backoff.ready(service, now):
            ctx.inflight.start(("poll", job_id), lambda job_id=job_id: poll(ctx, job_id, now))
            started += 1
    for name in swept:
        ctx.streams[name] = now
    return started


def poll_soon(ctx: Context, job_id: int) -> None:
    """Poll a job now (its client said it changed); once more after the poll in flight, if there is one."""
    ctx.repoll.add(job_id)
    ctx.inflight.start(("poll", job_id), lambda: poll(ctx, job_id, ctx.clock()))


async def poll(ctx: Context, job_id: int, now: float) -> None:
    """Poll a job, again as long as its client reports changes meanwhile (see `poll_soon`)."""
    while True:
        ctx.repoll.discard(job_id)
        await poll_once(ctx, job_id, now)
        if job_id not in ctx.repoll:
            return
        now = ctx.clock()


async def poll_once(ctx: Context, job_id: int, now: float) -> None:
    """Ask the job's client about it once (in the round at `now`) and record what it says.

    A client that cannot be reached leaves the job as it is (the next round asks again, after a backoff),
    until it has failed for CLIENT_LOST_AFTER: then the job ends Unknown. A client that no longer has the
    payload, or is not the instance that took it, ends the job Unknown at once: it never gets another job's
    results."""
    job = fetch(Job, job_id)
    status = Status(job.status)
    if status not in POLLED:
        return  # it ended meanwhile
    client = jobs.client_of(ctx, job)
    if client is None:
        _finish(ctx, job, status, Status.UNKNOWN, f"service {job.service!r} is no longer configured")
        return
    try:
        answer = await ctx.clients.retrieve(client, jobs.destination(job), jobs.result_file(ctx, job))
    except ClientError as e:
        if e.code == 404:
            _finish(ctx, job, status, Status.UNKNOWN, f"the client no longer knows this job (payload {job.dest_id})")
        elif e.code == GONE:
            _finish(ctx, job, status, Status.UNKNOWN, e.message)
        else:
            ctx.backoff.failed(job.service, now)
            down = ctx.backoff.down_for(job.service, now)
            if down >= ctx.config.client_lost_after:
                _finish(ctx, job, status, Status.UNKNOWN,
                        f"lost contact with the {job.service} client for {down:.0f} s: {e.message}")
            else:
                log.warning("getter: job %s: %s", job_id, e.message)
        return
    except Exception:
        log.exception("getter: job %s failed", job_id)
        return
    ctx.backoff.succeeded(job.service)
    if answer is None:
        _finish(ctx, job, status, Status.COMPLETED, "")
        return
    try:
        reported = Status(answer.get("status"))
    except ValueError:
        log.warning("getter: job %s: the client reports an unknown status %r", job_id, answer.get("status"))
        return
    mirrored = MIRRORED.get(reported)
    if mirrored is None or mirrored == status:
        return
    message = answer.get("message") or _default_message(reported)
    _finish(ctx, job, status, mirrored, message if mirrored in FINISHED else None)


def _finish(ctx: Context, job: Job, src: Status, dst: Status, message: str | None) -> None:
    if transition(Job, job.id, src, dst, ctx.clock(), message) and dst in FINISHED:
        ctx.wake("sender")  # a slot is free


def _default_message(reported: Status) -> str:
    return {
        Status.FAILED: "run.sh failed on the client",
        Status.INVALID: "the client could not run the job",
        Status.KILLED: "killed on the client",
    }.get(reported, f"the client reports the job as {reported}")
