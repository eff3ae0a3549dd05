"""Bad input and a hostile environment, through the real command line in a child process.

Every case ends with its documented exit status and one `error:` line on stderr: no traceback,
no password, no token. Beyond the exit status, the cases check what must not happen: a foreign
database is left byte for byte as it was, a previous report survives a failed write, a full disk
loses nothing already stored, and text from outside reaches the terminal as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store.urls import engine_url
from collect_helpers import (
    assert_matches_truth,
    assert_one_line_error,
    cli_args,
    collect,
    error_lines,
    exported,
    run_cli,
    serving,
    truth,
    write_fixture,
)
from pgserver import PASSWORD, PASSWORD_USER, PgServer, free_port
from requirements import unavailable

SLUGS = ["gh/bad/one", "gh/bad/two"]
EXIT_FAILED, EXIT_USAGE = 1, 2
SECRET_TOKEN = "tok-9d1c-secret"


# -- shared pieces ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[Simulator, str]]:
    with serving(SimConfig(seed=3, projects=[SimProject(slug, pipelines=30) for slug in SLUGS])) as served:
        yield served


@pytest.fixture(scope="module")
def collected_once(simulator: tuple[Simulator, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("collected") / "filled.db"
    asyncio.run(collect(simulator[1], f"sqlite:///{path}", SLUGS))
    return path


@pytest.fixture
def filled_store(collected_once: Path, tmp_path: Path) -> Path:
    """A SQLite store holding the simulator's two projects: a test's own copy, which it may damage."""
    path = tmp_path / "filled.db"
    with (
        contextlib.closing(sqlite3.connect(collected_once)) as src,
        contextlib.closing(sqlite3.connect(path)) as dst,
    ):
        src.backup(dst)
    return path


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs mounted at `where` (needs root); skipped where mounting is not allowed."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt_middle(path: Path) -> None:
    """Overwrite the middle third of a database file with garbage, as a bad disk or copy would."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(size // 3)
        handle.write(bytes((i * 7 + 13) % 256 for i in range(size // 3)))


# -- one line and the documented status ---------------------------------------------------------------------
@dataclass
class Ctx:
    tmp: Path
    api_url: str
    filled: Callable[[], Path]

    def fixture(self, slugs: list[str] = SLUGS, token: str | None = None) -> Path:
        return write_fixture(self.tmp / "fixture.yaml", slugs, token=token)

    def db(self) -> str:
        return f"sqlite:///{self.tmp / 'new.db'}"


Case = Callable[[Ctx], list[str]]


def _fixture_text(ctx: Ctx, body: str) -> list[str]:
    path = ctx.tmp / "fixture.yaml"
    path.write_text(body)
    return ["collect", str(path), "--db", ctx.db(), "--api-url", ctx.api_url]


def _alias_bomb(ctx: Ctx) -> list[str]:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["native: {slug: x}", "data_sources: *a9"]
    return _fixture_text(ctx, "\n".join(lines) + "\n")


def _oversized(ctx: Ctx) -> list[str]:
    return _fixture_text(ctx, "native: {slug: x}\n" + "# padding\n" * 120_000)


def _bad_slug(slug: str) -> Case:
    def case(ctx: Ctx) -> list[str]:
        return ["collect", str(ctx.fixture(["gh/bad/one", slug])), "--db", ctx.db(), "--api-url", ctx.api_url]

    return case


def _html_to(target: str) -> Case:
    def case(ctx: Ctx) -> list[str]:
        path = target.replace("TMP", str(ctx.tmp))
        if path.endswith("a-directory"):
            Path(path).mkdir()
        return ["report", "--db", f"sqlite:///{ctx.filled()}", "--html", path]

    return case


def _corrupted(command: str) -> Case:
    def case(ctx: Ctx) -> list[str]:
        path = ctx.filled()
        corrupt_middle(path)
        if command == "collect":
            return ["collect", str(ctx.fixture()), "--db", f"sqlite:///{path}", "--api-url", ctx.api_url]
        return [command, "--db", f"sqlite:///{path}"]

    return case


def _not_a_database(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "notes.db"
    path.write_text("these are my notes, not a database\n" * 50)
    return ["status", "--db", f"sqlite:///{path}"]


CASES: dict[str, tuple[Case, int, str]] = {
    "alias bomb": (_alias_bomb, EXIT_USAGE, r"aliases expand to more than"),
    "oversized fixture": (_oversized, EXIT_USAGE, r"larger than 1024 KiB"),
    "recursive alias": (
        lambda ctx: _fixture_text(ctx, "native: &n {slug: x, self: *n}\ndata_sources: []\n"),
        EXIT_USAGE,
        r"fixture.yaml:1: invalid YAML: an alias refers to itself",
    ),
    "nested too deeply": (lambda ctx: _fixture_text(ctx, "[" * 20_000), EXIT_USAGE, "nested too deeply"),
    "slug with ..": (
        _bad_slug("gh/../pipeline"),
        EXIT_USAGE,
        r"fixture.yaml:9: .*a segment cannot be '\.\.'",
    ),
    "slug with .": (_bad_slug("gh/acme/."), EXIT_USAGE, r"fixture.yaml:9: .*a segment cannot be '\.'"),
    "slug with an empty segment": (
        _bad_slug("gh//repo"),
        EXIT_USAGE,
        r"fixture.yaml:9: .*not a project slug",
    ),
    "slug with a percent-encoded dot": (_bad_slug("gh/%2e%2e/x"), EXIT_USAGE, r"fixture.yaml:9: .*'%2e%2e'"),
    "slug with more segments": (_bad_slug("gh/a/b/c"), EXIT_USAGE, r"fixture.yaml:9: .*not a project slug"),
    "slug with a space": (_bad_slug("'gh/a b/c'"), EXIT_USAGE, r"fixture.yaml:9: .*'a b'"),
    "slug with a control character": (_bad_slug('"gh/a\\eb/c"'), EXIT_USAGE, r"fixture.yaml:9: .*\\x1b"),
    "token with a newline in the fixture": (
        lambda ctx: _fixture_text(ctx, ctx.fixture(token=f'"{SECRET_TOKEN}\\nX-Evil: 1"').read_text()),
        EXIT_USAGE,
        r"fixture.yaml:12: Circle-Token holds a newline, another control",
    ),
    "unsupported scheme": (
        lambda ctx: ["status", "--db", f"mysql://u:{PASSWORD}@localhost/db"],
        EXIT_USAGE,
        r"unsupported database scheme 'mysql' in mysql://u:\*\*\*@localhost/db",
    ),
    "unsupported scheme for collect": (
        lambda ctx: ["collect", str(ctx.fixture()), "--db", f"mysql+pymysql://u:{PASSWORD}@h/db"],
        EXIT_USAGE,
        r"unsupported database scheme 'mysql'",
    ),
    "password in a query parameter": (
        lambda ctx: ["status", "--db", f"postgresql://u@127.0.0.1:{free_port()}/x?password={PASSWORD}"],
        EXIT_USAGE,
        r"cannot use the database postgresql://u@127.0.0.1:\d+/x\?password=\*\*\*: ",
    ),
    "every secret query parameter": (
        lambda ctx: [
            "status",
            "--db",
            f"postgresql://u:{PASSWORD}@127.0.0.1:{free_port()}/x?sslpassword={PASSWORD}1&passfile={PASSWORD}2"
            f"&api_token={PASSWORD}3&client_secret={PASSWORD}4&application_name=me",
        ],
        EXIT_USAGE,
        r"u:\*\*\*@.*sslpassword=\*\*\*&passfile=\*\*\*&api_token=\*\*\*&client_secret=\*\*\*&application_name=me",
    ),
    "markup in a fixture path": (
        lambda ctx: ["collect", str(ctx.tmp / "[/x][bold]f.yaml"), "--db", ctx.db()],
        EXIT_USAGE,
        r"\[/x\]\[bold\]f\.yaml: no such fixture file",
    ),
    "markup in an option value": (
        lambda ctx: ["collect", str(ctx.fixture()), "--db", ctx.db(), "--from-date", "[/x]\x1b[2J"],
        EXIT_USAGE,
        r"not a date: '\[/x\]\\x1b\[2J'",
    ),
    "markup in a database path": (
        lambda ctx: ["status", "--db", f"sqlite:///{ctx.tmp}/[/x]/a.db"],
        EXIT_USAGE,
        r"no such database: .*/\[/x\]/a\.db",
    ),
    "html to a missing directory": (_html_to("TMP/missing/report.html"), EXIT_USAGE, r"no such directory"),
    "html to a directory": (_html_to("TMP/a-directory"), EXIT_USAGE, r"it is a directory"),
    "html to /dev/full": (_html_to("/dev/full"), EXIT_USAGE, r"/dev/full: it is not a regular file"),
    "sqlite corrupted mid-file, export": (
        _corrupted("export"),
        EXIT_USAGE,
        "database disk image is malformed",
    ),
    "sqlite corrupted mid-file, status": (
        _corrupted("status"),
        EXIT_USAGE,
        "database disk image is malformed",
    ),
    "sqlite corrupted mid-file, report": (
        _corrupted("report"),
        EXIT_USAGE,
        "database disk image is malformed",
    ),
    "sqlite corrupted mid-file, collect": (
        _corrupted("collect"),
        EXIT_USAGE,
        "database disk image is malformed",
    ),
    "not a database file": (_not_a_database, EXIT_USAGE, "file is not a database"),
    "database path is a directory": (
        lambda ctx: ["status", "--db", f"sqlite:///{ctx.tmp}"],
        EXIT_USAGE,
        "not a database file",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_with_one_clear_line(
    case: str, tmp_path: Path, simulator: tuple[Simulator, str], request: pytest.FixtureRequest
) -> None:
    make, code, pattern = CASES[case]
    ctx = Ctx(tmp_path, simulator[1], lambda: request.getfixturevalue("filled_store"))
    done = run_cli(*make(ctx), env={"CIRCLE_TOKEN": SECRET_TOKEN}, timeout=120)
    line = assert_one_line_error(done, code, PASSWORD, SECRET_TOKEN, logs_allowed=True)
    assert re.search(pattern, line), line
    assert "\x1b" not in done.stderr


@pytest.mark.parametrize(
    "value", [f"{SECRET_TOKEN}\n", f"{SECRET_TOKEN}\r\nX: y", f"a\tb{SECRET_TOKEN}", "tök"]
)
def test_a_token_that_cannot_be_a_header_is_a_fixture_error(
    value: str, tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    db = f"sqlite:///{tmp_path / 'x.db'}"
    done = run_cli(
        "collect", str(fixture), "--db", db, "--api-url", simulator[1], env={"CIRCLE_TOKEN": value}
    )
    line = assert_one_line_error(done, EXIT_USAGE, SECRET_TOKEN)
    assert "CIRCLE_TOKEN holds a newline, another control" in line
    assert not (tmp_path / "x.db").exists()
    assert "collecting" not in done.stderr  # refused before any request


# -- other applications' databases ------------------------------------------------------------------------
def foreign_sqlite(path: Path, *, wal: bool) -> Path:
    """Another application's database, with a `schema_version` table of its own."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        if wal:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO schema_version VALUES (7)"))
        conn.execute(text("CREATE TABLE users (name TEXT)"))
        conn.execute(text("INSERT INTO users VALUES ('ada')"))
    engine.dispose()
    return path


def commands(ctx_fixture: Path, db: str, api_url: str) -> dict[str, list[str]]:
    return {
        "collect": ["collect", str(ctx_fixture), "--db", db, "--api-url", api_url],
        "export": ["export", "--db", db],
        "export enriched": ["export", "--db", db, "--kind", "enriched"],
        "status": ["status", "--db", db],
        "report": ["report", "--db", db],
    }


@pytest.mark.parametrize("wal", [False, True], ids=["rollback-journal", "wal"])
@pytest.mark.parametrize("command", ["collect", "export", "export enriched", "status", "report"])
def test_a_foreign_sqlite_file_is_refused_and_left_byte_for_byte(
    command: str, wal: bool, tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    path = foreign_sqlite(tmp_path / "other-app.db", wal=wal)
    before = sha256(path)
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    done = run_cli(*commands(fixture, f"sqlite:///{path}", simulator[1])[command])
    line = assert_one_line_error(done, EXIT_USAGE)
    assert "is not a circleci-ds store: it holds another application's tables" in line
    assert sha256(path) == before


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["collect", "export", "status", "report"])
def test_a_foreign_postgresql_database_is_refused_and_left_unchanged(
    command: str, pg_url: str, tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    engine = create_engine(engine_url(pg_url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO schema_version VALUES (7)"))
        conn.execute(text("CREATE TABLE pipelines (name TEXT)"))

    def snapshot() -> tuple[list[tuple[str, ...]], list[tuple[int]]]:
        with engine.connect() as conn:
            tables = conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema='public' ORDER BY 1"
                )
            )
            return [tuple(r) for r in tables], [
                tuple(r) for r in conn.execute(text("SELECT * FROM schema_version"))
            ]

    before = snapshot()
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    try:
        done = run_cli(*commands(fixture, pg_url, simulator[1])[command])
        assert_one_line_error(done, EXIT_USAGE)
        assert snapshot() == before
    finally:
        engine.dispose()


def test_readers_never_write_to_a_store(filled_store: Path) -> None:
    """export, status and report leave the store's file as it was: no migration, no journal change."""
    before = sha256(filled_store)
    for args in (["export"], ["export", "--kind", "enriched"], ["status"], ["report", "--format", "json"]):
        done = run_cli(*args, "--db", f"sqlite:///{filled_store}")
        assert done.returncode == 0, done.stderr
    assert sha256(filled_store) == before


# -- files: atomic, and what a failure leaves --------------------------------------------------------------
def test_a_full_disk_keeps_the_previous_report(tmp_path: Path, filled_store: Path) -> None:
    with tmpfs(tmp_path / "small", "64k") as small:
        report = small / "report.html"
        report.write_text("<html>previous report</html>\n")
        before = report.read_bytes()
        done = run_cli("report", "--db", f"sqlite:///{filled_store}", "--html", str(report))
        line = assert_one_line_error(done, EXIT_USAGE, logs_allowed=True)
        assert f"cannot write {report}: No space left on device" in line
        assert report.read_bytes() == before
        assert sorted(p.name for p in small.iterdir()) == ["report.html"], "the temporary file is gone"


def test_a_report_is_replaced_whole(tmp_path: Path, filled_store: Path) -> None:
    report = tmp_path / "report.html"
    report.write_text("old")
    report.chmod(0o640)
    done = run_cli("report", "--db", f"sqlite:///{filled_store}", "--html", str(report))
    assert done.returncode == 0, done.stderr
    assert report.read_text().startswith("<!DOCTYPE html>")
    assert report.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_export_to_a_full_device_exits_2(filled_store: Path) -> None:
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            cli_args("export", "--db", f"sqlite:///{filled_store}"),
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert error_lines(done.stderr) == ["error: cannot write the output: No space left on device"]
    assert "Traceback" not in done.stderr


# -- a full disk and a read-only file while collecting ------------------------------------------------------
def test_a_full_disk_during_collect_exits_2_and_loses_nothing(
    tmp_path: Path, simulator: tuple[Simulator, str]
) -> None:
    sim, api_url = simulator
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    with tmpfs(tmp_path / "small", "1m") as small:  # the whole history takes about 2.3 MB
        db = f"sqlite:///{small / 'store.db'}"
        done = run_cli("collect", str(fixture), "--db", db, "--api-url", api_url)
        line = assert_one_line_error(done, EXIT_USAGE, logs_allowed=True)
        assert "database or disk is full" in line
        stored = exported(db)
        assert 0 < sum(len(v) for v in stored.values()) < sum(len(v) for v in truth(sim, SLUGS).values())
        want = truth(sim, SLUGS)
        for slug, trees in stored.items():
            for pid, tree in trees.items():
                assert tree == want[slug][pid], "a stored tree is whole, never half written"
        remount(small, "size=32m")
        again = run_cli("collect", str(fixture), "--db", db, "--api-url", api_url)
        assert again.returncode == 0, again.stderr[-3000:]
        assert_matches_truth(db, sim, SLUGS)


def test_a_read_only_database_exits_2_and_stays_readable(
    tmp_path: Path, simulator: tuple[Simulator, str], filled_store: Path
) -> None:
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    with tmpfs(tmp_path / "ro", "8m") as ro:
        path = ro / "store.db"
        path.write_bytes(filled_store.read_bytes())
        remount(ro, "ro")
        before = sha256(path)
        done = run_cli("collect", str(fixture), "--db", f"sqlite:///{path}", "--api-url", simulator[1])
        line = assert_one_line_error(done, EXIT_USAGE, logs_allowed=True)
        assert f"cannot write to the database {path}: the file or its directory is read-only" in line
        for reader in (["status"], ["export"]):
            assert run_cli(*reader, "--db", f"sqlite:///{path}").returncode in (0, EXIT_USAGE)
        assert sha256(path) == before


# -- text from outside is shown as text ------------------------------------------------------------------
HOSTILE = "\x1b]0;pwned\x07\x1b[2J[red]x[/red][/]\u202eevil\x9b"


def test_status_shows_hostile_strings_as_text(filled_store: Path) -> None:
    with contextlib.closing(open_store(f"sqlite:///{filled_store}")) as store:
        store.record_finish(SLUGS[0], finished=1.0, error=f"{SLUGS[0]}: {HOSTILE}", checkpoint=None)
        store.try_lease(SLUGS[1], f"host{HOSTILE}:1:abc:def", 600)
    done = run_cli("status", "--db", f"sqlite:///{filled_store}")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "[red]x[/red][/]" in out
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in out


def test_report_shows_hostile_names_as_text(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'names.db'}"
    with serving(SimConfig(seed=4, projects=[SimProject("gh/bad/names", pipelines=10)])) as (_, url):
        asyncio.run(collect(url, db, ["gh/bad/names"]))
    engine = create_engine(engine_url(db))
    with engine.begin() as conn:  # a workflow name as a hostile server could send it
        conn.execute(text("UPDATE workflows SET data = json_set(data, '$.name', :name)"), {"name": HOSTILE})
    engine.dispose()
    done = run_cli("report", "--db", db, "--branch", "*")
    assert done.returncode == 0, done.stderr
    assert "[red]x[/red][/]" in done.stdout
    for char in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert char not in done.stdout


@pytest.mark.postgres
def test_status_title_never_shows_the_password(pg_server: PgServer, filled_store: Path, pg_url: str) -> None:
    name = pg_url.rsplit("/", 1)[1]
    with contextlib.closing(open_store(pg_url)) as store:
        store.ensure_endpoint(SLUGS[0], "acme", "o")
    engine = create_engine(engine_url(pg_url))
    with engine.begin() as conn:
        conn.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {PASSWORD_USER}"))
    engine.dispose()
    for url in (
        pg_server.url(name, PASSWORD_USER, PASSWORD),
        f"postgresql://{PASSWORD_USER}@127.0.0.1:{pg_server.port}/{name}?password={PASSWORD}",
    ):
        done = run_cli("status", "--db", url)
        assert done.returncode == 0, done.stderr
        assert "circleci-ds store postgresql://" in done.stdout and "***" in done.stdout
        assert PASSWORD not in done.stdout + done.stderr
