"""Floors: the same work done without the orchestrator, measured in the same run as the benchmark."""

import sqlite3
import subprocess
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from bench.harness import median, scratch
from orch.storage import new_name


def run_and_zip(folder: Path, script: str) -> None:
    """What a job costs at the least: start bash on its run.sh, wait, zip its folder."""
    folder.mkdir()
    (folder / "run.sh").write_text(script)
    subprocess.run(["bash", "run.sh"], cwd=folder, check=True)
    with zipfile.ZipFile(folder.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder))


def one_job(script: str, times: int = 20) -> float:
    """Median seconds of `run_and_zip` for one job at a time."""
    with scratch() as folder:
        durations = []
        for i in range(times):
            start = time.perf_counter()
            run_and_zip(Path(folder) / str(i), script)
            durations.append(time.perf_counter() - start)
    return median(durations)


def many_jobs(script: str, jobs: int, at_once: int) -> float:
    """Seconds to run and zip `jobs` jobs, `at_once` at a time."""
    with scratch() as folder, ThreadPoolExecutor(at_once) as pool:
        start = time.perf_counter()
        list(pool.map(lambda i: run_and_zip(Path(folder) / str(i), script), range(jobs)))
        return time.perf_counter() - start


def disk_copy_rate(source: Path) -> float:
    """Bytes per second of copying `source` beside itself with `cp` (the best of three)."""
    target = source.with_name(source.name + ".copy")
    durations = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(["cp", source, target], check=True)
        durations.append(time.perf_counter() - start)
        target.unlink()
    return source.stat().st_size / min(durations)


def store_uploads(script: str, seconds: float = 2.0, db_url: str | None = None) -> float:
    """Uploads per second at the least: for each, a folder with its run.sh and a committed row, with no HTTP and
    no parsing. The row goes to SQLite in WAL mode, as the server keeps its queue, or to the empty PostgreSQL
    database at `db_url`, over one connection as a server process has."""
    with scratch() as root:
        if db_url is None:
            db = sqlite3.connect(Path(root) / "floor.sqlite", isolation_level=None)  # each statement committed
            db.execute("PRAGMA journal_mode = wal")
            db.execute("PRAGMA synchronous = normal")
            db.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, folder TEXT UNIQUE, status TEXT)")
            insert = "INSERT INTO jobs (folder, status) VALUES (?, 'Queued')"
        else:
            db = psycopg.connect(db_url, autocommit=True)  # each statement committed
            db.execute("CREATE TABLE jobs (id SERIAL PRIMARY KEY, folder TEXT UNIQUE, status TEXT)")
            insert = "INSERT INTO jobs (folder, status) VALUES (%s, 'Queued')"
        try:
            done = 0
            start = time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                folder = Path(root) / new_name()  # named as the server names job folders
                folder.mkdir()
                (folder / "run.sh").write_text(script)
                db.execute(insert, (folder.name,))
                done += 1
        finally:
            db.close()
        return done / elapsed
