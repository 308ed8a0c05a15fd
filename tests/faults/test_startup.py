"""An operator's mistakes at start-up, made with real `orchestrator.py` processes: each is refused with one line
naming its cause, or survived, and no user's data is lost."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import ROOT, Cluster, free_port, request, wait

FLAG_WAIT = "while [ ! -e {flag} ]; do sleep 0.05; done\n"


def start_refused(cluster: Cluster, mode: str, port: int | None = None, folder: Path | None = None, **env: str) -> str:
    """Start another `orchestrator.py` of `mode` with the settings of the cluster's node (and `env`), on its
    port or `port`, in its folder or `folder`: it must exit at once with an error. Returns its one line."""
    node = cluster.server if mode == "server" else cluster.client
    settings = {**node.env, **env}
    result = subprocess.run(
        [sys.executable, str(ROOT / "orchestrator.py"), mode, "--port", str(port or node.port)],
        cwd=folder or node.folder,
        env={"PATH": os.environ["PATH"], **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # one line, never a traceback
    return lines[0]


def zip_of(cluster: Cluster, job_id: int) -> bytes:
    code, kind, body = request(f"{cluster.server.url}/download/{job_id}")
    assert (code, kind) == (200, "application/zip"), body
    return body


def test_a_mistyped_db_path_is_refused_and_every_result_stays_downloadable(cluster, tmp_path):
    nodes = cluster()
    ids = [nodes.submit(f"job{n}") for n in range(3)]
    assert set(nodes.wait_finished().values()) == {"Completed"}
    nodes.server.stop()

    missing = start_refused(nodes, "server", DB_PATH="/nonexistent/dir/x.sqlite")
    assert "DB_PATH" in missing and "'/nonexistent/dir' does not exist" in missing
    assert not Path("/nonexistent").exists()

    other = tmp_path / "typo.sqlite"
    fresh = start_refused(nodes, "server", DB_PATH=str(other))
    assert "disagree" in fresh and str(other) in fresh and "DATA_PATH" in fresh
    assert not other.exists()  # not even an empty database was made

    nodes.server.start()
    for job_id in ids:
        assert len(zip_of(nodes, job_id)) > 0


def test_the_database_of_another_data_folder_is_refused(cluster, tmp_path):
    nodes = cluster()
    nodes.submit("job0")
    nodes.wait_finished()
    nodes.server.stop()
    other = Cluster(tmp_path / "other", {}, {})  # another server, with a database and a data folder of its own
    other.server.start()
    other.server.stop()
    line = start_refused(nodes, "server", DB_PATH=str(other.server.folder / "server.sqlite"))
    assert "disagree" in line and "belongs to another database" in line


def test_a_second_server_is_refused_and_the_live_servers_upload_completes(cluster):
    nodes = cluster()
    size = 40 * 1024 * 1024
    head = (
        b'--b\r\nContent-Disposition: form-data; name="user_id"\r\n\r\n1\r\n'
        b'--b\r\nContent-Disposition: form-data; name="service"\r\n\r\nexample\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="run.sh"\r\n\r\nexit 0\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    )
    tail = b"\r\n--b--\r\n"
    with socket.create_connection(("127.0.0.1", nodes.server.port)) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {len(head) + size + len(tail)}\r\n\r\n".encode()
            + head
            + b"x" * (size // 2)
        )
        data = nodes.server.folder / "data" / "server"
        wait(
            lambda: any(path.is_dir() and not path.name.startswith(".") for path in data.iterdir()),
            what="the upload to be received",
        )

        same_port = start_refused(nodes, "server")
        assert f"PORT {nodes.server.port} is already in use" in same_port
        other_port = start_refused(nodes, "server", port=free_port())
        assert f"in use by another process (pid {nodes.server.popen.pid}" in other_port

        sock.sendall(b"x" * (size - size // 2) + tail)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 201"), answer
    job_id = int(answer.split(b'"id": ')[1].split(b",")[0])
    nodes.jobs["upload"] = job_id
    assert nodes.wait_finished() == {"upload": "Completed"}
    assert len(zip_of(nodes, job_id)) > 0


def test_a_second_server_and_client_are_refused_during_a_run_and_the_run_completes(cluster):
    nodes = cluster()
    flag = nodes.shared / "go"
    job_id = nodes.submit("job0", FLAG_WAIT.format(flag=flag))
    wait(lambda: (nodes.status(job_id) or {}).get("status") == "Running", what="the job to run")

    for mode in ("server", "client"):
        node = nodes.server if mode == "server" else nodes.client
        assert f"PORT {node.port} is already in use" in start_refused(nodes, mode)
        assert f"(pid {node.popen.pid}" in start_refused(nodes, mode, port=free_port())

    flag.touch()
    assert nodes.wait_finished() == {"job0": "Completed"}
    assert nodes.ran() == {"job0": 1}
    assert len(zip_of(nodes, job_id)) > 0


def test_queued_jobs_of_a_service_removed_for_a_restart_wait_for_it_and_a_sent_one_is_followed(cluster):
    nodes = cluster(server_env={"SERVICE_EXAMPLE_MAX_RUNS": "1"})
    flag = nodes.shared / "go"
    sent = nodes.submit("sent", FLAG_WAIT.format(flag=flag))
    wait(lambda: (nodes.status(sent) or {}).get("status") == "Running", what="the first job to run")
    queued = [nodes.submit(f"queued{n}") for n in range(2)]
    service = {key: value for key, value in nodes.server.env.items() if key.startswith("SERVICE_EXAMPLE_")}

    nodes.server.stop()
    for key in service:
        del nodes.server.env[key]
    nodes.server.start()
    assert "service 'example'" in nodes.server.log() and "not configured" in nodes.server.log()
    for job_id in queued:
        answer = nodes.status(job_id)
        assert answer["status"] == "Queued" and "not configured" in answer["message"]
    flag.touch()  # the job sent before goes on, followed at the client it was sent to
    wait(lambda: nodes.status(sent) == {"status": "Completed"}, what="the sent job to complete")
    assert len(zip_of(nodes, sent)) > 0
    assert all(nodes.status(job_id)["status"] == "Queued" for job_id in queued)

    nodes.server.stop()
    nodes.server.env.update(service)
    nodes.server.start()
    assert set(nodes.wait_finished().values()) == {"Completed"}
    assert nodes.ran() == {"sent": 1, "queued0": 1, "queued1": 1}


@pytest.mark.parametrize(
    ("host", "said"),
    [("no-such-host.invalid", "not an address of this machine"), ("192.0.2.1", "cannot listen on HOST '192.0.2.1'")],
)
def test_a_bad_host_is_refused_naming_it_and_nothing_is_created(tmp_path, host, said):
    nodes = Cluster(tmp_path, {}, {})
    empty = tmp_path / "empty"
    empty.mkdir()
    for mode in ("server", "client"):
        line = start_refused(nodes, mode, folder=empty, HOST=host, ORCH_TOKEN="t0k3n")
        assert line.startswith(f"orchestrator {mode}: ") and said in line and "HOST" in line and host in line
    assert list(empty.iterdir()) == []
