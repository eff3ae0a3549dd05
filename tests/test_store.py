"""The store on SQLite and PostgreSQL: schema, trees, checkpoints, leases, status and errors."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from circleci_ds.derive.facts import open_store
from circleci_ds.store import SCHEMA_VERSION, Store, StoreError, base
from circleci_ds.store import database as db
from circleci_ds.store import schema as s
from circleci_ds.store import trees as stored_trees
from circleci_ds.store.urls import engine_url
from pgserver import PASSWORD, PASSWORD_USER, PgServer, free_port

EP = "gh/acme/api"


# -- helpers --------------------------------------------------------------------------------------
@contextmanager
def opened(url: str, *, create: bool = True) -> Iterator[Store]:
    store = open_store(url, create=create)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def raw_engine(url: str) -> Iterator[Engine]:
    """A plain engine, to set up or inspect a database behind the store's back."""
    engine = create_engine(engine_url(url))
    try:
        yield engine
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    with raw_engine(url) as engine, engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def stored_version(url: str) -> int:
    with raw_engine(url) as engine, engine.connect() as conn:
        return int(conn.execute(select(s.schema_version.c.version)).scalar_one())


def ts(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_793_000_000 + second)) + ".000Z"


def make_tree(pid: str, number: int, *, workflows: int = 2, jobs: int = 2, tag: str = "") -> dict[str, Any]:
    """A pipeline tree as the collector stores it: pipeline + workflows[] + jobs[] + details."""
    return {
        "id": pid,
        "number": number,
        "state": "created",
        "created_at": ts(number * 100),
        "updated_at": ts(number * 100 + 1),
        "vcs": {"branch": "main", "note": tag or "ünïcode ✓"},
        "workflows": [
            {
                "id": f"{pid}-w{w}",
                "name": f"build-{w}{tag}",
                "status": "success",
                "created_at": ts(number * 100 + 2),
                "stopped_at": ts(number * 100 + 50 + w),
                "jobs": [
                    {
                        "id": f"{pid}-w{w}-j{j}",
                        "name": f"job-{j}",
                        "type": "build" if j else "approval",
                        "job_number": number * 10 + j if j else None,
                        "status": "success",
                        "started_at": ts(number * 100 + 3),
                        "stopped_at": ts(number * 100 + 40),
                        "details": {"queued_at": ts(number * 100 + 3), "executor": {"type": "docker"}}
                        if j
                        else None,
                    }
                    for j in range(jobs)
                ],
            }
            for w in range(workflows)
        ],
    }


def save(store: Store, tree: dict[str, Any], endpoint: str = EP, *, final: bool = True) -> None:
    store.save_tree(endpoint, tree, fetched_at=1_793_100_000.0, is_final=final)


def save_as_released(engine: Engine, tree: dict[str, Any]) -> None:
    """A tree written as the releases before job numbers wrote it (no jobs.job_number column)."""
    rows = stored_trees.tree_rows(EP, tree, fetched_at=1_793_100_000.0, is_final=True)
    with engine.begin() as conn:
        conn.execute(insert(s.pipelines).values(**rows.pipeline))
        conn.execute(insert(s.workflows), rows.workflows)
        conn.execute(insert(s.jobs), [{k: v for k, v in r.items() if k != "job_number"} for r in rows.jobs])


def count_rows(url: str, table: str) -> int:
    with raw_engine(url) as engine, engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(s.metadata.tables[table])).scalar_one())


