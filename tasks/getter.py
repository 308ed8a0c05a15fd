"""Getter (server): every round, asks the clients about the dispatched jobs that are due a poll, and stops what
clients lost earlier still run for jobs that went on without them."""

from orch import tracking
from orch.context import Context


async def poll_dispatched(ctx: Context, now: float) -> int:
    """Start a poll of each dispatched job that is due one, and the stop of each payload left on a client that
    was lost, if it may be called (see `orch.tracking`); return how many started."""
    return tracking.poll_due(ctx, now) + tracking.stop_leftovers(ctx, now)
