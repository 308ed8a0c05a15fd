"""Each benchmark of bench/, run small: it still drives real processes through the whole path, prints its
figures and measures its floor (the figures themselves are for `make bench`, not for asserts)."""

import pytest

from bench import (
    bigfiles,
    clients,
    harness,
    latency,
    queue_scale,
    running,
    sandbox,
    slurm_jobs,
    soak,
    throughput,
    uploads,
)
from orch.database import close
from orch.models import server_db

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "SCRATCH", tmp_path)
    yield
    assert list(tmp_path.iterdir()) == []  # every benchmark removes what it made
    close(server_db)


async def test_latency(capsys):
    result = await latency.measure(jobs=3)
    assert 0 < result["floor"] and 0 < result["median"] <= result["p95"]
    assert "median / floor" in capsys.readouterr().out


async def test_throughput(capsys):
    result = await throughput.measure(jobs=10, at_once=2)
    assert result["elapsed"] > 0 and result["floor"] > 0
    assert "elapsed / floor" in capsys.readouterr().out


async def test_big_files(capsys):
    result = await bigfiles.measure(size=8 * 1024 * 1024)
    assert min(result["upload"], result["download"], result["copy"]) > 0
    assert {"server", "client"} <= result.keys()
    assert "upload / copy" in capsys.readouterr().out


@pytest.fixture
def postgres(postgres_server):
    """The suite's PostgreSQL cluster, for the benchmarks that run on both databases; they drop what they made."""
    before = postgres_server.databases()
    yield postgres_server
    assert postgres_server.databases() == before


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """The `postgres` argument of a benchmark that runs on both: None (SQLite), then the suite's cluster."""
    return request.getfixturevalue("postgres") if request.param == "postgresql" else None


async def test_queue_scale(database, capsys):
    result = await queue_scale.measure(
        history=2000, queued=500, users=20, rounds=5, pace_seconds=0.3, turns=1, postgres=database
    )
    assert result["fair"]
    assert 0 < result["round_median"] <= result["round_p95"]
    assert 0 < result["lock_median"] < result["round_median"]  # a part of the round (a no-op on SQLite)
    assert result["empty_rate"] > 0 and result["full_rate"] > 0
    assert all(seconds > 0 for seconds in result["lookups"].values())
    out = capsys.readouterr().out
    assert "fairness" in out and "metrics scrape" in out and ("PostgreSQL" if database else "SQLite") in out


async def test_uploads(database, capsys):
    result = await uploads.measure(seconds=0.3, floor_seconds=0.3, turns=1, postgres=database)
    assert result["rate"] > 0 and result["floor"] > 0
    if database is None:
        assert result["two_servers"] is None
    else:
        assert result["two_servers"] > 0  # two server processes on the database, the connections split between them
    assert "uploads / floor" in capsys.readouterr().out


def test_soak(capsys):
    result = soak.measure(minutes=0.1)
    assert result["submitted"] > 0
    assert (result["finished"], result["lost"], result["twice"], result["leftovers"]) == (result["submitted"], 0, 0, 0)
    assert "run twice" in capsys.readouterr().out


async def test_running(capsys):
    result = await running.measure(jobs=5, seconds=0.3)
    assert result["server"] >= 0 and result["client"] >= 0
    assert "of a core" in capsys.readouterr().out


async def test_clients(capsys):
    result = await clients.measure(jobs=5, counts=(1, 2))
    assert result[1] > 0 and result[2] > 0
    assert "jobs/s" in capsys.readouterr().out


async def test_sandbox(capsys):
    result = await sandbox.measure(jobs=3)
    assert result["sandboxed"] > 0 and result["floor"] > 0
    assert "cost per job" in capsys.readouterr().out


async def test_slurm(slurm, capsys):
    result = await slurm_jobs.measure(jobs=5, slurm=slurm)
    assert result["through_client"] > 0 and result["floor"] > 0
    assert "client / floor" in capsys.readouterr().out
