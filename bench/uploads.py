"""Small uploads per second on an empty queue, each acknowledged only once its job is committed (SQLite WAL:
a commit survives a crash of the process)."""

import asyncio
import time

from bench import floors
from bench.harness import Orchestrator, job_body, show

CONNECTIONS = 8


async def upload_rate(url: str, body: bytes, content_type: str, seconds: float = 3.0) -> float:
    """Uploads per second that `CONNECTIONS` keep-alive connections get through in `seconds`.

    The driver speaks HTTP/1.1 on raw sockets: a Python HTTP client would cost the machine more than the
    server being measured."""
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    done = 0
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        nonlocal done
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
    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return done / (time.perf_counter() - start)


def quiet_service() -> dict[str, str]:
    """Server settings whose service leads nowhere: jobs stay queued, so only uploads are measured."""
    return {
        "SERVICE_BENCH_UPLOAD_URL": "http://127.0.0.1:9/submit",
        "SERVICE_BENCH_DOWNLOAD_URL": "http://127.0.0.1:9/retrieve",
        "SENDER_INTERVAL": "3600",
    }


async def measure(seconds: float = 3.0) -> dict:
    script = "echo hello > out.txt\n"
    body, content_type = job_body(script)
    async with Orchestrator(server_env=quiet_service()) as orch:
        await upload_rate(orch.server.url, body, content_type, seconds=0.5)  # warm up
        rate = await upload_rate(orch.server.url, body, content_type, seconds)
    floor = floors.store_uploads(script)
    show(
        "small uploads per second, empty queue, every commit durable",
        [
            ("uploads", f"{rate:.0f} per second over {CONNECTIONS} keep-alive connections (target: 1000 at least)"),
            ("floor", f"{floor:.0f} per second (a folder, its run.sh and a committed row each; no HTTP)"),
            ("uploads / floor", f"{rate / floor:.2f}"),
        ],
    )
    return {"rate": rate, "floor": floor}


if __name__ == "__main__":
    asyncio.run(measure())
