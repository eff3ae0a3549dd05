"""Tables and versioned migrations, one code path for SQLite and PostgreSQL.

Raw API objects are kept as JSON text, exactly as parsed from the response; the other
columns exist to find and order them and to drive incremental collection.

Ownership: a store says it is one. `circleci_ds_meta` holds `application = circleci-ds`; a database
with that marker is ours, an empty one may become ours (`collect` only), and one made by a release
before the marker (our `schema_version` and core tables, nothing marked) is ours and gets the marker
on its next migration. Anything else belongs to another application and is never written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    column,
    insert,
    inspect,
    select,
    table,
    text,
    update,
)

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

endpoints = Table(
    "endpoints",
    metadata,
    Column("slug", String(300), primary_key=True),  # canonical project slug
    Column("native", String(300), nullable=False),
    Column("origin", String(500), nullable=False),
    Column("checkpoint", Double),  # server time (epoch s) at the start of the last complete run
    Column("last_started", Double),
    Column("last_finished", Double),
    Column("last_success", Double),
    Column("last_error", Text),
    Column("project_info", Text),  # GET /project/{slug}, for the default branch
)

pipelines = Table(
    "pipelines",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("endpoint", String(300), nullable=False),
    Column("number", BigInteger),
    Column("created_at", Double),
    Column("updated_on", Double),  # latest change anywhere in the tree
    Column("fetched_at", Double),  # server time when the workflows were last read
    Column("is_final", Boolean, nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_pipelines_endpoint_created", "endpoint", "created_at"),
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pipeline_id", String(64), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("data", Text, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("pipeline_id", String(64), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    Column("data", Text, nullable=False),
    Column("details", Text),
)

leases = Table(
    "leases",
    metadata,
    Column("endpoint", String(300), primary_key=True),
    Column("owner", String(200), nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("acquired_at", Double, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),  # the id workflows and jobs refer to
    Column("login", Text),  # the API's text: no length the server must keep to (_unbounded_api_text)
    Column("name", Text),
    Column("avatar_url", Text),
    Column("deleted", Boolean, nullable=False),  # GET /user/{id} answered 404
    Column("resolved_at", Double, nullable=False),
)

meta = Table(
    "circleci_ds_meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

CORE_TABLES = (schema_version, endpoints, pipelines, workflows, jobs)
APPLICATION = "circleci-ds"

# -- facts: analysis-ready rows derived from the raw trees (see circleci_ds.derive.facts) ---------------

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("endpoint", String(300), nullable=False),
    Column("number", BigInteger),
    Column("created", Double),
    Column("triggered", Double),
    Column("branch", Text),
    Column("branch_source", String(40)),
    Column("is_default_branch", Boolean),
    Column("commit", Text),
    Column("subject", Text),
    Column("author", Text),
    Column("trigger_type", Text),
    Column("state", Text),
    Column("bad_times", Integer, nullable=False),
    Index("ix_pipeline_runs_endpoint_created", "endpoint", "created"),
)

workflow_runs = Table(
    "workflow_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("pipeline_id", String(64), nullable=False, index=True),
    Column("endpoint", String(300), nullable=False),
    Column("pipeline_number", BigInteger),
    Column("name", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("branch", Text),
    Column("is_default_branch", Boolean),
    Column("commit", Text),
    Column("triggered", Double),
    Column("created", Double),
    Column("stopped", Double),
    Column("duration", Double),
    Column("active_duration", Double),
    Column("approval_wait", Double),
    Column("rerun_index", Integer, nullable=False),
    Column("rerun_of", String(64)),
    Column("rerun_kind", String(20)),
    Column("jobs", Integer, nullable=False),
    Column("executed_jobs", Integer, nullable=False),
    Column("failed_jobs", Integer, nullable=False),
    Index("ix_workflow_runs_endpoint_created", "endpoint", "created"),
)

job_runs = Table(
    "job_runs",
    metadata,
    Column("workflow_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("pipeline_id", String(64), nullable=False, index=True),
    Column("endpoint", String(300), nullable=False),
    Column("workflow_name", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("type", Text),
    Column("status", Text, nullable=False),
    Column("number", BigInteger),
    Column("executed", Boolean, nullable=False),
    Column("branch", Text),
    Column("is_default_branch", Boolean),
    Column("commit", Text),
    Column("workflow_created", Double),
    Column("queued", Double),
    Column("started", Double),
    Column("stopped", Double),
    Column("duration", Double),
    Column("queue_time", Double),
    Column("approval_wait", Double),
    Column("dependencies", Text, nullable=False),
    Column("resource_class", Text),  # job details executor.resource_class (added by _job_resources)
    Column("parallelism", Integer),
    Index("ix_job_runs_endpoint_created", "endpoint", "workflow_created"),
)

FACT_TABLES = (pipeline_runs, workflow_runs, job_runs)
# Reading trees back in (endpoint, number) order, a page at a time.
pipelines_by_number = Index(
    "ix_pipelines_endpoint_number", pipelines.c.endpoint, pipelines.c.number, pipelines.c.id
)


def _v1_core(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(CORE_TABLES))


def _v2_leases(conn: Connection) -> None:
    metadata.create_all(conn, tables=[leases])


def _users_table(conn: Connection) -> None:
    metadata.create_all(conn, tables=[users])


# The fixture's project name of each endpoint, a column added to `endpoints` by a later step;
# a lightweight view of the table, so the first step's table stays as released.
endpoint_projects = table("endpoints", column("slug", String), column("project", String))


def _endpoint_project_name(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE endpoints ADD COLUMN project VARCHAR(300)"))


def _ownership_marker(conn: Connection) -> None:
    metadata.create_all(conn, tables=[meta])
    mark_owned(conn)


# Columns added by `_rerun_signals`; lightweight views, so the first step's tables stay as released.
# jobs.job_number: the job's number, for the rerun probe; endpoints.job_frontier: every job number up
# to it is accounted for; endpoints.project_info_at: when GET /project/{slug} was last tried.
jobs_numbered = table(
    "jobs", *(column(c.name, c.type) for c in jobs.columns), column("job_number", BigInteger)
)
endpoint_walk = table(
    "endpoints", column("slug", String), column("job_frontier", BigInteger), column("project_info_at", Double)
)


def _rerun_signals(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE jobs ADD COLUMN job_number BIGINT"))
    conn.execute(text("ALTER TABLE endpoints ADD COLUMN job_frontier BIGINT"))
    conn.execute(text("ALTER TABLE endpoints ADD COLUMN project_info_at DOUBLE PRECISION"))
    conn.execute(text("CREATE INDEX ix_jobs_job_number ON jobs (job_number)"))
    rows = conn.execute(select(jobs.c.workflow_id, jobs.c.id, jobs.c.data)).all()
    for row in rows:
        number = _job_number(row.data)
        if number is not None:
            conn.execute(
                update(jobs_numbered)
                .where(jobs_numbered.c.workflow_id == row.workflow_id, jobs_numbered.c.id == row.id)
                .values(job_number=number)
            )


def _job_number(data: str) -> int | None:
    try:
        job = json.loads(data)
    except ValueError:
        return None
    return job_number_of(job) if isinstance(job, dict) else None


def job_number_of(job: dict[str, Any]) -> int | None:
    number = job.get("job_number")
    return number if isinstance(number, int) and not isinstance(number, bool) else None


def facts_tables(conn: Connection) -> None:
    """Facts tables beside the raw JSON (the store then fills them from the trees already stored)."""
    metadata.create_all(conn, tables=list(FACT_TABLES))
    pipelines_by_number.create(conn, checkfirst=True)


# -- test results (GET /project/{slug}/{job-number}/tests) ---------------------------------------------
# One row per job whose tests were read (`state`: done, none = 404 or empty, reading = a large result
# being written in chunks, invisible until done); a dictionary of tests; one facts row per test result;
# the raw pages, zlib-compressed JSON arrays of the items as returned.

test_jobs = Table(
    "test_jobs",
    metadata,
    Column("ref", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", String(300), nullable=False),
    Column("job_number", BigInteger, nullable=False),
    Column("job_id", String(64), nullable=False),
    Column("pipeline_id", String(64)),
    Column("workflow_id", String(64)),
    Column("workflow", String(300)),
    Column("job_name", String(300)),
    Column("branch", String(300)),
    Column("commit_sha", String(64)),
    Column("status", String(40)),
    Column("created_at", Double),  # the workflow's: the report window selects on it, as for jobs
    Column("started_at", Double),
    Column("stopped_at", Double),
    Column("duration", Double),  # seconds
    Column("web_url", Text),
    Column("state", String(10), nullable=False),
    Column("tests", Integer, nullable=False),
    Index("ux_test_jobs_number", "endpoint", "job_number", unique=True),
    Index("ix_test_jobs_job_id", "job_id"),
    Index("ix_test_jobs_created", "state", "created_at"),
    Index("ix_test_jobs_commit", "endpoint", "commit_sha", "job_name"),
)

test_cases = Table(
    "test_cases",
    metadata,
    Column("ref", Integer, primary_key=True, autoincrement=True),
    Column("endpoint", String(300), nullable=False),
    Column("job_name", String(300), nullable=False),
    Column("classname", String(1000), nullable=False),
    Column("name", String(1000), nullable=False),
    Column("file", String(1000), nullable=False),
    Index("ux_test_cases_identity", "endpoint", "job_name", "classname", "name", unique=True),
)

test_results = Table(
    "test_results",
    metadata,
    Column("job_ref", Integer, nullable=False),
    Column("case_ref", Integer, nullable=False),
    Column("outcome", SmallInteger),  # 1 passed, 0 failed, null otherwise (skipped, unknown)
    Column("result", String(40), nullable=False),
    Column("run_time", Double),  # seconds
    Column("message", Text),  # bounded excerpt
    # In job order, covering what the metrics read: rows arrive job by job, so writes append. No index
    # in test order: each batch of jobs rewrites pages all over one (docs/store.md).
    Index("ix_test_results_by_job", "job_ref", "case_ref", "outcome", "run_time"),
    Index(
        "ix_test_results_failures",
        "job_ref",
        "case_ref",
        sqlite_where=Column("outcome") == 0,
        postgresql_where=Column("outcome") == 0,
    ),
)

test_raw = Table(
    "test_raw",
    metadata,
    Column("job_ref", Integer, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)

TEST_TABLES = (test_jobs, test_cases, test_results, test_raw)


def _add_test_results(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(TEST_TABLES))


# -- who each pipeline's tree names: the user ids the people pass looks up when no `users` row has them
people_refs = Table(
    "people_refs",
    metadata,
    Column("pipeline_id", String(64), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Index("ix_people_refs_user", "user_id"),
)


def _people_refs(conn: Connection) -> None:
    """The people_refs table (the store then fills it from the trees already stored)."""
    people_refs.create(conn, checkfirst=True)


def _job_resources(conn: Connection) -> None:
    """job_runs.resource_class and parallelism (for estimated cost and capacity); the store then derives
    the facts again from the trees already stored. A store whose facts table was created after these
    columns were defined has them already."""
    present = {c["name"] for c in inspect(conn).get_columns("job_runs")}
    if "resource_class" not in present:
        conn.execute(text("ALTER TABLE job_runs ADD COLUMN resource_class VARCHAR(100)"))
    if "parallelism" not in present:
        conn.execute(text("ALTER TABLE job_runs ADD COLUMN parallelism INTEGER"))


# -- usage (the Usage API's CSV exports, per organisation) -----------------------------------------------
# usage_runs: one typed row per job run of an export, keyed by (org, job run id), so an overlapping window
# replaces, never doubles. usage_exports: every export job asked for (its window, its state, what it gave).
# usage_requests: when each POST / GET of the usage routes was sent, for their hourly limits across runs.
# usage_files: the CSV files as downloaded (gzip bytes, as sent).
# `project_slug` is the canonical fixture endpoint the project maps to (null: not in the fixture); times
# are epoch seconds UTC, `run_day` the epoch of the run's UTC day.

usage_runs = Table(
    "usage_runs",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("job_run_id", String(64), primary_key=True),
    Column("org_name", Text),
    Column("project_id", String(64)),
    Column("project_name", Text),
    Column("vcs_name", String(40)),
    Column("project_slug", String(300)),  # the fixture endpoint it maps to, null when none
    Column("branch", Text),
    Column("pipeline_id", String(64)),
    Column("pipeline_number", BigInteger),
    Column("workflow_id", String(64)),
    Column("workflow_name", Text),
    Column("job_name", Text),
    Column("job_number", BigInteger),
    Column("queued_at", Double),
    Column("started_at", Double),
    Column("stopped_at", Double),
    Column("run_day", Double),
    Column("status", String(40)),
    Column("resource_class", String(100)),
    Column("executor", String(40)),
    Column("parallelism", Integer),
    Column("run_seconds", Double),
    Column("median_cpu_pct", Double),
    Column("max_cpu_pct", Double),
    Column("median_ram_pct", Double),
    Column("max_ram_pct", Double),
    Column("total_credits", Double),
    Column("user_credits", Double),
    Column("compute_credits", Double),
    Column("dlc_credits", Double),
    Column("network_credits", Double),
    Column("storage_credits", Double),
    Column("is_workflow_successful", SmallInteger),
    Column("export_id", String(64)),
    Index("ix_usage_runs_slug_day", "project_slug", "run_day"),
    Index("ix_usage_runs_day", "run_day"),
)

usage_exports = Table(
    "usage_exports",
    metadata,
    Column("export_id", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("window_start", Double, nullable=False),  # epoch seconds, inclusive
    Column("window_end", Double, nullable=False),  # epoch seconds, inclusive
    Column("state", String(20), nullable=False),  # created, processing, stored, empty, failed, abandoned
    Column("requested_at", Double, nullable=False),  # server time (epoch s) of the POST
    Column("polls", Integer, nullable=False),
    Column("null_url_polls", Integer, nullable=False),  # `completed` answers without download URLs
    Column("files", Integer),
    Column("rows", BigInteger),
    Column("finished_at", Double),
    Column("error", Text),
    Index("ix_usage_exports_org", "org_id", "state"),
)

usage_requests = Table(
    "usage_requests",
    metadata,
    Column("ref", Integer, primary_key=True, autoincrement=True),
    Column("org_id", String(64), nullable=False),
    Column("kind", String(10), nullable=False),  # POST or GET
    Column("export_id", String(64)),  # the export job a GET asked about
    Column("at", Double, nullable=False),  # server time, epoch seconds
    Column("refused", Boolean, nullable=False),  # answered 429
    Index("ix_usage_requests_org", "org_id", "kind", "at"),
)

usage_files = Table(
    "usage_files",
    metadata,
    Column("export_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),  # gzip bytes as sent
)

USAGE_TABLES = (usage_runs, usage_exports, usage_requests, usage_files)


def _usage_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(USAGE_TABLES))


# Strings the API gives that columns of earlier steps bounded (PostgreSQL enforces a varchar's length,
# SQLite does not): a longer one stopped every run on PostgreSQL only. They become text on both
# backends alike; ids stay bounded, as the client refuses longer ones (client/values.py).
UNBOUNDED_API_TEXT = (
    ("workflow_runs", "status"),
    ("job_runs", "type"),
    ("job_runs", "status"),
    ("job_runs", "resource_class"),
    ("users", "login"),
)


def _unbounded_api_text(conn: Connection) -> None:
    if conn.dialect.name != "postgresql":
        return  # SQLite keeps any length in a VARCHAR column
    for table_name, column_name in UNBOUNDED_API_TEXT:
        conn.execute(text(f"ALTER TABLE {table_name} ALTER COLUMN {column_name} TYPE TEXT"))


def _test_results_by_job(conn: Connection) -> None:
    """Stores of earlier steps index results twice, by job and by test: one covering index by job."""
    conn.execute(text("DROP INDEX IF EXISTS ix_test_results_case"))
    conn.execute(text("DROP INDEX IF EXISTS ix_test_results_job"))
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_test_results_by_job"
            " ON test_results (job_ref, case_ref, outcome, run_time)"
        )
    )


# Each step upgrades version N to N+1. Released steps never change; new ones are appended.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_core,
    _v2_leases,
    _users_table,
    _endpoint_project_name,
    _ownership_marker,
    _rerun_signals,
    facts_tables,
    _add_test_results,
    _people_refs,
    _job_resources,
    _usage_tables,
    _unbounded_api_text,
    _test_results_by_job,
]
SCHEMA_VERSION = len(MIGRATIONS)


class Ownership(Enum):
    EMPTY = "empty"  # no tables: collect may create a store here
    OURS = "ours"  # marked as a circleci-ds store
    UNMARKED = "unmarked"  # a store of a release before the marker
    FOREIGN = "foreign"  # another application's tables: never written


def classify(tables: set[str], marker: str | None, version_columns: set[str]) -> Ownership:
    """Whose database it is, from its table names, its marker and schema_version's columns."""
    if not tables:
        return Ownership.EMPTY
    if meta.name in tables:
        return Ownership.OURS if marker == APPLICATION else Ownership.FOREIGN
    ours = {t.name for t in CORE_TABLES} <= tables and version_columns == {"version"}
    return Ownership.UNMARKED if ours else Ownership.FOREIGN


def ownership(conn: Connection) -> Ownership:
    """Classify the database behind `conn`, reading only."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    marker = None
    if meta.name in tables and {c["name"] for c in inspector.get_columns(meta.name)} == {"key", "value"}:
        marker = conn.execute(select(meta.c.value).where(meta.c.key == "application")).scalar()
    columns = set()
    if "schema_version" in tables:
        columns = {c["name"] for c in inspector.get_columns("schema_version")}
    return classify(tables, marker, columns)


def mark_owned(conn: Connection) -> None:
    """Write the marker (the table exists): this database is a circleci-ds store."""
    found = conn.execute(select(meta.c.value).where(meta.c.key == "application")).first()
    if found is None:
        conn.execute(insert(meta).values(key="application", value=APPLICATION))


def current_version(conn: Connection) -> int:
    """The stored schema version of a store (0 when its schema_version table is empty)."""
    return conn.execute(select(schema_version.c.version)).scalar_one_or_none() or 0
