"""Facts derived from raw trees: the rules of circleci_ds.derive.facts, their storage beside the raw JSON,
and timestamps at the edges (item 8 of issue 8).

Hand-worked tree (pipeline P, default branch main):
  W1 build   created 10:00:00 stopped 10:20:00  failed   jobs a (ok, 10:00:30-10:05:00, queued 10:00:10)
                                                          b (failed, deps [a], 10:05:00-10:10:00)
                                                          hold (approval, deps [b], never approved)
  W2 build   created 11:00:00 stopped 13:30:00  success  rerun of W1 (auto_rerun_number 1)
                                                          a (ok 11:00:30-11:05:00), b (ok 11:05:00-11:10:00)
                                                          hold (approval ok, deps [b], stopped 13:10:00:
                                                                waits 11:10 -> 13:10 = 7200 s)
                                                          ship (ok, deps [hold], 13:10:00-13:30:00)
  -> W2 duration 9000 s, active 1800 s, approval wait 7200 s; W2's critical path a -> b -> hold -> ship;
     W1 executed a, b (2 jobs); hold never executes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select

from builders import job_item
from circleci_ds.derive.facts import branch_of, critical_path, derive, open_store
from circleci_ds.store import schema as s
from circleci_ds.store import trees as db
from circleci_ds.times import TimeReader, iso, parse_ts

EP = "gh/acme/api"
HOSTILE = ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", 1234567890, "yesterday")


def t(hms: str) -> str:
    return f"2026-11-01T{hms}Z"


def job(
    jid: str, status: str, start: str | None, stop: str | None, deps: list[str], kind: str = "build"
) -> dict[str, Any]:
    started, stopped = t(start) if start else None, t(stop) if stop else None
    return job_item(
        jid, jid.split("-")[-1], status, kind=kind, dependencies=deps, started_at=started, stopped_at=stopped
    )


def tree() -> dict[str, Any]:
    w1_jobs = [
        job("1-a", "success", "10:00:30", "10:05:00", []),
        job("1-b", "failed", "10:05:00", "10:10:00", ["1-a"]),
        job("1-hold", "on_hold", None, None, ["1-b"], kind="approval"),
    ]
    w1_jobs[0]["details"] = {"queued_at": t("10:00:10"), "duration": 270_000}
    w2_jobs = [
        job("2-a", "success", "11:00:30", "11:05:00", []),
        job("2-b", "success", "11:05:00", "11:10:00", ["2-a"]),
        job("2-hold", "success", None, "13:10:00", ["2-b"], kind="approval"),
        job("2-ship", "success", "13:10:00", "13:30:00", ["2-hold"]),
    ]
    return {
        "id": "P",
        "number": 7,
        "created_at": t("09:59:59.500"),
        "vcs": {"branch": "main", "revision": "abc"},
        "trigger": {"type": "webhook", "received_at": t("09:59:58"), "actor": {"login": "alice"}},
        "workflows": [
            {"id": "W2", "name": "build", "status": "success", "created_at": t("11:00:00"),
             "stopped_at": t("13:30:00"), "auto_rerun_number": 1, "jobs": w2_jobs},
            {"id": "W1", "name": "build", "status": "failed", "created_at": t("10:00:00"),
             "stopped_at": t("10:20:00"), "jobs": w1_jobs},
        ],
    }  # fmt: skip


def test_workflow_facts_by_hand() -> None:
    facts = derive(EP, tree(), "main")
    w2, w1 = facts.workflows
    assert (w1.rerun_index, w1.rerun_of, w1.rerun_kind) == (0, None, None)
    assert (w2.rerun_index, w2.rerun_of, w2.rerun_kind) == (1, "W1", "auto")
    assert (w2.duration, w2.approval_wait, w2.active_duration) == (9000, 7200, 1800)
    assert (w1.jobs, w1.executed_jobs, w1.failed_jobs) == (3, 2, 1)
    assert w1.is_default_branch is True and w1.triggered == parse_ts(t("09:59:58"))
    assert facts.pipeline.bad_times == 0


def test_job_facts_by_hand() -> None:
    jobs = {j.id: j for j in derive(EP, tree(), "main").jobs}
    a = jobs["1-a"]
    assert (a.duration, a.queue_time, a.executed) == (270, 20, True)
    assert jobs["1-hold"].executed is False and jobs["1-hold"].approval_wait is None  # never approved
    assert jobs["2-hold"].approval_wait == 7200 and jobs["2-hold"].duration is None
    assert [j.name for j in critical_path(j for j in jobs.values() if j.workflow_id == "W2")] == [
        "a", "b", "hold", "ship",
    ]  # fmt: skip


def test_rerun_from_failed_executes_fewer_jobs() -> None:
    data = tree()
    del data["workflows"][0]["auto_rerun_number"]
    data["workflows"][0]["jobs"] = data["workflows"][0]["jobs"][1:2]  # only b ran again
    assert derive(EP, data, "main").workflows[0].rerun_kind == "from_failed"
    data["workflows"][0]["jobs"] = tree()["workflows"][0]["jobs"]
    assert derive(EP, data, "main").workflows[0].rerun_kind == "whole"


@pytest.mark.parametrize(
    ("pipeline", "expected"),
    [
        ({"vcs": {"branch": "dev", "tag": "v1"}}, ("dev", "vcs.branch")),
        ({"vcs": {"tag": "v1"}}, ("v1", "vcs.tag")),
        (
            {"vcs": {"branch": ""}, "trigger_parameters": {"git": {"branch": "fix"}}},
            ("fix", "trigger_parameters.git.branch"),
        ),
        ({"trigger_parameters": {"git": {"tag": "v2"}}}, ("v2", "trigger_parameters.git.tag")),
        ({"trigger_parameters": {"git": "nonsense"}, "vcs": None}, (None, None)),
        ({}, (None, None)),
    ],
)  # fmt: skip
def test_branch_comes_from_the_first_source_that_has_it(
    pipeline: dict[str, Any], expected: tuple[Any, Any]
) -> None:
    assert branch_of(pipeline) == expected


def test_facts_are_replaced_with_their_tree(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)
    store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
    store.save_project_info(EP, {"vcs_info": {"default_branch": "main"}})
    store.save_tree(EP, tree(), fetched_at=1.0, is_final=True)
    smaller = tree()
    smaller["workflows"] = smaller["workflows"][1:]
    store.save_tree(EP, smaller, fetched_at=2.0, is_final=True)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(select(s.workflow_runs.c.id)).scalars().all() == ["W1"]
        assert sorted(conn.execute(select(s.job_runs.c.id)).scalars().all()) == ["1-a", "1-b", "1-hold"]
        assert conn.execute(select(s.workflow_runs.c.is_default_branch)).scalar_one() is True
    engine.dispose()
    store.close()


# -- timestamps at the edges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [*HOSTILE, None, "", float("nan"), True, "2026-13-01T00:00:00Z", "x" * 10_000]
)
def test_unreadable_timestamps_read_as_none_and_are_counted(value: Any) -> None:
    reader = TimeReader()
    assert reader.read(value) is None
    assert reader.unreadable == (0 if value in (None, "") else 1)


def test_the_edges_of_the_calendar_still_read() -> None:
    assert iso(parse_ts("9999-12-31T23:59:59Z")) == "9999-12-31T23:59:59Z"
    assert iso(parse_ts("0001-01-01T00:00:00Z")) == "0001-01-01T00:00:00Z"
    assert iso(parse_ts("2026-11-01T12:00:00+02:00")) == "2026-11-01T10:00:00Z"
    assert iso(1e300) is None and iso(float("inf")) is None and iso(-1e300) is None


def hostile_tree() -> dict[str, Any]:
    data = tree()
    data["created_at"], data["trigger"]["received_at"] = HOSTILE[0], HOSTILE[3]
    data["workflows"][0]["created_at"], data["workflows"][0]["stopped_at"] = HOSTILE[1], HOSTILE[2]
    data["workflows"][1]["jobs"][0]["details"]["queued_at"] = HOSTILE[0]
    return data


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circleci_ds", *args], capture_output=True, text=True, timeout=300
    )


def test_hostile_timestamps_never_crash_export_or_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)
    store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
    store.save_tree(EP, hostile_tree(), fetched_at=1.0, is_final=True)
    good = tree()
    good["id"], good["number"] = "Q", 8
    for w in good["workflows"]:
        w["id"] += "q"
    store.save_tree(EP, good, fetched_at=1.0, is_final=True)
    store.close()
    raw = cli("export", "--db", url)
    assert raw.returncode == 0, raw.stderr
    items = {i["data"]["id"]: i for i in map(json.loads, raw.stdout.splitlines())}
    assert items["P"]["data"]["created_at"] == HOSTILE[0]  # raw data stays as sent
    assert items["P"]["data"]["workflows"][0]["stopped_at"] == HOSTILE[2]
    enriched = cli("export", "--db", url, "--kind", "enriched", "--format", "es-bulk")
    assert enriched.returncode == 0, enriched.stderr
    docs = [json.loads(line) for line in enriched.stdout.splitlines()[1::2]]
    pipeline = next(d for d in docs if d["type"] == "pipeline" and d["pipeline_id"] == "P")
    assert pipeline["created_at"] is None and pipeline["trigger_received_at"] is None
    assert "warning: 5 stored timestamp(s) could not be read" in enriched.stderr
    for fmt in ("table", "json"):
        shown = cli(
            "report", "--db", url, "--format", fmt, "--branch", "*", "--html", str(tmp_path / "r.html")
        )
        assert shown.returncode == 0, shown.stderr
        assert "5 stored timestamp(s) could not be read" in shown.stdout + shown.stderr
        assert "Traceback" not in shown.stderr
    data = json.loads(cli("report", "--db", url, "--format", "json", "--branch", "*").stdout)
    assert data["workflows"][0]["runs"] == 3  # W2, W2q, W1q: W1 has no readable creation time


def test_a_store_of_the_previous_schema_gets_its_facts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        before_facts = s.MIGRATIONS.index(s.facts_tables)  # later steps are appended after it
        for step in s.MIGRATIONS[:before_facts]:
            step(conn)
        conn.execute(s.schema_version.insert().values(version=before_facts))
        conn.execute(s.endpoints.insert().values(slug=EP, native="acme", origin="o", project_info=json.dumps(
            {"vcs_info": {"default_branch": "main"}})))  # fmt: skip
        rows = db.tree_rows(EP, hostile_tree(), fetched_at=1.0, is_final=True)
        conn.execute(s.pipelines.insert(), [rows.pipeline])
        conn.execute(s.workflows.insert(), rows.workflows)
        conn.execute(s.jobs_numbered.insert(), rows.jobs)
    engine.dispose()
    store = open_store(url)  # a writer (collect) upgrades; readers refuse old versions
    assert store.unreadable_timestamps() == 5
    with store.snapshot() as conn:
        assert conn.execute(select(s.job_runs.c.id).where(s.job_runs.c.executed.is_(True))).scalars().all()
        assert set(conn.execute(select(s.workflow_runs.c.is_default_branch)).scalars()) == {True}
    store.close()


def test_a_default_branch_learnt_later_reaches_the_facts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = open_store(url)
    store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
    store.save_tree(EP, tree(), fetched_at=1.0, is_final=True)
    flags = "SELECT DISTINCT is_default_branch FROM {}"
    with store.snapshot() as conn:
        assert conn.exec_driver_sql(flags.format("job_runs")).scalars().all() == [None]
    store.save_project_info(EP, {"vcs_info": {"default_branch": "main"}})
    with store.snapshot() as conn:
        for table in ("pipeline_runs", "workflow_runs", "job_runs"):
            assert conn.exec_driver_sql(flags.format(table)).scalars().all() == [1]
    store.save_project_info(EP, {"vcs_info": {"default_branch": "trunk"}})
    with store.snapshot() as conn:
        assert conn.exec_driver_sql(flags.format("workflow_runs")).scalars().all() == [0]
    store.close()


def test_enriched_documents_from_stored_facts_equal_derived_ones(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
    from circleci_ds.dev.simulator.render import render_project
    from circleci_ds.documents.enriched import enrich_trees

    sim = Simulator(SimConfig(seed=3, projects=[SimProject(EP, pipelines=25)]))
    sim.advance(86400)
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    store.ensure_endpoint(EP, "acme", "https://circleci.com/gh/acme/api")
    project = sim.history.project(EP)
    assert project is not None
    store.save_project_info(EP, render_project(project))
    for data in sim.truth(EP):
        store.save_tree(EP, data, fetched_at=1.0, is_final=True)
    moment = datetime(2026, 11, 5, tzinfo=UTC).timestamp()
    stored = list(enrich_trees(store.iter_trees(with_facts=True), store.project_infos(), moment))
    derived = list(enrich_trees(store.iter_trees(), store.project_infos(), moment))
    assert all(t.facts is not None for t in store.iter_trees(with_facts=True))
    assert len(stored) > 100 and stored == derived
    store.close()
