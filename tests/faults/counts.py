"""The counts of the fault suite (submitted, finished, lost, run twice), printed at the end of the session."""

from bench.cluster import Cluster

COUNTS: list[str] = []


def report(name: str, cluster: Cluster, statuses: dict[str, str], **extra: int) -> tuple[int, int, int]:
    """Record a test's counts for the session summary; return (finished, lost, run twice)."""
    ran = cluster.ran()
    finished = sum(status == "Completed" for status in statuses.values())
    lost = sum(status != "Completed" for status in statuses.values())
    twice = sum(count > 1 for count in ran.values())
    details = "".join(f", {key.replace('_', ' ')}: {value}" for key, value in extra.items())
    COUNTS.append(
        f"{name}: {len(cluster.jobs)} submitted, {finished} finished, {lost} lost, {twice} run twice{details}"
    )
    return finished, lost, twice
