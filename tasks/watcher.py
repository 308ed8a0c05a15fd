"""Watcher (server): every round, follows the event stream of each client that is not followed yet, so that a
finished job is fetched within milliseconds instead of at the getter's next round."""

from orch import tracking
from orch.context import Context


async def follow_clients(ctx: Context, now: float) -> int:
    """Follow the clients this process is responsible for (and stop following those that left); return how
    many."""
    return tracking.follow_clients(ctx, now)
