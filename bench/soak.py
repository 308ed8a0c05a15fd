"""Soak: jobs from several users for minutes on end while the server and the client are SIGKILLed and
restarted at random; then the counts of the fault suite (submitted, finished, lost, run twice) and the
processes left over. `python -m bench.soak [minutes]` (10 by default); not part of `make bench`."""

import random
import subprocess
import sys
import time
from pathlib import Path

from bench.cluster import Cluster
from bench.harness import scratch, show

USERS = 5
SETTINGS = {"SERVICE_EXAMPLE_RUNS_PER_USER": "2", "SERVICE_EXAMPLE_MAX_RUNS": "6"}


def leftovers(cluster: Cluster) -> int:
    """Processes still running that belong to the cluster (orchestrator.py or runs of its jobs)."""
    found = subprocess.run(["pgrep", "-f", str(cluster.root)], capture_output=True, text=True)
    return len(found.stdout.split())


def measure(minutes: float = 10.0, seed: int = 1) -> dict:
    rng = random.Random(seed)
    with scratch() as root:
        cluster = Cluster(Path(root), SETTINGS, {"KILL_GRACE": "1"})
        cluster.start()
        kills = {"server": 0, "client": 0}
        start = time.monotonic()
        next_kill = start + rng.uniform(0.5, 3.0)
        try:
            while time.monotonic() - start < minutes * 60:
                tag = f"job{len(cluster.jobs)}"
                cluster.submit(tag, f"sleep {rng.choice(['0', '0.1', '0.5', '1'])}\n", user_id=rng.randrange(USERS))
                if time.monotonic() >= next_kill:
                    node = rng.choice(["server", "client"])
                    getattr(cluster, node).restart()
                    kills[node] += 1
                    next_kill = time.monotonic() + rng.uniform(0.5, 3.0)
                time.sleep(rng.uniform(0.05, 0.25))  # about 7 jobs a second: the queue stays short
            statuses = cluster.wait_finished(timeout=600)
        finally:
            cluster.stop()
        left = leftovers(cluster)
    ran = cluster.ran()
    result = {
        "submitted": len(cluster.jobs),
        "finished": sum(status == "Completed" for status in statuses.values()),
        "lost": sum(status != "Completed" for status in statuses.values()),
        "twice": sum(count > 1 for count in ran.values()),
        "leftovers": left,
        **kills,
    }
    show(
        f"soak: {minutes:g} minutes, {USERS} users, server and client killed at random",
        [
            (
                "jobs",
                f"{result['submitted']} submitted, {result['finished']} finished, {result['lost']} lost, "
                f"{result['twice']} run twice",
            ),
            ("kills", f"server {kills['server']}, client {kills['client']}"),
            ("processes left over", str(left)),
        ],
    )
    return result


if __name__ == "__main__":
    measure(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
