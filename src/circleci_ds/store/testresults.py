"""Store operations for test results: which jobs still need reading, and writing a job's results.

A job's marker row (`test_jobs`) and its results are written in the same transaction; a job larger
than one chunk is written under a `reading` marker, which every metric ignores and the next write of
that job's first chunk discards (see circleci_ds.derive.tests).
"""

from __future__ import annotations

import json
import zlib
from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, insert, select, tuple_, update

from circleci_ds.derive.tests import Fact, Marker, TestJob, fact, job_context, wants_tests
from circleci_ds.store import schema as s
from circleci_ds.store.base import dumps
from circleci_ds.store.database import Store

_KEYS_PER_QUERY = 400  # (classname, name) pairs per IN (...) lookup
_RAW_LEVEL = 6


Unread = tuple[int, str, str | None, str, str]  # job number, job, details, workflow, pipeline JSON


def _unread_rows(store: Store, endpoint: str, after: int, limit: int) -> list[Unread]:
    """(job number, job, details, workflow, pipeline JSON) of the endpoint's next `limit` build jobs
    numbered above `after` without a marker, by number."""
    j, w, p, t = s.jobs_numbered.c, s.workflows.c, s.pipelines.c, s.test_jobs.c
    marked = exists().where(t.job_id == j.id, t.state != Marker.READING)
    query = (
        select(j.job_number, j.data, j.details, w.data, p.data)
        .select_from(
            s.jobs_numbered.join(s.workflows, w.id == j.workflow_id).join(s.pipelines, p.id == j.pipeline_id)
        )
        .where(p.endpoint == endpoint, j.job_number > after, ~marked, j.data.like('%"type":"build"%'))
        .order_by(j.job_number)
        .limit(limit)
    )
    with store.reading() as conn:
        return [(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(query)]


def jobs_needing_tests(
    store: Store, endpoint: str, after: int, limit: int
) -> tuple[list[TestJob], int | None]:
    """The next page of stored finished build jobs numbered above `after` whose tests were never read
    (or only half-way), and the highest number the page looked at (None: no job is left)."""
    rows = _unread_rows(store, endpoint, after, limit)
    out = []
    for _, job_json, details_json, workflow_json, pipeline_json in rows:
        job = json.loads(job_json)
        if not wants_tests(job):
            continue
        job["details"] = json.loads(details_json) if details_json else None
        out.append(job_context(endpoint, job, json.loads(workflow_json), json.loads(pipeline_json)))
    return out, (rows[-1][0] if rows else None)


CaseRefs = dict[tuple[str, str, str, str], int]  # (endpoint, job name, classname, name) -> test_cases.ref
Known = Mapping[tuple[str, str, str, str], int]


def save_chunk(
    store: Store, job: TestJob, items: Sequence[Any], *, seq: int, final: bool, known: CaseRefs | None = None
) -> None:
    """Write one chunk of a job's results (raw and facts) with its marker, in one transaction.

    The first chunk (`seq` 0) discards what a killed run left of the job; a job already marked done
    or none is left alone. The final chunk marks the job done (none when it has no results at all).
    `known` caches test ids across calls (most jobs of a name run the same tests): it is updated
    only once the transaction has committed, so it never holds an id that was rolled back.
    """
    added: CaseRefs = {}
    with store.writing() as conn:
        _write_chunk(conn, job, items, seq, final, known or {}, added)
    if known is not None:
        known.update(added)


def save_jobs(
    store: Store, jobs: Sequence[tuple[TestJob, Sequence[Any]]], known: CaseRefs | None = None
) -> None:
    """Write several whole jobs (each its only, final chunk) in one transaction: all or none."""
    added: CaseRefs = {}
    with store.writing() as conn:
        for job, items in jobs:
            _write_chunk(conn, job, items, 0, True, ChainMap(added, known or {}), added)
    if known is not None:
        known.update(added)


def _write_chunk(
    conn: Connection,
    job: TestJob,
    items: Sequence[Any],
    seq: int,
    final: bool,
    known: Known,
    added: CaseRefs,
) -> None:
    facts = [fact(item) for item in items]
    t = s.test_jobs.c
    row = conn.execute(
        select(t.ref, t.state, t.tests).where(t.endpoint == job.endpoint, t.job_number == job.job_number)
    ).first()
    if row is not None and row.state != Marker.READING:
        return  # already read, by an earlier or a cooperating run
    if row is not None and seq == 0:
        _discard(conn, row.ref)
        row = None
    total = (row.tests if row is not None else 0) + len(facts)
    state = Marker.READING if not final else (Marker.DONE if total else Marker.NONE)
    if row is None:
        ref = conn.execute(
            insert(s.test_jobs).values(**_job_values(job), state=state, tests=total).returning(t.ref)
        ).scalar_one()
    else:
        ref = row.ref
        conn.execute(update(s.test_jobs).where(t.ref == ref).values(state=state, tests=total))
    if facts:
        _insert_facts(conn, ref, job, facts, known, added)
        raw = zlib.compress(dumps(list(items)).encode(), _RAW_LEVEL)
        conn.execute(insert(s.test_raw).values(job_ref=ref, seq=seq, data=raw))


def _job_values(job: TestJob) -> dict[str, Any]:
    return {
        "endpoint": job.endpoint,
        "job_number": job.job_number,
        "job_id": job.job_id,
        "pipeline_id": job.pipeline_id,
        "workflow_id": job.workflow_id,
        "workflow": job.workflow,
        "job_name": job.job_name,
        "branch": job.branch,
        "commit_sha": job.commit,
        "status": job.status,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "stopped_at": job.stopped_at,
        "duration": job.duration,
        "web_url": job.web_url,
    }


def _discard(conn: Connection, ref: int) -> None:
    conn.execute(delete(s.test_results).where(s.test_results.c.job_ref == ref))
    conn.execute(delete(s.test_raw).where(s.test_raw.c.job_ref == ref))
    conn.execute(delete(s.test_jobs).where(s.test_jobs.c.ref == ref))


def _insert_facts(
    conn: Connection, job_ref: int, job: TestJob, facts: list[Fact], known: Known, added: CaseRefs
) -> None:
    refs = _case_refs(conn, job.endpoint, job.job_name or "", facts, known, added)
    conn.execute(
        insert(s.test_results),
        [
            {
                "job_ref": job_ref,
                "case_ref": refs[f.classname, f.name],
                "outcome": f.outcome,
                "result": f.result,
                "run_time": f.run_time,
                "message": f.message,
            }
            for f in facts
        ],
    )


def _case_refs(
    conn: Connection, endpoint: str, job_name: str, facts: list[Fact], known: Known, added: CaseRefs
) -> dict[tuple[str, str], int]:
    """Dictionary ids of the chunk's tests (from `known`, else the table), adding the new ones (the
    first file seen is kept); every id found or added goes into `added`."""
    c = s.test_cases.c
    files: dict[tuple[str, str], str] = {}
    refs: dict[tuple[str, str], int] = {}
    for f in facts:
        key = (f.classname, f.name)
        cached = known.get((endpoint, job_name, *key))
        if cached is not None:
            refs[key] = cached
        else:
            files.setdefault(key, f.file)
    keys = list(files)

    def lookup(batch: list[tuple[str, str]]) -> None:
        query = select(c.classname, c.name, c.ref).where(
            and_(c.endpoint == endpoint, c.job_name == job_name, tuple_(c.classname, c.name).in_(batch))
        )
        refs.update({(r.classname, r.name): r.ref for r in conn.execute(query)})

    for start in range(0, len(keys), _KEYS_PER_QUERY):
        lookup(keys[start : start + _KEYS_PER_QUERY])
    missing = [k for k in keys if k not in refs]
    if missing:
        rows = [
            {"endpoint": endpoint, "job_name": job_name, "classname": k[0], "name": k[1], "file": files[k]}
            for k in missing
        ]
        conn.execute(insert(s.test_cases), rows)
        for start in range(0, len(missing), _KEYS_PER_QUERY):
            lookup(missing[start : start + _KEYS_PER_QUERY])
    added.update({(endpoint, job_name, *key): refs[key] for key in keys})
    return refs


def raw_items(store: Store, endpoint: str, job_number: int) -> list[Any] | None:
    """A job's results as returned, in order; None when the job was never read."""
    t, r = s.test_jobs.c, s.test_raw.c
    with store.reading() as conn:
        ref = conn.execute(
            select(t.ref).where(t.endpoint == endpoint, t.job_number == job_number, t.state != Marker.READING)
        ).scalar()
        if ref is None:
            return None
        blobs = conn.execute(select(r.data).where(r.job_ref == ref).order_by(r.seq)).scalars()
        return [item for blob in blobs for item in json.loads(zlib.decompress(blob))]


def iter_results(store: Store, project: str | None = None) -> Iterator[Any]:
    """Every test result of completely read jobs with its job's and test's context, job by job,
    streamed from the database (never all in memory)."""
    r, t, c, e = s.test_results.c, s.test_jobs.c, s.test_cases.c, s.endpoints.c
    query = (
        select(
            e.native,
            e.origin,
            t.endpoint,
            t.job_number,
            t.job_id,
            t.pipeline_id,
            t.workflow_id,
            t.workflow,
            t.job_name,
            t.branch,
            t.commit_sha,
            t.status,
            t.created_at,
            t.started_at,
            t.stopped_at,
            t.web_url,
            t.ref,
            c.classname,
            c.name,
            c.file,
            r.result,
            r.outcome,
            r.run_time,
            r.message,
        )
        .join(s.test_jobs, t.ref == r.job_ref)
        .join(s.test_cases, c.ref == r.case_ref)
        .join(s.endpoints, e.slug == t.endpoint)
        .where(t.state == Marker.DONE)
        .order_by(t.ref, r.case_ref)
    )
    if project is not None:
        query = query.where(e.native == project)
    with store.engine.connect() as conn:
        yield from conn.execution_options(stream_results=True, yield_per=2000).execute(query)
