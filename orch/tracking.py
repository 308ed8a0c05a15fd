"""Keeping each dispatched job in step with the client it was sent to (server).

A client is followed two ways: its event stream (`GET /events`, a long-poll) tells within milliseconds that a
payload started or ended; a poll (`GET /retrieve/<id>`) of a job fetches its result, or the reason it failed,
and mirrors its payload's status onto it. While a client's stream is live, its jobs are polled only when it
reports a change (and once every SWEEP seconds, as a safety net: asking about every running job at every
round would cost a request per job and per round); clients of the original, which have no stream, are polled
at every getter round.

Failures are recorded per client, by every caller (sends, polls, the stream): one record says when to call it
again (after 1 s, 2 s, 4 s... up to a minute) and since when it fails. A client failing for CLIENT_LOST_AFTER
is lost: its jobs end, or are queued again (`orch.attempts`); what it may still run of them is stopped once it
answers again. Everything here is keyed by client (its address), never by service.
"""

import asyncio
import logging
from dataclasses import dataclass, field

from orch import attempts, jobs, members, peers
from orch.config import ClientConfig
from orch.context import Context
from orch.errors import ClientError
from orch.models import Job
from orch.states import FINISHED, Status
from orch.wire import EVENTS_WAIT, GONE

log = logging.getLogger(__name__)

POLLED = (Status.SUBMITTED, Status.RUNNING)
SWEEP = 30.0  # seconds between two polls of the jobs of a client followed live
# What the client's statuses mean for the server's job; Prepared and Completed-as-JSON change nothing.
MIRRORED = {
    Status.RUNNING: Status.RUNNING,
    Status.FAILED: Status.FAILED,
    Status.INVALID: Status.INVALID,
    Status.KILLED: Status.KILLED,
    Status.CLEANED: Status.UNKNOWN,
    Status.UNKNOWN: Status.UNKNOWN,
}
DEFAULT_MESSAGES = {
    Status.FAILED: "run.sh failed on the client",
    Status.INVALID: "the client could not run the job",
    Status.KILLED: "killed on the client",
}


class Health:
    """Per client, how it has been failing: when to call it again (1 s, 2 s, 4 s... up to `cap` after the first
    failure), since when it fails, and why it failed last. Calls made in one round at `now` count as one."""

    def __init__(self, base: float = 1.0, cap: float = 60.0) -> None:
        self.base, self.cap = base, cap
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._down_since: dict[str, float] = {}
        self._reason: dict[str, str] = {}

    def ready(self, client: str, now: float) -> bool:
        return self._retry_at.get(client, 0.0) <= now

    def failed(self, client: str, now: float, reason: str = "") -> float:
        """Record a failure of a call made at `now`; return the delay before the next try."""
        self._down_since.setdefault(client, now)
        self._reason[client] = reason
        if now < self._retry_at.get(client, 0.0):
            return self._retry_at[client] - now  # another call of a round already counted
        failures = self._failures[client] = self._failures.get(client, 0) + 1
        delay = min(self.cap, self.base * 2 ** (failures - 1))
        self._retry_at[client] = now + delay
        return delay

    def failing(self, client: str) -> bool:
        return client in self._down_since

    def down_for(self, client: str, now: float) -> float:
        """Seconds since the client's failures began (0 while it answers)."""
        return now - self._down_since.get(client, now)

    def reason(self, client: str) -> str:
        """Why the last call to the client failed."""
        return self._reason.get(client, "")

    def succeeded(self, client: str) -> None:
        for record in (self._failures, self._retry_at, self._down_since, self._reason):
            record.pop(client, None)


@dataclass
class Tracking:
    """What the server knows of its clients beyond the database."""

    health: Health = field(default_factory=Health)
    # Clients whose event stream is followed live, with when their jobs were last all polled (0: at the getter's
    # next round); the tasks following them; clients found to have no stream (clients of the original).
    live: dict[str, float] = field(default_factory=dict)
    follows: dict[str, asyncio.Task] = field(default_factory=dict)
    streamless: set[str] = field(default_factory=set)
    repoll: set[int] = field(default_factory=set)  # jobs that changed while being polled: poll them again
    changed_early: set[int] = field(default_factory=set)  # jobs whose payload changed while their send was in flight


