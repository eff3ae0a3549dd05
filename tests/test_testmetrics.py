"""Test metrics against hand-worked values and against an independent computation from the simulator.

Hand-worked history (project gh/acme/x, default branch main, job name `unit`; run times in seconds;
F failed, P passed, S skipped; T = 2026-11-01T00:00:00Z, times in seconds after T):

| job | branch  | commit | created | stopped | duration | status  | A      | B      | C         |
|-----|---------|--------|---------|---------|----------|---------|--------|--------|-----------|
| 1   | main    | c1     | 0       | 100     | 100      | failed  | F 0.1  | P 0.1  | P 1.0     |
| 2   | main    | c1     | 200     | 300     | 90       | success | P 0.1  | P 0.1  | P 3.0     |
| 3   | main    | c2     | 400     | 500     | 80       | failed  | F 0.1  | F 0.1  | P 2.0     |
| 4   | main    | c2     | 600     | 700     | 70       | failed  | P 0.1  | F 0.1  | P 4.0     |
| 5   | main    | c3     | 800     | 900     | 60       | success | P 0.1  | S      | P 5.0     |
| 6   | feature | c4     | 1000    | 1100    | 50       | success | P 0.1  | P 0.1  | P 100.0   |
| 7   | main    | c3     | 1200    | -       | -        | (being read: marker `reading`) F on A |

Expected, default branch (jobs 1-5; job 7 is invisible):
- flaky: A on c1 (F job 1, P job 2) and c2 (F job 3, P job 4): commits [c2, c1], times_flaked 2,
  last_flaked T+500, web_url and message of job 3. B failed only on c2, where it never passed: not flaky.
- most failed: B 2 failures / 4 runs = 0.5 (skipped is no run), then A 2 / 5 = 0.4.
- slowest: C over [1, 2, 3, 4, 5]: p50 3.0, p95 = 4 + 0.8 * (5 - 4) = 4.8; A and B 0.1.
  With all branches C adds 100: p50 = 3 + 0.5 * 1 = 3.5, p95 = 5 + 0.75 * 95 = 76.25.
- time lost: job 1 (its only failure, A, passed later on c1 in job 2): 1 job, 100 s. Job 3 also
  failed on B, which never passed later on c2; job 4 failed on B with nothing later.
- counts: day 2026-11-01, 5 jobs, 2 to 3 tests (job 5 has 3 results, one skipped: all 3 count).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from circleci_ds.collect.tests import save_items
from circleci_ds.derive.facts import open_store
from circleci_ds.derive.tests import job_context, outcome
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.metrics.sqlstats import percentile
from circleci_ds.metrics.tests import compute_tests
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import Store
from circleci_ds.store.schema import test_cases
from circleci_ds.store.testresults import TestJob, raw_items
from collect_helpers import store_test_truth

T = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
SLUG = "gh/acme/x"
CLASS = "tests.test_x.TestX"


def item(name: str, result: str, run_time: float = 0.1) -> dict[str, Any]:
    message = f"{name} broke </script>" if result == "failure" else None
    return {"message": message, "source": "pytest", "run_time": run_time, "file": "tests/test_x.py",
            "result": result, "name": name, "classname": CLASS}


# (number, branch, commit, created, stopped, duration, status, results of A, B, C)
JOBS = [
    (1, "main", "c1", 0, 100, 100, "failed", "failure", "success", 1.0),
    (2, "main", "c1", 200, 300, 90, "success", "success", "success", 3.0),
    (3, "main", "c2", 400, 500, 80, "failed", "failure", "failure", 2.0),
    (4, "main", "c2", 600, 700, 70, "failed", "success", "failure", 4.0),
    (5, "main", "c3", 800, 900, 60, "success", "success", "skipped", 5.0),
    (6, "feature", "c4", 1000, 1100, 50, "success", "success", "success", 100.0),
]


def hand_job(
    number: int, branch: str, commit: str, created: float, stopped: float | None,
    duration: float | None, status: str,
) -> TestJob:
    at = None if stopped is None else T + stopped
    return TestJob(
        SLUG, number, f"job-{number}", "p", "w", "build", "unit", branch, commit, status,
        T + created, T + created, at, duration, f"https://ci/{number}",
    )


@contextmanager
def opened(url: str) -> Iterator[Store]:
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


def write_hand_worked(store: Store) -> None:
    store.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/x")
    store.save_project_info(SLUG, {"slug": SLUG, "vcs_info": {"default_branch": "main"}})
    for number, branch, commit, created, stopped, duration, status, a, b, c in JOBS:
        results = [item("A", a), item("B", b, 0.0 if b == "skipped" else 0.1), item("C", "success", c)]
        save_items(store, hand_job(number, branch, commit, created, stopped, duration, status), results,
                   seq=0, final=True)
    partial = hand_job(7, "main", "c3", 1200, None, None, "failed")
    save_items(store, partial, [item("A", "failure")], seq=0, final=False)


def test_hand_worked_table(db_url: str) -> None:
    with opened(db_url) as store:
        write_hand_worked(store)
        report = compute_tests(store, Window())
        everywhere = compute_tests(store, Window(branch=ALL_BRANCHES))
    [flaky] = report.flaky
    assert (flaky.name, flaky.commits, flaky.flaky_commits, flaky.times_flaked) == ("A", ["c2", "c1"], 2, 2)
    assert flaky.last_flaked == "2026-11-01T00:08:20Z"
    assert (flaky.web_url, flaky.message) == ("https://ci/3", "A broke </script>")
    where = (flaky.project_slug, flaky.job, flaky.classname, flaky.file)
    assert where == (SLUG, "unit", CLASS, "tests/test_x.py")
    assert [(t.name, t.failures, t.runs, t.failure_rate) for t in report.most_failed] == [
        ("B", 2, 4, 0.5), ("A", 2, 5, 0.4)
    ]
    assert [(t.name, t.runs, t.run_time_p50, t.run_time_p95) for t in report.slowest] == [
        ("C", 5, 3.0, pytest.approx(4.8)), ("A", 5, 0.1, 0.1), ("B", 4, 0.1, 0.1)
    ]
    assert (everywhere.slowest[0].run_time_p50, everywhere.slowest[0].run_time_p95) == (3.5, 76.25)
    assert [(x.project_slug, x.jobs, x.seconds) for x in report.time_lost] == [(SLUG, 1, 100.0)]
    assert [(p.day, p.jobs, p.tests_min, p.tests_max) for p in report.counts] == [("2026-11-01", 5, 3, 3)]


def test_hostile_names_fit_the_columns_and_indexes_of_every_backend(db_url: str) -> None:
    wide = "\U0001d54f" * 1000  # 4 bytes of UTF-8 each: far past PostgreSQL's index entry bound
    job = job_context(
        SLUG,
        {"type": "build", "job_number": 9, "id": "j9", "name": "\u00fc" * 400, "status": "success"},
        {"id": "w9", "name": "\u00e9" * 400, "created_at": "2026-11-01T00:00:00Z"},
        {"id": "p9", "vcs": {"branch": "b" * 400, "revision": "c" * 100}},
    )
    items = [{"classname": wide, "name": wide + str(i), "file": wide, "result": "success"} for i in range(2)]
    with opened(db_url) as store:
        store.ensure_endpoint(SLUG, "acme", "https://circleci.com/gh/acme/x")
        save_items(store, job, items, seq=0, final=True)
        assert raw_items(store, SLUG, 9) == items  # kept as returned
        with store.engine.connect() as conn:
            cases = conn.execute(select(test_cases.c.job_name, test_cases.c.classname)).all()
    assert len(cases) == 1  # both names cut to the same 500 bytes: one test
    assert all(len(text.encode()) <= 500 for row in cases for text in row)


def test_window_and_project_select_jobs_by_workflow_creation(db_url: str) -> None:
    with opened(db_url) as store:
        write_hand_worked(store)
        late = compute_tests(store, Window(since=T + 300))  # jobs 3-5
        other = compute_tests(store, Window(project="someone-else"))
    assert [(t.name, t.failures, t.runs) for t in late.most_failed] == [("B", 2, 2), ("A", 1, 3)]
    assert [(f.name, f.commits) for f in late.flaky] == [("A", ["c2"])]
    assert other == dataclasses.replace(other, flaky=[], most_failed=[], slowest=[], time_lost=[], counts=[])


# -- against the simulator's truth -------------------------------------------------------------------


def independent(truth: list[dict[str, Any]], slug: str, default: str, window: Window) -> dict[str, Any]:
    """The metrics' definitions computed over the truth, without the store."""
    def timely(job: dict[str, Any]) -> bool:
        created = job["workflow_created_ms"] / 1000
        after = window.since is None or created >= window.since
        return after and (window.until is None or created < window.until)

    branch = None if window.branch == ALL_BRANCHES else (window.branch or default)
    jobs = [j for j in truth if j["items"] and timely(j)]
    measured = [j for j in jobs if branch is None or j["branch"] == branch]

    def key(job: dict[str, Any], it: dict[str, Any]) -> tuple[str, str, str, str]:
        return slug, job["job_name"], it["classname"], it["name"]

    by_commit: dict[tuple[Any, ...], dict[str, list[Any]]] = defaultdict(lambda: {"p": [], "f": []})
    for job in jobs:
        for it in job["items"]:
            if job["commit"] is not None and outcome(it["result"]) is not None:
                side = "p" if outcome(it["result"]) == 1 else "f"
                by_commit[key(job, it), job["commit"]][side].append((job, it))
    flaky: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    for (test, commit), sides in by_commit.items():
        if sides["p"] and sides["f"]:
            flaky[test] += [(j["stopped_at_ms"] / 1000, j["job_number"], commit, j, i) for j, i in sides["f"]]
    flaky_rows = []
    for test, fails in flaky.items():
        fails.sort(reverse=True, key=lambda f: (f[0], f[1]))
        commits = list(dict.fromkeys(f[2] for f in fails))
        latest_job, latest_item = fails[0][3], fails[0][4]
        latest = (latest_job["web_url"], latest_item["message"])
        flaky_rows.append((len(fails), fails[0][0], test, commits, *latest))
    flaky_rows.sort(key=lambda r: (-r[0], -r[1], r[2]))

    runs: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    for job in measured:
        for it in job["items"]:
            if outcome(it["result"]) is not None:
                runs[key(job, it)].append((outcome(it["result"]), it["run_time"]))
    failed = [(sum(o == 0 for o, _ in r), len(r), t) for t, r in runs.items() if any(o == 0 for o, _ in r)]
    failed.sort(key=lambda f: (-f[0], f[1], f[2]))
    slow = []
    for test, r in runs.items():
        times = sorted(rt for _, rt in r)
        slow.append((percentile(times, 0.95), percentile(times, 0.5), len(times), test))
    slow.sort(key=lambda x: (-x[0], -x[1], x[3]))

    lost = [0, 0.0]
    for job in jobs:
        fails = [it for it in job["items"] if outcome(it["result"]) == 0]
        if not fails or job["commit"] is None:
            continue
        def recovered(it: dict[str, Any], job: dict[str, Any] = job) -> bool:
            return any(
                other["commit"] == job["commit"] and other["job_name"] == job["job_name"]
                and other["stopped_at_ms"] > job["stopped_at_ms"]
                and any(key(other, o) == key(job, it) and outcome(o["result"]) == 1 for o in other["items"])
                for other in jobs
            )
        if all(recovered(it) for it in fails):
            lost[0] += 1
            lost[1] += (job["stopped_at_ms"] - job["started_at_ms"]) / 1000
    return {"flaky": flaky_rows, "failed": failed, "slow": slow, "lost": lost}


