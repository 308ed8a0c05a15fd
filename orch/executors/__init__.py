"""Executors (client): what runs the payloads' run.sh. `local` runs each on this machine, in its sandbox
(orch.executors.local); `slurm` hands each to a Slurm cluster as a batch job (orch.executors.slurm). EXECUTOR
chooses one at start-up.

orch.runs keeps the lifecycle they share: a payload is refused (Invalid) or recorded Running, with the executor's
name, before its executor starts it; once the run ends, its result is zipped and its status and message recorded.
An executor only starts runs, follows them to their end, stops them, and takes over those a previous client process
left running. Another executor is one more module here and one more line in EXECUTORS.
"""

import importlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass

from orch.context import Context
from orch.models import Payload
from orch.sandbox import JobUser
from orch.states import Status

# EXECUTOR's values, and the class of each (module:Class), imported only when chosen.
EXECUTORS = {"local": "orch.executors.local:Local", "slurm": "orch.executors.slurm:Slurm"}
DEFAULT = "local"  # what ran the payloads recorded before executors were


@dataclass(frozen=True)
class Ending:
    """How a run ended, as its executor saw it: run.sh's exit status (negative: the signal that killed it; None:
    unknown), and, when the executor or what is behind it ended the run rather than run.sh (Slurm's TIMEOUT...),
    the payload's status (Failed or Killed) and why."""

    code: int | None
    reason: str = ""
    status: Status = Status.FAILED


@dataclass(frozen=True)
class Load:
    """How busy what runs the payloads is, for /status: a load average, against a number of CPUs."""

    average: float
    cpus: int


class Executor(ABC):
    """Runs payloads for one client process. Made at start-up (the constructor checks the settings it reads and
    raises ValueError naming the first that cannot work); every method is called on the IOLoop."""

    name: str

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @abstractmethod
    def deadline(self, payload: Payload, now: float) -> float | None:
        """When a payload started at `now` must be stopped (None: never, or not by the client)."""

    @abstractmethod
    def start(self, payload: Payload, user: JobUser | None) -> Awaitable[Ending]:
        """Start the run of a payload just recorded Running, as `user` (None: as the client). Raises OSError if
        it cannot start; returns what waits for its end (orch.runs awaits it, then finishes the payload). Called
        with no await since the payload was recorded Running, so a kill cannot come in between."""

    @abstractmethod
    def adopt(self, payload: Payload) -> Awaitable[Ending | None]:
        """What waits for the end of a Running payload whose run a previous client process started (or may have
        started): its Ending, or None when the run never started (the payload then goes back to Prepared)."""

    @abstractmethod
    def follow(self, running: list[tuple[int, int]]) -> None:
        """One round of the runner, which has the (id, pid) of every Running payload at hand."""

    @abstractmethod
    async def kill(self, payload: Payload) -> None:
        """Stop a Running payload's run (its whole process tree, its whole Slurm job), whatever stage it is in;
        its `killed` flag is set already. What waits for its end then records it Killed."""

    @abstractmethod
    def load(self, running: int) -> Load:
        """How busy what runs the payloads is, with `running` payloads Running (for /status)."""

    @abstractmethod
    def percent(self, running: int) -> float:
        """How busy what runs the payloads is in percent, with `running` payloads Running (for /load)."""


@dataclass
class Chosen:
    executor: Executor | None = None


def setup(ctx: Context) -> Executor:
    """Make the executor EXECUTOR names (at start-up, before the database is opened); ValueError naming the setting
    that cannot work."""
    if ctx.config.executor not in EXECUTORS:
        raise ValueError(f"EXECUTOR must be one of {', '.join(EXECUTORS)}, got {ctx.config.executor!r}")
    module, name = EXECUTORS[ctx.config.executor].split(":")
    ctx.state(Chosen).executor = getattr(importlib.import_module(module), name)(ctx)
    return ctx.state(Chosen).executor


def of(ctx: Context) -> Executor:
    """The client's executor."""
    executor = ctx.state(Chosen).executor
    assert executor is not None, "executors.setup(ctx) runs at start-up"
    return executor


def check_running(ctx: Context, started_by: dict[str | None, int]) -> None:
    """ValueError unless every Running payload (`started_by`: how many each executor started) was started by this
    client's executor: another one's runs cannot be followed or stopped from here."""
    others = {name or DEFAULT: count for name, count in started_by.items() if (name or DEFAULT) != ctx.config.executor}
    if others:
        name = sorted(others)[0]
        raise ValueError(
            f"EXECUTOR is {ctx.config.executor}, but {sum(others.values())} running payload(s) were started by "
            f"the {name} executor: start this client with EXECUTOR={name} until they have ended"
        )
