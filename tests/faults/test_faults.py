"""Fault injection: orchestrator.py processes killed with SIGKILL at any moment, stopped, replaced, lost.

Whatever happens, every job finishes exactly once: none lost, none run twice (counted from the ledger that
every run.sh appends to, outside its folder), and nothing half-written is left.
"""

import random
import shutil
import socket
import sqlite3
import time
from pathlib import Path

from bench.cluster import FINISHED, request, wait
from tests.conftest import multipart
from tests.faults.counts import COUNTS, report

JOBS = 30


def test_server_killed_at_random_moments(cluster):
    """The server is SIGKILLed and restarted again and again while jobs are dispatched and results fetched."""
    nodes = cluster(server_env={"SERVICE_EXAMPLE_MAX_RUNS": "3"})
    tags = [f"job{i}" for i in range(JOBS)]
    for i, tag in enumerate(tags):
        nodes.submit(tag, f"sleep 0.{i % 5}\n")
    rng = random.Random(1)
    kills = 0
    while kills < 15 and not all(s in FINISHED for s in nodes.statuses().values()):
        time.sleep(rng.uniform(0.02, 0.3))
        nodes.server.restart()
        kills += 1
    statuses = nodes.wait_finished()
    finished, lost, twice = report(
        "server killed at random moments",
        nodes,
        statuses,
        server_kills=kills,
        sends_cut_and_repeated=_events(nodes, "the server stopped while sending it"),
    )
    assert (finished, lost, twice) == (JOBS, 0, 0)
    assert set(nodes.ran()) == set(tags)


def test_client_killed_at_random_moments(cluster):
    """The client is SIGKILLed and restarted while its jobs run: running scripts are adopted, finished ones
    report their real status, prepared ones start, repeated sends are recognised."""
    nodes = cluster(server_env={"SERVICE_EXAMPLE_MAX_RUNS": "6"})
    tags = [f"job{i}" for i in range(JOBS)]
    for i, tag in enumerate(tags):
        nodes.submit(tag, f"sleep 0.{i % 6}\n")
    rng = random.Random(2)
    kills = 0
    while kills < 15 and not all(s in FINISHED for s in nodes.statuses().values()):
        time.sleep(rng.uniform(0.05, 0.5))
        nodes.client.restart()
        kills += 1
    statuses = nodes.wait_finished()
    finished, lost, twice = report("client killed at random moments", nodes, statuses, client_kills=kills)
    assert (finished, lost, twice) == (JOBS, 0, 0)
    assert set(nodes.ran()) == set(tags)


def test_both_killed_in_turn(cluster):
    nodes = cluster(server_env={"SERVICE_EXAMPLE_MAX_RUNS": "4"})
    for i in range(JOBS):
        nodes.submit(f"job{i}", "sleep 0.1\n", user_id=i % 3)
    rng = random.Random(3)
    kills = 0
    while kills < 10 and not all(s in FINISHED for s in nodes.statuses().values()):
        time.sleep(rng.uniform(0.05, 0.4))
        (nodes.server if kills % 2 else nodes.client).restart()
        kills += 1
    statuses = nodes.wait_finished()
    assert report("server and client killed in turn", nodes, statuses, kills=kills) == (JOBS, 0, 0)


def test_client_stopped_for_a_while(cluster):
    """A client that stops answering (SIGSTOP) holds its jobs up, then they go on: none fails."""
    nodes = cluster()
    nodes.client.pause()
    for i in range(10):
        nodes.submit(f"job{i}")
    time.sleep(2)  # the client stays stopped for a while; nothing is expected to happen meanwhile
    assert all(status in ("Queued", "Processing") for status in nodes.statuses().values())
    nodes.client.resume()
    statuses = nodes.wait_finished()
    assert report("client stopped for 2 s", nodes, statuses) == (10, 0, 0)


def test_server_killed_after_the_client_accepted_a_job_and_before_it_recorded_that(cluster):
    """The client takes a job and answers, but the server dies before it reads the answer (it is stopped
    while the client works, then killed). The restarted server sends the job again: the client answers with
    the payload it has, and the job runs once."""
    nodes = cluster()
    nodes.client.pause()
    job_id = nodes.submit("job0")
    wait(lambda: nodes.status(job_id)["status"] == "Processing", what="the send to start")
    wait(lambda: _request_waiting(nodes.client.port), what="the whole request to reach the stopped client")
    nodes.server.pause()
    nodes.client.resume()
    client_db = nodes.client.folder / "client.sqlite"
    wait(lambda: _payloads(client_db) == 1, what="the client to take the job")
    nodes.server.kill()
    nodes.server.start()
    statuses = nodes.wait_finished()
    assert report(
        "server killed between the client's accept and its own record",
        nodes,
        statuses,
        sends_repeated=_events(nodes, "the server stopped while sending it"),
    ) == (1, 0, 0)
    assert _payloads(client_db) == 1


