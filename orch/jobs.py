"""Server-side operations on jobs: create, look up, move, terminate, fetch a partial result, clean, recover
after a restart; and the queries that the tasks run.

A job's uploaded files live in `DATA_PATH/<folder>/`, its result in `DATA_PATH/<folder>.zip`, outside the
folder so that no uploaded file can stand for it. Its key, by which its client knows it, is its folder's name
(`<folder>.<n>` from its second attempt on: see `orch.attempts`).
"""

import asyncio
import logging
import re
import shutil
import time
from pathlib import Path

from peewee import fn
from tornado.ioloop import IOLoop

from orch import ownership, peers, storage, timings
from orch.config import ClientConfig
from orch.context import Context
from orch.errors import BadRequest, ClientError, Conflict, NotFound
from orch.models import Job, create, fetch, run, server_db, transition
from orch.states import ACTIVE, FINISHED, Status
from orch.wire import GONE, Destination

log = logging.getLogger(__name__)

INT32 = range(-(2**31), 2**31)
FOLDER_NAME = re.compile(r"[0-9a-f]{32}")
SEND_POLL = 0.05  # seconds between two looks at a job being sent by another server process
# Plain SQL where it runs at every round or every event (see orch.models on the cost of building queries).
DISPATCHED = 'SELECT "id", "client" FROM "jobs" WHERE "status" IN (?, ?)'
BY_KEY = 'SELECT "id", "status" FROM "jobs" WHERE "folder" = ? AND "attempt" = ?'
RUNNING_ON = 'SELECT "client", COUNT(*) FROM "jobs" WHERE "status" = ? AND "client" IS NOT NULL GROUP BY "client"'
PLACED = (
    f'SELECT "client", COUNT(*) FROM "jobs" WHERE "status" IN ({", ".join("?" * len(ACTIVE))}) '
    'AND "client" IS NOT NULL GROUP BY "client"'
)


def folder(ctx: Context, job: Job) -> Path:
    return ctx.data_path / job.folder


def result_file(ctx: Context, job: Job) -> Path:
    return ctx.data_path / f"{job.folder}.zip"


def client_of(ctx: Context, job: Job) -> ClientConfig | None:
    """The client a job is placed on, at the address recorded on it: as a service lists it if one does, else
    at that address, so it is followed to its end whatever became of the configuration. A job sent by a version
    that did not record it: its service's client if it lists one only; else None."""
    if job.client:
        return ctx.config.client_at(job.client)
    service = ctx.config.services.get(job.service)
    return service.clients[0] if service is not None and len(service.clients) == 1 else None


def key(job: Job) -> str:
    """The job's key for its current attempt: its folder's name, then `<folder>.<attempt>` from the second, so
    that a client never takes one attempt for another."""
    return job.folder if job.attempt == 1 else f"{job.folder}.{job.attempt}"


def destination(job: Job) -> Destination:
    """Where a dispatched job is: its payload on its client, under the key of its current attempt."""
    return Destination(job.dest_id, job.dest_instance, key(job))


def as_json(job: Job, message: str | None = None) -> dict:
    """The status body of the API: id, status and message."""
    return {"id": job.id, "status": job.status, "message": job.message if message is None else message}


def get(job_id: int) -> Job:
    """The job with this id; NotFound otherwise."""
    job = fetch(Job, job_id)
    if job is None:
        raise NotFound(f"Job {job_id} not found in the database", job_id)
    return job


def move(
    ctx: Context,
    job_id: int,
    src: Status,
    dst: Status,
    message: str | None = None,
    now: float | None = None,
    at_attempt: int | None = None,
    **values,
) -> bool:
    """`orch.models.transition` of a job, now (or at `now`): False if it was no longer in `src` (or, when
    `at_attempt` is given, no longer at that attempt: what a client says of an earlier one changes nothing).
    The time it waited or ran is recorded for the metrics."""
    now = ctx.clock() if now is None else now
    where = None if at_attempt is None else {"attempt": at_attempt}
    moved = transition(Job, job_id, src, dst, now, message, where, **values)
    if moved:
        timings.observe(ctx, job_id, src, dst, now)
    return moved


def dispatched() -> list[tuple[int, str | None]]:
    """(id, client address) of every job on a client: Submitted or Running."""
    return run(server_db, DISPATCHED, (Status.SUBMITTED, Status.RUNNING)).fetchall()


def by_key(job_key: str) -> tuple[int, str] | None:
    """(id, status) of the job whose current attempt has the key `job_key`; None for an earlier attempt's."""
    folder_name, _, attempt = job_key.partition(".")
    if attempt and not attempt.isdigit():
        return None
    return run(server_db, BY_KEY, (folder_name, int(attempt or 1))).fetchone()


def placed() -> dict[str, int]:
    """How many unfinished jobs (of every service) are placed on each client, by address."""
    return dict(run(server_db, PLACED, sorted(ACTIVE)).fetchall())


