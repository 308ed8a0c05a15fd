"""The server-to-client protocol: the original's, plus identity and a shared secret.

submit: POST `UPLOAD_URL`, multipart with one part per input file, answered by a Payload JSON whose `id` the
server keeps as `dest_id`. retrieve: GET `DOWNLOAD_URL/{dest_id}`, a zip (Content-Type application/zip) once
the payload completed, its Payload JSON before. retrieve_partial: GET `.../retrieve_partial/{dest_id}`, a zip.
kill: POST `TERMINATE_URL/{dest_id}`. events (this project's clients only): GET `.../events?after=N`, a
long-poll of payload status changes, so the server learns at once that a job finished; status: GET
`.../status`, how many payloads the client runs at once (its slots).

Added, and ignored by clients of the original: the submit carries the job's key (a client that already has a
payload for it answers that payload instead of running the job twice), its service, its walltime, and whether its
network is cut; every call carries
`Authorization: Bearer ORCH_TOKEN` when a token is set; this project's client names itself (its instance id,
which changes when its database is lost) and the job of each payload in response headers, which the server
checks so that it never takes another job's payload for this one.

Bodies stream in both directions; every call has a connect and a total timeout; failures raise ClientError.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from orch.config import ClientConfig, Config, ServiceConfig
from orch.errors import ClientError
from orch.storage import COPY_CHUNK

ZIP_TYPE = "application/zip"
EVENTS_WAIT = 25.0  # seconds a long-poll of a client's events waits for a change, unless asked otherwise
MAX_EVENTS_WAIT = 60.0
MAX_JSON_SIZE = 1024 * 1024
STATUS_TIMEOUT = 10.0  # seconds a client may take to say its status (it answers from memory and its database)
INSTANCE_HEADER = "X-Orchestrator-Instance"
JOB_HEADER = "X-Orchestrator-Job"
GONE = 410  # the code of a ClientError saying the payload is not (or no longer) this job's


@dataclass(frozen=True)
class Destination:
    """Where a job was sent: its payload id on the client, the client's instance, the job's key."""

    dest_id: int
    instance: str | None
    job_key: str


class ClientAPI:
    """Calls the clients of the configured services through one shared HTTP client."""

    def __init__(self, http: AsyncHTTPClient, config: Config, tmp_path: Path):
        self.http = http
        self.connect_timeout = config.http_connect_timeout
        self.request_timeout = config.http_timeout
        self.auth = {"Authorization": f"Bearer {config.orch_token}"} if config.orch_token else {}
        self.tmp_path = tmp_path

    async def submit(
        self, client: ClientConfig, files: list[Path], job_key: str, service: ServiceConfig
    ) -> tuple[Destination, str]:
        """Send the job `job_key` of `service` made of `files` (with the service's name, its walltime, its network
        cut unless the service allows it) to `client`; return where it landed and the payload's status (Prepared,
        unless a repeated send found the first one's payload further on)."""
        boundary = uuid4().hex
        fields = {"job_key": job_key, "service": service.name}
        if service.timeout:
            fields["timeout"] = str(service.timeout)
        if not service.network:
            fields["network"] = "false"
        head = b"".join(_field(boundary, name, value) for name, value in fields.items())
        heads = [_part_head(boundary, path.name) for path in files]
        tail = f"--{boundary}--\r\n".encode()
        length = (
            len(head)
            + len(tail)
            + sum(len(part) + path.stat().st_size + 2 for part, path in zip(heads, files, strict=True))
        )

        whole = False  # from the last write on, the client may have the whole body, and make a payload of it

        async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
            nonlocal whole
            await write(head)
            for part, path in zip(heads, files, strict=True):
                await write(part)
                with open(path, "rb") as source:
                    while chunk := source.read(COPY_CHUNK):
                        await write(chunk)
                await write(b"\r\n")
            whole = True
            await write(tail)

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(length)}
        url = client.upload_url
        try:
            response = await self._fetch(url, method="POST", headers=headers, body_producer=produce)
            payload = _answer(url, response.code, response.body)
            if not isinstance(payload.get("id"), int) or payload["id"] < 1:
                raise ClientError(f"{url} answered without a payload id", 502)
            _check_job(url, response.headers, job_key)
        except ClientError as e:
            e.may_have_acted = whole and e.code >= 500
            raise
        return Destination(payload["id"], response.headers.get(INSTANCE_HEADER), job_key), str(payload.get("status"))

    async def retrieve(self, client: ClientConfig, dest: Destination, zip_path: Path) -> dict | None:
        """Fetch a payload: None once its result zip has been saved at `zip_path`, else its Payload JSON."""
        return await self._download(f"{client.download_url}/{dest.dest_id}", dest, zip_path, zip_required=False)

    async def retrieve_partial(self, client: ClientConfig, dest: Destination, zip_path: Path) -> None:
        """Save a zip of the payload's folder as it is now at `zip_path`."""
        await self._download(f"{client.partial_url}/{dest.dest_id}", dest, zip_path, zip_required=True)

    async def kill(self, client: ClientConfig, dest: Destination) -> dict:
        """Kill the payload on its client; return its Payload JSON (empty from clients that send no body)."""
        url = f"{client.terminate_url}/{dest.dest_id}"
        response = await self._fetch(url, headers=_expect(dest), method="POST", body=b"")
        answer = _answer(url, response.code, response.body, empty_ok=True)
        _check_identity(url, response.headers, dest)
        return answer

    async def events(self, client: ClientConfig, after: int | None, wait: float) -> tuple[str, int, list[dict]]:
        """The client's instance id, its payload status changes after `after` (waiting up to `wait` seconds for
        some), and the point to ask from next time. ClientError 404 from clients that have no event stream."""
        query = f"?wait={wait:g}" + ("" if after is None else f"&after={after}")
        url = f"{client.events_url}{query}"
        response = await self._fetch(url, request_timeout=wait + self.request_timeout)
        answer = _answer(url, response.code, response.body)
        if not isinstance(answer.get("last"), int) or not isinstance(answer.get("events"), list):
            raise ClientError(f"{url} answered without last and events", 502)
        return response.headers.get(INSTANCE_HEADER, ""), answer["last"], answer["events"]

    async def load(self, client: ClientConfig, timeout: float) -> float:
        """The CPU use of the client's machine in percent (its `/load`), asked with a total `timeout`."""
        response = await self._fetch(client.load_url, connect_timeout=timeout, request_timeout=timeout)
        if response.code != 200:
            raise ClientError(f"{client.load_url} answered {response.code}: {_reason(response.body)}", response.code)
        try:
            return float(json.loads(response.body))
        except (ValueError, TypeError):
            raise ClientError(f"{client.load_url} answered with something that is not a number", 502) from None

    async def status(self, client: ClientConfig) -> dict:
        """The client's `/status`: its instance, slots, payloads prepared and running, load and free disk.
        ClientError 404 from clients that have none."""
        url = client.status_url
        response = await self._fetch(url, request_timeout=min(self.request_timeout, STATUS_TIMEOUT))
        return _answer(url, response.code, response.body)

    async def _download(self, url: str, dest: Destination, zip_path: Path, zip_required: bool) -> dict | None:
        sink = _ZipOrJson(zip_path, self.tmp_path)
        try:
            response = await self._fetch(
                url, headers=_expect(dest), header_callback=sink.header_line, streaming_callback=sink.write
            )
            sink.close()
            if not sink.is_zip:
                payload = _answer(url, response.code, bytes(sink.buffer))
            _check_identity(url, sink.headers, dest)
            if sink.is_zip:
                sink.keep()
                return None
            if zip_required:
                raise ClientError(f"{url} did not answer with a zip", 502)
            return payload
        finally:
            sink.discard()

    async def _fetch(self, url: str, headers: dict | None = None, **kwargs) -> HTTPResponse:
        kwargs.setdefault("request_timeout", self.request_timeout)
        kwargs.setdefault("connect_timeout", self.connect_timeout)
        request = HTTPRequest(url, headers={**(headers or {}), **self.auth}, **kwargs)
        try:
            # Tornado cannot cancel a fetch: one whose caller is cancelled (a follow of the event stream when the
            # server stops) logs an error when its connection ends later. Shielded, the caller goes, and the
            # fetch ends quietly with its connection.
            fetch = self.http.fetch(request, raise_error=False)
            fetch.add_done_callback(_outcome_seen)
            return await asyncio.shield(fetch)
        except HTTPClientError as e:  # timed out, or the connection closed half-way
            raise ClientError(f"{url}: {e}", e.code) from None
        except OSError as e:
            raise ClientError(f"{url} could not be reached: {e}", 599) from None


