"""A thousand jobs through a client leave no zombie and no orphan behind."""

import os
from pathlib import Path

import psutil

from orch.models import Payload
from tests.conftest import multipart, wait_for

JOBS = 1000
# Each run leaves a background process behind, detached from bash by a subshell (it would become an orphan).
RUN_SH = b"(sleep 60 &)\necho done > out.txt\n"


async def test_a_thousand_jobs_leave_no_zombie_and_no_orphan(nodes):
    client = nodes("client", tasks=True)
    body, content_type = multipart(files={"run.sh": RUN_SH})
    for _ in range(JOBS):
        code, _ = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
        assert code == 200
    await wait_for(lambda: Payload.select().where(Payload.status == "Completed").count() == JOBS, timeout=300)

    wrappers = {payload.pid for payload in Payload.select(Payload.pid)}
    assert len(wrappers) == JOBS
    # Every background process of every run is killed when its run ends; killed, it is an orphan that the
    # client (a subreaper) reaps at its next round: then nothing of any run is left, not even a zombie.
    await wait_for(lambda: not _in_groups(wrappers) and not _zombies())


def _zombies() -> list[psutil.Process]:
    return [child for child in psutil.Process().children(recursive=True) if child.status() == psutil.STATUS_ZOMBIE]


def _in_groups(groups: set[int]) -> list[int]:
    """The processes, anywhere on the machine, that belong to one of these process groups."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in groups:
                    found.append(int(entry.name))
            except ProcessLookupError:
                pass
    return found