def running_on() -> dict[str, int]:
    """How many jobs run on each client, by address."""
    return dict(run(server_db, RUNNING_ON, (Status.RUNNING,)).fetchall())


def pins(job_ids: list[int]) -> dict[int, str]:
    """Of these queued jobs, those that must go back to the client a send of theirs may have reached: id ->
    its address."""
    if not job_ids:
        return {}
    sql = f'SELECT "id", "client" FROM "jobs" WHERE "client" IS NOT NULL AND "id" IN ({", ".join("?" * len(job_ids))})'
    return dict(run(server_db, sql, job_ids).fetchall())


def expired(before: float, limit: int) -> list[Job]:
    """At most `limit` jobs finished at or before `before`."""
    return list(
        Job.select(Job.id, Job.status, Job.folder)
        .where(Job.status.in_(sorted(FINISHED)), Job.finished_at <= before)
        .limit(limit)
    )


async def clean(ctx: Context, job: Job, now: float) -> bool:
    """Cleaned, with its files removed, for a finished job; False if it had changed meanwhile."""
    if not move(ctx, job.id, Status(job.status), Status.CLEANED, now=now):
        return False
    await IOLoop.current().run_in_executor(None, _remove_files, ctx, job)
    return True


def _remove_files(ctx: Context, job: Job) -> None:
    storage.remove(folder(ctx, job))
    result_file(ctx, job).unlink(missing_ok=True)


def create_job(ctx: Context, fields: dict[str, str], job_folder: Path) -> Job:
    """Queue a job for the files received in `job_folder` (under DATA_PATH), after checking the upload's
    fields. Raises BadRequest with the original's messages when a field is missing or wrong."""
    raw_user = fields.get("user_id")
    if raw_user is None:
        raise BadRequest("Missing user_id field")
    if not re.fullmatch(r"-?[0-9]{1,10}", raw_user) or int(raw_user) not in INT32:
        raise BadRequest("Invalid user_id, should be a number")
    service = fields.get("service")
    if service is None:
        raise BadRequest("Missing service field")
    if service not in ctx.config.services:
        configured = ", ".join(sorted(ctx.config.services)) or "none"
        raise BadRequest(f"Invalid service {service[:64]!r}: the configured services are {configured}")
    job = create(
        Job,
        Status.QUEUED,
        ctx.clock(),
        reason="uploaded",
        user_id=int(raw_user),
        service=service,
        folder=job_folder.name,
    )
    ctx.wake("sender")
    return job


async def terminate(ctx: Context, job_id: int) -> Job:
    """Stop a job: a queued one is cancelled here, a dispatched one killed on its client.

    Returns the Killed job. Raises NotFound, Conflict (already finished: nothing changes), or ClientError
    when its client cannot be reached (the job keeps its status).
    """
    deadline = time.monotonic() + ctx.config.http_timeout  # how long a send may take
    while time.monotonic() < deadline:
        job = get(job_id)
        status = Status(job.status)
        if status == Status.QUEUED:
            if move(ctx, job_id, status, Status.KILLED, "job terminated"):
                return get(job_id)
        elif status == Status.PROCESSING:  # being sent: kill it once its client has it
            if ("send", job_id) in ctx.inflight:
                await ctx.inflight.ended(("send", job_id))
            else:
                await asyncio.sleep(SEND_POLL)  # sent by another server process, or between two steps
        elif status in (Status.SUBMITTED, Status.RUNNING, Status.LOCKED):
            # Concurrent terminates of one job share a single call to its client.
            return await ctx.inflight.start(("terminate", job_id), lambda job=job: _kill_on_client(ctx, job))
        else:
            raise Conflict(f"job {job_id} is already {status}", job_id, status)
    raise Conflict(f"job {job_id} is still being sent to its client; try again", job_id, get(job_id).status)


async def _kill_on_client(ctx: Context, job: Job) -> Job:
    previous = Status(job.status)
    if previous == Status.LOCKED or not move(ctx, job.id, previous, Status.LOCKED, owner=ctx.process):
        raise Conflict(f"job {job.id} is being terminated already", job.id, Status.LOCKED)
    client = client_of(ctx, job)
    try:
        if client is None:
            raise ClientError(f"service {job.service!r} is no longer configured", 502)
        answer = await ctx.clients.kill(client, destination(job))
    except ClientError as e:
        if e.code in (404, GONE):  # the client does not have the payload: nothing of it runs there
            move(ctx, job.id, Status.LOCKED, Status.KILLED, "job terminated")
            ctx.wake("sender")
            return get(job.id)
        move(ctx, job.id, Status.LOCKED, previous)
        raise ClientError(f"could not terminate job {job.id}: {e.message}", e.code, job.id, previous) from None
    on_client = answer.get("status", Status.KILLED)  # the original client answers with no body
    if on_client in (Status.COMPLETED, Status.FAILED, Status.INVALID):
        move(ctx, job.id, Status.LOCKED, previous)
        ctx.wake("getter")
        raise Conflict(f"job {job.id} finished on its client before it could be killed ({on_client})", job.id, previous)
    move(ctx, job.id, Status.LOCKED, Status.KILLED, "job terminated")
    ctx.wake("sender")
    return get(job.id)


