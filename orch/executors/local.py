"""The local executor (EXECUTOR=local, the default): each run.sh runs on this machine, under the `sh` wrapper that
records its exit status (orch.processes), in its bubblewrap sandbox and as its job user (orch.sandbox). A run
outlives a client restart: the next client process finds it by its pid (or its wrapper's command line) and
follows it to its end. Stopping a run stops its whole process tree, whatever left the tree or the group."""

import asyncio
import os
from collections.abc import Awaitable

import psutil
from tornado.process import Subprocess

from orch import payloads, processes, sandbox
from orch.executors import Ending, Executor, Load
from orch.models import Payload
from orch.sandbox import JobUser


class Local(Executor):
    name = "local"

    def __init__(self, ctx):
        super().__init__(ctx)
        sandbox.setup(ctx)

    def deadline(self, payload: Payload, now: float) -> float | None:
        return now + payload.walltime if payload.walltime else None

    def start(self, payload: Payload, user: JobUser | None) -> Awaitable[Ending]:
        process = launch(self.ctx, payload, user)
        payloads.set_process(payload.id, process.pid, processes.start_time(process.pid))
        return self._watch(payload.id, process)

    async def _watch(self, payload_id: int, process: Subprocess) -> Ending:
        """Wait for a run this process started, stopping it at its deadline."""
        exited = process.wait_for_exit(raise_error=False)
        payload = payloads.get(payload_id)
        if payload.deadline is None:
            code = await exited
        else:
            try:
                code = await asyncio.wait_for(asyncio.shield(exited), max(0.0, payload.deadline - self.ctx.clock()))
            except TimeoutError:
                await processes.kill_tree(payloads.run_of(self.ctx, payload), self.ctx.config.kill_grace)
                code = await exited
        return self._ended(payload_id, code)

    async def adopt(self, payload: Payload) -> Ending | None:
        """Poll a run started by a previous client process until it is gone (stopping it at its deadline), then
        take its exit status from the control file its wrapper writes.

        A run whose pid was not recorded is looked for; if there is none and no exit status either, run.sh
        never started."""
        ctx = self.ctx
        exit_file = payloads.exit_file(ctx, payload.id)
        pid, started_at = payload.pid, payload.started_at
        if not processes.alive(pid, started_at) and not exit_file.exists():
            found = processes.find_run(exit_file)
            if found is None and pid == 0:
                return None
            if found is not None:
                pid, started_at = found
                payloads.set_process(payload.id, pid, started_at)
        while processes.alive(pid, started_at):
            if payload.deadline is not None and ctx.clock() >= payload.deadline:
                await processes.kill_tree(payloads.run_of(ctx, payloads.get(payload.id)), ctx.config.kill_grace)
            await asyncio.sleep(ctx.config.runner_interval)
        return self._ended(payload.id, processes.read_exit_code(exit_file))

    def _ended(self, payload_id: int, code: int | None) -> Ending:
        # Whatever the run left running in the background goes with it.
        processes.kill_leftovers(payloads.run_of(self.ctx, payloads.get(payload_id)))
        return Ending(code)

    def follow(self, running: list[tuple[int, int]]) -> None:
        processes.reap_strays({pid for _, pid in running})  # orphans of runs that came to this process

    async def kill(self, payload: Payload) -> None:
        await processes.kill_tree(payloads.run_of(self.ctx, payload), self.ctx.config.kill_grace)

    def load(self, running: int) -> Load:
        return Load(os.getloadavg()[0], os.cpu_count() or 1)

    def percent(self, running: int) -> float:
        return psutil.cpu_percent(interval=None)  # since the previous call (the first is at start-up)


def launch(ctx, payload: Payload, user: JobUser | None) -> Subprocess:
    """Start the run.sh of a payload as `user` (None: as the client), in its sandbox if the client has one,
    with its folder handed over to that user. Raises OSError if it cannot."""
    folder = payloads.folder(ctx, payload.id)
    box = sandbox.of(ctx)
    box.hand_over(folder, user)
    return processes.spawn(
        folder,
        folder / payloads.LOG,
        payloads.exit_file(ctx, payload.id),
        box.environment(ctx.config.job_environment, user),
        payloads.run_of(ctx, payload).tag,
        box.command(folder, user, payload.network, list(processes.RUN)),
        None if user is None else (user.uid, user.gid),
    )
