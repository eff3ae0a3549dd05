"""What every part of the store shares: the engine, its transactions, and the one error type.

Rules:
- Every database failure surfaces as StoreError with one line naming the database (password masked).
- Reads run on one snapshot, so a tree read while it is replaced is never a mix; writes take
  SQLite's write lock up front so its busy timeout applies.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from circleci_ds.store.facts_store import Deriver
from circleci_ds.store.urls import display_url


class StoreError(Exception):
    """The database cannot be used; the message is for the user (never contains a password)."""


class TreeRefused(Exception):
    """A tree the store will not file: one of its ids is filed under another endpoint or pipeline,
    or named twice. That tree fails alone; the message is one plain line naming it."""


class NotLeased(TreeRefused):
    """A tree of an endpoint whose lease its collector lost to another: nothing of it is written."""


def dumps(obj: Any) -> str:
    """Compact JSON text, UTF-8 as it is (the raw objects' columns)."""
    return dumps_bytes(obj).decode()


def dumps_bytes(obj: Any) -> bytes:
    """Compact JSON in UTF-8: orjson (a tenth of the standard library's time, on the collector's hot
    path); what it refuses (integers past 64 bits, keys that are not strings) goes to the latter."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def digest(obj: Any) -> bytes:
    return hashlib.blake2b(dumps_bytes(obj), digest_size=16).digest()


class StoreBase:
    """One database's engine and transactions; the store's parts (trees, endpoints, leases) build on it."""

    def __init__(
        self, engine: Engine, url: str, *, read_only: bool = False, deriver: Deriver | None = None
    ) -> None:
        self.engine = engine
        self.url = display_url(url)
        self.is_sqlite = engine.dialect.name == "sqlite"
        self.read_only = read_only
        self.deriver = deriver  # what derives the facts of written trees (writers need one)

    def needs_deriver(self) -> Deriver:
        if self.deriver is None:
            raise TypeError("this store was opened without a Deriver: it cannot write trees")
        return self.deriver

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection; database failures become StoreError (IntegrityError stays: callers expect it)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except (StoreError, IntegrityError):
            raise
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use the database {self.url}: {db_reason(exc)}") from None

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A read transaction on one snapshot.

        SQLite's deferred BEGIN already gives that; PostgreSQL's default (READ COMMITTED) does not.
        """
        with self.connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def snapshot(self) -> Any:
        """A read transaction on one snapshot (for the metrics' queries)."""
        return self.reading()

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A write transaction; on SQLite it takes the write lock up front so busy_timeout applies."""
        if self.read_only:
            raise StoreError(f"{self.url} is open read-only")  # a reading command never writes
        with self.connect() as conn:
            if self.is_sqlite:
                conn = conn.execution_options(sqlite_begin="BEGIN IMMEDIATE")
            with conn.begin():
                yield conn

    def now(self) -> float:
        """The lease clock (epoch seconds): the database's, so collectors on other hosts agree."""
        if self.is_sqlite:
            return time.time()
        with self.connect() as conn:
            return db_now(conn)


def db_now(conn: Connection) -> float:
    """PostgreSQL's clock, in epoch seconds."""
    return float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())


def db_reason(exc: SQLAlchemyError | sqlite3.Error) -> str:
    """The driver's first line, which names the problem without echoing the URL's password."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    line = str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else exc.__class__.__name__
    return line[:300]
