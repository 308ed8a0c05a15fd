"""Client-side operations on payloads: create, look up, move, kill, zip, report changes, clean, recover after a
restart; and the queries that the tasks run.

A payload's folder is `DATA_PATH/<id>/`: the files the server sent, whatever `run.sh` writes, and `run.log`
(its stdout and stderr). What the client itself keeps about a payload (the exit status the wrapper recorded,
the result zip, the latest partial zip) lives in `DATA_PATH/.control/` (0700), out of the folder that the job
writes and that gets zipped, and out of its sandbox.
"""

import asyncio
import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tornado.ioloop import IOLoop

from orch import executors, ownership, processes, storage, zipping
from orch.context import Context
from orch.errors import BadRequest, NotFound
from orch.models import Payload, client_db, create, fetch, run, set_values, transition
from orch.states import FINISHED, Status

log = logging.getLogger(__name__)

SCRIPT = "run.sh"
LOG = "run.log"
# Plain SQL where it runs for every job or every round (see orch.models on the cost of building queries).
LAST_EVENT = 'SELECT MAX("id") FROM "payload_events"'
EVENTS_AFTER = (
    'SELECT e."id", e."payload_id", e."dst", p."job_key" FROM "payload_events" e '
    'JOIN "payloads" p ON p."id" = e."payload_id" WHERE e."id" > ? ORDER BY e."id" LIMIT ?'
)
BY_JOB_KEY = 'SELECT "id" FROM "payloads" WHERE "job_key" = ?'
PREPARED = 'SELECT "id" FROM "payloads" WHERE "status" = ? ORDER BY "id" LIMIT ?'
RUNNING = 'SELECT "id", "pid" FROM "payloads" WHERE "status" = ?'
COUNT = 'SELECT COUNT(*) FROM "payloads" WHERE "status" = ?'
STARTED_BY = 'SELECT "executor", COUNT(*) FROM "payloads" WHERE "status" = ? GROUP BY "executor"'
JOB_KEY = re.compile(r"[\x21-\x7e]{1,128}")  # it travels back in a response header
SERVICE = re.compile(r"[a-z0-9_]{1,100}")
MAX_WALLTIME = 10 * 365 * 86400


class Changes:
    """Wakes whoever waits for the next change (a long-poll of the client's events)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future] = set()

    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Return at the next change, or after `timeout` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)


@dataclass
class Client:
    """What a client process knows of itself beyond its database."""

    instance: str = ""  # its instance id (see orch.models.Instance), which names it in every answer
    changes: Changes = field(default_factory=Changes)


def identify(ctx: Context, instance: str) -> None:
    """Set the client's instance id, read from its database at start-up."""
    ctx.state(Client).instance = instance


def instance(ctx: Context) -> str:
    """The client's instance id."""
    return ctx.state(Client).instance


def folder(ctx: Context, payload_id: int) -> Path:
    return ctx.data_path / str(payload_id)


def control_path(ctx: Context) -> Path:
    return ctx.data_path / ".control"


def exit_file(ctx: Context, payload_id: int) -> Path:
    return control_path(ctx) / f"{payload_id}.exit"


def result_file(ctx: Context, payload_id: int) -> Path:
    return control_path(ctx) / f"{payload_id}.zip"


def partial_file(ctx: Context, payload_id: int) -> Path:
    return control_path(ctx) / f"{payload_id}.partial.zip"


def as_json(ctx: Context, payload: Payload) -> dict:
    """The Payload body the original client sends (`input` stays empty: the files are not echoed back),
    with the reason of its status, its exit code and the job it belongs to."""
    return {
        "id": payload.id,
        "input": {},
        "status": payload.status,
        "loc": str(folder(ctx, payload.id)),
        "pid": payload.pid,
        "killed": payload.killed,
        "message": payload.message,
        "exit_code": payload.exit_code,
        "job_key": payload.job_key,
    }


def run_of(ctx: Context, payload: Payload) -> processes.Run:
    """The run of a payload's run.sh, tagged with the client instance and the payload id."""
    return processes.Run(payload.pid, payload.started_at, f"{instance(ctx)}.{payload.id}")


def move(
    ctx: Context,
    payload_id: int,
    src: Status,
    dst: Status,
    message: str | None = None,
    now: float | None = None,
    **values,
) -> bool:
    """`orch.models.transition` of a payload, now (or at `now`), waking the long-polls of /events when it
    moved; False if it was no longer in `src`."""
    moved = transition(Payload, payload_id, src, dst, ctx.clock() if now is None else now, message, **values)
    if moved:
        ctx.state(Client).changes.notify()
    return moved


