"""Thin Tornado handlers: parse the request, call `orch`, answer. `make_app` builds either mode's app."""

from tornado.web import Application

from handlers import client, common, members, server
from handlers.base import NotFoundHandler, log_request
from orch.context import Context
from orch.models import client_db, server_db


def make_app(ctx: Context) -> Application:
    """The Tornado application of the context's mode (server or client), its database already open."""
    if ctx.config.mode == "server":
        api, db = server.routes(ctx) + members.routes(ctx), server_db
    else:
        api, db = client.routes(ctx), client_db
    return Application(
        api + common.routes(ctx, db, api),
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        log_function=log_request,
    )
