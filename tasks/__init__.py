"""Scheduling of the background tasks: each runs its tick on a steady beat and can be woken at once.

The ticks themselves (one module each) take the context and `now`, do one round and return a count; they
know nothing of timing, so tests call them directly with any `now`.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta

from tornado.ioloop import IOLoop, PeriodicCallback

from orch.context import Context
from tasks.cleaner import clean_jobs, clean_payloads
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tasks.watcher import follow_events

log = logging.getLogger(__name__)

Tick = Callable[[Context, float], Awaitable[int]]


class Beat:
    """Runs `tick` every `interval` seconds and whenever `wake()` is called, never two rounds at once:
    a wake during a round runs one more round right after it, so no event is missed."""

    def __init__(self, ctx: Context, name: str, tick: Tick, interval: float):
        self.ctx, self.name, self.tick = ctx, name, tick
        self._periodic = PeriodicCallback(self.wake, timedelta(seconds=interval))
        self._running = False
        self._again = False

    def start(self) -> None:
        self.ctx.wakers[self.name] = self.wake
        self._periodic.start()
        self.wake()

    def stop(self) -> None:
        self._periodic.stop()
        self.ctx.wakers.pop(self.name, None)

    def wake(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        IOLoop.current().add_callback(self._run)

    async def _run(self) -> None:
        try:
            self._again = True
            while self._again and self._periodic.is_running():
                self._again = False
                try:
                    await self.tick(self.ctx, self.ctx.clock())
                except Exception:
                    log.exception("%s: round failed", self.name)
        finally:
            self._running = False


class Watch:
    """A task that runs until stopped (the event stream of one client)."""

    def __init__(self, work: Coroutine) -> None:
        self._task = asyncio.ensure_future(work)

    def stop(self) -> None:
        self._task.cancel()


def start_tasks(ctx: Context) -> list[Beat | Watch]:
    """Start the tasks of the context's mode; stop each with `stop()`."""
    config = ctx.config
    if config.mode == "server":
        plan = [("sender", send_queued, config.sender_interval), ("getter", poll_dispatched, config.getter_interval),
                ("cleaner", clean_jobs, config.cleaner_interval)]
    else:
        plan = [("runner", start_prepared, config.runner_interval),
                ("cleaner", clean_payloads, config.cleaner_interval)]
    beats = [Beat(ctx, name, tick, interval) for name, tick, interval in plan]
    for beat in beats:
        beat.start()
    watches = [Watch(follow_events(ctx, service)) for service in config.services.values()]
    return beats + watches
