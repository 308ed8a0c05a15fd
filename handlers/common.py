"""Endpoints both modes have: ping, health, metrics, and the API documentation (OpenAPI document and Swagger
UI)."""

import json
from pathlib import Path

from peewee import Database, PeeweeException
from tornado.web import HTTPError, RedirectHandler, StaticFileHandler, url

from handlers import monitoring
from handlers.base import BaseHandler, error_body
from handlers.openapi import openapi
from orch.context import Context


def static_folder() -> Path:
    """`static/`: inside this package once installed (pyproject.toml maps it there), at the top of a checkout."""
    here = Path(__file__).resolve().parent
    return here / "static" if (here / "static").is_dir() else here.parent / "static"


STATIC = static_folder()
FAVICON = STATIC / "swagger-ui" / "favicon-32x32.png"
SPEC_URL = "/api-docs/openapi.json"


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
            content:
              application/json:
                schema: {type: object, properties: {status: {type: string}, database: {type: string}}}
                example: {status: error, database: unable to open database file}
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


class Favicon(BaseHandler):
    """`/favicon.ico`, which browsers ask every page for: Swagger's icon (rather than a 404 in the log)."""

    public = True

    def get(self) -> None:
        self.set_header("Content-Type", "image/png")
        self.set_header("Cache-Control", "max-age=86400")
        self.finish(FAVICON.read_bytes())


class Assets(StaticFileHandler):
    """Files served from `static/` (Swagger UI, the dashboard): compute clusters are often offline, so no CDN.
    Errors answer the API's JSON body."""

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
    """Ping, health, metrics (and on the server job queries and the dashboard) and the documentation; the
    OpenAPI document describes `api` and these."""
    own = [
        url(r"/", Ping, {"ctx": ctx}),
        url(r"/health", Health, {"ctx": ctx, "db": db}),
        *monitoring.routes(ctx, Assets, STATIC),
    ]
    spec = openapi(ctx.config.mode, api + own, sorted(ctx.config.services))
    return own + [
        url(SPEC_URL, Spec, {"ctx": ctx, "spec": spec}),
        url(r"/swagger-ui/(.*)", Assets, {"path": str(STATIC / "swagger-ui"), "default_filename": "index.html"}),
        url(r"/(?:swagger|swagger-ui)", RedirectHandler, {"url": "/swagger-ui/"}),
        url(r"/favicon\.ico", Favicon, {"ctx": ctx}),
    ]
