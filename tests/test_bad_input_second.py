"""The second round of bad input (issue 25), through the real command line in a child process.

A careless user or a hostile file: credentials in `--api-url`, a report written over its own database,
identities files nested deep or large, numbers past their type, a query string in a SQLite URL, and
output cut short by `head`. Each ends with its documented exit status and at most one `error:` line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from circleci_ds.derive.facts import open_store
from circleci_ds.derive.people import People
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.documents.dads import dads_documents
from circleci_ds.inputs.identities import IdentitiesError, load_identities
from collect_helpers import assert_one_line_error, cli_args, collect, run_cli, serving, write_fixture
from hostile_server import Exchange, HostileServer, Mode
from test_bad_input import foreign_sqlite

SLUGS = ["gh/bad/one"]
EXIT_USAGE = 2
PASSWORD = "hunter2-s3cret"


@pytest.fixture(scope="module")
def simulator() -> Iterator[tuple[Simulator, str]]:
    with serving(SimConfig(seed=3, projects=[SimProject(slug, pipelines=10) for slug in SLUGS])) as served:
        yield served


@pytest.fixture
def filled_store(simulator: tuple[Simulator, str], tmp_path: Path) -> Path:
    path = tmp_path / "filled.db"
    asyncio.run(collect(simulator[1], f"sqlite:///{path}", SLUGS))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- credentials in --api-url -------------------------------------------------------------------------
@pytest.mark.parametrize("userinfo", [f"user:{PASSWORD}@", f"{PASSWORD}@", f":{PASSWORD}@"])
def test_credentials_in_the_api_url_are_refused_before_anything_is_stored_or_sent(
    userinfo: str, simulator: tuple[Simulator, str], tmp_path: Path
) -> None:
    sim, url = simulator
    with_credentials = url.replace("http://", f"http://{userinfo}")
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    asked = sim.stats["requests"]
    db = tmp_path / "x.db"
    done = run_cli("collect", str(fixture), "--db", f"sqlite:///{db}", "--api-url", with_credentials)
    line = assert_one_line_error(done, EXIT_USAGE, PASSWORD)
    assert "credentials" in line
    assert not db.exists()
    assert sim.stats["requests"] == asked


# -- an output over an input --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_report_html_over_its_own_database_is_refused(filled_store: Path, suffix: str) -> None:
    target = Path(f"{filled_store}{suffix}")
    existed = target.exists()
    before = sha256(filled_store)
    done = run_cli("report", "--db", f"sqlite:///{filled_store}", "--html", str(target))
    assert_one_line_error(done, EXIT_USAGE)
    assert sha256(filled_store) == before
    assert target.exists() == existed


def test_report_html_over_its_database_through_another_path_is_refused(filled_store: Path) -> None:
    link = filled_store.parent / "link.html"
    link.symlink_to(filled_store)
    before = sha256(filled_store)
    done = run_cli("report", "--db", f"sqlite:///{filled_store}?timeout=5", "--html", str(link))
    assert_one_line_error(done, EXIT_USAGE)
    assert sha256(filled_store) == before


def test_report_html_over_its_identities_file_is_refused(filled_store: Path, tmp_path: Path) -> None:
    people = tmp_path / "people.yaml"
    people.write_text("people:\n- name: a\n  logins: {github: a}\n")
    done = run_cli(
        "report", "--db", f"sqlite:///{filled_store}", "--identities", str(people), "--html", str(people)
    )
    assert_one_line_error(done, EXIT_USAGE)
    assert people.read_text().startswith("people:")


# -- identities files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_identities_json_is_a_bad_file(filled_store: Path, tmp_path: Path, depth: int) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"people": ' + "[" * depth + "]" * depth + "}")
    done = run_cli("report", "--db", f"sqlite:///{filled_store}", "--identities", str(deep))
    line = assert_one_line_error(done, EXIT_USAGE)
    assert "deep.json" in line


def sortinghat_export(people: int) -> dict[str, object]:
    """A SortingHat export of `people` people, each with a GitHub identity and an enrolment."""
    uids = {}
    for i in range(people):
        uid = f"{i:040x}"
        uids[uid] = {
            "uuid": uid,
            "profile": {"name": f"Person {i}", "email": f"p{i}@example.org", "is_bot": False},
            "identities": [{"id": f"id{i}", "source": "github", "username": f"login{i}"}],
            "enrollments": [
                {"organization": "Acme", "start": "1900-01-01T00:00:00", "end": "2100-01-01T00:00:00"}
            ],
        }
    return {"uidentities": uids}


def test_a_large_sortinghat_export_loads_and_a_late_error_still_names_its_line(tmp_path: Path) -> None:
    """JSON is parsed with json alone; the line of an error is found when one is reported."""
    export = sortinghat_export(3_000)
    path = tmp_path / "sh.json"
    path.write_text(json.dumps(export, indent=1))
    identities = load_identities(path)
    assert identities.find("github", "login2999") is not None
    export["uidentities"][f"{2999:040x}"]["identities"].append(  # type: ignore[index]
        {"id": "x", "source": "github", "username": "login5"}
    )
    text = json.dumps(export, indent=1)
    path.write_text(text)
    with pytest.raises(IdentitiesError) as caught:
        load_identities(path)
    line = int(re.search(r"sh\.json:(\d+):", str(caught.value)).group(1))  # type: ignore[union-attr]
    assert '"identities"' in text.splitlines()[line - 1]
    assert line > len(text.splitlines()) - 30


# -- numbers past their type --------------------------------------------------------------------------
@pytest.mark.parametrize("duration", [1.7e308, 10**19 - 1, -5, 1e300])
async def test_absurd_durations_become_null_in_documents_and_the_terminal(
    tmp_path: Path, duration: float
) -> None:
    sim = Simulator(SimConfig(seed=3, projects=[SimProject(SLUGS[0], pipelines=6)]))
    db_url = f"sqlite:///{tmp_path / 'x.db'}"

    def absurd(exchange: Exchange) -> None:
        if exchange.status == 200:
            exchange.data["duration"] = duration

    async with sim.serve() as upstream:
        hostile = HostileServer(upstream=upstream)
        hostile.behave(Mode.TAMPER, "job_details", tamper=absurd)
        async with hostile.serve() as url:
            results, _ = await collect(url, db_url, SLUGS)
    assert results[0].error is None
    store = open_store(db_url, create=False)
    try:
        docs = list(dads_documents(store.iter_trees(), People.load(store)))
    finally:
        store.close()
    assert docs
    for doc in docs:
        for key, value in doc.items():
            if isinstance(value, int):
                assert -(2**63) <= value < 2**63, (key, value)
            if isinstance(value, float):
                assert value == value and abs(value) < 1e15, (key, value)
    done = run_cli("report", "--db", db_url, "--since", "2020-01-01")
    assert done.returncode == 0, done.stderr
    assert not re.search(r"\d{16,}", done.stdout + done.stderr)
    assert "inf" not in done.stdout.lower().replace("info", "")


# -- a query string in a SQLite URL -------------------------------------------------------------------
@pytest.mark.parametrize("query", ["?timeout=5", "?timeout=5&check_same_thread=false"])
@pytest.mark.parametrize("command", ["collect", "report"])
def test_a_query_string_never_lets_a_foreign_file_be_touched(
    tmp_path: Path, simulator: tuple[Simulator, str], query: str, command: str
) -> None:
    path = foreign_sqlite(tmp_path / "other-app.db", wal=False)
    before = sha256(path)
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    args = {
        "collect": ["collect", str(fixture), "--api-url", simulator[1]],
        "report": ["report"],
    }[command]
    done = run_cli(*args, "--db", f"sqlite:///{path}{query}")
    line = assert_one_line_error(done, EXIT_USAGE)
    assert "another application's tables" in line
    assert sha256(path) == before
    assert not Path(f"{path}-wal").exists()


# -- output cut short -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args", [["report"], ["--help"], ["report", "--help"], ["status"], ["export"]], ids=" ".join
)
def test_output_cut_short_by_head_exits_0_silently(filled_store: Path, args: list[str]) -> None:
    db = ["--db", f"sqlite:///{filled_store}"] if args[-1] != "--help" else []
    command = " ".join([*cli_args(*args, *db)]) + " | true; echo ${PIPESTATUS[0]}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=False)
    assert done.stdout.strip() == "0", done.stderr
    assert done.stderr.strip() == "", done.stderr
