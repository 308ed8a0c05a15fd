"""The image, run for real with podman: a server and a client container (hardened as compose.yaml has them) run a
job sent from this machine with curl, its zip comes back, a job running when the client's container restarts
ends Failed with the reason, and both stop cleanly on SIGTERM within 5 s; the client refuses to start without a
token; and the run options docs/containers.md names let bubblewrap sandbox jobs inside the client's container,
while the default ones do not (so that SANDBOX=auto falls back, and says so)."""

import json
import secrets
import time
import zipfile

import pytest

from bench.harness import free_port
from tests.deploy.support import curl, get, timed, wait_for_status, wait_until_healthy

pytestmark = pytest.mark.slow

HARDENED = ("--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges")
STOP_WITHIN = 5.0  # seconds from SIGTERM to a clean exit
# What a job's sandbox needs from the container: bubblewrap's command of the sandbox (its network cut too, as
# JOB_NETWORK=none has it), less the job's folder.
BWRAP = (
    "bwrap --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 "
    "--ro-bind /etc /etc --proc /proc --dev /dev --tmpfs /tmp --unshare-pid --unshare-ipc --unshare-net "
    "--new-session --die-with-parent"
)


def test_a_server_and_a_client_container_run_a_job_sent_with_curl_and_stop_on_sigterm(podman, image, tmp_path):
    token = secrets.token_hex(16)
    network = podman.network("net")
    client = podman.run(
        podman.name("client"), *HARDENED, "--network", network, "--env", f"ORCH_TOKEN={token}",
        "--volume", f"{podman.volume('client-data')}:/data", image, "client",
    )  # fmt: skip
    port = free_port()
    started = time.monotonic()
    server = podman.run(
        podman.name("server"), *HARDENED, "--network", network, "--publish", f"127.0.0.1:{port}:5000",
        "--env", f"ORCH_TOKEN={token}",
        "--env", f"SERVICE_EXAMPLE_UPLOAD_URL=http://{client}:9000/submit",
        "--env", f"SERVICE_EXAMPLE_DOWNLOAD_URL=http://{client}:9000/retrieve",
        "--volume", f"{podman.volume('server-data')}:/data", image,  # no command: the server is the default
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url)
    timed("image: server and client containers answering", started)

    (tmp_path / "run.sh").write_text('id -u > uid.txt\necho "hello from $(hostname)" > result.txt\n')
    started = time.monotonic()
    answer = curl("-F", "file=@run.sh", "-F", "user_id=1", "-F", "service=example", f"{url}/upload", cwd=tmp_path)
    assert '"status": "Queued"' in answer
    assert wait_for_status(url, 1, {"Completed", "Failed", "Invalid", "Unknown"})["status"] == "Completed"
    curl("-f", "-o", "result.zip", f"{url}/download/1", cwd=tmp_path)
    timed("image: a job through server and client containers, its zip downloaded", started)
    with zipfile.ZipFile(tmp_path / "result.zip") as result:
        assert result.read("uid.txt") == b"1000\n"  # the image's unprivileged user
        assert result.read("result.txt").startswith(b"hello from ")

    # A client's container that stops takes its running jobs along: restarted, the client says so.
    (tmp_path / "run.sh").write_text("sleep 60\n")
    curl("-F", "file=@run.sh", "-F", "user_id=1", "-F", "service=example", f"{url}/upload", cwd=tmp_path)
    wait_for_status(url, 2, {"Running"})
    podman("restart", "--time", "30", client)
    ended = wait_for_status(url, 2, {"Completed", "Failed", "Invalid", "Unknown", "Killed"})
    assert ended == {
        "id": 2,
        "status": "Failed",
        "message": "run.sh ended while the client was down, leaving no exit status",
    }

    # The static files are package data: the package installed in the image serves them.
    for path, kind in (("/swagger-ui/", "text/html"), ("/dashboard/", "text/html"), ("/metrics", "text/plain")):
        code, content_type, body = get(url + path)
        assert code == 200 and content_type.startswith(kind) and body, path
    for name in (server, client):  # a container's health check is its /health
        assert podman("healthcheck", "run", name, check=False).returncode == 0, podman.logs(name)
    for name in (server, client):
        started = time.monotonic()
        podman("stop", "--time", "30", name)  # SIGTERM, then SIGKILL only after 30 s
        assert timed(f"image: {name.rsplit('-', 1)[1]} stopped by SIGTERM", started) < STOP_WITHIN
        logs = podman.logs(name)
        assert podman.exit_code(name) == 0, logs
        assert "stopping" in logs and "Traceback" not in logs, logs


