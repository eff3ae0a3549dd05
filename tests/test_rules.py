"""The incremental rules one by one, with plain values; each test is named after its rule in the docs
(docs/collection.md)."""

from __future__ import annotations

from circleci_ds.collect import rules
from circleci_ds.times import parse_ts

H = 3600.0
DAY = 24 * H


# -- rule 2: listing ----------------------------------------------------------------------------------------
def test_listing_floor_is_the_previous_checkpoint_or_from_date() -> None:
    assert rules.listing_floor(None, None) is None
    assert rules.listing_floor(100.0, None) == 100.0
    assert rules.listing_floor(100.0, 150.0) == 150.0
    assert rules.listing_floor(None, 150.0) == 150.0


def test_listing_stops_after_the_first_page_reaching_below_the_floor() -> None:
    assert rules.page_ends_listing([20.0, 10.0], 30.0)
    assert rules.page_ends_listing([40.0, 10.0], 30.0)  # newest first: the rest is older still
    assert not rules.page_ends_listing([50.0, 40.0], 30.0)
    assert not rules.page_ends_listing([], 30.0)  # an empty page says nothing
    assert not rules.page_ends_listing([None], 30.0)  # an undated pipeline may be new
    assert not rules.page_ends_listing([10.0], None)  # first run: everything


# -- rule 3: reruns, by job number --------------------------------------------------------------------------
def test_reruns_walk_starts_past_the_frontier() -> None:
    assert rules.walk_start(None, None) is None  # nothing stored: no walk, the listing reads all
    assert rules.walk_start(500, 700) == 501
    assert rules.walk_start(None, 700) == 701  # a store from before the frontier was kept


def test_reruns_walk_ends_after_misses_past_every_stored_number() -> None:
    assert rules.walk_done(last_probed=502, trailing_misses=2, stored_max=500)
    assert not rules.walk_done(last_probed=502, trailing_misses=1, stored_max=500)
    # 404s below a stored number are numbered approval jobs, not the end
    assert not rules.walk_done(last_probed=502, trailing_misses=2, stored_max=510)
    assert rules.walk_done(last_probed=512, trailing_misses=2, stored_max=510)
    assert rules.walk_done(last_probed=3, trailing_misses=2, stored_max=None)


def test_reruns_walk_probes_more_at_once_while_it_finds_jobs() -> None:
    assert rules.next_batch(2, True) == 4
    assert rules.next_batch(rules.WALK_BATCH_MAX, True) == rules.WALK_BATCH_MAX
    assert rules.next_batch(16, False) == rules.WALK_MISSES


def test_reruns_signal_names_stored_pipelines_missing_a_started_job() -> None:
    walked = {501: "p-old", 502: "p-new", 503: "p-known", 504: "p-unstored"}
    signaled = rules.rerun_signals(walked, stored_numbers={503}, stored_pipelines={"p-old", "p-known"})
    assert signaled == {"p-old"}  # p-new and p-unstored are not stored: the listing reads new ones


def test_reruns_frontier_counts_only_jobs_queued_before_the_run_began() -> None:
    details = [
        {"number": 10, "queued_at": "2026-11-01T00:00:00Z"},
        {"number": 12, "queued_at": "2026-11-01T00:10:00Z"},
        {"number": 11, "queued_at": None},
        {"number": "13", "queued_at": "2026-11-01T00:00:00Z"},
    ]
    start = parse_ts("2026-11-01T00:05:00Z")
    assert start is not None
    assert rules.started_before(details, start) == [10]
    assert rules.started_before([], start) == []


def test_reruns_frontier_never_moves_back() -> None:
    assert rules.next_frontier(500, None) == 500
    assert rules.next_frontier(500, 520, [510]) == 520
    assert rules.next_frontier(None, None, [42]) == 42
    assert rules.next_frontier(None, None) is None


def test_one_number_far_past_the_others_never_moves_the_frontier() -> None:
    """Details queued before the run count as far as they follow on in steps of at most WALK_GAP."""
    gap = rules.WALK_GAP
    assert rules.next_frontier(None, None, [40, 42, 41]) == 42
    assert rules.next_frontier(None, None, [40, 42, 42 + gap]) == 42 + gap
    assert rules.next_frontier(None, None, [40, 42, 43 + gap, 2**31 - 2]) == 42
    assert rules.next_frontier(500, 520, [530, 10**9]) == 530
    assert rules.next_frontier(500, None, [100, 2**31 - 2]) == 500


