"""The incremental rules, as pure functions of stored state and listed data (docs/collection.md).

Nothing here does I/O; `collect.py` asks these functions what to read and keeps only the reading.
- Listing floor: pipelines come newest first; paging stops after the first page that reaches below
  the previous checkpoint (or `--from-date`).
- Needs re-read: a stored pipeline is read again when it is not final, its listing entry changed,
  a rerun signal names it, or the age-spaced re-read is due.
- Reusable: a workflow's stored jobs when it is unchanged and settled; a job's stored details when
  the job's list entry is unchanged and they agree with its status.
- Rerun signals: job numbers are given per project in the order jobs start, so the numbers past the
  job frontier tell what started since; their details name the pipeline to read again.
- Fallback: a rerun whose new jobs all wait (blocked, on hold) carries no started job; a final
  pipeline is also read again as its age doubles (from `MIN_REREAD_GAP`), until it was last read at
  an age of `horizon` (`--lookback`) or more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from circleci_ds.client.values import is_id, is_number
from circleci_ds.times import parse_ts

FINAL_PIPELINE_STATES = frozenset({"created", "errored"})
FINAL_WORKFLOW_STATUSES = frozenset({"success", "failed", "error", "canceled", "not_run", "unauthorized"})
OPEN_JOB_STATUSES = frozenset({"queued", "running", "not_running", "blocked", "on_hold"})
WAITING_JOB_STATUSES = frozenset({"blocked", "on_hold"})  # cannot move while their workflow holds

HOUR = 3600.0
DAY = 24 * HOUR
MIN_REREAD_GAP = HOUR  # the age-spaced re-read never comes sooner than this after the last read
PROJECT_INFO_MAX_AGE = DAY  # GET /project/{slug} is read again when older than this
WALK_MISSES = 2  # numbers in a row that answer 404 (past every stored number) end the walk
WALK_BATCH_MAX = 16  # numbers probed at once while the walk keeps finding jobs (and the most it overshoots)
WALK_GAP = 500  # numbers in a row that answer 404 end the walk even below stored numbers (an absurd one)


# -- finality ---------------------------------------------------------------------------------------------
def workflow_is_final(workflow: Mapping[str, Any]) -> bool:
    return workflow.get("status") in FINAL_WORKFLOW_STATUSES


def job_is_open(job: Mapping[str, Any]) -> bool:
    return job.get("status") in OPEN_JOB_STATUSES


def pipeline_is_final(tree: Mapping[str, Any]) -> bool:
    """Final: its state is settled and every workflow and job is final."""
    if tree.get("state") not in FINAL_PIPELINE_STATES:
        return False
    return all(
        workflow_is_final(wf) and not any(job_is_open(job) for job in wf.get("jobs") or [])
        for wf in tree.get("workflows") or []
    )


def wants_details(job: Mapping[str, Any]) -> bool:
    """Details exist only for build jobs with a number (approval jobs answer 404)."""
    return job.get("type") == "build" and job.get("job_number") is not None


# -- listing -----------------------------------------------------------------------------------------------
def listing_floor(checkpoint: float | None, from_date: float | None) -> float | None:
    """Pipelines created before this are known already (or not wanted); None lists everything."""
    floors = [x for x in (checkpoint, from_date) if x is not None]
    return max(floors) if floors else None


def page_ends_listing(created: Iterable[float | None], floor: float | None) -> bool:
    """The listing is newest first: the first page that reaches below the floor is the last."""
    return floor is not None and any(t is not None and t < floor for t in created)


# -- re-reading stored pipelines ------------------------------------------------------------------------
def reread_due(created_at: float | None, fetched_at: float | None, now: float, horizon: float) -> bool:
    """The age-spaced safety net: read a final pipeline again when its age has doubled since the
    last read (and at least MIN_REREAD_GAP passed), while it was last read younger than `horizon`."""
    if created_at is None or fetched_at is None:
        return True
    age_at_read = fetched_at - created_at
    if age_at_read >= horizon:
        return False
    return now - fetched_at >= max(MIN_REREAD_GAP, age_at_read)


def needs_read(
    *,
    stored: bool,
    is_final: bool,
    listing_changed: bool,
    signaled: bool,
    created_at: float | None,
    fetched_at: float | None,
    now: float,
    horizon: float,
) -> bool:
    """Whether a pipeline's workflows are read in this run."""
    if not stored or not is_final or listing_changed or signaled:
        return True
    return reread_due(created_at, fetched_at, now, horizon)


def jobs_reusable(
    old: Mapping[str, Any] | None, listed: Mapping[str, Any], old_jobs: list[Mapping[str, Any]]
) -> bool:
    """A workflow's stored jobs stand when its JSON is unchanged and no job can move without it:
    final with every job final, or on hold with every unfinished job waiting."""
    if old is None or {k: v for k, v in old.items() if k != "jobs"} != listed:
        return False
    if workflow_is_final(listed):
        return not any(job_is_open(job) for job in old_jobs)
    if listed.get("status") == "on_hold":
        return all(not job_is_open(job) or job.get("status") in WAITING_JOB_STATUSES for job in old_jobs)
    return False


