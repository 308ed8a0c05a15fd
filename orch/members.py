"""Clients that join by themselves: the server's registry of them, and a client's announcements.

A client started with SERVER_URL and SERVICES (and the server's ORCH_TOKEN) announces itself to the server,
`POST /clients` with its URL, services and slots, and renews that at a third of the lease the server answers.
The server keeps each in the `joined_clients` table (so that every server process on one database knows it)
with its lease, a time: until then it is one of those services' clients (only services configured on the
server), beside those the configuration lists. Once its announcements stop for longer than the lease it is
dropped from them and treated as any client out of reach: its jobs are followed where they are until they end
(or it is lost). Announcing again is harmless: the row is updated in place.
"""

import json
import logging
import re
import shutil
from dataclasses import dataclass

from tornado.httpclient import HTTPClientError, HTTPRequest

from orch import VERSION, executors, payloads
from orch.config import ClientConfig, Config, ServiceConfig, check_url
from orch.context import Context
from orch.errors import BadRequest
from orch.models import run, server_db
from orch.states import Status

log = logging.getLogger(__name__)

MAX_SLOTS = 100_000
NAME = re.compile(r"[A-Za-z0-9_]{1,100}")
INSTANCE = re.compile(r"[\x21-\x7e]{0,128}")
PRINTABLE = re.compile(r"[\x21-\x7e]+")

RETRY = 5.0  # seconds before a client announces itself again after a failure
ANNOUNCE_TIMEOUT = 10.0

LIVE = 'SELECT "address", "services", "slots", "expires_at" FROM "joined_clients" WHERE "expires_at" > ?'
LEASE_END = 'SELECT "expires_at" FROM "joined_clients" WHERE "address" = ?'
RENEW = (
    'INSERT INTO "joined_clients" ("address", "services", "slots", "instance", "joined_at", "expires_at") '
    "VALUES (?, ?, ?, ?, ?, ?) "
    'ON CONFLICT ("address") DO UPDATE SET "services" = excluded."services", "slots" = excluded."slots", '
    '"instance" = excluded."instance", "expires_at" = excluded."expires_at", "joined_at" = CASE '
    'WHEN "joined_clients"."expires_at" < excluded."joined_at" THEN excluded."joined_at" '
    'ELSE "joined_clients"."joined_at" END'
)


@dataclass(frozen=True)
class Member:
    """A client that joined: where it is, the services it serves here, its slots, when its lease ends."""

    client: ClientConfig
    services: frozenset[str]
    slots: int
    expires_at: float


# ---- Server


def record(ctx: Context, body: object, now: float) -> dict:
    """Record (or renew) a client's announcement `body` (`{"url", "services", "slots", "instance"}`) at `now`;
    return the answer: its address, the services it joined, those not configured here, and the lease in
    seconds. BadRequest for a malformed announcement, or one of no service configured here."""
    url, services, slots, instance = _parse(body)
    joined = sorted(name for name in services if name in ctx.config.services)
    ignored = sorted(set(services) - set(joined))
    if not joined:
        raise BadRequest(f"{', '.join(sorted(services))}: not configured on this server (a client joins only those)")
    lease = ctx.config.client_lease
    with server_db.atomic():
        previous = run(server_db, LEASE_END, (url,)).fetchone()
        run(server_db, RENEW, (url, ",".join(joined), slots, instance, now, now + lease))
    if previous is None or previous[0] < now:
        log.info("%s joined for %s with %d slots (lease %g s)", url, ", ".join(joined), slots, lease)
    return {"url": url, "services": joined, "ignored": ignored, "slots": slots, "lease": lease}


def _parse(body: object) -> tuple[str, list[str], int, str]:
    if not isinstance(body, dict):
        raise BadRequest("the announcement must be a JSON object with url, services and slots")
    url, services, slots, instance = (body.get(key) for key in ("url", "services", "slots", "instance"))
    if not isinstance(url, str) or len(url) > 2000:
        raise BadRequest("url must be the client's URL, as the server reaches it")
    url = url.strip().rstrip("/")
    try:
        check_url("url", url)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    if not PRINTABLE.fullmatch(url) or "?" in url or "#" in url:
        raise BadRequest("url must be the client's base URL: printable ASCII, without a query or a fragment")
    names_ok = isinstance(services, list) and all(isinstance(name, str) and NAME.fullmatch(name) for name in services)
    if not services or not names_ok:
        raise BadRequest("services must be a non-empty list of service names (letters, digits, _)")
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        raise BadRequest(f"slots must be a whole number between 1 and {MAX_SLOTS}")
    if instance is None:
        instance = ""
    if not isinstance(instance, str) or not INSTANCE.fullmatch(instance):
        raise BadRequest("instance must be up to 128 printable ASCII characters")
    return url, [name.lower() for name in services], slots, instance


