"""Opening a mode's database: the file and its settings, its schema (brought up to date by `orch.migrations`),
the transition guard, and the facts it keeps about itself."""

import uuid
from pathlib import Path

from peewee import Database, DatabaseError, Model

from orch import migrations
from orch.models import (
    MACHINES,
    Abandoned,
    ClientFact,
    Cursor,
    Instance,
    Job,
    JoinedClient,
    Payload,
    ServerFact,
    client_db,
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


def open_server_db(path: Path) -> None:
    _open(server_db, path, Job, ServerFact, [Cursor, JoinedClient, Abandoned])


def open_client_db(path: Path) -> None:
    _open(client_db, path, Payload, ClientFact, [Instance])
    if not Instance.select().exists():
        Instance.create(id=uuid.uuid4().hex)


def client_instance() -> str:
    return Instance.get().id


def _open(db: Database, path: Path, model: type[Model], facts: type[Model], others: list[type[Model]]) -> None:
    """Open the database file at `path` (made if missing; its folder must exist), bring its schema up to date
    and install the transition guard. ValueError naming DB_PATH when it cannot be used."""
    events, transitions, pairs = MACHINES[model]
    if not db.is_closed():
        db.close()
    db.init(str(path), pragmas=PRAGMAS, timeout=5)
    try:
        db.connect()
        migrations.upgrade(facts, [model, events, transitions, facts, *others])
        _guard(db, model, transitions, pairs)
    except (DatabaseError, ValueError) as e:
        db.close()
        raise ValueError(f"DB_PATH is {str(path)!r}, which cannot be used: {e}") from None


def _guard(db: Database, model: type[Model], transitions: type[Model], pairs: frozenset) -> None:
    """Refresh the table of allowed transitions from `orch.states` and the trigger that enforces it."""
    with db.atomic():
        transitions.delete().execute()
        transitions.insert_many([(src, dst) for src, dst in pairs], fields=[transitions.src, transitions.dst]).execute()
        table, guard = model._meta.table_name, transitions._meta.table_name
        db.execute_sql(
            f"CREATE TRIGGER IF NOT EXISTS {table}_status_guard BEFORE UPDATE OF status ON {table} "
            f"WHEN NEW.status IS NOT OLD.status AND NOT EXISTS "
            f"(SELECT 1 FROM {guard} WHERE src = OLD.status AND dst = NEW.status) "
            f"BEGIN SELECT RAISE(ABORT, 'illegal status transition'); END"
        )


def fact(facts: type[Model], key: str) -> str | None:
    row = facts.get_or_none(facts.key == key)
    return row.value if row else None


def set_fact(facts: type[Model], key: str, value: str) -> None:
    facts.replace(key=key, value=value).execute()