async def fetch_partial(ctx: Context, job: Job) -> Path:
    """Save a zip of the job's folder on its client, as it is now, to a scratch file and return its path.

    The caller streams it and removes it. Raises NotFound when the job was never dispatched or its client
    no longer has it, ClientError when the client cannot be reached.
    """
    if job.dest_id is None:
        raise NotFound("Job payload not found on client", job.id, job.status)
    client = client_of(ctx, job)
    if client is None:
        raise BadRequest("Invalid service configuration", job.id, job.status)
    spool = storage.scratch_file(ctx.tmp_path, f"partial-{job.id}", ".zip")
    try:
        await ctx.clients.retrieve_partial(client, destination(job), spool)
    except ClientError as e:
        if e.code in (404, GONE):
            raise NotFound("Job payload not found on client", job.id, job.status) from None
        raise ClientError(
            f"Error retrieving partial data from client: {e.message}", e.code, job.id, job.status
        ) from None
    return spool


def kept() -> bool:
    """Whether the database holds a job whose files are kept (any that is not Cleaned)."""
    return Job.select().where(Job.status != Status.CLEANED).exists()


def has_folders(data_path: Path) -> bool:
    """Whether `data_path` holds job folders or results."""
    return any(_is_job_entry(entry) for entry in data_path.iterdir())


def _is_job_entry(entry: Path) -> bool:
    return FOLDER_NAME.fullmatch(entry.name.removesuffix(".zip")) is not None


def release_orphans(ctx: Context, now: float) -> int:
    """Put back what a server process that is gone left half-done: jobs it was sending go back to the queue,
    jobs it was terminating back to their client (the getter resumes them); and remove its scratch folder.
    Alone on a database (SQLite), every other process is gone. Returns how many jobs."""
    alive = peers.alive(now) if ctx.config.shares_data else {ctx.process}
    released = 0
    for job in Job.select(Job.id, Job.status, Job.owner).where(Job.status.in_([Status.PROCESSING, Status.LOCKED])):
        if job.owner in alive:
            continue
        if job.status == Status.PROCESSING:
            released += move(
                ctx, job.id, Status.PROCESSING, Status.QUEUED, "the server stopped while sending it", now=now
            )
        else:
            released += move(
                ctx, job.id, Status.LOCKED, Status.SUBMITTED, "the server stopped during a terminate", now=now
            )
    scratch = ctx.config.tmp_path
    gone = (
        [entry for entry in scratch.iterdir() if entry.name not in alive]
        if ctx.config.shares_data and scratch.is_dir()
        else []
    )
    for entry in gone:
        storage.remove(entry)
    return released


def recover(ctx: Context) -> None:
    """Make the database and the disk consistent after a stop or a crash, before serving.

    What a server process that is gone left half-done is put back (`release_orphans`). Queued jobs of a service
    that is not configured wait, saying so, until it is. Folders and results that belong to no job (an upload
    cut short) are quarantined, never deleted.
    """
    now = ctx.clock()
    if not ctx.config.shares_data:
        shutil.rmtree(ctx.tmp_path, ignore_errors=True)
    release_orphans(ctx, now)
    waiting = (
        Job.select(Job.service, fn.COUNT(Job.id))
        .where(Job.status == Status.QUEUED, Job.service.not_in(list(ctx.config.services)))
        .group_by(Job.service)
        .tuples()
    )
    for name, count in sorted(waiting):
        Job.update(message=f"waiting: service {name!r} is not configured on this server").where(
            Job.status == Status.QUEUED, Job.service == name
        ).execute()
        log.warning(
            "%d queued jobs of service %r wait: it is not configured (SERVICE_%s_...)", count, name, name.upper()
        )
    for name, service in ctx.config.services.items():  # sent by a version that did not record the client
        if len(service.clients) == 1:
            Job.update(client=service.clients[0].address).where(
                Job.service == name, Job.client.is_null(), Job.dest_id.is_null(False)
            ).execute()
    entries = [entry for entry in ctx.data_path.iterdir() if _is_job_entry(entry)]
    # Read after the listing: another server process creates the job of a folder right after moving it in.
    known = {name for (name,) in Job.select(Job.folder).where(Job.status != Status.CLEANED).tuples()}
    strays = [entry for entry in entries if entry.name.removesuffix(".zip") not in known]
    ownership.quarantine(ctx.data_path, strays, now, "they belong to no job")
