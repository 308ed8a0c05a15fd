"""One owner per database and data folder, and nothing of theirs deleted on a guess.

As PostgreSQL takes `postmaster.pid` before touching its data directory, each process locks its database and
its data folder (`flock`, held for its whole life) before it reads or changes either, and refuses to start,
naming the holder, when another process has them. As Kafka writes its cluster id into each log directory, a
database and its data folder carry the same identity, written when they are paired: a start that finds a data
folder with jobs and an empty or different database refuses rather than treating every job folder as litter.
What recovery still cannot place is moved into a quarantine folder, never deleted at start.
"""

import fcntl
import logging
import os
import re
import uuid
from pathlib import Path

from orch import storage

log = logging.getLogger(__name__)

IDENTITY = ".identity"  # in the data folder: the identity of the database it belongs to
LOCK = ".lock"
QUARANTINE = ".quarantine"
QUARANTINED = re.compile(r"(?P<at>[0-9]+)-.+")  # `<unix time>-<original name>`


class Ownership:
    """The locks a process holds on its database and data folder; released by `release()` or its exit."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def lock(self, path: Path, what: str) -> None:
        """Lock `path` (created if needed) for this process, writing its pid there; ValueError naming the
        holder's pid if another process holds it."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ValueError(f"{what}: cannot create the lock file {path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(
                f"{what} is in use by another process (pid {holder}, holding {path}); "
                f"stop it first, or give this one its own"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds.append(fd)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops its lock
        self._fds.clear()


def claim(db_path: Path | None, data_path: Path, shared: bool = False) -> Ownership:
    """Lock the database file at `db_path` (None: a database server, nothing to lock) and the data folder
    `data_path` (created if missing) for this process; a `shared` data folder (server processes on one
    PostgreSQL database, which register there instead: see orch.peers) is not locked.

    A missing folder for the database is an error, not something to create: it is most often a typo. Raises
    ValueError with one line naming the setting."""
    if db_path is not None and not db_path.parent.is_dir():
        raise ValueError(
            f"DB_PATH is {str(db_path)!r}, but the folder {str(db_path.parent)!r} does not exist "
            f"(create it, or fix DB_PATH)"
        )
    if db_path is not None and db_path.is_dir():
        raise ValueError(f"DB_PATH is {str(db_path)!r}, which is a folder, not a database file")
    try:
        data_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"DATA_PATH is {str(data_path)!r}, which cannot be used as a folder: {e.strerror}") from None
    ownership = Ownership()
    try:
        if db_path is not None:
            ownership.lock(db_path.with_name(db_path.name + LOCK), f"DB_PATH {str(db_path)!r}")
        if not shared:
            ownership.lock(data_path / LOCK, f"DATA_PATH {str(data_path)!r}")
    except ValueError:
        ownership.release()
        raise
    return ownership


def check(stored: str | None, has_rows: bool, has_files: bool, database: str, data_path: Path, kind: str) -> str | None:
    """Check that the data folder belongs to the database; return the identity to pair them with (to be
    written by `mark` and stored in the database), or None when they are paired already.

    `database` names the database (see `orch.database.label`), `stored` is the identity it holds (None if it never
    was paired), `has_rows` whether it holds any
    job (or payload: `kind`) whose files are kept, `has_files` whether the data folder holds folders named as
    this database names them. Raises ValueError, with what to do, when they disagree.
    """
    marker = data_path / IDENTITY
    found = marker.read_text().strip() if marker.is_file() else None
    where = f"{database} and DATA_PATH {str(data_path)!r}"
    advice = "point DB_PATH (or DB_URL) at the database of this data folder, or move the folder away"
    if stored is not None and found == stored:
        return None
    if found is not None:
        state = "is another one's" if stored is not None else "is new or empty"
        raise ValueError(
            f"{where} disagree: the data folder belongs to another database, and this database {state}; {advice}"
        )
    if stored is not None and has_rows:
        raise ValueError(
            f"{where} disagree: the database holds {kind}s whose files should be in another data "
            f"folder; point DATA_PATH at it"
        )
    if stored is None and not has_rows and has_files:
        raise ValueError(
            f"{where} disagree: the data folder holds {kind} folders, and this database is new or empty; {advice}"
        )
    return stored or uuid.uuid4().hex


def mark(data_path: Path, identity: str) -> None:
    """Write the identity of its database into the data folder."""
    (data_path / IDENTITY).write_text(identity + "\n")


def quarantine(data_path: Path, entries: list[Path], now: float, why: str) -> None:
    """Move `entries` (in the data folder) into its quarantine folder, named by when they were moved, and log
    it once: the cleaner removes them MAX_AGE later."""
    if not entries:
        return
    folder = data_path / QUARANTINE
    folder.mkdir(exist_ok=True)
    for entry in entries:
        target = folder / f"{int(now)}-{entry.name}"
        if target.exists():
            target = target.with_name(f"{target.name}-{storage.new_name()}")
        entry.rename(target)
    log.warning(
        "moved %d entries of %s into %s: %s (%s); they are removed after MAX_AGE",
        len(entries),
        data_path,
        folder,
        why,
        ", ".join(entry.name for entry in entries[:5]) + (", ..." if len(entries) > 5 else ""),
    )


def clean_quarantine(data_path: Path, before: float) -> int:
    """Remove what was quarantined before `before` (blocking); return how many entries."""
    folder = data_path / QUARANTINE
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        match = QUARANTINED.fullmatch(entry.name)
        if match and int(match["at"]) <= before:
            storage.remove(entry)
            removed += 1
    return removed
