"""Sandbox: what running a job in its bubblewrap sandbox (as the job user, when root) costs, per job. A trivial
run.sh is started through the client's wrapper and waited for, one at a time, in a sandbox and without one (the
floor, measured in the same run): the difference is the sandbox's price."""

import asyncio
import time
from pathlib import Path

from tornado.process import Subprocess

from bench.harness import median, percentile, scratch, show
from orch import processes, sandbox
from orch.config import load
from orch.context import Context
from orch.storage import new_name


async def _runs(root: Path, mode: str, jobs: int) -> list[float]:
    """Seconds each of `jobs` trivial runs took, from handing over the folder to the wrapper's exit."""
    config = load("client", {"DB_PATH": str(root / f"{mode}.sqlite"), "DATA_PATH": str(root / mode), "SANDBOX": mode})
    box = sandbox.setup(Context(config))
    assert (box.bwrap is not None) == (mode == "bwrap"), "bubblewrap does not work here"
    user = box.free_user([])
    durations = []
    for n in range(jobs):
        folder = root / mode / new_name()
        folder.mkdir(parents=True)
        (folder / "run.sh").write_text("exit 0\n")
        start = time.perf_counter()
        box.hand_over(folder, user)
        process = processes.spawn(
            folder,
            folder / "run.log",
            root / f"{folder.name}.exit",
            {"PATH": "/usr/bin:/bin"},
            f"bench.{n}",
            box.command(folder, user, True, list(processes.RUN)),
            None if user is None else (user.uid, user.gid),
        )
        assert await process.wait_for_exit(raise_error=False) == 0
        durations.append(time.perf_counter() - start)
    return durations


async def measure(jobs: int = 100) -> dict:
    Subprocess.initialize()
    try:
        with scratch() as root:
            await _runs(Path(root), "bwrap", 5)  # warm up
            sandboxed = await _runs(Path(root), "bwrap", jobs)
            bare = await _runs(Path(root), "none", jobs)
    finally:
        Subprocess.uninitialize()
    result = {"sandboxed": median(sandboxed), "floor": median(bare), "p95": percentile(sandboxed, 0.95)}
    result["cost"] = result["sandboxed"] - result["floor"]
    show(
        "sandbox: a trivial run.sh through the client's wrapper, one at a time",
        [
            ("jobs", str(jobs)),
            ("sandboxed (median, p95)", f"{result['sandboxed'] * 1000:.1f} ms, {result['p95'] * 1000:.1f} ms"),
            ("floor", f"{result['floor'] * 1000:.1f} ms (the same without a sandbox)"),
            ("cost per job", f"{result['cost'] * 1000:.1f} ms (target: a few ms)"),
            ("sandboxed / floor", f"{result['sandboxed'] / result['floor']:.1f}x"),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
