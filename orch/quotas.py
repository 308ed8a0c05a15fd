"""Which queued jobs of a service may start now.

A service runs at most MAX_RUNS jobs at once and a user at most RUNS_PER_USER of them. Every job that has
left the queue and is not finished counts, whatever its status (`states.ACTIVE`). Free slots go round-robin
between the users with queued jobs, in user-id order, starting after the user served last (a cursor kept
in the database, so the turn carries over from one round to the next and across restarts); within a user,
oldest job first. A user with one job behind another user's thousand therefore starts at the next free slot.

Every query is an index seek on (status, service, user_id, id), so a round costs the same whatever the
length of the queue or of the history.
"""

from orch.config import ServiceConfig
from orch.models import run, server_db
from orch.states import ACTIVE, Status

# Plain SQL: this runs at every upload and every finished job, and building peewee queries would cost ten
# times what SQLite takes to answer them.
QUEUED = Status.QUEUED
ACTIVE_PER_USER = (
    f'SELECT "user_id", COUNT(*) FROM "jobs" WHERE "service" = ? AND "status" IN '
    f'({", ".join("?" * len(ACTIVE))}) GROUP BY "user_id"'
)
CURSOR = 'SELECT "user_id" FROM "cursors" WHERE "service" = ?'
NEXT_USER = 'SELECT MIN("user_id") FROM "jobs" WHERE "status" = ? AND "service" = ? AND "user_id" > ?'
FIRST_USER = 'SELECT MIN("user_id") FROM "jobs" WHERE "status" = ? AND "service" = ?'
NEXT_JOB = (
    'SELECT "id" FROM "jobs" WHERE "status" = ? AND "service" = ? AND "user_id" = ? AND "id" > ? ORDER BY "id" LIMIT 1'
)
MOVE_CURSOR = (
    'INSERT INTO "cursors" ("service", "user_id") VALUES (?, ?) '
    'ON CONFLICT ("service") DO UPDATE SET "user_id" = excluded."user_id"'
)


def next_jobs(service: ServiceConfig) -> list[tuple[int, int]]:
    """The (job id, user id) pairs that may start now, in the order they should be claimed."""
    cursor = _value(CURSOR, service.name)
    user = _next_user(service.name, cursor)
    if user is None:
        return []  # nothing queued
    active = dict(run(server_db, ACTIVE_PER_USER, [service.name, *sorted(ACTIVE)]).fetchall())
    free = service.max_runs - sum(active.values())
    picked: list[tuple[int, int]] = []
    last_picked: dict[int, int] = {}
    passed_without_pick: set[int] = set()
    while free > 0:
        if user in passed_without_pick:
            break  # a whole turn gave nothing
        job_id = None
        if active.get(user, 0) < service.runs_per_user:
            job_id = _value(NEXT_JOB, QUEUED, service.name, user, last_picked.get(user, 0))
        if job_id is None:
            passed_without_pick.add(user)
        else:
            picked.append((job_id, user))
            last_picked[user] = job_id
            active[user] = active.get(user, 0) + 1
            free -= 1
            passed_without_pick.clear()
        user = _next_user(service.name, user)
    return picked


def _next_user(service: str, after: int | None) -> int | None:
    """The first user after `after` (wrapping around) with a queued job in `service`; None if none has."""
    if after is not None:
        user = _value(NEXT_USER, QUEUED, service, after)
        if user is not None:
            return user
    return _value(FIRST_USER, QUEUED, service)


def _value(sql: str, *params) -> int | None:
    row = run(server_db, sql, params).fetchone()
    return row[0] if row else None


def move_cursor(service: str, user: int) -> None:
    """Remember `user` as the one served last in `service`."""
    run(server_db, MOVE_CURSOR, (service, user))
