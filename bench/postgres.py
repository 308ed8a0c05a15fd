"""A throwaway PostgreSQL cluster, started from Debian's `postgresql` package, for the tests and the benchmarks.

`PostgresServer().start()` makes one on a free loopback port (and a Unix socket) in a folder of its own under
/tmp, tuned for speed over durability (`settings` overrides that: the benchmarks ask for commits as durable as
SQLite's, see bench/databases.py); `stop()` stops it whatever happened, and removes the folder.

As root, the cluster runs as the `postgres` user (PostgreSQL refuses to run as root); otherwise as the current user.
It needs PostgreSQL 13 or later (for DROP DATABASE ... WITH (FORCE)); Debian 12 has 15.
If PostgreSQL is missing, tests/system/install.sh installs it; if it cannot be installed or started, the tests that
need it fail with the reason.
"""

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

import psutil
import psycopg

from bench.harness import ROOT, free_port

INSTALL = ROOT / "tests" / "system" / "install.sh"
USER = "postgres"  # the OS user the cluster runs as when we are root, and its superuser role
TIMEOUT = 60  # seconds for any one step; a step normally takes well under a second
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",  # several server processes per test, each with a couple of connections
    # Throwaway data: nothing needs to survive a crash.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


RUNNING: list["PostgresServer"] = []  # started and not yet stopped


def cluster_processes() -> list[psutil.Process]:
    """The processes of every cluster running now: tests that check that nothing else runs leave these out."""
    return [proc for server in RUNNING for proc in server.processes()]


class PostgresError(Exception):
    """PostgreSQL could not be installed, started or stopped; the message says why."""


def bin_dir() -> Path:
    """The folder of initdb and pg_ctl: from PATH, else Debian's newest /usr/lib/postgresql/<version>/bin."""
    if found := shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: [int(part) for part in path.split("/")[4].split(".") if part.isdigit()],
    )
    if not versions:
        raise FileNotFoundError("no pg_ctl on PATH nor in /usr/lib/postgresql/*/bin")
    return Path(versions[-1]).parent


def find_or_install() -> Path:
    try:
        return bin_dir()
    except FileNotFoundError:
        pass
    result = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=600)
    try:
        return bin_dir()
    except FileNotFoundError as e:
        raise PostgresError(
            f"PostgreSQL is not installed and {INSTALL} could not install it "
            f"(exit {result.returncode}): {result.stdout}{result.stderr}".strip()
        ) from e


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder (data/, postgres.log and its socket); `start`, then `stop`."""

    def __init__(self, port: int = 0, settings: dict[str, str] | None = None) -> None:
        self.port = port  # 0: a free one
        self.settings = {**SETTINGS, **(settings or {})}  # postgresql.conf lines: SETTINGS, overridden
        self.bin: Path | None = None
        self.folder: Path | None = None
        self.postmaster: psutil.Process | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def start(self) -> "PostgresServer":
        """initdb and start; on failure, clean up what was made and raise PostgresError with the reason."""
        self.bin = find_or_install()
        self.folder = Path(tempfile.mkdtemp(prefix="pg-test-"))  # short: a socket path has a 107-byte limit
        try:
            if os.geteuid() == 0:
                account = pwd.getpwnam(USER)
                os.chown(self.folder, account.pw_uid, account.pw_gid)  # /tmp is world-traversable, the folder 0700
            self._run("initdb", "-D", self.data, "-A", "trust", "-U", USER, "-E", "UTF8", "--locale=C", "--no-sync")
            if not self.port:
                self.port = free_port()
            settings = {**self.settings, "port": str(self.port), "unix_socket_directories": f"'{self.folder}'"}
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write("\n# bench/postgres.py\n")
                conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
            self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", str(TIMEOUT), "start")
            self.postmaster = self._postmaster()
            RUNNING.append(self)
        except PostgresError:
            self.stop()
            raise
        except Exception as e:
            self.stop()
            raise PostgresError(f"could not start PostgreSQL: {e!r}") from e
        return self

    def processes(self) -> list[psutil.Process]:
        """The postmaster and its children, while it runs."""
        try:
            return [self.postmaster, *self.postmaster.children(recursive=True)] if self.postmaster else []
        except psutil.NoSuchProcess:
            return []

    def _postmaster(self) -> psutil.Process | None:
        """The postmaster named by data/postmaster.pid, if it is alive."""
        try:
            proc = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
            return proc if proc.name() in ("postgres", "postmaster") else None
        except (OSError, ValueError, IndexError, psutil.Error):
            return None

    def stop(self, timeout: float = TIMEOUT) -> None:
        """`pg_ctl -m fast stop`; then SIGKILL the postmaster and its children if they are still alive, and
        remove the folder. Safe to call at any point, and more than once."""
        if self.postmaster is None and self.folder is not None:
            self.postmaster = self._postmaster()  # a start that failed half-way
        if self.postmaster is not None:
            procs = self.processes() or [self.postmaster]
            stopped = (
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", str(round(timeout)), "stop", check=False)
                == 0
            )
            # wait() reaps those that are our children (the suite is a subreaper); pg_ctl has waited already
            alive = psutil.wait_procs(procs, timeout=10 if stopped else 0)[1]
            for proc in alive:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            alive = psutil.wait_procs(alive, timeout=10)[1]
            if alive:
                raise PostgresError(f"PostgreSQL processes survived SIGKILL: {[proc.pid for proc in alive]}")
            self.postmaster = None
        if self in RUNNING:
            RUNNING.remove(self)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def url(self, database: str = "postgres", socket: bool = False) -> str:
        """The URL of `database`, over TCP on loopback or over the Unix socket."""
        if socket:
            return f"postgresql://{USER}@/{database}?host={quote(str(self.folder), safe='')}&port={self.port}"
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str | None = None) -> str:
        """Create a fresh database, empty or a copy of the database `template` (which nobody may be connected
        to); return its name."""
        name = f"test_{uuid.uuid4().hex[:16]}"
        self._sql(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def databases(self) -> set[str]:
        """The names of the databases made by `create_database` and not dropped yet."""
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=TIMEOUT) as conn:
            return {name for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%'")}

    def drop_database(self, name: str) -> None:
        """Drop it, closing the connections still open to it."""
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _sql(self, statement: str) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=TIMEOUT) as conn:
            conn.execute(statement)

    def _run(self, program: str, *args: object, check: bool = True) -> int:
        """Run one of PostgreSQL's programs as its user, in the folder; return its exit status. On failure,
        if `check`, raise PostgresError with its output and the server log."""
        as_user = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(USER)
            as_user = {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": os.getgrouplist(USER, account.pw_gid),
            }
        result = subprocess.run(
            [str(self.bin / program), *map(str, args)],
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=TIMEOUT * 2,
            env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"},
            **as_user,
        )
        if check and result.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise PostgresError(
                f"{program} {' '.join(map(str, args))} failed (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{log}".strip()
            )
        return result.returncode
