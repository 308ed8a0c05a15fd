"""The server's endpoint for clients that join by themselves (`orch.members`)."""

import json

from tornado.web import url

from handlers.base import BaseHandler
from orch import members
from orch.context import Context
from orch.errors import BadRequest, Forbidden


class Announce(BaseHandler):
    """Announcements need the server's ORCH_TOKEN; a server without one takes none."""

    protected = True

    def prepare(self) -> None:
        if not self.ctx.config.orch_token:
            raise Forbidden("this server takes no announcements: it has no ORCH_TOKEN (set the same on its clients)")
        super().prepare()

    def post(self) -> None:
        """A client announces itself, or renews its lease.

        ---
        tags: [clients]
        summary: Join a client to services, or renew its lease
        description: |
          A client started with SERVER_URL sends this at start, then at a third of its lease. Until the lease
          ends, the server places jobs of those of its services that are configured here on it. Announcing
          again only updates it.
        requestBody:
          required: true
          content:
            application/json:
              schema:
                type: object
                required: [url, services, slots]
                properties:
                  url: {type: string, description: "The client's URL as the server reaches it, e.g. http://node1:9000."}
                  services: {type: array, items: {type: string}, description: The services it runs jobs of.}
                  slots: {type: integer, minimum: 1, description: Payloads it runs at once at most.}
                  instance: {type: string, description: The client's instance id.}
                  version: {type: string}
        responses:
          "200":
            description: Joined (or renewed) until the lease ends.
            content:
              application/json:
                schema:
                  type: object
                  properties:
                    url: {type: string}
                    services: {type: array, items: {type: string}, description: The services it joined.}
                    ignored: {type: array, items: {type: string}, description: Services not configured here.}
                    slots: {type: integer}
                    lease: {type: number, description: Seconds the announcement holds (CLIENT_LEASE).}
          "400":
            description: The announcement is malformed, or names no service configured here.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example: {id: 0, status: Unknown, message: "foo: not configured on this server"}
          "401": {$ref: "#/components/responses/Unauthorized"}
          "403":
            description: The server has no ORCH_TOKEN, so it takes no announcements.
            content:
              application/json:
                schema: {$ref: "#/components/schemas/StatusBody"}
                example:
                  id: 0
                  status: Unknown
                  message: "this server takes no announcements: it has no ORCH_TOKEN (set the same on its clients)"
        """
        try:
            body = json.loads(self.request.body)
        except ValueError:
            raise BadRequest("the announcement must be a JSON object") from None
        self.write_json(members.record(self.ctx, body, self.ctx.clock()))


def routes(ctx: Context) -> list:
    return [url(r"/clients", Announce, {"ctx": ctx})]
