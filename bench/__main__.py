"""`python -m bench` (or `make bench`): every benchmark, one after the other, each against its floor."""

import asyncio
import sys

from bench import bigfiles, latency, queue_scale, running, sandbox, throughput, uploads

BENCHMARKS = {
    "throughput": throughput,
    "latency": latency,
    "bigfiles": bigfiles,
    "queue": queue_scale,
    "uploads": uploads,
    "running": running,
    "sandbox": sandbox,
}


async def main(names: list[str]) -> None:
    for name in names or BENCHMARKS:
        await BENCHMARKS[name].measure()


if __name__ == "__main__":
    unknown = set(sys.argv[1:]) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose among {', '.join(BENCHMARKS)}")
    asyncio.run(main(sys.argv[1:]))
