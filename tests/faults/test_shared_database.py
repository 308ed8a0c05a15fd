"""Two server processes on one PostgreSQL database and one data folder, with real clients, while one of the
servers is SIGKILLed and restarted: every job runs exactly once, none is lost or stuck."""

import json
import random
import time

import psycopg

from bench.cluster import FINISHED, Node, multipart, request, wait
from orch import peers
from tests.faults.counts import COUNTS

JOBS = 500
USERS = 5


def test_two_servers_on_one_database_run_every_job_once_while_one_is_killed_twice(tmp_path, shared, postgres_url):
    ledger = shared / "ledger"
    clients = [
        Node("client", tmp_path / f"client{n}", {"KILL_GRACE": "1", "JOB_WRITE_PATHS": str(shared)}) for n in range(2)
    ]
    settings = {
        "DB_URL": postgres_url,
        "DATA_PATH": str(tmp_path / "data"),
        "SENDER_INTERVAL": "0.05",
        "GETTER_INTERVAL": "0.05",
    }
    for n, client in enumerate(clients):  # a service on each client
        settings |= {
            f"SERVICE_S{n}_UPLOAD_URL": f"{client.url}/submit",
            f"SERVICE_S{n}_DOWNLOAD_URL": f"{client.url}/retrieve",
            f"SERVICE_S{n}_RUNS_PER_USER": "3",
            f"SERVICE_S{n}_MAX_RUNS": "6",
        }
    servers = [Node("server", tmp_path / f"server{n}", settings) for n in range(2)]
    jobs: dict[str, int] = {}
    rng = random.Random(5)
    try:
        for node in clients + servers:
            node.start()

        def upload(tag: str, user: int, service: str, server: Node) -> int:
            body, content_type = multipart(
                {"user_id": str(user), "service": service},
                {"run.sh": f"echo {tag} >> {ledger}\necho {tag} > out.txt\n".encode()},
            )
            code, _, answer = request(f"{server.url}/upload", body, {"Content-Type": content_type})
            assert code == 201, answer
            return json.loads(answer)["id"]

        kills = 0
        for n in range(JOBS):
            if n in (150, 350):  # the first server dies at once and comes back, twice
                servers[0].kill()
                kills += 1
                servers[0].start()
            tag = f"job{n}"
            jobs[tag] = upload(tag, n % USERS, f"s{n % 2}", rng.choice(servers))

        def statuses() -> dict[str, str] | None:
            found = {}
            for tag, job_id in jobs.items():
                code, kind, body = request(f"{rng.choice(servers).url}/download/{job_id}")
                if code != 200:
                    return None
                found[tag] = "Completed" if kind == "application/zip" else json.loads(body)["status"]
            return found if set(found.values()) <= FINISHED else None

        finished = wait(statuses, timeout=240, what="every job to finish")
    finally:
        for node in servers + clients:
            node.stop()
    ran = ledger.read_text().split()
    assert finished == dict.fromkeys(jobs, "Completed")
    assert sorted(ran) == sorted(jobs)  # each script ran exactly once
    COUNTS.append(
        f"two servers on one PostgreSQL, one killed {kills} times: {JOBS} submitted, "
        f"{sum(s == 'Completed' for s in finished.values())} finished, {JOBS - len(set(ran))} lost, "
        f"{len(ran) - len(set(ran))} run twice"
    )


def test_the_clients_of_a_killed_server_are_taken_over_by_the_other(tmp_path, postgres_url):
    client = Node("client", tmp_path / "client", {})
    settings = {
        "DB_URL": postgres_url,
        "DATA_PATH": str(tmp_path / "data"),
        "SERVICE_EXAMPLE_UPLOAD_URL": f"{client.url}/submit",
        "SERVICE_EXAMPLE_DOWNLOAD_URL": f"{client.url}/retrieve",
        "GETTER_INTERVAL": "3600",
    }  # so that only the stream can bring a result home
    servers = [Node("server", tmp_path / f"server{n}", settings) for n in range(2)]
    database = psycopg.connect(postgres_url, autocommit=True)
    try:
        for node in [client, *servers]:
            node.start()

        def holder() -> int | None:
            """The pid of the server process that holds the client's lease, while it holds it."""
            row = database.execute(
                "SELECT s.pid FROM leases l JOIN servers s ON s.id = l.holder WHERE l.name = %s AND l.expires_at > %s",
                (f"client {client.url}", time.time()),
            )
            return (row.fetchone() or [None])[0]

        first = wait(holder, what="a server to follow the client")
        (victim,) = [node for node in servers if node.popen.pid == first]
        (survivor,) = [node for node in servers if node is not victim]
        victim.kill()
        killed = time.monotonic()
        wait(lambda: holder() == survivor.popen.pid, what="the other server to take the client over")
        took = time.monotonic() - killed
        body, content_type = multipart({"user_id": "1", "service": "example"}, {"run.sh": b"echo done > out.txt\n"})
        code, _, answer = request(f"{survivor.url}/upload", body, {"Content-Type": content_type})
        assert code == 201, answer
        job_id = json.loads(answer)["id"]
        wait(lambda: request(f"{survivor.url}/download/{job_id}")[1] == "application/zip", what="the result")
    finally:
        database.close()
        for node in [*servers, client]:
            node.stop()
    COUNTS.append(
        f"server following a client killed: taken over by the other in {took:.1f} s (lease: {peers.LEASE:g} s)"
    )
