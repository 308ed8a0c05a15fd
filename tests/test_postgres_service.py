"""The throwaway PostgreSQL of the test suite (tests/services/postgres.py) is real, gives each test its own
database, and leaves nothing behind."""

import os
import signal
import socket
import tempfile
from pathlib import Path

import peewee
import psutil
import psycopg
import pytest

from bench.postgres import PostgresError, PostgresServer


class Note(peewee.Model):
    text = peewee.TextField()


def test_peewee_uses_psycopg_3(postgres_url):
    db = peewee.PostgresqlDatabase(postgres_url)
    assert peewee.psycopg2 is None  # peewee would prefer psycopg2 if it were installed
    assert isinstance(db._adapter, peewee.Psycopg3Adapter)
    with db.connection_context():
        assert type(db.connection()) is psycopg.Connection
        assert db.server_version >= 150000


def test_write_and_read_back_with_peewee(postgres_url):
    db = peewee.PostgresqlDatabase(postgres_url)
    with db.bind_ctx([Note]), db.connection_context():
        assert db.get_tables() == []  # fresh and empty
        db.create_tables([Note])
        Note.create(text="hello")
        Note.insert_many([{"text": "a"}, {"text": "b"}]).execute()
        assert [note.text for note in Note.select().order_by(Note.id)] == ["hello", "a", "b"]


def test_databases_are_independent(postgres_server, postgres_url):
    other = postgres_server.create_database()
    try:
        first, second = peewee.PostgresqlDatabase(postgres_url), peewee.PostgresqlDatabase(postgres_server.url(other))
        with first.bind_ctx([Note]), first.connection_context():
            first.create_tables([Note])
            Note.create(text="only in the first")
        with second.connection_context():
            assert second.get_tables() == []
        assert postgres_url != postgres_server.url(other)
    finally:
        postgres_server.drop_database(other)
    with psycopg.connect(postgres_server.url()) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [other]).fetchall()


def test_unix_socket(postgres_server, postgres_url):
    name = postgres_url.rsplit("/", 1)[1]
    with psycopg.connect(postgres_server.url(name, socket=True)) as conn:
        assert conn.info.host == str(postgres_server.folder)
        assert conn.execute("SELECT current_database()").fetchone() == (name,)


def test_drop_closes_connections_left_open(postgres_server):
    name = postgres_server.create_database()
    conn = psycopg.connect(postgres_server.url(name))
    try:
        postgres_server.drop_database(name)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_stop_leaves_nothing():
    server = PostgresServer().start()
    try:
        with psycopg.connect(server.url()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pids, folder = [proc.pid for proc in server.processes()], server.folder
        assert len(pids) > 1 and folder.is_dir()
    finally:
        server.stop()
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert not folder.exists()
    server.stop()  # again: nothing to do


def test_stop_kills_a_postmaster_that_does_not_answer():
    server = PostgresServer().start()
    conn = psycopg.connect(server.url())  # a backend that stays, too
    try:
        procs, folder = server.processes(), server.folder
        os.kill(server.postmaster.pid, signal.SIGSTOP)
        server.stop(timeout=1)
    finally:
        server.stop()
        conn.close()
    assert not any(proc.is_running() for proc in procs)
    assert not folder.exists()


def test_a_start_that_fails_says_why_and_leaves_nothing():
    folders = set(Path(tempfile.gettempdir()).glob("pg-test-*"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server = PostgresServer(port=taken.getsockname()[1])
        with pytest.raises(PostgresError, match="could not bind"):
            server.start()
    assert server.postmaster is None
    assert set(Path(tempfile.gettempdir()).glob("pg-test-*")) <= folders
