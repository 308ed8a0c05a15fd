"""Endpoints both modes have: ping, health, and the API documentation (OpenAPI document and Swagger UI)."""

import json
from pathlib import Path

from peewee import Database, PeeweeException
from tornado.web import HTTPError, RedirectHandler, StaticFileHandler, url
from tornado_swagger.const import API_OPENAPI_3
from tornado_swagger.setup import export_swagger

from handlers.base import BaseHandler, error_body
from orch import VERSION
from orch.context import Context
from orch.states import JOB_STATUSES, PAYLOAD_STATUSES

SWAGGER_UI = Path(__file__).resolve().parent.parent / "static" / "swagger-ui"
SPEC_URL = "/api-docs/openapi.json"

STATUS_BODY = {
    "type": "object",
    "required": ["id", "status", "message"],
    "properties": {
        "id": {"type": "integer", "description": "The job's id (0 when the error concerns no job)."},
        "status": {"type": "string", "enum": sorted(JOB_STATUSES)},
        "message": {"type": "string", "description": "What happened; the reason for Failed, Invalid, Unknown."},
    },
}
PAYLOAD = {
    "type": "object",
    "required": ["id", "input", "status", "loc", "pid", "killed"],
    "properties": {
        "id": {"type": "integer"},
        "input": {"type": "object", "description": "Always empty: the files are not echoed back."},
        "status": {"type": "string", "enum": sorted(PAYLOAD_STATUSES)},
        "loc": {"type": "string", "description": "The payload's folder on the client."},
        "pid": {"type": "integer", "description": "The process group running run.sh (0 before it starts)."},
        "killed": {"type": "boolean"},
        "message": {"type": "string"},
        "exit_code": {"type": "integer", "nullable": True},
        "job_key": {"type": "string", "nullable": True, "description": "The server's name for the job."},
    },
}
# Error answers that several endpoints share, referred to as `$ref: "#/components/responses/<name>"`.
ERRORS = {
    "BadId": "The id is not a number.",
    "Unauthorized": "A token is needed (ORCH_TOKEN on a client, API_TOKEN on a server) and the call carries none "
    "of them.",
    "NoSuchJob": "No such job.",
    "NoSuchPayload": "No such payload.",
    "Gone": "The X-Orchestrator-Job or X-Orchestrator-Instance header names another job or client instance than "
    "this payload's; nothing was done.",
    "TooLarge": "The body is over MAX_UPLOAD_SIZE.",
}


class Ping(BaseHandler):
    public = True

    def get(self) -> None:
        """Ping.

        ---
        tags: [health]
        summary: Answers pong
        responses:
          "200":
            description: Alive.
            content: {application/json: {schema: {type: object, properties: {message: {type: string}}}}}
        """
        self.write_json({"message": "pong"})


class Health(BaseHandler):
    public = True

    def initialize(self, ctx: Context, db: Database) -> None:
        super().initialize(ctx)
        self.db = db

    def get(self) -> None:
        """Health.

        ---
        tags: [health]
        summary: Whether the service and its database answer
        responses:
          "200":
            description: Healthy.
            content: {application/json: {schema: {type: object, properties: {status: {type: string},
              database: {type: string}}}}}
          "503":
            description: The database does not answer.
            content: {application/json: {schema: {type: object, properties: {status: {type: string},
              database: {type: string}}}}}
        """
        try:
            self.db.execute_sql("SELECT 1")
        except PeeweeException as e:
            self.write_json({"status": "error", "database": str(e)}, 503)
            return
        self.write_json({"status": "ok", "database": "ok"})


class Spec(BaseHandler):
    public = True

    def initialize(self, ctx: Context, spec: dict) -> None:
        super().initialize(ctx)
        self.spec = spec

    def get(self) -> None:
        self.write_json(self.spec)


class SwaggerAssets(StaticFileHandler):
    """The Swagger UI, served from `static/` (compute clusters are often offline: no CDN)."""

    def parse_url_path(self, url_path: str) -> str:
        if "\x00" in url_path:  # the file system cannot even look such a name up
            raise HTTPError(400, "a path may not hold a NUL character")
        return super().parse_url_path(url_path)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.clear()
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(error_body(self, status_code, kwargs)))


def routes(ctx: Context, db: Database, api: list) -> list:
    """Ping, health and documentation routes; the OpenAPI document describes `api` and these."""
    own = [url(r"/", Ping, {"ctx": ctx}), url(r"/health", Health, {"ctx": ctx, "db": db})]
    spec = openapi(ctx.config.mode, api + own)
    name_services(spec, sorted(ctx.config.services))
    return own + [
        url(SPEC_URL, Spec, {"ctx": ctx, "spec": spec}),
        url(r"/swagger-ui/(.*)", SwaggerAssets, {"path": str(SWAGGER_UI), "default_filename": "index.html"}),
        url(r"/(?:swagger|swagger-ui)", RedirectHandler, {"url": "/swagger-ui/"}),
    ]


def openapi(mode: str, api: list) -> dict:
    """The OpenAPI 3 document built from the handlers' docstrings."""
    spec = export_swagger(
        api,
        api_definition_version=API_OPENAPI_3,
        title=f"job-orchestrator {mode}",
        api_version=VERSION,
        description="Runs jobs (files and a run.sh) for scientific web portals. See the README.",
    )
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/StatusBody"}}}
    spec["components"]["schemas"] = {"StatusBody": STATUS_BODY, "Payload": PAYLOAD}
    spec["components"]["responses"] = {name: {"description": text, "content": body} for name, text in ERRORS.items()}
    return spec


def name_services(spec: dict, services: list[str]) -> None:
    """Let the upload's `service` field list the configured services (so generated calls can make jobs)."""
    if services and "/upload" in spec["paths"]:
        schema = spec["paths"]["/upload"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        schema["properties"]["service"]["enum"] = services
