"""Slurm: what the client's Slurm executor (EXECUTOR=slurm) adds on top of Slurm. 200 trivial payloads go through
a client process to a one-node Slurm cluster started for the run (bench/slurm.py) and are waited for until the last
one is Completed with its result zipped; the floor is the same 200 scripts submitted with `sbatch` directly, one
after the other, and waited for with `squeue`. Both poll Slurm every POLL seconds."""

import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tornado.httpclient import AsyncHTTPClient

from bench.harness import Process, multipart, show
from bench.slurm import SlurmCluster

SCRIPT = "echo done > out.txt\n"
POLL = 0.5  # seconds between two squeue, for the client (SLURM_POLL_INTERVAL) and for the floor alike
ACTIVE = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING"


async def _through_client(slurm: SlurmCluster, root: Path, jobs: int) -> float:
    """Seconds from the first submit to the client until its last payload is Completed."""
    env = {
        "EXECUTOR": "slurm",
        "SLURM_CONF": slurm.env["SLURM_CONF"],
        "SLURM_PARTITION": slurm.partition,
        "SLURM_POLL_INTERVAL": str(POLL),
        "SLOTS": str(jobs),
        "DATA_PATH": str(root / "data"),
    }
    client = Process("client", root / "client", env)
    http = AsyncHTTPClient(force_instance=True)
    try:
        while True:
            try:
                await http.fetch(f"{client.url}/health")
                break
            except OSError:
                assert client.popen.poll() is None, f"the client did not start: see {root / 'client'}"
                await asyncio.sleep(0.05)
        body, content_type = multipart({}, {"run.sh": SCRIPT.encode()})
        start = time.perf_counter()
        ids = []
        for _ in range(jobs):
            response = await http.fetch(
                f"{client.url}/submit", method="POST", body=body, headers={"Content-Type": content_type}
            )
            ids.append(json.loads(response.body)["id"])
        while True:
            status = json.loads((await http.fetch(f"{client.url}/status")).body)
            if status["prepared"] == status["running"] == 0:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        for payload_id in ids:  # every one Completed: its result is a zip
            response = await http.fetch(f"{client.url}/retrieve/{payload_id}")
            assert response.headers["Content-Type"] == "application/zip", response.body[:200]
        return elapsed
    finally:
        http.close()
        client.stop()


def _directly(slurm: SlurmCluster, root: Path, jobs: int) -> float:
    """Seconds to submit the same scripts with sbatch, one after the other, and see every job end in squeue."""
    start = time.perf_counter()
    ids = []
    for n in range(jobs):
        folder = root / "direct" / str(n)
        folder.mkdir(parents=True)
        (folder / "run.sh").write_text(SCRIPT)
        answer = slurm.run(
            "sbatch", "--parsable", "--no-requeue", f"--job-name=direct-{n}", f"--chdir={folder}",
            f"--output={folder / 'run.log'}", f"--partition={slurm.partition}", "--wrap=exec bash run.sh",
        )  # fmt: skip
        ids.append(answer.strip().split(";")[0])
    while slurm.run("squeue", "-h", "-o", "%i", "-t", ACTIVE, "-j", ",".join(ids)).split():
        time.sleep(POLL)
    return time.perf_counter() - start


async def measure(jobs: int = 200, slurm: SlurmCluster | None = None) -> dict:
    """Run on `slurm`, or on a cluster started for the run and stopped at its end."""
    own = slurm is None
    slurm = slurm or SlurmCluster()
    root = Path(tempfile.mkdtemp(prefix="orch-bench-slurm-"))
    root.chmod(0o711)  # jobs may run as another user (nobody, for a client run as root): they go through it
    try:
        if own:
            slurm.start()
        through = await _through_client(slurm, root, jobs)
        slurm.wait_no_jobs(active_only=True)
        floor = await asyncio.get_running_loop().run_in_executor(None, _directly, slurm, root, jobs)
    finally:
        if own:
            slurm.stop()
        shutil.rmtree(root, ignore_errors=True)
    result = {"through_client": through, "floor": floor, "ratio": through / floor}
    show(
        f"slurm: {jobs} trivial payloads through the client's Slurm executor (one-node Slurm, polled every {POLL:g} s)",
        [
            ("through the client", f"{through:.1f} s ({jobs / through:.0f} jobs/s), results zipped"),
            ("floor", f"{floor:.1f} s ({jobs / floor:.0f} jobs/s): sbatch one after the other, then squeue"),
            ("client / floor", f"{result['ratio']:.2f}x"),
            ("job user", "nobody (the client runs as root)" if os.geteuid() == 0 else "the client's user"),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
