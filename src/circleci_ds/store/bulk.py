"""Statements through the driver: the ones the collector's writes repeat, built once per database.

SQLAlchemy Core compiles an expression and builds its cache key on every call; on the collector's
hot path that cost more than the database's own work. These helpers build the SQL text once per
(table, columns, placeholder style) and hand the rows to the driver (`executemany`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

KEYS_PER_QUERY = 400  # keys per `IN (...)` lookup at most


def insert_rows(conn: Connection, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (column -> value, the first row's columns) through the driver's executemany."""
    if not rows:
        return
    columns = tuple(rows[0])
    values = itemgetter(*columns)
    single = len(columns) == 1
    statement = _insert_sql(table, columns, conn.dialect.paramstyle)
    params = [(values(row),) if single else values(row) for row in rows]
    execute_many(conn, statement, params)


def insert_tuples(
    conn: Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert rows given as tuples in `columns`' order."""
    if rows:
        statement = _insert_sql(table, columns, conn.dialect.paramstyle)
        execute_many(conn, statement, rows)


def delete_by(conn: Connection, table: str, column: str, keys: Iterable[Any]) -> None:
    """Delete the rows whose `column` is one of `keys`: one statement, executed for each key."""
    params = [(key,) for key in keys]
    if params:
        statement = _delete_sql(table, column, conn.dialect.paramstyle)
        execute_many(conn, statement, params)


def select_in(conn: Connection, template: str, keys: Sequence[Any]) -> list[Any]:
    """The rows of `template` (SQL text with `{keys}` where the `IN (...)` list goes), in batches of
    KEYS_PER_QUERY keys; the text for each count of keys is built once."""
    rows: list[Any] = []
    for start in range(0, len(keys), KEYS_PER_QUERY):
        batch = tuple(keys[start : start + KEYS_PER_QUERY])
        statement = _in_sql(template, len(batch), conn.dialect.paramstyle)
        rows += fetch_all(conn, statement, batch)
    return rows


def execute_many(conn: Connection, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """The driver's executemany, in the connection's transaction (driver_cursor)."""
    with driver_cursor(conn, statement) as cursor:
        cursor.executemany(statement, rows)


def fetch_all(conn: Connection, statement: str, params: Sequence[Any]) -> list[Any]:
    """The rows of one query run by the driver, in the connection's transaction (driver_cursor)."""
    with driver_cursor(conn, statement) as cursor:
        cursor.execute(statement, params)
        return list(cursor.fetchall())


@contextmanager
def driver_cursor(conn: Connection, statement: str) -> Iterator[Any]:
    """A cursor of the connection's driver, in its transaction: SQLAlchemy's per-statement work
    (about 10 us, as much as SQLite's own for a small statement) left out. The driver's errors
    surface as SQLAlchemy's (an IntegrityError stays one), without the parameters."""
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except dbapi.Error as exc:
        raise DBAPIError.instance(statement, None, exc, dbapi.Error) from None
    finally:
        cursor.close()


def mark(paramstyle: str) -> str:
    """The driver's placeholder: sqlite3's `?`, psycopg's `%s`."""
    return "?" if paramstyle == "qmark" else "%s"


@lru_cache(maxsize=64)
def _insert_sql(table: str, columns: tuple[str, ...], paramstyle: str) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join([mark(paramstyle)] * len(columns))})"


@lru_cache(maxsize=64)
def _delete_sql(table: str, column: str, paramstyle: str) -> str:
    return f'DELETE FROM {table} WHERE "{column}" = {mark(paramstyle)}'


@lru_cache(maxsize=256)
def _in_sql(template: str, count: int, paramstyle: str) -> str:
    return template.format(keys=", ".join([mark(paramstyle)] * count))
