"""Throughput: 200 trivial jobs, 10 at a time, from the first upload until every result is downloaded."""

import asyncio
import time

from bench import floors
from bench.harness import Orchestrator, job_body, show

SCRIPT = "echo hello > out.txt\n"


async def measure(jobs: int = 200, at_once: int = 10) -> dict:
    body, content_type = job_body(SCRIPT)
    limits = {"SERVICE_BENCH_RUNS_PER_USER": str(at_once), "SERVICE_BENCH_MAX_RUNS": str(at_once)}
    async with Orchestrator(server_env=limits) as orch:
        await orch.result(await orch.upload(body, content_type))  # warm up
        start = time.perf_counter()
        ids = [await orch.upload(body, content_type) for _ in range(jobs)]
        for job_id in ids:  # one portal collecting its results in order (200 pollers would load the server)
            await orch.result(job_id)
        elapsed = time.perf_counter() - start
    floor = floors.many_jobs(SCRIPT, jobs, at_once)
    result = {"elapsed": elapsed, "floor": floor}
    show(
        f"throughput: {jobs} trivial jobs, {at_once} at a time",
        [
            ("elapsed", f"{elapsed:.2f} s, {jobs / elapsed:.0f} jobs/s"),
            ("floor", f"{floor:.2f} s, {jobs / floor:.0f} jobs/s (bash run.sh + zip, {at_once} at a time)"),
            ("elapsed / floor", f"{elapsed / floor:.1f}x (target: 2x at most)"),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
