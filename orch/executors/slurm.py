"""The Slurm executor (EXECUTOR=slurm): each payload is one batch job of a Slurm cluster whose nodes share DATA_PATH
with the client (docs/slurm.md).

- `sbatch` from the payload's folder runs `bash run.sh` there (`--wrap`: run.sh needs no `#!` line, and its
  `#SBATCH` lines are not read, so a job's resources are the operator's settings, never the script's), with its
  output in run.log, named `orch-<payload id>-<client instance>`, never requeued (a job Slurm starts again after a
  node failure would run twice), with only the JOB_ENV variables, as the job user when the client runs as root.
- The payload is recorded Running before `sbatch` runs, its job id once Slurm answers. A client that stopped in
  between finds the job by its name (once the `sbatch` it left has ended): it follows that job, or, if Slurm knows
  none, starts the payload again. Never a second job.
- One `squeue` per round tells the state, exit status and reason of every job waited for while Slurm holds it; a
  job it no longer lists is looked up in its accounting (`sacct`).
- `scancel` stops a job (all its steps), pending or running: a payload killed before it started never starts.
- A command that fails for want of an answer (a busy or restarting slurmctld) is tried again with backoff
  (orch.executors.slurm_commands); an `sbatch` that Slurm refuses ends the payload Failed with Slurm's words.
"""

import asyncio
import logging
import math
import os
import re
import shlex
import stat
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import psutil

from orch import payloads, sandbox
from orch.config import Config, variable_name
from orch.executors import Ending, Executor, Load
from orch.executors.slurm_commands import MAX_DELAY, TIMEOUT, CommandFailed, Commands, Row, retried
from orch.models import Payload
from orch.sandbox import JobUser
from orch.states import Status

log = logging.getLogger(__name__)

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}
ENDED |= {"DEADLINE", "REVOKED"}
WHY = {
    "OUT_OF_MEMORY": "it used more memory than the job was given",
    "NODE_FAIL": "its node failed",
    "PREEMPTED": "Slurm preempted it for other work",
    "BOOT_FAIL": "its node failed to boot",
    "DEADLINE": "it reached its deadline",
}
LOOKUPS = 6  # tries at finding an ended job in the accounting (slurmdbd records it a moment after its end)
# sbatch options that SLURM_EXTRA_ARGS may not set (long, short): the orchestrator sets them, or must not.
RESERVED = [("--job-name", "-J"), ("--chdir", "-D"), ("--output", "-o"), ("--error", "-e"), ("--input", "-i")]
RESERVED += [("--array", "-a"), ("--wait", "-W"), ("--partition", "-p"), ("--account", "-A"), ("--time", "-t")]
RESERVED += [(name, None) for name in ("--wrap", "--export", "--export-file", "--uid", "--gid", "--requeue")]
RESERVED += [(name, None) for name in ("--parsable", "--get-user-env", "--test-only")]
OWN = {"--partition": "SLURM_PARTITION", "--account": "SLURM_ACCOUNT", "--time": "SLURM_TIME_LIMIT"}
LOCAL_ONLY = {"sandbox": ("auto", "none"), "job_network": ("host",), "job_read_paths": ("",), "job_write_paths": ("",)}


@dataclass(frozen=True)
class Options:
    """How the jobs of a service are submitted: SLURM_PARTITION, _ACCOUNT, _TIME_LIMIT, _EXTRA_ARGS."""

    partition: str
    account: str
    time_limit: int
    extra: tuple[str, ...]


