"""Several clients: the server's own CPU per job as it feeds 1, 2 and 4 clients of one service.

Here the clients share this machine's cores with the server, so the wall time says little about what more
clients bring: the figure is the CPU the server process spends per job (uploads, placement, sends, events,
results, downloads), and so how many jobs per second one server process could feed. The floor is the same
figure with one client, in the same run: placing jobs over more clients should cost the server nothing more.
"""

import asyncio
import json
import sqlite3
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from bench.harness import Process, job_body, scratch, show

SCRIPT = "echo hello > out.txt\n"
SLOTS = 4  # per client


async def feed(clients: int, jobs: int) -> dict:
    """Run `jobs` trivial jobs (from 5 users) through a server with `clients` clients; the server's CPU
    seconds and the wall seconds from the first upload to the last result downloaded."""
    with scratch() as root:
        folder = Path(root)
        nodes = [Process("client", folder / f"client{n}", {"SLOTS": str(SLOTS)}) for n in range(clients)]
        limit = str(SLOTS * clients)
        server = Process(
            "server",
            folder / "server",
            {
                "SERVICE_BENCH_CLIENTS": ",".join(node.url for node in nodes),
                "SERVICE_BENCH_MAX_RUNS": limit,
                "SERVICE_BENCH_RUNS_PER_USER": limit,
            },
        )
        http = AsyncHTTPClient(force_instance=True, max_clients=20)
        try:
            for node in [*nodes, server]:
                await _healthy(http, node)
            await _run(http, server, 1, folder)  # warm up
            before = server.cpu()
            start = asyncio.get_running_loop().time()
            await _run(http, server, jobs, folder)
            wall = asyncio.get_running_loop().time() - start
            return {"cpu": server.cpu() - before, "wall": wall}
        finally:
            http.close()
            server.stop()
            for node in nodes:
                node.stop()


async def _healthy(http: AsyncHTTPClient, node: Process) -> None:
    while True:
        assert node.popen.poll() is None, f"{node.popen.args} did not start"
        try:
            if (await http.fetch(f"{node.url}/health", raise_error=False)).code == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.02)


async def _run(http: AsyncHTTPClient, server: Process, jobs: int, folder: Path) -> None:
    """Upload `jobs` jobs, wait for them all (reading the server's database, so that a portal's polls do not
    count), then download each result once."""
    ids = []
    for n in range(jobs):
        body, content_type = job_body(SCRIPT, user_id=n % 5)
        response = await http.fetch(
            f"{server.url}/upload", method="POST", body=body, headers={"Content-Type": content_type}
        )
        ids.append(json.loads(response.body)["id"])
    database = f"file:{folder / 'server' / 'server.sqlite'}?mode=ro"
    while True:
        with sqlite3.connect(database, uri=True) as db:
            done = db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE status = 'Completed' AND id IN ({','.join(map(str, ids))})"
            ).fetchone()[0]
        if done == len(ids):
            break
        await asyncio.sleep(0.05)
    for job_id in ids:
        response = await http.fetch(f"{server.url}/download/{job_id}")
        assert response.headers["Content-Type"] == "application/zip", response.body


async def measure(jobs: int = 200, counts: tuple[int, ...] = (1, 2, 4)) -> dict:
    results = {clients: await feed(clients, jobs) for clients in counts}
    floor = results[counts[0]]["cpu"] / jobs
    rows = []
    for clients, result in results.items():
        per_job = result["cpu"] / jobs
        rows.append(
            (
                f"{clients} client{'s' if clients > 1 else ''}",
                f"{per_job * 1000:.1f} ms of server CPU per job: one server process could feed "
                f"{1 / per_job:.0f} jobs/s ({per_job / floor:.2f}x the floor; wall {jobs / result['wall']:.0f} jobs/s)",
            )
        )
    rows.append(("floor", f"{floor * 1000:.1f} ms per job: the server feeding one client, in this run"))
    show(f"clients: the server's CPU per job feeding {', '.join(map(str, counts))} clients ({jobs} trivial jobs)", rows)
    return {clients: result["cpu"] / jobs for clients, result in results.items()}


if __name__ == "__main__":
    asyncio.run(measure())
