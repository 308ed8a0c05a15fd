"""The server's database in the benchmarks that run on both: SQLite (a file, the default) or PostgreSQL (a
database on a throwaway cluster, see bench/postgres.py). A benchmark's `postgres` argument is that cluster, or
None for SQLite.

The cluster that `python -m bench` starts keeps commits as SQLite in WAL mode with synchronous=NORMAL (what the
server uses) keeps them: each is written to the kernel before it returns (synchronous_commit on), so it survives
a crash of the process, not of the machine (fsync stays off, as SQLite does not sync at commit either). A
production cluster (fsync on) also flushes the disk at each commit, a flush that concurrent commits share.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from bench.postgres import PostgresServer

NAMES = ("sqlite", "postgresql")  # what `python -m bench --database` accepts (and "both")
DURABLE = {"synchronous_commit": "on"}  # the cluster's settings beyond bench/postgres.py's (see above)


def label(postgres: PostgresServer | None) -> str:
    """How a benchmark's figures name their database."""
    return "SQLite" if postgres is None else "PostgreSQL"


@contextmanager
def cluster() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster for the benchmarks, stopped (and removed) when the block ends."""
    server = PostgresServer(settings=DURABLE)
    try:
        yield server.start()
    finally:
        server.stop()


@contextmanager
def fresh(postgres: PostgresServer, copy_of: str | None = None) -> Iterator[str]:
    """The URL of a new database on `postgres`, empty or a copy of the one at the URL `copy_of` (to which nobody
    may be connected); dropped when the block ends."""
    name = postgres.create_database(template=urlsplit(copy_of).path.lstrip("/") if copy_of else None)
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)