def test_clients_join_a_server_by_themselves_under_their_container_names(podman, image, tmp_path):
    """As the Kubernetes manifests have them: the server lists no client for the service; each client joins it
    (SERVER_URL, SERVICES) under its own name (ADVERTISE_URL), and jobs go to those with a free slot."""
    token = secrets.token_hex(16)
    network = podman.network("net")
    port = free_port()
    server = podman.run(
        podman.name("server"), "--network", network, "--publish", f"127.0.0.1:{port}:5000",
        "--env", f"ORCH_TOKEN={token}", "--env", "SERVICE_EXAMPLE_CLIENTS=", image,
    )  # fmt: skip
    clients = [podman.name(f"client{number}") for number in (1, 2)]
    started = time.monotonic()
    for client in clients:
        podman.run(
            client, "--network", network, "--env", f"ORCH_TOKEN={token}", "--env", f"SERVER_URL=http://{server}:5000",
            "--env", "SERVICES=example", "--env", f"ADVERTISE_URL=http://{client}:9000", "--env", "SLOTS=1",
            image, "client",
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url)
    joined = {f"http://{client}:9000" for client in clients}
    deadline = time.monotonic() + 30
    while {client["address"] for client in json.loads(get(f"{url}/overview")[2])["clients"]} != joined:
        assert time.monotonic() < deadline, [get(f"{url}/overview")[2], *(podman.logs(name) for name in clients)]
        time.sleep(0.2)
    timed("image: two clients joined the server", started)

    (tmp_path / "run.sh").write_text("sleep 2; hostname > host.txt\n")
    for _ in clients:  # one slot each: the two run at once, one on each client
        curl("-F", "file=@run.sh", "-F", "user_id=1", "-F", "service=example", f"{url}/upload", cwd=tmp_path)
    hosts = set()
    for job_id in (1, 2):
        assert wait_for_status(url, job_id, {"Completed", "Failed", "Invalid", "Unknown"})["status"] == "Completed"
        curl("-f", "-o", f"result{job_id}.zip", f"{url}/download/{job_id}", cwd=tmp_path)
        with zipfile.ZipFile(tmp_path / f"result{job_id}.zip") as result:
            hosts.add(result.read("host.txt"))
    assert len(hosts) == 2


def test_a_client_container_without_a_token_refuses_to_start(podman, image):
    """The image listens on every address of the container, so a client needs ORCH_TOKEN (or --insecure)."""
    done = podman.run_once(image, "client")
    assert done.returncode == 2
    assert "set ORCH_TOKEN" in done.stderr


@pytest.mark.parametrize(
    "options, user",
    [
        pytest.param((), None, id="default"),
        pytest.param(("--security-opt", "unmask=/proc/*"), "1000", id="unmask-proc"),
        pytest.param((*HARDENED, "--security-opt", "unmask=/proc/*"), "1000", id="hardened-unmask-proc"),
        pytest.param(("--privileged",), "1000", id="privileged"),
        pytest.param(("--cap-add", "SYS_ADMIN"), None, id="cap-sys-admin"),
        pytest.param(("--security-opt", "seccomp=unconfined"), None, id="seccomp-unconfined"),
        pytest.param(("--user", "0"), None, id="root"),
        pytest.param(("--user", "0", "--cap-add", "SYS_ADMIN"), None, id="root-cap-sys-admin"),  # no netns for the job
        pytest.param(("--user", "0", "--cap-add", "SYS_ADMIN,NET_ADMIN"), "0", id="root-cap-sys-net-admin"),
    ],
)
def test_bubblewrap_sandboxes_a_job_in_the_client_container_with_the_options_the_docs_name(
    podman, image, options, user
):
    """`user`: who the sandboxed job runs as, or None where bubblewrap cannot make the sandbox."""
    script = 'cat /proc/1/comm; ls /proc | grep -c "^[0-9]"; id -u'
    done = podman.run_once(*options, "--entrypoint", "sh", image, "-c", f"{BWRAP} sh -c '{script}'")
    if user is None:
        assert done.returncode != 0 and "bwrap:" in done.stderr, done.stdout + done.stderr
    else:
        assert done.returncode == 0, done.stderr
        init, processes, uid = done.stdout.split()
        assert init == "bwrap" and int(processes) <= 4, done.stdout  # its own processes only, under bwrap's init
        assert uid == user
