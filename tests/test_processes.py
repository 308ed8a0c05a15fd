"""orch/processes.py with real bash processes: spawning run.sh, telling a live process, killing process trees."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tornado.process import Subprocess

from orch import processes
from tests.conftest import WAIT_TIMEOUT, wait_for

ROOT = Path(__file__).resolve().parent.parent


class Runs:
    """Starts run.sh scripts and other processes for a test, and remembers them all to kill them afterwards."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.control = tmp_path / "control"
        self.control.mkdir()
        self.subprocesses: list[Subprocess] = []
        self.popens: list[subprocess.Popen] = []
        self.pids: list[tuple[int, float | None]] = []

    def spawn(
        self, script: str, name: str = "job", env: dict[str, str] | None = None, **helpers: str
    ) -> tuple[Subprocess, Path]:
        """Start `script` as the run.sh of a new folder (other scripts beside it as name=text); returns the
        process and the folder."""
        folder = self.tmp_path / name
        folder.mkdir()
        (folder / "run.sh").write_text(script)
        for helper, text in helpers.items():
            (folder / f"{helper}.sh").write_text(text)
        process = processes.spawn(folder, self.log(folder), self.exit_file(folder), env or {}, folder.name)
        self.subprocesses.append(process)
        self.track(process.pid)
        return process, folder

    def run(self, process: Subprocess, folder: Path) -> processes.Run:
        """The Run of a process that `spawn` started (its tag is its folder's name)."""
        return processes.Run(process.pid, processes.start_time(process.pid), folder.name)

    def popen(self, args: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(args, **kwargs)
        self.popens.append(process)
        return process

    def track(self, pid: int) -> int:
        self.pids.append((pid, processes.start_time(pid)))
        return pid

    def log(self, folder: Path) -> Path:
        return folder / "run.log"

    def exit_file(self, folder: Path) -> Path:
        return self.control / f"{folder.name}.exit"

    async def pid_file(self, path: Path) -> int:
        """Wait for a script to write its pid to `path` (scripts write it under another name, then move it)."""
        await wait_for(path.exists)
        return self.track(int(path.read_text()))

    def kill_all(self) -> None:
        """SIGKILL every tracked process that still runs, with its descendants (after a failed test)."""
        doomed: list[psutil.Process] = []
        for pid, started_at in self.pids:
            if processes.alive(pid, started_at):
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    doomed += [root, *root.children(recursive=True)]
        for process in doomed:
            with contextlib.suppress(psutil.Error):
                process.kill()  # psutil refuses if the pid now belongs to another process
        for process in self.popens:
            process.kill()
            process.wait()


@pytest.fixture
def runs(io_loop, tmp_path):
    """Run scripts with the SIGCHLD handler that Subprocess needs; everything started is killed and reaped after."""
    Subprocess.initialize()
    started = Runs(tmp_path)
    try:
        yield started
    finally:
        started.kill_all()

        async def reap() -> None:
            for process in started.subprocesses:
                if process.returncode is None:  # waiting again for a reaped process would never end
                    await process.wait_for_exit(raise_error=False)

        io_loop.run_sync(reap)


def gone(pid: int) -> bool:
    """The process no longer runs (it does not exist, or it is a zombie waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def missing_pid() -> int:
    """A pid no process can have."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def write_pid(name: str, pid: str = "$$") -> str:
    """Shell line that writes a pid to `name` atomically (so a test never reads half a number)."""
    return f"echo {pid} > {name}.tmp && mv {name}.tmp {name}\n"


WAIT_FOR_GATE = "while [ ! -e gate ]; do sleep 0.01; done\n"


# --- spawn -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3])
async def test_spawn_runs_run_sh_in_its_folder_with_its_output_in_the_log_and_its_status_in_the_exit_file(runs, code):
    process, folder = runs.spawn(f'echo "out $PWD"\necho err >&2\nexit {code}\n')
    assert await process.wait_for_exit(raise_error=False) == code
    assert runs.log(folder).read_text() == f"out {folder}\nerr\n"
    assert runs.exit_file(folder).read_text() == str(code)
    assert processes.read_exit_code(runs.exit_file(folder)) == code
    assert sorted(path.name for path in runs.control.iterdir()) == ["job.exit"]


@pytest.mark.parametrize(("last", "code"), [("true", 0), ("false", 1), ("exit 7", 7)])
async def test_a_script_with_the_original_exit_trap_keeps_working(runs, last, code):
    """Scripts written for the original write `.orchestrator.exit` themselves; both files hold the right code."""
    process, folder = runs.spawn(f"trap 'echo $? > .orchestrator.exit' EXIT\necho working\n{last}\n")
    assert await process.wait_for_exit(raise_error=False) == code
    assert processes.read_exit_code(runs.exit_file(folder)) == code
    assert (folder / ".orchestrator.exit").read_text() == f"{code}\n"
    assert runs.log(folder).read_text() == "working\n"


async def test_run_sh_needs_no_executable_bit_and_reads_nothing_from_stdin(runs):
    process, folder = runs.spawn('read -r line\necho "read status $?"\n')
    assert not os.access(folder / "run.sh", os.X_OK)
    assert await process.wait_for_exit(raise_error=False) == 0
    assert runs.log(folder).read_text() == "read status 1\n"


async def test_the_script_sees_exactly_the_environment_given_and_its_runs_tag(runs):
    env = {"PATH": os.environ["PATH"], "JOB_MARK": "marked"}
    process, folder = runs.spawn('echo "[$JOB_MARK] [$PYTEST_CURRENT_TEST] [$ORCHESTRATOR_RUN]"\n', env=env)
    assert await process.wait_for_exit(raise_error=False) == 0
    assert runs.log(folder).read_text() == "[marked] [] [job]\n"


async def test_the_run_is_a_session_leader_with_run_sh_in_its_process_group(runs):
    process, folder = runs.spawn(write_pid("script.pid") + WAIT_FOR_GATE)
    script_pid = await runs.pid_file(folder / "script.pid")
    assert os.getsid(process.pid) == process.pid
    assert os.getpgid(process.pid) == process.pid
    assert os.getpgid(script_pid) == process.pid
    assert os.getpgid(process.pid) != os.getpgid(0)
    (folder / "gate").touch()
    assert await process.wait_for_exit(raise_error=False) == 0


async def test_a_folder_without_run_sh_exits_127_and_says_so_in_the_log(runs):
    folder = runs.tmp_path / "empty"
    folder.mkdir()
    process = processes.spawn(folder, runs.log(folder), runs.exit_file(folder), {}, "empty")
    runs.subprocesses.append(process)
    assert await process.wait_for_exit(raise_error=False) == 127
    assert processes.read_exit_code(runs.exit_file(folder)) == 127
    assert "run.sh" in runs.log(folder).read_text()


async def test_spawn_in_a_missing_folder_raises_oserror(runs):
    missing = runs.tmp_path / "missing"
    with pytest.raises(OSError):
        processes.spawn(missing, runs.tmp_path / "run.log", runs.control / "missing.exit", {}, "missing")
    assert not runs.exit_file(missing).exists()


# --- start_time and alive ----------------------------------------------------------------------------------


async def test_a_running_process_is_alive_with_its_start_time(runs):
    process, folder = runs.spawn(WAIT_FOR_GATE)
    started_at = processes.start_time(process.pid)
    assert started_at is not None
    assert processes.alive(process.pid, started_at)
    (folder / "gate").touch()
    assert await process.wait_for_exit(raise_error=False) == 0


async def test_a_running_process_is_not_alive_with_another_start_time(runs):
    """The guard against recycled pids: same pid, different start time, not the process we started."""
    process, folder = runs.spawn(WAIT_FOR_GATE)
    started_at = processes.start_time(process.pid)
    assert not processes.alive(process.pid, started_at + 1)
    assert not processes.alive(process.pid, started_at - 1)
    assert not processes.alive(process.pid, None)
    (folder / "gate").touch()
    assert await process.wait_for_exit(raise_error=False) == 0


async def test_a_process_is_not_alive_after_it_exits(runs):
    process, _ = runs.spawn("exit 0\n")
    started_at = processes.start_time(process.pid)
    assert await process.wait_for_exit(raise_error=False) == 0
    assert not processes.alive(process.pid, started_at)


async def test_a_zombie_is_not_alive():
    """A process that exited but was not reaped yet still has its pid and start time, yet does not run."""
    process = subprocess.Popen(["true"])
    try:
        started_at = processes.start_time(process.pid)
        assert started_at is not None
        await wait_for(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE)
        assert not processes.alive(process.pid, started_at)
    finally:
        process.kill()
        process.wait()


def test_start_time_is_none_for_a_pid_that_does_not_exist():
    assert processes.start_time(missing_pid()) is None
    assert not processes.alive(missing_pid(), None)


def test_start_time_of_this_process_is_stable():
    """Read twice, the start time is the same number (alive() compares it for equality)."""
    first = processes.start_time(os.getpid())
    assert first is not None
    assert processes.start_time(os.getpid()) == first


# --- kill_tree ---------------------------------------------------------------------------------------------


TREE = "bash child.sh &\n" + write_pid("script.pid") + "wait\n"
CHILD = "setsid bash grandchild.sh &\n" + write_pid("child.pid") + "wait\n"
GRANDCHILD = write_pid("grandchild.pid") + "exec sleep 1000\n"


async def test_kill_tree_stops_the_script_its_child_and_a_grandchild_that_left_the_group(runs):
    process, folder = runs.spawn(TREE, child=CHILD, grandchild=GRANDCHILD)
    pids = [await runs.pid_file(folder / f"{name}.pid") for name in ("script", "child", "grandchild")]
    grandchild = pids[2]
    assert os.getsid(grandchild) == grandchild  # really out of the run's session and group
    assert os.getpgid(grandchild) != process.pid
    await processes.kill_tree(runs.run(process, folder), grace=5)
    assert [pid for pid in [process.pid, *pids] if not gone(pid)] == []
    assert await process.wait_for_exit(raise_error=False) != 0


async def test_kill_tree_sigkills_a_script_that_ignores_sigterm_after_the_grace_period(runs):
    process, folder = runs.spawn("trap '' TERM\n" + write_pid("script.pid") + "exec sleep 1000\n")
    script_pid = await runs.pid_file(folder / "script.pid")
    ignored = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{script_pid}/status").read_text().splitlines()
            if line.startswith("SigIgn:")
        ),
        16,
    )
    assert ignored & (1 << (signal.SIGTERM - 1)), "the script should ignore SIGTERM"
    await processes.kill_tree(runs.run(process, folder), grace=0.1)
    assert gone(script_pid)
    assert gone(process.pid)
    assert await process.wait_for_exit(raise_error=False) != 0


