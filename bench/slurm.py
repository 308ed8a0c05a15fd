"""A real one-node Slurm cluster on this machine: munged, slurmctld and slurmd, for the tests (tests/services/slurm.py)
and the benchmarks (bench/slurm_jobs.py).

`SlurmCluster().start()` starts one; `stop()` stops it whatever happened. Where Slurm is not installed
(tests/system/install.sh installs it) or does not start, `start()` raises Unavailable with the reason.

The daemons run as the current user (root in CI) with a generated slurm.conf, on free ports, with every state,
spool, log and pid file in a temporary folder that is removed afterwards; munged runs as user munge on a socket
of its own in that folder, so that two test sessions at once never share (or stop) each other's. Stopping
cancels every job, waits until no slurmstepd is left, then stops each daemon by its pid (SIGTERM, then SIGKILL),
so that nothing outlives the session (the root conftest checks).
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.harness import free_port

COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "sacct", "munged", "munge")
PARTITION = "test"
CPUS = 64  # more than the machine has (slurmd accepts it with config_overrides): room for ~50 trivial jobs at once
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05
TIMINGS: list[str] = []
RUNNING: list["SlurmCluster"] = []  # started and not yet stopped


def cluster_processes() -> list[psutil.Process]:
    """The processes of every cluster running now: tests that check that nothing else runs leave these out."""
    return [process for cluster in RUNNING for process in cluster.processes()]


# MinJobAge: an ended job stays visible to squeue/scontrol for 2 s (then slurmctld forgets it at its next purge,
# every 10 s at most); sacct -c reads the end state and exit code from the jobcomp file at any time.
# KillWait: 1 s between SIGTERM and SIGKILL on scancel or time limit. batch_sched_delay=0: schedule at once.
CONFIG = """\
ClusterName=tests
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
PlugStackConfig={folder}/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=2
KillWait=1
SchedulerParameters=batch_sched_delay=0
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE OverSubscribe=YES State=UP
"""


class Unavailable(Exception):
    """Slurm cannot be installed or started here: the tests that need it are skipped with this reason."""


def wait(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it returns something truthy; raise TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(POLL)
    return result


def alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def slurmstepds() -> list[psutil.Process]:
    """The live slurmstepd processes below this one (slurmd leaves them; this process is a child subreaper)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "slurmstepd" and alive(child):
                found.append(child)
        except psutil.Error:
            pass
    return found


def reap_slurmstepds() -> None:
    """Reap the slurmstepd processes that ended as zombies of this process (their parent slurmd let them go)."""
    for child in psutil.Process().children():
        try:
            if child.name() == "slurmstepd" and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


