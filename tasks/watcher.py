"""Watcher (server): follows each client's event stream, so a finished job is fetched within milliseconds
instead of at the getter's next round. Clients of the original have no stream: the getter's rounds serve."""

import asyncio
import logging

from orch.config import ServiceConfig
from orch.context import Context
from orch.errors import ClientError
from orch.models import Job, server_db, transition
from orch.states import Status
from tasks.getter import POLLED, poll_soon

log = logging.getLogger(__name__)

WAIT = 25.0  # seconds a long-poll may wait for a change
MAX_DELAY = 60.0
BY_KEY = 'SELECT "id", "status" FROM "jobs" WHERE "folder" = ? AND "service" = ?'  # plain SQL: once per event


async def follow_events(ctx: Context, service: ServiceConfig) -> None:
    """Until cancelled: long-poll the service's client for payload status changes and poll each job that
    ended at once. After an error it tries again 1 s later, then 2 s... up to a minute (the getter's rounds,
    which also decide when a client is lost, go on meanwhile); a client without the stream ends the watch.

    While the stream answers, the getter leaves the service's jobs to it (see tasks.getter.poll_dispatched).
    When the stream starts, comes back, or answers from another client instance or a restarted sequence, the
    getter asks about every job of the service once: that covers whatever the stream did not report."""
    after = None
    instance = None
    failures = 0
    try:
        while True:
            try:
                answered_by, last, events = await ctx.clients.events(service.client, after, WAIT)
            except ClientError as e:
                ctx.streams.pop(service.name, None)
                if e.code in (404, 405):
                    log.info("watcher: the %s client has no event stream; the getter polls it", service.name)
                    return
                log.debug("watcher: %s: %s", service.name, e.message)
                failures += 1
                await asyncio.sleep(min(MAX_DELAY, 2.0 ** (failures - 1)))
                continue  # from the same point: the client answers what happened meanwhile, or restarts it
            failures = 0
            restarted = after is not None and last < after
            if service.name not in ctx.streams or answered_by != instance or restarted:
                ctx.streams[service.name] = 0.0  # due at the getter's next round
            instance = answered_by
            for event in events:
                _follow(ctx, service, event)
            after = last
    finally:
        ctx.streams.pop(service.name, None)


def _follow(ctx: Context, service: ServiceConfig, event: dict) -> None:
    """Act on one status change of a payload."""
    job = server_db.execute_sql(BY_KEY, (event.get("job_key"), service.name)).fetchone()
    if job is None:
        return
    job_id, job_status = job
    status = event.get("status")
    if status == Status.PREPARED:
        return  # what the answer to the send says
    if job_status == Status.PROCESSING:  # it started or ended before its send was recorded: see sender.send
        ctx.changed_early.add(job_id)
    elif status == Status.RUNNING:
        if job_status == Status.SUBMITTED:  # recorded without asking the client
            transition(Job, job_id, Status.SUBMITTED, Status.RUNNING, ctx.clock())
    elif job_status in POLLED:  # it ended: fetch its result or reason
        poll_soon(ctx, job_id)
