"""Jobs that attack other jobs and the client, as real jobs of two users on real `orchestrator.py` processes (a
server and a client sharing ORCH_TOKEN): every attack fails. And hostile uploads to a real server, whose memory
stays where it was."""

import http.client
import io
import json
import zipfile

import psutil
import pytest

from bench.cluster import Cluster, request, wait
from tests.conftest import job_processes, multipart

pytestmark = pytest.mark.slow

TOKEN = "t0k3n-of-the-client"
FINISHED = {"Completed", "Failed", "Invalid", "Killed", "Unknown"}


@pytest.fixture
def cluster(tmp_path):
    """A server and a client process with ORCH_TOKEN, the client's leftover sweep out of the way."""
    nodes = Cluster(tmp_path, {"ORCH_TOKEN": TOKEN}, {"ORCH_TOKEN": TOKEN, "CLEANER_INTERVAL": "3600"})
    nodes.start()
    yield nodes
    nodes.stop()


def submit(cluster: Cluster, files: dict[str, bytes], user_id: int) -> int:
    body, content_type = multipart({"user_id": str(user_id), "service": "example"}, files)
    code, _, answer = request(f"{cluster.server.url}/upload", body, {"Content-Type": content_type})
    assert code == 201, answer
    return json.loads(answer)["id"]


def status(cluster: Cluster, job_id: int) -> str:
    answer = cluster.status(job_id)
    return (answer or {}).get("status", "")


def result(cluster: Cluster, job_id: int) -> zipfile.ZipFile:
    code, kind, body = request(f"{cluster.server.url}/download/{job_id}")
    assert (code, kind) == (200, "application/zip"), body
    return zipfile.ZipFile(io.BytesIO(body))


def forged_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("result.txt", "forged by another job\n")
    return buffer.getvalue()


# Job B's attacks on every other payload folder it can name (payload ids are given in order: A's is 1) and on
# the control folder; each line of attack.txt is an attack that worked.
ATTACKS = """
for victim in ../1 ../*/; do
  [ "${victim%/}" = "../${PWD##*/}" ] && continue
  cat "$victim/secret.txt" > /dev/null 2>&1 && echo "read $victim/secret.txt" >> attack.txt
  echo 'echo pwned > pwned.txt' >> "$victim/run.sh" 2>/dev/null && echo "changed $victim/run.sh" >> attack.txt
  echo overwritten 2>/dev/null > "$victim/secret.txt" && echo "overwrote $victim/secret.txt" >> attack.txt
  truncate -s 300M "$victim/pad.bin" 2>/dev/null && echo "padded $victim" >> attack.txt
done
ls ../.control > /dev/null 2>&1 && echo "listed the control folder" >> attack.txt
cp forged.zip ../.control/1.zip 2>/dev/null && echo "forged the result of payload 1" >> attack.txt
echo done > done.txt
"""


def test_a_job_can_neither_read_change_nor_forge_another_users_job(cluster):
    gate = cluster.shared / "go"
    victim = {
        "run.sh": f"while [ ! -e {gate} ]; do sleep 0.05; done\ncat secret.txt > result.txt\n".encode(),
        "secret.txt": b"the secret of user 501\n",
    }
    a = submit(cluster, victim, user_id=501)
    wait(lambda: status(cluster, a) == "Running", what="job A to run")
    b = submit(cluster, {"run.sh": ATTACKS.encode(), "forged.zip": forged_zip()}, user_id=502)
    wait(lambda: status(cluster, b) in FINISHED, what="job B to finish")
    gate.touch()
    wait(lambda: status(cluster, a) in FINISHED, what="job A to finish")

    assert (status(cluster, a), status(cluster, b)) == ("Completed", "Completed")
    attacks = result(cluster, b)
    assert attacks.read("done.txt") == b"done\n"
    assert "attack.txt" not in attacks.namelist()  # not one attack worked
    own = result(cluster, a)
    assert own.read("result.txt") == b"the secret of user 501\n"
    assert own.read("secret.txt") == b"the secret of user 501\n"
    assert own.read("run.sh") == victim["run.sh"]
    assert not {"pwned.txt", "pad.bin"} & set(own.namelist())