def _state(ctx: Context) -> Tracking:
    return ctx.state(Tracking)


# ---- Failures, recorded by every caller


def ready(ctx: Context, client: ClientConfig, now: float) -> bool:
    """Whether `client` may be called in the round at `now` (it is not waiting out a failure)."""
    return _state(ctx).health.ready(client.address, now)


def failed(ctx: Context, client: ClientConfig, now: float, reason: str) -> float:
    """Record that a call to `client` made at `now` failed for `reason`; return the delay before the next."""
    return _state(ctx).health.failed(client.address, now, reason)


def lost(ctx: Context, address: str, now: float) -> str | None:
    """If the client at `address` has been failing for CLIENT_LOST_AFTER or more (it is lost): for how long,
    where, and why ("for 40 s at http://node1:9000: ..."); None otherwise."""
    health = _state(ctx).health
    down = health.down_for(address, now)
    if down < ctx.config.client_lost_after:
        return None
    return f"for {down:.0f} s at {address}: {health.reason(address)}"


def answered(ctx: Context, client: ClientConfig) -> None:
    """Record that `client` answered."""
    _state(ctx).health.succeeded(client.address)


def failing(ctx: Context, address: str, now: float) -> tuple[float, str] | None:
    """While calls to the client at `address` fail: for how many seconds at `now`, and why; None while it
    answers."""
    health = _state(ctx).health
    return (health.down_for(address, now), health.reason(address)) if health.failing(address) else None


def followed(ctx: Context, address: str) -> bool:
    """Whether the event stream of the client at `address` is followed live."""
    return address in _state(ctx).live


# ---- Polls


def poll_due(ctx: Context, now: float) -> int:
    """Start a poll of every Submitted or Running job that is not being polled already, whose client this
    process follows (see `_responsible`), may be called, and is not followed live (unless a sweep of its jobs
    is due); return how many started."""
    tracking = _state(ctx)
    swept = {client for client, last in tracking.live.items() if now - last >= SWEEP}
    dispatched = jobs.dispatched()
    mine = {address for address in {address for _, address in dispatched} if _responsible(ctx, address, now)}
    started = 0
    for job_id, address in dispatched:
        if address not in mine or (address in tracking.live and address not in swept):
            continue
        if ("poll", job_id) in ctx.inflight:
            continue
        if tracking.health.ready(address or "", now):
            ctx.inflight.start(("poll", job_id), lambda job_id=job_id: _poll(ctx, job_id, now))
            started += 1
        elif (why := lost(ctx, address or "", now)) is not None:  # no need to call it to know
            _lose(ctx, job_id, why)
    for client in swept:
        tracking.live[client] = now
    return started


def stop_leftovers(ctx: Context, now: float) -> int:
    """Start stopping each payload that a lost client may still run for a job that went on without it
    (`orch.attempts`), on clients that may be called now; return how many started. Those left for MAX_AGE are
    given up: that client is gone for good."""
    started = 0
    for leftover in attempts.leftovers():
        if now - leftover.since > ctx.config.max_age:
            attempts.forget(leftover, "given up after MAX_AGE")
        elif ("leftover", leftover.record) not in ctx.inflight and _state(ctx).health.ready(leftover.address, now):
            ctx.inflight.start(("leftover", leftover.record), lambda leftover=leftover: _stop(ctx, leftover, now))
            started += 1
    return started


async def _stop(ctx: Context, leftover: attempts.Leftover, now: float) -> None:
    client = ctx.config.client_at(leftover.address)
    try:
        await attempts.stop(ctx, leftover)
    except ClientError as e:
        failed(ctx, client, now, e.message)
        return
    answered(ctx, client)


