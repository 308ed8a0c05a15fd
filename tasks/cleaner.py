"""Cleaners (both modes): remove the files of jobs and payloads finished more than MAX_AGE seconds ago, and
what recovery quarantined as long ago.

Rows stay, in status Cleaned, so a late download still learns what became of its job.
"""

import logging

from tornado.ioloop import IOLoop

from orch import jobs, ownership, payloads, processes, storage
from orch.context import Context
from orch.models import Job, Payload, transition
from orch.states import FINISHED, Status

log = logging.getLogger(__name__)

BATCH = 500


async def clean_jobs(ctx: Context, now: float) -> int:
    """Server: Cleaned, with their folders removed, for jobs finished at or before `now - MAX_AGE`; returns how
    many, with the quarantined entries removed."""
    expired = (Job.select(Job.id, Job.status, Job.folder)
               .where(Job.status.in_([s.value for s in FINISHED]), Job.finished_at <= now - ctx.config.max_age)
               .limit(BATCH))
    cleaned = await _clean_quarantine(ctx, now)
    for job in list(expired):
        try:
            if transition(Job, job.id, Status(job.status), Status.CLEANED, now):
                await IOLoop.current().run_in_executor(None, storage.remove, jobs.folder(ctx, job))
                jobs.result_file(ctx, job).unlink(missing_ok=True)
                cleaned += 1
        except Exception:
            log.exception("cleaner: job %s failed", job.id)
    return cleaned


async def clean_payloads(ctx: Context, now: float) -> int:
    """Client: Cleaned, with their folder and control files removed, for payloads finished at or before
    `now - MAX_AGE`. Also stops what finished runs left behind outside their process group."""
    running = {payload_id for (payload_id,) in
               Payload.select(Payload.id).where(Payload.status == Status.RUNNING.value).tuples()}
    processes.sweep(ctx.instance, running)
    expired = (Payload.select(Payload.id, Payload.status)
               .where(Payload.status.in_([s.value for s in FINISHED]), Payload.finished_at <= now - ctx.config.max_age)
               .limit(BATCH))
    cleaned = await _clean_quarantine(ctx, now)
    for payload in list(expired):
        try:
            if payloads.move(ctx, payload.id, Status(payload.status), Status.CLEANED, now):
                await IOLoop.current().run_in_executor(None, payloads.remove_files, ctx, payload.id)
                cleaned += 1
        except Exception:
            log.exception("cleaner: payload %s failed", payload.id)
    return cleaned


async def _clean_quarantine(ctx: Context, now: float) -> int:
    return await IOLoop.current().run_in_executor(None, ownership.clean_quarantine, ctx.data_path,
                                                  now - ctx.config.max_age)
