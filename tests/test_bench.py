"""Each benchmark of bench/, run small: it still drives real processes through the whole path, prints its
figures and measures its floor (the figures themselves are for `make bench`, not for asserts)."""

import pytest

from bench import bigfiles, harness, latency, queue_scale, running, sandbox, soak, throughput, uploads
from orch.models import server_db

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def scratch(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "SCRATCH", tmp_path)
    yield
    assert list(tmp_path.iterdir()) == []  # every benchmark removes what it made
    if not server_db.is_closed():
        server_db.close()


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


async def test_queue_scale(capsys):
    result = await queue_scale.measure(history=2000, queued=500, users=20, rounds=5, pace_seconds=0.3)
    assert result["fair"]
    assert 0 < result["round_median"] <= result["round_p95"]
    assert result["empty_rate"] > 0 and result["full_rate"] > 0
    assert "fairness" in capsys.readouterr().out


async def test_uploads(capsys):
    result = await uploads.measure(seconds=0.3)
    assert result["rate"] > 0 and result["floor"] > 0
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


async def test_sandbox(capsys):
    result = await sandbox.measure(jobs=3)
    assert result["sandboxed"] > 0 and result["floor"] > 0
    assert "cost per job" in capsys.readouterr().out
