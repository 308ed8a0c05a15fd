"""Which queued jobs of a service may start now.

A service runs at most MAX_RUNS jobs at once and a user at most RUNS_PER_USER of them. Every job that has
left the queue and is not finished counts, whatever its status (`states.ACTIVE`). Free slots go round-robin
between the users with queued jobs, in user-id order, starting after the user served last (a cursor kept
in the database, so the turn carries over from one round to the next and across restarts); within a user,
oldest job first. A user with one job behind another user's thousand therefore starts at the next free slot.

Every query is an index seek on (status, service, user_id, id), so a round costs the same whatever the
length of the queue or of the history.
"""

from peewee import fn

from orch.config import ServiceConfig
from orch.models import Cursor, Job
from orch.states import ACTIVE, Status

QUEUED = Status.QUEUED.value


def next_jobs(service: ServiceConfig) -> list[tuple[int, int]]:
    """The (job id, user id) pairs that may start now, in the order they should be claimed."""
    active = dict(
        Job.select(Job.user_id, fn.COUNT(Job.id))
        .where(Job.status.in_([status.value for status in ACTIVE]), Job.service == service.name)
        .group_by(Job.user_id)
        .tuples()
    )
    free = service.max_runs - sum(active.values())
    cursor = Cursor.get_or_none(Cursor.service == service.name)
    user = cursor.user_id if cursor else None
    picked: list[tuple[int, int]] = []
    last_picked: dict[int, int] = {}
    passed_without_pick: set[int] = set()
    while free > 0:
        user = _next_user(service.name, user)
        if user is None or user in passed_without_pick:
            break  # no queued jobs, or a whole turn gave nothing
        job_id = None
        if active.get(user, 0) < service.runs_per_user:
            job_id = _next_job(service.name, user, last_picked.get(user, 0))
        if job_id is None:
            passed_without_pick.add(user)
            continue
        picked.append((job_id, user))
        last_picked[user] = job_id
        active[user] = active.get(user, 0) + 1
        free -= 1
        passed_without_pick.clear()
    return picked


def _next_user(service: str, after: int | None) -> int | None:
    """The first user after `after` (wrapping around) with a queued job in `service`."""
    queued = (Job.status == QUEUED) & (Job.service == service)
    if after is not None:
        user = Job.select(fn.MIN(Job.user_id)).where(queued & (Job.user_id > after)).scalar()
        if user is not None:
            return user
    return Job.select(fn.MIN(Job.user_id)).where(queued).scalar()


def _next_job(service: str, user: int, after_id: int) -> int | None:
    return (
        Job.select(Job.id)
        .where(Job.status == QUEUED, Job.service == service, Job.user_id == user, Job.id > after_id)
        .order_by(Job.id)
        .limit(1)
        .scalar()
    )


def move_cursor(service: str, user: int) -> None:
    """Remember `user` as the one served last in `service`."""
    Cursor.insert(service=service, user_id=user).on_conflict_replace().execute()