def test_a_long_run_of_404s_ends_the_walk_even_below_stored_numbers() -> None:
    assert not rules.walk_done(1000, rules.WALK_GAP - 1, stored_max=2**31 - 2)
    assert rules.walk_done(1000, rules.WALK_GAP, stored_max=2**31 - 2)
    assert rules.walk_done(1000, rules.WALK_MISSES, stored_max=900)
    assert not rules.walk_done(1000, rules.WALK_MISSES, stored_max=999)


def test_reruns_frontier_covers_the_stored_numbers_just_past_it() -> None:
    assert rules.extend_frontier(10, {11, 12, 14}) == 12  # 13 is unaccounted for: it stops there
    assert rules.extend_frontier(10, set()) == 10


def test_reruns_details_name_their_pipeline() -> None:
    assert rules.details_pipeline({"pipeline": {"id": "p1"}}) == "p1"
    assert rules.details_pipeline({"pipeline": None}) is None
    assert rules.details_pipeline({"pipeline": {"id": 7}}) is None
    assert rules.details_pipeline({}) is None


# -- rule 4: reruns that wait (the age-spaced re-read) -------------------------------------------------------
def test_reruns_that_wait_reread_when_the_age_has_doubled() -> None:
    created = 0.0
    # last read at age 4 h: due again at age 8 h
    assert not rules.reread_due(created, 4 * H, 7.9 * H, horizon=72 * H)
    assert rules.reread_due(created, 4 * H, 8 * H, horizon=72 * H)
    # never sooner than MIN_REREAD_GAP after the last read
    assert not rules.reread_due(created, 60.0, 120.0 + 0.5 * H, horizon=72 * H)
    assert rules.reread_due(created, 60.0, 60.0 + rules.MIN_REREAD_GAP, horizon=72 * H)


def test_reruns_that_wait_stop_once_read_at_the_horizon() -> None:
    assert rules.reread_due(0.0, 71 * H, 200 * H, horizon=72 * H)
    assert not rules.reread_due(0.0, 72 * H, 1000 * H, horizon=72 * H)


def test_reruns_that_wait_unchanged_rerun_reads_nothing() -> None:
    # the clock did not move since the last read: nothing is due, whatever the age
    for age in (0.0, H, DAY, 3 * DAY):
        assert not rules.reread_due(0.0, age, age, horizon=72 * H)


# -- rule 5: open pipelines; needs re-read ---------------------------------------------------------------
def _needs(**changes: object) -> bool:
    base: dict[str, object] = {
        "stored": True,
        "is_final": True,
        "listing_changed": False,
        "signaled": False,
        "created_at": 0.0,
        "fetched_at": 10 * DAY,
        "now": 10 * DAY + 60,
        "horizon": 72 * H,
    }
    base.update(changes)
    return rules.needs_read(**base)  # type: ignore[arg-type]


def test_open_pipelines_and_new_changed_or_signaled_ones_are_read() -> None:
    assert not _needs()
    assert _needs(stored=False)
    assert _needs(is_final=False)
    assert _needs(listing_changed=True)
    assert _needs(signaled=True)
    assert _needs(fetched_at=None)


def test_pipeline_is_final_only_when_every_workflow_and_job_is() -> None:
    done = {"status": "success", "jobs": [{"status": "success"}]}
    assert rules.pipeline_is_final({"state": "created", "workflows": [done]})
    assert not rules.pipeline_is_final({"state": "setup-pending", "workflows": [done]})
    held = {"status": "on_hold", "jobs": [{"status": "on_hold"}]}
    assert not rules.pipeline_is_final({"state": "created", "workflows": [done, held]})
    late_job = {"status": "failed", "jobs": [{"status": "running"}]}
    assert not rules.pipeline_is_final({"state": "created", "workflows": [late_job]})


