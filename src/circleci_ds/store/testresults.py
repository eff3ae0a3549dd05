"""Store operations for test results: which jobs still need reading, and writing jobs' results.

A job's marker row (`test_jobs`) and its results are written in the same transaction; a job larger
than one chunk is written under a `reading` marker, which every metric ignores and the next write of
that job's first chunk discards. A job whose results were left unread on purpose gets a `skipped`
marker: no metric counts it, and a collection that reads every job (`collect --tests all`) reads it.

The rows come from the caller (circleci_ds.collect.tests derives them); this module only moves them
in and out of the database. Writes are the collector's hot path: each transaction runs a few
statements built once per database and sent through the driver's `executemany`, whatever the number
of jobs and results it holds (PostgreSQL's COPY for the results themselves).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, exists, func, select

from circleci_ds.store import schema as s
from circleci_ds.store.base import StoreBase, dumps_bytes
from circleci_ds.store.bulk import KEYS_PER_QUERY, driver_cursor

_RAW_LEVEL = 1  # zlib's fastest: pages 12-29% larger than at 6 (about 1% of a store), writing cheaper


class Marker:
    """`test_jobs.state`: done (results stored), none (404 or empty), reading (a large job half
    written, invisible), skipped (not read on purpose: its name stores no results lately)."""

    DONE, NONE, READING, SKIPPED = "done", "none", "reading", "skipped"


@dataclass(frozen=True, slots=True)
class TestJob:
    """A job whose tests are to be read: the columns of its `test_jobs` row."""

    __test__ = False  # not a pytest class

    endpoint: str
    job_number: int
    job_id: str
    pipeline_id: str | None
    workflow_id: str | None
    workflow: str | None
    job_name: str | None
    branch: str | None
    commit: str | None
    status: str | None
    created_at: float | None  # the workflow's
    started_at: float | None
    stopped_at: float | None
    duration: float | None  # seconds
    web_url: str | None


class Fact(NamedTuple):
    """One result's facts row: its test (classname, name, file) and its test_results columns."""

    classname: str
    name: str
    file: str
    result: str
    outcome: int | None  # 1 passed, 0 failed
    run_time: float | None
    message: str | None


@dataclass(frozen=True, slots=True)
class ReadJob:
    """A job read whole (or skipped, `state` SKIPPED): its facts rows and its items as returned."""

    job: TestJob
    facts: Sequence[Fact]
    items: Sequence[Any]
    state: str | None = None  # None: done, or none when it has no results


class Unread(NamedTuple):
    """A stored finished build job without a (final) marker, with the JSON its context comes from."""

    job_number: int
    job: str
    details: str | None
    workflow_id: str
    pipeline_id: str


@dataclass(frozen=True, slots=True)
class UnreadPage:
    """A page of unread jobs, and the JSON of their workflows and pipelines by id (each once)."""

    jobs: list[Unread]
    workflows: dict[str, str]
    pipelines: dict[str, str]


def unread_jobs(
    store: StoreBase, endpoint: str, after: int, limit: int, *, with_skipped: bool = False
) -> UnreadPage:
    """The endpoint's next `limit` stored build jobs numbered above `after` without a marker (or only
    half-way read; `with_skipped`: or skipped), by number."""
    j, w, p, t = s.jobs_numbered.c, s.workflows.c, s.pipelines.c, s.test_jobs.c
    final = [Marker.DONE, Marker.NONE] if with_skipped else [Marker.DONE, Marker.NONE, Marker.SKIPPED]
    marked = select(t.job_number).where(t.endpoint == endpoint, t.job_number == j.job_number)
    # The endpoint as a condition, not a join: the jobs are then read in number order from `after`
    # and the query stops at `limit`, where a join from the endpoint's pipelines read all its jobs.
    ours = exists().where(p.id == j.pipeline_id, p.endpoint == endpoint)
    query = (
        select(j.job_number, j.data, j.details, j.workflow_id, j.pipeline_id)
        .select_from(s.jobs_numbered.join(s.workflows, w.id == j.workflow_id))
        .where(
            ours,
            j.job_number > after,
            ~marked.where(t.state.in_(final)).exists(),
            j.data.like('%"type":"build"%'),
        )
        .order_by(j.job_number)
        .limit(limit)
    )
    with store.reading() as conn:
        jobs = [Unread(*row) for row in conn.execute(query)]
        workflow_ids = sorted({job.workflow_id for job in jobs})
        pipeline_ids = sorted({job.pipeline_id for job in jobs})
        workflows = {i: d for i, d in conn.execute(select(w.id, w.data).where(w.id.in_(workflow_ids)))}
        pipelines = {i: d for i, d in conn.execute(select(p.id, p.data).where(p.id.in_(pipeline_ids)))}
    return UnreadPage(jobs, workflows, pipelines)


