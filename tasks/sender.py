"""Sender (server): every round, claims the queued jobs that quotas allow and starts sending each."""

from orch import dispatch
from orch.context import Context


async def send_queued(ctx: Context, now: float) -> int:
    """Claim what each service may start now and start sending it; return how many."""
    claimed = await dispatch.claim(ctx, now)
    for job_id in claimed:
        dispatch.start_send(ctx, job_id, now)
    return len(claimed)