# -- rule 6: only what changed ------------------------------------------------------------------------------
def test_only_what_changed_jobs_reusable_when_workflow_unchanged_and_settled() -> None:
    wf = {"id": "w", "status": "success"}
    jobs = [{"id": "j", "status": "success"}]
    assert rules.jobs_reusable({**wf, "jobs": jobs}, wf, jobs)
    assert not rules.jobs_reusable(None, wf, jobs)
    assert not rules.jobs_reusable({**wf, "jobs": jobs}, {**wf, "status": "failed"}, jobs)
    assert not rules.jobs_reusable({**wf, "jobs": [{"status": "running"}]}, wf, [{"status": "running"}])


def test_only_what_changed_jobs_reusable_while_on_hold_and_waiting() -> None:
    wf = {"id": "w", "status": "on_hold"}
    waiting = [{"status": "success"}, {"status": "on_hold"}, {"status": "blocked"}]
    assert rules.jobs_reusable({**wf, "jobs": waiting}, wf, waiting)
    running = [*waiting, {"status": "running"}]
    assert not rules.jobs_reusable({**wf, "jobs": running}, wf, running)
    busy = {"id": "w", "status": "running"}
    assert not rules.jobs_reusable({**busy, "jobs": waiting}, busy, waiting)


def test_only_what_changed_details_reusable_while_job_unchanged_and_in_step() -> None:
    job = {"id": "j", "status": "success", "job_number": 5}
    assert rules.details_reusable(job, {**job, "details": {"status": "success"}})
    assert rules.details_reusable(job, {**job, "details": None})  # finished without details (404)
    assert not rules.details_reusable(job, None)
    assert not rules.details_reusable(job, {**job, "status": "running", "details": {"status": "running"}})
    assert not rules.details_reusable(job, {**job, "details": {"status": "running"}})
    running = {"id": "j", "status": "running", "job_number": 5}
    assert rules.details_reusable(running, {**running, "details": {"status": "running"}})
    assert not rules.details_reusable(running, {**running, "details": None})


def test_only_what_changed_walked_details_serve_jobs_in_the_same_status() -> None:
    job = {"status": "success"}
    assert rules.walked_details_usable(job, {"status": "success"})
    assert not rules.walked_details_usable(job, {"status": "running"})
    assert rules.walked_details_usable({"status": "running"}, {"status": "running"})
    assert not rules.walked_details_usable(job, None)


def test_only_what_changed_details_only_for_numbered_build_jobs() -> None:
    assert rules.wants_details({"type": "build", "job_number": 3})
    assert not rules.wants_details({"type": "approval", "job_number": 3})
    assert not rules.wants_details({"type": "build"})


# -- project info ----------------------------------------------------------------------------------------
def test_project_info_read_when_missing_or_older_than_a_day() -> None:
    assert rules.project_info_stale(None, 0.0)
    assert not rules.project_info_stale(0.0, DAY)
    assert rules.project_info_stale(0.0, DAY + 1)


def test_project_info_default_branch_from_the_most_common_branch() -> None:
    assert rules.default_branch_from(["main", "feature/x", "main", None, "dev"]) == "main"
    assert rules.default_branch_from(["dev", "main", "main", "dev"]) == "dev"  # a tie: the newest
    assert rules.default_branch_from([None, None]) is None


# -- malformed items ----------------------------------------------------------------------------------------
def test_malformed_items_are_named_and_fail_alone() -> None:
    good = {"id": "p1", "number": 3, "state": "created", "created_at": "2026-11-01T00:00:00Z"}
    assert rules.item_problem("pipeline", good) is None
    assert rules.item_problem("pipeline", {**good, "id": None}) == "pipeline without a usable id"
    assert rules.item_problem("pipeline", {k: v for k, v in good.items() if k != "id"})
    assert rules.item_problem("pipeline", "p1") == "pipeline is not an object"
    assert rules.item_problem("pipeline", {**good, "id": "x" * 65})
    assert rules.item_problem("pipeline", {**good, "number": "3"}) == "pipeline p1: bad number"
    assert rules.item_problem("pipeline", {**good, "number": True})
    assert rules.item_problem("pipeline", {**good, "created_at": 5}) == "pipeline p1: bad created_at"
    assert rules.item_problem("workflow", {"id": "w", "status": ["x"]}) == "workflow w: bad status"
    assert rules.item_problem("job", {"id": "j", "job_number": 2**70}) == "job j: bad job_number"
    assert rules.item_problem("job", {"id": "j", "status": "success", "type": "build"}) is None