class Slurm(Executor):
    name = "slurm"

    def __init__(self, ctx):
        super().__init__(ctx)
        config = ctx.config
        for name, allowed in LOCAL_ONLY.items():
            if getattr(config, name) not in allowed:
                raise ValueError(
                    f"{variable_name(name)} is about the local executor's sandbox; with EXECUTOR=slurm, jobs see what "
                    "their user may see on the compute nodes (docs/slurm.md): unset it"
                )
        self.options = _options(config)
        self.commands = Commands(
            config.job_environment.get("PATH"), {**config.job_environment, **config.slurm_environment}
        )
        for user in sandbox.setup(ctx, sandboxed=False).users:
            _check_reachable(config.data_path, user)
        self.waiting: dict[str, asyncio.Future] = {}  # job id -> its Row once it ended (None: Slurm forgot it)
        self.cancels: dict[int, asyncio.Event] = {}  # payload id -> set to scancel its job
        self.woken = asyncio.Event()  # a round of squeue now
        self.rounds = 0  # rounds of squeue so far
        users = ", ".join(user.name for user in sandbox.of(ctx).users) or "the client's user"
        log.info("jobs run as Slurm jobs (at most %d at once, SLOTS), as %s", config.slots, users)

    def deadline(self, payload: Payload, now: float) -> float | None:
        return None  # Slurm counts the walltime (--time) from the job's start, not from its submission

    def start(self, payload: Payload, user: JobUser | None) -> Awaitable[Ending]:
        sandbox.of(self.ctx).hand_over(payloads.folder(self.ctx, payload.id), user)
        return self._run(payload, user)

    async def _run(self, payload: Payload, user: JobUser | None) -> Ending:
        submitted = await self._submit(payload, user)
        return submitted if isinstance(submitted, Ending) else await self._follow(payload.id, submitted)

    async def adopt(self, payload: Payload) -> Ending | None:
        job_id = payload.run_id
        if job_id is None:  # the client stopped between recording it Running and recording its job id
            name = self.job_name(payload.id)
            await _sbatch_gone(name)
            job_id = await self._settle(name, payload.updated_at)
            if job_id is None:
                return None
            payloads.set_run(payload.id, job_id)
            log.info("payload %s is Slurm job %s (found by its name)", payload.id, job_id)
        return await self._follow(payload.id, job_id)

    def follow(self, running: list[tuple[int, int]]) -> None:
        pass  # each run waits for its job's end, which one round of squeue for all tells (_poll)

    async def kill(self, payload: Payload) -> None:
        cancel = self.cancels.get(payload.id)
        if cancel is not None:
            cancel.set()  # else its job is being submitted: the submission sees `killed` and cancels it

    def load(self, running: int) -> Load:
        return Load(float(running), self.ctx.config.slots)

    def percent(self, running: int) -> float:
        return min(100.0, 100.0 * running / self.ctx.config.slots)

    def job_name(self, payload_id: int) -> str:
        return f"orch-{payload_id}-{payloads.instance(self.ctx)}"

    def sbatch_args(self, payload: Payload, user: JobUser | None) -> list[str]:
        """sbatch's options for a payload run as `user` (None: as the client)."""
        options = self.options.get(payload.service) or self.options[None]
        folder = payloads.folder(self.ctx, payload.id)
        args = [*options.extra, "--no-requeue", "--export=ALL", f"--job-name={self.job_name(payload.id)}"]
        args += [f"--chdir={folder}", f"--output={folder / payloads.LOG}"]
        args += [f"--partition={options.partition}"] if options.partition else []
        args += [f"--account={options.account}"] if options.account else []
        limits = [limit for limit in (payload.walltime, options.time_limit) if limit]
        args += [f"--time={_duration(min(limits))}"] if limits else []
        args += [f"--uid={user.uid}", f"--gid={user.gid}"] if user else []
        return [*args, f"--wrap=exec bash {payloads.SCRIPT}"]

    async def _submit(self, payload: Payload, user: JobUser | None) -> str | Ending:
        """Submit a payload's job (unless it is killed first); its id, or its Ending when Slurm refuses it."""
        folder = payloads.folder(self.ctx, payload.id)
        env = {**self.commands.env, **sandbox.of(self.ctx).environment(self.ctx.config.job_environment, user)}
        delay = 1.0
        while not payloads.get(payload.id).killed:
            try:
                job_id = await self.commands.sbatch(self.sbatch_args(payload, user), env, folder)
            except CommandFailed as e:
                if not e.transient:
                    return Ending(None, f"Slurm refused the job: {e}")
                log.warning("payload %s: %s; trying again in %g s", payload.id, e, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_DELAY)
                job_id = await self._settle(self.job_name(payload.id), payload.updated_at)  # taken all the same?
                if job_id is None:
                    continue
            payloads.set_run(payload.id, job_id)
            log.info("payload %s is Slurm job %s", payload.id, job_id)
            return job_id
        return Ending(None)  # killed before its job was submitted: it never runs

    async def _settle(self, name: str, since: float) -> str | None:
        """The id of the job named `name` (submitted after `since`), if Slurm has one; asked until Slurm answers."""
        found = await retried(f"looking for Slurm job {name}", self.commands.squeue, f"--name={name}")
        if not found:
            start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 86400))
            accounted = await retried(f"looking for Slurm job {name}", self.commands.accounting, name, "-S", start)
            found = {row.job_id: row for row in accounted or []}
        return min(found, key=int) if found else None

    async def _follow(self, payload_id: int, job_id: str) -> Ending:
        """Wait for a job's end (scancelling it whenever the payload is killed); how the payload ended."""
        cancel = self.cancels.setdefault(payload_id, asyncio.Event())
        if payloads.get(payload_id).killed:
            cancel.set()
        try:
            row = await self._end_of(job_id, cancel)
        finally:
            del self.cancels[payload_id]
        if row is None:  # Slurm no longer lists it: its accounting tells how it ended
            row = await self._accounted(job_id)
        return _ending(job_id, row)

    async def _end_of(self, job_id: str, cancel: asyncio.Event) -> Row | None:
        while True:
            ended = self.waiting[job_id] = asyncio.get_running_loop().create_future()
            self.ctx.inflight.start(("slurm", "poll"), self._poll)
            asked = asyncio.ensure_future(cancel.wait())
            await asyncio.wait([ended, asked], return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            if ended.done():
                return ended.result()
            del self.waiting[job_id]
            cancel.clear()
            try:
                await retried(f"scancel {job_id}", self.commands.scancel, job_id)
            except CommandFailed as e:
                log.error("could not cancel Slurm job %s: %s", job_id, e)
            self.woken.set()  # see it end at once

    async def _poll(self) -> None:
        """Rounds of one squeue for every job waited for, as long as one is."""
        failures = 0
        while self.waiting:
            self.woken.clear()
            asked = list(self.waiting)
            self.rounds += 1
            try:
                rows = await self.commands.squeue(f"--jobs={','.join(asked)}")
            except CommandFailed as e:
                failures += 1
                delay = min(self.ctx.config.slurm_poll_interval * 2**failures, MAX_DELAY)
                (log.warning if e.transient else log.error)("%s; asking again in %g s", e, delay)
            else:
                failures, delay = 0, self.ctx.config.slurm_poll_interval
                for job_id in asked:
                    row, ended = rows.get(job_id), self.waiting.get(job_id)
                    if (row is None or row.state in ENDED) and ended is not None and not ended.done():
                        del self.waiting[job_id]
                        ended.set_result(row)
            if self.waiting:
                try:
                    await asyncio.wait_for(self.woken.wait(), delay)
                except TimeoutError:
                    pass

    async def _accounted(self, job_id: str) -> Row | None:
        """How an ended job ended, from Slurm's accounting; None when it has no record of it."""
        delay = 1.0
        for _ in range(LOOKUPS):
            rows = await retried(f"sacct -j {job_id}", self.commands.accounting, job_id, "-j", job_id)
            if rows is None:
                return None  # no accounting on this cluster
            if rows and rows[0].state in ENDED:
                return rows[0]
            await asyncio.sleep(delay)  # not recorded yet, or not as ended yet
            delay = min(2 * delay, MAX_DELAY)
        return None


def _ending(job_id: str, row: Row | None) -> Ending:
    """How a payload ended, from its job's end state."""
    if row is None:
        return Ending(None, f"Slurm job {job_id} is gone, and Slurm keeps no record of how it ended")
    if row.state == "COMPLETED":
        return Ending(row.code or 0)
    if row.state == "FAILED" and row.code:
        return Ending(row.code)
    if row.state == "CANCELLED":
        return Ending(None, f"Slurm job {job_id} was cancelled outside the orchestrator (CANCELLED)", Status.KILLED)
    if row.state == "TIMEOUT":
        return Ending(None, f"timeout: {payloads.SCRIPT} ran past its time limit in Slurm (job {job_id}: TIMEOUT)")
    why = WHY.get(row.state) or row.reason
    return Ending(None, f"Slurm job {job_id} ended {row.state}" + (f": {why}" if why else ""))


def _duration(seconds: float) -> str:
    """Seconds as Slurm's days-hours:minutes:seconds (Slurm then rounds it up to whole minutes)."""
    minutes, seconds = divmod(math.ceil(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02}:{minutes:02}:{seconds:02}"


def _options(config: Config) -> dict[str | None, Options]:
    """The Options of each service that has settings of its own (by name), and of the others (None): a service's
    setting replaces the general one."""
    default = Options(
        config.slurm_partition,
        config.slurm_account,
        config.slurm_time_limit,
        _extra("SLURM_EXTRA_ARGS", config.slurm_extra_args),
    )
    options: dict[str | None, Options] = {None: default}
    for service, settings in config.slurm_services.items():
        limit = settings.get("TIME_LIMIT", str(default.time_limit))
        if not re.fullmatch(r"[0-9]+", limit):
            variable = f"SLURM_TIME_LIMIT_{service.upper()}"
            raise ValueError(f"{variable} must be a whole number of seconds (0: none), got {limit!r}")
        extra = settings.get("EXTRA_ARGS")
        options[service] = Options(
            settings.get("PARTITION", default.partition),
            settings.get("ACCOUNT", default.account),
            int(limit),
            default.extra if extra is None else _extra(f"SLURM_EXTRA_ARGS_{service.upper()}", extra),
        )
    return options


def _extra(variable: str, raw: str) -> tuple[str, ...]:
    """The sbatch options in `raw` (split as a shell would); ValueError naming `variable` for one it may not set."""
    try:
        args = shlex.split(raw)
    except ValueError as e:
        raise ValueError(f"{variable} cannot be split into sbatch options: {e}") from None
    for arg in args:
        for long, short in RESERVED:
            if arg.split("=", 1)[0] == long or (short and arg.startswith(short)):
                instead = f"set {OWN[long]} instead" if long in OWN else "the orchestrator sets it, or must not"
                raise ValueError(f"{variable} may not set {long}: {instead}")
    return tuple(args)


def _check_reachable(data_path: Path, user: JobUser) -> None:
    """ValueError unless `user` may go through every folder above DATA_PATH (its jobs open their folder there)."""
    for folder in reversed(data_path.parents):
        found = os.stat(folder)
        mode = found.st_mode
        if not (
            mode & stat.S_IXOTH
            or (found.st_uid == user.uid and mode & stat.S_IXUSR)
            or (found.st_gid == user.gid and mode & stat.S_IXGRP)
        ):
            raise ValueError(
                f"DATA_PATH {data_path}: its jobs run in Slurm as {user.name}, who cannot go through {folder} "
                f"(mode {stat.S_IMODE(mode):o}), where their folders are"
            )


async def _sbatch_gone(name: str) -> None:
    """Return once no sbatch submitting a job named `name` runs here (one left by a client that stopped), or after
    the commands' TIMEOUT."""
    flag = f"--job-name={name}"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if not await asyncio.to_thread(_runs_with, flag):
            return
        await asyncio.sleep(0.5)


def _runs_with(arg: str) -> bool:
    """Whether a process here has `arg` on its command line (blocking: it reads every process's)."""
    return any(arg in (process.info["cmdline"] or []) for process in psutil.process_iter(["cmdline"]))
