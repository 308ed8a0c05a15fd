"""Fixtures of a throwaway PostgreSQL cluster (see bench/postgres.py): `postgres_server` (session) starts one and
stops it at the end of the session whatever the tests did; `postgres_url` (per test) is the URL of a fresh,
empty database on it, dropped after the test. If PostgreSQL cannot be installed or started, the tests that need
it fail with the reason: every machine of the project can run it."""

from collections.abc import Iterator

import pytest

from bench.postgres import PostgresError, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway PostgreSQL cluster (see PostgresServer), stopped at the end of the session."""
    server, reason = PostgresServer(), ""
    try:
        server.start()
    except PostgresError as e:
        reason = str(e)
    if reason:
        pytest.fail(reason, pytrace=False)  # not skipped: every machine of the project can run PostgreSQL
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL (postgresql://postgres@127.0.0.1:PORT/test_...) of a fresh, empty database, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)
