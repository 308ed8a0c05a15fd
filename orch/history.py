"""Jobs as people look them up (server): a page of jobs matching filters, newest first, and one job with its
history.

Pages are keyset-paginated on the id (`before`: only older jobs), so that a page costs the same whatever the
length of the history: a status's jobs come from the index `jobs (status, id)` in id order; a user's from the
queue's index `jobs (status, service, user_id, id)`, one range per status and service, merged (an index led by
the user would cost every upload a write at a random place in it); a time range is a condition on jobs read
newest first (ids grow with time).
"""

import math
from dataclasses import dataclass
from datetime import datetime

from peewee import Select

from orch.context import Context
from orch.errors import BadRequest
from orch.jobs import get, result_file
from orch.models import Job, JobEvent, run, server_db
from orch.states import JOB_STATUSES, Status

NEXT_SERVICE = 'SELECT MIN("service") FROM "jobs" WHERE "status" = ? AND "service" > ?'
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
SUMMARY = (
    Job.id,
    Job.user_id,
    Job.service,
    Job.status,
    Job.message,
    Job.client,
    Job.created_at,
    Job.updated_at,
    Job.finished_at,
)


@dataclass(frozen=True)
class Filters:
    """Which jobs a page holds: each filter that is set must match."""

    user_id: int | None = None
    service: str | None = None
    statuses: tuple[str, ...] = ()
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    before: int | None = None  # only jobs with a smaller id (the next page)
    limit: int = DEFAULT_LIMIT


def filters(query: dict[str, str]) -> Filters:
    """Filters from the query string of `GET /jobs`; BadRequest naming a parameter that is wrong."""
    unknown = sorted(set(query) - {"user_id", "service", "status", "since", "until", "before", "limit"})
    if unknown:
        raise BadRequest(f"unknown parameter {unknown[0][:40]!r}")
    statuses = tuple(name for name in query.get("status", "").split(",") if name)
    for status in statuses:
        if status not in JOB_STATUSES:
            raise BadRequest(f"status {status[:40]!r} is not one of {', '.join(sorted(JOB_STATUSES))}")
    limit = _number(query, "limit", int)
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    return Filters(
        user_id=_number(query, "user_id", int),
        service=query.get("service") or None,
        statuses=statuses,
        since=_time(query, "since"),
        until=_time(query, "until"),
        before=_number(query, "before", int),
        limit=limit or DEFAULT_LIMIT,
    )


def _number(query: dict[str, str], name: str, kind: type) -> int | float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a {'whole ' if kind is int else ''}number, got {raw[:40]!r}") from None
    if abs(value) >= 2**63:
        raise BadRequest(f"{name} is out of range: {raw[:40]!r}")
    return value


def _time(query: dict[str, str], name: str) -> float | None:
    """A time given in Unix seconds or ISO 8601 (`2026-12-01T10:00:00Z`; without a zone: this machine's)."""
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            seconds = datetime.fromisoformat(raw).timestamp()
        except ValueError:
            seconds = math.nan
    if not math.isfinite(seconds):
        raise BadRequest(f"{name} must be Unix seconds or an ISO 8601 time, got {raw[:40]!r}")
    return seconds


def find(wanted: Filters) -> dict:
    """A page of jobs matching `wanted`, newest first: `{"jobs": [...], "next": <before of the next page, or
    None>}`."""
    rows = list(page(wanted).dicts())
    more = len(rows) > wanted.limit
    rows = rows[: wanted.limit]
    return {"jobs": rows, "next": rows[-1]["id"] if more else None}


def page(wanted: Filters) -> Select:
    """The query of a page: the jobs matching `wanted`, newest first, one more than the limit (to tell whether
    another page follows)."""
    query = Job.select(*SUMMARY)
    statuses = sorted(wanted.statuses)
    services = [wanted.service] if wanted.service is not None else []
    if wanted.user_id is not None:
        query = query.where(Job.user_id == wanted.user_id)
        statuses = statuses or sorted(JOB_STATUSES)
        services = services or services_with_jobs()
    if services:
        query = query.where(Job.service.in_(services))
    if statuses:
        query = query.where(Job.status.in_(statuses))
    if wanted.since is not None:
        query = query.where(Job.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(Job.created_at < wanted.until)
    if wanted.before is not None:
        query = query.where(Job.id < wanted.before)
    return query.order_by(Job.id.desc()).limit(wanted.limit + 1)


def services_with_jobs() -> list[str]:
    """Every service that has jobs, found along the index `jobs (status, service, ...)`: one seek per status
    and service, whatever the number of jobs."""
    found = set()
    for status in sorted(JOB_STATUSES):
        service = ""
        while (service := run(server_db, NEXT_SERVICE, (status, service)).fetchone()[0]) is not None:
            found.add(service)
    return sorted(found)


def details(ctx: Context, job_id: int) -> dict:
    """One job, whatever its status: its summary, its history (each change with its time and reason), its
    `attempts` (1, and one more each time it was queued again after its client lost it), and the size of its
    result zip (None when there is none)."""
    job = get(job_id)
    events = list(
        JobEvent.select(JobEvent.src, JobEvent.dst, JobEvent.at, JobEvent.reason)
        .where(JobEvent.job == job_id)
        .order_by(JobEvent.id)
        .tuples()
    )
    try:
        result_size = result_file(ctx, job).stat().st_size if job.status == Status.COMPLETED else None
    except FileNotFoundError:
        result_size = None
    return {
        **{field.name: getattr(job, field.name) for field in SUMMARY},
        "attempts": job.attempt,
        "result_size": result_size,
        "history": [{"from": src, "to": dst, "at": at, "reason": reason} for src, dst, at, reason in events],
    }
