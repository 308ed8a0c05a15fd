"""Peewee models of both modes, and `transition()`, the only way a status changes.

The server's jobs and the client's payloads live in two databases (`server_db`, `client_db`) so that both
modes can run in one process (the integration tests do). Each is opened once at start-up by `orch.database`.
"""

import functools

from peewee import (
    BooleanField,
    CharField,
    Check,
    CompositeKey,
    Database,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    SqliteDatabase,
    TextField,
)

from orch.errors import InvalidTransition
from orch.states import FINISHED, JOB_STATUSES, JOB_TRANSITIONS, PAYLOAD_STATUSES, PAYLOAD_TRANSITIONS, Status

server_db = SqliteDatabase(None)
client_db = SqliteDatabase(None)


def status_field(allowed: frozenset[Status]) -> CharField:
    names = ", ".join(f"'{status}'" for status in sorted(allowed))
    return CharField(constraints=[Check(f"status IN ({names})")])


class Job(Model):
    """A job on the server: the uploaded folder, who asked, and where it runs."""

    user_id = IntegerField()
    service = CharField()
    status = status_field(JOB_STATUSES)
    folder = CharField()  # name of the job's folder under DATA_PATH
    dest_id = IntegerField(null=True)  # payload id on the service's client once submitted
    dest_instance = CharField(null=True)  # the instance id of that client, when it says it
    client = CharField(null=True)  # the address of the client it was sent to: followed there whatever the config
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
    return f'INSERT INTO "{model._meta.table_name}" ({names}) VALUES ({", ".join("?" * len(columns))})'


@functools.cache
def _update_sql(model: type[Model], columns: tuple[str, ...]) -> str:
    changes = ", ".join(f'"{model._meta.fields[name].column_name}" = ?' for name in columns)
    return f'UPDATE "{model._meta.table_name}" SET {changes} WHERE "id" = ? AND "status" = ?'


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
    return run(model._meta.database, _insert_sql(model, columns), params).lastrowid


def create(model: type[Model], status: Status, now: float, reason: str = "", **values) -> Model:
    """Insert a row of a stateful model in `status`, with its first history row; return it."""
    events = MACHINES[model][0]
    with model._meta.database.atomic():
        row_id = _insert(model, {"status": status, "created_at": now, "updated_at": now, **values})
        _insert(events, {model._meta.name: row_id, "src": None, "dst": status, "at": now, "reason": reason})
    return fetch(model, row_id)


def transition(
    model: type[Model], row_id: int, src: Status, dst: Status, now: float, message: str | None = None, **values
) -> bool:
    """Move row `row_id` of `model` from `src` to `dst`, setting `values` (and `message` if given).

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
    columns = tuple(changes)
    params = [model._meta.fields[name].db_value(changes[name]) for name in columns] + [row_id, src]
    db = model._meta.database
    with db.atomic():
        if run(db, _update_sql(model, columns), params).rowcount != 1:
            return False
        _insert(events, {model._meta.name: row_id, "src": src, "dst": dst, "at": now, "reason": message or ""})
    return True