def quiet_streaks(store: StoreBase, endpoint: str) -> dict[str, int]:
    """Job name -> how many of its jobs read since its latest job with results stored none (job
    names whose latest read job stored results are left out)."""
    t = s.test_jobs.c
    latest = (
        select(t.job_name, func.max(t.job_number).label("top"))
        .where(t.endpoint == endpoint, t.state == Marker.DONE)
        .group_by(t.job_name)
        .subquery()
    )
    query = (
        select(t.job_name, func.count())
        .select_from(s.test_jobs.outerjoin(latest, latest.c.job_name == t.job_name))
        .where(
            t.endpoint == endpoint,
            t.state == Marker.NONE,
            t.job_number > func.coalesce(latest.c.top, -1),
        )
        .group_by(t.job_name)
    )
    with store.reading() as conn:
        return {name or "": count for name, count in conn.execute(query)}


def unskip(store: StoreBase, endpoint: str, woke: Mapping[str, int]) -> int:
    """Forget the `skipped` markers of job names that store results again (job name -> the number of
    a job that stored some), from the name's last job read without results before that one on: the
    next collection reads those jobs. Returns how many were forgotten."""
    t = s.test_jobs.c
    forgotten = 0
    with store.writing() as conn:
        for name, number in woke.items():
            before = (
                select(func.coalesce(func.max(t.job_number), -1))
                .where(
                    t.endpoint == endpoint,
                    t.job_name == name,
                    t.state == Marker.NONE,
                    t.job_number < number,
                )
                .scalar_subquery()
            )
            done = conn.execute(
                s.test_jobs.delete().where(
                    t.endpoint == endpoint,
                    t.job_name == name,
                    t.state == Marker.SKIPPED,
                    t.job_number > before,
                )
            )
            forgotten += int(done.rowcount or 0)
    return forgotten


def skipped_jobs(store: StoreBase, project: str | None = None) -> int:
    """Jobs whose test results were not read on purpose (marker `skipped`)."""
    t, e = s.test_jobs.c, s.endpoints.c
    query = select(func.count()).select_from(s.test_jobs).where(t.state == Marker.SKIPPED)
    if project is not None:
        query = query.join(s.endpoints, e.slug == t.endpoint).where(e.native == project)
    with store.reading() as conn:
        return int(conn.execute(query).scalar_one())


Names = dict[tuple[str, str], int]  # (classname, name) -> test_cases.ref
CaseRefs = dict[tuple[str, str], Names]  # (endpoint, job name) -> the ids of its tests


def save_chunk(
    store: StoreBase,
    job: TestJob,
    facts: Sequence[Fact],
    items: Sequence[Any],
    *,
    seq: int,
    final: bool,
    known: CaseRefs | None = None,
) -> None:
    """Write one chunk of a job's results (facts rows and raw items) with its marker, in one
    transaction.

    The first chunk (`seq` 0) discards what a killed run left of the job; a job already marked done
    or none is left alone. The final chunk marks the job done (none when it has no results at all).
    `known` caches test ids across calls (most jobs of a name run the same tests): it is updated
    only once the transaction has committed, so it never holds an id that was rolled back.
    """
    added: CaseRefs = {}
    with store.writing() as conn:
        _Writer(conn, known or {}, added).chunk(job, facts, items, seq, final)
    if known is not None:
        _merge(known, added)


def save_jobs(store: StoreBase, jobs: Sequence[ReadJob], known: CaseRefs | None = None) -> None:
    """Write whole jobs (each its only, final chunk) in one transaction: all or none."""
    added: CaseRefs = {}
    with store.writing() as conn:
        _Writer(conn, known or {}, added).whole(jobs)
    if known is not None:
        _merge(known, added)


def _merge(known: CaseRefs, added: CaseRefs) -> None:
    for key, names in added.items():
        known.setdefault(key, {}).update(names)


# -- the bulk writer -----------------------------------------------------------------------------------

_JOB_COLUMNS = (
    "endpoint", "job_number", "job_id", "pipeline_id", "workflow_id", "workflow", "job_name", "branch",
    "commit_sha", "status", "created_at", "started_at", "stopped_at", "duration", "web_url", "state", "tests",
)  # fmt: skip
_RESULT_COLUMNS = ("job_ref", "case_ref", "outcome", "result", "run_time", "message")
_CASE_COLUMNS = ("endpoint", "job_name", "classname", "name", "file")


