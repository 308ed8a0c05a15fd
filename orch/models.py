"""Peewee models of both modes, and `transition()`, the only way a status changes.

The server's jobs and the client's payloads live in two databases (`server_db`, `client_db`) so that both
modes can run in one process (the integration tests do). Each is a proxy, bound once at start-up by
`orch.database` to SQLite or PostgreSQL: everything here works on both.
"""

import contextlib
import functools
import logging

from peewee import (
    SQL,
    BooleanField,
    CharField,
    Check,
    CompositeKey,
    Database,
    DatabaseProxy,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    TextField,
)

from orch.errors import InvalidTransition
from orch.states import FINISHED, JOB_STATUSES, JOB_TRANSITIONS, PAYLOAD_STATUSES, PAYLOAD_TRANSITIONS, Status

log = logging.getLogger(__name__)

server_db = DatabaseProxy()
client_db = DatabaseProxy()


def status_field(allowed: frozenset[Status]) -> CharField:
    names = ", ".join(f"'{status}'" for status in sorted(allowed))
    return CharField(constraints=[Check(f"status IN ({names})")])


class Job(Model):
    """A job on the server: the uploaded folder, who asked, and where it runs."""

    user_id = IntegerField()
    service = CharField()
    status = status_field(JOB_STATUSES)
    folder = CharField()  # name of the job's folder under DATA_PATH
    dest_id = IntegerField(null=True)  # payload id on its client once submitted
    dest_instance = CharField(null=True)  # the instance id of that client, when it says it
    # The address of the client it is placed on (from its claim on), followed there whatever the config. Kept
    # on a job back in the queue only while a send may have reached that client: it is sent there again.
    client = CharField(null=True)
    owner = CharField(null=True)  # the server process sending it (Processing) or terminating it (Locked)
    attempt = IntegerField(default=1, constraints=[SQL("DEFAULT 1")])  # +1 each time it is queued again (lost)
    message = TextField(default="")
    created_at = FloatField()
    updated_at = FloatField()
    finished_at = FloatField(null=True)

    class Meta:
        database = server_db
        table_name = "jobs"
        indexes = (
            (("status", "service", "user_id", "id"), False),  # queue order and quota counts
            (("status", "finished_at"), False),  # the cleaner
            (("folder",), True),  # a job's key, in the events of its client
            (("status", "id"), False),  # the jobs in a status, newest first (GET /jobs)
        )


class JobEvent(Model):
    """One row per status change of a job: the history behind its current status."""

    job = ForeignKeyField(Job, backref="events", on_delete="CASCADE")
    src = CharField(null=True)
    dst = CharField()
    at = FloatField()
    reason = TextField(default="")

    class Meta:
        database = server_db
        table_name = "job_events"


class Cursor(Model):
    """Per service, the user the sender served last: where the next round-robin turn starts."""

    service = CharField(primary_key=True)
    user_id = IntegerField()

    class Meta:
        database = server_db
        table_name = "cursors"


class JoinedClient(Model):
    """A client that joined by itself: where it listens, what it serves, and its lease (until when it counts
    as one of those services' clients unless it announces itself again)."""

    address = CharField(primary_key=True)
    services = TextField()  # service names, separated by commas
    slots = IntegerField()
    instance = CharField(default="")
    joined_at = FloatField()
    expires_at = FloatField()

    class Meta:
        database = server_db
        table_name = "joined_clients"


class Abandoned(Model):
    """A payload that a lost client may still hold for a job that went on without it (queued again, or ended
    Unknown): stopped once that client answers again, so it neither runs on nor takes a slot there."""

    job = ForeignKeyField(Job, on_delete="CASCADE")
    client = CharField()
    dest_id = IntegerField()
    dest_instance = CharField(null=True)
    job_key = CharField()
    at = FloatField()

    class Meta:
        database = server_db
        table_name = "abandoned_payloads"


class JobTransition(Model):
    src = CharField()
    dst = CharField()

    class Meta:
        database = server_db
        table_name = "job_transitions"
        primary_key = CompositeKey("src", "dst")


