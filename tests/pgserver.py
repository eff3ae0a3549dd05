"""A throw-away PostgreSQL server on loopback, for the tests and the benchmarks.

initdb refuses to run as root, so as root the server runs as an unprivileged system user
(`postgres` when it exists, else `nobody`) that owns the temporary directory.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psycopg

USER = "circleci_ds_test"  # superuser, trust authentication
PASSWORD_USER = "circleci_ds_pw"  # must log in with PASSWORD (scram), for credential tests
PASSWORD = "pw-Secret-7f3a"
_DEB_ROOT = Path("/usr/lib/postgresql")
_NEEDED = ("initdb", "pg_ctl", "postgres")


class PgUnavailable(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    """The directory of initdb/pg_ctl/postgres: $PG_BINDIR, PATH, then the newest Debian version."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    if _DEB_ROOT.is_dir():
        versions = sorted(_DEB_ROOT.glob("*/bin"), key=_version_key, reverse=True)
        candidates += versions
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _NEEDED):
            return bindir
    raise PgUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
        "install Debian's postgresql package or set PG_BINDIR"
    )


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", path.parent.name)) or (0,)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _RunAs:
    """Who runs the server: ourselves, or an unprivileged user when we are root."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def pick(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        return cls(65534, 65534)

    def run(self, args: list[str], cwd: Path, log: Path) -> None:
        """Run a server tool with its output in `log`; raise with the log's tail on failure."""
        with log.open("ab") as out:
            done = subprocess.run(
                args,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self.uid,
                group=self.gid,
                extra_groups=[] if self.uid is not None else None,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(cwd)},
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}):\n{tail}")

    def own(self, path: Path) -> None:
        if self.uid is not None:
            os.chown(path, self.uid, self.gid if self.gid is not None else -1)


@dataclass
class PgServer:
    """`with PgServer() as pg: url = pg.create_database()`; everything goes away on exit."""

    bindir: Path = field(default_factory=find_bindir)
    port: int = 0
    root: Path = field(init=False)
    _runas: _RunAs = field(init=False, default_factory=_RunAs.pick)
    _names: Iterator[int] = field(init=False, default_factory=itertools.count)
    _running: bool = field(init=False, default=False)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"  # written by the server itself

    @property
    def tool_log(self) -> Path:
        return self.root / "tools.log"  # initdb and pg_ctl output, written by us

    def start(self) -> None:
        # /tmp rather than $TMPDIR: the unprivileged user must reach it, and socket paths are short.
        base = "/tmp" if self._runas.uid is not None and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="circleci-ds-pg-", dir=base))
        self._runas.own(self.root)
        try:
            self._initdb()
            self._start_server()
            self._create_password_user()
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        self._runas.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
             "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"],
            cwd=self.root,
            log=self.tool_log,
        )  # fmt: skip
        settings = [
            "listen_addresses = '127.0.0.1'",
            f"unix_socket_directories = '{self.root}'",
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 200",
        ]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(settings) + "\n")
        hba = self.data / "pg_hba.conf"
        rules = f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"  # first match wins
        hba.write_text(rules + hba.read_text())

    def _start_server(self) -> None:
        """Start on a free port; retry on another port if one was taken meanwhile."""
        for attempt in range(3):
            self.port = self.port or free_port()
            try:
                self._runas.run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                     "-o", f"-p {self.port}", "-w", "-t", "60", "start"],
                    cwd=self.root,
                    log=self.tool_log,
                )  # fmt: skip
                self._running = True
                return
            except RuntimeError as exc:
                if attempt == 2:
                    server_log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                    raise RuntimeError(f"{exc}\nserver log:\n{server_log}") from None
                self.port = 0

    def _create_password_user(self) -> None:
        with self.connect() as conn:
            conn.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")

    def stop(self) -> None:
        if self._running:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._runas.run(
                    [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
                    cwd=self.root,
                    log=self.tool_log,
                )
            self._running = False
        if getattr(self, "root", None) is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres", user: str = USER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password is not None else user
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, dbname="postgres", autocommit=True
        )

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL (user: the trusted superuser)."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            conn.execute(f'GRANT ALL ON DATABASE "{name}" TO {PASSWORD_USER}')
        return self.url(name)