def details_reusable(job: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Stored details stand while the job's list entry is unchanged and they agree with its status
    (what details show moves with the status: started, stopped, duration); a job that finished
    without details (404) stays without."""
    if old is None or {k: v for k, v in old.items() if k != "details"} != job:
        return False
    details = old.get("details")
    if details is None:
        return not job_is_open(job)
    return isinstance(details, dict) and details.get("status") == job.get("status")


def walked_details_usable(job: Mapping[str, Any], walked: Mapping[str, Any] | None) -> bool:
    """Details fetched by this run's walk serve the job when they agree with its listed status."""
    return walked is not None and walked.get("status") == job.get("status")


# -- rerun signals: the job-number walk --------------------------------------------------------------------
def walk_start(frontier: int | None, stored_max: int | None) -> int | None:
    """The first number to probe; None (no walk) before anything was stored."""
    if frontier is not None:
        return frontier + 1
    return stored_max + 1 if stored_max is not None else None


def walk_done(last_probed: int, trailing_misses: int, stored_max: int | None) -> bool:
    """The walk ends after WALK_MISSES 404s in a row, all past every stored job number
    (numbered approval jobs answer 404 too, so short gaps below stored numbers do not end it), or
    after WALK_GAP 404s in a row wherever they are: no run of approval jobs is that long, and a
    stored number far past the others (a server's lie) must not make every run probe up to it."""
    past_stored = stored_max is None or last_probed - trailing_misses >= stored_max
    return (trailing_misses >= WALK_MISSES and past_stored) or trailing_misses >= WALK_GAP


def next_batch(size: int, found_any: bool) -> int:
    """Probe more numbers at once while the walk keeps finding jobs, few once it stops."""
    return min(WALK_BATCH_MAX, size * 2) if found_any else WALK_MISSES


def started_before(details: Iterable[Mapping[str, Any]], start: float) -> list[int]:
    """The job numbers of details queued before `start` (the server's time when the run began): every
    job numbered since then has a higher number."""
    numbers = []
    for d in details:
        number, queued = d.get("number"), parse_ts(d.get("queued_at"))
        if isinstance(number, int) and is_number(number) and queued is not None and queued < start:
            numbers.append(number)
    return numbers


def chain_top(base: int | None, numbers: Iterable[int]) -> int | None:
    """The highest of `numbers` reached from `base` (from the lowest number without one) in steps of
    at most WALK_GAP: a number far past the others, which only a lying server gives, is not reached."""
    top = base
    for number in sorted(numbers):
        if top is None or top < number <= top + WALK_GAP:
            top = number
        elif number > top:
            break
    return top


def next_frontier(previous: int | None, walked_top: int | None, queued: Iterable[int] = ()) -> int | None:
    """The frontier after a successful run: nothing at or below it can start unseen. `walked_top`
    answered the walk's probes; the `queued` numbers (details read for the trees) count as far as
    they follow on from it in steps of at most WALK_GAP, so one listed number never moves the frontier
    past what was probed."""
    known = [x for x in (previous, walked_top) if x is not None]
    return chain_top(max(known) if known else None, queued)


def extend_frontier(frontier: int, stored: set[int]) -> int:
    """Numbers just past the frontier that are stored are accounted for: the frontier covers them."""
    while frontier + 1 in stored:
        frontier += 1
    return frontier


def rerun_signals(
    walked: Mapping[int, str], stored_numbers: set[int], stored_pipelines: set[str]
) -> set[str]:
    """Stored pipelines to read again: those holding a job that started but is not stored."""
    return {pid for number, pid in walked.items() if number not in stored_numbers and pid in stored_pipelines}


def details_pipeline(details: Mapping[str, Any]) -> str | None:
    """The pipeline id job details name, if well formed."""
    pipeline = details.get("pipeline")
    pid = pipeline.get("id") if isinstance(pipeline, dict) else None
    return pid if is_id(pid) else None


# -- malformed items -----------------------------------------------------------------------------------
def _optional(item: Mapping[str, Any], key: str, check: Any) -> bool:
    return item.get(key) is None or check(item[key])


def item_problem(kind: str, item: object) -> str | None:
    """Why a pipeline, workflow or job from a list cannot be stored; None when it can."""
    if not isinstance(item, dict):
        return f"{kind} is not an object"
    if not is_id(item.get("id")):
        return f"{kind} without a usable id"
    number_key = {"pipeline": "number", "job": "job_number"}.get(kind)
    if number_key is not None and not _optional(item, number_key, is_number):
        return f"{kind} {item['id']}: bad {number_key}"
    text_keys = {"pipeline": ("state", "created_at"), "workflow": ("status", "name", "created_at")}
    for key in text_keys.get(kind, ("status", "type")):
        if not _optional(item, key, lambda v: isinstance(v, str)):
            return f"{kind} {item['id']}: bad {key}"
    return None


def duplicate_id(items: Iterable[Mapping[str, Any]]) -> str | None:
    """An id that a list names twice (a list a store cannot file); None when each is named once."""
    seen: set[Any] = set()
    for item in items:
        if item["id"] in seen:
            return str(item["id"])
        seen.add(item["id"])
    return None


# -- project info ---------------------------------------------------------------------------------------
def project_info_stale(tried_at: float | None, now: float) -> bool:
    """GET /project/{slug} is read when never tried or last tried more than a day ago."""
    return tried_at is None or now - tried_at > PROJECT_INFO_MAX_AGE


def default_branch_from(branches: Iterable[str | None]) -> str | None:
    """Without project info: the most common branch of recent pipelines (ties: the newest)."""
    named = [b for b in branches if b]
    counts = Counter(named)
    if not counts:
        return None
    top = max(counts.values())
    return next(b for b in named if counts[b] == top)