async def test_a_script_that_handles_sigterm_gets_its_grace_period_and_the_wrapper_waits_for_it(runs):
    """The wrapper's exit is how the client learns that a run ended (and it then SIGKILLs the group): on SIGTERM
    it must keep waiting while run.sh cleans up, not die at once and cut the grace period short."""
    cleanup = "echo cleaning > cleaning.tmp && mv cleaning.tmp cleaning; " + WAIT_FOR_GATE.strip() + "; exit 0"
    process, folder = runs.spawn(
        f"trap '{cleanup}' TERM\n" + write_pid("script.pid") + "while true; do sleep 0.01; done\n"
    )
    script_pid = await runs.pid_file(folder / "script.pid")
    started_at = processes.start_time(process.pid)
    killing = asyncio.ensure_future(processes.kill_tree(runs.run(process, folder), grace=WAIT_TIMEOUT))
    try:
        await wait_for((folder / "cleaning").exists)
        assert processes.alive(script_pid, processes.start_time(script_pid))
        assert processes.alive(process.pid, started_at), "the wrapper ended while run.sh was still cleaning up"
    finally:
        (folder / "gate").touch()
        await killing
    assert gone(script_pid)
    await process.wait_for_exit(raise_error=False)


async def test_kill_tree_on_a_finished_run_does_nothing_and_does_not_raise(runs):
    process, folder = runs.spawn("exit 0\n")
    run = runs.run(process, folder)
    assert await process.wait_for_exit(raise_error=False) == 0
    await processes.kill_tree(run, grace=0)
    await processes.kill_tree(processes.Run(missing_pid(), None, "none"), grace=0)
    await processes.kill_tree(processes.Run(missing_pid(), 12345.0, "none"), grace=0)