def poll_soon(ctx: Context, job_id: int) -> None:
    """Poll a job now (its client said it changed); once more after the poll in flight, if there is one."""
    _state(ctx).repoll.add(job_id)
    ctx.inflight.start(("poll", job_id), lambda: _poll(ctx, job_id, ctx.clock()))


async def _poll(ctx: Context, job_id: int, now: float) -> None:
    """Poll a job, again as long as its client reports changes meanwhile (see `poll_soon`)."""
    repoll = _state(ctx).repoll
    while True:
        repoll.discard(job_id)
        await _poll_once(ctx, job_id, now)
        if job_id not in repoll:
            return
        now = ctx.clock()


async def _poll_once(ctx: Context, job_id: int, now: float) -> None:
    """Ask the job's client about it once (in the round at `now`) and record what it says.

    A client that cannot be reached leaves the job as it is (asked again after a backoff) until it is lost:
    then the job ends Unknown. A client that no longer has the payload, or is not the instance that took it,
    ends the job Unknown at once: it never gets another job's results."""
    job = jobs.get(job_id)
    status = Status(job.status)
    if status not in POLLED:
        return  # it ended meanwhile
    client = jobs.client_of(ctx, job)
    if client is None:
        _finish(ctx, job, Status.UNKNOWN, f"service {job.service!r} is no longer configured")
        return
    try:
        answer = await ctx.clients.retrieve(client, jobs.destination(job), jobs.result_file(ctx, job))
    except ClientError as e:
        if e.code not in (404, GONE):
            failed(ctx, client, now, e.message)
            if (why := lost(ctx, client.address, now)) is not None:
                _lose(ctx, job_id, why)
            else:
                log.warning("getter: job %s: %s", job_id, e.message)
        elif (current := _as_polled(job)) is not None:
            why = e.message if e.code == GONE else f"the client no longer knows this job (payload {job.dest_id})"
            attempts.lose(ctx, current, why, held=False)
        return
    except Exception:
        log.exception("getter: job %s failed", job_id)
        return
    answered(ctx, client)
    if answer is None:
        _finish(ctx, job, Status.COMPLETED, "")
        return
    try:
        reported = Status(answer.get("status"))
    except ValueError:
        log.warning("getter: job %s: the client reports an unknown status %r", job_id, answer.get("status"))
        return
    mirrored = MIRRORED.get(reported)
    if mirrored is None or mirrored == status:
        return
    message = answer.get("message") or DEFAULT_MESSAGES.get(reported, f"the client reports the job as {reported}")
    _finish(ctx, job, mirrored, message if mirrored in FINISHED else None)


def _lose(ctx: Context, job_id: int, why: str) -> None:
    """End (or queue again) a dispatched job whose client is lost."""
    job = jobs.get(job_id)
    if job.status in POLLED:
        attempts.lose(ctx, job, f"lost contact with the {job.service} client {why}", held=True)


def _as_polled(job: Job) -> Job | None:
    """A polled job (as read before the poll) as it is now, if it is still on its client at the same attempt (an
    event may have marked it Running meanwhile); None if it moved on (it ended, is being terminated, or is at
    another attempt: an answer is about the attempt it was asked for)."""
    current = jobs.get(job.id)
    return current if current.status in POLLED and current.attempt == job.attempt else None


def _finish(ctx: Context, job: Job, dst: Status, message: str | None) -> None:
    """Record what its client said of a polled job (as read before the poll): `dst`, unless it moved on."""
    current = _as_polled(job)
    if current is None or current.status == dst:
        return
    if jobs.move(ctx, job.id, Status(current.status), dst, message, at_attempt=job.attempt) and dst in FINISHED:
        ctx.wake("sender")  # a slot is free


# ---- Sends


def send_ended(ctx: Context, job_id: int, payload_status: str | None) -> None:
    """Called once a send of the job is over (`payload_status` is what the client answered, None if the send
    failed). If its payload started or ended before the send was recorded (a quick job on a busy server, or a
    send repeated after a crash), poll it now rather than at a getter round."""
    changed = _state(ctx).changed_early
    if payload_status not in (None, Status.PREPARED):
        changed.add(job_id)
    if job_id in changed:
        changed.discard(job_id)
        if jobs.get(job_id).status == Status.SUBMITTED:
            poll_soon(ctx, job_id)


