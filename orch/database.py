"""Opening a mode's database, SQLite (a file, the default) or PostgreSQL (`DB_URL`): the connection and its
settings, its schema (brought up to date by `orch.migrations`), the transition guard, and the facts it keeps
about itself."""

import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from peewee import Database, DatabaseError, DatabaseProxy, Model, PostgresqlDatabase, SqliteDatabase
from playhouse.db_url import parse
from playhouse.shortcuts import ReconnectMixin

from orch import migrations
from orch.models import (
    MACHINES,
    Abandoned,
    ClientFact,
    Cursor,
    Instance,
    Job,
    JoinedClient,
    Lease,
    Payload,
    Server,
    ServerFact,
    client_db,
    is_postgres,
    serialize,
    server_db,
)

PRAGMAS = {
    "journal_mode": "wal",
    # With WAL, NORMAL keeps every commit across a crash of the process (not of the machine) at a
    # fraction of FULL's cost: uploads are acknowledged only after their row is committed.
    "synchronous": "normal",
    "foreign_keys": 1,
    # 64 MiB of page cache (SQLite's default is 2 MiB): with a million jobs, the indexes an upload updates
    # stay in memory instead of being read back at every insert.
    "cache_size": -64 * 1024,
}
IDENTITY = "data_identity"  # the fact naming the data folder paired with the database (see orch.ownership)
# Peewee's FloatField is PostgreSQL's 4-byte REAL, which rounds a Unix time to two minutes.
POSTGRES_TYPES = {"FLOAT": "DOUBLE PRECISION"}


class Postgres(ReconnectMixin, PostgresqlDatabase):
    """PostgreSQL that reconnects once when its connection was lost (the server restarted, a failover)."""


def open_server_db(location: Path | str) -> None:
    """Open the server's database: a SQLite file at `location`, or the PostgreSQL database it names."""
    _open(server_db, location, Job, ServerFact, [Cursor, Server, Lease, JoinedClient, Abandoned])


def open_client_db(location: Path | str) -> None:
    """Open the client's database (see `open_server_db`)."""
    _open(client_db, location, Payload, ClientFact, [Instance])
    if not Instance.select().exists():
        Instance.create(id=uuid.uuid4().hex)


def close(proxy: DatabaseProxy) -> None:
    """Close the connection of a database, if it was opened."""
    if proxy.obj is not None and not proxy.is_closed():
        proxy.close()


def client_instance() -> str:
    return Instance.get().id


def label(location: Path | str) -> str:
    """How messages name a database: DB_PATH and its path, or DB_URL without its password."""
    if isinstance(location, Path):
        return f"DB_PATH {str(location)!r}"
    parts = urlsplit(location)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{parts.username}@{host}" if parts.username else host
    return f"DB_URL {parts._replace(netloc=netloc).geturl()!r}"


def connect(location: Path | str) -> Database:
    """The database at `location` (not connected yet)."""
    if isinstance(location, Path):
        return SqliteDatabase(str(location), pragmas=PRAGMAS, timeout=5)
    settings = parse(location)
    if isinstance(settings.get("host"), str):
        settings["host"] = unquote(settings["host"])  # a socket folder, written %2Frun%2Fpostgresql
    return Postgres(field_types=POSTGRES_TYPES, **settings)


def _open(
    proxy: DatabaseProxy, location: Path | str, model: type[Model], facts: type[Model], others: list[type[Model]]
) -> None:
    """Bind `proxy` to the database at `location` (a SQLite file is made if missing; its folder must exist),
    bring its schema up to date and install the transition guard. ValueError naming the setting when it
    cannot be used."""
    events, transitions, pairs = MACHINES[model]
    close(proxy)
    proxy.initialize(connect(location))
    other = Payload if model is Job else Job
    try:
        proxy.connect()
        if proxy.table_exists(other._meta.table_name):
            raise ValueError(
                f"it holds the {other._meta.table_name} of the other mode (a server and a client need a database each)"
            )
        with proxy.atomic():
            serialize(proxy, "schema")  # several servers starting at once on one PostgreSQL: one at a time
            migrations.upgrade(facts, [model, events, transitions, facts, *others])
            _guard(proxy, model, transitions, pairs)
    except (DatabaseError, ValueError) as e:
        close(proxy)
        raise ValueError(f"{label(location)} cannot be used: {str(e).strip().splitlines()[0]}") from None


def _guard(db: Database, model: type[Model], transitions: type[Model], pairs: frozenset) -> None:
    """Refresh the table of allowed transitions from `orch.states` and the trigger that enforces it."""
    transitions.delete().execute()
    transitions.insert_many(sorted(pairs), fields=[transitions.src, transitions.dst]).execute()
    table, guard = model._meta.table_name, transitions._meta.table_name
    allowed = f"EXISTS (SELECT 1 FROM {guard} WHERE src = OLD.status AND dst = NEW.status)"
    if is_postgres(db):
        db.execute_sql(
            f"CREATE OR REPLACE FUNCTION {table}_status_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF NEW.status IS DISTINCT FROM OLD.status AND NOT {allowed} THEN "
            f"RAISE EXCEPTION 'illegal status transition' USING ERRCODE = 'check_violation'; END IF; "
            f"RETURN NEW; END $$"
        )
        db.execute_sql(f"DROP TRIGGER IF EXISTS {table}_status_guard ON {table}")
        db.execute_sql(
            f"CREATE TRIGGER {table}_status_guard BEFORE UPDATE OF status ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_status_guard()"
        )
    else:
        db.execute_sql(
            f"CREATE TRIGGER IF NOT EXISTS {table}_status_guard BEFORE UPDATE OF status ON {table} "
            f"WHEN NEW.status IS NOT OLD.status AND NOT {allowed} "
            f"BEGIN SELECT RAISE(ABORT, 'illegal status transition'); END"
        )
