"""Announcer (client started with SERVER_URL): every round, announces the client to the server when it is time."""

from orch import members
from orch.context import Context


async def announce_client(ctx: Context, now: float) -> int:
    """Announce the client if its lease is due for renewal (see `orch.members`); return 1 if the server took it."""
    return int(await members.announce(ctx, now))
