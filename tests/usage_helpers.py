"""Usage facts for tests: the `usage_runs` table created in a test store, rows written in bulk."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert

from circleci_ds.store import Store
from circleci_ds.store import schema as s

COLUMNS = tuple(c.name for c in s.usage_runs.columns)


def create_usage_table(store: Store) -> None:
    """The usage facts table, when the store's migrations have not made it."""
    with store.engine.begin() as conn:
        s.usage_runs.create(conn, checkfirst=True)


def usage_row(job_run_id: str, **values: Any) -> dict[str, Any]:
    """A full row: every column, null unless given; org "org-1"."""
    unknown = set(values) - set(COLUMNS)
    assert not unknown, unknown
    return {**dict.fromkeys(COLUMNS), "org_id": "org-1", "job_run_id": job_run_id, **values}


def write_usage(store: Store, rows: Iterable[dict[str, Any]]) -> None:
    batch = list(rows)
    with store.engine.begin() as conn:
        conn.execute(insert(s.usage_runs), batch)
