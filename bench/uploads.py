"""Small uploads per second on an empty queue, each acknowledged only once its job is committed (SQLite in WAL
mode, or PostgreSQL as bench/databases.py runs it: either way a commit survives a crash of the process).

On PostgreSQL, also with two server processes sharing the database and the data folder, the driver's
connections split between their ports."""

import asyncio
import time
from contextlib import ExitStack

from bench import databases, floors
from bench.harness import Orchestrator, job_body, show
from bench.postgres import PostgresServer

CONNECTIONS = 8
WARM_UP = 0.5  # seconds of uploads before those that count
TURNS = 2


async def upload_rate(urls: str | list[str], body: bytes, content_type: str, seconds: float = 3.0) -> float:
    """Uploads per second that `CONNECTIONS` keep-alive connections, spread over the servers at `urls` in turn,
    get through in `seconds`.

    The driver speaks HTTP/1.1 on raw sockets: a Python HTTP client would cost the machine more than the
    server being measured."""
    urls = [urls] if isinstance(urls, str) else urls
    done = 0
    deadline = time.perf_counter() + seconds

    async def connection(url: str) -> None:
        nonlocal done
        host, port = url.removeprefix("http://").split(":")
        request = (
            f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 201"), head
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            done += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection(urls[n % len(urls)]) for n in range(CONNECTIONS)))
    return done / (time.perf_counter() - start)


def quiet_service() -> dict[str, str]:
    """Server settings whose service leads nowhere: jobs stay queued, so only uploads are measured."""
    return {
        "SERVICE_BENCH_UPLOAD_URL": "http://127.0.0.1:9/submit",
        "SERVICE_BENCH_DOWNLOAD_URL": "http://127.0.0.1:9/retrieve",
        "SENDER_INTERVAL": "3600",
    }


async def server_rate(script: str, seconds: float, server_env: dict[str, str], servers: int = 1) -> float:
    """Uploads per second of `script` to `servers` fresh server processes (after a warm-up)."""
    body, content_type = job_body(script)
    async with Orchestrator(server_env={**quiet_service(), **server_env}, servers=servers) as orch:
        urls = [server.url for server in orch.servers]
        await upload_rate(urls, body, content_type, seconds=min(WARM_UP, seconds))
        return await upload_rate(urls, body, content_type, seconds)


async def measure(
    seconds: float = 3.0, floor_seconds: float = 2.0, turns: int = TURNS, postgres: PostgresServer | None = None
) -> dict:
    """On SQLite (`postgres` None): one server. On fresh databases of the cluster `postgres`: one server, and two.
    Each the best of `turns` runs, taken in turns: the machine's pace drifts over a run, and would favour
    whichever went first."""
    script = "echo hello > out.txt\n"
    rates: dict[int, float] = {}
    for _ in range(turns):
        for servers in (1,) if postgres is None else (1, 2):
            with ExitStack() as stack:
                env = {} if postgres is None else {"DB_URL": stack.enter_context(databases.fresh(postgres))}
                rate = await server_rate(script, seconds, env, servers)
            rates[servers] = max(rate, rates.get(servers, 0.0))
    if postgres is None:
        floor = floors.store_uploads(script, floor_seconds)
    else:
        with databases.fresh(postgres) as url:
            floor = floors.store_uploads(script, floor_seconds, db_url=url)
    rows = [
        (
            "uploads" if len(rates) == 1 else "uploads, one server",
            f"{rates[1]:.0f} per second over {CONNECTIONS} keep-alive connections (target: 1000 at least)",
        )
    ]
    if 2 in rates:
        rows.append(("uploads, two servers", f"{rates[2]:.0f} per second ({CONNECTIONS // 2} connections to each)"))
    rows += [
        ("floor", f"{floor:.0f} per second (a folder, its run.sh and a committed row each; no HTTP)"),
        (
            "uploads / floor",
            f"{rates[1] / floor:.2f}" + (f" (one server), {rates[2] / floor:.2f} (two servers)" if 2 in rates else ""),
        ),
    ]
    show(f"small uploads per second, empty queue, every commit durable ({databases.label(postgres)})", rows)
    return {"rate": rates[1], "two_servers": rates.get(2), "floor": floor}


if __name__ == "__main__":
    asyncio.run(measure())
