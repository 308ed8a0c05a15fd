"""Big files: upload a 300 MB file, have the job turn it into a 300 MB result, download that result; the
transfer rates against copying the file on the same disk, and how much the processes' memory grows.
The portal's side of the transfers is curl."""

import asyncio
import json
import os
import threading
import time
from pathlib import Path

from bench import floors
from bench.harness import Orchestrator, show

SIZE = 300 * 1024 * 1024
SCRIPT = "mv big.bin result.bin\n"


class PeakMemory:
    """Samples the resident memory of some processes every few milliseconds, in a thread."""

    def __init__(self, processes: dict) -> None:
        self.processes = processes
        self.baseline = {name: process.rss() for name, process in processes.items()}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            for name, process in self.processes.items():
                self.peak[name] = max(self.peak[name], process.rss())

    def growth(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return {name: self.peak[name] - self.baseline[name] for name in self.processes}


async def curl(*args: str) -> bytes:
    """Run curl, the portal here (a Python client would be the slowest part of the transfer)."""
    process = await asyncio.create_subprocess_exec("curl", "-sS", "--fail", *args, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    assert process.returncode == 0, f"curl {args} failed"
    return out


async def curl_upload(orch, source: Path) -> int:
    script = orch.folder / "run.sh"
    script.write_text(SCRIPT)
    answer = await curl(
        "-F",
        f"file=@{script}",
        "-F",
        f"file=@{source}",
        "-F",
        "user_id=1",
        "-F",
        "service=bench",
        f"{orch.server.url}/upload",
    )
    return json.loads(answer)["id"]


async def measure(size: int = SIZE) -> dict:
    async with Orchestrator() as orch:
        source = orch.folder / "big.bin"
        with open(source, "wb") as out:
            for _ in range(size // (1 << 20)):
                out.write(os.urandom(1 << 20))
        copy_rate = floors.disk_copy_rate(source)
        memory = PeakMemory({"server": orch.server, "client": orch.client})

        start = time.perf_counter()
        job_id = await curl_upload(orch, source)
        upload = time.perf_counter() - start
        while (await orch.http.fetch(f"{orch.server.url}/download/{job_id}", method="HEAD")).headers.get(
            "Content-Type"
        ) != "application/zip":
            await asyncio.sleep(0.05)
        through = time.perf_counter() - start
        url = f"{orch.server.url}/download/{job_id}"
        start = time.perf_counter()
        await curl("-o", "/dev/null", url)
        download = time.perf_counter() - start
        target = orch.folder / "result.zip"
        start = time.perf_counter()
        await curl("-o", str(target), url)
        to_disk = time.perf_counter() - start
        zipped = target.stat().st_size
        growth = memory.growth()
    mb = 1024 * 1024
    result = {
        "upload": size / upload,
        "download": zipped / download,
        "download_to_disk": zipped / to_disk,
        "copy": copy_rate,
        **growth,
    }
    show(
        f"big files: a {size // mb} MB upload and a {size // mb} MB result",
        [
            ("upload", f"{upload:.2f} s, {size / upload / mb:.0f} MB/s"),
            ("upload to result ready", f"{through:.2f} s (sent to the client, run, zipped, fetched back)"),
            (
                "download",
                f"{download:.2f} s, {zipped / download / mb:.0f} MB/s ({zipped / mb:.0f} MB zip, streamed on)",
            ),
            ("download to a file", f"{to_disk:.2f} s, {zipped / to_disk / mb:.0f} MB/s (the portal's disk writes too)"),
            ("floor: disk copy", f"{copy_rate / mb:.0f} MB/s (cp of the same file)"),
            ("upload / copy", f"{size / upload / copy_rate:.2f} (target: 0.5 at least)"),
            ("download / copy", f"{zipped / download / copy_rate:.2f} (target: 0.5 at least)"),
            ("server memory growth", f"{growth['server'] / mb:.1f} MB (target: under 50 MB)"),
            ("client memory growth", f"{growth['client'] / mb:.1f} MB (target: under 50 MB)"),
        ],
    )
    return result


if __name__ == "__main__":
    asyncio.run(measure())
