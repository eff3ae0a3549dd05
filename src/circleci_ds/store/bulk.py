"""Bulk inserts through the driver: the statements the collector's writes repeat, built once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection


def insert_rows(conn: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (column -> value, the first row's columns) through the driver's executemany: the
    collector's hot path, where SQLAlchemy's per-row work cost more than the database's."""
    if not rows:
        return
    columns = tuple(rows[0])
    values = itemgetter(*columns)
    single = len(columns) == 1
    conn.exec_driver_sql(
        _insert_sql(table, columns, conn.dialect.paramstyle),
        [(values(row),) if single else values(row) for row in rows],
    )


@lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join([mark] * len(columns))})"