def test_server_killed_while_it_downloads_a_result(cluster):
    nodes = cluster()
    job_id = nodes.submit("job0", "head -c 30000000 /dev/urandom > big.bin\n")
    scratch = nodes.server.folder / "data" / "server" / ".tmp"
    wait(lambda: any(scratch.glob("*.part")) if scratch.exists() else False, what="the download to start")
    nodes.server.kill()
    nodes.server.start()
    statuses = nodes.wait_finished()
    assert report("server killed while downloading a result", nodes, statuses) == (1, 0, 0)
    code, kind, body = request(f"{nodes.server.url}/download/{job_id}")
    assert (code, kind) == (200, "application/zip") and len(body) > 30_000_000
    assert not list(scratch.glob("*.part"))


def test_server_killed_during_an_upload_leaves_its_folder_in_quarantine_only(cluster):
    nodes = cluster()
    with socket.create_connection(("127.0.0.1", nodes.server.port)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; '
            b'filename="run.sh"\r\n\r\n' + b"x" * 5000
        )
        data = nodes.server.folder / "data" / "server"
        wait(
            lambda: any((path / "run.sh").is_file() for path in data.iterdir()) if data.exists() else False,
            what="the upload to be received",
        )  # its file, not only its folder (made as the request comes in, before the body is read)
        nodes.server.kill()
    nodes.server.start()
    assert not [path.name for path in data.iterdir() if not path.name.startswith(".")]
    quarantined = [path.name for path in (data / ".quarantine").iterdir()]
    assert len(quarantined) == 1 and (data / ".quarantine" / quarantined[0] / "run.sh").is_file()
    assert _jobs(nodes.server.folder / "server.sqlite") == 0
    job_id = nodes.submit("job0")
    statuses = nodes.wait_finished()
    assert report("server killed during an upload", nodes, statuses) == (1, 0, 0)
    assert job_id == 1


def test_a_replaced_client_never_hands_another_jobs_results(cluster):
    """The client loses its database and files while a job runs, and a new job takes the same payload id.
    The server's job ends Unknown with the reason; the new job's results are never delivered as its own."""
    nodes = cluster()
    gate = nodes.root / "gate"
    job_id = nodes.submit("job0", f"while [ ! -e {gate} ]; do sleep 0.01; done\n")
    wait(lambda: nodes.status(job_id)["status"] == "Running", what="the job to run")
    nodes.client.kill()
    gate.touch()  # the orphaned run ends; its client is gone for good
    for leftover in ("client.sqlite", "client.sqlite-wal", "client.sqlite-shm"):
        (nodes.client.folder / leftover).unlink(missing_ok=True)
    shutil.rmtree(nodes.client.folder / "data")
    nodes.client.start()
    body, content_type = multipart(files={"run.sh": nodes.script("intruder")})
    assert request(f"{nodes.client.url}/submit", body, {"Content-Type": content_type})[0] == 200
    answer = wait(lambda: (a := nodes.status(job_id)) and a["status"] in FINISHED and a, what="the job to end")
    assert answer["status"] == "Unknown"
    assert "another client instance" in answer["message"] or "no longer knows" in answer["message"]
    COUNTS.append(
        f"replaced client: 1 submitted, 0 finished, 1 ended Unknown ({answer['message'][:60]}...), "
        "0 with another job's results"
    )


def test_a_client_lost_for_good_frees_its_jobs_slots(cluster):
    nodes = cluster(server_env={"CLIENT_LOST_AFTER": "2", "SERVICE_EXAMPLE_MAX_RUNS": "1"})
    gate = nodes.root / "gate"
    running = nodes.submit("job0", f"while [ ! -e {gate} ]; do sleep 0.01; done\n")
    waiting = nodes.submit("job1")
    wait(lambda: nodes.status(running)["status"] == "Running", what="the job to run")
    nodes.client.kill()
    gate.touch()
    statuses = nodes.wait_finished(timeout=60)
    assert statuses == {"job0": "Unknown", "job1": "Failed"}
    assert "lost contact with the example client" in nodes.status(running)["message"]
    assert "could not reach the example client" in nodes.status(waiting)["message"]
    nodes.client.start()
    nodes.submit("job2")
    assert nodes.wait_finished()["job2"] == "Completed"  # the slot job0 held is free
    COUNTS.append("client lost for good: 2 jobs ended with the reason (Unknown, Failed), slot freed, next job ran")


def _payloads(db) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM payloads").fetchone()[0]


def _request_waiting(port: int, seen: list[int] = []) -> bool:  # noqa: B006 (remembers between polls)
    """Whether bytes wait unread on a connection to `port` and no more have come for a few polls."""
    waiting = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # established
            waiting += int(fields[4].split(":")[1], 16)
    seen.append(waiting)
    return waiting > 0 and seen[-4:] == [waiting] * 4


def _events(nodes, reason: str) -> int:
    """How many status changes of the server's jobs had this reason."""
    with sqlite3.connect(nodes.server.folder / "server.sqlite") as connection:
        return connection.execute("SELECT COUNT(*) FROM job_events WHERE reason = ?", (reason,)).fetchone()[0]


def _jobs(db) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
