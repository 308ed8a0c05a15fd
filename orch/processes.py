"""Starting and stopping the process tree of a `run.sh`.

Each run starts a small `sh` wrapper in a new session (so its own process group), with stdout and stderr in
the job's log: the wrapper runs the run's command (`bash run.sh`, in its sandbox and as its user: see
orch.sandbox), then records its exit status in a control file outside the job folder (read only once the
wrapper is gone, so it is whole) and exits with it. The wrapper stays outside the sandbox, so the job can
neither see nor forge that file. The client normally learns the status from the wrapper's own exit; the file
is how a restarted client learns it for a script that ended while it was down.

Every process of a run inherits ORCHESTRATOR_RUN=<tag>, so that even one that left the process group and the
tree (a daemon that double-forks) is found and stopped with its run. The client is a child subreaper: runs'
orphans are reparented to it, not to init, and it reaps them (no zombies, even as PID 1 in a container).
"""

import asyncio
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
from tornado.process import Subprocess

# The wrapper is plain POSIX sh: where sh is dash, it starts in a third of bash's time, a millisecond or two
# off every job. `trap : TERM` keeps the wrapper waiting while run.sh handles a SIGTERM (its grace period);
# a trapped signal, unlike an ignored one, is reset in children, so run.sh still gets it. Its arguments: the
# exit file, then the command.
WRAPPER = 'umask 077; trap : TERM; exit_file=$1; shift; "$@"; code=$?; printf "%s" "$code" >"$exit_file"; exit "$code"'
RUN = ("bash", "run.sh")
POLL = 0.02  # seconds between two looks at a dying process tree
REAP_TIMEOUT = 5.0  # how long SIGKILLed processes get to disappear
TAG = "ORCHESTRATOR_RUN"
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Run:
    """A run of run.sh: its wrapper's pid and start time (0 and None before it starts), and its tag."""

    pid: int
    started_at: float | None
    tag: str


def spawn(
    folder: Path,
    log_path: Path,
    exit_path: Path,
    env: dict[str, str],
    tag: str,
    command: Sequence[str] = RUN,
    owner: tuple[int, int] | None = None,
) -> Subprocess:
    """Start `command` (`bash run.sh`, or it in a sandbox) in `folder` under the `sh` wrapper, in a new session,
    with `env` and the run's tag, its output in `log_path` (made anew, never through a link, and given to
    `owner` (uid, gid) if set). Raises OSError if it cannot."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if owner is not None:
            os.fchown(log, *owner)
        return Subprocess(
            ["sh", "-c", WRAPPER, "orchestrator-job", str(exit_path), *command],
            cwd=folder,
            env={**env, TAG: tag},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    finally:
        os.close(log)


def become_subreaper() -> None:
    """Have orphaned processes of runs reparented to this process instead of init (Linux)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_strays(wrappers: set[int]) -> int:
    """Reap the exited children that are not run wrappers (Tornado reaps those): orphans of runs that
    came to this subreaper. Returns how many."""
    try:
        exited = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return 0
    if exited is None or exited.si_pid in wrappers:
        return 0  # nothing exited, or a wrapper that Tornado is about to reap (then look again next round)
    reaped = 0
    for child in psutil.Process().children():
        try:
            if child.pid not in wrappers and child.status() == psutil.STATUS_ZOMBIE:
                reaped += os.waitpid(child.pid, os.WNOHANG)[0] == child.pid
        except (psutil.Error, ChildProcessError):
            pass
    return reaped


def start_time(pid: int) -> float | None:
    """When process `pid` started, in clock ticks since boot: with the pid, it identifies a process even
    after the pid is recycled, and unlike a wall-clock time it does not move when the clock is set."""
    state = _stat(pid)
    return float(state[19]) if state else None


