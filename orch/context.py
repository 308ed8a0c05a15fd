"""What the handlers and tasks of one process share: the config, the clock, the HTTP client, the work in
flight, and a way to wake a task at once."""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from orch.config import Config
from orch.errors import OrchError
from orch.ownership import Ownership
from orch.wire import ClientAPI

log = logging.getLogger(__name__)


class Inflight:
    """Background work keyed by what it works on, e.g. ("send", job_id): at most one task per key.

    Ticks start per-item work here instead of awaiting it, so one slow client never holds up the others;
    handlers can await the task of a key (a terminate waits for a send in progress); tests and shutdown
    await `wait()`.
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def start(self, key: Hashable, work: Callable[[], Coroutine]) -> asyncio.Task:
        """The task working on `key`, started from `work()` unless one is already running."""
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._tasks[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return task

    def get(self, key: Hashable) -> asyncio.Task | None:
        return self._tasks.get(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._tasks

    def keys(self, kind: str) -> list[Hashable]:
        return [key for key in self._tasks if isinstance(key, tuple) and key[0] == kind]

    async def wait(self) -> None:
        """Return once nothing is in flight (including work started meanwhile)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def _forget(self, key: Hashable, task: asyncio.Task) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, OrchError):  # OrchErrors go to whoever awaits
            log.error("%s failed", key, exc_info=error)


class Backoff:
    """Per service, how its client has been failing: when to try again (1 s, 2 s, 4 s... up to `cap` after
    the first failure) and since when it fails. Calls made in one round at `now` count as one failure."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap = base, cap
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._down_since: dict[str, float] = {}

    def ready(self, key: str, now: float) -> bool:
        return self._retry_at.get(key, 0.0) <= now

    def failed(self, key: str, now: float) -> float:
        """Record a failure of a call made at `now`; return the delay before the next try."""
        self._down_since.setdefault(key, now)
        if now < self._retry_at.get(key, 0.0):
            return self._retry_at[key] - now  # another call of a round already counted
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = min(self.cap, self.base * 2 ** (failures - 1))
        self._retry_at[key] = now + delay
        return delay

    def down_for(self, key: str, now: float) -> float:
        """Seconds since the client's failures began (0 while it answers)."""
        return now - self._down_since.get(key, now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
        self._retry_at.pop(key, None)
        self._down_since.pop(key, None)


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


@dataclass(eq=False)
class Context:
    """Built once per process by `orchestrator.py` (and by the test fixtures)."""

    config: Config
    http: AsyncHTTPClient | None = None
    clock: Callable[[], float] = time.time
    inflight: Inflight = field(default_factory=Inflight)
    backoff: Backoff = field(default_factory=Backoff)
    changes: Changes = field(default_factory=Changes)
    repoll: set[int] = field(default_factory=set)  # jobs that changed while being polled: poll them again
    changed_early: set[int] = field(default_factory=set)  # jobs whose payload changed while their send was in flight
    # Services whose client's event stream the server follows live, with when the getter last asked about all
    # their jobs (0: due at its next round); see tasks.getter.
    streams: dict[str, float] = field(default_factory=dict)
    wakers: dict[str, Callable[[], None]] = field(default_factory=dict)
    instance: str = ""  # a client's instance id (see orch.models.Instance)
    owner: Ownership | None = None  # the locks on the database and the data folder

    def close(self) -> None:
        """Give back what the process holds: its HTTP client and its locks."""
        if self.http is not None:
            self.http.close()
        if self.owner is not None:
            self.owner.release()

    def wake(self, task: str) -> None:
        """Run the named task now rather than at its next beat (no-op when tasks are not scheduled)."""
        waker = self.wakers.get(task)
        if waker is not None:
            waker()

    @cached_property
    def clients(self) -> ClientAPI:
        return ClientAPI(self.http, self.config)

    @property
    def data_path(self) -> Path:
        return self.config.data_path

    @property
    def tmp_path(self) -> Path:
        return self.config.tmp_path
