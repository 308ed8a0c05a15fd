"""Queue scale: 100,000 queued jobs from 1,000 users over a history of 1,000,000 finished jobs, on SQLite or
on PostgreSQL.

The database's schema is made by the real code, then it is filled directly, in bulk (SQLite: one transaction of
inserts; PostgreSQL: COPY, then VACUUM ANALYZE as autovacuum would have done over such a history). Then: how
long a sender round takes to choose and claim the jobs that may start (the real claim, with its advisory lock
per service on PostgreSQL); whether uploads keep their pace against the empty queue; whether the fairness rule
holds.
"""

import asyncio
import random
import sqlite3
import statistics
import time
from collections.abc import Iterable
from contextlib import ExitStack, closing
from pathlib import Path
from unittest import mock

import psycopg

from bench import databases
from bench.harness import Orchestrator, job_body, scratch, show
from bench.postgres import PostgresServer
from bench.uploads import WARM_UP, quiet_service, upload_rate
from orch import dispatch, history, metrics, overview, placement
from orch.config import ServiceConfig, load
from orch.context import Context
from orch.database import close, open_server_db
from orch.models import Job, run, serialize, server_db, transition
from orch.quotas import move_cursor, next_jobs
from orch.states import Status
from orch.storage import new_name

HISTORY = 1_000_000
QUEUED = 100_000
USERS = 1_000
SERVICE = "bench"
ROUNDS = 200
PACE_TURNS = 3
COLUMNS = ("user_id", "service", "status", "folder", "message", "created_at", "updated_at", "finished_at")


