"""Versioned schema changes: a short list of steps per mode, applied in order at start-up in one transaction.

A new database gets the current schema straight from the models and the latest version; an older one gets
each missing step in turn, so every job keeps its status, files and history. A database newer than this code
is refused. The version lives in the `meta` table (version 1, which had no such table, kept it in SQLite's
`user_version`).

Plain steps on `playhouse.migrate` rather than a migration framework: a handful of column and table additions
do not need generated files or a history table, and the steps read as what they change.
"""

from collections.abc import Callable

from peewee import BooleanField, CharField, Database, Model
from playhouse.migrate import SchemaMigrator, migrate

from orch.models import (
    Abandoned,
    ClientFact,
    Job,
    JoinedClient,
    Lease,
    Payload,
    Server,
    ServerFact,
    backend,
    fact,
    is_postgres,
    set_fact,
)

Step = Callable[[Database, SchemaMigrator], None]


def _server_2(db: Database, migrator: SchemaMigrator) -> None:
    """Facts about the database (version, identity of its data folder); the client each job was sent to."""
    db.create_tables([ServerFact])
    migrate(migrator.add_column(Job._meta.table_name, "client", CharField(null=True)))


def _server_3(db: Database, migrator: SchemaMigrator) -> None:
    """Several server processes on one database: who they are, the leases they share out, and which process
    is sending or terminating a job."""
    db.create_tables([Server, Lease])
    migrate(migrator.add_column(Job._meta.table_name, "owner", CharField(null=True)))


def _server_4(db: Database, migrator: SchemaMigrator) -> None:
    """An index for looking jobs up by status, newest first, over a long history (`GET /jobs`)."""
    migrate(migrator.add_index(Job._meta.table_name, ("status", "id"), name="job_status_id"))


def _server_5(db: Database, migrator: SchemaMigrator) -> None:
    """Several clients per service: each job's attempt, the clients that joined by themselves, and the payloads
    that lost clients may still hold."""
    # Added NOT NULL with its SQL default in one statement: without allow_not_null, playhouse would rebuild
    # the table on SQLite to add the constraint, and dropping the old one cascades to the job's history.
    migrate(migrator.add_column(Job._meta.table_name, "attempt", Job.attempt, allow_not_null=True))
    db.create_tables([JoinedClient, Abandoned])


def _client_2(db: Database, migrator: SchemaMigrator) -> None:
    """Facts about the database (version, identity of its data folder)."""
    db.create_tables([ClientFact])


def _client_3(db: Database, migrator: SchemaMigrator) -> None:
    """Whether a payload may use the network (a service's jobs may have it cut)."""
    migrate(migrator.add_column(Payload._meta.table_name, "network", BooleanField(null=True, default=True)))


def _client_4(db: Database, migrator: SchemaMigrator) -> None:
    """Executors: the service of each payload, the executor that runs it, and that executor's id for its run."""
    table = Payload._meta.table_name
    migrate(*(migrator.add_column(table, name, CharField(null=True)) for name in ("service", "executor", "run_id")))


# STEPS[mode][n] brings a database of version n - 1 to version n.
STEPS: dict[type[Model], dict[int, Step]] = {
    ServerFact: {2: _server_2, 3: _server_3, 4: _server_4, 5: _server_5},
    ClientFact: {2: _client_2, 3: _client_3, 4: _client_4},
}
VERSION = "schema_version"


def latest(facts: type[Model]) -> int:
    return max(STEPS[facts])


def version(facts: type[Model]) -> int:
    """The schema version of the open database whose facts table is `facts`: 0 when it has no tables yet."""
    db = backend(facts._meta.database)
    if facts.table_exists():
        return int(fact(facts, VERSION) or 0)
    if not is_postgres(db) and db.get_tables():  # version 1, which only knew SQLite, kept it in user_version
        return int(db.execute_sql("PRAGMA user_version").fetchone()[0])
    return 0


def upgrade(facts: type[Model], models: list[type[Model]]) -> None:
    """Bring the open database whose facts table is `facts` to the latest schema, creating `models` when it is
    new; ValueError when it is newer than this code."""
    db = backend(facts._meta.database)
    newest = latest(facts)
    with db.atomic():
        current = version(facts)
        if current > newest:
            raise ValueError(
                f"the database is of schema version {current}, newer than this program's "
                f"({newest}): run the newer program, or restore a backup"
            )
        if current == 0:
            db.create_tables(models)
        else:
            migrator = SchemaMigrator.from_database(db)
            for step in range(current + 1, newest + 1):
                STEPS[facts][step](db, migrator)
        set_fact(facts, VERSION, str(newest))
