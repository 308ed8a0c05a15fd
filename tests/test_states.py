"""The job and payload state machines (`orch.states`) and how `orch.models` enforces them on real SQLite files.

`transition()` is the only way a status changes; the database's trigger and CHECK constraint refuse what it
would refuse, so even a change made behind its back cannot break the machine.
"""

import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from peewee import Database, IntegrityError, SqliteDatabase

from orch import database, migrations
from orch.database import open_client_db, open_server_db
from orch.errors import Conflict, InvalidTransition
from orch.models import (
    ClientFact,
    Job,
    JobEvent,
    JobTransition,
    Payload,
    PayloadEvent,
    PayloadTransition,
    ServerFact,
    client_db,
    create,
    is_postgres,
    server_db,
    transition,
)
from orch.states import (
    ACTIVE,
    FINISHED,
    JOB_STATUSES,
    JOB_TRANSITIONS,
    PAYLOAD_STATUSES,
    PAYLOAD_TRANSITIONS,
    Status,
)

S = Status
NOW = 1_700_000_000.0


def job_fields() -> dict:
    """The fields of a new job (each job has its own folder)."""
    return {"user_id": 1, "service": "example", "folder": uuid.uuid4().hex}


pytestmark = pytest.mark.both_databases


@pytest.fixture
def server(server_database) -> Iterator[Database]:
    """The server's database (a real file, or a fresh PostgreSQL database), closed after the test."""
    open_server_db(server_database)
    yield server_db
    server_db.close()


@pytest.fixture
def client(tmp_path) -> Iterator[SqliteDatabase]:
    """The client's database in a real file, closed after the test."""
    open_client_db(tmp_path / "c.sqlite")
    yield client_db
    client_db.close()


def path_to(target: Status, transitions: list[tuple[Status, Status]], start: Status) -> list[Status]:
    """The shortest list of statuses leading from `start` to `target` through allowed transitions."""
    routes = {start: [start]}
    todo = deque([start])
    while todo:
        status = todo.popleft()
        for src, dst in transitions:
            if src == status and dst not in routes:
                routes[dst] = [*routes[status], dst]
                todo.append(dst)
    return routes[target]


def job_in(status: Status, now: float = NOW) -> int:
    """A job created Queued and moved to `status` through transition(), one second per step."""
    job = create(Job, S.QUEUED, now, reason="uploaded", **job_fields())
    route = path_to(status, JOB_TRANSITIONS, S.QUEUED)
    for step, (src, dst) in enumerate(zip(route, route[1:], strict=False), start=1):
        assert transition(Job, job.id, src, dst, now + step)
    return job.id


def events(job_id: int) -> list[tuple]:
    history = JobEvent.select().where(JobEvent.job == job_id).order_by(JobEvent.id)
    return [(event.src, event.dst, event.at, event.reason) for event in history]


def pairs(model) -> set[tuple[str, str]]:
    return set(model.select(model.src, model.dst).tuples())


def as_values(transitions: list[tuple[Status, Status]]) -> set[tuple[str, str]]:
    return {(src.value, dst.value) for src, dst in transitions}


def outgoing(transitions: list[tuple[Status, Status]], src: Status) -> set[Status]:
    return {dst for s, dst in transitions if s == src}


# ---- The machines as data


def test_active_is_every_job_status_that_is_neither_queued_finished_nor_cleaned():
    assert ACTIVE == {S.PROCESSING, S.SUBMITTED, S.RUNNING, S.LOCKED}
    for status in JOB_STATUSES:
        assert (status in ACTIVE) == (status not in FINISHED | {S.QUEUED, S.CLEANED}), status


def test_finished_statuses_only_go_to_cleaned():
    for status in FINISHED:
        assert outgoing(JOB_TRANSITIONS, status) == {S.CLEANED}, status
        if status in PAYLOAD_STATUSES:
            assert outgoing(PAYLOAD_TRANSITIONS, status) == {S.CLEANED}, status


def test_cleaned_is_the_end_of_both_machines():
    assert outgoing(JOB_TRANSITIONS, S.CLEANED) == set()
    assert outgoing(PAYLOAD_TRANSITIONS, S.CLEANED) == set()


def test_every_unfinished_job_status_has_a_way_out_and_every_status_can_be_reached():
    """No job can get stuck: each status but Cleaned leads somewhere, and each is reachable from Queued."""
    for status in JOB_STATUSES - {S.CLEANED}:
        assert outgoing(JOB_TRANSITIONS, status), status
        assert path_to(status, JOB_TRANSITIONS, S.QUEUED)[-1] == status
    for status in PAYLOAD_STATUSES - {S.CLEANED}:
        assert outgoing(PAYLOAD_TRANSITIONS, status), status
        assert path_to(status, PAYLOAD_TRANSITIONS, S.PREPARED)[-1] == status