class _Sql:
    """The writer's statements, as the driver takes them (its placeholder style)."""

    def __init__(self, mark: str) -> None:
        def insert(table: str, columns: Sequence[str]) -> str:
            return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"

        self.mark = mark
        self.job = insert("test_jobs", _JOB_COLUMNS)
        self.result = insert("test_results", _RESULT_COLUMNS)
        self.case = insert("test_cases", _CASE_COLUMNS)
        self.raw = insert("test_raw", ("job_ref", "seq", "data"))
        self.update_job = f"UPDATE test_jobs SET state = {mark}, tests = {mark} WHERE ref = {mark}"
        self.copy_results = f"COPY test_results ({', '.join(_RESULT_COLUMNS)}) FROM STDIN"

    def markers(self, count: int) -> str:
        marks = ", ".join([self.mark] * count)
        return (
            "SELECT job_number, ref, state, tests FROM test_jobs"
            f" WHERE endpoint = {self.mark} AND job_number IN ({marks})"
        )

    def discard(self, count: int) -> list[str]:
        marks = ", ".join([self.mark] * count)
        return [
            f"DELETE FROM test_results WHERE job_ref IN ({marks})",
            f"DELETE FROM test_raw WHERE job_ref IN ({marks})",
            f"DELETE FROM test_jobs WHERE ref IN ({marks})",
        ]


_SQLITE, _POSTGRES = _Sql("?"), _Sql("%s")
_cases_lookup = select(s.test_cases.c.classname, s.test_cases.c.name, s.test_cases.c.ref).where(
    and_(
        s.test_cases.c.endpoint == bindparam("endpoint"),
        s.test_cases.c.job_name == bindparam("job_name"),
        s.test_cases.c.classname.in_(bindparam("classnames", expanding=True)),
    )
)


