"""Several clients for one service, all real processes: one SIGKILLed mid-run and never restarted, one that
joins by itself mid-run. Jobs of three users; every run.sh writes its tag and the client it runs on to the
ledger."""

import sqlite3

import pytest

from bench.cluster import wait
from tests.faults.counts import COUNTS

TOKEN = "s3cret-token-for-tests"
JOBS = 30
GATE = "while [ ! -e ../../../go ]; do sleep 0.01; done\n"  # waits for `go` in its client's folder
SERVER = {
    "ORCH_TOKEN": TOKEN,
    "SERVICE_EXAMPLE_MAX_RUNS": "6",
    "SERVICE_EXAMPLE_RUNS_PER_USER": "6",
    "CLIENT_LOST_AFTER": "2",
    "CLIENT_LEASE": "3",
}
CLIENT = {"ORCH_TOKEN": TOKEN, "SLOTS": "2", "KILL_GRACE": "1", "RUNNER_INTERVAL": "0.05"}


def started_on(nodes) -> dict[str, int]:
    """How many runs started on each client (by its folder's name)."""
    counts: dict[str, int] = {}
    for places in nodes.where().values():
        for place in places:
            counts[place] = counts.get(place, 0) + 1
    return counts


def history(nodes, job_id: int) -> list[str]:
    with sqlite3.connect(nodes.server.folder / "server.sqlite") as db:
        return [reason for (reason,) in db.execute("SELECT reason FROM job_events WHERE job_id = ?", (job_id,))]


@pytest.mark.parametrize("retry_lost", [0, 1])
def test_a_client_killed_mid_run_for_good(cluster, retry_lost):
    """Three clients of two slots each; once each runs its two jobs, one is SIGKILLed and never comes back.
    Every job that was not on it completes on the two others, none twice; its two jobs end Unknown with the
    reason, or (RETRY_LOST=1) run again on the others and complete."""
    nodes = cluster(server_env={**SERVER, "SERVICE_EXAMPLE_RETRY_LOST": str(retry_lost)}, client_env=CLIENT, clients=3)
    for i in range(JOBS):
        nodes.submit(f"job{i}", GATE, user_id=i % 3)
    wait(lambda: sum(started_on(nodes).values()) == 6, what="six jobs to start")
    assert started_on(nodes) == {"client": 2, "client1": 2, "client2": 2}  # placement used all three
    dead = nodes.clients[1]
    dead.kill()
    for client in nodes.clients:
        (client.folder / "go").touch()  # the dead client's runs end too, unseen
    statuses = nodes.wait_finished()

    places = nodes.where()
    on_dead = sorted(tag for tag, where in places.items() if where[0] == "client1")
    assert len(on_dead) == 2
    assert all(statuses[tag] == "Completed" for tag in statuses if tag not in on_dead)
    assert all(len(places[tag]) == 1 for tag in places if tag not in on_dead)  # none ran twice
    assert not any("client1" in where[1:] for where in places.values())  # nothing more went to the dead client
    for tag in on_dead:
        job_id = nodes.jobs[tag]
        if retry_lost:
            assert statuses[tag] == "Completed" and len(places[tag]) == 2  # at least once: here twice
            assert any("queued again (attempt 2 of 2)" in reason for reason in history(nodes, job_id))
        else:
            assert statuses[tag] == "Unknown" and len(places[tag]) == 1
            assert "lost contact with the example client" in nodes.status(job_id)["message"]
    COUNTS.append(
        f"client killed for good (RETRY_LOST={retry_lost}): {JOBS} submitted on 3 clients, "
        f"{sum(s == 'Completed' for s in statuses.values())} completed, "
        f"{sum(s == 'Unknown' for s in statuses.values())} Unknown (on the dead client), "
        f"{sum(len(places[tag]) > 1 for tag in places)} ran again elsewhere"
    )


def test_a_client_that_joins_by_itself_mid_run_receives_work(cluster):
    """Three listed clients are busy with two jobs each; a fourth, started with SERVER_URL, joins and takes
    two more at once; every job completes once."""
    nodes = cluster(server_env={**SERVER, "SERVICE_EXAMPLE_MAX_RUNS": "8"}, client_env=CLIENT, clients=3)
    for i in range(20):
        nodes.submit(f"job{i}", GATE, user_id=i % 3)
    wait(lambda: sum(started_on(nodes).values()) == 6, what="six jobs to start")
    joiner = nodes.join("example")
    wait(lambda: started_on(nodes).get(joiner.folder.name) == 2, what="the joined client to take two jobs")
    for client in nodes.clients:
        (client.folder / "go").touch()
    statuses = nodes.wait_finished()
    assert set(statuses.values()) == {"Completed"}
    assert all(count == 1 for count in nodes.ran().values())
    COUNTS.append(
        f"client joined mid-run: 20 submitted, 20 completed, {started_on(nodes)[joiner.folder.name]} ran on it"
    )
