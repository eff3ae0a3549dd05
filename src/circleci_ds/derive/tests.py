"""Test results of finished build jobs (`GET /project/{slug}/{job-number}/tests`): rules and the phase.

Rules:
- Read once per job: every stored `build` job with a `job_number` whose status is final. A finished
  job's tests never change and a rerun is a new job, so a job is never read again once its marker is
  stored. Jobs still running are read by a later run, once they are stored finished.
- A 404 or an empty list means "no test results" and is remembered (marker `none`) like results.
- Pages follow `next_page_token`; results are written in chunks of at most CHUNK results, so a job
  with tens of thousands of tests is never held whole in memory. A job that fits in one chunk (most
  do) is written with its marker in one transaction, together with other such jobs (up to BATCH_JOBS
  jobs or CHUNK results: all or none); a larger one is written chunk by chunk under a
  `reading` marker that hides it from every metric, and its last chunk flips the marker to `done` in
  the same transaction. A kill leaves at most a `reading` job, which the next run discards and reads
  again: nothing lost, nothing counted twice.
- Facts per result: classname and name (each cut to NAME_BYTES bytes of UTF-8: with the project
  and the job name, cut to CONTEXT_BYTES, they are one index entry, which PostgreSQL bounds), file
  (cut to 1,000 characters), result as returned (cut to
  40), outcome (passed / failed / neither), run_time in seconds (null when not a finite number >= 0),
  and an excerpt of the message (MESSAGE_EXCERPT characters). The raw items are kept as returned.
- A test is identified by its classname and name within a project's job name.
- Test results are an extra, never a gate: a job whose tests cannot be read (any error, a 401 on this
  route included) fails only itself, is left unmarked and is read again by the next run; the
  endpoint's collection still succeeds, with a warning. A 401, or STOP_AFTER jobs failing in a row,
  ends the endpoint's test phase for this run, so a server without the route costs a few requests.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from circleci_ds.derive.facts import as_dict, branch_of, job_seconds
from circleci_ds.store.testresults import Fact, TestJob
from circleci_ds.times import parse_ts

MESSAGE_EXCERPT = 500
TEXT_LIMIT = 1000
NAME_BYTES = 500  # classname and name: with the project and job name they are an index entry
CONTEXT_BYTES = 300  # workflow, job name and branch in the test tables
ID_BYTES = 64  # ids and the commit
RESULT_LIMIT = 40
PASSED_RESULTS = frozenset({"success", "passed", "pass", "ok"})
FAILED_RESULTS = frozenset({"failure", "failed", "fail", "error"})
QUIET_AFTER = 3  # jobs of a name read in a row without results make the name quiet (reads_tests)
SAMPLE_EVERY = 20  # of a quiet name's jobs, one in this many (by a hash of the number) is still read
FINAL_JOB_STATUSES = frozenset(
    {"success", "failed", "infrastructure_fail", "timedout", "canceled", "not_run", "terminated-unknown"}
)


# -- pure rules ---------------------------------------------------------------------------------------


def wants_tests(job: dict[str, Any]) -> bool:
    """A build job with a number whose status is final."""
    return (
        job.get("type") == "build"
        and isinstance(job.get("job_number"), int)
        and job.get("status") in FINAL_JOB_STATUSES
    )


_OUTCOMES = {**dict.fromkeys(PASSED_RESULTS, 1), **dict.fromkeys(FAILED_RESULTS, 0)}
_SHORT_NAME = NAME_BYTES // 4  # characters that fit NAME_BYTES of UTF-8 whatever they are


def outcome(result: str) -> int | None:
    return _OUTCOMES.get(result.lower())


def cut_utf8(value: object, max_bytes: int) -> str | None:
    """Text cut to at most `max_bytes` of UTF-8 (whole characters); None for anything else. Column
    sizes and PostgreSQL's index entries (at most about 2.7 kB) are bounds a server must not pass."""
    if not isinstance(value, str):
        return None
    if len(value) * 4 <= max_bytes:
        return value
    return value.encode("utf-8", "replace")[:max_bytes].decode("utf-8", "ignore")


def run_time(value: object) -> float | None:
    if type(value) is float:  # the usual case, first
        return value if 0.0 <= value < math.inf else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def fact(item: object) -> Fact:
    """The facts row of one result; anything that is not what the spec says becomes empty or null.
    Called once per result collected: the usual case (short names) is tested first."""
    get = (item if isinstance(item, dict) else {}).get
    classname, name, file, result = get("classname"), get("name"), get("file"), get("result")
    result = result[:RESULT_LIMIT] if isinstance(result, str) else ""
    message = get("message")
    return Fact(
        classname if type(classname) is str and len(classname) <= _SHORT_NAME else _name(classname),
        name if type(name) is str and len(name) <= _SHORT_NAME else _name(name),
        file[:TEXT_LIMIT] if isinstance(file, str) else "",
        result,
        _OUTCOMES.get(result.lower()),
        run_time(get("run_time")),
        message[:MESSAGE_EXCERPT] if isinstance(message, str) and message else None,
    )


def _name(value: object) -> str:
    return cut_utf8(value, NAME_BYTES) or ""


def reads_tests(job: TestJob, quiet_streak: int) -> bool:
    """Whether a finished build job's test results are read. A job name whose last QUIET_AFTER jobs
    read stored none is quiet: of its jobs, only those that failed and the sampled ones are read; a
    quiet name's read job that stores results makes it loud again."""
    return quiet_streak < QUIET_AFTER or job.status == "failed" or sampled(job.job_number)


def sampled(job_number: int) -> bool:
    """One job number in SAMPLE_EVERY, by a hash: cooperating collectors agree, and a job name whose
    numbers keep a stride (the same place in every pipeline) is sampled as often as any other."""
    digest = hashlib.blake2b(str(job_number).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SAMPLE_EVERY == 0


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def job_context(
    endpoint: str, job: dict[str, Any], workflow: dict[str, Any], pipeline: dict[str, Any]
) -> TestJob:
    """The context of a stored job (its details, when read, give the web URL and exact duration)."""
    details = as_dict(job.get("details"))
    vcs = as_dict(pipeline.get("vcs"))
    started = parse_ts(job.get("started_at"))
    stopped = parse_ts(job.get("stopped_at"))
    return TestJob(
        endpoint=endpoint,
        job_number=int(job["job_number"]),
        job_id=cut_utf8(str(job.get("id")), ID_BYTES) or "",
        pipeline_id=cut_utf8(pipeline.get("id"), ID_BYTES),
        workflow_id=cut_utf8(workflow.get("id"), ID_BYTES),
        workflow=cut_utf8(workflow.get("name"), CONTEXT_BYTES),
        job_name=cut_utf8(job.get("name"), CONTEXT_BYTES),
        branch=cut_utf8(branch_of(pipeline)[0], CONTEXT_BYTES),  # the facts' rule, as for jobs
        commit=cut_utf8(vcs.get("revision"), ID_BYTES),
        status=cut_utf8(job.get("status"), RESULT_LIMIT),
        created_at=parse_ts(workflow.get("created_at")),
        started_at=started,
        stopped_at=stopped,
        duration=job_seconds(details.get("duration"), started, stopped),  # the facts' rule
        web_url=_str(details.get("web_url")),
    )
