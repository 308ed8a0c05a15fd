"""The suite's own check: a test run that leaves a process behind fails, naming it, and kills it."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import job_processes

ROOT = Path(__file__).resolve().parent.parent
LEAKY = """
import subprocess

STARTED = []


def test_that_forgets_its_process():
    STARTED.append(subprocess.Popen(["sleep", "4242"]))
"""


def test_a_run_that_leaves_a_process_fails_naming_it_and_the_process_is_killed(tmp_path):
    (tmp_path / "test_leaky.py").write_text(LEAKY)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            "-c",
            str(ROOT / "pyproject.toml"),
            str(tmp_path / "test_leaky.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 passed" in run.stdout  # the test itself passed: the check failed the run
    assert "processes left running by the suite" in run.stdout and "sleep 4242" in run.stdout
    assert not job_processes("sleep", "4242")