# -- schema and migrations ----------------------------------------------------------------------
def test_creates_current_schema_on_an_empty_database(db_url: str) -> None:
    with opened(db_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
    assert {"schema_version", "endpoints", "pipelines", "workflows", "jobs", "leases"} <= table_names(db_url)
    with opened(db_url) as store:  # opening again changes nothing
        assert store.schema_version() == SCHEMA_VERSION
    assert count_rows(db_url, "schema_version") == 1


def test_upgrades_a_v1_store_in_place_and_keeps_its_data(db_url: str) -> None:
    tree = make_tree("p-1", 1)
    with raw_engine(db_url) as engine:
        with engine.begin() as conn:
            for step in s.MIGRATIONS[:1]:
                step(conn)
            conn.execute(insert(s.schema_version).values(version=1))
        v1 = Store(engine, db_url)  # a store of the first release: no migration run
        v1.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        save_as_released(engine, tree)
        v1.record_finish(EP, finished=10.0, error=None, checkpoint=5.0)
    assert "leases" not in table_names(db_url) and "workflow_runs" not in table_names(db_url)

    with opened(db_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.load_tree("p-1") == tree
        assert store.checkpoint(EP) == 5.0
        assert store.job_numbers(EP) == (None, 11)  # job numbers filled in from the stored jobs
        assert store.try_lease(EP, "me", 30)
    assert "leases" in table_names(db_url)
    assert stored_version(db_url) == SCHEMA_VERSION
    assert count_rows(db_url, "schema_version") == 1
    # the facts of the trees stored before were derived by the upgrade
    assert (count_rows(db_url, "pipeline_runs"), count_rows(db_url, "workflow_runs")) == (1, 2)
    assert count_rows(db_url, "job_runs") == 4


RESULT_INDEXES = {"ix_test_results_by_job", "ix_test_results_failures"}


def test_the_upgrade_indexes_test_results_once_by_job_and_keeps_them(db_url: str) -> None:
    before = s.MIGRATIONS.index(s._test_results_by_job)
    with raw_engine(db_url) as engine, engine.begin() as conn:  # the release before: two indexes
        for step in s.MIGRATIONS[:before]:
            step(conn)
        conn.execute(text("DROP INDEX ix_test_results_by_job"))
        conn.execute(text("CREATE INDEX ix_test_results_job ON test_results (job_ref, case_ref)"))
        conn.execute(
            text("CREATE INDEX ix_test_results_case ON test_results (case_ref, job_ref, outcome, run_time)")
        )
        conn.execute(insert(s.schema_version).values(version=before))
        conn.execute(
            insert(s.test_results).values(
                job_ref=1, case_ref=2, outcome=0, result="failure", run_time=0.5, message="boom"
            )
        )
    with opened(db_url) as store, store.reading() as conn:
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("test_results")}
        rows = conn.execute(select(s.test_results)).all()
    assert indexes == RESULT_INDEXES
    assert [tuple(row) for row in rows] == [(1, 2, 0, "failure", 0.5, "boom")]


def test_a_new_store_indexes_test_results_once_by_job(db_url: str) -> None:
    with opened(db_url) as store, store.reading() as conn:
        assert {ix["name"] for ix in inspect(conn).get_indexes("test_results")} == RESULT_INDEXES


def test_a_newer_schema_is_refused_and_nothing_is_written(db_url: str) -> None:
    with raw_engine(db_url) as engine, engine.begin() as conn:
        s.MIGRATIONS[0](conn)
        conn.execute(insert(s.schema_version).values(version=SCHEMA_VERSION + 1))
    before = table_names(db_url)
    with pytest.raises(StoreError, match=r"schema version \d+, newer than this circleci-ds supports") as info:
        open_store(db_url)
    assert "upgrade circleci-ds" in str(info.value)
    assert table_names(db_url) == before
    assert stored_version(db_url) == SCHEMA_VERSION + 1


@pytest.mark.parametrize("create", [True, False])
def test_tables_of_something_else_are_refused(db_url: str, create: bool) -> None:
    with raw_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text("CREATE TABLE pipelines (name VARCHAR(20))"))
    with pytest.raises(StoreError, match="not a circleci-ds store"):
        open_store(db_url, create=create)
    assert table_names(db_url) == {"pipelines"}


def test_readers_do_not_create_a_store(db_url: str) -> None:
    with raw_engine(db_url) as engine, engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (name VARCHAR(20))"))
    with pytest.raises(StoreError, match=r"is not a circleci-ds store: it holds another application's"):
        open_store(db_url, create=False)
    assert table_names(db_url) == {"users"}


