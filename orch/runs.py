"""Running payloads (client): starting the run.sh of a Prepared payload, watching it to its end, adopting the
runs a previous client process started, and recording how each ended."""

import asyncio
import logging

from tornado.ioloop import IOLoop
from tornado.process import Subprocess

from orch import payloads, policy, processes
from orch.context import Context
from orch.models import Payload
from orch.states import Status

log = logging.getLogger(__name__)


async def start(ctx: Context, payload: Payload, now: float) -> bool:
    """Start a Prepared payload in the round at `now`: Invalid if it cannot run (no run.sh, or the blocklist
    refuses it), Failed if run.sh cannot start, else Running with its process watched until it ends. Returns
    whether it started (False too if it was killed first)."""
    try:
        refusal = await _refusal_of(ctx, payload)
        if refusal:
            payloads.move(ctx, payload.id, Status.PREPARED, Status.INVALID, refusal, now=now)
            return False
        return _spawn(ctx, payload, now)
    except Exception:
        log.exception("runner: payload %s failed", payload.id)
        for status in (Status.PREPARED, Status.RUNNING):
            payloads.move(ctx, payload.id, status, Status.FAILED, "internal error at start")
        return False


def watch_running(ctx: Context) -> None:
    """Watch every Running payload that nobody watches yet (those a previous client process started), and
    reap the orphans of runs that came to this process."""
    wrappers = set()
    for payload_id, pid in payloads.running():
        ctx.inflight.start(("run", payload_id), lambda payload_id=payload_id: _adopt(ctx, payload_id))
        wrappers.add(pid)
    processes.reap_strays(wrappers)


async def _refusal_of(ctx: Context, payload: Payload) -> str | None:
    """Why a payload cannot run: no run.sh, or the blocklist refuses it (checked off the IOLoop)."""
    script = payloads.folder(ctx, payload.id) / payloads.SCRIPT
    if not script.is_file():
        return f"{payloads.SCRIPT} not found among the job's files"
    if ctx.config.script_blocklist:
        return await IOLoop.current().run_in_executor(None, policy.check_file, script)
    return None


def _spawn(ctx: Context, payload: Payload, now: float) -> bool:
    folder = payloads.folder(ctx, payload.id)
    deadline = now + payload.walltime if payload.walltime else None
    # No await from here to the pid being stored: a kill cannot come in between.
    if not payloads.move(ctx, payload.id, Status.PREPARED, Status.RUNNING, now=now, deadline=deadline):
        return False
    try:
        process = processes.spawn(
            folder,
            folder / payloads.LOG,
            payloads.exit_file(ctx, payload.id),
            ctx.config.job_environment,
            payloads.run_of(ctx, payload).tag,
        )
    except OSError as e:
        payloads.move(
            ctx, payload.id, Status.RUNNING, Status.FAILED, f"could not start {payloads.SCRIPT}: {e}", now=now
        )
        return False
    payloads.set_process(payload.id, process.pid, processes.start_time(process.pid))
    ctx.inflight.start(("run", payload.id), lambda: _watch(ctx, payload.id, process))
    return True


async def _watch(ctx: Context, payload_id: int, process: Subprocess) -> None:
    """Wait for a run this process started, stopping it at its deadline, then record its end."""
    exited = process.wait_for_exit(raise_error=False)
    payload = payloads.get(payload_id)
    if payload.deadline is None:
        code = await exited
    else:
        try:
            code = await asyncio.wait_for(asyncio.shield(exited), max(0.0, payload.deadline - ctx.clock()))
        except TimeoutError:
            await processes.kill_tree(payloads.run_of(ctx, payload), ctx.config.kill_grace)
            code = await exited
    _finish(ctx, payload_id, code)


async def _adopt(ctx: Context, payload_id: int) -> None:
    """Watch a run started by a previous client process: poll until it is gone (stopping it at its
    deadline), then take its exit status from the control file its wrapper writes.

    A run whose pid was not recorded is looked for; if there is none and no exit status either, run.sh
    never started: the payload goes back to Prepared and starts now."""
    payload = payloads.get(payload_id)
    exit_file = payloads.exit_file(ctx, payload_id)
    pid, started_at = payload.pid, payload.started_at
    if not processes.alive(pid, started_at) and not exit_file.exists():
        found = processes.find_run(exit_file)
        if found is None and pid == 0:
            payloads.move(
                ctx, payload_id, Status.RUNNING, Status.PREPARED, f"the client stopped before {payloads.SCRIPT} started"
            )
            ctx.wake("runner")
            return
        if found is not None:
            pid, started_at = found
            payloads.set_process(payload_id, pid, started_at)
    while processes.alive(pid, started_at):
        if payload.deadline is not None and ctx.clock() >= payload.deadline:
            await processes.kill_tree(payloads.run_of(ctx, payloads.get(payload_id)), ctx.config.kill_grace)
        await asyncio.sleep(ctx.config.runner_interval)
    _finish(ctx, payload_id, processes.read_exit_code(exit_file))


def _finish(ctx: Context, payload_id: int, code: int | None) -> None:
    """Record how a run ended: Killed if asked to, Completed on exit status 0, Failed otherwise (with
    "timeout" in the message when it was stopped at its deadline)."""
    payload = payloads.get(payload_id)
    processes.kill_leftovers(payloads.run_of(ctx, payload))  # whatever it left running in the background
    if payload.killed:
        status, message = Status.KILLED, "killed on request"
    elif code == 0:
        status, message = Status.COMPLETED, ""
    elif payload.deadline is not None and ctx.clock() >= payload.deadline:
        status, message = (
            Status.FAILED,
            (f"timeout: {payloads.SCRIPT} ran longer than {payload.walltime:g} s and was stopped"),
        )
    elif code is None:
        status, message = Status.FAILED, f"{payloads.SCRIPT} ended while the client was down, leaving no exit status"
    elif code < 0:
        status, message = Status.FAILED, f"{payloads.SCRIPT} was killed by signal {-code}"
    else:
        status, message = Status.FAILED, f"{payloads.SCRIPT} exited with code {code}"
    moved = payloads.move(ctx, payload_id, Status.RUNNING, status, message, exit_code=code)
    ctx.wake("runner")  # its slot is free
    if moved and status == Status.COMPLETED:
        payloads.start_zip(ctx, payload_id)  # ready by the time the server asks for it