def test_an_active_job_can_always_end_killed_or_failed():
    for status in ACTIVE:
        assert path_to(S.KILLED, JOB_TRANSITIONS, status)[-1] == S.KILLED, status
        assert path_to(S.FAILED, JOB_TRANSITIONS, status)[-1] == S.FAILED, status


def test_the_payload_machine():
    assert outgoing(PAYLOAD_TRANSITIONS, S.PREPARED) == {S.RUNNING, S.INVALID, S.KILLED, S.FAILED}
    assert outgoing(PAYLOAD_TRANSITIONS, S.RUNNING) == {S.COMPLETED, S.FAILED, S.KILLED, S.PREPARED}
    assert PAYLOAD_STATUSES == {S.PREPARED, S.RUNNING, S.COMPLETED, S.FAILED, S.INVALID, S.KILLED, S.CLEANED}


def test_statuses_are_stored_with_the_originals_json_names():
    assert [status.value for status in (S.QUEUED, S.PROCESSING, S.SUBMITTED, S.RUNNING, S.LOCKED)] == [
        "Queued",
        "Processing",
        "Submitted",
        "Running",
        "Locked",
    ]
    assert S("Completed") is S.COMPLETED


# ---- create() and transition()


def test_create_writes_the_row_and_a_first_history_row(server):
    fields = job_fields()
    job = create(Job, S.QUEUED, NOW, reason="uploaded", **fields)
    stored = Job.get_by_id(job.id)
    assert (stored.status, stored.created_at, stored.updated_at, stored.finished_at) == ("Queued", NOW, NOW, None)
    assert (stored.user_id, stored.service, stored.folder) == (1, "example", fields["folder"])
    assert events(job.id) == [(None, "Queued", NOW, "uploaded")]


def test_transition_moves_the_row_and_records_an_event(server):
    job = create(Job, S.QUEUED, NOW, **job_fields())
    assert transition(Job, job.id, S.QUEUED, S.PROCESSING, NOW + 1) is True
    assert transition(Job, job.id, S.PROCESSING, S.SUBMITTED, NOW + 2, "sent", dest_id=42) is True
    stored = Job.get_by_id(job.id)
    assert (stored.status, stored.updated_at, stored.dest_id, stored.message) == ("Submitted", NOW + 2, 42, "sent")
    assert stored.finished_at is None
    assert events(job.id) == [
        (None, "Queued", NOW, ""),
        ("Queued", "Processing", NOW + 1, ""),
        ("Processing", "Submitted", NOW + 2, "sent"),
    ]


def test_transition_without_a_message_keeps_the_previous_one(server):
    job_id = job_in(S.RUNNING)
    Job.update(message="started on node1").where(Job.id == job_id).execute()
    assert transition(Job, job_id, S.RUNNING, S.LOCKED, NOW + 10)
    assert Job.get_by_id(job_id).message == "started on node1"


@pytest.mark.parametrize("finished", sorted(FINISHED))
def test_a_finished_status_sets_finished_at(server, finished):
    job_id = job_in(S.RUNNING)
    assert Job.get_by_id(job_id).finished_at is None
    assert transition(Job, job_id, S.RUNNING, finished, NOW + 10, "the end")
    stored = Job.get_by_id(job_id)
    assert (stored.status, stored.finished_at, stored.message) == (finished.value, NOW + 10, "the end")


def test_cleaning_a_job_keeps_when_it_finished(server):
    job_id = job_in(S.COMPLETED)
    finished_at = Job.get_by_id(job_id).finished_at
    assert transition(Job, job_id, S.COMPLETED, S.CLEANED, NOW + 100)
    assert Job.get_by_id(job_id).finished_at == finished_at


def test_transition_from_a_status_the_row_is_no_longer_in_changes_nothing(server):
    """Someone else moved the job first: the loser gets False, and neither the row nor its history changes."""
    job = create(Job, S.QUEUED, NOW, **job_fields())
    assert transition(Job, job.id, S.QUEUED, S.PROCESSING, NOW + 1, "claimed")  # the sender wins
    before = Job.get_by_id(job.id).__data__
    history = events(job.id)
    assert transition(Job, job.id, S.QUEUED, S.KILLED, NOW + 2, "cancelled", dest_id=7) is False  # a terminate
    assert Job.get_by_id(job.id).__data__ == before
    assert events(job.id) == history