def test_concurrent_openers_migrate_once(db_url: str) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        start.wait()
        try:
            open_store(db_url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert count_rows(db_url, "schema_version") == 1
    assert stored_version(db_url) == SCHEMA_VERSION


# -- connection errors ---------------------------------------------------------------------------
def test_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    url = f"postgresql://someone:{PASSWORD}@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(StoreError, match="cannot use the database") as info:
        open_store(url)
    message = str(info.value)
    assert PASSWORD not in message
    assert "someone:***@127.0.0.1" in message


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [
        (PASSWORD_USER, "not-" + PASSWORD, "password authentication failed"),
        ("nobody_here", PASSWORD, 'role "nobody_here" does not exist'),
    ],
)
def test_wrong_credentials_are_a_store_error_without_the_password(
    pg_server: PgServer, user: str, password: str, reason: str
) -> None:
    name = pg_server.create_database().rsplit("/", 1)[1]
    with pytest.raises(StoreError, match=reason) as info:
        open_store(pg_server.url(name, user, password))
    assert password not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [f"postgresql://u:{PASSWORD}@127.0.0.1:notaport/x", f"nosuchdialect://u:{PASSWORD}@h/x", "just words"],
)
@pytest.mark.parametrize("create", [True, False])
def test_unusable_urls_are_a_store_error_without_the_password(url: str, create: bool) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url, create=create)
    assert PASSWORD not in str(info.value)


