"""Getter (server): every round, asks the clients about the dispatched jobs that are due a poll."""

from orch import tracking
from orch.context import Context


async def poll_dispatched(ctx: Context, now: float) -> int:
    """Start a poll of each dispatched job that is due one (see `orch.tracking`); return how many started."""
    return tracking.poll_due(ctx, now)
