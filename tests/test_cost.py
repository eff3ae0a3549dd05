"""Cost metrics on a hand-made history whose answers are worked out by hand (SQLite and PostgreSQL).

gh/acme/api (default branch main), workflow "build", job "test" (job facts with job details):

  P1 main c1     W1  11-02 10:00  success  J1  large  300 s  parallelism 2
  P2 main c2     W2  11-02 12:00  failed   J2  large  120 s  (test A failed)
                 W2b 11-02 12:30  success  J2b large   60 s  (rerun; test A passed: A and J2 flaky on c2)
  P3 feature c3  W3  11-03 09:00  success  J3  weird.class 60 s

Estimate (no usage rows; large = 20 credits a minute):
  J1 20 x 5 min x 2 = 200, J2 20 x 2 = 40, J2b 20 x 1 = 20, J3 no rate (unpriced) -> 260 over 4 runs
  default branch: 260 of 260 priced -> share 1.0; successful default pipelines P1, P2 (its last run
  W2b succeeded) -> 260 / 2 = 130 per pipeline; lost: failed J2 40, reruns J2b 20, flaky job J2 40,
  flaky test (J2 failed only on A, which passed later on c2) 40.

Usage export (credits = total - user), window 11-01 .. 11-15:
  u1 W1 test main large 22-2 = 20 | u2 W2 test main failed 30 | u3 W2b test main 25
  u4 W3 test feature 15 | u7 W3 lint feature canceled 1 (never started: dated by its run day 11-04)
  u5 legacy (outside the fixture) nightly/build master medium 50-5 = 45, 11-09
  u6 out of the window (10-01), 100
  -> 136 credits over 6 runs, user credits 7; api 91 (default 75 of 91 known), legacy 45;
     per successful default pipeline 75 / 2 = 37.5; lost: failed 30, reruns 25, flaky job 30, flaky test 30;
     weeks 11-02: api 91, 11-09: legacy 45; large 91 (5 runs), medium 45.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import select, text, update

from circleci_ds.collect.tests import save_items
from circleci_ds.derive.credit_rates import shipped_rates
from circleci_ds.derive.facts import open_store
from circleci_ds.derive.people import People
from circleci_ds.documents.dads import dads_documents
from circleci_ds.documents.enriched import enrich_trees
from circleci_ds.metrics.cost import (
    CostOptions,
    CostReport,
    Thresholds,
    compute_cost,
    saving,
    verdict,
)
from circleci_ds.report import run_report
from circleci_ds.store import Store
from circleci_ds.store import schema as s
from circleci_ds.store.testresults import TestJob
from usage_helpers import create_usage_table, usage_row, write_usage

SLUG = "gh/acme/api"
SINCE = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
UNTIL = datetime(2026, 11, 15, tzinfo=UTC).timestamp()


def at(stamp: str) -> float:
    """'11-02 10:00:30' -> epoch."""
    return datetime.fromisoformat(f"2026-{stamp.replace(' ', 'T')}+00:00").timestamp()


def t(stamp: str) -> str:
    return "2026-" + stamp.replace(" ", "T") + "Z"


def job(
    jid: str, status: str, started: str, stopped: str, cls: str, ms: int, parallelism: int = 1
) -> dict[str, Any]:
    details = {
        "queued_at": t(started),
        "duration": ms,
        "parallelism": parallelism,
        "executor": {"type": "docker", "resource_class": cls},
    }
    return {"id": jid, "name": "test", "type": "build", "status": status, "dependencies": [],
            "started_at": t(started), "stopped_at": t(stopped), "details": details}  # fmt: skip


def wf(wid: str, status: str, created: str, stopped: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": wid, "name": "build", "status": status, "created_at": t(created), "stopped_at": t(stopped),
            "jobs": jobs}  # fmt: skip


def pipe(
    pid: str, number: int, created: str, branch: str, commit: str, workflows: list[Any]
) -> dict[str, Any]:
    return {"id": pid, "number": number, "state": "created", "created_at": t(created), "errors": [],
            "trigger": {"type": "webhook", "actor": {"login": "alice"}},
            "vcs": {"branch": branch, "revision": commit, "commit": {"subject": "x"}},
            "workflows": workflows}  # fmt: skip


TREES = [
    pipe("P1", 1, "11-02 10:00:00", "main", "c1", [
        wf("W1", "success", "11-02 10:00:00", "11-02 10:10:00",
           [job("J1", "success", "11-02 10:00:30", "11-02 10:05:30", "large", 300_000, 2)]),
    ]),
    pipe("P2", 2, "11-02 12:00:00", "main", "c2", [
        wf("W2", "failed", "11-02 12:00:00", "11-02 12:05:00",
           [job("J2", "failed", "11-02 12:00:30", "11-02 12:02:30", "large", 120_000)]),
        wf("W2b", "success", "11-02 12:30:00", "11-02 12:40:00",
           [job("J2b", "success", "11-02 12:30:30", "11-02 12:31:30", "large", 60_000)]),
    ]),
    pipe("P3", 3, "11-03 09:00:00", "feature", "c3", [
        wf("W3", "success", "11-03 09:00:00", "11-03 09:05:00",
           [job("J3", "success", "11-03 09:00:30", "11-03 09:01:30", "weird.class", 60_000)]),
    ]),
]  # fmt: skip


def recorded_job(number: int, jid: str, wid: str, status: str, stopped: str) -> TestJob:
    return TestJob(SLUG, number, jid, "P2", wid, "build", "test", "main", "c2", status,
                   at("11-02 12:00:00"), None, at(stopped), 60.0, None)  # fmt: skip


def result(outcome: str) -> dict[str, Any]:
    return {
        "name": "A",
        "classname": "t",
        "file": "t.py",
        "result": outcome,
        "run_time": 1.0,
        "message": None,
    }


def make_store(url: str) -> Store:
    store = open_store(url)
    store.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/api")
    store.save_project_info(SLUG, {"vcs_info": {"default_branch": "main"}})
    for tree in TREES:
        store.save_tree(SLUG, tree, fetched_at=1.0, is_final=True)
    save_items(
        store, recorded_job(2, "J2", "W2", "failed", "11-02 12:02:30"), [result("failure")], seq=0, final=True
    )
    save_items(store, recorded_job(3, "J2b", "W2b", "success", "11-02 12:31:30"), [result("success")], seq=0,
               final=True)  # fmt: skip
    return store


def usage(jid: str, wid: str, wname: str, jname: str, branch: str, cls: str, status: str,
          started: str | None, total: float, user: float = 0.0, **extra: Any) -> dict[str, Any]:  # fmt: skip
    values: dict[str, Any] = {"project_slug": SLUG, "project_name": "api", **extra}
    return usage_row(
        jid, workflow_id=wid, workflow_name=wname, job_name=jname, branch=branch, resource_class=cls,
        status=status, started_at=at(started) if started else None, total_credits=total, user_credits=user,
        **values,
    )  # fmt: skip


USAGE = [
    usage("u1", "W1", "build", "test", "main", "large", "success", "11-02 10:00:30", 22, 2),
    usage("u2", "W2", "build", "test", "main", "large", "failed", "11-02 12:00:30", 30),
    usage("u3", "W2b", "build", "test", "main", "large", "success", "11-02 12:30:30", 25),
    usage("u4", "W3", "build", "test", "feature", "large", "success", "11-03 09:00:30", 15),
    usage("u7", "W3", "build", "lint", "feature", "large", "canceled", None, 1, run_day=at("11-04 00:00:00")),
    usage("u5", "Wx", "nightly", "build", "master", "medium", "success", "11-09 10:00:00", 50, 5,
          project_slug=None, project_name="legacy"),
    usage("u6", "W0", "build", "test", "main", "large", "success", "10-01 10:00:00", 100),
]  # fmt: skip


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    opened = make_store(db_url)
    yield opened
    opened.close()


def cost(store: Store, **kwargs: Any) -> CostReport:
    args: dict[str, Any] = {"project": None, "since": SINCE, "until": UNTIL, "branch": None, **kwargs}
    return compute_cost(store, **args)


def test_estimate_without_usage_rows(store: Store) -> None:
    report = cost(store)
    assert (report.source, report.estimated, report.branch) == ("estimate", True, "*")
    assert (report.credits, report.runs, report.unpriced_runs, report.user_credits) == (260.0, 4, 1, None)
    assert report.default_branch_share == 1.0
    assert report.cost_per_successful_default_pipeline == 130.0
    assert (report.lost.failed, report.lost.reruns, report.lost.flaky_jobs, report.lost.flaky_tests) == (
        40.0, 20.0, 40.0, 40.0,
    )  # fmt: skip
    assert report.rates is not None and report.rates["date"] == shipped_rates().date
    assert [(r.resource_class, r.runs, r.credits) for r in report.by_resource_class] == [
        ("large", 3, 260.0), ("weird.class", 1, 0.0),
    ]  # fmt: skip
    assert report.rightsizing == []
    assert "ESTIMATE" in report.scope and any("1 job run" in n for n in report.notes)


def test_an_empty_usage_table_still_means_an_estimate(store: Store) -> None:
    create_usage_table(store)
    write_usage(store, [USAGE[-1]])  # only a row outside the window
    assert cost(store).source == "estimate"


def test_overridden_rates_change_the_estimate(store: Store) -> None:
    rates = shipped_rates().with_overrides({"large": 10.0, "weird.class": 5.0}, "test")
    report = cost(store, options=CostOptions(rates=rates))
    assert (report.credits, report.unpriced_runs) == (130.0 + 5.0, 0)


def test_usage_export_hand_worked(store: Store) -> None:
    create_usage_table(store)
    write_usage(store, USAGE)
    report = cost(store)
    assert (report.source, report.estimated, report.rates) == ("usage-export", False, None)
    assert (report.credits, report.user_credits, report.runs, report.unpriced_runs) == (136.0, 7.0, 6, 0)
    assert report.default_branch_share == pytest.approx(75 / 91)
    assert report.cost_per_successful_default_pipeline == 37.5
    projects = [(p.project_slug, p.project, p.in_fixture, p.runs, p.credits, p.user_credits,
                 p.default_branch_credits, p.successful_default_pipelines,
                 p.cost_per_successful_default_pipeline) for p in report.by_project]  # fmt: skip
    assert projects == [
        (SLUG, "api", True, 5, 91.0, 2.0, 75.0, 2, 37.5),
        (None, "legacy", False, 1, 45.0, 5.0, None, 0, None),
    ]
    assert [(j.project_slug, j.workflow, j.job, j.runs, j.credits) for j in report.by_job] == [
        (SLUG, "build", "test", 4, 90.0),
        (None, "nightly", "build", 1, 45.0),
        (SLUG, "build", "lint", 1, 1.0),
    ]  # fmt: skip
    assert [(w.project, w.workflow, w.runs, w.credits) for w in report.by_workflow] == [
        ("api", "build", 5, 91.0), ("legacy", "nightly", 1, 45.0),
    ]  # fmt: skip
    assert [(b.project, b.branch, b.runs, b.credits) for b in report.by_branch] == [
        ("api", "main", 3, 75.0), ("legacy", "master", 1, 45.0), ("api", "feature", 2, 16.0),
    ]  # fmt: skip
    assert [(r.resource_class, r.runs, r.credits) for r in report.by_resource_class] == [
        ("large", 5, 91.0), ("medium", 1, 45.0),
    ]  # fmt: skip
    assert [(w.week, w.project, w.credits) for w in report.by_week] == [
        ("2026-11-02", "api", 91.0), ("2026-11-09", "legacy", 45.0),
    ]  # fmt: skip
    lost = report.lost
    assert (lost.failed, lost.reruns, lost.flaky_jobs, lost.flaky_tests) == (30.0, 25.0, 30.0, 30.0)


def test_usage_on_one_branch_and_one_project(store: Store) -> None:
    create_usage_table(store)
    write_usage(store, USAGE)
    main = cost(store, branch="main")
    assert (main.branch, main.credits, main.runs) == ("main", 75.0, 3)
    assert "branch main" in main.scope
    nowhere = cost(store, branch="no-such-branch")
    assert (nowhere.source, nowhere.credits, nowhere.runs) == ("usage-export", 0.0, 0)
    acme = cost(store, project="acme")
    assert (acme.credits, [p.project for p in acme.by_project]) == (91.0, ["api"])


# -- right-sizing ------------------------------------------------------------------------------------

# (job, class, credits, max cpu, max ram) per run; lint: 6 sampled runs (+1 unsampled), compile: 5,
# docs: 4 sampled only, tiny: oversized on the smallest class (nothing smaller to suggest).
SIZED = (
    [("lint", "large", 10.0, cpu, 30.0) for cpu in (10, 20, 30, 35, 38, 40)]
    + [("lint", "large", 10.0, None, None)]
    + [("compile", "medium", 4.0, cpu, 50.0) for cpu in (90, 96, 97, 99, 100)]
    + [("docs", "xlarge", 40.0, 5.0, 5.0) for _ in range(4)]
    + [("tiny", "small", 1.0, 5.0, 5.0) for _ in range(5)]
)


def sized_usage() -> list[dict[str, Any]]:
    return [
        usage(f"s{i}", f"W{i}", "build", name, "main", cls, "success", "11-05 10:00:00", credits,
              max_cpu_pct=cpu, max_ram_pct=ram)
        for i, (name, cls, credits, cpu, ram) in enumerate(SIZED)
    ]  # fmt: skip


def test_rightsizing_hand_worked(db_url: str) -> None:
    """lint: p95 of max CPU (position 5 x 0.95 = 4.75) 38 + 2 x 0.75 = 39.5 and of RAM 30, both <= 40
    -> oversized; large -> medium+ (20 -> 15 credits a minute) saves 70 x (1 - 15/20) = 17.5.
    compile: median max CPU 97 -> starved. docs has too few sampled runs; tiny has no smaller class."""
    with closing(open_store(db_url)) as store:
        create_usage_table(store)
        write_usage(store, sized_usage())
        report = cost(store)
    found = [(r.job, r.resource_class, r.suggested_class, r.verdict, r.runs, r.credits, r.saved_credits,
              r.max_cpu_p95, r.max_ram_p95, r.max_cpu_median) for r in report.rightsizing]  # fmt: skip
    assert found == [
        ("lint", "large", "medium+", "oversized", 6, 70.0, 17.5, 39.5, 30.0, 32.5),
        ("compile", "medium", None, "starved", 5, 20.0, None, pytest.approx(99.8), 50.0, 97.0),
    ]


def test_rightsizing_thresholds_are_settable(db_url: str) -> None:
    with closing(open_store(db_url)) as store:
        create_usage_table(store)
        write_usage(store, sized_usage())
        strict = cost(store, options=CostOptions(thresholds=Thresholds(min_runs=4, oversized_pct=30.0,
                                                                        starved_pct=101.0)))  # fmt: skip
    assert [(r.job, r.verdict, r.suggested_class) for r in strict.rightsizing] == [
        ("docs", "oversized", "large")
    ]


def test_verdict_and_saving_rules() -> None:
    t = Thresholds()
    assert verdict(40.0, 40.0, 10.0, t) == "oversized"
    assert verdict(40.1, 10.0, 10.0, t) is None
    assert verdict(10.0, 40.1, 10.0, t) is None
    assert verdict(99.0, 99.0, 95.0, t) == "starved"
    assert verdict(99.0, 10.0, 94.9, t) is None
    assert saving(100.0, 20.0, 15.0) == 25.0
    assert saving(100.0, None, 15.0) is None and saving(100.0, 0.0, 0.0) is None


def test_an_older_store_gains_the_job_resources_from_its_job_details(db_url: str) -> None:
    """A store of the release before: job_runs without the two columns; the migration adds and fills them."""
    with closing(make_store(db_url)) as store, store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE job_runs DROP COLUMN resource_class"))
        conn.execute(text("ALTER TABLE job_runs DROP COLUMN parallelism"))
        conn.execute(update(s.schema_version).values(version=s.MIGRATIONS.index(s._job_resources)))
    with closing(open_store(db_url)) as store:
        with store.engine.connect() as conn:
            found = conn.execute(
                select(s.job_runs.c.id, s.job_runs.c.resource_class, s.job_runs.c.parallelism).order_by(
                    s.job_runs.c.id
                )
            ).all()
        assert [tuple(r) for r in found] == [
            ("J1", "large", 2), ("J2", "large", 1), ("J2b", "large", 1), ("J3", "weird.class", 1),
        ]  # fmt: skip
        assert cost(store).credits == 260.0


def test_report_json_carries_cost_and_capacity_as_issue_22_names_them(store: Store, tmp_path: Any) -> None:
    create_usage_table(store)
    write_usage(store, USAGE + sized_usage())
    out = io.StringIO()
    html = tmp_path / "report.html"
    run_report(store, project=None, since=SINCE, until=UNTIL, branch=None, fmt="json", html_path=html,
               console=Console(file=out, width=200), concurrency_cap=2)  # fmt: skip
    payload = json.loads(out.getvalue())
    cost, capacity = payload["cost"], payload["capacity"]
    assert cost["source"] == "usage-export" and cost["branch"] == "*" and "every branch" in cost["scope"]
    assert {"project_slug", "credits"} <= set(cost["by_project"][0])
    assert {"project_slug", "workflow", "job", "runs", "credits"} <= set(cost["by_job"][0])
    spent = [j["credits"] for j in cost["by_job"]]
    assert spent == sorted(spent, reverse=True)
    assert cost["by_resource_class"] and cost["by_week"]
    assert set(cost["lost"]) == {"failed", "reruns", "flaky_jobs", "flaky_tests"}
    sized = {"project_slug", "workflow", "job", "resource_class", "suggested_class", "verdict", "runs",
             "saved_credits"}  # fmt: skip
    assert cost["rightsizing"] and all(sized <= set(r) for r in cost["rightsizing"])
    concurrency = {"resource_class", "peak", "p95_daily_peak", "minutes_at_cap"}
    assert capacity["by_resource_class"] and all(concurrency <= set(c) for c in capacity["by_resource_class"])
    assert concurrency <= set(capacity["organisation"]) and capacity["concurrency_cap"] == 2
    page = html.read_text()
    assert 'id="cost"' in page and "Right-sizing" in page and "concurrency cap (2)" in page


def test_estimated_cost_is_labelled_in_the_terminal_and_the_page(store: Store, tmp_path: Any) -> None:
    out = io.StringIO()
    html = tmp_path / "report.html"
    run_report(store, project=None, since=SINCE, until=UNTIL, branch=None, fmt="table", html_path=html,
               console=Console(file=out, width=200))  # fmt: skip
    text = out.getvalue()
    assert "ESTIMATE" in text and "Credits (estimated)" in text
    assert "Cost and capacity (estimated)" in html.read_text()


def test_job_documents_carry_credits_and_utilisation_when_known(store: Store) -> None:
    without = {d["job_id"]: d for d in job_docs(store)}
    assert without["J1"]["credits"] is None and without["J1"]["max_cpu_pct"] is None
    create_usage_table(store)
    write_usage(store, [{**USAGE[0], "pipeline_id": "P1", "max_cpu_pct": 55.5, "median_ram_pct": 12.0}])
    docs = {d["job_id"]: d for d in job_docs(store)}
    j1 = docs["J1"]
    assert (j1["credits"], j1["user_credits"], j1["max_cpu_pct"], j1["median_ram_pct"]) == (
        20.0, 2.0, 55.5, 12.0,
    )  # fmt: skip
    assert docs["J2"]["credits"] is None
    trees = store.iter_trees(with_usage=True)
    dads = {d["workflow_job_id"]: d for d in dads_documents(trees, People.load(store))}
    found = (dads["J1"]["job_credits"], dads["J1"]["job_max_cpu_pct"], dads["J2"]["job_credits"])
    assert found == (20.0, 55.5, None)


def job_docs(store: Store) -> list[dict[str, Any]]:
    return [d for d in enrich_trees(store.iter_trees(with_usage=True), {}) if d["type"] == "job"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circleci_ds", *args], capture_output=True, text=True, timeout=300
    )


FIXTURE = (
    "native:\n  slug: acme\ndata_sources:\n- slug: circleci\n  projects:\n  - name: acme\n"
    "    endpoints:\n    - name: gh/acme/api\n  config:\n  - name: concurrency-cap\n    value: {cap}\n"
)


def test_cli_cap_from_the_fixture_rates_file_and_bad_values(tmp_path: Path) -> None:
    make_store(f"sqlite:///{tmp_path / 'store.db'}").close()
    db = f"sqlite:///{tmp_path / 'store.db'}"
    fixture, rates = tmp_path / "fixture.yaml", tmp_path / "rates.yaml"
    fixture.write_text(FIXTURE.format(cap=3))
    rates.write_text("large: 1\nweird.class: 2\n")
    window = ("--since", "2026-11-01", "--until", "2026-11-15")
    shown = cli("report", "--db", db, "--format", "json", "--fixture", str(fixture),
                "--credit-rates", str(rates), *window)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["capacity"]["concurrency_cap"] == 3
    estimate = (data["cost"]["source"], data["cost"]["credits"], data["cost"]["unpriced_runs"])
    assert estimate == ("estimate", 15.0, 0)  # large 1 x (10 + 2 + 1), weird.class 2 x 1
    assert cli("report", "--db", db, "--format", "json", "--concurrency-cap", "5", "--fixture", str(fixture),
               *window).stdout.count('"concurrency_cap": 5') == 1  # fmt: skip
    fixture.write_text(FIXTURE.format(cap="lots"))
    bad = cli("report", "--db", db, "--fixture", str(fixture))
    assert bad.returncode == 2 and "concurrency-cap" in bad.stderr and "Traceback" not in bad.stderr
    rates.write_text("large: -1\n")
    bad = cli("report", "--db", db, "--credit-rates", str(rates))
    assert bad.returncode == 2 and "credits per minute" in bad.stderr and "Traceback" not in bad.stderr
    rates.write_text("[unclosed\n")
    bad = cli("report", "--db", db, "--credit-rates", str(rates))
    assert bad.returncode == 2 and "invalid YAML" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("report", "--db", db, "--oversized-pct", "120").returncode == 2
