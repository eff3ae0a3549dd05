"""Job names that store no test results are read less often (circleci_ds.derive.tests.reads_tests)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console

import circleci_ds.derive.tests as rules
from builders import unread_job as job
from circleci_ds.collect.tests import write_jobs
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.report import run_report
from circleci_ds.store import Store
from circleci_ds.store import testresults as db
from collect_helpers import collect
from test_testresults_collect import FIXTURE, _run_collect, assert_tests_match_truth, markers
from test_testresults_collect import threaded as threaded  # a fixture: a simulator on a thread

SLUG = "gh/acme/api"
DAY = 86400.0


def test_a_quiet_name_is_read_when_it_failed_or_is_sampled() -> None:
    n = rules.QUIET_AFTER
    unsampled = next(i for i in range(1, 1000) if not rules.sampled(i))
    picked = next(i for i in range(1, 1000) if rules.sampled(i))
    assert rules.reads_tests(job(unsampled), n - 1), "not quiet yet"
    assert not rules.reads_tests(job(unsampled), n)
    assert rules.reads_tests(job(unsampled, status="failed"), n)
    assert rules.reads_tests(job(picked), n + 50)


def test_sampling_picks_one_number_in_sample_every_whatever_their_stride() -> None:
    every = rules.SAMPLE_EVERY
    for stride in (1, every, 10 * every):
        numbers = range(7, 7 + stride * 20_000, stride)
        share = sum(map(rules.sampled, numbers)) / len(numbers)
        assert abs(share - 1 / every) < 0.25 / every, (stride, share)


def test_a_name_storing_results_again_forgets_its_skipped_jobs_since_its_last_empty_read(
    sqlite_url: str,
) -> None:
    store = open_store(sqlite_url)
    try:
        store.ensure_endpoint(SLUG, "acme", f"https://circleci.com/{SLUG}")
        empty: list[Any] = []
        write_jobs(store, [(job(1), empty), (job(2), None), (job(3), empty), (job(4), None)], {})
        write_jobs(store, [(job(5), None), (job(6, "unit"), None)], {})
        assert db.quiet_streaks(store, SLUG) == {"lint": 2}
        # lint's job 7 stored results: 4 and 5 may have too; 2 not (3, read after it, stored none)
        assert db.unskip(store, SLUG, {"lint": 7}) == 2
        states = {n: state for (_, n), (state, _) in markers(sqlite_url).items()}
        assert states == {1: "none", 2: "skipped", 3: "none", 6: "skipped"}
        assert db.skipped_jobs(store) == 2
    finally:
        store.close()


async def test_quiet_names_are_sampled_and_every_result_is_still_collected(sqlite_url: str) -> None:
    projects = [SimProject(SLUG, pipelines=60)]
    sim = Simulator(SimConfig(seed=5, projects=projects, untested_share=0.5))
    sim.advance(3 * DAY)
    async with sim.serve() as url:
        await collect(url, sqlite_url, [SLUG], tests=True)
        assert_tests_match_truth(sqlite_url, sim, [SLUG])  # every result of the jobs that have some
        first = markers(sqlite_url)
        skipped = {number for (_, number), (state, _) in first.items() if state == db.Marker.SKIPPED}
        none = {number for (_, number), (state, _) in first.items() if state == db.Marker.NONE}
        assert len(skipped) > 2 * len(none), "most jobs that store nothing are not read"
        assert sim.stats["by_endpoint"]["tests"] >= len(first) - len(skipped)  # pages: a request or more
        failed = {
            number
            for number, found in _jobs(sim).items()
            if found.status == "failed" and (SLUG, number) in first
        }
        assert not failed & skipped, "a failed job is always read"
        jobs = _jobs(sim)
        quiet = {jobs[number].job_name for number in skipped}
        assert any(jobs[number].job_name in quiet for number in failed), "the history has a quiet failure"

        sim.reset_stats()
        await collect(url, sqlite_url, [SLUG], tests=True, tests_all=True)
        after = markers(sqlite_url)
        assert sim.stats["by_endpoint"]["tests"] == len(skipped)
        assert not any(state == db.Marker.SKIPPED for state, _ in after.values())
        assert {k: v for k, v in after.items() if v[0] != db.Marker.NONE} == {
            k: v for k, v in first.items() if v[0] == db.Marker.DONE
        }
    assert_tests_match_truth(sqlite_url, sim, [SLUG])


def _jobs(sim: Simulator) -> dict[int, rules.TestJob]:
    """The project's finished build jobs (number, name and status are what the tests look at)."""
    project = sim.history.project(SLUG)
    assert project is not None
    now = sim.view.now
    out = {}
    for number, found in project.jobs_by_number.items():
        stopped = found.run.stopped_at
        if found.spec.kind == "build" and stopped is not None and stopped <= now:
            status = found.run.timeline[-1][1]
            out[number] = job(number, found.spec.name, status)
    return out


def test_the_report_says_how_many_jobs_were_not_read(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    try:
        store.ensure_endpoint(SLUG, "acme", f"https://circleci.com/{SLUG}")
        store.save_project_info(SLUG, {"slug": SLUG, "vcs_info": {"default_branch": "main"}})
        write_jobs(store, [(job(1), []), (job(2), None), (job(3), None), (job(4, "unit"), None)], {})
        text, data = (_report(store, fmt) for fmt in ("table", "json"))
    finally:
        store.close()
    assert json.loads(data)["tests"]["jobs_not_read"] == 3
    assert "Test results of 3 job(s) not read" in text


def _report(store: Store, fmt: str) -> str:
    out = io.StringIO()
    run_report(store, project=None, since=1.6e9, until=1.8e9, branch=None, fmt=fmt, html_path=None,
               console=Console(file=out, width=400))  # fmt: skip
    return out.getvalue()


def test_collect_tests_all_reads_what_auto_skipped(
    threaded: Simulator, tmp_path: Path, sqlite_url: str
) -> None:
    fixture = tmp_path / "fixture.yaml"
    fixture.write_text(FIXTURE.format(extra=""))
    for args, skipped in (((), True), (("--tests", "all"), False), (("--no-tests",), False)):
        proc = _run_collect(threaded, fixture, sqlite_url, *args)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        states = {state for state, _ in markers(sqlite_url).values()}
        assert (db.Marker.SKIPPED in states) is skipped, args
    assert_tests_match_truth(sqlite_url, threaded, ["gh/acme/api"])
