"""Fixtures of the deployment tests: podman with this machine's settings, a Debian base image made locally from
the mirror apt uses (no container registry is needed), the project's image built from the Containerfile, and
what each test creates (containers, volumes, networks), removed after it whatever happened. The time each step
took is printed at the end of the session."""

import hashlib
import json
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


IMAGE = "localhost/job-orchestrator"
LABEL = "org.job-orchestrator.tests.checkout"  # on the images the tests build: the checkout they come from


@pytest.fixture(scope="session")
def image(base_image) -> str:
    """The project's image, built from the Containerfile of this checkout on the base image: its id. Each
    checkout has a tag of its own, so that a test run of another one never moves it meanwhile."""
    runner = Podman()
    forget_gone_checkouts(runner)
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    secret = ["--secret", f"id=ca,src={CA_BUNDLE}"] if CA_BUNDLE.exists() else []
    options = ("--format", "docker", "--build-arg", f"BASE={base_image}", *secret, "--label", f"{LABEL}={ROOT}")
    started = time.monotonic()
    build(runner, f"{IMAGE}-build:tests-{checkout}", *options, "--target", "build")
    built = build(runner, f"{IMAGE}:tests-{checkout}", *options)
    timed("image built", started)
    return built


def build(runner: Podman, tag: str, *options: str) -> str:
    """Build `tag` and return its id. It stays for the next run, whose build reuses its layers and takes
    seconds, and the image it replaces is removed with the layers only it had (unless a container still uses
    it), so that the machine keeps one of each. The build stage is tagged too, for the same reason."""
    previous = runner("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    built = runner("build", "--quiet", *options, "--tag", tag, "--file", f"{ROOT}/Containerfile", str(ROOT))
    built = built.stdout.split()[-1]
    if previous and previous != built:
        runner("rmi", previous, check=False)
    return built


def forget_gone_checkouts(runner: Podman) -> None:
    """Remove the images the tests built from checkouts that no longer exist (CI's clones, removed worktrees),
    and their build stages."""
    images = json.loads(runner("images", "--filter", f"label={LABEL}", "--format", "json").stdout or "[]")
    for image in images:
        if not Path(image["Labels"][LABEL]).is_dir():
            stages = [name.replace(IMAGE, f"{IMAGE}-build", 1) for name in image.get("Names") or []]
            runner("rmi", "--force", image["Id"], *stages, check=False)
