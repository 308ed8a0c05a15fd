"""The server's API for portals: upload, download, partial download, terminate."""

from pathlib import Path

from tornado.web import url

from handlers.base import BaseHandler, UploadHandler, parse_id
from orch import jobs
from orch.context import Context
from orch.errors import OrchError
from orch.states import Status
from orch.wire import ZIP_TYPE


class Upload(UploadHandler):
    def staging_parent(self) -> Path:
        """Alone on the data folder, straight into DATA_PATH: the folder becomes the job's own, nothing to move once
        it is accepted. Shared, into this process's scratch folder: another process starting meanwhile would take
        a folder of DATA_PATH with no job for an upload cut short (see `orch.jobs.recover`)."""
        return self.ctx.tmp_path if self.ctx.config.shares_data else self.ctx.data_path

    async def post(self) -> None:
        """Submit a job.

        ---
        tags: [jobs]
        summary: Submit a job
        description: |
          Every part with a filename is one of the job's files, saved under its base name (`../x` is `x`);
          one of them should be `run.sh`. The job is queued for its service and starts when quotas allow.
        requestBody:
          required: true
          content:
            multipart/form-data:
              schema:
                type: object
                required: [user_id, service]
                properties:
                  file:
                    type: array
                    items: {type: string, format: binary}
                    description: The job's files (repeat the field), including run.sh.
                  user_id: {type: integer, format: int32, description: Who submits the job (quotas are per user).}
                  service: {type: string, description: "A configured service, e.g. example."}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "201":
            description: Queued.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Queued, message: Job successfully uploaded}
          "400":
            description: A field is missing or wrong, or the body is not valid multipart.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 0, status: Unknown, message: "Invalid service 'x': the configured services are example"}
          "413": {$ref: "#/components/responses/TooLarge"}
        """
        fields = self.received_fields()
        if self.staging.parent != self.ctx.data_path:  # into place before the job exists: any process may send it
            self.staging = self.staging.rename(self.ctx.data_path / self.staging.name)
        job = jobs.create_job(self.ctx, fields, self.staging)
        self.staging = None
        self.write_json(jobs.as_json(job, "Job successfully uploaded"), 201)


class Download(BaseHandler):
    async def get(self, job_id: str) -> None:
        """The job's result, or its status.

        ---
        tags: [jobs]
        summary: Download a job's result zip, or get its status
        parameters:
          - {name: job_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: The result zip when the job is Completed; otherwise its status, with the reason
              in `message` for Failed, Invalid and Unknown.
            content:
              application/zip: {schema: {type: string, format: binary}}
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Running, message: ""}
          "400": {$ref: "#/components/responses/BadId"}
          "404": {$ref: "#/components/responses/NoSuchJob"}
        """
        job = jobs.get(parse_id(job_id))
        if job.status != Status.COMPLETED:
            self.write_json(jobs.as_json(job))
            return
        try:
            await self.stream_file(jobs.result_file(self.ctx, job), ZIP_TYPE, f"job-{job.id}.zip")
        except FileNotFoundError:
            raise OrchError("Error reading output file", job.id, job.status) from None

    head = get


class DownloadPartial(BaseHandler):
    async def get(self, job_id: str) -> None:
        """A zip of the job's folder on its client, as it is now.

        ---
        tags: [jobs]
        summary: Download the job's files as they are now (works while it runs)
        parameters:
          - {name: job_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: A zip of the job's folder on its client.
            content: {application/zip: {schema: {type: string, format: binary}}}
          "400":
            description: The id is not a number, or the job's service is not configured.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 0, status: Unknown, message: "Invalid id 'abc': expected a whole number"}
          "404":
            description: No such job, or it was never dispatched, or its client no longer has it.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Queued, message: Job payload not found on client}
          "502":
            description: The job's client could not be reached.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Running, message: "Error retrieving partial data from client: ..."}
        """
        job = jobs.get(parse_id(job_id))
        spool = await jobs.fetch_partial(self.ctx, job)
        try:
            await self.stream_file(spool, ZIP_TYPE, f"job-{job.id}-partial.zip")
        finally:
            spool.unlink(missing_ok=True)

    head = get


class Terminate(BaseHandler):
    async def post(self, job_id: str) -> None:
        """Stop a job.

        ---
        tags: [jobs]
        summary: Terminate a job
        description: |
          A queued job is cancelled; a dispatched one is killed on its client with its whole process tree.
          The job ends Killed.
        parameters:
          - {name: job_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "401": {$ref: "#/components/responses/Unauthorized"}
          "200":
            description: The job is Killed.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Killed, message: job terminated}
          "400": {$ref: "#/components/responses/BadId"}
          "404": {$ref: "#/components/responses/NoSuchJob"}
          "409":
            description: The job had already finished; `status` says how. Nothing changed.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Completed, message: job 7 is already Completed}
          "502":
            description: The job's client could not be reached; the job keeps its status.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 7, status: Running, message: "could not terminate job 7: ..."}
        """
        job = await jobs.terminate(self.ctx, parse_id(job_id))
        self.write_json(jobs.as_json(job, "job terminated"))


def routes(ctx: Context) -> list:
    args = {"ctx": ctx}
    return [
        url(r"/upload", Upload, args),
        url(r"/download/([^/]+)", Download, args),
        url(r"/download_partial/([^/]+)", DownloadPartial, args),
        url(r"/terminate/([^/]+)", Terminate, args),
    ]
