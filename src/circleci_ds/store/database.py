"""Opening a store and keeping its schema current; the Store joins its parts (trees, endpoints, leases).

Rules:
- Opening never writes to a database that is not ours (see schema.py's ownership rules); an
  existing SQLite file is looked at through a read-only connection before anything else.
- Reading commands (`create=False`) open read-only: SQLite with `mode=ro`, PostgreSQL with read-only
  transactions; they never migrate nor change the journal mode, and refuse a store of another version.
- Every database failure surfaces as StoreError with one line naming the database (password masked).
- A migration step that adds a table filled from stored trees (facts, people_refs) is followed by its
  backfill, with the store's Deriver, in the same transaction.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, insert, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from circleci_ds.store import schema as s
from circleci_ds.store.backfill import BACKFILLS, has_pipelines
from circleci_ds.store.base import StoreError, db_reason
from circleci_ds.store.endpoints import Endpoints
from circleci_ds.store.facts_store import Deriver
from circleci_ds.store.leases import Leases
from circleci_ds.store.trees import Trees
from circleci_ds.store.urls import UnsupportedURL, display_url, engine_url

DEFAULT_DB_URL = "sqlite:///circleci-ds.db"


class Store(Trees, Endpoints, Leases):
    """One database. Methods are synchronous; the collector calls them from one worker thread."""

    @classmethod
    def open(cls, url: str = DEFAULT_DB_URL, *, create: bool = True, deriver: Deriver | None = None) -> Store:
        """Writers (`create`): create or upgrade a store we own. Readers: open read-only.

        `deriver` derives the facts of the trees written (and of those stored before an upgrade that
        adds facts tables). StoreError on any problem; a database that is not ours is left untouched.
        """
        shown = display_url(url)
        try:
            target = _Target.parse(url)
            if target.sqlite_path is not None:
                target.check_sqlite_file(write=create)
            if create and target.sqlite_path is not None and target.sqlite_has_content():
                # Look before the writable engine switches the file to WAL: a foreign file stays as it is.
                _check_owned(_make_engine(target, read_only=True), url)
            store = cls(
                _make_engine(target, read_only=not create), url, read_only=not create, deriver=deriver
            )
            try:
                store.migrate() if create else store.check_readable()
            except BaseException:
                store.close()
                raise
        except (StoreError, UnsupportedURL) as exc:
            raise StoreError(str(exc)) from None
        except (ArgumentError, NoSuchModuleError, ValueError):
            raise StoreError(f"not a usable database URL: {shown}") from None
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StoreError(f"cannot use the database {shown}: {db_reason(exc)}") from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create the schema in an empty database or upgrade ours; refuse anything else."""
        with self.writing() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(7422319)"))  # one migrator at a time
            owner = s.ownership(conn)
            _refuse_foreign(self.url, owner)
            version = 0 if owner is s.Ownership.EMPTY else s.current_version(conn)
            self._refuse_newer(version)
            for step in s.MIGRATIONS[version:]:
                step(conn)
                backfill = BACKFILLS.get(step.__name__)
                if backfill is not None and has_pipelines(conn):
                    backfill(conn, self.needs_deriver())
            if owner is s.Ownership.UNMARKED and s.ownership(conn) is not s.Ownership.OURS:
                s.metadata.create_all(conn, tables=[s.meta])  # marker step already behind it
                s.mark_owned(conn)
            if owner is s.Ownership.EMPTY:
                conn.execute(insert(s.schema_version).values(version=s.SCHEMA_VERSION))
            elif version < s.SCHEMA_VERSION:
                conn.execute(update(s.schema_version).values(version=s.SCHEMA_VERSION))

    def check_readable(self) -> None:
        """A reader's check: our store, at this release's version; nothing is written."""
        with self.reading() as conn:
            owner = s.ownership(conn)
            if owner is s.Ownership.EMPTY:
                raise StoreError(f"{self.url} is not a circleci-ds store (run `circleci-ds collect` first)")
            _refuse_foreign(self.url, owner)
            version = s.current_version(conn)
        self._refuse_newer(version)
        if version < s.SCHEMA_VERSION or owner is s.Ownership.UNMARKED:
            raise StoreError(
                f"{self.url} is a circleci-ds store of schema version {version}; this release reads "
                f"version {s.SCHEMA_VERSION}: run `circleci-ds collect` once to upgrade it"
            )

    def _refuse_newer(self, version: int) -> None:
        if version > s.SCHEMA_VERSION:
            raise StoreError(
                f"{self.url} has schema version {version}, newer than this circleci-ds supports "
                f"({s.SCHEMA_VERSION}); upgrade circleci-ds"
            )

    def schema_version(self) -> int:
        with self.connect() as conn:
            return s.current_version(conn)


