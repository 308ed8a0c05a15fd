"""Cleaners (both modes): every round, remove the files of jobs and payloads finished more than MAX_AGE seconds
ago, and what recovery quarantined as long ago.

Rows stay, in status Cleaned, so a late download still learns what became of its job.
"""

import logging

from tornado.ioloop import IOLoop

from orch import jobs, ownership, payloads
from orch.context import Context

log = logging.getLogger(__name__)

BATCH = 500


async def clean_jobs(ctx: Context, now: float) -> int:
    """Server: Cleaned, with their files removed, for jobs finished at or before `now - MAX_AGE`; returns how
    many, with the quarantined entries removed."""
    cleaned = await _clean_quarantine(ctx, now)
    for job in jobs.expired(now - ctx.config.max_age, BATCH):
        try:
            cleaned += await jobs.clean(ctx, job, now)
        except Exception:
            log.exception("cleaner: job %s failed", job.id)
    return cleaned


async def clean_payloads(ctx: Context, now: float) -> int:
    """Client: Cleaned, with their files removed, for payloads finished at or before `now - MAX_AGE`; returns
    how many, with the quarantined entries removed. Also stops what finished runs left behind outside their
    process group."""
    payloads.stop_leftovers(ctx)
    cleaned = await _clean_quarantine(ctx, now)
    for payload in payloads.expired(now - ctx.config.max_age, BATCH):
        try:
            cleaned += await payloads.clean(ctx, payload, now)
        except Exception:
            log.exception("cleaner: payload %s failed", payload.id)
    return cleaned


async def _clean_quarantine(ctx: Context, now: float) -> int:
    return await IOLoop.current().run_in_executor(
        None, ownership.clean_quarantine, ctx.data_path, now - ctx.config.max_age
    )
