"""Job and payload statuses and the transitions allowed between them: the state machines as data.

`orch.models.transition()` is the only way a status changes; it refuses any pair not listed here, and the
database refuses it too (the lists below seed a transition table that a trigger checks).
"""

from enum import StrEnum


class Status(StrEnum):
    """Statuses with the names the original uses in JSON (also how they are stored)."""

    QUEUED = "Queued"
    PROCESSING = "Processing"
    SUBMITTED = "Submitted"
    PREPARED = "Prepared"
    RUNNING = "Running"
    COMPLETED = "Completed"
    FAILED = "Failed"
    INVALID = "Invalid"
    KILLED = "Killed"
    CLEANED = "Cleaned"
    UNKNOWN = "Unknown"
    LOCKED = "Locked"


S = Status

# A finished job or payload never changes again, except to Cleaned when its files are removed.
FINISHED = frozenset({S.COMPLETED, S.FAILED, S.INVALID, S.KILLED, S.UNKNOWN})

# Server side. Queued -> Processing (claimed by the sender) -> Submitted (the client accepted it) ->
# Running -> finished. Locked: a terminate is talking to the client. Submitted or Running -> Queued: lost with
# its client, queued again as its next attempt (SERVICE_<NAME>_RETRY_LOST).
JOB_TRANSITIONS = [
    (S.QUEUED, S.PROCESSING),
    (S.QUEUED, S.KILLED),
    (S.QUEUED, S.FAILED),
    (S.PROCESSING, S.SUBMITTED),
    (S.PROCESSING, S.QUEUED),
    (S.PROCESSING, S.FAILED),
    *((S.SUBMITTED, dst) for dst in (S.RUNNING, S.LOCKED, S.QUEUED, *FINISHED)),
    *((S.RUNNING, dst) for dst in (S.LOCKED, S.QUEUED, *FINISHED)),
    (S.LOCKED, S.KILLED),
    (S.LOCKED, S.SUBMITTED),
    (S.LOCKED, S.RUNNING),
    *((done, S.CLEANED) for done in FINISHED),
]

# Client side. Prepared (files on disk) -> Running (run.sh started) -> finished.
PAYLOAD_TRANSITIONS = [
    (S.PREPARED, S.RUNNING),
    (S.PREPARED, S.INVALID),
    (S.PREPARED, S.KILLED),
    (S.PREPARED, S.FAILED),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.KILLED),
    (S.RUNNING, S.PREPARED),  # the client stopped between recording the start and starting run.sh
    *((done, S.CLEANED) for done in FINISHED - {S.UNKNOWN}),
]


def statuses(transitions: list[tuple[Status, Status]]) -> frozenset[Status]:
    """Every status that appears in a transition list."""
    return frozenset(status for pair in transitions for status in pair)


JOB_STATUSES = statuses(JOB_TRANSITIONS)
PAYLOAD_STATUSES = statuses(PAYLOAD_TRANSITIONS)

# Every job that has left the queue and is not finished holds a quota slot, whatever its status.
ACTIVE = JOB_STATUSES - FINISHED - {S.QUEUED, S.CLEANED}
