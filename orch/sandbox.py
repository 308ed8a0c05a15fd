"""The sandbox a payload's run.sh runs in, and the user it runs as (client).

SANDBOX=bwrap (or auto, where bubblewrap works): run.sh runs under bubblewrap in mount, PID and IPC namespaces of
its own, and a network namespace of its own when its network is cut. It sees /usr (with /bin, /lib... as on the
machine) and /etc read-only, a /proc of its own processes, a minimal /dev, a /tmp of its own, JOB_READ_PATHS
read-only, JOB_WRITE_PATHS writable, and its folder, writable, at the same path, as its working directory.
Nothing else is there: no other payload's folder, no control folder, no database, no configuration.

bwrap's first process in the sandbox is the init of its PID namespace: when it dies, the kernel kills whatever is
left in the namespace, whatever it did to its environment or session. `--die-with-parent` ties it to bwrap's
monitor, which ends with run.sh. The monitor is a child of the wrapper that records the exit status (see
orch.processes), outside the sandbox, not of the client: a sandbox outlives a client restart and is adopted like
any run. The monitor ignores SIGTERM and run.sh gets it back as it should, so a terminate's SIGTERM reaches
run.sh, which has its grace period, instead of tearing the sandbox down at once.

When the client runs as root, run.sh runs as an unprivileged user (setpriv, with no supplementary groups and no
way to gain privileges): JOB_USER, or the first of JOB_USERS that no running payload has. Its folder is handed to
that user (mode 0700) for the run, and taken back once the run is over.
"""

import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from orch.config import Config, split, variable_name
from orch.context import Context

log = logging.getLogger(__name__)

SYSTEM = ("/usr", "/etc")  # bound read-only
USR_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # links into /usr, or folders bound read-only
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True)
class JobUser:
    name: str
    uid: int
    gid: int
    home: str


