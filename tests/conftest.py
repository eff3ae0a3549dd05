"""Shared fixtures: a throw-away PostgreSQL server, and a fresh database URL on each backend.

PostgreSQL tests skip when the server binaries are missing, except under CI (CI=true), where
they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgserver import PgServer, PgUnavailable, find_bindir

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
_URL_FIXTURES = {"sqlite": "sqlite_url", "postgresql": "pg_url"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, started on first use."""
    try:
        bindir = find_bindir()
    except PgUnavailable as exc:
        if _in_ci():
            pytest.fail(f"{exc} (CI is set, so PostgreSQL tests may not be skipped)", pytrace=False)
        pytest.skip(str(exc))
    with PgServer(bindir) as server:
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
