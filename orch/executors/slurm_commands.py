"""Slurm's commands as the Slurm executor (orch.executors.slurm) runs them: asyncio subprocesses with a timeout, a
few at once, so that a slurmctld that is slow or gone never blocks the IOLoop; their failures raised as
CommandFailed (transient when for want of an answer, to be tried again), their answers read into Rows."""

import asyncio
import logging
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
NAMES = ("sbatch", "squeue", "sacct", "scancel")
FIELDS = "JobID:|,State:|,exit_code:|,Reason:"  # squeue -O: unpadded, separated by |
TIMEOUT = 60.0  # seconds a command may take (Slurm's give up by themselves after MessageTimeout, 10 s by default)
AT_ONCE = 8  # commands running at once
MAX_DELAY = 60.0  # seconds between two tries at most
TRANSIENT = re.compile(r"timed? ?out|temporar|unable to contact|connect|zero bytes|try again|not responding|busy", re.I)


class CommandFailed(Exception):
    def __init__(self, message: str, transient: bool):
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Row:
    """A job as Slurm reports it: its state, its exit status (negative: the signal that killed it), its reason."""

    job_id: str
    state: str
    code: int | None
    reason: str = ""


class Commands:
    """Slurm's commands, found on `path` (ValueError naming the missing ones), run with `env`."""

    def __init__(self, path: str | None, env: dict[str, str]):
        self.paths = {name: shutil.which(name, path=path) for name in NAMES}
        missing = [name for name, found in self.paths.items() if found is None]
        if missing:
            raise ValueError(f"EXECUTOR is slurm, but {', '.join(missing)} is not on the PATH that JOB_ENV passes")
        self.env = env
        self.at_once = asyncio.Semaphore(AT_ONCE)

    async def sbatch(self, args: list[str], env: dict[str, str], cwd: Path) -> str:
        """Submit a job from `cwd` with `env` (its environment, with --export=ALL); its id."""
        return (await self.run("sbatch", ["--parsable", *args], env, cwd)).strip().split(";")[0]

    async def squeue(self, select: str) -> dict[str, Row]:
        """The jobs that Slurm still holds among those `select` names (`--jobs=1,2`, `--name=x`), by id."""
        try:
            out = await self.run("squeue", ["-h", "-t", "all", "-O", FIELDS, select])
        except CommandFailed as e:
            if "Invalid job id" in str(e):
                return {}  # none of the jobs asked for is known any more
            raise
        rows = {}
        for line in out.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4 and parts[0].isdigit():
                job_id, state, status, reason = parts
                code = _exit_code(status)
                rows[job_id] = Row(job_id, state.split()[0], code, reason.strip())
        return rows

    async def accounting(self, wanted: str, *select: str) -> list[Row] | None:
        """The jobs whose id or name is `wanted` (ids in order) in Slurm's accounting: slurmdbd's (sacct), else the
        job completion file's (sacct -c, which filters by id only); None when the cluster keeps neither."""
        for source in ((), ("-c",)):
            try:
                out = await self.run("sacct", [*source, "-n", "-P", "-o", "JobID,JobName,State,ExitCode", *select])
            except CommandFailed as e:
                if e.transient:
                    raise
                continue
            rows = []
            for line in out.splitlines():
                parts = line.split("|")
                if len(parts) == 4 and parts[0].isdigit() and wanted in parts[:2]:
                    status, _, signal = parts[3].partition(":")
                    code = -int(signal) if signal.isdigit() and int(signal) else int(status or 0)
                    rows.append(Row(parts[0], (parts[2].split() or [""])[0], code))
            return sorted(rows, key=lambda row: int(row.job_id))
        return None

    async def scancel(self, job_id: str) -> None:
        """Cancel a job, all its steps, pending or running (a job that has ended already is no error)."""
        await self.run("scancel", [job_id])

    async def run(self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """Run a command; its output. CommandFailed when it fails (transient: for want of an answer)."""
        async with self.at_once:
            try:
                process = await asyncio.create_subprocess_exec(
                    self.paths[name], *args, cwd=cwd, env=env or self.env, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
            except OSError as e:
                raise CommandFailed(f"{name} could not start: {e}", transient=True) from None
            try:
                out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise CommandFailed(f"{name} did not answer within {TIMEOUT:g} s", transient=True) from None
        if process.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            message = re.sub(rf"^{name}: (error|fatal): ", "", lines[-1] if lines else f"exit {process.returncode}")
            raise CommandFailed(f"{name}: {message}", transient=bool(TRANSIENT.search(message)))
        return out.decode(errors="replace")


def _exit_code(status: str) -> int | None:
    """The exit status (negative: the signal that killed it) in a wait status; None when there is none."""
    try:
        return os.waitstatus_to_exitcode(int(status))
    except (ValueError, OverflowError):  # no number, or not the status of an ended process
        return None


async def retried(what: str, call: Callable[..., Awaitable[T]], *args) -> T:
    """`await call(*args)`, tried again with backoff for as long as it fails for want of an answer (`what` it does
    names it in the log)."""
    delay = 1.0
    while True:
        try:
            return await call(*args)
        except CommandFailed as e:
            if not e.transient:
                raise
            log.warning("%s: %s; trying again in %g s", what, e, delay)
            await asyncio.sleep(delay)
            delay = min(2 * delay, MAX_DELAY)
