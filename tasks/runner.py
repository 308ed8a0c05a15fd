"""Runner (client): every round, starts the prepared payloads that its slots allow and watches the running ones."""

from orch import payloads, runs
from orch.context import Context
from orch.states import Status

BATCH = 100


async def start_prepared(ctx: Context, now: float) -> int:
    """Start Prepared payloads (oldest first) while fewer than SLOTS run, whoever sent them, and watch every
    Running one that nobody follows yet (those a previous client process started); return how many were
    started. (A run that ends wakes this task, so the next one starts at once.)"""
    free = ctx.config.slots - payloads.count(Status.RUNNING)
    started = 0
    for payload in payloads.prepared(max(0, min(BATCH, free))):
        started += await runs.start(ctx, payload, now)
    runs.follow(ctx)
    return started
