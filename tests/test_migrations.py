"""Versioned schema changes (`orch.migrations`): a database made by version 1 of the program, built here from a
frozen copy of its schema, is upgraded in place with every job and payload kept as it was."""

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from playhouse.migrate import SchemaMigrator, migrate

from orch import migrations
from orch.database import client_instance, close, open_client_db, open_server_db
from orch.models import (
    Abandoned,
    ClientFact,
    Job,
    JobEvent,
    JoinedClient,
    Lease,
    Payload,
    PayloadEvent,
    Server,
    ServerFact,
    backend,
    client_db,
    server_db,
    transition,
)
from orch.states import FINISHED, JOB_STATUSES, Status

SCHEMAS = Path(__file__).parent / "schemas"
NOW = 1_700_000_000.0


def version_1(path: Path, mode: str) -> sqlite3.Connection:
    """A database at `path` as version 1 of the program made it."""
    db = sqlite3.connect(path)
    db.executescript((SCHEMAS / f"v1-{mode}.sql").read_text())
    return db


def columns(db: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Each table's columns (name, type, not null, default, primary key), and its indexes."""
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {
        table: sorted(row[1:] for row in db.execute(f'PRAGMA table_info("{table}")'))
        + sorted(row[1:3] for row in db.execute(f'PRAGMA index_list("{table}")'))
        for table in tables
    }


@pytest.fixture
def closed():
    yield
    for db in (server_db, client_db):
        close(db)


def test_a_version_1_server_database_is_upgraded_with_every_job_kept(tmp_path, closed):
    path = tmp_path / "server.sqlite"
    old = version_1(path, "server")
    statuses = sorted(JOB_STATUSES)
    for n, status in enumerate(statuses, 1):
        old.execute(
            "INSERT INTO jobs (id, user_id, service, status, folder, dest_id, message, created_at, "
            "updated_at) VALUES (?, ?, 'example', ?, ?, ?, ?, ?, ?)",
            (n, n, status, uuid.uuid4().hex, n if status != "Queued" else None, f"why {n}", NOW, NOW),
        )
        old.execute(
            "INSERT INTO job_events (job_id, src, dst, at, reason) VALUES (?, NULL, 'Queued', ?, 'uploaded')", (n, NOW)
        )
    old.execute("INSERT INTO cursors VALUES ('example', 3)")
    old.commit()
    before = old.execute("SELECT * FROM jobs ORDER BY id").fetchall()
    old.close()

    open_server_db(path)

    assert migrations.version(ServerFact) == migrations.latest(ServerFact)
    after = server_db.execute_sql(
        "SELECT id, user_id, service, status, folder, dest_id, dest_instance, message, "
        "created_at, updated_at, finished_at FROM jobs ORDER BY id"
    ).fetchall()
    assert after == before
    assert [job.client for job in Job.select()] == [None] * len(statuses)
    assert JobEvent.select().count() == len(statuses)
    queued = Job.get(Job.status == "Queued")
    assert transition(Job, queued.id, Status.QUEUED, Status.PROCESSING, NOW)  # the guard still works
    finished = Job.get(Job.status == "Completed")
    assert finished.status in FINISHED and finished.message == f"why {finished.id}"


def test_a_version_1_client_database_is_upgraded_keeping_its_payloads_and_instance(tmp_path, closed):
    path = tmp_path / "client.sqlite"
    old = version_1(path, "client")
    old.execute("INSERT INTO instance VALUES ('abc123')")
    old.execute(
        "INSERT INTO payloads (id, status, job_key, pid, killed, message, created_at, updated_at) "
        "VALUES (1, 'Running', 'key', 42, 0, '', ?, ?)",
        (NOW, NOW),
    )
    old.execute(
        "INSERT INTO payload_events (payload_id, src, dst, at, reason) VALUES (1, NULL, 'Prepared', ?, '')", (NOW,)
    )
    old.commit()
    old.close()

    open_client_db(path)

    assert migrations.version(ClientFact) == migrations.latest(ClientFact)
    assert client_instance() == "abc123"
    payload = Payload.get_by_id(1)
    assert (payload.status, payload.job_key, payload.pid) == ("Running", "key", 42)
    assert PayloadEvent.select().count() == 1


@pytest.mark.parametrize(
    ("mode", "opener", "db"), [("server", open_server_db, server_db), ("client", open_client_db, client_db)]
)
def test_an_upgraded_database_has_the_schema_of_a_new_one(tmp_path, closed, mode, opener, db):
    version_1(tmp_path / "old.sqlite", mode).close()
    opener(tmp_path / "old.sqlite")
    db.close()
    opener(tmp_path / "new.sqlite")
    db.close()
    with sqlite3.connect(tmp_path / "old.sqlite") as old, sqlite3.connect(tmp_path / "new.sqlite") as new:
        assert columns(old) == columns(new)


def test_a_step_that_fails_half_way_leaves_the_database_as_it_was(tmp_path, closed):
    path = tmp_path / "server.sqlite"
    old = version_1(path, "server")
    old.execute("ALTER TABLE jobs ADD COLUMN client TEXT")  # made by hand: the step adding it fails after the first
    old.commit()
    old.close()
    with pytest.raises(ValueError, match="DB_PATH .*duplicate column"):
        open_server_db(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
        assert "meta" not in [name for (name,) in db.execute("SELECT name FROM sqlite_master")]


def test_a_server_and_a_client_cannot_share_a_database(tmp_path, closed):
    path = tmp_path / "shared.sqlite"
    open_server_db(path)
    close(server_db)
    with pytest.raises(ValueError, match="holds the jobs of the other mode"):
        open_client_db(path)


@pytest.mark.both_databases
def test_each_step_applies_on_both_databases_keeping_the_jobs(server_database, closed):
    """A database of version 2 (made here by undoing the last steps) gets them applied."""
    open_server_db(server_database)
    job = Job.create(
        user_id=1,
        service="example",
        status="Running",
        folder=uuid.uuid4().hex,
        message="",
        created_at=NOW,
        updated_at=NOW,
    )
    migrator = SchemaMigrator.from_database(backend(server_db))
    migrate(
        migrator.drop_index("jobs", "job_status_id"),
        migrator.drop_column("jobs", "owner"),
        migrator.drop_column("jobs", "attempt"),
    )
    server_db.drop_tables([Server, Lease, JoinedClient, Abandoned])
    ServerFact.update(value="2").where(ServerFact.key == migrations.VERSION).execute()
    close(server_db)

    open_server_db(server_database)

    assert migrations.version(ServerFact) == migrations.latest(ServerFact) == 5
    assert Job.get_by_id(job.id).status == "Running" and Job.get_by_id(job.id).owner is None
    assert "job_status_id" in {index.name for index in server_db.get_indexes("jobs")}
    assert Server.select().count() == 0 and Lease.select().count() == 0


@pytest.mark.both_databases
def test_a_newer_database_is_refused_on_both(server_database, closed):
    open_server_db(server_database)
    ServerFact.update(value="99").where(ServerFact.key == migrations.VERSION).execute()
    close(server_db)
    with pytest.raises(ValueError, match="schema version 99, newer than this program's"):
        open_server_db(server_database)


def test_a_postgresql_database_holding_other_tables_gets_the_schema_beside_them(postgres_url, closed):
    """An institute's database may hold other tables: it is a new database for the orchestrator all the same."""
    other = psycopg.connect(postgres_url, autocommit=True)
    other.execute("CREATE TABLE portal_users (id integer PRIMARY KEY)")
    other.close()
    open_server_db(postgres_url)
    assert migrations.version(ServerFact) == migrations.latest(ServerFact)
    assert {"jobs", "portal_users"} <= set(server_db.get_tables())
