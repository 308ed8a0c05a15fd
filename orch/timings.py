"""How long jobs wait and run (server): histograms observed as jobs move, exposed by `orch.metrics`.

Time in queue: from the upload to the send that a client took. Run time: from that send to the job's end, for a
job that ends on its client (not one cancelled or refused after an earlier attempt ran).
"""

import math

from prometheus_client import CollectorRegistry, Histogram

from orch.context import Context
from orch.models import run, server_db
from orch.states import FINISHED, Status

BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600, math.inf)
CREATED = 'SELECT "service", "created_at" FROM "jobs" WHERE "id" = ?'
SENT = (
    'SELECT "jobs"."service", "job_events"."at" FROM "jobs" JOIN "job_events" ON "job_events"."job_id" = "jobs"."id" '
    'WHERE "jobs"."id" = ? AND "job_events"."src" = ? AND "job_events"."dst" = ? ORDER BY "job_events"."id" DESC '
    "LIMIT 1"
)
ON_CLIENT = frozenset({Status.SUBMITTED, Status.RUNNING, Status.LOCKED})  # where a job ends after it ran


class Timings:
    """This process's metrics registry, with the two histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue = Histogram(
            "orchestrator_queue_seconds",
            "Seconds from a job's upload to its send to a client",
            ["service"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.run = Histogram(
            "orchestrator_run_seconds",
            "Seconds from a job's send to a client to its end",
            ["service"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.collecting = False  # whether the collector of the database's counts is registered


def registry(ctx: Context) -> Timings:
    return ctx.state(Timings)


def observe(ctx: Context, job_id: int, src: Status, dst: Status, now: float) -> None:
    """Record the time a job waited (a client just took it) or ran (it just ended on its client, sent there by
    the newest Processing -> Submitted: a terminate that failed also goes back to Submitted)."""
    if (src, dst) == (Status.PROCESSING, Status.SUBMITTED):
        row = run(server_db, CREATED, (job_id,)).fetchone()
        if row is not None:
            registry(ctx).queue.labels(row[0]).observe(max(0.0, now - row[1]))
    elif dst in FINISHED and src in ON_CLIENT:
        row = run(server_db, SENT, (job_id, Status.PROCESSING, Status.SUBMITTED)).fetchone()
        if row is not None:
            registry(ctx).run.labels(row[0]).observe(max(0.0, now - row[1]))
