"""What people look at: job queries and the dashboard's data (server), metrics (both modes), the dashboard."""

from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.web import RedirectHandler, StaticFileHandler, url

from handlers.base import BaseHandler, parse_id
from orch import history, metrics, overview
from orch.context import Context


class Jobs(BaseHandler):
    def get(self) -> None:
        """Jobs, newest first, a page at a time.

        ---
        tags: [jobs]
        summary: List jobs, with filters and pagination
        description: |
          Newest first. Every filter given must match. To get the next page, pass the `next` of an answer as
          `before` (with the same filters); `next` is null on the last page.
        parameters:
          - {name: user_id, in: query, required: false, schema: {type: integer}, description: "Only this user's jobs."}
          - {name: service, in: query, required: false, schema: {type: string}, description: "Only this service's."}
          - name: status
            in: query
            required: false
            schema: {type: string, example: "Failed,Unknown"}
            description: "Only jobs in one of these statuses (comma-separated, or the parameter repeated)."
          - name: since
            in: query
            required: false
            schema: {type: string, example: "2026-12-01T00:00:00Z"}
            description: "Only jobs created at or after this time: Unix seconds or ISO 8601."
          - name: until
            in: query
            required: false
            schema: {type: string}
            description: "Only jobs created before this time: Unix seconds or ISO 8601."
          - {name: before, in: query, required: false, schema: {type: integer}, description: "Only older jobs."}
          - {name: limit, in: query, required: false, schema: {type: integer, minimum: 1, maximum: 1000, default: 50}}
        responses:
          "200":
            description: A page of jobs.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    jobs: {type: array, items: {$ref: "#/components/schemas/JobSummary"}}
                    next: {type: integer, nullable: true, description: "`before` for the next page; null if none."}
          "400": {$ref: "#/components/responses/BadQuery"}
        """
        query = {
            name: ",".join(value.decode("utf-8", "replace") for value in values)
            for name, values in self.request.query_arguments.items()
        }
        self.write_json(history.find(history.filters(query)))


class JobDetail(BaseHandler):
    def get(self, job_id: str) -> None:
        """A job, whatever its status, with its history.

        ---
        tags: [jobs]
        summary: Get a job with its history, attempts and result size
        parameters:
          - {name: job_id, in: path, required: true, schema: {type: integer, minimum: 0, maximum: 4294967295}}
        responses:
          "200":
            description: The job.
            content: {application/json: {schema: {$ref: "#/components/schemas/JobDetail"}}}
          "400": {$ref: "#/components/responses/BadId"}
          "404": {$ref: "#/components/responses/NoSuchJob"}
        """
        self.write_json(history.details(self.ctx, parse_id(job_id)))


class Overview(BaseHandler):
    async def get(self) -> None:
        """What the dashboard shows.

        ---
        tags: [monitoring]
        summary: Queues, quotas, users, clients and their load, recent failures
        description: |
          Per service its queue, running jobs and slots in use against its quota; per user with unfinished
          jobs the waiting and running counts; each client, whether it answers, the jobs on it and its CPU
          use; the last jobs that ended Failed, Unknown or Invalid, with their reasons.
        responses:
          "200":
            description: The overview.
            content: {application/json: {schema: {$ref: "#/components/schemas/Overview"}}}
        """
        self.write_json(await overview.snapshot(self.ctx))


class Metrics(BaseHandler):
    def get(self) -> None:
        """Metrics for Prometheus.

        ---
        tags: [monitoring]
        summary: Metrics in the Prometheus text format
        responses:
          "200":
            description: The metrics (see the README for what each means).
            content: {text/plain: {schema: {type: string}}}
        """
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(metrics.exposition(self.ctx))


def routes(ctx: Context, assets: type[StaticFileHandler], static: Path) -> list:
    """Metrics on both modes; on the server also the job queries, the overview and the dashboard (its files
    served by `assets` from `static`)."""
    args = {"ctx": ctx}
    own = [url(r"/metrics", Metrics, args)]
    if ctx.config.mode == "server":
        own += [
            url(r"/jobs", Jobs, args),
            url(r"/jobs/([^/]+)", JobDetail, args),
            url(r"/overview", Overview, args),
            url(r"/dashboard/(.*)", assets, {"path": str(static / "dashboard"), "default_filename": "index.html"}),
            url(r"/dashboard", RedirectHandler, {"url": "/dashboard/"}),
        ]
    return own