def set_run(payload_id: int, run_id: str) -> None:
    """Record the executor's id for a payload's run (its Slurm job id)."""
    set_values(Payload, payload_id, run_id=run_id)


def set_process(payload_id: int, pid: int, started_at: float | None) -> None:
    """Record the process running a payload's run.sh (its wrapper's pid and start time)."""
    set_values(Payload, payload_id, pid=pid, started_at=started_at)


def get(payload_id: int) -> Payload:
    payload = fetch(Payload, payload_id)
    if payload is None:
        raise NotFound(f"Payload {payload_id} not found", payload_id)
    return payload


def create_payload(ctx: Context, staging: Path, fields: dict[str, str]) -> Payload:
    """Record a payload Prepared for the files received in `staging`, which becomes its folder.

    `fields` may name the job (`job_key`): if a payload of that job exists, it is returned and the files
    are dropped, so a repeated submit never runs a job twice. `timeout` is its walltime in seconds; `network`
    false cuts its network; `service` names its service (for settings the client has per service).
    """
    job_key = fields.get("job_key") or None
    if job_key is not None and not JOB_KEY.fullmatch(job_key):
        raise BadRequest("job_key must be 1 to 128 printable ASCII characters without spaces")
    service = fields.get("service") or None
    if service is not None and not SERVICE.fullmatch(service):
        raise BadRequest(f"service must be a service name (a-z, 0-9, _), got {service[:40]!r}")
    walltime = _walltime(fields.get("timeout"))
    network = fields.get("network", "true")
    if network not in ("true", "false"):
        raise BadRequest(f"network must be true or false, got {network[:40]!r}")
    existing = run(client_db, BY_JOB_KEY, (job_key,)).fetchone() if job_key else None
    if existing is not None:
        storage.remove(staging)
        return fetch(Payload, existing[0])
    with client_db.atomic():
        payload = create(
            Payload,
            Status.PREPARED,
            ctx.clock(),
            reason="submitted",
            job_key=job_key,
            walltime=walltime,
            network=network == "true",
            service=service,
        )
        staging.rename(folder(ctx, payload.id))
    ctx.wake("runner")
    return payload


def _walltime(raw: str | None) -> float | None:
    if not raw:
        return None
    try:
        walltime = float(raw)
    except ValueError:
        walltime = 0.0
    if not 0 < walltime <= MAX_WALLTIME:
        raise BadRequest(f"timeout must be a number of seconds between 0 and {MAX_WALLTIME}, got {raw[:40]!r}")
    return walltime


async def kill(ctx: Context, payload: Payload) -> Payload:
    """Stop a payload for good: a Prepared one never starts, a Running one's run is stopped by its executor (its
    whole process tree, its whole Slurm job), and the zip of its result if it had got that far, and the payload
    is Killed once it is gone. A finished payload is left as it is."""
    set_values(Payload, payload.id, killed=True)
    payload = get(payload.id)  # read again: no await since `killed` was set, so no start in between
    if payload.status == Status.PREPARED:
        move(ctx, payload.id, Status.PREPARED, Status.KILLED, "killed before it started")
    elif payload.status == Status.RUNNING:
        zipping.stop(ctx, payload.id)  # a zip that starts later sees `killed` and does not
        await executors.of(ctx).kill(payload)
        await ctx.inflight.ended(("run", payload.id))  # what follows the run records the Killed status
    return get(payload.id)


async def result_zip(ctx: Context, payload: Payload) -> Path:
    """The zip of a Completed payload's folder (built before it completed; rebuilt if it went missing)."""
    path = result_file(ctx, payload.id)
    if not path.exists():
        await zipping.result(ctx, payload.id, folder(ctx, payload.id), path, None)
    return path


def events_after(after: int | None, limit: int = 1000) -> tuple[int, list[dict]]:
    """The status changes of payloads after the sequence number `after` (oldest first, at most `limit`) and
    the sequence number to ask from next time. With `after` None, or beyond the last change (a database that
    was replaced), none: just where the sequence stands."""
    last = run(client_db, LAST_EVENT).fetchone()[0] or 0
    if after is None or after > last:
        return last, []
    rows = run(client_db, EVENTS_AFTER, (after, limit)).fetchall()
    events = [
        {"seq": seq, "id": payload_id, "job_key": job_key, "status": status}
        for seq, payload_id, status, job_key in rows
    ]
    return (events[-1]["seq"] if events else after), events