SIM_SLUG = "gh/acme/api"


@pytest.fixture(scope="module")
def sims() -> dict[int, Simulator]:
    out = {}
    for seed in (1, 2):
        sim = Simulator(SimConfig(seed=seed, projects=[SimProject(SIM_SLUG, pipelines=60)], rerun_rate=0.6))
        sim.advance(3 * 86400)
        out[seed] = sim
    return out


@pytest.fixture(scope="module")
def stores(
    sims: dict[int, Simulator], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[int, Store]]:
    out = {}
    for seed, sim in sims.items():
        path: Path = tmp_path_factory.mktemp(f"seed{seed}") / "store.db"
        store = open_store(f"sqlite:///{path}")
        store_test_truth(store, sim, [SIM_SLUG])
        out[seed] = store
    yield out
    for store in out.values():
        store.close()


START = datetime(2026, 10, 1, tzinfo=UTC).timestamp()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.sampled_from([1, 2]),
    since=st.none() | st.floats(START, START + 33 * 86400),
    span=st.none() | st.floats(86400, 40 * 86400),
    branch=st.sampled_from([None, ALL_BRANCHES, "main", "feature/search"]),
    limit=st.sampled_from([3, 1000]),
)
def test_metrics_equal_an_independent_computation_from_the_truth(
    sims: dict[int, Simulator], stores: dict[int, Store], seed: int, since: float | None, span: float | None,
    branch: str | None, limit: int,
) -> None:
    until = None if span is None else (since or START) + span
    window = Window(since=since, until=until, branch=branch)
    got = compute_tests(stores[seed], window, limit=limit)
    want = independent(sims[seed].test_truth(SIM_SLUG), SIM_SLUG, "main", window)
    assert [
        (f.times_flaked, (f.project_slug, f.job, f.classname, f.name), f.commits, f.web_url, f.message)
        for f in got.flaky
    ] == [(r[0], r[2], r[3][:10], r[4], r[5]) for r in want["flaky"][:limit]]
    assert [(t.failures, t.runs, (t.project_slug, t.job, t.classname, t.name)) for t in got.most_failed] == [
        tuple(f) for f in want["failed"][:limit]
    ]
    assert [(pytest.approx(t.run_time_p95), pytest.approx(t.run_time_p50), t.runs,
             (t.project_slug, t.job, t.classname, t.name)) for t in got.slowest] == want["slow"][:limit]
    lost = got.time_lost[0] if got.time_lost else None
    assert (lost.jobs if lost else 0, pytest.approx(lost.seconds if lost else 0.0)) == tuple(want["lost"])


def test_the_simulated_history_has_flaky_and_failing_tests(sims: dict[int, Simulator]) -> None:
    for sim in sims.values():
        want = independent(sim.test_truth(SIM_SLUG), SIM_SLUG, "main", Window(branch=ALL_BRANCHES))
        assert want["flaky"] and want["failed"] and want["lost"][0] > 0
