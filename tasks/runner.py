"""Runner (client): starts the run.sh of prepared payloads and records how each run ends."""

import asyncio
import logging

from tornado.process import Subprocess

from orch import payloads, processes
from orch.context import Context
from orch.models import Payload, transition
from orch.states import Status

log = logging.getLogger(__name__)

BATCH = 100


async def start_prepared(ctx: Context, now: float) -> int:
    """Start the Prepared payloads (oldest first) and watch every Running one that nobody watches yet (those
    a previous client process started); return how many were started."""
    started = 0
    prepared = Payload.select().where(Payload.status == Status.PREPARED.value).order_by(Payload.id).limit(BATCH)
    for payload in list(prepared):
        try:
            started += start(ctx, payload, now)
        except Exception:
            log.exception("runner: payload %s failed", payload.id)
            for status in (Status.PREPARED, Status.RUNNING):
                transition(Payload, payload.id, status, Status.FAILED, ctx.clock(), "internal error at start")
    for (payload_id,) in Payload.select(Payload.id).where(Payload.status == Status.RUNNING.value).tuples():
        ctx.inflight.start(("run", payload_id), lambda payload_id=payload_id: adopt(ctx, payload_id))
    return started


def start(ctx: Context, payload: Payload, now: float) -> bool:
    """Start one payload's run.sh: Invalid without a run.sh, Failed if it cannot start, else Running with
    its process watched until it ends. False if the payload was killed first."""
    folder = payloads.folder(ctx, payload.id)
    if not (folder / payloads.SCRIPT).is_file():
        transition(Payload, payload.id, Status.PREPARED, Status.INVALID, now,
                   f"{payloads.SCRIPT} not found among the job's files")
        return False
    # No await from here to the pid being stored: a kill cannot come in between.
    if not transition(Payload, payload.id, Status.PREPARED, Status.RUNNING, now):
        return False
    try:
        process = processes.spawn(folder, folder / payloads.LOG, payloads.exit_file(ctx, payload.id), env=None)
    except OSError as e:
        transition(Payload, payload.id, Status.RUNNING, Status.FAILED, now, f"could not start {payloads.SCRIPT}: {e}")
        return False
    Payload.update(pid=process.pid, started_at=processes.start_time(process.pid)).where(
        Payload.id == payload.id).execute()
    ctx.inflight.start(("run", payload.id), lambda: watch(ctx, payload.id, process))
    return True


async def watch(ctx: Context, payload_id: int, process: Subprocess) -> None:
    """Wait for a run this process started, then record its end."""
    code = await process.wait_for_exit(raise_error=False)
    finish(ctx, payload_id, code)


async def adopt(ctx: Context, payload_id: int) -> None:
    """Watch a run started by a previous client process: poll until it is gone, then take its exit status
    from the control file its wrapper writes."""
    payload = Payload.get_by_id(payload_id)
    while processes.alive(payload.pid, payload.started_at):
        await asyncio.sleep(ctx.config.runner_interval)
    finish(ctx, payload_id, processes.read_exit_code(payloads.exit_file(ctx, payload_id)))


def finish(ctx: Context, payload_id: int, code: int | None) -> None:
    """Record how a run ended: Killed if asked to, Completed on exit status 0, Failed otherwise."""
    payload = Payload.get_by_id(payload_id)
    processes.kill_group(payload.pid, payload.started_at)  # whatever it left running in the background
    if payload.killed:
        status, message = Status.KILLED, "killed on request"
    elif code == 0:
        status, message = Status.COMPLETED, ""
    elif code is None:
        status, message = Status.FAILED, f"{payloads.SCRIPT} ended while the client was down, leaving no exit status"
    elif code < 0:
        status, message = Status.FAILED, f"{payloads.SCRIPT} was killed by signal {-code}"
    else:
        status, message = Status.FAILED, f"{payloads.SCRIPT} exited with code {code}"
    transition(Payload, payload_id, Status.RUNNING, status, ctx.clock(), message, exit_code=code)