def _outcome_seen(fetch: asyncio.Future) -> None:
    """Mark how a fetch ended as seen, in case its caller has gone (asyncio would log its error otherwise)."""
    if not fetch.cancelled():
        fetch.exception()


def _expect(dest: Destination) -> dict[str, str]:
    """Request headers naming the job and instance meant: this project's client refuses (GONE) a call whose
    payload id now means another job, before doing anything."""
    headers = {JOB_HEADER: dest.job_key}
    if dest.instance:
        headers[INSTANCE_HEADER] = dest.instance
    return headers


def _check_identity(url: str, headers: HTTPHeaders, dest: Destination) -> None:
    """GONE unless the answer comes from the client instance that took the job, about this job's payload.
    (A client of the original sends neither header: nothing to check.)"""
    instance = headers.get(INSTANCE_HEADER)
    if dest.instance and instance and instance != dest.instance:
        raise ClientError(
            f"{url} is another client instance ({instance}) than the one that took the job "
            f"({dest.instance}): its data was lost",
            GONE,
        )
    _check_job(url, headers, dest.job_key)


def _check_job(url: str, headers: HTTPHeaders, job_key: str) -> None:
    job = headers.get(JOB_HEADER)
    if job and job != job_key:
        raise ClientError(f"{url} holds another job's payload ({job}), not this job's ({job_key})", GONE)


