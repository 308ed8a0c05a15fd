"""Running jobs: the CPU that the server and the client spend while many long jobs run and nothing changes.
The floor is zero: there is nothing to do but wait."""

import asyncio

from bench.harness import Orchestrator, job_body, show


async def measure(jobs: int = 200, seconds: float = 4.0) -> dict:
    body, content_type = job_body("sleep 600\n")
    limits = {"SERVICE_BENCH_RUNS_PER_USER": str(jobs), "SERVICE_BENCH_MAX_RUNS": str(jobs)}
    async with Orchestrator(server_env=limits) as orch:
        ids = [await orch.upload(body, content_type) for _ in range(jobs)]
        while not await orch.all_running(ids):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the sweeps that follow a start are over
        processes = {"server": orch.server, "client": orch.client}
        before = {name: process.cpu() for name, process in processes.items()}
        await asyncio.sleep(seconds)
        load = {name: (process.cpu() - before[name]) / seconds for name, process in processes.items()}
        await asyncio.gather(
            *(
                orch.http.fetch(f"{orch.server.url}/terminate/{job_id}", method="POST", body=b"", request_timeout=60)
                for job_id in ids
            )
        )  # runs outlive a client
    show(
        f"running jobs: CPU while {jobs} long jobs run",
        [
            ("server", f"{load['server']:.1%} of a core"),
            ("client", f"{load['client']:.1%} of a core"),
            ("floor", "0% (nothing changes)"),
        ],
    )
    return load


if __name__ == "__main__":
    asyncio.run(measure())
