"""Shared fixtures: a throw-away PostgreSQL server, and a fresh database URL on each backend.

What a test needs from the machine goes through `requirements`: PostgreSQL tests, and tests marked
`browser`, skip where the server binaries or chromium are missing, except under CI (CI=true), where
they fail. Under pytest-xdist each worker starts its own server (on a free port) when it first needs one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import requirements
from pgserver import PgServer

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "pg_url"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is not None:
        requirements.chromium()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, started on first use."""
    with PgServer(requirements.pg_bindir()) as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A new empty PostgreSQL database."""
    return pg_server.create_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite database file (not yet created)."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh empty database on each backend in turn."""
    return str(request.getfixturevalue(_URL_FIXTURES[backend]))