def _reason(body: bytes) -> str:
    """The message of an error answer: its JSON `message`, or the start of its text."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:200].decode("utf-8", "replace").strip()


def _field(boundary: str, name: str, value: str) -> bytes:
    return f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()


def _part_head(boundary: str, name: str) -> bytes:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"; filename="{quoted}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _answer(url: str, code: int, body: bytes, empty_ok: bool = False) -> dict:
    """The JSON object of a 2xx answer; ClientError for any other code or body."""
    if code // 100 != 2:
        raise ClientError(f"{url} answered {code}: {_reason(body)}".rstrip(": "), code)
    if empty_ok and not body.strip():
        return {}
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ClientError(f"{url} answered with something that is neither a zip nor a JSON object", 502)
    return answer


class _ZipOrJson:
    """Receives a streamed response: a 200 zip goes to a scratch file in `tmp_path` (so nothing half-written
    is ever left beside the result), anything else (a JSON status or an error) is kept in memory up to
    MAX_JSON_SIZE."""

    def __init__(self, zip_path: Path, tmp_path: Path):
        self.zip_path = zip_path
        self.part_path = tmp_path / f"{uuid4().hex}.part"
        self.headers = HTTPHeaders()
        self.code = 0
        self.is_zip = False
        self.buffer = bytearray()
        self._file = None

    def header_line(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.code = int(line.split()[1])
            self.headers = HTTPHeaders()  # a 100 Continue comes before the real headers
        elif line.strip():
            self.headers.parse_line(line)
        else:
            self.is_zip = self.code == 200 and ZIP_TYPE in self.headers.get("Content-Type", "")

    def write(self, chunk: bytes) -> None:
        if self.is_zip:
            if self._file is None:
                self.part_path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.part_path, "wb")  # closed in close()
            self._file.write(chunk)
        elif len(self.buffer) < MAX_JSON_SIZE:
            self.buffer += chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def keep(self) -> None:
        """Move the received zip into place."""
        if not self.part_path.exists():
            raise ClientError("the client answered with an empty zip", 502)
        self.part_path.replace(self.zip_path)

    def discard(self) -> None:
        """Remove what was received unless `keep()` moved it into place."""
        self.close()
        self.part_path.unlink(missing_ok=True)