@dataclass
class Sandbox:
    """How this client runs payloads, set at start-up by `setup`."""

    bwrap: str | None = None  # bwrap's path, when payloads run in a sandbox
    users: tuple[JobUser, ...] = ()  # who payloads run as; none: as the client
    pool: bool = False  # JOB_USERS: each of `users` runs one payload at a time
    network: bool = True  # JOB_NETWORK: False cuts every payload's network
    system: tuple[str, ...] = ()  # bwrap's arguments for the machine's system folders
    read_paths: tuple[str, ...] = ()
    write_paths: tuple[str, ...] = ()

    def command(self, folder: Path, user: JobUser | None, network: bool, run: list[str]) -> list[str]:
        """The command line that runs `run` in `folder` as `user` (None: as the client), in a sandbox if there
        is one, with its network cut unless `network` (and JOB_NETWORK) allow it."""
        switch = [] if user is None else _switch(user)
        if self.bwrap is None:
            return [*switch, *run]
        args = ["env", "--ignore-signal=TERM", self.bwrap, "--die-with-parent", "--new-session"]
        args += ["--unshare-pid", "--unshare-ipc"] + ([] if network and self.network else ["--unshare-net"])
        args += [*self.system, "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        mounted, made = ["/usr", "/etc", "/proc", "/dev"], {"/", "/tmp"}
        for option, paths in (("--ro-bind", self.read_paths), ("--bind", self.write_paths), ("--bind", [folder])):
            for path in map(str, paths):
                args += [*_parents(path, mounted, made), option, path, path]
                mounted.append(path)
        return [*args, "--chdir", str(folder), "--", *switch, "env", "--default-signal=TERM", *run]

    def environment(self, env: dict[str, str], user: JobUser | None) -> dict[str, str]:
        """`env` (the variables JOB_ENV passes) made true for the job: a user's USER, LOGNAME and HOME are the
        job user's, and in a sandbox HOME and TMPDIR are its own /tmp."""
        own = {}
        if user is not None:
            own.update(USER=user.name, LOGNAME=user.name, HOME=user.home)
        if self.bwrap is not None:
            own.update(HOME="/tmp", TMPDIR="/tmp")
        return {name: own.get(name, value) for name, value in env.items()}

    def free_user(self, running: list[Path]) -> JobUser | None:
        """The user the next payload runs as: JOB_USER, or the first of the JOB_USERS pool whom none of the
        `running` payloads' folders belongs to (None when every one is taken, or when payloads run as the
        client)."""
        if not self.pool:
            return self.users[0] if self.users else None
        taken = set()
        for folder in running:
            try:
                taken.add(folder.stat().st_uid)
            except OSError:
                pass
        return next((user for user in self.users if user.uid not in taken), None)

    def hand_over(self, folder: Path, user: JobUser | None) -> None:
        """Give `folder` and everything in it to `user` (nobody else may enter it: 0700)."""
        if user is None:
            return
        for _, dirnames, filenames, dirfd in os.fwalk(folder, follow_symlinks=False):
            for name in dirnames + filenames:
                os.chown(name, user.uid, user.gid, dir_fd=dirfd, follow_symlinks=False)
        os.chown(folder, user.uid, user.gid, follow_symlinks=False)
        os.chmod(folder, 0o700)

    def take_back(self, folder: Path) -> None:
        """Give a payload's folder back to the client once its run is over: no job user can enter it again."""
        if self.users and folder.is_dir():
            os.chown(folder, os.getuid(), os.getgid(), follow_symlinks=False)
            os.chmod(folder, 0o700)


def of(ctx: Context) -> Sandbox:
    return ctx.state(Sandbox)


def setup(ctx: Context, sandboxed: bool = True) -> Sandbox:
    """Decide, at start-up, how payloads run: sandboxed if SANDBOX allows and bubblewrap works here (tried once),
    as which users (`sandboxed` False: only as which users, for an executor that runs them elsewhere). Raises
    ValueError naming the setting when that cannot be done; SANDBOX=auto without a working bubblewrap logs one
    warning saying what is not isolated."""
    config = ctx.config
    box = of(ctx)
    box.users = _users(config) if os.geteuid() == 0 else ()
    box.pool = bool(box.users and config.job_users)
    if not sandboxed:
        return box
    box.network = config.job_network == "host"
    box.read_paths = _paths(config, "job_read_paths")
    box.write_paths = _paths(config, "job_write_paths")
    box.system = _system()
    if config.sandbox != "none":
        bwrap = shutil.which("bwrap")
        problem = "bwrap is not installed (Debian: apt-get install bubblewrap)" if bwrap is None else None
        box.bwrap = bwrap
        problem = problem or _probe(box)
        if problem is not None:
            box.bwrap = None
            if config.sandbox == "bwrap":
                raise ValueError(f"SANDBOX is bwrap, but bubblewrap cannot run jobs here: {problem}")
            log.warning(
                "SANDBOX=auto and bubblewrap cannot run jobs here (%s): jobs run WITHOUT A SANDBOX. Each sees "
                "the whole machine as %s does (other jobs' folders if it may read them, every process in /proc), "
                "keeps the network, and a process that leaves its session and drops ORCHESTRATOR_RUN outlives its "
                "job. Install bubblewrap, or set SANDBOX=none to run this way on purpose",
                problem,
                "its user" if box.users else "the client",
            )
    if box.bwrap is None and not box.network:
        raise ValueError(
            f"JOB_NETWORK is none, but jobs run without a sandbox (SANDBOX={config.sandbox}): nothing "
            f"would cut their network"
        )
    log.info(
        "jobs run %s, as %s",
        "in a bubblewrap sandbox" if box.bwrap else "without a sandbox",
        ", ".join(user.name for user in box.users) or "the client's user",
    )
    return box


def _switch(user: JobUser) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--no-new-privs", "--"]


def _parents(path: str, mounted: list[str], made: set[str]) -> list[str]:
    """bwrap's arguments that make the folders leading to `path` in the sandbox, readable and searchable by all
    (bwrap makes them 0700 otherwise), unless they are `made` already or lie in what is `mounted`."""
    args = []
    for parent in map(str, reversed(Path(path).parents)):
        if parent in made or any(parent == tree or parent.startswith(tree + "/") for tree in mounted):
            continue
        args += ["--perms", "0755", "--dir", parent]
        made.add(parent)
    return args


def _system() -> tuple[str, ...]:
    """bwrap's arguments for /usr and /etc, and /bin, /lib... as they are here: links into /usr, or folders."""
    args = [arg for path in SYSTEM for arg in ("--ro-bind", path, path)]
    for path in USR_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return tuple(args)


def _users(config: Config) -> tuple[JobUser, ...]:
    variable = "JOB_USERS" if config.job_users else "JOB_USER"
    if shutil.which("setpriv") is None:
        raise ValueError(
            f"{variable}: jobs of a client running as root run as another user, which needs setpriv "
            f"(Debian: util-linux)"
        )
    users = []
    for name in config.job_user_names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ValueError(f"{variable} names {name!r}, which is not a user of this machine") from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ValueError(f"{variable} names {name!r}, which is root: jobs must run as an unprivileged user")
        users.append(JobUser(name, entry.pw_uid, entry.pw_gid, entry.pw_dir))
    return tuple(users)


def _paths(config: Config, name: str) -> tuple[str, ...]:
    """The folders JOB_READ_PATHS or JOB_WRITE_PATHS names (where jobs find them: as given), checked: they exist,
    and neither hold nor lie in the client's data folder or database, wherever links lead."""
    variable = variable_name(name)
    private = (config.data_path.resolve(), config.db_path.resolve())
    paths = []
    for raw in split(getattr(config, name)):
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"{variable} names {raw!r}, which does not exist")
        real = path.resolve()
        if any(real == own or real in own.parents or own in real.parents for own in private):
            raise ValueError(f"{variable} names {raw!r}, which would show jobs the client's DATA_PATH or DB_PATH")
        paths.append(str(path))
    return tuple(paths)


def _probe(box: Sandbox) -> str | None:
    """Run `true` in a sandbox as payloads will run (in a scratch folder of the system's): None if it works, else
    why not."""
    user = box.users[0] if box.users else None
    try:
        with tempfile.TemporaryDirectory(prefix="orchestrator-sandbox-") as folder:
            box.hand_over(Path(folder), user)
            argv = box.command(Path(folder), user, False, ["true"])
            result = subprocess.run(
                argv, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT
            )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"it exited with code {result.returncode}"
    return None