@pytest.mark.parametrize("offset", [1.0, -1.0, None])
async def test_kill_tree_with_a_wrong_start_time_does_not_touch_the_process_that_has_the_pid(runs, offset):
    """A recycled pid: the process now behind it (a group leader, to catch a stray killpg too) keeps running."""
    unrelated = runs.popen(["sleep", "1000"], start_new_session=True)
    started_at = processes.start_time(unrelated.pid)
    wrong = None if offset is None else started_at + offset
    await processes.kill_tree(processes.Run(unrelated.pid, wrong, "not-its-tag"), grace=0)
    assert unrelated.poll() is None
    assert processes.alive(unrelated.pid, started_at)


# --- kill_leftovers ----------------------------------------------------------------------------------------


async def test_kill_leftovers_kills_what_a_finished_run_left_in_the_background(runs):
    process, folder = runs.spawn("sleep 1000 &\n" + write_pid("background.pid", "$!") + "exit 0\n")
    run = runs.run(process, folder)
    assert await process.wait_for_exit(raise_error=False) == 0
    background = await runs.pid_file(folder / "background.pid")
    assert not gone(background)
    assert os.getpgid(background) == process.pid
    processes.kill_leftovers(run)
    await wait_for(lambda: gone(background))


async def test_a_daemon_that_left_the_group_and_the_tree_is_swept_by_its_tag_once_its_run_ended(runs):
    """`setsid -f` double-forks: the daemon is in neither the run's group nor its tree, but it carries the tag
    `<instance>.<payload id>`: the sweep spares it while its payload runs and kills it after."""
    process, folder = runs.spawn("setsid -f sleep 1000\nexit 0\n", name="instance.7")
    assert await process.wait_for_exit(raise_error=False) == 0
    daemon = await wait_for(lambda: _tagged("instance.7"))
    runs.track(daemon)
    assert os.getpgid(daemon) != process.pid
    processes.kill_leftovers(runs.run(process, folder))
    assert processes.sweep("instance", running={7}) == 0
    assert processes.sweep("other", running=set()) == 0
    assert not gone(daemon)
    assert processes.sweep("instance", running=set()) == 1
    await wait_for(lambda: gone(daemon))


