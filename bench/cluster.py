"""A cluster of real `orchestrator.py` processes (one server, one client or more) that the soak benchmark and the
fault tests kill, stop and restart.

Every job's run.sh appends its tag (and the folder it runs in) to a ledger outside its folder, so that what ran,
and where, can be counted: submitted, finished, lost (submitted but not finished), and run twice (a tag more than
once in the ledger).
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from bench.harness import ROOT, free_port, multipart

TIMEOUT = 120.0
FINISHED = {"Completed", "Failed", "Invalid", "Killed", "Unknown", "Cleaned"}


def wait(condition, timeout: float = TIMEOUT, what: str = "a condition"):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout} s")
        time.sleep(0.01)
    return result


def request(
    url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None
) -> tuple[int, str, bytes]:
    """(code, content type, body); code 0 when nothing answers."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=headers or {}, method=method), timeout=10
        ) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, "", b""


class Node:
    """One orchestrator.py process, on a port and in a folder that stay the same across restarts."""

    def __init__(self, mode: str, folder: Path, env: dict[str, str]):
        self.mode, self.folder, self.env = mode, folder, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.popen: subprocess.Popen | None = None
        self.starts = 0
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        self.starts += 1
        with open(self.folder / f"{self.mode}.log", "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, str(ROOT / "orchestrator.py"), self.mode, "--port", str(self.port)],
                cwd=self.folder,
                env={"PATH": os.environ["PATH"], **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait(
            lambda: request(f"{self.url}/health")[0] == 200 or self.popen.poll() is not None,
            what=f"the {self.mode} to start",
        )
        assert self.popen.poll() is None, self.log()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(TIMEOUT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def pause(self) -> None:
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.popen.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.send_signal(signal.SIGTERM)
            self.popen.wait(TIMEOUT)

    def log(self) -> str:
        return (self.folder / f"{self.mode}.log").read_text(errors="replace")


def end_runs(client: Node) -> None:
    """End the runs of run.sh that a client process left behind: they outlive it by design (their wrappers name
    files in its folder; each leads its run's process group)."""
    found = subprocess.run(["pgrep", "-f", str(client.folder / "data")], capture_output=True, text=True)
    for pid in map(int, found.stdout.split()):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Cluster:
    """A server with service `example` on `clients` clients (the original's URLs for one, CLIENTS for more); a
    ledger in `root` that every job writes to. `join()` starts one more client that joins by itself."""

    def __init__(self, root: Path, server_env: dict[str, str], client_env: dict[str, str], clients: int = 1):
        self.root = root
        self.ledger = root / "ledger"
        self.client_env = client_env
        self.clients = [Node("client", root / f"client{n or ''}", client_env) for n in range(clients)]
        self.client = self.clients[0]
        if clients == 1:
            service = {
                "SERVICE_EXAMPLE_UPLOAD_URL": f"{self.client.url}/submit",
                "SERVICE_EXAMPLE_DOWNLOAD_URL": f"{self.client.url}/retrieve",
            }
        else:
            service = {"SERVICE_EXAMPLE_CLIENTS": ",".join(client.url for client in self.clients)}
        self.server = Node(
            "server",
            root / "server",
            {**service, "GETTER_INTERVAL": "0.05", "SENDER_INTERVAL": "0.05", **server_env},
        )
        self.jobs: dict[str, int] = {}  # tag -> job id

    def start(self) -> None:
        for client in self.clients:
            client.start()
        self.server.start()

    def join(self, services: str = "example") -> Node:
        """Start another client that announces itself to the server for `services` (with the clients' token)."""
        env = {**self.client_env, "SERVER_URL": self.server.url, "SERVICES": services}
        joiner = Node("client", self.root / f"client{len(self.clients)}", env)
        self.clients.append(joiner)
        joiner.start()
        return joiner

    def stop(self) -> None:
        self.server.stop()
        for client in self.clients:
            client.stop()
        for client in self.clients:
            end_runs(client)

    def script(self, tag: str, body: str = "") -> bytes:
        """A run.sh that writes its tag and folder to the ledger once it starts, then does `body`."""
        return f'echo "{tag} $PWD" >> {self.ledger}\n{body}echo {tag} > out.txt\n'.encode()

    def submit(self, tag: str, body: str = "", user_id: int = 1) -> int:
        """Upload a job as a portal does (retrying while the server is down); return its id."""
        data, content_type = multipart(
            {"user_id": str(user_id), "service": "example"}, {"run.sh": self.script(tag, body)}
        )
        code, _, answer = wait(
            lambda: (r := request(f"{self.server.url}/upload", data, {"Content-Type": content_type}))[0] and r,
            what="an upload",
        )
        assert code == 201, answer
        self.jobs[tag] = json.loads(answer)["id"]
        return self.jobs[tag]

    def status(self, job_id: int) -> dict | None:
        code, kind, body = request(f"{self.server.url}/download/{job_id}")
        if code != 200:
            return None
        return {"status": "Completed"} if kind == "application/zip" else json.loads(body)

    def statuses(self) -> dict[str, str | None]:
        return {
            tag: (answer or {}).get("status")
            for tag, answer in ((tag, self.status(job_id)) for tag, job_id in self.jobs.items())
        }

    def wait_finished(self, timeout: float = TIMEOUT) -> dict[str, str]:
        def finished() -> dict[str, str] | None:
            statuses = self.statuses()
            return statuses if all(status in FINISHED for status in statuses.values()) else None

        return wait(finished, timeout, "every job to finish")

    def ran(self) -> Counter:
        """How many times each tag's run.sh started."""
        return Counter(tag for tag, _ in self._runs())

    def where(self) -> dict[str, list[str]]:
        """For each tag, the clients (their folders' names) its run.sh started on, in order."""
        places: dict[str, list[str]] = {}
        for tag, folder in self._runs():
            places.setdefault(tag, []).append(Path(folder).parents[2].name)  # <client>/data/client/<payload>
        return places

    def _runs(self) -> list[tuple[str, str]]:
        lines = self.ledger.read_text().splitlines() if self.ledger.exists() else []
        return [tuple(line.split(" ", 1)) for line in lines]
