"""The usage tables: typed job-run rows of the Usage API's exports, the exports asked for, the requests
sent to its rate-limited routes, and the files as downloaded. Rows are given typed; nothing here reads CSV.

- An export's files and rows are written in one transaction: a file that fails midway leaves the
  store as it was before that export.
- Rows are keyed by (org_id, job_run_id): a row seen again (an overlapping window) replaces the stored one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from circleci_ds.store import schema as s
from circleci_ds.store.database import Store

BATCH = 2000  # rows written per statement
KEEP_REQUESTS = 2 * 86400.0  # request times kept for the limits' bookkeeping


@dataclass(frozen=True)
class ExportRecord:
    export_id: str
    org_id: str
    window_start: float
    window_end: float
    state: str
    requested_at: float
    polls: int
    null_url_polls: int
    rows: int | None
    error: str | None


def add_export(store: Store, export_id: str, org_id: str, start: float, end: float, at: float) -> None:
    """An export job just created (POST answered)."""
    values = {
        "export_id": export_id,
        "org_id": org_id,
        "window_start": start,
        "window_end": end,
        "state": "created",
        "requested_at": at,
        "polls": 0,
        "null_url_polls": 0,
    }
    with store.writing() as conn:
        conn.execute(delete(s.usage_exports).where(s.usage_exports.c.export_id == export_id))
        conn.execute(insert(s.usage_exports).values(**values))


def update_export(store: Store, export_id: str, **values: Any) -> None:
    with store.writing() as conn:
        conn.execute(update(s.usage_exports).where(s.usage_exports.c.export_id == export_id).values(**values))


def exports(store: Store, org_id: str) -> list[ExportRecord]:
    """Every export asked for the organisation, oldest request first."""
    e = s.usage_exports.c
    query = (
        select(
            e.export_id,
            e.org_id,
            e.window_start,
            e.window_end,
            e.state,
            e.requested_at,
            e.polls,
            e.null_url_polls,
            e.rows,
            e.error,
        )
        .where(e.org_id == org_id)
        .order_by(e.requested_at, e.export_id)
    )
    with store.reading() as conn:
        return [ExportRecord(**row) for row in conn.execute(query).mappings()]


def note_request(
    store: Store, org_id: str, kind: str, at: float, *, refused: bool = False, export_id: str | None = None
) -> None:
    """A POST or GET just sent to a usage route; times older than KEEP_REQUESTS are dropped."""
    r = s.usage_requests.c
    values = {"org_id": org_id, "kind": kind, "at": at, "refused": refused, "export_id": export_id}
    with store.writing() as conn:
        conn.execute(insert(s.usage_requests).values(**values))
        conn.execute(delete(s.usage_requests).where(r.at < at - KEEP_REQUESTS))


def request_times(store: Store, org_id: str, kind: str, since: float) -> list[float]:
    """When the organisation's `kind` requests since `since` were sent, oldest first (a refused one
    is counted once, by the request it answered)."""
    r = s.usage_requests.c
    query = (
        select(r.at)
        .where(r.org_id == org_id, r.kind == kind, r.at >= since, r.refused.is_(False))
        .order_by(r.at)
    )
    with store.reading() as conn:
        return [float(at) for at in conn.execute(query).scalars()]


def write_export(
    store: Store, export_id: str, files: Sequence[bytes], rows: Iterable[dict[str, Any]], finished_at: float
) -> int:
    """Store an export's files as sent and its typed rows, and mark it stored, in one transaction;
    any exception raised while `rows` is read undoes it all. Returns the rows written."""
    written = 0
    with store.writing() as conn:
        conn.execute(delete(s.usage_files).where(s.usage_files.c.export_id == export_id))
        for seq, data in enumerate(files):
            conn.execute(insert(s.usage_files).values(export_id=export_id, seq=seq, data=data))
        batch: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            batch[(row["org_id"], row["job_run_id"])] = row  # the last of a job run seen twice wins
            if len(batch) >= BATCH:
                written += _replace_rows(conn, batch)
                batch = {}
        written += _replace_rows(conn, batch)
        e = s.usage_exports.c
        conn.execute(
            update(s.usage_exports)
            .where(e.export_id == export_id)
            .values(state="stored", files=len(files), rows=written, finished_at=finished_at, error=None)
        )
    return written


def _replace_rows(conn: Connection, batch: dict[tuple[str, str], dict[str, Any]]) -> int:
    """Insert the rows, a row already stored under the same key replaced (an upsert: deleting first
    costs PostgreSQL a scan per batch of the rows written earlier in the same transaction)."""
    if not batch:
        return 0
    upsert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    statement = upsert(s.usage_runs)
    keys = {"org_id", "job_run_id"}
    others = {c.name: statement.excluded[c.name] for c in s.usage_runs.columns if c.name not in keys}
    statement = statement.on_conflict_do_update(index_elements=sorted(keys), set_=others)
    conn.execute(statement, list(batch.values()))
    return len(batch)


def usage_row_count(store: Store, org_id: str | None = None) -> int:
    u = s.usage_runs.c
    query = select(func.count()).select_from(s.usage_runs)
    if org_id is not None:
        query = query.where(u.org_id == org_id)
    with store.reading() as conn:
        return int(conn.execute(query).scalar_one())