# ---- Event streams


def follow_clients(ctx: Context, now: float) -> int:
    """Follow the event stream of each client this process is responsible for (those of the services, listed or
    joined at `now`, and those that unfinished jobs are placed on: see `_responsible`), unless it has none; stop
    following those that left (their jobs are polled) or that another process took over. Return how many
    clients this process follows."""
    tracking = _state(ctx)
    joined = members.joined(now)
    clients = {
        client.address: client
        for service in ctx.config.services.values()
        for client in members.clients_of(service, joined)
    }
    for address in jobs.placed():
        if address not in clients:
            clients[address] = ctx.config.client_at(address)
    mine = {address for address in clients if _responsible(ctx, address, now)}
    for address, task in list(tracking.follows.items()):
        if address not in mine:
            task.cancel()
    for address in mine - tracking.follows.keys() - tracking.streamless:
        task = asyncio.ensure_future(follow(ctx, clients[address]))
        tracking.follows[address] = task
        task.add_done_callback(lambda _, address=address: tracking.follows.pop(address, None))
    return len(mine)


def _responsible(ctx: Context, address: str | None, now: float) -> bool:
    """Whether this process follows the client at `address` (its stream, the polls of its jobs): it holds the
    client's lease, taken or renewed here. Server processes sharing a database thus follow each client once; one
    alone on its database (SQLite) follows every client without writing a lease at every round. (A job sent by
    a version that did not record its client has no address: any process polls it.)"""
    return address is None or not ctx.config.shares_data or peers.hold(ctx, f"client {address}", now)


def unfollow_all(ctx: Context) -> None:
    """Stop following every stream (the process is stopping)."""
    for task in list(_state(ctx).follows.values()):
        task.cancel()


async def follow(ctx: Context, client: ClientConfig) -> None:
    """Until cancelled: long-poll the client for payload status changes and act on each at once. After an
    error it waits out the client's backoff (polls, which also decide when it is lost, go on meanwhile); a
    client without the stream is left to polls.

    When the stream starts, comes back, or answers from another client instance or a restarted sequence,
    every job of the client is polled once: that covers whatever the stream did not report."""
    tracking = _state(ctx)
    after = None
    instance = None
    try:
        while True:
            try:
                answered_by, last, events = await ctx.clients.events(client, after, EVENTS_WAIT)
            except ClientError as e:
                tracking.live.pop(client.address, None)
                if e.code in (404, 405):
                    log.info("watcher: %s has no event stream; its jobs are polled", client.address)
                    tracking.streamless.add(client.address)
                    return
                log.debug("watcher: %s: %s", client.address, e.message)
                await asyncio.sleep(failed(ctx, client, ctx.clock(), e.message))
                continue  # from the same point: the client answers what happened meanwhile, or restarts it
            answered(ctx, client)
            restarted = after is not None and last < after
            if client.address not in tracking.live or answered_by != instance or restarted:
                tracking.live[client.address] = 0.0  # due at the getter's next round
            instance = answered_by
            for event in events:
                _on_event(ctx, event)
            after = last
    finally:
        tracking.live.pop(client.address, None)


def _on_event(ctx: Context, event: dict) -> None:
    """Act on one status change of a payload."""
    found = jobs.by_key(str(event.get("job_key")))
    if found is None:
        return
    job_id, job_status = found
    status = event.get("status")
    if status == Status.PREPARED:
        return  # what the answer to the send says
    if job_status == Status.PROCESSING:  # it started or ended before its send was recorded: see send_ended
        _state(ctx).changed_early.add(job_id)
    elif status == Status.RUNNING:
        if job_status == Status.SUBMITTED:  # recorded without asking the client
            jobs.move(ctx, job_id, Status.SUBMITTED, Status.RUNNING)
    elif job_status in POLLED:  # it ended: fetch its result or reason
        poll_soon(ctx, job_id)