def alive(pid: int, started_at: float | None) -> bool:
    """Whether the process `pid` that started at `started_at` still runs (zombies do not count)."""
    state = _stat(pid)
    return bool(state) and float(state[19]) == started_at and state[0] != "Z"


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (state first, start time 20th); [] if gone."""
    if pid <= 0:
        return []
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def find_run(exit_path: Path) -> tuple[int, float] | None:
    """The (pid, start time) of the wrapper writing to `exit_path`, if one runs: a run that a client started
    just before it stopped, too soon to record its pid."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:5] == [b"sh", b"-c", WRAPPER.encode(), b"orchestrator-job", str(exit_path).encode()]:
            pid = int(entry.name)
            started_at = start_time(pid)
            if started_at is not None and alive(pid, started_at):
                return pid, started_at
    return None


def read_exit_code(path: Path) -> int | None:
    """The exit status the wrapper recorded, if any."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def kill_tree(run: Run, grace: float) -> None:
    """Stop a run: SIGTERM to every process of it (its group, its tree, whatever carries its tag), SIGKILL
    to whatever is still there after `grace` seconds; returns once all are gone (or REAP_TIMEOUT after the
    SIGKILL)."""
    members = _members(run)
    _signal(members, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (members := _living(members)) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    members = _living(members + _members(run))  # and whatever was started meanwhile
    _signal(members, signal.SIGKILL)
    deadline = time.monotonic() + REAP_TIMEOUT
    while _living(members) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)


def kill_leftovers(run: Run) -> None:
    """SIGKILL what is left in a finished run's process group (background processes it did not wait for).
    Cheap: a process that left the group is found by `sweep` instead."""
    current = start_time(run.pid) if run.pid > 0 else None
    if run.pid > 0 and (current is None or current == run.started_at):
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def sweep(instance: str, running: set[int]) -> int:
    """SIGKILL every process tagged as part of a run of this client instance whose payload is not in
    `running` (a daemon that left its finished run's group and tree); return how many."""
    prefix = f"{TAG}={instance}.".encode()
    doomed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            variables = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for variable in variables:
            if variable.startswith(prefix) and variable[len(prefix) :].isdigit():
                if int(variable[len(prefix) :]) not in running:
                    doomed.append(int(entry.name))
                break
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(doomed)


def _members(run: Run) -> list[psutil.Process]:
    """The processes of a run, oldest first: the wrapper and its tree, its process group, and those carrying its
    tag.

    One pass over /proc. The group is looked at only while the pid is the wrapper's or free (with the group
    gone, a recycled pid could lead someone else's group); a process that started before the run cannot be
    part of it, so only the environment of younger ones is read."""
    table = {}  # pid -> (ppid, pgrp, start time)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and len(state := _stat(int(entry.name))) > 19:
            table[int(entry.name)] = (int(state[1]), int(state[2]), float(state[19]))
    root = table.get(run.pid)
    own_group = run.pid > 0 and (root is None or root[2] == run.started_at)
    found = set()
    if own_group:
        found = {pid for pid, (_, pgrp, _) in table.items() if pgrp == run.pid}
        if root is not None:
            children: dict[int, list[int]] = {}
            for pid, (ppid, _, _) in table.items():
                children.setdefault(ppid, []).append(pid)
            tree, stack = {run.pid}, [run.pid]
            while stack:
                for child in children.get(stack.pop(), []):
                    if child not in tree:
                        tree.add(child)
                        stack.append(child)
            found |= tree
    tag = f"{TAG}={run.tag}".encode()
    for pid, (_, _, started) in table.items():
        if pid in found or (run.started_at is not None and started < run.started_at):
            continue
        try:
            if tag in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found.add(pid)
        except OSError:
            pass
    members = []
    # Oldest first, so parents before their children: a script signalled after its children could see them end
    # and exit 0 before its own signal arrives, on a busy machine.
    for pid in sorted(found, key=lambda pid: (table[pid][2], pid)):
        try:
            members.append(psutil.Process(pid))
        except psutil.Error:
            pass
    return members


def _signal(processes: list[psutil.Process], signum: int) -> None:
    for process in processes:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def _living(processes: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                living.append(process)
        except psutil.Error:
            pass
    return living
