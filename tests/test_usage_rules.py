"""The usage rules as pure functions: export windows, the limits, and reading the CSV."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circleci_ds.collect import usage_plan as plan
from circleci_ds.derive.usage import Limits, ProjectMap, UsageFileError, parse_file

DAY = 86400.0
NOW = datetime(2026, 11, 7, 9, 30, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 11, 7, tzinfo=UTC).timestamp()
NO_PROJECTS = ProjectMap({}, {})


def covers(windows: list[plan.Window], start: float, end: float) -> bool:
    reach = start
    for w_start, w_end in sorted(windows):
        if w_start > reach:
            return False
        reach = max(reach, w_end)
    return reach >= end


def test_first_run_covers_the_year_newest_first() -> None:
    windows = plan.windows_to_export(NOW, [], [])
    assert len(windows) == 12
    assert windows[0][1] == MIDNIGHT and windows == sorted(windows, key=lambda w: -w[1])
    assert all(end - start <= 31 * DAY for start, end in windows)
    assert min(start for start, _ in windows) == MIDNIGHT - 365 * DAY > NOW - 366 * DAY
    assert covers(windows, MIDNIGHT - 365 * DAY, MIDNIGHT)


def test_later_runs_export_the_new_days_and_the_two_before() -> None:
    covered = plan.windows_to_export(NOW, [], [])
    later = NOW + 3 * DAY
    windows = plan.windows_to_export(later, covered, [])
    assert windows == [(MIDNIGHT - 2 * DAY, MIDNIGHT + 3 * DAY)]


def test_windows_in_flight_or_failed() -> None:
    year = plan.windows_to_export(NOW, [], [])
    newest, rest = year[0], year[1:]
    again = plan.windows_to_export(NOW, rest, [])  # the newest failed: asked again, with two days more
    assert covers(again, newest[0] - 2 * DAY, newest[1]) and all(e - s <= 31 * DAY for s, e in again)
    assert plan.windows_to_export(NOW, rest, [newest]) == [(newest[0] - 2 * DAY, newest[0])]
    assert plan.windows_to_export(NOW, [*rest, newest], []) == [(MIDNIGHT - 2 * DAY, MIDNIGHT)]


@given(
    now=st.floats(1.7e9, 1.9e9),
    spans=st.lists(st.tuples(st.floats(0, 400), st.floats(0, 40)), max_size=6),
)
def test_windows_are_always_acceptable(now: float, spans: list[tuple[float, float]]) -> None:
    end = plan.last_midnight(now)
    covered = [(end - a * DAY, end - a * DAY + b * DAY) for a, b in spans]
    for start, stop in plan.windows_to_export(now, covered, []):
        assert stop - start <= 31 * DAY and stop <= now and start >= now - 366 * DAY and stop > start


def test_limits() -> None:
    limit = plan.Limit(3, 60.0)
    assert plan.allowed_now([0.0, 10.0], 30.0, limit) == 1
    assert plan.allowed_now([0.0, 10.0, 20.0], 30.0, limit) == 0
    assert plan.next_slot([0.0, 10.0, 20.0], 30.0, limit) == 60.0
    assert plan.allowed_now([0.0, 10.0, 20.0], 61.0, limit) == 1


# -- the CSV ---------------------------------------------------------------------------------------------


def rows(text: str, projects: ProjectMap = NO_PROJECTS, **limits: int) -> list[dict[str, object]]:
    return list(parse_file(gzip.compress(text.encode()), "e1", projects, Limits(**limits)))


def test_columns_by_name_any_case_extra_ignored_nulls_and_booleans() -> None:
    text = (
        "job_id,Organization_Id,NEW_COLUMN,IS_WORKFLOW_SUCCESSFUL,JOB_RUN_NUMBER,TOTAL_CREDITS,USER_CREDITS\n"
        "j1,o1,whatever,y,\\N,12.5,2\n"
        '"j2","o1","x","False","7","\\N","0"\n'
        "j3,o1,,TRUE,8,1,0\n"
    )
    got = rows(text)
    assert [r["job_run_id"] for r in got] == ["j1", "j2", "j3"]
    assert [r["is_workflow_successful"] for r in got] == [1, 0, 1]
    assert [r["job_number"] for r in got] == [None, 7, 8]
    assert [r["total_credits"] for r in got] == [12.5, None, 1.0]
    assert got[0]["project_slug"] is None and got[0]["export_id"] == "e1"


def test_quoting_and_backslash_escapes() -> None:
    text = (
        "ORGANIZATION_ID,JOB_ID,JOB_NAME,VCS_BRANCH\n"
        'o,j1,"a, ""quoted"" name","multi\nline"\n'
        "o,j2,comma\\, escaped,back\\\\slash\n"
        'o,j3,"\\N inside","\\N"\n'
    )
    got = rows(text)
    assert got[0]["job_name"] == 'a, "quoted" name' and got[0]["branch"] == "multi\nline"
    assert got[1]["job_name"] == "comma, escaped" and got[1]["branch"] == "back\\slash"
    assert got[2]["job_name"] == "N inside"  # an escaped N inside quotes is text
    assert got[2]["branch"] is None  # a quoted `\N` is null too


def test_times_days_and_project_mapping() -> None:
    projects = ProjectMap.build(["gh/acme/web"], {"gh/acme/api": "p-api"})
    text = (
        "ORGANIZATION_ID,JOB_ID,PROJECT_ID,PROJECT_NAME,ORGANIZATION_NAME,VCS_NAME,JOB_RUN_STARTED_AT,JOB_RUN_DATE\n"
        "o,j1,p-api,renamed,acme,github,2026-11-01 10:00:00.250,2026-11-01\n"
        "o,j2,p-web,WEB,Acme,github,2026-11-02 23:59:59,\\N\n"
        "o,j3,p-x,web,acme,github_app,\\N,\\N\n"
    )
    got = rows(text, projects)
    assert [r["project_slug"] for r in got] == ["gh/acme/api", "gh/acme/web", None]
    assert got[0]["started_at"] == datetime(2026, 11, 1, 10, 0, 0, 250000, tzinfo=UTC).timestamp()
    assert got[0]["run_day"] == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert got[1]["run_day"] == datetime(2026, 11, 2, tzinfo=UTC).timestamp()  # from the start time
    assert got[2]["run_day"] is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("ORG,JOB\no,j\n", "lacks ORGANIZATION_ID, JOB_ID"),
        ("ORGANIZATION_ID,JOB_ID\no\n", "1 fields, the header has 2"),
        ('ORGANIZATION_ID,JOB_ID\n"o,j\n', "not readable CSV"),
        ("ORGANIZATION_ID,JOB_ID,TOTAL_CREDITS\no,j,nan\n", "out of range"),
        ("ORGANIZATION_ID,JOB_ID,TOTAL_CREDITS\no,j,lots\n", "total_credits"),
        ("ORGANIZATION_ID,JOB_ID\no," + "j" * 65 + "\n", "an id of 65 characters"),
        ("ORGANIZATION_ID,JOB_ID\n\\N,j\n", "no ORGANIZATION_ID or JOB_ID"),
        ("ORGANIZATION_ID,JOB_ID,IS_WORKFLOW_SUCCESSFUL\no,j,maybe\n", "not a boolean"),
    ],
)
def test_malformed_files_fail_with_one_line(text: str, words: str) -> None:
    with pytest.raises(UsageFileError) as caught:
        rows(text)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_bounds_on_inflated_size_and_line_length() -> None:
    body = "ORGANIZATION_ID,JOB_ID\n" + "o,j\n" * 200_000
    with pytest.raises(UsageFileError, match="gzip bomb"):
        rows(body, max_csv_bytes=100_000)
    with pytest.raises(UsageFileError, match="line longer"):
        rows("ORGANIZATION_ID,JOB_ID\no," + "x" * 5000 + "\n", max_line_bytes=1000)


def test_plain_csv_without_gzip_magic_is_read_as_is() -> None:
    data = b"ORGANIZATION_ID,JOB_ID\no,j\n"
    assert [r["job_run_id"] for r in parse_file(data, "e", NO_PROJECTS)] == ["j"]
    assert list(parse_file(b"", "e", NO_PROJECTS)) == []


def test_usage_runs_holds_the_agreed_columns() -> None:
    """The table the cost metrics read: these columns are an interface (more may come, none go)."""
    from circleci_ds.store import schema

    agreed = [
        "org_id",
        "job_run_id",
        "org_name",
        "project_id",
        "project_name",
        "vcs_name",
        "project_slug",
        "branch",
        "pipeline_id",
        "pipeline_number",
        "workflow_id",
        "workflow_name",
        "job_name",
        "job_number",
        "queued_at",
        "started_at",
        "stopped_at",
        "run_day",
        "status",
        "resource_class",
        "executor",
        "parallelism",
        "run_seconds",
        "median_cpu_pct",
        "max_cpu_pct",
        "median_ram_pct",
        "max_ram_pct",
        "total_credits",
        "user_credits",
        "compute_credits",
        "dlc_credits",
        "network_credits",
        "storage_credits",
        "is_workflow_successful",
        "export_id",
    ]
    columns = {c.name for c in schema.usage_runs.columns}
    assert set(agreed) <= columns
    assert [c.name for c in schema.usage_runs.primary_key.columns] == ["org_id", "job_run_id"]