def test_a_missing_sqlite_file_is_not_created_by_readers(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no such database"):
        open_store(f"sqlite:///{path}", create=False)
    assert not path.exists()


# -- pipeline trees ------------------------------------------------------------------------------
def test_tree_round_trip(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        tree = make_tree("p-1", 7, workflows=3, jobs=3)
        save(store, tree)
        assert store.load_tree("p-1") == tree
        assert store.load_tree("missing") is None
        [stored] = store.iter_trees()
        assert (stored.endpoint, stored.native, stored.origin) == (
            EP,
            "acme",
            "https://circleci.com/gh/acme/api",
        )
        assert stored.data == tree
        assert stored.updated_on == stored_trees.tree_updated_on(tree) > 0


def test_origin_is_kept_once_set(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        store.ensure_endpoint(EP, "acme-renamed", "http://127.0.0.1:1/gh/acme/api")
        assert store.origin(EP) == "https://circleci.com/gh/acme/api"
        assert [st.native for st in store.endpoint_statuses()] == ["acme-renamed"]


def test_iter_trees_orders_by_endpoint_then_number_and_filters(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored_trees, "_CHUNK", 2)  # several chunks with few trees
    with opened(db_url) as store:
        store.ensure_endpoint("gh/b/two", "native-b", "o-b")
        store.ensure_endpoint("gh/a/one", "native-a", "o-a")
        for pid, number in [("b-10", 10), ("b-2", 2), ("b-33", 33)]:
            save(store, make_tree(pid, number, workflows=1, jobs=1), "gh/b/two")
        for pid, number in [("a-5", 5), ("a-1", 1)]:
            save(store, make_tree(pid, number, workflows=0), "gh/a/one")
        order = [t.data["id"] for t in store.iter_trees()]
        assert order == ["a-1", "a-5", "b-2", "b-10", "b-33"]
        assert [t.data["id"] for t in store.iter_trees(project="native-b")] == ["b-2", "b-10", "b-33"]
        assert [t.data["id"] for t in store.iter_trees(endpoint="gh/a/one")] == ["a-1", "a-5"]
        assert all(t.data == store.load_tree(t.data["id"]) for t in store.iter_trees())


def test_replacing_a_tree_leaves_no_duplicates(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        save(store, make_tree("p-1", 1, workflows=3, jobs=3), final=False)
        smaller = make_tree("p-1", 1, workflows=1, jobs=2, tag="-rerun")
        save(store, smaller)
        assert store.load_tree("p-1") == smaller
        assert [t.data for t in store.iter_trees()] == [smaller]
    assert (count_rows(db_url, "pipelines"), count_rows(db_url, "workflows"), count_rows(db_url, "jobs")) == (
        1,
        1,
        2,
    )


def test_a_failed_replacement_keeps_the_previous_tree(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        old = make_tree("p-1", 1)
        save(store, old)
        broken = make_tree("p-1", 1, tag="-new")
        broken["workflows"][0]["jobs"].append(broken["workflows"][0]["jobs"][0])  # same key twice
        with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
            save(store, broken)
        assert store.load_tree("p-1") == old


def test_readers_see_a_whole_tree_while_it_is_replaced(db_url: str) -> None:
    """A tree read during replacements is always one of the versions written, never a mix."""
    versions = [
        make_tree("p-1", 1, workflows=3, jobs=3, tag="-a"),
        make_tree("p-1", 1, workflows=1, tag="-b"),
    ]
    with opened(db_url) as writer, opened(db_url) as reader:
        writer.ensure_endpoint(EP, "acme", "o")
        save(writer, versions[0])
        stop = threading.Event()
        seen: list[dict[str, Any] | None] = []

        def read() -> None:
            while not stop.is_set():
                seen.append(reader.load_tree("p-1"))
                seen.extend(t.data for t in reader.iter_trees())

        thread = threading.Thread(target=read)
        thread.start()
        try:
            for i in range(60):
                save(writer, versions[i % 2])
        finally:
            stop.set()
            thread.join()
    assert seen
    assert all(tree in versions for tree in seen)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def trees(draw: st.DrawFn) -> dict[str, Any]:
    pid = draw(st.uuids()).hex
    extra = draw(
        st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k != "workflows"), json_values)
    )
    workflows = []
    for w in range(draw(st.integers(0, 3))):
        jobs = [
            {"id": f"j{j}", "payload": draw(json_values), "details": draw(st.none() | st.just({"x": 1}))}
            for j in range(draw(st.integers(0, 3)))
        ]
        workflows.append({"id": f"{pid}-{w}", "payload": draw(json_values), "jobs": jobs})
    return {**extra, "id": pid, "number": draw(st.integers(0, 10**6)), "workflows": workflows}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_any_json_tree_survives_a_round_trip(db_url: str, tree: dict[str, Any]) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        save(store, tree)
        assert store.load_tree(tree["id"]) == tree


def test_pipeline_index(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        store.ensure_endpoint("gh/acme/other", "acme", "o2")
        tree = make_tree("p-1", 3)
        store.save_tree(EP, tree, fetched_at=123.5, is_final=False)
        save(store, make_tree("p-2", 4), "gh/acme/other")
        index = store.pipeline_index(EP)
    assert set(index) == {"p-1"}
    entry = index["p-1"]
    assert entry.created_at == stored_trees.parse_ts(tree["created_at"])
    assert entry.fetched_at == 123.5
    assert entry.is_final is False
    assert entry.digest == base.digest({k: v for k, v in tree.items() if k != "workflows"})


# -- endpoints and checkpoints ------------------------------------------------------------------
def test_checkpoint_moves_only_on_success(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        assert store.checkpoint(EP) is None
        store.record_start(EP, 100.0)
        store.record_finish(EP, finished=110.0, error=None, checkpoint=90.0)
        assert store.checkpoint(EP) == 90.0
        store.record_finish(EP, finished=210.0, error="boom", checkpoint=190.0)
        assert store.checkpoint(EP) == 90.0
        [status] = store.endpoint_statuses()
        assert (status.last_error, status.last_finished) == ("boom", 210.0)
        store.record_finish(EP, finished=310.0, error=None, checkpoint=None)  # nothing listed
        assert store.checkpoint(EP) == 90.0
        [status] = store.endpoint_statuses()
        assert status.last_error is None
        assert store.finished_since(EP, 310.0)
        assert not store.finished_since(EP, 310.5)
        assert not store.finished_since("gh/acme/unknown", 0.0)


def test_project_infos(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        store.ensure_endpoint("gh/acme/web", "acme", "o2")
        store.save_project_info(EP, {"vcs_info": {"default_branch": "main"}, "name": "api"})
        assert store.project_infos() == {EP: {"vcs_info": {"default_branch": "main"}, "name": "api"}}


# -- leases ----------------------------------------------------------------------------------------
def test_lease_take_renew_release(db_url: str) -> None:
    with opened(db_url) as store:
        assert store.try_lease(EP, "a", 30)
        assert not store.try_lease(EP, "b", 30)
        assert store.try_lease(EP, "a", 30)  # the holder may take it again
        assert store.renew_lease(EP, "a", 30)
        assert not store.renew_lease(EP, "b", 30)
        [held] = store.leases()
        assert (held.endpoint, held.owner) == (EP, "a")
        assert held.expires_at > time.time() + 25
        store.release_lease(EP, "b")  # not the holder: no effect
        assert [x.owner for x in store.leases()] == ["a"]
        store.release_lease(EP, "a")
        assert store.leases() == []
        assert store.try_lease(EP, "b", 30)
        assert not store.renew_lease(EP, "a", 30)


def test_an_expired_lease_is_taken_over(db_url: str) -> None:
    with opened(db_url) as store:
        assert store.try_lease(EP, "a", 10, now=1000.0)
        assert not store.try_lease(EP, "b", 10, now=1009.0)
        assert store.try_lease(EP, "b", 10, now=1010.5)
        [held] = store.leases()
        assert (held.owner, held.expires_at, held.acquired_at) == ("b", 1020.5, 1010.5)
        assert not store.renew_lease(EP, "a", 10)  # the old holder learns it lost the endpoint
        store.release_lease(EP, "a")
        assert [x.owner for x in store.leases()] == ["b"]


def test_a_lease_expires_by_the_store_clock(db_url: str) -> None:
    """Without `now`, leases are set and judged by the store's clock (the database's on PostgreSQL)."""
    with opened(db_url) as store:
        before = store.now()
        assert store.try_lease(EP, "a", 2.0)  # room for a slow second call on a busy machine
        [held] = store.leases()
        assert before + 2.0 <= held.expires_at <= store.now() + 2.0
        assert not store.try_lease(EP, "b", 5)
        deadline = time.monotonic() + 60
        while store.now() <= held.expires_at:  # the store's clock, not a guess at how long to sleep
            assert time.monotonic() < deadline, "the store's clock did not pass the lease's expiry"
            time.sleep(0.05)
        assert store.try_lease(EP, "b", 5)


def test_leases_are_per_endpoint(db_url: str) -> None:
    with opened(db_url) as store:
        assert store.try_lease("gh/acme/one", "a", 30)
        assert store.try_lease("gh/acme/two", "b", 30)
        assert sorted((x.endpoint, x.owner) for x in store.leases()) == [
            ("gh/acme/one", "a"),
            ("gh/acme/two", "b"),
        ]


def test_racing_collectors_get_one_lease_each_endpoint(db_url: str) -> None:
    """Separate connections racing for fresh endpoints: exactly one winner each, and no error."""
    racers, rounds = 4, 15
    stores = [open_store(db_url) for _ in range(racers)]
    wins: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(racers)

    def race(i: int) -> None:
        for r in range(rounds):
            gate.wait()
            try:
                if stores[i].try_lease(f"gh/race/ep-{r}", f"owner-{i}", 30):
                    wins.append((r, f"owner-{i}"))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for store in stores:
            store.close()
    assert not errors, errors[0]
    assert sorted(r for r, _ in wins) == list(range(rounds))


# -- status --------------------------------------------------------------------------------------
def test_endpoint_statuses_count_what_is_stored(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint("gh/acme/web", "acme", "o2")
        store.ensure_endpoint(EP, "acme", "o")
        save(store, make_tree("p-1", 1, workflows=2, jobs=3))
        save(store, make_tree("p-2", 2, workflows=1, jobs=1), final=False)
        store.record_finish(EP, finished=50.0, error=None, checkpoint=40.0)
        store.try_lease("gh/acme/web", "collector-1", 30, now=time.time())
        api, web = store.endpoint_statuses()
    assert (api.slug, api.pipelines, api.workflows, api.jobs, api.open_pipelines) == (EP, 2, 3, 7, 1)
    assert (api.checkpoint, api.last_finished, api.lease_owner, api.lease_expires) == (40.0, 50.0, None, None)
    assert (web.slug, web.pipelines, web.workflows, web.jobs, web.open_pipelines) == (
        "gh/acme/web",
        0,
        0,
        0,
        0,
    )
    assert web.lease_owner == "collector-1"
    assert web.lease_expires is not None and web.lease_expires > time.time()


# -- the command line ------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circleci_ds", *args], capture_output=True, text=True, timeout=60, check=False
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *, code: int = 2) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error:")
    assert PASSWORD not in done.stderr + done.stdout


def test_status_on_unreachable_postgresql_exits_2_with_one_line() -> None:
    done = run_cli("status", "--db", f"postgresql://someone:{PASSWORD}@127.0.0.1:{free_port()}/x")
    assert_one_line_error(done)
    assert "cannot use the database" in done.stderr


@pytest.mark.postgres
def test_status_with_a_wrong_password_exits_2_with_one_line(pg_server: PgServer) -> None:
    url = pg_server.create_database()
    wrong = pg_server.url(url.rsplit("/", 1)[1], PASSWORD_USER, PASSWORD + "-wrong")
    done = run_cli("status", "--db", wrong)
    assert_one_line_error(done)
    assert "password authentication failed" in done.stderr


@pytest.mark.postgres
def test_status_shows_lease_holders(pg_url: str) -> None:
    with opened(pg_url) as store:
        store.ensure_endpoint(EP, "acme", "o")
        save(store, make_tree("p-1", 1))
        store.try_lease(EP, "host:4242:abc", 60)
    done = run_cli("status", "--db", pg_url)
    assert done.returncode == 0, done.stderr
    assert EP in done.stdout and "host:4242:abc" in done.stdout


def test_status_on_an_empty_database_exits_2(db_url: str) -> None:
    assert_one_line_error(run_cli("status", "--db", db_url))
    assert table_names(db_url) == set()


# -- ownership -------------------------------------------------------------------------------------
def _store_of_release(url: str, steps: int, pid: str = "p-1") -> None:
    """A store as an earlier release left it: its first `steps` migrations, and one tree."""
    with raw_engine(url) as engine:
        with engine.begin() as conn:
            for step in s.MIGRATIONS[:steps]:
                step(conn)
            conn.execute(insert(s.schema_version).values(version=steps))
        old = Store(engine, url)
        old.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        save_as_released(engine, make_tree(pid, 1))


UNMARKED = s.MIGRATIONS.index(s._ownership_marker)  # the last release without the marker


@pytest.mark.parametrize(
    ("tables", "marker", "version_columns", "expected"),
    [
        (set(), None, set(), s.Ownership.EMPTY),
        ({"circleci_ds_meta", "endpoints"}, "circleci-ds", {"version"}, s.Ownership.OURS),
        ({"circleci_ds_meta"}, "another-app", set(), s.Ownership.FOREIGN),
        ({"circleci_ds_meta"}, None, set(), s.Ownership.FOREIGN),
        (
            {"schema_version", "endpoints", "pipelines", "workflows", "jobs"},
            None,
            {"version"},
            s.Ownership.UNMARKED,
        ),
        (
            {"schema_version", "endpoints", "pipelines", "workflows", "jobs"},
            None,
            {"v", "app"},
            s.Ownership.FOREIGN,
        ),
        ({"schema_version", "users"}, None, {"version"}, s.Ownership.FOREIGN),
        ({"pipelines"}, None, set(), s.Ownership.FOREIGN),
    ],
)
def test_ownership_rules(
    tables: set[str], marker: str | None, version_columns: set[str], expected: s.Ownership
) -> None:
    assert s.classify(tables, marker, version_columns) is expected


def test_a_new_store_is_marked_as_ours(db_url: str) -> None:
    with opened(db_url):
        pass
    with raw_engine(db_url) as engine, engine.connect() as conn:
        assert s.ownership(conn) is s.Ownership.OURS
        assert (
            conn.execute(select(s.meta.c.value).where(s.meta.c.key == "application")).scalar()
            == "circleci-ds"
        )


def test_an_unmarked_store_of_an_earlier_release_is_upgraded_and_marked(db_url: str) -> None:
    _store_of_release(db_url, UNMARKED)
    with opened(db_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert store.load_tree("p-1") == make_tree("p-1", 1)
    with raw_engine(db_url) as engine, engine.connect() as conn:
        assert s.ownership(conn) is s.Ownership.OURS


def test_readers_refuse_a_store_of_an_older_version_and_write_nothing(db_url: str) -> None:
    _store_of_release(db_url, UNMARKED)
    before = table_names(db_url)
    with pytest.raises(StoreError, match=r"run `circleci-ds collect` once to upgrade it"):
        open_store(db_url, create=False)
    assert table_names(db_url) == before
    assert stored_version(db_url) == UNMARKED


def test_a_database_marked_by_another_application_is_refused(db_url: str) -> None:
    with raw_engine(db_url) as engine, engine.begin() as conn:
        s.metadata.create_all(conn, tables=[s.meta])
        conn.execute(insert(s.meta).values(key="application", value="another-app"))
    for create in (True, False):
        with pytest.raises(StoreError, match="another application's tables"):
            open_store(db_url, create=create)
    assert table_names(db_url) == {"circleci_ds_meta"}


def test_a_reader_cannot_write_even_behind_the_store(db_url: str) -> None:
    with opened(db_url):
        pass
    with opened(db_url, create=False) as reader:
        with pytest.raises(StoreError, match="open read-only"):
            reader.try_lease(EP, "me", 30)
        with pytest.raises(DBAPIError, match=r"(?i)read-?only"), reader.engine.begin() as conn:
            conn.execute(insert(s.leases).values(endpoint=EP, owner="me", expires_at=1.0, acquired_at=1.0))
    assert count_rows(db_url, "leases") == 0


def test_leases_are_judged_by_the_database_clock(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On PostgreSQL the lease clock is the server's, whatever this host's clock says; SQLite's
    writers all share this host, so there it is the local clock."""
    real = time.time
    monkeypatch.setattr(db.time, "time", lambda: real() + 3600.0)  # this host runs an hour ahead
    with opened(db_url) as store:
        assert store.try_lease(EP, "a", 30)
        [held] = store.leases()
        host_ahead = not db_url.startswith("postgresql")
        expected = real() + (3600.0 if host_ahead else 0.0) + 30
        assert abs(held.expires_at - expected) < 5
        assert abs(store.now() - (real() + (3600.0 if host_ahead else 0.0))) < 5


# -- rerun signals -------------------------------------------------------------------------------
def test_job_frontier_moves_only_after_a_run_with_no_error(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        save(store, make_tree("p-1", 1))
        save(store, make_tree("p-2", 2))
        assert store.job_numbers(EP) == (None, 21)
        assert store.stored_job_numbers(EP, 10, 20) == {11}
        assert store.stored_job_numbers("gh/acme/other", 0, 100) == set()
        store.record_finish(EP, finished=1.0, error="boom", checkpoint=1.0, job_frontier=21)
        assert store.job_numbers(EP) == (None, 21)
        store.record_finish(EP, finished=2.0, error=None, checkpoint=1.0, job_frontier=21)
        assert store.job_numbers(EP) == (21, 21)


def test_project_info_attempts_are_remembered_with_or_without_info(db_url: str) -> None:
    with opened(db_url) as store:
        store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
        assert store.project_info_at(EP) is None
        store.note_project_info(EP, 100.0)
        assert store.project_info_at(EP) == 100.0 and EP not in store.project_infos()
        store.note_project_info(EP, 200.0, {"vcs_info": {"default_branch": "trunk"}})
        assert store.project_info_at(EP) == 200.0
        assert store.project_infos()[EP]["vcs_info"]["default_branch"] == "trunk"
        save(store, make_tree("p-1", 1))
        assert store.recent_branches(EP) == ["main"]