async def test_kill_tree_finds_a_daemon_of_a_running_run_by_its_tag(runs):
    process, folder = runs.spawn("setsid -f sleep 1000\n" + WAIT_FOR_GATE)
    run = runs.run(process, folder)
    daemon = await wait_for(lambda: _tagged("job"))
    runs.track(daemon)
    await processes.kill_tree(run, grace=1)
    assert gone(daemon)
    await process.wait_for_exit(raise_error=False)


def test_kill_leftovers_spares_a_group_whose_leader_is_another_process_now():
    """After a restart the recorded pid may lead someone else's group: a wrong start time keeps it alive."""
    unrelated = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        started_at = processes.start_time(unrelated.pid)
        processes.kill_leftovers(processes.Run(unrelated.pid, started_at + 1, "not-its-tag"))
        assert processes.alive(unrelated.pid, started_at)
    finally:
        unrelated.kill()
        unrelated.wait()


def test_kill_leftovers_of_a_run_that_left_nothing_does_not_raise():
    processes.kill_leftovers(processes.Run(missing_pid(), None, "none"))


@pytest.mark.parametrize("pid", [0, -1])
def test_kill_leftovers_of_a_run_that_never_started_touches_no_group(pid):
    """A pid of 0 or -1 must never reach a signal call that would mean the caller's own group."""
    code = f"from orch.processes import Run, kill_leftovers\nkill_leftovers(Run({pid}, None, 'x'))\nprint('survived')\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, start_new_session=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "survived\n"), result.stderr


def _tagged(tag: str) -> int | None:
    """The pid of a process carrying ORCHESTRATOR_RUN=<tag> other than a wrapper or bash, if any."""
    for entry in Path("/proc").iterdir():
        try:
            if (
                entry.name.isdigit()
                and f"ORCHESTRATOR_RUN={tag}".encode() in (entry / "environ").read_bytes().split(b"\0")
                and (entry / "comm").read_text().strip() == "sleep"
            ):
                return int(entry.name)
        except OSError:
            pass
    return None


# --- read_exit_code ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("0", 0),
        ("3", 3),
        ("137", 137),
        ("7\n", 7),
        (" 42 \n", 42),
        ("-1", -1),
        ("", None),
        ("garbage", None),
        ("1.5", None),
        ("0 1", None),
        ("\x00", None),
    ],
)
def test_read_exit_code_reads_an_integer_or_nothing(tmp_path, text, code):
    path = tmp_path / "job.exit"
    path.write_text(text)
    assert processes.read_exit_code(path) == code


def test_read_exit_code_is_none_when_the_file_is_missing_or_unreadable(tmp_path):
    assert processes.read_exit_code(tmp_path / "missing.exit") is None
    (tmp_path / "dir.exit").mkdir()
    assert processes.read_exit_code(tmp_path / "dir.exit") is None
    (tmp_path / "binary.exit").write_bytes(b"\xff\xfe")
    assert processes.read_exit_code(tmp_path / "binary.exit") is None
