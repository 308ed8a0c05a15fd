"""The client's API, called by the server: submit, retrieve, partial retrieve, kill, events, status, load."""

import asyncio
import re

from tornado.web import url

from handlers.base import BaseHandler, UploadHandler, parse_id
from orch import executors, members, payloads
from orch.context import Context
from orch.errors import BadRequest, Gone
from orch.models import Payload
from orch.states import Status
from orch.wire import EVENTS_WAIT, INSTANCE_HEADER, JOB_HEADER, MAX_EVENTS_WAIT, ZIP_TYPE


class PayloadHandler(BaseHandler):
    """Calls from the server: they need the token. A call about a payload may say which client instance and
    which job it means (request headers): if this is not that payload, it is refused (410) before anything
    is done. Answers name the instance and the payload's job, for the server to check in turn."""

    def tokens(self) -> tuple[str, list[str]]:
        return "ORCH_TOKEN", [self.ctx.config.orch_token] if self.ctx.config.orch_token else []

    def payload(self, raw_id: str) -> Payload:
        """The payload whose id is in the path, named in the answer; BadRequest, NotFound, or Gone when the
        call means another job or client instance."""
        payload = payloads.get(parse_id(raw_id))
        self.name_payload(payload)
        return payload

    def name_payload(self, payload: Payload) -> None:
        """Refuse a call meant for another job or client instance; name this payload in the answer."""
        instance = payloads.instance(self.ctx)
        expected_instance = self.request.headers.get(INSTANCE_HEADER)
        if expected_instance and expected_instance != instance:
            raise Gone(
                f"this is another client instance ({instance}) than the one that took the job "
                f"({expected_instance}): it lost its data"
            )
        expected_job = self.request.headers.get(JOB_HEADER)
        if expected_job and expected_job != payload.job_key:
            raise Gone(f"payload {payload.id} is another job's payload, not {expected_job[:40]}'s")
        self.set_header(INSTANCE_HEADER, instance)
        if payload.job_key:
            self.set_header(JOB_HEADER, payload.job_key)


class Submit(UploadHandler, PayloadHandler):
    async def post(self) -> None:
        """Receive a job's files; its run.sh starts at once.

        ---
        tags: [payloads]
        security: [{token: []}]
        summary: Receive a job's files as a new payload
        requestBody:
          required: true
          content:
            multipart/form-data:
              schema:
                type: object
                properties:
                  file:
                    type: array
                    items: {type: string, format: binary}
                    description: The job's files (any field name; every part with a filename is a file).
                  job_key:
                    type: string
                    description: The server's name for the job; a payload already made for it is answered
                      instead of a new one.
                  timeout: {type: number, description: Walltime of run.sh in seconds.}
                  network: {type: boolean, description: False cuts the network of run.sh.}
                  service:
                    type: string
                    description: The job's service, for the settings a client has per service (Slurm's).
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: The payload, Prepared.
            content: {application/json: {schema: {$ref: "#/components/schemas/Payload"}}}
          "400":
            description: The body is not valid multipart.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 0, status: Unknown, message: "expected a multipart/form-data body with a boundary"}
          "413": {$ref: "#/components/responses/TooLarge"}
        """
        payload = payloads.create_payload(self.ctx, self.staging, self.received_fields())
        self.staging = None
        self.name_payload(payload)
        self.write_json(payloads.as_json(self.ctx, payload))


class Retrieve(PayloadHandler):
    async def get(self, payload_id: str) -> None:
        """The payload's result, or its status.

        ---
        tags: [payloads]
        security: [{token: []}]
        summary: Download a payload's result zip, or get its status
        parameters:
          - {name: payload_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "410": {$ref: "#/components/responses/Gone"}
          "200":
            description: The result zip when the payload is Completed; otherwise the payload.
            content:
              application/zip: {schema: {type: string, format: binary}}
              application/json: {schema: {$ref: "#/components/schemas/Payload"}}
          "400": {$ref: "#/components/responses/BadId"}
          "404": {$ref: "#/components/responses/NoSuchPayload"}
        """
        payload = self.payload(payload_id)
        if payload.status != Status.COMPLETED:
            self.write_json(payloads.as_json(self.ctx, payload))
            return
        await self.stream_file(await payloads.result_zip(self.ctx, payload), ZIP_TYPE, f"payload-{payload.id}.zip")

    head = get


class RetrievePartial(PayloadHandler):
    async def get(self, payload_id: str) -> None:
        """A zip of the payload's folder as it is now.

        ---
        tags: [payloads]
        security: [{token: []}]
        summary: Download a payload's files as they are now (works while it runs)
        parameters:
          - {name: payload_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "410": {$ref: "#/components/responses/Gone"}
          "200":
            description: A zip of the payload's folder.
            content: {application/zip: {schema: {type: string, format: binary}}}
          "400": {$ref: "#/components/responses/BadId"}
          "404":
            description: No such payload, or its files were cleaned.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 42, status: Cleaned, message: "Payload 42 has no files any more (Cleaned)"}
        """
        payload = self.payload(payload_id)
        zipped = await payloads.partial_zip(self.ctx, payload)
        await self.stream_file(zipped, ZIP_TYPE, f"payload-{payload.id}-partial.zip")

    head = get


