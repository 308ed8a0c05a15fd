"""Scheduling of the background tasks: each runs its tick on a steady beat and can be woken at once.

The ticks themselves (one module each) take the context and `now`, ask the domain (`orch/`) what is due,
hand each item to it, and return a count; they know nothing of timing, so tests call them directly with any
`now`.
"""

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from tornado.ioloop import IOLoop, PeriodicCallback

from orch import peers, tracking
from orch.context import Context
from tasks.announcer import announce_client
from tasks.cleaner import clean_jobs, clean_payloads
from tasks.getter import poll_dispatched
from tasks.heartbeat import heartbeat
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tasks.watcher import follow_clients

log = logging.getLogger(__name__)

Tick = Callable[[Context, float], Awaitable[int]]
WATCHER_INTERVAL = 1.0  # seconds between two looks at which clients this process follows
HEARTBEAT_INTERVAL = peers.LEASE / 3  # a process stays alive in its peers' eyes through two missed beats
ANNOUNCER_INTERVAL = 0.5  # seconds between two looks at whether a client should announce itself again


class Beat:
    """Runs `tick` every `interval` seconds and whenever `wake()` is called, never two rounds at once:
    a wake during a round runs one more round right after it, so no event is missed. `on_stop` ends what
    the ticks left running (the streams a watcher follows)."""

    def __init__(
        self, ctx: Context, name: str, tick: Tick, interval: float, on_stop: Callable[[Context], None] | None = None
    ):
        self.ctx, self.name, self.tick, self.on_stop = ctx, name, tick, on_stop
        self._periodic = PeriodicCallback(self.wake, timedelta(seconds=interval))
        self._running = False
        self._again = False

    def start(self) -> None:
        self.ctx.on_wake(self.name, self.wake)
        self._periodic.start()
        self.wake()

    def stop(self) -> None:
        self._periodic.stop()
        self.ctx.on_wake(self.name, None)
        if self.on_stop is not None:
            self.on_stop(self.ctx)

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


def start_tasks(ctx: Context) -> list[Beat]:
    """Start the tasks of the context's mode; stop each with `stop()`."""
    config = ctx.config
    if config.mode == "server":
        beats = [
            Beat(ctx, "sender", send_queued, config.sender_interval),
            Beat(ctx, "getter", poll_dispatched, config.getter_interval),
            Beat(ctx, "watcher", follow_clients, WATCHER_INTERVAL, on_stop=tracking.unfollow_all),
            Beat(ctx, "heartbeat", heartbeat, HEARTBEAT_INTERVAL),
            Beat(ctx, "cleaner", clean_jobs, config.cleaner_interval),
        ]
    else:
        beats = [
            Beat(ctx, "runner", start_prepared, config.runner_interval),
            Beat(ctx, "cleaner", clean_payloads, config.cleaner_interval),
        ]
        if config.server_url:
            beats.append(Beat(ctx, "announcer", announce_client, ANNOUNCER_INTERVAL))
    for beat in beats:
        beat.start()
    return beats
