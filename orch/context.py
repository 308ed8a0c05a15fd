"""What every part of one process shares: the config, the clock, the HTTP client, the work in flight, and a way
to wake a task at once. State that belongs to one mode lives in the module that owns it (`ctx.state(Kind)`)."""

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from tornado.httpclient import AsyncHTTPClient

from orch.config import Config
from orch.errors import OrchError
from orch.ownership import Ownership
from orch.wire import ClientAPI

log = logging.getLogger(__name__)

T = TypeVar("T")


class Inflight:
    """Background work keyed by what it works on, e.g. ("send", job_id): at most one task per key.

    Ticks start per-item work here instead of awaiting it, so one slow client never holds up the others;
    handlers can await the task of a key (a terminate waits for a send in progress); tests and shutdown
    await `wait()`.
    """

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task] = {}

    def start(self, key: Hashable, work: Callable[[], Coroutine]) -> asyncio.Task:
        """The task working on `key`, started from `work()` unless one is already running (one that has just
        ended, its end not yet recorded, is not: work asked for now is never dropped)."""
        task = self._tasks.get(key)
        if task is None or task.done():
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

    async def ended(self, key: Hashable) -> None:
        """Return once the task working on `key`, if there is one, has ended (whatever its outcome)."""
        task = self._tasks.get(key)
        if task is not None:
            await asyncio.wait([task])

    async def wait(self, *kinds: str) -> None:
        """Return once nothing (or nothing of these kinds) is in flight, including work started meanwhile."""
        while tasks := [task for key, task in self._tasks.items() if not kinds or key[0] in kinds]:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _forget(self, key: Hashable, task: asyncio.Task) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, OrchError):  # OrchErrors go to whoever awaits
            log.error("%s failed", key, exc_info=error)


@dataclass(eq=False)
class Context:
    """Built once per process by `orch.node.open_node` (and so by the test fixtures)."""

    config: Config
    http: AsyncHTTPClient | None = None
    clock: Callable[[], float] = time.time
    inflight: Inflight = field(default_factory=Inflight)
    owner: Ownership | None = None  # the locks on the database and the data folder
    # This process's id: names its scratch folder and, on a server, the process among its peers (orch.peers).
    process: str = field(default_factory=lambda: uuid.uuid4().hex)
    _wakers: dict[str, Callable[[], None]] = field(default_factory=dict)
    _states: dict[type, object] = field(default_factory=dict)

    def on_wake(self, task: str, waker: Callable[[], None] | None) -> None:
        """Let `wake(task)` call `waker` (None: nothing, once the task is stopped)."""
        if waker is None:
            self._wakers.pop(task, None)
        else:
            self._wakers[task] = waker

    def wake(self, task: str) -> None:
        """Run the named task now rather than at its next beat (no-op when tasks are not scheduled)."""
        waker = self._wakers.get(task)
        if waker is not None:
            waker()

    def state(self, kind: type[T]) -> T:
        """This process's one `kind()`: the state that a module of one mode keeps (its own class), created at
        first use, reached only through that module's functions."""
        if kind not in self._states:
            self._states[kind] = kind()
        return self._states[kind]

    @cached_property
    def clients(self) -> ClientAPI:
        """Calls to clients (server)."""
        return ClientAPI(self.http, self.config, self.tmp_path)

    @property
    def data_path(self) -> Path:
        return self.config.data_path

    @property
    def tmp_path(self) -> Path:
        """Scratch space: the process's own when processes share the data folder."""
        return self.config.tmp_path / self.process if self.config.shares_data else self.config.tmp_path

    def close(self) -> None:
        """Give back what the process holds: its HTTP client and its locks."""
        if self.http is not None:
            self.http.close()
        if self.owner is not None:
            self.owner.release()