def test_transition_of_a_missing_row_returns_false_and_records_nothing(server):
    assert transition(Job, 999, S.QUEUED, S.PROCESSING, NOW) is False
    assert JobEvent.select().count() == 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.COMPLETED),
        (S.KILLED, S.QUEUED),
        (S.PROCESSING, S.RUNNING),
        (S.RUNNING, S.RUNNING),
        (S.QUEUED, S.PREPARED),
    ]
    + [(S.CLEANED, dst) for dst in Status],
)
def test_an_illegal_transition_raises_before_touching_the_database(server, src, dst):
    job = create(Job, src, NOW, **job_fields()) if src in JOB_STATUSES else None
    server_db.close()
    with pytest.raises(InvalidTransition, match=f"{src} -> {dst}"):
        transition(Job, job.id if job else 1, src, dst, NOW + 1)
    assert server_db.is_closed()  # it did not even connect
    if job:
        assert Job.get_by_id(job.id).status == src.value
        assert len(events(job.id)) == 1


def test_every_pair_outside_the_table_is_refused_and_every_pair_inside_is_accepted(server):
    allowed = set(JOB_TRANSITIONS)
    for src in Status:
        for dst in Status:
            if (src, dst) in allowed:
                job = create(Job, src, NOW, **job_fields())
                assert transition(Job, job.id, src, dst, NOW + 1), (src, dst)
                assert Job.get_by_id(job.id).status == dst.value
            else:
                with pytest.raises(InvalidTransition):
                    transition(Job, 1, src, dst, NOW + 1)


def test_an_invalid_transition_is_a_409_conflict():
    assert issubclass(InvalidTransition, Conflict) and InvalidTransition.status == 409


# ---- The database guards the machine too


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.COMPLETED, S.RUNNING),
        (S.CLEANED, S.QUEUED),
        (S.QUEUED, S.RUNNING),
        (S.KILLED, S.COMPLETED),
        (S.LOCKED, S.QUEUED),
    ],
)
def test_the_database_refuses_an_illegal_change_made_behind_transitions_back(server, src, dst):
    job = create(Job, src, NOW, **job_fields())
    with pytest.raises(IntegrityError, match="illegal status transition"):
        Job.update(status=dst.value).where(Job.id == job.id).execute()
    assert Job.get_by_id(job.id).status == src.value


def test_another_connection_to_the_database_cannot_bypass_the_guard(server_database, server):
    """The trigger and the CHECK live in the database (not in one connection): another process is refused too."""
    job = create(Job, S.COMPLETED, NOW, **job_fields())
    other = database.connect(server_database)
    try:
        with pytest.raises(IntegrityError, match="illegal status transition"):
            other.execute_sql(f"UPDATE jobs SET status = 'Running' WHERE id = {job.id}")
        with pytest.raises(IntegrityError):
            other.execute_sql(
                "INSERT INTO jobs (user_id, service, status, folder, message, created_at, updated_at) "
                "VALUES (1, 'example', 'Bogus', 'f', '', 0, 0)"
            )
        other.execute_sql(f"UPDATE jobs SET status = 'Cleaned' WHERE id = {job.id}")
    finally:
        other.close()
    assert Job.get_by_id(job.id).status == "Cleaned"


@pytest.mark.parametrize(("src", "dst"), [(S.QUEUED, S.PROCESSING), (S.RUNNING, S.LOCKED), (S.COMPLETED, S.CLEANED)])
def test_the_database_lets_an_allowed_change_through(server, src, dst):
    job = create(Job, src, NOW, **job_fields())
    assert Job.update(status=dst.value).where(Job.id == job.id).execute() == 1
    assert Job.get_by_id(job.id).status == dst.value


def test_the_database_lets_other_columns_of_a_finished_job_change(server):
    job = create(Job, S.COMPLETED, NOW, **job_fields())
    assert Job.update(status=S.COMPLETED.value, message="kept").where(Job.id == job.id).execute() == 1
    assert Job.get_by_id(job.id).message == "kept"


