"""How it is installed and run: `pip install .` and `pip install -e .` into a fresh venv outside the checkout give a
working `job-orchestrator` command that serves its Swagger UI and dashboard; `make run` starts a server and a
client and stops both quietly on Ctrl-C; the Procfile's `web` process is the server on `$PORT`.

The venvs are made without pip and without dependencies of their own: they see the test run's packages through
a `.pth` file (installing the pinned ones again would only measure the network), and `pip check` proves that
those satisfy what the package declares.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from importlib.metadata import Distribution
from pathlib import Path

import pytest

from bench.harness import free_port

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")
TIMEOUT = 60.0

pytestmark = pytest.mark.slow


def checkout_copy(target: Path) -> Path:
    """The files git tracks, copied to `target` with their times (a fresh clone, without building in ours)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        path = ROOT / name.decode()
        if path.exists():
            (target / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.relative_to(ROOT))
    return target


def venv_with(tmp_path: Path, *install: str) -> Path:
    """A fresh venv in `tmp_path` that sees this run's packages, with `pip install --no-deps <install>` done in
    it; returns its bin folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "--no-deps", *install], check=True, cwd=tmp_path, env=clean_env())
    check = subprocess.run([*pip, "check"], capture_output=True, text=True, env=clean_env())
    assert check.returncode == 0, check.stdout + check.stderr
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    """Nothing of the test run's environment but PATH and HOME (no PYTHONPATH pointing at the checkout)."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **extra}


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def wait_for(condition, what: str):
    deadline = time.monotonic() + TIMEOUT
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)
    return result


def serve_installed(bin_path: Path, folder: Path) -> None:
    """Run the installed command's server in `folder`, check what it serves from static/, then stop it."""
    folder.mkdir()
    (folder / ".env").write_text(
        "SERVICE_EXAMPLE_UPLOAD_URL=http://127.0.0.1:9/submit\nSERVICE_EXAMPLE_DOWNLOAD_URL=http://127.0.0.1:9/retrieve\n"
    )
    log = folder / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(bin_path / "job-orchestrator"), "server", "--port", "0", "--host", "127.0.0.1"],
            cwd=folder,
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = wait_for(lambda: LISTENING.search(log.read_text()) or server.poll() is not None, "the server")
        assert isinstance(port, re.Match), log.read_text()
        url = f"http://127.0.0.1:{port[1]}"
        for path, kind in (("/swagger-ui/", "text/html"), ("/dashboard/", "text/html"), ("/metrics", "text/plain")):
            code, content_type, body = get(url + path)
            assert code == 200 and content_type.startswith(kind) and body, path
        assert b"dashboard.js" in get(url + "/dashboard/")[2]
        assert get(url + "/dashboard/dashboard.js")[0] == 200
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(TIMEOUT) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def installed_static(bin_path: Path, folder: Path) -> Path:
    """Where the installed program finds static/."""
    found = subprocess.run(
        [str(bin_path / "python"), "-c", "from handlers.common import STATIC; print(STATIC)"],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(found.stdout.strip())


def test_pip_install_gives_the_command_with_its_pinned_dependencies_and_static_files(tmp_path):
    source = checkout_copy(tmp_path / "source")
    bin_path = venv_with(tmp_path, str(source))
    shutil.rmtree(source)  # the installed program must not need the checkout
    declared = Distribution.at(next((tmp_path / "venv").glob("lib/python*/site-packages/job_orchestrator-*")))
    pinned = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    assert sorted(declared.requires) == sorted(pinned)
    help_text = subprocess.run(
        [str(bin_path / "job-orchestrator"), "--help"], env=clean_env(), capture_output=True, text=True, check=True
    ).stdout
    for command in ("server", "client", "submit", "status", "wait", "download", "cancel", "jobs"):
        assert command in help_text
    assert installed_static(bin_path, tmp_path).is_relative_to(tmp_path / "venv")
    serve_installed(bin_path, tmp_path / "run")


def test_pip_install_editable_serves_the_checkouts_static_files(tmp_path):
    source = checkout_copy(tmp_path / "source")
    bin_path = venv_with(tmp_path, "-e", str(source))
    assert installed_static(bin_path, tmp_path) == source / "static"
    serve_installed(bin_path, tmp_path / "run")


def test_make_run_starts_a_server_and_a_client_and_ctrl_c_stops_both_quietly(tmp_path):
    source = checkout_copy(tmp_path / "source")
    (source / ".venv").symlink_to(ROOT / ".venv")  # set up already (make test made it)
    server_port, client_port = free_port(), free_port()
    (source / ".env").write_text(
        f"PORT={server_port}\nCLIENT_PORT={client_port}\n"
        f"SERVICE_EXAMPLE_UPLOAD_URL=http://127.0.0.1:{client_port}/submit\n"
        f"SERVICE_EXAMPLE_DOWNLOAD_URL=http://127.0.0.1:{client_port}/retrieve\n"
    )
    log = tmp_path / "make.log"
    with open(log, "wb") as out:  # its own process group, which a terminal's Ctrl-C signals as a whole
        make = subprocess.Popen(
            ["make", "run"], cwd=source, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        for port in (server_port, client_port):
            wait_for(lambda port=port: _answers(f"http://127.0.0.1:{port}/health"), f"port {port}")
        os.killpg(make.pid, signal.SIGINT)
        code = make.wait(TIMEOUT)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    output = log.read_text()
    assert code in (0, -signal.SIGINT), output  # make ends as interrupted, printing nothing about it
    assert "server.1 stopped (rc=0)" in output and "client.1 stopped (rc=0)" in output, output
    for noise in ("Traceback", "ERROR", "Error", "Interrupt", "rc=-"):
        assert noise not in output, output


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_the_procfiles_web_process_is_the_server_on_PORT(tmp_path):
    (web,) = [line.split(":", 1)[1] for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:")]
    (tmp_path / "orchestrator.py").symlink_to(ROOT / "orchestrator.py")
    port = free_port()
    env = clean_env(PORT=str(port), SERVICE_EXAMPLE_UPLOAD_URL="http://127.0.0.1:9/submit")
    env["SERVICE_EXAMPLE_DOWNLOAD_URL"] = "http://127.0.0.1:9/retrieve"
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # `python` is the test run's
    web_process = subprocess.Popen(["sh", "-c", f"exec {web.strip()}"], cwd=tmp_path, env=env)
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/health"), "the web process")
    finally:
        web_process.send_signal(signal.SIGTERM)
        assert web_process.wait(TIMEOUT) == 0
