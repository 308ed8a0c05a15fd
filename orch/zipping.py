"""Zipping payload folders (client), bounded: threads of their own, apart from the blocklist check and everything
else that runs off the IOLoop, so that big results never hold up another job's start.

Two lanes of ZIP_THREADS threads each: folders up to SMALL_FOLDER bytes go to the quick lane, bigger ones to the
bulk lane, so a trivial result is never queued behind gigabytes. One zip per payload at a time; partial zips of
a payload are shared: one built at most every PARTIAL_EVERY seconds serves every download meanwhile. A zip can be
stopped (its job is killed, or its walltime runs out): it then ends within a chunk, or leaves its lane's queue at
once, leaving nothing.
"""

import asyncio
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from orch import storage
from orch.context import Context

ZIP_THREADS = 2  # per lane
SMALL_FOLDER = 64 * 1024 * 1024  # bytes of regular files: up to this, a folder goes to the quick lane
PARTIAL_EVERY = 5.0  # seconds a partial zip is served again before a new one is built


class Stop:
    """The stop of a result's zip: an event its thread looks at between chunks, and its place in a lane's queue,
    given up at once (a stopped zip does not wait for a thread only to end)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.queued: Future | None = None
        self.expired = False  # stopped by its deadline

    def halt(self) -> None:
        self.event.set()
        if self.queued is not None:
            self.queued.cancel()  # nothing if its thread has it already: the event stops it


class Zips:
    """This process's zipping threads, and what each payload is zipping."""

    def __init__(self) -> None:
        self.quick = ThreadPoolExecutor(ZIP_THREADS, "zip-quick")
        self.bulk = ThreadPoolExecutor(ZIP_THREADS, "zip-bulk")
        self.locks: dict[int, tuple[asyncio.Lock, int]] = {}  # payload id -> its lock, how many hold or wait
        self.stops: dict[int, Stop] = {}  # payload id -> the stop of its result's zip
        self.partial_stops: dict[int, Stop] = {}  # payload id -> the stop of the partial zip it is building
        self.partials: dict[int, float] = {}  # payload id -> when its partial zip was built

    def close(self) -> None:
        """Stop every zip under way and let the threads go."""
        for stop in [*self.stops.values(), *self.partial_stops.values()]:
            stop.halt()
        for pool in (self.quick, self.bulk):
            pool.shutdown(wait=False, cancel_futures=True)


def _zips(ctx: Context) -> Zips:
    return ctx.state(Zips)


async def result(ctx: Context, payload_id: int, folder: Path, dest: Path, deadline: float | None) -> None:
    """Zip `folder` into `dest`. Raises storage.ZipStopped when `stop` is called for the payload meanwhile,
    TimeoutError (leaving nothing) when the clock passes `deadline` first, OSError when it cannot be written."""
    zips = _zips(ctx)
    stop = zips.stops[payload_id] = Stop()

    def expire() -> None:
        stop.expired = True
        _halt(zips, payload_id)

    timer = None
    if deadline is not None:
        timer = asyncio.get_running_loop().call_later(max(0.0, deadline - ctx.clock()), expire)
    try:
        async with _one_at_a_time(zips, payload_id):
            await _zip(zips, folder, dest, stop)
    except storage.ZipStopped:
        if stop.expired:
            raise TimeoutError() from None
        raise
    finally:
        if timer is not None:
            timer.cancel()
        zips.stops.pop(payload_id, None)


def stop(ctx: Context, payload_id: int) -> None:
    """Stop the zips of the payload under way: its result's, and a partial one (which its result's waits for)."""
    _halt(_zips(ctx), payload_id)


def _halt(zips: Zips, payload_id: int) -> None:
    for entry in (zips.stops.get(payload_id), zips.partial_stops.get(payload_id)):
        if entry is not None:
            entry.halt()


async def partial(ctx: Context, payload_id: int, folder: Path, dest: Path) -> BinaryIO:
    """A zip of `folder` built at most PARTIAL_EVERY seconds ago (built now if there is none), kept at `dest` for
    the downloads to come, and open for reading (the caller closes it): a newer zip or the end of the run may
    replace or remove `dest` at any time after. Raises storage.ZipStopped when `stop` is called for the payload
    while it is being built."""
    zips = _zips(ctx)
    async with _one_at_a_time(zips, payload_id):
        built = zips.partials.get(payload_id)
        if built is None or not 0 <= ctx.clock() - built < PARTIAL_EVERY or not dest.exists():
            zips.partial_stops[payload_id] = Stop()
            try:
                await _zip(zips, folder, dest, zips.partial_stops[payload_id])
            finally:
                del zips.partial_stops[payload_id]
            zips.partials[payload_id] = ctx.clock()
        return open(dest, "rb")


def forget_partial(ctx: Context, payload_id: int, dest: Path) -> None:
    """Remove the partial zip of a payload whose run is over (a download streaming it keeps its copy)."""
    _zips(ctx).partials.pop(payload_id, None)
    dest.unlink(missing_ok=True)


async def _zip(zips: Zips, folder: Path, dest: Path, stop: Stop | None) -> None:
    loop = asyncio.get_running_loop()
    size = await loop.run_in_executor(zips.quick, _size_up_to, folder, SMALL_FOLDER + 1)
    lane = zips.quick if size <= SMALL_FOLDER else zips.bulk
    work = lane.submit(storage.zip_folder, folder, dest, None if stop is None else stop.event)
    if stop is not None:
        stop.queued = work
        if stop.event.is_set():
            work.cancel()
    try:
        await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        if stop is not None and stop.event.is_set() and work.cancelled():
            raise storage.ZipStopped() from None  # it left the queue before a thread took it
        raise


def _size_up_to(folder: Path, limit: int) -> int:
    """The bytes of the regular files under `folder`, counted until `limit` is reached."""
    total = 0
    for _, _, filenames, dirfd in os.fwalk(folder, follow_symlinks=False):
        for name in filenames:
            try:
                total += os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_size
            except OSError:
                continue
            if total >= limit:
                return total
    return total


class _one_at_a_time:
    """`async with`: the payload's zips one after the other (its lock is dropped when nobody holds or waits)."""

    def __init__(self, zips: Zips, payload_id: int):
        self.zips, self.payload_id = zips, payload_id

    async def __aenter__(self) -> None:
        lock, users = self.zips.locks.get(self.payload_id, (asyncio.Lock(), 0))
        self.zips.locks[self.payload_id] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *exc) -> None:
        self.zips.locks[self.payload_id][0].release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self.zips.locks[self.payload_id]
        if users == 1:
            del self.zips.locks[self.payload_id]
        else:
            self.zips.locks[self.payload_id] = (lock, users - 1)
