"""Fixtures of the deployment tests: podman with this machine's settings, a Debian base image made locally from
the mirror apt uses (no container registry is needed), the project's image built from the Containerfile, and
what each test creates (containers, volumes, networks), removed after it whatever happened. The time each step
took is printed at the end of the session."""

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.support import ROOT, SYSTEM, TIMINGS, Podman, timed

CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # pip inside a build reaches PyPI through this machine's CA


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("deployment (podman)")
        for line in TIMINGS:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def podman_ready() -> None:
    """podman and what goes with it are installed (tests/system/install.sh does it in `make test`)."""
    missing = [tool for tool in ("podman", "runc", "debootstrap", "podman-compose", "curl") if not shutil.which(tool)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run tests/system/install.sh (as root)", pytrace=False)


@pytest.fixture
def podman(podman_ready) -> Iterator[Podman]:
    runner = Podman()
    try:
        yield runner
    finally:
        runner.remove_all()


@pytest.fixture(scope="session")
def base_image(podman_ready) -> str:
    """A minimal Debian of this machine's release, made from the mirror apt uses unless it was made before
    (then it is reused: the image builds in seconds)."""
    runner = Podman()
    image = f"localhost/debian:{_codename()}"
    made = runner("image", "exists", image, check=False).returncode != 0
    started = time.monotonic()
    runner.command("sh", str(SYSTEM / "debian-image.sh"), image)
    if made:
        timed(f"base image {image} made (debootstrap, import)", started)
    else:
        TIMINGS.append(f"base image {image}: made before, reused")
    return image


def _codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    pytest.fail("no VERSION_CODENAME in /etc/os-release: not a Debian machine", pytrace=False)


@pytest.fixture(scope="session")
def image(base_image) -> str:
    """The project's image, built from the Containerfile on the base image: its id (a tag may move if another
    test run builds meanwhile)."""
    runner = Podman()
    secret = ["--secret", f"id=ca,src={CA_BUNDLE}"] if CA_BUNDLE.exists() else []
    options = ("--format", "docker", "--build-arg", f"BASE={base_image}", *secret, "--file", f"{ROOT}/Containerfile")
    started = time.monotonic()
    build(runner, "localhost/job-orchestrator-build:tests", *options, "--target", "build")
    built = build(runner, "localhost/job-orchestrator:tests", *options)
    timed("image built", started)
    return built


def build(runner: Podman, tag: str, *options: str) -> str:
    """Build `tag` and return its id. It stays for the next run, whose build reuses its layers and takes
    seconds, and the image it replaces is removed with the layers only it had (unless a container still uses
    it), so that the machine keeps one of each. The build stage is tagged too, for the same reason."""
    previous = runner("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    built = runner("build", "--quiet", *options, "--tag", tag, str(ROOT)).stdout.split()[-1]
    if previous and previous != built:
        runner("rmi", previous, check=False)
    return built
