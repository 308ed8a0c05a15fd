"""Latency: one job at a time, from the start of its upload until its result zip is downloaded."""

import asyncio
import time

from bench import floors
from bench.harness import Orchestrator, job_body, median, percentile, show

SCRIPT = "echo hello > out.txt\n"
ROUND_TRIPS = 5  # upload, send, a poll of the result, its retrieval, the download


async def measure(jobs: int = 30) -> dict:
    body, content_type = job_body(SCRIPT)
    async with Orchestrator() as orch:
        for _ in range(3):  # warm up
            await orch.result(await orch.upload(body, content_type))
        durations = []
        for _ in range(jobs):
            start = time.perf_counter()
            await orch.result(await orch.upload(body, content_type))
            durations.append(time.perf_counter() - start)
        pings = []
        for _ in range(100):
            start = time.perf_counter()
            await orch.http.fetch(f"{orch.server.url}/")
            pings.append(time.perf_counter() - start)
    floor = floors.one_job(SCRIPT) + ROUND_TRIPS * median(pings)
    result = {"median": median(durations), "p95": percentile(durations, 0.95), "floor": floor}
    show(
        "latency: one job at a time, upload to downloaded zip",
        [
            ("jobs", str(jobs)),
            ("median", f"{result['median'] * 1000:.1f} ms (target: 15 ms at most)"),
            ("95th percentile", f"{result['p95'] * 1000:.1f} ms"),
            ("floor", f"{floor * 1000:.1f} ms (bash run.sh + zip, and {ROUND_TRIPS} loopback round trips)"),
            ("median / floor", f"{result['median'] / floor:.1f}x"),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
