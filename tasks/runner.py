"""Runner (client): every round, starts the prepared payloads and watches the running ones."""

from orch import payloads, runs
from orch.context import Context

BATCH = 100


async def start_prepared(ctx: Context, now: float) -> int:
    """Start the Prepared payloads (oldest first) and watch every Running one that nobody watches yet (those
    a previous client process started); return how many were started."""
    started = 0
    for payload in payloads.prepared(BATCH):
        started += await runs.start(ctx, payload, now)
    runs.watch_running(ctx)
    return started