def test_a_job_cannot_read_the_clients_token(cluster):
    """The job looks for ORCH_TOKEN where it was found before: in the environment of its parent's parent (the
    blocklist's `/proc/` rule does not see a split word), of every process it can see, in its own. What it read of
    every process goes to procs.txt, so that a look that read nothing does not pass for one that found nothing."""
    attack = (
        "P=/pro;P=${P}c\n"
        "C=$(awk '{print $4}' $P/$PPID/stat)\n"
        "tr '\\0' '\\n' < $P/$C/environ >> found.txt 2>&1\n"
        "for f in $P/[0-9]*/environ $P/[0-9]*/cmdline; do tr '\\0' '\\n' < $f; done >> procs.txt 2>&1\n"
        "env >> found.txt\n"
        "exit 0\n"
    )
    job_id = submit(cluster, {"run.sh": attack.encode()}, user_id=503)
    wait(lambda: status(cluster, job_id) in FINISHED, what="the job to finish")
    assert status(cluster, job_id) == "Completed"
    found = result(cluster, job_id)
    assert found.read("found.txt")  # it did look
    # It did read environments through /proc: at least its own processes', which hold their run's tag.
    tags = {line for line in found.read("found.txt").splitlines() if line.startswith(b"ORCHESTRATOR_RUN=")}
    assert tags and tags <= set(found.read("procs.txt").splitlines())
    assert all(TOKEN.encode() not in found.read(name) for name in found.namelist())


@pytest.mark.parametrize(("ending", "daemon"), [("terminate", "4007"), ("finish", "4009")])
def test_a_daemon_that_leaves_its_session_and_drops_its_tag_dies_with_its_job(cluster, ending, daemon):
    """Nothing outlives its job, even a process that unsets ORCHESTRATOR_RUN and calls setsid: it dies when its job
    is terminated or ends, not at the next sweep (which this client does only every hour)."""
    body = f"( setsid env -u ORCHESTRATOR_RUN sleep {daemon} >/dev/null 2>&1 </dev/null & )\n"
    body += f"while [ ! -e {cluster.shared}/end ]; do sleep 0.05; done\n" if ending == "finish" else "sleep 4008\n"
    job_id = submit(cluster, {"run.sh": body.encode()}, user_id=504)
    wait(lambda: job_processes("sleep", daemon), what="the daemon to start")
    if ending == "terminate":
        code, _, answer = request(f"{cluster.server.url}/terminate/{job_id}", b"", method="POST")
        assert (code, json.loads(answer)["status"]) == (200, "Killed")
    else:
        (cluster.shared / "end").touch()
        wait(lambda: status(cluster, job_id) == "Completed", what="the job to complete")
    wait(lambda: not job_processes("sleep", daemon), timeout=10, what="the daemon to die with its job")


def test_a_thousand_big_text_fields_are_refused_and_the_servers_memory_stays_where_it_was(cluster):
    """1,500 fields of 65,000 bytes (98 MB): refused once the text fields pass 1 MiB in all."""
    server = psutil.Process(cluster.server.popen.pid)
    before = server.memory_info().rss
    boundary = "b0undary"
    fields = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{n:04}"\r\n\r\n'.encode() + b"x" * 65000 + b"\r\n"
        for n in range(1500)
    ]
    closing = f"--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", cluster.server.port, timeout=60)
    connection.putrequest("POST", "/upload")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    connection.putheader("Content-Length", str(sum(map(len, fields)) + len(closing)))
    connection.endheaders()
    try:
        for field in fields:
            connection.send(field)
        connection.send(closing)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and hung up before the end of the body
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    assert response.status == 413
    assert "text fields" in answer["message"]
    assert server.memory_info().rss - before < 16 * 1024 * 1024  # it grew by 97 MB, and kept it, without the cap
    assert request(f"{cluster.server.url}/health")[0] == 200