class Kill(PayloadHandler):
    async def post(self, payload_id: str) -> None:
        """Kill a payload and its whole process tree.

        ---
        tags: [payloads]
        security: [{token: []}]
        summary: Kill a payload
        description: |
          A Prepared payload never starts. A Running one gets SIGTERM (its whole process tree), then SIGKILL
          after KILL_GRACE seconds; the answer comes once it is gone. A finished payload is left as it is.
        parameters:
          - {name: payload_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "410": {$ref: "#/components/responses/Gone"}
          "200":
            description: The payload, Killed unless it had finished before.
            content: {application/json: {schema: {$ref: "#/components/schemas/Payload"}}}
          "400": {$ref: "#/components/responses/BadId"}
          "404": {$ref: "#/components/responses/NoSuchPayload"}
        """
        payload = await payloads.kill(self.ctx, self.payload(payload_id))
        self.write_json(payloads.as_json(self.ctx, payload))


class Events(PayloadHandler):
    async def get(self) -> None:
        """Status changes of payloads, as they happen (a long-poll).

        ---
        tags: [payloads]
        security: [{token: []}]
        summary: Wait for the next status changes of payloads
        description: |
          Without `after`, answers at once with where the sequence of changes stands. With it, answers the
          changes after that point as soon as there are any, or an empty list after `wait` seconds. The
          server follows this to learn within milliseconds that a job finished.
        parameters:
          - {name: after, in: query, required: false, schema: {type: integer, minimum: 0}}
          - {name: wait, in: query, required: false, schema: {type: number, minimum: 0, maximum: 60}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: The changes, oldest first, and the point to ask from next time.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    last: {type: integer}
                    events:
                      type: array
                      items:
                        type: object
                        properties:
                          seq: {type: integer}
                          id: {type: integer}
                          job_key: {type: string, nullable: true}
                          status: {type: string}
          "400":
            description: The after or wait parameter is not a number in range.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 0, status: Unknown, message: after must be a whole number}
        """
        after, wait = self.query()
        self.waiting = asyncio.ensure_future(payloads.wait_events(self.ctx, after, wait))
        try:
            last, events = await self.waiting
        except asyncio.CancelledError:
            return  # the server hung up (or this client is stopping): nobody to answer
        self.set_header(INSTANCE_HEADER, payloads.instance(self.ctx))
        self.write_json({"last": last, "events": events})

    def query(self) -> tuple[int | None, float]:
        """`after` and `wait` from the query string; BadRequest when out of range."""
        after = self.get_argument("after", None)
        if after is not None and not re.fullmatch(r"[0-9]{1,18}", after):
            raise BadRequest("after must be a whole number of at most 18 digits")
        try:
            wait = float(self.get_argument("wait", str(EVENTS_WAIT)))
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_EVENTS_WAIT:
            raise BadRequest(f"wait must be a number of seconds between 0 and {MAX_EVENTS_WAIT}")
        return (None if after is None else int(after)), wait

    def on_connection_close(self) -> None:
        waiting = getattr(self, "waiting", None)
        if waiting is not None:
            waiting.cancel()


class ClientStatus(PayloadHandler):
    def get(self) -> None:
        """What the client can take and what it runs.

        ---
        tags: [health]
        summary: The client's slots, payloads prepared and running, load and free disk
        description: |
          The server places each job on the client with the most free slots; it asks this when it begins to
          follow a client (a client that joins by itself says its slots when it announces itself).
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: The client's status.
            content:
              application/json:
                schema:
                  type: object
                  required: [instance, version, slots, prepared, running, executor, load, cpus, disk_free]
                  properties:
                    instance: {type: string, description: The client's instance id (changes if its data is lost).}
                    version: {type: string}
                    slots: {type: integer, description: Payloads it runs at once at most (SLOTS).}
                    prepared: {type: integer, description: Payloads waiting for a slot.}
                    running: {type: integer, description: "Payloads running (EXECUTOR=slurm: in Slurm)."}
                    executor: {type: string, enum: [local, slurm], description: What runs its payloads (EXECUTOR).}
                    load: {type: number, description: "The machine's load average over the last minute (EXECUTOR=slurm:
                      its payloads in Slurm)."}
                    cpus: {type: integer, description: "The machine's CPUs (EXECUTOR=slurm: SLOTS)."}
                    disk_free: {type: integer, description: Free bytes on the disk of DATA_PATH.}
        """
        self.set_header(INSTANCE_HEADER, payloads.instance(self.ctx))
        self.write_json(members.status(self.ctx))


class Load(PayloadHandler):
    def get(self) -> None:
        """The machine's CPU use (EXECUTOR=slurm: its payloads in Slurm against SLOTS).

        ---
        tags: [health]
        security: [{token: []}]
        summary: CPU use of the client's machine, in percent since the previous call
        description: With EXECUTOR=slurm, the payloads it has in Slurm, in percent of SLOTS.
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: A bare number between 0 and 100.
            content: {application/json: {schema: {type: number, minimum: 0, maximum: 100}}}
        """
        self.write_json(executors.of(self.ctx).percent(payloads.count(Status.RUNNING)))


def routes(ctx: Context) -> list:
    args = {"ctx": ctx}
    return [
        url(r"/submit", Submit, args),
        url(r"/retrieve/([^/]+)", Retrieve, args),
        url(r"/retrieve_partial/([^/]+)", RetrievePartial, args),
        url(r"/kill/([^/]+)", Kill, args),
        url(r"/events", Events, args),
        url(r"/status", ClientStatus, args),
        url(r"/load", Load, args),
    ]
