"""`python -m bench` (or `make bench`): every benchmark, one after the other, each against its floor.

    python -m bench [--database sqlite|postgresql|both] [NAME...]

The benchmarks of ON_BOTH run on the database chosen (both by default: SQLite, then PostgreSQL, on a throwaway
cluster started for the run and stopped at its end, see bench/databases.py); the others run on SQLite."""

import argparse
import asyncio
from contextlib import ExitStack

from bench import (
    bigfiles,
    clients,
    databases,
    latency,
    queue_scale,
    running,
    sandbox,
    slurm_jobs,
    throughput,
    uploads,
)

BENCHMARKS = {
    "throughput": throughput,
    "latency": latency,
    "bigfiles": bigfiles,
    "queue": queue_scale,
    "uploads": uploads,
    "running": running,
    "clients": clients,
    "sandbox": sandbox,
    "slurm": slurm_jobs,
}
ON_BOTH = {"queue", "uploads"}  # the benchmarks that run on PostgreSQL too


async def main(names: list[str], chosen: list[str]) -> None:
    with ExitStack() as stack:
        postgres = None
        if "postgresql" in chosen and ON_BOTH & set(names):
            postgres = stack.enter_context(databases.cluster())
        for name in names:
            if name not in ON_BOTH:
                await BENCHMARKS[name].measure()
                continue
            for database in chosen:
                await BENCHMARKS[name].measure(postgres=postgres if database == "postgresql" else None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description="Runs the benchmarks, each against its floor.")
    parser.add_argument(
        "--database",
        choices=[*databases.NAMES, "both"],
        default="both",
        help=f"the server's database in {', '.join(sorted(ON_BOTH))} (default: both, SQLite first)",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"among {', '.join(BENCHMARKS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose among {', '.join(BENCHMARKS)}")
    chosen = list(databases.NAMES) if args.database == "both" else [args.database]
    asyncio.run(main(args.names or list(BENCHMARKS), chosen))
