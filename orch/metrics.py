"""`GET /metrics` of either mode, in the Prometheus text format (`prometheus_client`).

Server: jobs by service and status, queue depth per service and per user, slots in use against each quota,
time in queue and run time (histograms, `orch.timings`), each client up or down and the jobs on it. Client:
payloads by status. Counts are read from the database at each scrape; only the histograms are kept.
"""

from collections.abc import Callable, Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from orch import VERSION, overview, placement, timings
from orch.context import Context
from orch.models import client_db, run, server_db

JOBS_BY_STATUS = 'SELECT "service", "status", COUNT(*) FROM "jobs" GROUP BY "service", "status"'
PAYLOADS_BY_STATUS = 'SELECT "status", COUNT(*) FROM "payloads" GROUP BY "status"'
# name: (help, the key of the value in the rows of `orch.overview`)
PER_SERVICE = {
    "orchestrator_queue_depth": ("Queued jobs of the service", "queued"),
    "orchestrator_active_jobs": ("Jobs of the service holding a slot (left the queue, not finished)", "active"),
    "orchestrator_max_runs": ("The service's quota of jobs at once (SERVICE_<NAME>_MAX_RUNS)", "max_runs"),
    "orchestrator_runs_per_user": ("The service's quota per user (SERVICE_<NAME>_RUNS_PER_USER)", "runs_per_user"),
}
PER_USER = {
    "orchestrator_user_queue_depth": ("Queued jobs of a user in the service", "queued"),
    "orchestrator_user_active_jobs": ("Jobs of a user in the service holding a slot", "active"),
}
PER_CLIENT = {
    "orchestrator_client_up": ("1 while calls to the client succeed, 0 while they fail", "up"),
    "orchestrator_client_jobs": ("Jobs sent to the client and not finished", "jobs"),
    "orchestrator_client_running": ("Jobs running on the client", "running"),
}


def exposition(ctx: Context) -> bytes:
    """The metrics of this process, as text."""
    state = timings.registry(ctx)
    if not state.collecting:
        state.registry.register(ServerCounts(ctx) if ctx.config.mode == "server" else ClientCounts(ctx))
        state.collecting = True
    return generate_latest(state.registry)


def families(
    spec: dict[str, tuple[str, str]], labels: list[str], rows: list[dict], label_values: Callable[[dict], list[str]]
) -> Iterator[GaugeMetricFamily]:
    """One gauge per entry of `spec`, with a sample per row (rows whose value is None are left out)."""
    for name, (text, key) in spec.items():
        family = GaugeMetricFamily(name, text, labels=labels)
        for row in rows:
            if row[key] is not None:
                family.add_metric(label_values(row), float(row[key]))
        yield family


def info(ctx: Context) -> GaugeMetricFamily:
    family = GaugeMetricFamily("orchestrator_info", "This process: its mode and version", labels=["mode", "version"])
    family.add_metric([ctx.config.mode, VERSION], 1)
    return family


class ServerCounts(Collector):
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield info(self.ctx)
        jobs = GaugeMetricFamily("orchestrator_jobs", "Jobs by service and status", labels=["service", "status"])
        for service, status, count in run(server_db, JOBS_BY_STATUS).fetchall():
            jobs.add_metric([service, status], count)
        yield jobs
        services, users = overview.queues(self.ctx)
        yield from families(PER_SERVICE, ["service"], services, lambda row: [row["name"]])
        yield from families(PER_USER, ["service", "user_id"], users, lambda row: [row["service"], str(row["user_id"])])
        clients = placement.clients(self.ctx, self.ctx.clock())
        yield from families(PER_CLIENT, ["client"], clients, lambda row: [row["address"]])


class ClientCounts(Collector):
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield info(self.ctx)
        payloads = GaugeMetricFamily("orchestrator_payloads", "Payloads on this client by status", labels=["status"])
        for status, count in run(client_db, PAYLOADS_BY_STATUS).fetchall():
            payloads.add_metric([status], count)
        yield payloads