def insert_jobs(location: Path | str, rows: Iterable[tuple]) -> None:
    """Add `rows` (values of COLUMNS) to the jobs table of the database at `location` (a SQLite file or a
    PostgreSQL URL), in bulk and in one transaction."""
    if isinstance(location, Path):
        with closing(sqlite3.connect(location)) as db, db:
            db.executemany(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", rows)
    else:
        with psycopg.connect(location) as db, db.cursor() as cursor:
            with cursor.copy(f"COPY jobs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)


def fill(location: Path | str, history: int, queued: int, users: int) -> None:
    """A server database with the history and the queue (and an index layout made by the real code)."""
    open_server_db(location)
    close(server_db)
    rng = random.Random(1)
    now = time.time()  # finished recently: the cleaner has nothing to do yet (Cleaned ones are long gone)
    finished = (
        (rng.randrange(users), SERVICE, rng.choice(["Completed", "Failed", "Cleaned"]), new_name(), "", now, now, now)
        for _ in range(history)
    )
    waiting = ((rng.randrange(users), SERVICE, "Queued", new_name(), "", 1.0, 1.0, None) for _ in range(queued))
    # The service's ten slots are taken, as in a busy day: the queue waits (and every upload still makes the
    # sender look at it). The rounds below free them first.
    running = ((user, SERVICE, "Running", new_name(), "", now, now, None) for user in range(10))
    for rows in (finished, waiting, running):  # in this order: ids grow from the history to the queue
        insert_jobs(location, rows)
    if isinstance(location, str):
        with psycopg.connect(location, autocommit=True) as db:
            db.execute("VACUUM ANALYZE jobs")


async def sender_rounds(location: Path | str, data: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per sender round with 10 free slots: the server's own claim (`orch.dispatch.claim`: take the
    service's lock, choose what may start, claim it, move the cursor); between rounds the claimed jobs finish,
    freeing their slots. Also the seconds, within each round, of taking the lock (an advisory lock on
    PostgreSQL; nothing on SQLite, which has one writer at a time)."""
    where = {"DB_URL": location} if isinstance(location, str) else {"DB_PATH": str(location)}
    config = load(
        "server",
        {
            **where,
            "DATA_PATH": str(data),
            "SERVICE_BENCH_UPLOAD_URL": "http://x/submit",
            "SERVICE_BENCH_DOWNLOAD_URL": "http://x/retrieve",
            "SERVICE_BENCH_RUNS_PER_USER": "1",
            "SERVICE_BENCH_MAX_RUNS": "10",
        },
    )
    ctx = Context(config)
    known = ctx.state(placement.Known)  # its client is a name only: as one of the original's, whose slots are unknown
    known.slots["http://x"], known.asked_at["http://x"] = None, time.time()
    open_server_db(location)
    for (job,) in Job.select(Job.id).where(Job.status == Status.RUNNING.value).tuples():
        transition(Job, job, Status.RUNNING, Status.COMPLETED, time.time())
    durations, locks = [], []

    def timed(db, name: str) -> None:
        start = time.perf_counter()
        serialize(db, name)
        locks.append(time.perf_counter() - start)

    with mock.patch.object(dispatch, "serialize", timed):
        for _ in range(rounds):
            start = time.perf_counter()
            claimed = await dispatch.claim(ctx, time.time())
            durations.append(time.perf_counter() - start)
            assert len(claimed) == 10, claimed
            for job in claimed:
                transition(Job, job, Status.PROCESSING, Status.FAILED, time.time())
    assert len(locks) == rounds
    return durations, locks


def fairness(location: Path | str, users: int) -> bool:
    """A user with one job queued behind another user's 5,000 starts at the next free slot."""
    open_server_db(location)
    now = time.time()
    insert_jobs(
        location,
        [(users + 1, SERVICE, "Queued", new_name(), "", now, now, None) for _ in range(5000)]
        + [(users + 2, SERVICE, "Queued", new_name(), "", now, now, None)],
    )
    move_cursor(SERVICE, users + 1)
    one_slot = ServiceConfig(SERVICE, max_runs=1)
    ((_, user),) = next_jobs(one_slot)
    close(server_db)
    return user == users + 2


def lookups(location: Path | str, users: int, times: int = 20) -> dict[str, float]:
    """Median seconds of a page of `GET /jobs` with each kind of filter, of a `/metrics` scrape, and of the
    scrape's counts alone, as bare SQL (its floor: jobs by service and status, unfinished jobs by user)."""
    open_server_db(location)
    env = {
        "SERVICE_BENCH_UPLOAD_URL": "http://127.0.0.1:9/submit",
        "SERVICE_BENCH_DOWNLOAD_URL": "http://127.0.0.1:9/retrieve",
    }
    ctx = Context(load("server", env))
    work = {
        "page, no filter": lambda: history.find(history.Filters()),
        "page, one user": lambda: history.find(history.Filters(user_id=users // 2)),
        "page, a user with no job": lambda: history.find(history.Filters(user_id=users * 10)),
        "page, a status": lambda: history.find(history.Filters(statuses=("Failed",))),
        "page, user and status": lambda: history.find(history.Filters(user_id=users // 2, statuses=("Failed",))),
        "page, since an hour": lambda: history.find(history.Filters(since=time.time() - 3600)),
        "metrics scrape": lambda: metrics.exposition(ctx),
        "bare counts": lambda: (
            run(server_db, metrics.JOBS_BY_STATUS).fetchall(),
            run(server_db, overview.COUNTS, overview.UNFINISHED).fetchall(),
        ),
    }
    medians = {}
    for name, call in work.items():
        durations = []
        for _ in range(times):
            start = time.perf_counter()
            call()
            durations.append(time.perf_counter() - start)
        medians[name] = statistics.median(durations)
    close(server_db)
    return medians


async def upload_pace(location: Path | str | None, seconds: float, postgres: PostgresServer | None) -> float:
    """Uploads per second to a server on a copy of the database at `location` (None: an empty one), over
    `seconds`."""
    body, content_type = job_body("echo hello > out.txt\n")
    with ExitStack() as stack:
        env, copy = quiet_service(), None
        if postgres is None:
            copy = location  # the file, which the server gets a copy of
        else:
            env["DB_URL"] = stack.enter_context(databases.fresh(postgres, copy_of=location))
        async with Orchestrator(server_env=env, server_db=copy) as orch:
            await upload_rate(orch.server.url, body, content_type, seconds=min(WARM_UP, seconds))
            return await upload_rate(orch.server.url, body, content_type, seconds)


async def measure(
    history: int = HISTORY,
    queued: int = QUEUED,
    users: int = USERS,
    rounds: int = ROUNDS,
    pace_seconds: float = 3.0,
    turns: int = PACE_TURNS,
    postgres: PostgresServer | None = None,
) -> dict:
    """The figures on SQLite (`postgres` None) or on a database of the cluster `postgres`."""
    with scratch() as root, ExitStack() as stack:
        location = Path(root) / "server.sqlite" if postgres is None else stack.enter_context(databases.fresh(postgres))
        start = time.perf_counter()
        fill(location, history, queued, users)
        filled = time.perf_counter() - start
        # In turns, the best of each: the disk's pace drifts over a run, and would favour whichever went first.
        paces = [
            (database, await upload_pace(database, pace_seconds, postgres))
            for _ in range(turns)
            for database in (None, location)
        ]
        empty_rate = max(rate for database, rate in paces if database is None)
        full_rate = max(rate for database, rate in paces if database is not None)
        try:
            durations, locks = await sender_rounds(location, Path(root) / "data", rounds)
            fair = fairness(location, users)
            looked = lookups(location, users)
        finally:
            close(server_db)  # before the database is dropped
    p95 = sorted(durations)[int(0.95 * (len(durations) - 1))]
    result = {
        "filled": filled,
        "round_median": statistics.median(durations),
        "round_p95": p95,
        "lock_median": statistics.median(locks),
        "empty_rate": empty_rate,
        "full_rate": full_rate,
        "fair": fair,
        "lookups": looked,
    }
    scrape = looked["metrics scrape"]
    show(
        f"queue scale ({databases.label(postgres)}): {queued:,} queued from {users:,} users "
        f"over {history:,} finished jobs",
        [
            ("database filled in", f"{filled:.0f} s"),
            (
                "sender round",
                f"median {result['round_median'] * 1000:.2f} ms, 95th percentile {p95 * 1000:.2f} ms "
                f"(10 slots to fill; target: 5 ms at most)",
            ),
            (
                "  of which the lock",
                f"median {result['lock_median'] * 1000:.2f} ms (the service's advisory lock, held until the commit)"
                if postgres
                else "none (SQLite has one writer at a time)",
            ),
            ("uploads, empty queue", f"{empty_rate:.0f} per second"),
            (
                "uploads, full queue",
                f"{full_rate:.0f} per second ({full_rate / empty_rate:.0%} of the empty queue's; target: 80% at least)",
            ),
            (
                "fairness",
                "holds: one job behind another user's 5,000 starts at the next free slot"
                if fair
                else "BROKEN: the lone job did not start at the next free slot",
            ),
            *((name, f"{seconds * 1000:.2f} ms") for name, seconds in looked.items() if name.startswith("page")),
            (
                "metrics scrape",
                f"{scrape * 1000:.1f} ms ({scrape / looked['bare counts']:.2f}x its counts as bare SQL)",
            ),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