def joined(now: float) -> list[Member]:
    """The clients whose lease runs at `now`."""
    return [
        Member(ClientConfig.at(address), frozenset(names.split(",")), slots, expires_at)
        for address, names, slots, expires_at in run(server_db, LIVE, (now,)).fetchall()
    ]


def clients_of(service: ServiceConfig, members: list[Member]) -> list[ClientConfig]:
    """The clients of `service`: those its configuration lists, then those of `members` that joined it."""
    clients = {client.address: client for client in service.clients}
    for member in members:
        if service.name in member.services:
            clients.setdefault(member.client.address, member.client)
    return list(clients.values())


# ---- Client


def status(ctx: Context) -> dict:
    """What this client says of itself (`GET /status`): its instance, version, slots, payloads prepared and
    running, its executor, its load (the machine's 1-minute load average and its CPUs; with EXECUTOR=slurm, its
    payloads in Slurm and SLOTS) and free disk in DATA_PATH, in bytes."""
    running = payloads.count(Status.RUNNING)
    load = executors.of(ctx).load(running)
    return {
        "instance": payloads.instance(ctx),
        "version": VERSION,
        "slots": ctx.config.slots,
        "prepared": payloads.count(Status.PREPARED),
        "running": running,
        "executor": ctx.config.executor,
        "load": load.average,
        "cpus": load.cpus,
        "disk_free": shutil.disk_usage(ctx.data_path).free,
    }


@dataclass
class Announcing:
    """When the client announces itself next, and whether the server took the last announcement."""

    next_at: float = 0.0
    joined: bool | None = None


def advertised_url(config: Config) -> str:
    """The URL a client announces: ADVERTISE_URL, else where it listens."""
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


async def announce(ctx: Context, now: float) -> bool:
    """Announce this client to SERVER_URL if it is time (see the module's docstring); return whether the server
    took it. Failures are logged when they begin (and once it is taken again), then retried every few
    seconds."""
    config, state = ctx.config, ctx.state(Announcing)
    if now < state.next_at:
        return False
    body = {
        "url": advertised_url(config),
        "services": sorted(config.services),
        "slots": config.slots,
        "instance": payloads.instance(ctx),
        "version": VERSION,
    }
    url = f"{config.server_url.rstrip('/')}/clients"
    request = HTTPRequest(
        url,
        method="POST",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {config.orch_token}"},
        connect_timeout=config.http_connect_timeout,
        request_timeout=ANNOUNCE_TIMEOUT,
    )
    try:
        response = await ctx.http.fetch(request, raise_error=False)
        answer = json.loads(response.body) if response.body else {}
    except (HTTPClientError, OSError, ValueError) as e:
        return _failed(state, now, f"{url} could not be reached: {e}")
    if response.code != 200 or not isinstance(answer, dict) or not isinstance(answer.get("lease"), int | float):
        reason = answer.get("message") if isinstance(answer, dict) else None
        return _failed(state, now, f"{url} answered {response.code}: {reason or 'not an announcement answer'}")
    state.next_at = now + answer["lease"] / 3
    if not state.joined:
        ignored = f" ({', '.join(answer['ignored'])} not configured there)" if answer.get("ignored") else ""
        services = ", ".join(map(str, answer.get("services", [])))
        log.info("joined %s as %s for %s%s", config.server_url, body["url"], services, ignored)
    state.joined = True
    return True


def _failed(state: Announcing, now: float, reason: str) -> bool:
    if state.joined is not False:
        log.warning("could not announce this client (trying again every %g s): %s", RETRY, reason)
    state.joined = False
    state.next_at = now + RETRY
    return False