class SlurmCluster:
    """One node running slurmctld and slurmd. `env` is what a Slurm command needs on top of the environment
    (`SLURM_CONF`), `partition` the partition covering the node."""

    def __init__(self) -> None:
        self.node = socket.gethostname().split(".")[0]
        self.partition = PARTITION
        self.folder: Path | None = None
        self.env: dict[str, str] = {}
        self.daemons: list[subprocess.Popen] = []
        self.munged: subprocess.Popen | None = None

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> str:
        """Run a Slurm command (`run("squeue", "-h")`) against this cluster; its stdout."""
        result = subprocess.run(args, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        return result.stdout

    def jobs(self, active_only: bool = False) -> list[str]:
        """The ids of the jobs Slurm knows: pending, running or ending, and (unless `active_only`) those that
        ended less than MinJobAge ago and are not purged yet."""
        states = ("-t", "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING") if active_only else ("-t", "all")
        return self.run("squeue", "-h", "-o", "%i", *states).split()

    def wait_no_jobs(self, timeout: float = 60.0, active_only: bool = False) -> None:
        """Wait until Slurm knows no job any more (with `active_only`, until none is pending, running or ending:
        much sooner, as slurmctld purges ended jobs only every 10 s)."""
        try:
            wait(lambda: not self.jobs(active_only), timeout, "Slurm to know no job")
        except TimeoutError as e:
            raise TimeoutError(f"{e}; still known: {self.jobs(active_only)}") from None
        reap_slurmstepds()

    def cancel_all(self) -> None:
        """Cancel every job still pending or running."""
        if ids := self.jobs(active_only=True):
            self.run("scancel", *ids, check=False)

    def start(self) -> None:
        """Start munged (unless one runs), slurmctld and slurmd; return once the node is idle and a job ran.
        Raises Unavailable with the reason if Slurm is not installed or does not start."""
        missing = [command for command in COMMANDS if not shutil.which(command)]
        if missing:
            raise Unavailable(f"not installed: {', '.join(missing)} (tests/system/install.sh installs them)")
        started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="slurm-tests-"))
        self.start_munged()
        for name in ("state", "spool"):
            (self.folder / name).mkdir()
        conf = self.folder / "slurm.conf"
        conf.write_text(
            CONFIG.format(
                node=self.node,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                user=pwd.getpwuid(os.geteuid()).pw_name,
                folder=self.folder,
                cpus=CPUS,
                partition=self.partition,
            )
        )
        (self.folder / "plugstack.conf").write_text("")
        for config in (conf, self.folder / "plugstack.conf"):
            config.chmod(0o644)  # Slurm's commands read them as any user (the jobs' too)
        self.env = {"SLURM_CONF": str(conf)}
        for daemon in ("slurmctld", "slurmd"):
            self.daemons.append(self.spawn([daemon, "-D"], daemon, env={**os.environ, **self.env}))
        try:
            wait(self.node_idle, START_TIMEOUT, f"node {self.node} to be idle")
            probe = self.run("sbatch", "--parsable", "-o", "/dev/null", "-D", str(self.folder), "--wrap", "true")
            job_id = probe.strip().split(";")[0]
            wait(
                lambda: self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T").strip() == "COMPLETED",
                START_TIMEOUT,
                "a first job to complete",
            )
        except (TimeoutError, RuntimeError, subprocess.SubprocessError) as e:
            raise Unavailable(f"{e}{self.logs()}") from None
        RUNNING.append(self)
        TIMINGS.append(f"cluster started in {time.monotonic() - started:.1f} s (a first job ran)")

    def processes(self) -> list[psutil.Process]:
        """The daemons, what they started, and the slurmstepd processes they let go (this process took them)."""
        found = []
        for daemon in [*self.daemons, *([self.munged] if self.munged else [])]:
            try:
                process = psutil.Process(daemon.pid)
                found += [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        for stepd in slurmstepds():
            found += [stepd, *children(stepd)]
        return found

    def stop_controller(self) -> None:
        """Stop slurmctld, as an operator restarting it does (its jobs go on running on the node)."""
        terminate(self.daemons[0])

    def start_controller(self) -> None:
        """Start slurmctld again, with the state it saved; return once it answers."""
        self.daemons[0] = self.spawn(["slurmctld", "-D"], "slurmctld-again", env={**os.environ, **self.env})
        wait(self.answers, START_TIMEOUT, "slurmctld to answer")

    def answers(self) -> bool:
        """Whether slurmctld answers (squeue)."""
        squeue = subprocess.run(["squeue", "-h"], env={**os.environ, **self.env}, capture_output=True, timeout=30)
        return squeue.returncode == 0

    def node_idle(self) -> bool:
        for daemon in self.daemons:
            if daemon.poll() is not None:
                raise RuntimeError(f"{daemon.args[0]} exited {daemon.returncode}")
        result = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%T", check=False, timeout=10)
        return result.strip() == "idle"

    def logs(self) -> str:
        """The end of each daemon's output, to explain why it did not start."""
        tails = []
        for path in sorted(self.folder.glob("*.out")) if self.folder else []:
            lines = path.read_text(errors="replace").strip().splitlines()[-5:]
            tails.append(f"\n{path.name}: " + "\n  ".join(lines))
        return "".join(tails)

    def spawn(self, args: list[str], name: str, **kwargs) -> subprocess.Popen:
        """Start a daemon in the foreground, in its own session (a Ctrl-C of pytest leaves it to stop()),
        with its output in `name`.out and umask 022."""
        with open(self.folder / f"{name}.out", "wb") as out:
            return subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=0o022,  # as an init system starts them, whatever this process's umask
                **kwargs,
            )

    def munge_answers(self) -> bool:
        try:
            command = ["munge", f"--socket={self.folder}/munge/munge.socket", "-n"]
            return (
                subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10).returncode
                == 0
            )
        except (OSError, subprocess.TimeoutExpired):
            return False

    def start_munged(self) -> None:
        """Start munged as user munge, as its init script would (none runs here), with its socket, pid, seed and
        log files in this cluster's folder (which munge must be able to traverse: 0711)."""
        folder = self.folder / "munge"
        try:
            munge = pwd.getpwnam("munge")
            self.folder.chmod(0o711)
            folder.mkdir()
            folder.chmod(0o711)  # whatever the umask (a client in the same process sets 077)
            os.chown(folder, munge.pw_uid, munge.pw_gid)
            files = [
                f"--{name}={folder}/munged.{suffix}"
                for name, suffix in (("pid-file", "pid"), ("log-file", "log"), ("seed-file", "seed"))
            ]
            self.munged = self.spawn(
                ["munged", "--foreground", f"--socket={folder}/munge.socket", *files],
                "munged",
                user=munge.pw_uid,
                group=munge.pw_gid,
                extra_groups=[],
                cwd="/",
            )
        except (KeyError, OSError) as e:
            raise Unavailable(f"cannot start munged: {e}") from None
        try:
            wait(self.munge_answers, START_TIMEOUT, "munged to answer")
        except TimeoutError as e:
            raise Unavailable(f"{e}{self.logs()}") from None

    def stop(self) -> None:
        """Cancel every job, wait until no slurmstepd is left, stop the daemons started here, and remove the
        folder. Runs after a failed start too."""
        started = time.monotonic()
        if self in RUNNING:
            RUNNING.remove(self)
        if self.daemons and all(daemon.poll() is None for daemon in self.daemons):
            try:
                self.cancel_all()
                wait(lambda: not self.jobs(active_only=True), STOP_TIMEOUT, "the jobs to end")
            except (TimeoutError, RuntimeError, subprocess.TimeoutExpired):
                pass
        try:
            wait(lambda: not slurmstepds(), STOP_TIMEOUT, "slurmstepd to exit")
        except TimeoutError:
            pass
        leftovers = [
            process
            for daemon in self.daemons
            if daemon.poll() is None
            for process in psutil.Process(daemon.pid).children(recursive=True)
        ] + slurmstepds()
        for daemon in reversed(self.daemons):  # slurmd, then slurmctld
            terminate(daemon)
        self.daemons.clear()
        for process in leftovers:  # what the daemons left behind (slurmscriptd, a slurmstepd and its job)
            for each in [process, *children(process)]:
                try:
                    each.kill()
                except psutil.Error:
                    pass
        psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT)
        reap_slurmstepds()
        if self.munged:
            terminate(self.munged)
            self.munged = None
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
            TIMINGS.append(f"cluster stopped in {time.monotonic() - started:.1f} s")


def children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def terminate(daemon: subprocess.Popen) -> None:
    """Stop a daemon by its pid: SIGTERM, then SIGKILL if it is still there after STOP_TIMEOUT seconds."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