def test_the_database_refuses_an_illegal_payload_change(client):
    payload = create(Payload, S.PREPARED, NOW)
    assert transition(Payload, payload.id, S.PREPARED, S.RUNNING, NOW + 1, pid=1234)
    assert transition(Payload, payload.id, S.RUNNING, S.COMPLETED, NOW + 2, exit_code=0)
    with pytest.raises(IntegrityError, match="illegal status transition"):
        Payload.update(status=S.RUNNING.value).where(Payload.id == payload.id).execute()
    stored = Payload.get_by_id(payload.id)
    assert (stored.status, stored.pid, stored.exit_code, stored.finished_at) == ("Completed", 1234, 0, NOW + 2)
    assert [(e.src, e.dst) for e in PayloadEvent.select().order_by(PayloadEvent.id)] == [
        (None, "Prepared"),
        ("Prepared", "Running"),
        ("Running", "Completed"),
    ]


@pytest.mark.parametrize("status", ["Bogus", "queued", "", "Pending", "Prepared"])
def test_the_check_constraint_refuses_a_status_jobs_do_not_have(server, status):
    with pytest.raises(IntegrityError):
        Job.insert(status=status, created_at=NOW, updated_at=NOW, **job_fields()).execute()
    assert Job.select().count() == 0


@pytest.mark.parametrize("status", ["Bogus", "Pending", "Queued", "Locked", "Unknown"])
def test_the_check_constraint_refuses_a_status_payloads_do_not_have(client, status):
    with pytest.raises(IntegrityError):
        Payload.insert(status=status, created_at=NOW, updated_at=NOW).execute()
    assert Payload.select().count() == 0


def test_the_transition_tables_equal_the_lists_after_opening(server, client):
    assert pairs(JobTransition) == as_values(JOB_TRANSITIONS)
    assert pairs(PayloadTransition) == as_values(PAYLOAD_TRANSITIONS)


def test_a_tampered_transition_table_is_restored_on_reopening(server_database, server):
    path = server_database
    JobTransition.insert(src="Completed", dst="Running").execute()
    JobTransition.delete().where(JobTransition.src == "Queued", JobTransition.dst == "Processing").execute()
    job = create(Job, S.COMPLETED, NOW, **job_fields())
    assert Job.update(status="Running").where(Job.id == job.id).execute() == 1  # the tampering works until...
    server_db.close()
    open_server_db(path)  # ...the next start
    assert pairs(JobTransition) == as_values(JOB_TRANSITIONS)
    with pytest.raises(IntegrityError):
        Job.update(status="Processing").where(Job.id == job.id).execute()
    queued = create(Job, S.QUEUED, NOW, **job_fields())
    assert Job.update(status="Processing").where(Job.id == queued.id).execute() == 1


def test_a_dropped_guard_trigger_is_recreated_on_reopening(server_database, server):
    server_db.execute_sql("DROP TRIGGER jobs_status_guard" + (" ON jobs" if is_postgres(server_db) else ""))
    server_db.close()
    open_server_db(server_database)
    job = create(Job, S.COMPLETED, NOW, **job_fields())
    with pytest.raises(IntegrityError):
        Job.update(status="Running").where(Job.id == job.id).execute()


# ---- Opening the databases


def test_reopening_the_same_database_keeps_the_data(server_database, server):
    path = server_database
    job_id = job_in(S.SUBMITTED)
    history = events(job_id)
    server_db.close()
    open_server_db(path)
    open_server_db(path)  # twice: opening is idempotent
    assert Job.select().count() == 1
    assert Job.get_by_id(job_id).status == "Submitted"
    assert events(job_id) == history
    assert migrations.version(ServerFact) == migrations.latest(ServerFact)


def test_opening_creates_the_file(tmp_path):
    path = tmp_path / "c.sqlite"
    open_client_db(path)
    try:
        assert path.is_file()
        assert Payload.select().count() == 0
        assert client_db.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert client_db.execute_sql("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        client_db.close()


def test_a_database_in_a_missing_folder_is_refused_naming_db_path_and_nothing_is_created(tmp_path):
    path = tmp_path / "missing" / "c.sqlite"
    with pytest.raises(ValueError, match="DB_PATH") as raised:
        open_client_db(path)
    assert str(path) in str(raised.value)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("opener", "db", "facts"), [(open_server_db, server_db, ServerFact), (open_client_db, client_db, ClientFact)]
)
def test_a_database_with_a_newer_schema_is_refused_naming_db_path(tmp_path, opener, db, facts):
    path: Path = tmp_path / "newer.sqlite"
    opener(path)
    facts.replace(key=migrations.VERSION, value="99").execute()
    db.close()
    try:
        with pytest.raises(ValueError, match="DB_PATH") as raised:
            opener(path)
        assert str(path) in str(raised.value)
    finally:
        db.close()
    newer = SqliteDatabase(str(path))
    try:
        assert newer.execute_sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "99"
    finally:
        newer.close()
