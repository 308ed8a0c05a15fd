"""Running payloads (client): the lifecycle that every executor (orch.executors) shares. A Prepared payload is
refused (Invalid) when it cannot run, else recorded Running, with its executor and its deadline, before its executor
starts it; what waits for the end of its run, or of one a previous client process started, then zips the result of
those that succeed and records how each ended."""

import logging
from collections.abc import Awaitable

from tornado.ioloop import IOLoop

from orch import executors, payloads, policy, sandbox, storage, zipping
from orch.context import Context
from orch.executors import Ending
from orch.models import Payload
from orch.states import Status

log = logging.getLogger(__name__)


async def start(ctx: Context, payload: Payload, now: float) -> bool:
    """Start a Prepared payload in the round at `now`: Invalid if it cannot run (no run.sh, or the blocklist
    refuses it), Failed if run.sh cannot start, else Running with its run followed until it ends. Returns
    whether it started (False too if it was killed first, or if every job user is busy: it waits)."""
    try:
        refusal = await _refusal_of(ctx, payload)
        if refusal:
            payloads.move(ctx, payload.id, Status.PREPARED, Status.INVALID, refusal, now=now)
            return False
        return _begin(ctx, payload, now)
    except Exception:
        log.exception("runner: payload %s failed", payload.id)
        for status in (Status.PREPARED, Status.RUNNING):
            payloads.move(ctx, payload.id, status, Status.FAILED, "internal error at start")
        return False


def follow(ctx: Context) -> None:
    """Follow every Running payload that nobody follows yet (those a previous client process started), through
    the executor, and give the executor its round."""
    executor = executors.of(ctx)
    running = payloads.running()
    for payload_id, _ in running:
        ctx.inflight.start(("run", payload_id), lambda payload_id=payload_id: _adopt(ctx, payload_id))
    executor.follow(running)


async def _refusal_of(ctx: Context, payload: Payload) -> str | None:
    """Why a payload cannot run: no run.sh, or the blocklist refuses it (checked off the IOLoop)."""
    script = payloads.folder(ctx, payload.id) / payloads.SCRIPT
    if not script.is_file():
        return f"{payloads.SCRIPT} not found among the job's files"
    if ctx.config.script_blocklist:
        return await IOLoop.current().run_in_executor(None, policy.check_file, script)
    return None


def _begin(ctx: Context, payload: Payload, now: float) -> bool:
    executor = executors.of(ctx)
    box = sandbox.of(ctx)
    if box.bwrap is None and not payload.network:
        message = "its service cuts the network of its jobs, and this client runs jobs without a sandbox"
        payloads.move(ctx, payload.id, Status.PREPARED, Status.FAILED, message, now=now)
        return False
    running = [payloads.folder(ctx, payload_id) for payload_id, _ in payloads.running()] if box.pool else []
    user = box.free_user(running)
    if box.users and user is None:
        return False  # every job user has a payload running: this one waits for the first to end
    deadline = executor.deadline(payload, now)
    # No await from here to the executor's start: a kill cannot come in between.
    if not payloads.move(
        ctx, payload.id, Status.PREPARED, Status.RUNNING, now=now, deadline=deadline, executor=executor.name
    ):
        return False
    try:
        ending = executor.start(payloads.get(payload.id), user)
    except OSError as e:
        box.take_back(payloads.folder(ctx, payload.id))  # it may have been handed to the job user already
        payloads.move(
            ctx, payload.id, Status.RUNNING, Status.FAILED, f"could not start {payloads.SCRIPT}: {e}", now=now
        )
        return False
    ctx.inflight.start(("run", payload.id), lambda: _finish_after(ctx, payload.id, ending))
    return True


async def _adopt(ctx: Context, payload_id: int) -> None:
    """Follow a run that a previous client process started to its end. One that never started (the client
    stopped in between) goes back to Prepared and starts now, unless it was killed meanwhile."""
    ending = await executors.of(ctx).adopt(payloads.get(payload_id))
    if ending is not None or payloads.get(payload_id).killed:
        await finish(ctx, payload_id, ending or Ending(None))
        return
    payloads.move(
        ctx, payload_id, Status.RUNNING, Status.PREPARED, f"the client stopped before {payloads.SCRIPT} started"
    )
    ctx.wake("runner")


async def _finish_after(ctx: Context, payload_id: int, ending: Awaitable[Ending]) -> None:
    await finish(ctx, payload_id, await ending)


async def finish(ctx: Context, payload_id: int, ending: Ending) -> None:
    """Record how a run ended: Killed if asked to, Completed on exit status 0 once its result is zipped, Failed
    otherwise (with "timeout" in the message when it was stopped at its deadline, zipping included), or as its
    executor says (Slurm's failure states)."""
    payload = payloads.get(payload_id)
    code = ending.code
    folder = payloads.folder(ctx, payload_id)
    sandbox.of(ctx).take_back(folder)
    zip_error = None
    if code == 0 and not ending.reason and not payload.killed:  # no await between this look and the zip's start
        try:
            await zipping.result(ctx, payload_id, folder, payloads.result_file(ctx, payload_id), payload.deadline)
        except storage.ZipStopped:
            pass  # killed: the payload says so
        except TimeoutError:
            zip_error = f"timeout: {payloads.SCRIPT} and the zip of its result took longer than {payload.walltime:g} s"
        except OSError as e:
            zip_error = f"its result could not be zipped: {e.strerror or e}"
    zipping.forget_partial(ctx, payload_id, payloads.partial_file(ctx, payload_id))
    payload = payloads.get(payload_id)
    if payload.killed:
        status, message = Status.KILLED, "killed on request"
    elif zip_error:
        status, message = Status.FAILED, zip_error
    elif code == 0 and not ending.reason:
        status, message = Status.COMPLETED, ""
    elif payload.deadline is not None and ctx.clock() >= payload.deadline:
        status, message = (
            Status.FAILED,
            (f"timeout: {payloads.SCRIPT} ran longer than {payload.walltime:g} s and was stopped"),
        )
    elif ending.reason:
        status, message = ending.status, ending.reason
    elif code is None:
        status, message = Status.FAILED, f"{payloads.SCRIPT} ended while the client was down, leaving no exit status"
    elif code < 0:
        status, message = Status.FAILED, f"{payloads.SCRIPT} was killed by signal {-code}"
    else:
        status, message = Status.FAILED, f"{payloads.SCRIPT} exited with code {code}"
    payloads.move(ctx, payload_id, Status.RUNNING, status, message, exit_code=code)
    ctx.wake("runner")  # its slot is free