class _Writer:
    """Writes jobs' markers, facts rows and raw pages in one transaction, a few statements for all."""

    def __init__(self, conn: Connection, known: CaseRefs, added: CaseRefs) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        self.sql = _POSTGRES if self.postgres else _SQLITE
        self.known = known  # committed ids: never changed here
        self.added = added  # ids found or added by this transaction
        self.views: CaseRefs = {}  # both, per job name

    def whole(self, jobs: Sequence[ReadJob]) -> None:
        by_endpoint: dict[str, list[ReadJob]] = {}
        for read in jobs:
            by_endpoint.setdefault(read.job.endpoint, []).append(read)
        for endpoint, group in by_endpoint.items():
            self._whole(endpoint, group)

    def _whole(self, endpoint: str, jobs: list[ReadJob]) -> None:
        existing = self._markers(endpoint, [read.job.job_number for read in jobs])
        stale = [row[0] for row in existing.values() if row[1] in (Marker.READING, Marker.SKIPPED)]
        self._discard(stale)
        fresh, seen = [], set()
        for read in jobs:
            number = read.job.job_number
            row = existing.get(number)
            if (row is None or row[1] in (Marker.READING, Marker.SKIPPED)) and number not in seen:
                seen.add(number)
                fresh.append(read)
        if not fresh:
            return
        self._executemany(
            self.sql.job,
            [_job_row(read.job, read.state or (Marker.DONE if read.facts else Marker.NONE), len(read.facts))
             for read in fresh],
        )  # fmt: skip
        refs = {number: row[0] for number, row in self._markers(endpoint, list(seen)).items()}
        results, raws = [], []
        for read in fresh:
            if read.facts:
                ref = refs[read.job.job_number]
                results.append((ref, read.job, read.facts))
                raws.append((ref, 0, _raw(read.items)))
        self._results(results)
        self._executemany(self.sql.raw, raws)

    def chunk(self, job: TestJob, facts: Sequence[Fact], items: Sequence[Any], seq: int, final: bool) -> None:
        row = self._markers(job.endpoint, [job.job_number]).get(job.job_number)
        if row is not None and row[1] not in (Marker.READING, Marker.SKIPPED):
            return  # already read, by an earlier or a cooperating run
        if row is not None and (seq == 0 or row[1] == Marker.SKIPPED):
            self._discard([row[0]])
            row = None
        total = (row[2] if row is not None else 0) + len(facts)
        state = Marker.READING if not final else (Marker.DONE if total else Marker.NONE)
        if row is None:
            self._executemany(self.sql.job, [_job_row(job, state, total)])
            ref = self._markers(job.endpoint, [job.job_number])[job.job_number][0]
        else:
            ref = row[0]
            self._executemany(self.sql.update_job, [(state, total, ref)])
        if facts:
            self._results([(ref, job, facts)])
            self._executemany(self.sql.raw, [(ref, seq, _raw(items))])

    # -- statements --------------------------------------------------------------------------------
    def _markers(self, endpoint: str, numbers: list[int]) -> dict[int, tuple[int, str, int]]:
        """Job number -> (ref, state, tests) of the markers these jobs have."""
        out: dict[int, tuple[int, str, int]] = {}
        for start in range(0, len(numbers), KEYS_PER_QUERY):
            batch = numbers[start : start + KEYS_PER_QUERY]
            rows = self.conn.exec_driver_sql(self.sql.markers(len(batch)), (endpoint, *batch))
            out.update({number: (ref, state, tests) for number, ref, state, tests in rows})
        return out

    def _discard(self, refs: list[int]) -> None:
        if refs:
            for statement in self.sql.discard(len(refs)):
                self.conn.exec_driver_sql(statement, tuple(refs))

    def _executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.conn.exec_driver_sql(statement, rows)

    def _results(self, jobs: list[tuple[int, TestJob, Sequence[Fact]]]) -> None:
        """The test_results rows of these jobs (job ref, the job, its facts rows)."""
        rows: list[tuple[Any, ...]] = []
        for ref, job, facts in jobs:
            cases = self._case_refs(job.endpoint, job.job_name or "", facts)
            rows += [(ref, cases[f[0], f[1]], f[4], f[3], f[5], f[6]) for f in facts]
        if not rows:
            return
        if self.postgres:
            self._copy(self.sql.copy_results, rows)
        else:
            self._executemany(self.sql.result, rows)

    def _copy(self, statement: str, rows: list[tuple[Any, ...]]) -> None:
        """PostgreSQL's COPY through the driver; its errors surface as the other statements' do."""
        with driver_cursor(self.conn, statement) as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)

    def _case_refs(self, endpoint: str, job_name: str, facts: Sequence[Fact]) -> Names:
        """The ids of the job name's tests, these facts' included: known, else from the table, else
        added (the first file seen is kept)."""
        key = (endpoint, job_name)
        view = self.views.get(key)
        if view is None:
            view = self.views[key] = dict(self.known.get(key, {}))
        # reversed: a test named twice keeps the first file seen
        files = {(f[0], f[1]): f[2] for f in reversed(facts) if (f[0], f[1]) not in view}
        if not files:
            return view
        missing = list(files)
        found = self._lookup(endpoint, job_name, missing)
        new = [name for name in missing if name not in found]
        if new:
            rows = [(endpoint, job_name, classname, name, files[classname, name]) for classname, name in new]
            self._executemany(self.sql.case, rows)
            found.update(self._lookup(endpoint, job_name, new))
        view.update(found)
        self.added.setdefault(key, {}).update(found)
        return view

    def _lookup(self, endpoint: str, job_name: str, keys: list[tuple[str, str]]) -> Names:
        wanted = set(keys)
        out: Names = {}
        classnames = sorted({classname for classname, _ in keys})
        for start in range(0, len(classnames), KEYS_PER_QUERY):
            params = {
                "endpoint": endpoint,
                "job_name": job_name,
                "classnames": classnames[start : start + KEYS_PER_QUERY],
            }
            for classname, name, ref in self.conn.execute(_cases_lookup, params):
                if (classname, name) in wanted:
                    out[classname, name] = ref
        return out


def _job_row(job: TestJob, state: str, tests: int) -> tuple[Any, ...]:
    return (
        job.endpoint, job.job_number, job.job_id, job.pipeline_id, job.workflow_id, job.workflow,
        job.job_name, job.branch, job.commit, job.status, job.created_at, job.started_at, job.stopped_at,
        job.duration, job.web_url, state, tests,
    )  # fmt: skip


def _raw(items: Sequence[Any]) -> bytes:
    return zlib.compress(dumps_bytes(list(items)), _RAW_LEVEL)


# -- reading back --------------------------------------------------------------------------------------


def raw_items(store: StoreBase, endpoint: str, job_number: int) -> list[Any] | None:
    """A job's results as returned, in order; None when the job was never read."""
    t, r = s.test_jobs.c, s.test_raw.c
    with store.reading() as conn:
        ref = conn.execute(
            select(t.ref).where(
                t.endpoint == endpoint,
                t.job_number == job_number,
                t.state.in_([Marker.DONE, Marker.NONE]),
            )
        ).scalar()
        if ref is None:
            return None
        blobs = conn.execute(select(r.data).where(r.job_ref == ref).order_by(r.seq)).scalars()
        return [item for blob in blobs for item in json.loads(zlib.decompress(blob))]


def iter_results(store: StoreBase, project: str | None = None) -> Iterator[Any]:
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
