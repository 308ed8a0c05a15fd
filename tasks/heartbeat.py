"""Heartbeat (server): every round, says that this process is alive and puts back what a server process that
is gone left half-done (server processes may share one PostgreSQL database)."""

from orch import jobs, peers
from orch.context import Context


async def heartbeat(ctx: Context, now: float) -> int:
    """Renew this process's word that it is alive; release the jobs of processes that are gone; return how many."""
    peers.heartbeat(ctx, now)
    return jobs.release_orphans(ctx, now)
