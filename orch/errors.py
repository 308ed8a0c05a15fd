"""Domain errors. Each carries the HTTP status it maps to; `handlers.base.BaseHandler` turns them into the
one error body of the API, `{"id", "status", "message"}` (the job's id and status when the error concerns one).
"""


class OrchError(Exception):
    """An error with a message meant for the caller."""

    status = 500

    def __init__(self, message: str, job_id: int = 0, job_status: str = "Unknown"):
        super().__init__(message)
        self.message = message
        self.job_id = job_id
        self.job_status = job_status


class BadRequest(OrchError):
    status = 400


class Unauthorized(OrchError):
    status = 401


class NotFound(OrchError):
    status = 404


class Conflict(OrchError):
    status = 409


class Gone(OrchError):
    """The payload asked about is not (any more) the one the caller means."""

    status = 410


class PayloadTooLarge(OrchError):
    status = 413


class Forbidden(OrchError):
    status = 403


class ClientError(OrchError):
    """A call to a service's client failed: `code` is its HTTP status, or 599 when it could not be reached.
    `may_have_acted`: the whole request went out and the client may have acted on it before failing (a send
    cut off after its last byte, or a 5xx), as opposed to a call it cannot have acted on (refused, or cut
    off before its end)."""

    status = 502

    def __init__(
        self, message: str, code: int, job_id: int = 0, job_status: str = "Unknown", may_have_acted: bool = False
    ):
        super().__init__(message, job_id, job_status)
        self.code = code
        self.may_have_acted = may_have_acted

    @property
    def transient(self) -> bool:
        """Worth retrying later: the client was unreachable, timed out, failed on its side, or refused our
        token (a configuration being fixed)."""
        return self.code >= 500 or self.code in (401, 403)


class InvalidTransition(Conflict):
    """A status change the state machine does not allow."""