async def wait_events(ctx: Context, after: int | None, wait: float) -> tuple[int, list[dict]]:
    """`events_after`, waiting up to `wait` seconds for a change when there is none yet after `after`."""
    last, events = events_after(after)
    if not events and after is not None and after <= last:
        await ctx.state(Client).changes.wait(wait)
        last, events = events_after(after)
    return last, events


async def partial_zip(ctx: Context, payload: Payload) -> BinaryIO:
    """A zip of the payload's folder as it is now (or was, at most a few seconds ago: one is shared by every
    download meanwhile), open for reading; the caller closes it. Only a running payload keeps its partial zip."""
    if not folder(ctx, payload.id).is_dir():
        raise NotFound(f"Payload {payload.id} has no files any more ({payload.status})", payload.id, payload.status)
    while True:
        try:
            zipped = await zipping.partial(ctx, payload.id, folder(ctx, payload.id), partial_file(ctx, payload.id))
            break
        except storage.ZipStopped:
            pass  # its run was stopped meanwhile (killed, or out of time): a zip of what it left
    if get(payload.id).status != Status.RUNNING:  # its run is over (or has not begun): the download keeps its copy
        zipping.forget_partial(ctx, payload.id, partial_file(ctx, payload.id))
    return zipped


def _in_executor(function, *args) -> asyncio.Future:
    return IOLoop.current().run_in_executor(None, function, *args)


def prepared(limit: int) -> list[Payload]:
    """At most `limit` Prepared payloads, oldest first."""
    return [fetch(Payload, payload_id) for (payload_id,) in run(client_db, PREPARED, (Status.PREPARED, limit))]


def running() -> list[tuple[int, int]]:
    """(id, pid) of every Running payload."""
    return run(client_db, RUNNING, (Status.RUNNING,)).fetchall()


def started_by() -> dict[str | None, int]:
    """How many Running payloads each executor started (None: recorded before executors were)."""
    return dict(run(client_db, STARTED_BY, (Status.RUNNING,)).fetchall())


def count(status: Status) -> int:
    """How many payloads are in `status`."""
    return run(client_db, COUNT, (status,)).fetchone()[0]


def expired(before: float, limit: int) -> list[Payload]:
    """At most `limit` payloads finished at or before `before`."""
    return list(
        Payload.select(Payload.id, Payload.status)
        .where(Payload.status.in_(sorted(FINISHED)), Payload.finished_at <= before)
        .limit(limit)
    )


async def clean(ctx: Context, payload: Payload, now: float) -> bool:
    """Cleaned, with its folder and control files removed, for a finished payload; False if it had changed
    meanwhile."""
    if not move(ctx, payload.id, Status(payload.status), Status.CLEANED, now=now):
        return False
    await _in_executor(_remove_files, ctx, payload.id)
    return True


def stop_leftovers(ctx: Context) -> int:
    """Stop what finished runs left running outside their process group; return how many processes."""
    return processes.sweep(instance(ctx), {payload_id for payload_id, _ in running()})


def kept() -> bool:
    """Whether the database holds a payload whose files are kept (any that is not Cleaned)."""
    return Payload.select().where(Payload.status != Status.CLEANED).exists()


def has_folders(data_path: Path) -> bool:
    """Whether `data_path` holds payload folders."""
    return any(entry.name.isdigit() for entry in data_path.iterdir())


def recover(ctx: Context) -> None:
    """Make the disk consistent with the database before serving: scratch space emptied; folders and control
    files that belong to no live payload quarantined, never deleted. (Running payloads are picked up by the
    runner.)"""
    shutil.rmtree(ctx.tmp_path, ignore_errors=True)
    control_path(ctx).mkdir(mode=0o700, parents=True, exist_ok=True)
    control_path(ctx).chmod(0o700)  # made 0755 by older versions
    ctx.data_path.chmod(0o711)  # job users may go through to their folder, not list the others
    kept = {
        str(payload_id) for (payload_id,) in Payload.select(Payload.id).where(Payload.status != Status.CLEANED).tuples()
    }
    strays = [entry for entry in ctx.data_path.iterdir() if entry.name.isdigit() and entry.name not in kept]
    strays += [entry for entry in control_path(ctx).iterdir() if entry.name.split(".")[0] not in kept]
    ownership.quarantine(ctx.data_path, strays, ctx.clock(), "they belong to no payload")


def _remove_files(ctx: Context, payload_id: int) -> None:
    """Remove everything a payload has on disk (blocking)."""
    storage.remove(folder(ctx, payload_id))
    for path in (exit_file(ctx, payload_id), result_file(ctx, payload_id), partial_file(ctx, payload_id)):
        path.unlink(missing_ok=True)
