"""Fixtures of a real one-node Slurm cluster on this machine (see bench/slurm.py): `slurm_cluster` (session) starts
it the first time a test asks for it and stops it at the end of the session; `slurm` is the same cluster for one
test, with any job the test left cancelled after it. Where Slurm is not installed (tests/system/install.sh installs
it) or does not start, the tests that use it are skipped with the reason."""

import os

import pytest

from bench.slurm import TIMINGS, SlurmCluster, Unavailable


@pytest.fixture(scope="session")
def slurm_cluster():
    """The session's Slurm cluster, started at the first test that asks for it; skips where Slurm is missing."""
    cluster = SlurmCluster()
    umask = os.umask(0o077)  # the umask a client sets in this process: the cluster starts whichever test came first
    try:
        cluster.start()
    except Unavailable as e:
        cluster.stop()
        pytest.skip(f"Slurm is not available: {e}")
    except BaseException:
        cluster.stop()
        raise
    finally:
        os.umask(umask)
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The session's Slurm cluster for one test: any job the test left pending or running is cancelled after it."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
    slurm_cluster.wait_no_jobs(active_only=True)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("slurm")
        for line in TIMINGS:
            terminalreporter.write_line(line)