def database_files(url: str) -> list[Path]:
    """The files a SQLite URL's database lives in (itself, -wal, -shm, -journal); none for PostgreSQL,
    memory or a URL that cannot be read (opening it reports that)."""
    try:
        path = _Target.parse(url).sqlite_path
    except (UnsupportedURL, ArgumentError, ValueError):
        return []
    if path is None:
        return []
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


@dataclass(frozen=True)
class _Target:
    """A supported database URL, as SQLAlchemy takes it, and the SQLite file it names, if any."""

    url: str
    sqlite_path: Path | None  # None: PostgreSQL, or SQLite in memory / as a URI

    @classmethod
    def parse(cls, url: str) -> _Target:
        sa_url = engine_url(url)
        parsed = make_url(sa_url)
        path = parsed.database if parsed.get_backend_name() == "sqlite" else None
        # A query string (`?timeout=5`) still names a file, which must be looked at before it is
        # written to; only `?uri=true` makes the database a URI this check cannot follow.
        as_uri = str(parsed.query.get("uri", "")).lower() in ("1", "true", "yes", "on")
        usable = bool(path) and path != ":memory:" and not str(path).startswith("file:") and not as_uri
        return cls(sa_url, Path(path) if usable and path else None)

    def check_sqlite_file(self, *, write: bool) -> None:
        """Readers must not leave an empty SQLite file behind for a mistyped path; writers need to
        write the file and, for its journal, the directory."""
        path = self.sqlite_path
        assert path is not None
        if path.exists() and not path.is_file():
            raise StoreError(f"not a database file: {path}")
        if not write and not path.exists():
            raise StoreError(f"no such database: {path} (run `circleci-ds collect` first)")
        if not path.parent.is_dir():
            raise StoreError(f"no such directory for the database: {path.parent}")
        if write and not all(os.access(p, os.W_OK) for p in (path, path.parent) if p.exists()):
            raise StoreError(f"cannot write to the database {path}: the file or its directory is read-only")

    def sqlite_has_content(self) -> bool:
        path = self.sqlite_path
        return path is not None and path.exists() and path.stat().st_size > 0


def _check_owned(engine: Engine, url: str) -> None:
    """Refuse a foreign database through a read-only look, before anything can write to it."""
    try:
        with engine.connect() as conn, conn.begin():
            owner = s.ownership(conn)
    finally:
        engine.dispose()
    _refuse_foreign(display_url(url), owner)


def _refuse_foreign(shown_url: str, owner: s.Ownership) -> None:
    if owner is s.Ownership.FOREIGN:
        raise StoreError(
            f"{shown_url} is not a circleci-ds store: it holds another application's tables "
            "(left untouched; point --db at an empty or circleci-ds database)"
        )


def _make_engine(target: _Target, *, read_only: bool = False) -> Engine:
    if target.url.startswith("sqlite"):
        if read_only and target.sqlite_path is not None:
            engine = create_engine("sqlite://", creator=_read_only_sqlite(target.sqlite_path))
        else:
            engine = create_engine(target.url, connect_args={"check_same_thread": False, "timeout": 60})
        event.listen(engine, "connect", _sqlite_reader_connect if read_only else _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    args: dict[str, Any] = {"connect_timeout": 10}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    return create_engine(target.url, pool_pre_ping=True, connect_args=args)


def _read_only_sqlite(path: Path) -> Any:
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=60)

    return connect


def _sqlite_reader_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver; transactions are begun explicitly below (SQLAlchemy's recipe).
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    _enable_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    # 16 MiB of page cache (SQLite's default: 2 MiB): the test-result indexes' pages stay in memory
    # while a collection writes them, which takes a third off each result's insert.
    cursor.execute("PRAGMA cache_size=-16384")
    cursor.close()


def _enable_wal(cursor: Any, patience: float = 60.0) -> None:
    """Switch to WAL; retried, as SQLite answers "locked" at once (no busy wait) while another
    connection opens a new database, which collectors starting together all do."""
    deadline = time.monotonic() + patience
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))
