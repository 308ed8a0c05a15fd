"""Starting and stopping the process tree of a `run.sh`.

Each run starts a small bash wrapper in a new session (so its own process group): the wrapper runs
`bash run.sh` with stdout and stderr in the job's log, then records the script's exit status in a control
file outside the job folder and exits with it. The client normally learns the status from the wrapper's
own exit; the file is how a restarted client learns it for a script that ended while it was down.
"""

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
from tornado.process import Subprocess

# `trap : TERM` keeps the wrapper waiting while run.sh handles a SIGTERM (its grace period); a trapped
# signal, unlike an ignored one, is reset in children, so run.sh still gets it.
WRAPPER = (
    'trap : TERM; bash run.sh >"$1" 2>&1 </dev/null; code=$?; '
    'printf "%s" "$code" >"$2.tmp" && mv -f "$2.tmp" "$2"; exit "$code"'
)
POLL = 0.02  # seconds between two looks at a dying process tree
REAP_TIMEOUT = 5.0  # how long SIGKILLed processes get to disappear


def spawn(folder: Path, log_path: Path, exit_path: Path, env: dict[str, str] | None) -> Subprocess:
    """Start `bash run.sh` in `folder` under the wrapper, in a new session. Raises OSError if it cannot."""
    return Subprocess(
        ["bash", "-c", WRAPPER, "orchestrator-job", str(log_path), str(exit_path)],
        cwd=folder, env=env, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


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
        if argv[:4] == [b"bash", b"-c", WRAPPER.encode(), b"orchestrator-job"] and str(exit_path).encode() in argv:
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


async def kill_tree(pid: int, started_at: float | None, grace: float) -> None:
    """Stop the run whose wrapper is `pid`: SIGTERM to its process group and to every descendant (some
    may have left the group), SIGKILL to whatever is still there after `grace` seconds; returns once all
    are gone (or REAP_TIMEOUT after the SIGKILL)."""
    tree = _tree(pid, started_at)
    _signal(pid, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (tree := _living(tree)) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)
    _signal(pid, tree, signal.SIGKILL)
    deadline = time.monotonic() + REAP_TIMEOUT
    while _living(tree) and time.monotonic() < deadline:
        await asyncio.sleep(POLL)


def kill_group(pgid: int, started_at: float | None) -> None:
    """SIGKILL what is left of a finished run's process group (background jobs it did not wait for).

    Nothing is done if the pid now belongs to another process (it could lead another group)."""
    current = start_time(pgid)
    if pgid > 0 and (current is None or current == started_at):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _tree(pid: int, started_at: float | None) -> list[psutil.Process]:
    if start_time(pid) != started_at:
        return []  # gone, or the pid belongs to another process now
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pgid: int, tree: list[psutil.Process], signum: int) -> None:
    if tree:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass
    for process in tree:
        try:
            process.send_signal(signum)
        except psutil.Error:
            pass


def _living(tree: list[psutil.Process]) -> list[psutil.Process]:
    living = []
    for process in tree:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                living.append(process)
        except psutil.Error:
            pass
    return living
