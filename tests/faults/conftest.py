"""Fixtures of the fault-injection suite, and the summary of its counts at the end of the session."""

import pytest

from bench.cluster import Cluster
from tests.faults.counts import COUNTS


@pytest.fixture
def cluster(tmp_path):
    """Start a cluster with `cluster(server_env={...}, client_env={...}, clients=1)`; it is stopped after the test."""
    made: list[Cluster] = []

    def make(
        server_env: dict[str, str] | None = None, client_env: dict[str, str] | None = None, clients: int = 1
    ) -> Cluster:
        made.append(Cluster(tmp_path, server_env or {}, client_env or {}, clients))
        made[-1].start()
        return made[-1]

    yield make
    for each in made:
        each.stop()


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.section("fault injection")
        for line in COUNTS:
            terminalreporter.write_line(line)