class Payload(Model):
    """A job on a client (its folder is `DATA_PATH/<id>`) and the process that runs its run.sh."""

    status = status_field(PAYLOAD_STATUSES)
    job_key = CharField(null=True, unique=True)  # the server's name for the job: a repeated submit is a no-op
    walltime = FloatField(null=True)  # seconds run.sh may run
    # False: run.sh runs with its network cut. Nullable only so that adding it keeps SQLite from rebuilding the
    # table, which would cascade-delete the payloads' history.
    network = BooleanField(null=True, default=True)
    service = CharField(null=True)  # the service of its job, when the server says (Slurm settings may be per service)
    executor = CharField(null=True)  # what runs it (orch.executors), set at start; None before (or "local")
    run_id = CharField(null=True)  # the executor's name for its run, when it has one (a Slurm job id)
    deadline = FloatField(null=True)  # when it must be stopped (set at start)
    pid = IntegerField(default=0)
    started_at = FloatField(null=True)  # the process's start time: guards against a recycled pid
    killed = BooleanField(default=False)
    exit_code = IntegerField(null=True)
    message = TextField(default="")
    created_at = FloatField()
    updated_at = FloatField()
    finished_at = FloatField(null=True)

    class Meta:
        database = client_db
        table_name = "payloads"
        indexes = ((("status", "finished_at"), False),)


class Instance(Model):
    """The client's instance id, made with its database: a server that finds another id behind a client's
    URL knows that the client lost what it had, and that its payload ids now mean other jobs."""

    id = CharField(primary_key=True)

    class Meta:
        database = client_db
        table_name = "instance"


class PayloadEvent(Model):
    payload = ForeignKeyField(Payload, backref="events", on_delete="CASCADE")
    src = CharField(null=True)
    dst = CharField()
    at = FloatField()
    reason = TextField(default="")

    class Meta:
        database = client_db
        table_name = "payload_events"


class Server(Model):
    """A server process sharing the database: it says it is alive every few seconds (see orch.peers)."""

    id = CharField(primary_key=True)
    host = CharField()
    pid = IntegerField()
    started_at = FloatField()
    seen_at = FloatField()

    class Meta:
        database = server_db
        table_name = "servers"


class Lease(Model):
    """A task that one server process at a time does (following a client): who holds it, and until when."""

    name = CharField(primary_key=True)
    holder = CharField()
    expires_at = FloatField()

    class Meta:
        database = server_db
        table_name = "leases"


class Fact(Model):
    """A fact about a database itself: its schema version, the identity it shares with its data folder."""

    key = CharField(primary_key=True)
    value = TextField()


class ServerFact(Fact):
    class Meta:
        database = server_db
        table_name = "meta"


class ClientFact(Fact):
    class Meta:
        database = client_db
        table_name = "meta"


def fact(facts: type[Fact], key: str) -> str | None:
    """A fact of the open database whose facts table is `facts` (None: not recorded)."""
    row = facts.get_or_none(facts.key == key)
    return row.value if row else None


def set_fact(facts: type[Fact], key: str, value: str) -> None:
    facts.insert(key=key, value=value).on_conflict(conflict_target=[facts.key], update={facts.value: value}).execute()


class PayloadTransition(Model):
    src = CharField()
    dst = CharField()

    class Meta:
        database = client_db
        table_name = "payload_transitions"
        primary_key = CompositeKey("src", "dst")


# For each stateful model: its history table, its transition table, and the allowed pairs.
MACHINES = {
    Job: (JobEvent, JobTransition, frozenset(JOB_TRANSITIONS)),
    Payload: (PayloadEvent, PayloadTransition, frozenset(PAYLOAD_TRANSITIONS)),
}


# The hot paths (every request and every status change) run statements built once per model and set of
# columns: building a query costs peewee ten times what SQLite takes to run it.


def backend(db: Database) -> Database:
    """The database behind a proxy (or the database itself)."""
    return db.obj if isinstance(db, DatabaseProxy) else db


def is_postgres(db: Database) -> bool:
    return isinstance(backend(db), PostgresqlDatabase)


def serialize(db: Database, name: str) -> None:
    """Within a transaction: wait until no other transaction holds `name`, and hold it to the end, so that work
    on it runs one at a time across server processes sharing a PostgreSQL database (an advisory lock). SQLite
    has one writer at a time already: nothing to do."""
    if is_postgres(db):
        run(db, "SELECT pg_advisory_xact_lock(hashtext(?))", (name,))


def run(db: Database, sql: str, params: tuple | list = ()):
    """Run plain SQL written with `?` placeholders; return the cursor."""
    return db.execute_sql(_placeholders(db.param, sql), params)


@functools.cache
def _placeholders(param: str, sql: str) -> str:
    return sql if param == "?" else sql.replace("?", param)


@functools.cache
def _select_sql(model: type[Model]) -> str:
    columns = ", ".join(f'"{field.column_name}"' for field in model._meta.sorted_fields)
    return f'SELECT {columns} FROM "{model._meta.table_name}" WHERE "id" = ?'


@functools.cache
def _insert_sql(model: type[Model], columns: tuple[str, ...]) -> str:
    names = ", ".join(f'"{model._meta.fields[name].column_name}"' for name in columns)
    values = ", ".join("?" * len(columns))
    return f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({values}) RETURNING "id"'


