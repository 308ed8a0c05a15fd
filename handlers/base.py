"""What every handler shares: the context, JSON answers, the one error body, ids from paths, file streaming."""

import hmac
import json
import logging
import os
import re
from pathlib import Path
from typing import BinaryIO

from tornado.httputil import responses
from tornado.web import Finish, HTTPError, RequestHandler, stream_request_body

from orch.context import Context
from orch.errors import BadRequest, NotFound, OrchError, PayloadTooLarge, Unauthorized
from orch.storage import MultipartReceiver, new_name, remove

STREAM_CHUNK = 1024 * 1024
MAX_ID = 2**32 - 1  # ids are unsigned 32-bit numbers in the original's paths


class BaseHandler(RequestHandler):
    """Errors, whatever raised them, answer `{"id", "status", "message"}` as JSON, never a traceback.

    Calls must carry one of the handler's `tokens()` (when there are any) as `Authorization: Bearer <token>`,
    compared in constant time: on a server, every endpoint but the `public` ones needs one of API_TOKEN's.
    """

    public = False  # answers without a token: ping, health, the API documentation
    error_message = ""  # the message of the error answered, for the access line

    def initialize(self, ctx: Context) -> None:
        self.ctx = ctx

    def tokens(self) -> tuple[str, list[str]]:
        """The setting that holds the tokens a call may carry, and them (none: no token needed)."""
        return "API_TOKEN", (self.ctx.config.api_tokens if self.ctx.config.mode == "server" and not self.public else [])

    def prepare(self) -> None:
        setting, tokens = self.tokens()
        if tokens:
            given = self.request.headers.get("Authorization", "").encode()
            # Every token is compared, so the time taken does not tell which one came close.
            if not sum(hmac.compare_digest(given, f"Bearer {token}".encode()) for token in tokens):
                raise Unauthorized(f"missing or wrong token: calls to this {self.ctx.config.mode} need {setting}")

    def compute_etag(self) -> None:
        """No ETags: answers are statuses that change, and zips are sent once; hashing each costs time."""
        return None

    def write_json(self, body: object, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        body = error_body(self, status_code, kwargs)
        self.error_message = body["message"]
        self.clear()
        self.write_json(body, error.status if isinstance(error, OrchError) else status_code)

    def log_exception(self, typ, value, tb) -> None:
        """Errors meant for the caller are told in the request's access line (`log_request`); anything else is
        logged with its traceback."""
        if not isinstance(value, OrchError | HTTPError):
            super().log_exception(typ, value, tb)

    async def stream_file(self, file: Path | BinaryIO, content_type: str, filename: str | None = None) -> None:
        """Answer with a file (its path, or the file open for reading, which is closed) in chunks, so memory stays
        flat whatever its size."""
        with open(file, "rb") if isinstance(file, Path) else file as source:
            self.set_header("Content-Type", content_type)
            self.set_header("Content-Length", os.fstat(source.fileno()).st_size)
            if filename:
                self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            if self.request.method != "HEAD":
                while chunk := source.read(STREAM_CHUNK):
                    self.write(chunk)
                    await self.flush()
        await self.finish()


@stream_request_body
class UploadHandler(BaseHandler):
    """Receives a multipart body as it arrives into a new folder (`self.staging`) under `staging_parent`; a
    subclass's `post()` turns the folder into a job or payload and clears `self.staging`. A body that is malformed or
    over MAX_UPLOAD_SIZE is answered at once with a 4xx, and whatever it had written is removed."""

    staging: Path | None = None  # also before prepare(): an unknown method is refused before it runs
    refused = False  # answered with an error while the body was coming in

    def prepare(self) -> None:
        super().prepare()
        if self.request.method != "POST":
            raise HTTPError(405)
        self.limit = self.ctx.config.max_upload_size
        length = self.request.headers.get("Content-Length", "0")
        if not length.isdigit():
            raise BadRequest("Content-Length must be a number")
        if int(length) > self.limit:
            raise PayloadTooLarge(f"the upload is larger than the limit of {self.limit} bytes")
        # Leave the limit to data_received (a clear 413 for chunked bodies too), not to Tornado's bare 400.
        self.request.connection.set_max_body_size(self.limit + STREAM_CHUNK)
        staging = self.staging_parent() / new_name()
        self.receiver = MultipartReceiver(self.request.headers.get("Content-Type", ""), staging)
        staging.mkdir(parents=True)
        self.staging = staging
        self.received = 0

    def staging_parent(self) -> Path:
        """Where the folder of a body being received is made (scratch space unless a subclass says)."""
        return self.ctx.tmp_path

    def data_received(self, chunk: bytes) -> None:
        if self.refused:
            return  # already answered with an error: the rest of the body is dropped
        self.received += len(chunk)
        try:
            if self.received > self.limit:
                raise PayloadTooLarge(f"the upload is larger than the limit of {self.limit} bytes")
            self.receiver.feed(chunk)
        except OrchError as e:
            self.discard()
            self.refused = True
            self.send_error(e.status, exc_info=(type(e), e, None))

    def received_fields(self) -> dict[str, str]:
        """The text fields of the whole body, once received; BadRequest if it was cut short."""
        if self.refused:
            raise Finish()  # an error was answered while the body came in
        fields, _ = self.receiver.finish()
        return fields

    def discard(self) -> None:
        if self.staging is not None:
            self.receiver.close()
            remove(self.staging)
            self.staging = None

    def on_finish(self) -> None:
        self.discard()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self.discard()


def error_body(handler: RequestHandler, status_code: int, kwargs: dict) -> dict:
    """The one error body: `{"id", "status", "message"}` from an OrchError, an HTTPError's message, or
    the status line's reason (an unexpected exception is logged with its traceback, never sent)."""
    error = kwargs.get("exc_info", (None, None, None))[1]
    if isinstance(error, OrchError):
        return {"id": error.job_id, "status": str(error.job_status), "message": error.message}
    message = responses.get(status_code, "Unknown")
    if isinstance(error, HTTPError) and error.log_message:
        message = error.log_message % error.args if error.args else error.log_message
    return {"id": 0, "status": "Unknown", "message": message}


def parse_id(raw: str) -> int:
    """A job or payload id from a path segment; BadRequest unless it is a whole number that fits."""
    if not re.fullmatch(r"[0-9]{1,10}", raw) or int(raw) > MAX_ID:
        raise BadRequest(f"Invalid id {raw[:40]!r}: expected a whole number")
    return int(raw)


class NotFoundHandler(BaseHandler):
    """Any path that no route matches, whatever the method."""

    def prepare(self) -> None:
        raise NotFound(f"no such endpoint: {self.request.path}")


def log_request(handler: RequestHandler) -> None:
    """The one access line of a request, with the message of the error it answered: polls and downloads that
    succeed at DEBUG (a getter asks every half second), other successes at INFO, client errors at WARNING,
    server errors at ERROR. Headers and query strings are never logged (they may carry secrets)."""
    status = handler.get_status()
    if status >= 500:
        level = logging.ERROR
    elif status >= 400:
        level = logging.WARNING
    elif handler.request.method in ("GET", "HEAD"):
        level = logging.DEBUG
    else:
        level = logging.INFO
    error = getattr(handler, "error_message", "")
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s (%s) %.1fms%s",
        status,
        handler.request.method,
        handler.request.path,
        handler.request.remote_ip,
        1000.0 * handler.request.request_time(),
        f": {error}" if error else "",
    )
