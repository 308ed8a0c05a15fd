"""The Python client of the server's API, for portals: submit a job, follow it, fetch its result, stop it.

    from orch.portal import Orchestrator

    server = Orchestrator("http://localhost:5000")
    job = server.submit("example", 1, ["run.sh", "input.pdb"])
    server.wait(job["id"])
    server.download(job["id"], "results.zip")

Only the standard library: uploads and downloads stream (memory stays flat whatever their size), and every
answer is the server's JSON as a dict. Anything that goes wrong, an error answer or a server that cannot be
reached, raises OrchestratorError with one line saying what.
"""

import http.client
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

FINISHED = frozenset({"Completed", "Failed", "Invalid", "Killed", "Unknown", "Cleaned"})
CHUNK = 256 * 1024
ZIP_TYPE = "application/zip"

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)


class OrchestratorError(Exception):
    """A call that failed: `code` is the HTTP status (0 when the server could not be reached), `message` what
    the server said."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.message = message
        self.code = code


class Orchestrator:
    """The server at `url`; `timeout` is the seconds any one call may wait for the server; `token`, one of the
    server's API_TOKEN, sent with every call when it has them."""

    def __init__(self, url: str = "http://localhost:5000", timeout: float = 60.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def submit(
        self, service: str, user_id: int, files: Iterable[str | os.PathLike], progress: Progress | None = None
    ) -> dict:
        """Upload a job made of `files` (one of them named run.sh); `progress(sent, total)` is called as the
        body goes. Returns `{"id", "status": "Queued", "message"}`."""
        paths = [Path(file) for file in files]
        for path in paths:
            with open(path, "rb"):  # a file that cannot be read fails here, before anything is sent
                pass
        boundary = uuid.uuid4().hex
        fields = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in (("user_id", user_id), ("service", service))
        )
        heads = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{_quoted(path.name)}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            for path in paths
        ]
        tail = f"--{boundary}--\r\n".encode()
        sizes = [len(head) + path.stat().st_size + 2 for head, path in zip(heads, paths, strict=True)]
        total = len(fields) + len(tail) + sum(sizes)

        def body() -> Iterator[bytes]:
            sent = 0
            for chunk in _parts(fields, heads, paths, tail):
                sent += len(chunk)
                if progress is not None:
                    progress(sent, total)
                yield chunk

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(total)}
        return self._json("POST", "/upload", body(), headers)

    def status(self, job_id: int) -> dict:
        """The job, whatever its status: `{"id", "status", "message", "user_id", "service", "history", ...}`
        (see `GET /jobs/{id}`)."""
        return self._json("GET", f"/jobs/{int(job_id)}")

    def wait(
        self,
        job_id: int,
        on_change: Callable[[dict], None] | None = None,
        interval: float = 1.0,
        timeout: float | None = None,
    ) -> dict:
        """Poll the job every `interval` seconds until it has finished (Completed, Failed, Invalid, Killed,
        Unknown or Cleaned) and return it; `on_change(job)` is called each time its status changes.
        OrchestratorError if `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            job = self.status(job_id)
            if job["status"] != last:
                last = job["status"]
                if on_change is not None:
                    on_change(job)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise OrchestratorError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(interval)

    def download(
        self, job_id: int, path: str | os.PathLike, partial: bool = False, progress: Progress | None = None
    ) -> Path:
        """Save the result zip of a Completed job (or, with `partial`, a zip of its folder as it is now on its
        client) to `path`, which is only written once the whole zip has arrived; return it."""
        endpoint = "download_partial" if partial else "download"
        target = Path(path)
        with self._open("GET", f"/{endpoint}/{int(job_id)}") as response:
            if response.headers.get_content_type() != ZIP_TYPE:
                job = _decode(response.read())
                raise OrchestratorError(f"job {job_id} is {job.get('status')}, not Completed: no result to download")
            total = int(response.headers.get("Content-Length") or 0)
            partial_file = target.with_name(f".{target.name}.part")
            done = 0
            try:
                with open(partial_file, "wb") as out:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                if done < total:  # http.client ends a body cut short quietly
                    raise http.client.IncompleteRead(b"", total - done)
            except (OSError, http.client.HTTPException) as e:
                partial_file.unlink(missing_ok=True)
                raise OrchestratorError(f"the download of job {job_id} was cut short: {e!r}") from None
        partial_file.replace(target)
        return target

    def cancel(self, job_id: int) -> dict:
        """Terminate the job (queued: cancelled; running: killed); return it, Killed."""
        return self._json("POST", f"/terminate/{int(job_id)}", b"")

    def jobs(self, **filters: object) -> dict:
        """A page of jobs, newest first: filters `user_id`, `service`, `status`, `since`, `until`, `limit`,
        `before` as in `GET /jobs`. Returns `{"jobs": [...], "next": <before for the next page, or None>}`."""
        query = urllib.parse.urlencode({name: value for name, value in filters.items() if value is not None})
        return self._json("GET", f"/jobs?{query}" if query else "/jobs")

    def _json(self, method: str, path: str, body: object = None, headers: dict | None = None) -> dict:
        with self._open(method, path, body, headers) as response:
            try:
                return _decode(response.read())
            except (OSError, http.client.HTTPException) as e:
                raise OrchestratorError(f"the answer of the server at {self.url} was cut short: {e!r}") from None

    def _open(self, method: str, path: str, body: object = None, headers: dict | None = None):
        """The server's answer to a request (a file-like response); OrchestratorError for an error answer.

        A server refuses an upload (a wrong token, too large) from its headers, then closes the connection on the
        rest of the body: the send fails, but its answer has arrived and says why, so it is read all the same."""
        url = urllib.parse.urlsplit(self.url)
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.netloc, timeout=self.timeout)
        # Connection: close hands the connection over to the response, which closes it once read.
        headers = {**(headers or {}), **self.auth, "Connection": "close"}
        try:
            try:
                connection.request(method, url.path + path, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                pass  # answered before the whole body was sent
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise OrchestratorError(f"cannot reach the server at {self.url}: {e}") from None
        if response.status >= 400:
            with response:
                message = _decode(response.read()).get("message") or f"HTTP {response.status}"
            raise OrchestratorError(message, response.status)
        return response


def _parts(fields: bytes, heads: list[bytes], paths: list[Path], tail: bytes) -> Iterator[bytes]:
    yield fields
    for head, path in zip(heads, paths, strict=True):
        yield head
        with open(path, "rb") as source:
            while chunk := source.read(CHUNK):
                yield chunk
        yield b"\r\n"
    yield tail


def _quoted(name: str) -> str:
    """A file name as it may stand in a multipart header (escaped as browsers do)."""
    return name.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def _decode(body: bytes) -> dict:
    try:
        answer = json.loads(body)
    except ValueError:
        return {"message": body[:200].decode(errors="replace").strip()}
    return answer if isinstance(answer, dict) else {"message": str(answer)}