@functools.cache
def _update_sql(model: type[Model], columns: tuple[str, ...], guards: tuple[str, ...] = ()) -> str:
    changes = ", ".join(f'"{model._meta.fields[name].column_name}" = ?' for name in columns)
    conditions = "".join(f' AND "{model._meta.fields[name].column_name}" = ?' for name in guards)
    return f'UPDATE "{model._meta.table_name}" SET {changes} WHERE "id" = ? AND "status" = ?{conditions}'


@functools.cache
def _set_sql(model: type[Model], columns: tuple[str, ...]) -> str:
    changes = ", ".join(f'"{model._meta.fields[name].column_name}" = ?' for name in columns)
    return f'UPDATE "{model._meta.table_name}" SET {changes} WHERE "id" = ?'


def set_values(model: type[Model], row_id: int, **values) -> None:
    """Set columns other than the status (which only `transition` changes) of one row."""
    assert "status" not in values, "statuses change through transition()"
    columns = tuple(values)
    params = [model._meta.fields[name].db_value(values[name]) for name in columns] + [row_id]
    run(model._meta.database, _set_sql(model, columns), params)


def fetch(model: type[Model], row_id: int) -> Model | None:
    """The row of `model` with this id, or None."""
    row = run(model._meta.database, _select_sql(model), (row_id,)).fetchone()
    if row is None:
        return None
    fields = model._meta.sorted_fields
    return model(**{field.name: field.python_value(value) for field, value in zip(fields, row, strict=True)})


def _insert(model: type[Model], values: dict) -> int:
    """Insert a row (fields left out take their defaults); return its id."""
    for field in model._meta.sorted_fields:
        if field.name not in values and field.default is not None:
            values[field.name] = field.default() if callable(field.default) else field.default
    values.pop("id", None)
    columns = tuple(values)
    params = [model._meta.fields[name].db_value(values[name]) for name in columns]
    return run(model._meta.database, _insert_sql(model, columns), params).fetchone()[0]


def _unit(db: Database):
    """A transaction for a change and its history row, unless one is open already (a claim of several jobs): a
    savepoint per job would cost PostgreSQL two more round trips each, for nothing, as any error ends the whole
    transaction anyway."""
    return contextlib.nullcontext() if db.in_transaction() else db.atomic()


def create(model: type[Model], status: Status, now: float, reason: str = "", **values) -> Model:
    """Insert a row of a stateful model in `status`, with its first history row; return it."""
    events = MACHINES[model][0]
    with _unit(model._meta.database):
        row_id = _insert(model, {"status": status, "created_at": now, "updated_at": now, **values})
        _insert(events, {model._meta.name: row_id, "src": None, "dst": status, "at": now, "reason": reason})
    _log_move(model, row_id, None, status, reason)
    return fetch(model, row_id)


def transition(
    model: type[Model],
    row_id: int,
    src: Status,
    dst: Status,
    now: float,
    message: str | None = None,
    where: dict | None = None,
    **values,
) -> bool:
    """Move row `row_id` of `model` from `src` to `dst`, setting `values` (and `message` if given), provided
    its columns also hold the values in `where` (e.g. the attempt an answer is about).

    Raises InvalidTransition for a pair the state machine does not allow. Returns False, changing nothing,
    when the row is no longer in `src` (someone else moved it first); True when it moved, with a history row.
    """
    events, _, pairs = MACHINES[model]
    if (src, dst) not in pairs:
        raise InvalidTransition(f"{model.__name__} {row_id}: {src} -> {dst} is not allowed")
    changes = {"status": dst, "updated_at": now, **values}
    if message is not None:
        changes["message"] = message
    if dst in FINISHED:
        changes["finished_at"] = now
    columns, guards = tuple(changes), tuple(where or ())
    params = [model._meta.fields[name].db_value(changes[name]) for name in columns] + [row_id, src]
    params += [model._meta.fields[name].db_value(where[name]) for name in guards]
    db = model._meta.database
    with _unit(db):
        if run(db, _update_sql(model, columns, guards), params).rowcount != 1:
            return False
        _insert(events, {model._meta.name: row_id, "src": src, "dst": dst, "at": now, "reason": message or ""})
    _log_move(model, row_id, src, dst, message)
    return True


def _log_move(model: type[Model], row_id: int, src: Status | None, dst: Status, reason: str | None) -> None:
    """The one log line of a status change: `job 7: Running -> Failed: exit code 3`."""
    log.info("%s %d: %s -> %s%s", model._meta.name, row_id, src or "new", dst, f": {reason}" if reason else "")
