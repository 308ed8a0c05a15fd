"""The server-to-client protocol, as the original speaks it.

submit: POST `UPLOAD_URL`, multipart with one part per input file, answered by a Payload JSON whose `id` the
server keeps as `dest_id`. retrieve: GET `DOWNLOAD_URL/{dest_id}`, a zip (Content-Type application/zip) once
the payload completed, its Payload JSON before. retrieve_partial: GET `.../retrieve_partial/{dest_id}`, a zip.
kill: POST `TERMINATE_URL/{dest_id}`. Bodies stream in both directions; every call has a connect and a total
timeout; failures raise ClientError.
"""

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from uuid import uuid4

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from orch.config import Config, ServiceConfig
from orch.errors import ClientError
from orch.storage import COPY_CHUNK

ZIP_TYPE = "application/zip"
MAX_JSON_SIZE = 1024 * 1024


class ClientAPI:
    """Calls the clients of the configured services through one shared HTTP client."""

    def __init__(self, http: AsyncHTTPClient, config: Config):
        self.http = http
        self.connect_timeout = config.http_connect_timeout
        self.request_timeout = config.http_timeout

    async def submit(self, service: ServiceConfig, files: list[Path]) -> dict:
        """Send `files` to the service's client; return the Payload it created (with an integer `id`)."""
        boundary = uuid4().hex
        heads = [_part_head(boundary, path.name) for path in files]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(head) + path.stat().st_size + 2 for head, path in zip(heads, files, strict=True))

        async def produce(write: Callable[[bytes], Awaitable[None]]) -> None:
            for head, path in zip(heads, files, strict=True):
                await write(head)
                with open(path, "rb") as source:
                    while chunk := source.read(COPY_CHUNK):
                        await write(chunk)
                await write(b"\r\n")
            await write(tail)

        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(length + len(tail))}
        url = service.upload_url
        response = await self._fetch(url, method="POST", headers=headers, body_producer=produce)
        payload = _answer(url, response.code, response.body)
        if not isinstance(payload.get("id"), int) or payload["id"] < 1:
            raise ClientError(f"{url} answered without a payload id", 502)
        return payload

    async def retrieve(self, service: ServiceConfig, dest_id: int, zip_path: Path) -> dict | None:
        """Fetch a payload: None once its result zip has been saved at `zip_path`, else its Payload JSON."""
        return await self._download(f"{service.download_url}/{dest_id}", zip_path, zip_required=False)

    async def retrieve_partial(self, service: ServiceConfig, dest_id: int, zip_path: Path) -> None:
        """Save a zip of the payload's folder as it is now at `zip_path`."""
        await self._download(f"{service.partial_url}/{dest_id}", zip_path, zip_required=True)

    async def kill(self, service: ServiceConfig, dest_id: int) -> dict:
        """Kill the payload on its client; return its Payload JSON (empty from clients that send no body)."""
        url = f"{service.terminate_url}/{dest_id}"
        response = await self._fetch(url, method="POST", body=b"")
        return _answer(url, response.code, response.body, empty_ok=True)

    async def _download(self, url: str, zip_path: Path, zip_required: bool) -> dict | None:
        sink = _ZipOrJson(zip_path)
        try:
            response = await self._fetch(url, header_callback=sink.header_line, streaming_callback=sink.write)
            sink.close()
            if sink.is_zip:
                sink.keep()
                return None
            payload = _answer(url, response.code, bytes(sink.buffer))
            if zip_required:
                raise ClientError(f"{url} did not answer with a zip", 502)
            return payload
        finally:
            sink.discard()

    async def _fetch(self, url: str, **kwargs) -> HTTPResponse:
        request = HTTPRequest(url, connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
                              **kwargs)
        try:
            return await self.http.fetch(request, raise_error=False)
        except HTTPClientError as e:  # timed out, or the connection closed half-way
            raise ClientError(f"{url}: {e}", e.code) from None
        except OSError as e:
            raise ClientError(f"{url} could not be reached: {e}", 599) from None


def _part_head(boundary: str, name: str) -> bytes:
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return (f'--{boundary}\r\nContent-Disposition: form-data; name="{quoted}"; filename="{quoted}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode()


def _answer(url: str, code: int, body: bytes, empty_ok: bool = False) -> dict:
    """The JSON object of a 2xx answer; ClientError for any other code or body."""
    if code // 100 != 2:
        detail = body[:200].decode("utf-8", "replace").strip()
        raise ClientError(f"{url} answered {code} {detail}".strip(), code)
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
    """Receives a streamed response: a 200 zip goes to a temporary file beside `zip_path`, anything else
    (a JSON status or an error) is kept in memory up to MAX_JSON_SIZE."""

    def __init__(self, zip_path: Path):
        self.zip_path = zip_path
        self.part_path = zip_path.with_name(f".{zip_path.name}.{uuid4().hex}.part")
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
