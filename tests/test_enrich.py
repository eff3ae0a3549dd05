"""Enriched documents: fields, ids, nulls, timestamps, reruns, approvals, and the es-bulk output."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from builders import job_item, stored_tree
from circleci_ds.derive.facts import job_seconds
from circleci_ds.documents.dads import job_duration_ms
from circleci_ds.documents.enriched import enrich_trees, is_bot_login
from circleci_ds.documents.raw import es_bulk, index_name
from circleci_ds.ids import uuid
from circleci_ds.store import StoredTree
from circleci_ds.times import parse_ts, stamp

ORIGIN = "https://circleci.com/gh/acme/api"
SLUG = "gh/acme/api"
INFOS = {SLUG: {"slug": SLUG, "vcs_info": {"default_branch": "main", "provider": "GitHub", "vcs_url": "x"}}}
ENRICHED_ON = datetime(2026, 11, 5, 12, 0, tzinfo=UTC).timestamp()
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")


def details(number: int, **fields: Any) -> dict[str, Any]:
    base = {
        "number": number,
        "web_url": f"https://app.circleci.com/pipelines/gh/acme/api/1/workflows/w/jobs/{number}",
        "executor": {"type": "docker", "resource_class": "medium"},
        "parallelism": 2,
        "contexts": [{"name": "org-global"}],
    }
    return {**base, **fields}


def full_tree() -> dict[str, Any]:
    """One pipeline on main: a failed workflow, its rerun, an approval, and jobs of every shape."""
    build_failed = job_item(
        "j-1",
        "test",
        "failed",
        job_number=11,
        started_at="2026-11-01T10:00:30Z",
        stopped_at="2026-11-01T10:05:30Z",
        details=details(
            11,
            queued_at="2026-11-01T10:00:00.000Z",
            started_at="2026-11-01T10:00:30.250Z",
            created_at="2026-11-01T09:59:59.500Z",
            duration=300250,
        ),
    )
    never_ran = job_item("j-2", "deploy", "blocked", started_at=None, details=None)
    rerun_ok = job_item(
        "j-3",
        "test",
        "success",
        job_number=12,
        started_at="2026-11-01T10:30:10Z",
        stopped_at="2026-11-01T10:40:00Z",
        details=details(12, queued_at="2026-11-01T10:30:00.000Z", duration=None),
    )
    hold = job_item(
        "j-4",
        "hold",
        "success",
        type="approval",
        job_number=13,
        dependencies=["j-3"],
        started_at=None,
        stopped_at="2026-11-01T11:10:00Z",
        approved_by="user-1",
        details=None,
    )
    return {
        "id": "p-1",
        "number": 1,
        "project_slug": SLUG,
        "state": "created",
        "created_at": "2026-11-01T09:59:58.123Z",
        "updated_at": "2026-11-01T09:59:59.000Z",
        "errors": [
            {"type": "config", "message": "x"},
            {"type": "plan", "message": "y"},
            {"type": "config", "message": "z"},
        ],
        "trigger": {
            "type": "webhook",
            "received_at": "2026-11-01T09:59:57.000Z",
            "actor": {"login": "dependabot[bot]", "avatar_url": "a"},
        },
        "vcs": {
            "provider_name": "GitHub",
            "origin_repository_url": "https://github.com/acme/api",
            "target_repository_url": "https://github.com/acme/api",
            "revision": "abc123",
            "branch": "main",
            "commit": {"subject": "Fix <b>things</b>", "body": ""},
        },
        "workflows": [
            # API order is newest first: the rerun comes before the original.
            {
                "id": "w-2",
                "name": "build",
                "status": "success",
                "created_at": "2026-11-01T10:30:00Z",
                "stopped_at": "2026-11-01T11:10:00Z",
                "pipeline_id": "p-1",
                "pipeline_number": 1,
                "project_slug": SLUG,
                "started_by": "user-1",
                "jobs": [rerun_ok, hold],
            },
            {
                "id": "w-1",
                "name": "build",
                "status": "failed",
                "created_at": "2026-11-01T10:00:00Z",
                "stopped_at": "2026-11-01T10:05:30Z",
                "pipeline_id": "p-1",
                "pipeline_number": 1,
                "project_slug": SLUG,
                "started_by": "user-1",
                "auto_rerun_number": 0,
                "jobs": [build_failed, never_ran],
            },
            {
                "id": "w-3",
                "name": "lint",
                "status": "on_hold",
                "created_at": "2026-11-01T10:00:00Z",
                "stopped_at": None,
                "pipeline_id": "p-1",
                "pipeline_number": 1,
                "project_slug": SLUG,
                "started_by": "user-1",
                "jobs": [],
            },
        ],
    }


def stored(data: dict[str, Any], endpoint: str = SLUG, native: str = "acme") -> StoredTree:
    return stored_tree(data, endpoint, native, updated_on=1793527200.5)


def docs_by_id(
    data: dict[str, Any], infos: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    docs = enrich_trees([stored(data)], INFOS if infos is None else infos, enriched_on=ENRICHED_ON)
    out = {}
    for doc in docs:
        key = {"pipeline": "pipeline_id", "workflow": "workflow_id", "job": "job_id"}[doc["type"]]
        out[doc[key]] = doc
    return out


def test_one_document_per_pipeline_workflow_and_job_in_tree_order() -> None:
    docs = list(enrich_trees([stored(full_tree())], INFOS, enriched_on=ENRICHED_ON))
    assert [d["type"] for d in docs] == [
        "pipeline",
        "workflow",
        "job",
        "job",
        "workflow",
        "job",
        "job",
        "workflow",
    ]
    flags = [(d["is_circleci_pipeline"], d["is_circleci_workflow"], d["is_circleci_job"]) for d in docs]
    assert flags[0] == (1, 0, 0) and flags[1] == (0, 1, 0) and flags[2] == (0, 0, 1)


def test_uuid_is_perceval_sha1_of_origin_and_item_id() -> None:
    docs = docs_by_id(full_tree())
    for item_id, doc in docs.items():
        assert doc["uuid"] == hashlib.sha1(f"{ORIGIN}:{item_id}".encode()).hexdigest()
    assert uuid("a", "b") == hashlib.sha1(b"a:b").hexdigest()
    assert len({d["uuid"] for d in docs.values()}) == len(docs)


def test_common_fields() -> None:
    doc = docs_by_id(full_tree())["j-1"]
    assert doc["origin"] == ORIGIN
    assert doc["project"] == "acme"
    assert doc["project_slug"] == SLUG
    assert doc["metadata__backend_name"] == "CircleCI"
    assert isinstance(doc["metadata__backend_version"], str) and doc["metadata__backend_version"]
    assert doc["metadata__updated_on"] == "2026-11-01T10:00:00.500Z"  # from the tree's epoch 1793527200.5
    assert doc["metadata__timestamp"] == "2026-11-01T10:00:00.500Z"
    assert doc["metadata__enriched_on"] == "2026-11-05T12:00:00Z"
    assert doc["repository_url"] == "https://github.com/acme/api"
    assert doc["branch"] == "main"
    assert doc["tag"] is None
    assert doc["commit_sha"] == "abc123"
    assert doc["commit_subject"] == "Fix <b>things</b>"  # raw text; escaping is the renderer's job
    assert doc["trigger_type"] == "webhook"
    assert doc["author_login"] == "dependabot[bot]"
    assert doc["author_bot"] is True
    assert doc["default_branch"] == "main"
    assert doc["is_default_branch"] is True
    assert doc["pipeline_id"] == "p-1" and doc["pipeline_number"] == 1


def test_pipeline_document() -> None:
    doc = docs_by_id(full_tree())["p-1"]
    assert doc["type"] == "pipeline"
    assert doc["state"] == "created"
    assert doc["created_at"] == "2026-11-01T09:59:58.123Z"
    assert doc["grimoire_creation_date"] == "2026-11-01T09:59:58.123Z"
    assert doc["updated_at"] == "2026-11-01T09:59:59.000Z"  # already ISO-8601 UTC: kept as given
    assert doc["errors_count"] == 3
    assert doc["error_types"] == ["config", "plan"]
    assert doc["workflows_total"] == 3
    assert (doc["workflows_success"], doc["workflows_failed"], doc["workflows_on_hold"]) == (1, 1, 1)
    assert doc["workflows_canceled"] == 0


def test_workflow_documents_rerun_index_and_duration() -> None:
    docs = docs_by_id(full_tree())
    first, rerun, lint = docs["w-1"], docs["w-2"], docs["w-3"]
    assert (first["rerun_index"], first["is_rerun"]) == (0, False)
    assert (rerun["rerun_index"], rerun["is_rerun"]) == (1, True)
    assert (lint["rerun_index"], lint["is_rerun"]) == (0, False)
    assert first["workflow_name"] == "build" and first["status"] == "failed"
    assert first["duration_seconds"] == 330.0
    assert rerun["duration_seconds"] == 2400.0
    assert first["auto_rerun_number"] == 0
    assert rerun["auto_rerun_number"] is None
    assert lint["stopped_at"] is None and lint["duration_seconds"] is None
    assert (first["jobs_total"], first["jobs_failed"], first["jobs_blocked"], first["jobs_success"]) == (
        2,
        1,
        1,
        0,
    )
    assert first["jobs_terminated_unknown"] == 0


def test_job_document_from_details() -> None:
    doc = docs_by_id(full_tree())["j-1"]
    assert doc["job_number"] == 11
    assert doc["job_name"] == "test" and doc["job_type"] == "build" and doc["status"] == "failed"
    assert doc["queued_at"] == "2026-11-01T10:00:00.000Z"
    assert doc["started_at"] == "2026-11-01T10:00:30.250Z"  # details have milliseconds: they win
    assert doc["stopped_at"] == "2026-11-01T10:05:30Z"  # from the job list when details lack it
    assert doc["queue_time_seconds"] == 30.25
    assert doc["duration_seconds"] == 300.25  # details' duration is in milliseconds
    assert doc["created_at"] == "2026-11-01T09:59:59.500Z"
    assert doc["grimoire_creation_date"] == "2026-11-01T09:59:59.500Z"
    assert doc["executor_type"] == "docker" and doc["resource_class"] == "medium"
    assert doc["parallelism"] == 2 and doc["contexts"] == ["org-global"]
    assert doc["web_url"].endswith("/jobs/11")
    assert (doc["workflow_id"], doc["workflow_name"], doc["workflow_status"]) == ("w-1", "build", "failed")
    assert doc["workflow_rerun_index"] == 0 and doc["approval_wait_seconds"] is None


def test_job_duration_falls_back_to_timestamps() -> None:
    doc = docs_by_id(full_tree())["j-3"]
    assert doc["duration_seconds"] == 590.0
    assert doc["queue_time_seconds"] == 10.0
    assert doc["is_rerun"] is True and doc["workflow_rerun_index"] == 1


def test_job_that_never_ran_has_nulls_not_zeros() -> None:
    doc = docs_by_id(full_tree())["j-2"]
    for key in (
        "job_number",
        "queued_at",
        "started_at",
        "stopped_at",
        "queue_time_seconds",
        "duration_seconds",
        "executor_type",
        "resource_class",
        "parallelism",
        "web_url",
        "created_at",
    ):
        assert doc[key] is None, key
    assert doc["contexts"] == []
    assert doc["grimoire_creation_date"] == "2026-11-01T10:00:00Z"  # its workflow's creation


def test_zero_duration_of_an_unstarted_job_is_unknown() -> None:
    assert job_seconds(0, None, None) is None
    assert job_seconds(None, None, None) is None
    start = datetime(2026, 11, 1, 10, 0)
    assert job_seconds(0, start, start) == 0.0  # started and stopped at once: a real zero
    assert job_seconds(1500, start, None) == 1.5


def test_facts_and_dads_share_one_job_duration_rule() -> None:
    start = 1_790_000_000.0
    cases = [
        (1500, start, start + 2),  # the API's milliseconds win
        (-5000, start, start + 2),  # a negative duration is never used: stopped - started
        (-5000, start, start - 2),  # and a negative span is null
        (float("nan"), start, start + 3),
        (float("inf"), start, None),
        (0, None, None),  # never started: unknown, not instant
        (2500, None, None),
        (True, start, start + 1),
    ]
    want = [1500, 2000, None, 3000, None, None, 2500, 1000]
    assert [job_duration_ms(*case) for case in cases] == want
    assert [job_seconds(*case) for case in cases] == [None if ms is None else ms / 1000 for ms in want]


def test_approval_wait_from_dependency_stop_to_approval() -> None:
    doc = docs_by_id(full_tree())["j-4"]
    # on hold once j-3 stopped (10:40:00), approved at 11:10:00
    assert doc["approval_wait_seconds"] == 1800.0
    assert doc["duration_seconds"] is None
    assert doc["approved_by"] == "user-1"
    assert doc["job_type"] == "approval"


def test_approval_wait_from_its_own_start_and_unapproved_is_null() -> None:
    tree = full_tree()
    hold = tree["workflows"][0]["jobs"][1]
    hold["started_at"] = "2026-11-01T10:50:00Z"
    assert docs_by_id(tree)["j-4"]["approval_wait_seconds"] == 1200.0
    hold.update(status="on_hold", stopped_at=None)
    assert docs_by_id(tree)["j-4"]["approval_wait_seconds"] is None


def test_missing_vcs_and_actor_give_nulls() -> None:
    tree = full_tree()
    del tree["vcs"]
    tree["trigger"] = {"type": "Decoupled Ingestion System", "received_at": "2026-11-01T09:59:57Z"}
    doc = docs_by_id(tree)["p-1"]
    for key in (
        "branch",
        "commit_sha",
        "commit_subject",
        "repository_url",
        "tag",
        "author_login",
        "author_bot",
        "is_default_branch",
        "vcs_provider",
    ):
        assert doc[key] is None, key
    assert doc["trigger_type"] == "Decoupled Ingestion System"  # off-enum values are kept


def test_default_branch_unknown_or_other() -> None:
    assert docs_by_id(full_tree(), infos={})["p-1"]["is_default_branch"] is None
    assert docs_by_id(full_tree(), infos={})["p-1"]["default_branch"] is None
    tree = full_tree()
    tree["vcs"]["branch"] = "feature/x"
    assert docs_by_id(tree)["p-1"]["is_default_branch"] is False
    tree["vcs"]["branch"] = None
    tree["vcs"]["tag"] = "v1.0"
    doc = docs_by_id(tree)["p-1"]
    # a tag is the pipeline's ref when it has no branch (see facts.branch_of)
    assert doc["tag"] == "v1.0" and doc["branch"] == "v1.0" and doc["branch_source"] == "vcs.tag"
    assert doc["is_default_branch"] is False


def test_timestamps_are_utc_iso() -> None:
    tree = full_tree()
    tree["created_at"] = "2026-11-01T11:59:58+02:00"
    tree["updated_at"] = "not a date"
    docs = docs_by_id(tree)
    assert docs["p-1"]["created_at"] == "2026-11-01T09:59:58Z"
    assert docs["p-1"]["updated_at"] is None
    for doc in docs.values():
        for key, value in doc.items():
            if key.endswith(("_at", "_on", "_date")) and value is not None:
                assert ISO_UTC.match(value), (key, value)


@pytest.mark.parametrize(
    ("given", "text"),
    [
        ("2026-11-01T10:00:00Z", "2026-11-01T10:00:00Z"),
        ("2026-11-01T10:00:00.120Z", "2026-11-01T10:00:00.120Z"),
        ("2026-11-01T10:00:00.12Z", "2026-11-01T10:00:00.120Z"),
        ("2026-11-01 10:00:00Z", "2026-11-01T10:00:00Z"),
        ("2026-11-01T10:00+01Z", "2026-11-01T09:00:00Z"),
        ("2026-11-01T10:00:00", "2026-11-01T10:00:00Z"),
        ("yesterday", None),
    ],
)
def test_stamp_normalises_to_utc_iso(given: str, text: str | None) -> None:
    assert stamp(given)[1] == text


def test_unreadable_or_missing_updated_on_is_null() -> None:
    tree = stored_tree(full_tree())
    doc = next(enrich_trees([tree], INFOS, enriched_on=ENRICHED_ON))
    assert doc["metadata__updated_on"] is None


def test_workflows_without_created_at_sort_last_for_rerun_index() -> None:
    tree = full_tree()
    tree["workflows"][1]["created_at"] = None  # the original lost its date
    docs = docs_by_id(tree)
    assert docs["w-2"]["rerun_index"] == 0 and docs["w-1"]["rerun_index"] == 1


@pytest.mark.parametrize(
    ("login", "bot"),
    [
        ("dependabot[bot]", True),
        ("renovate-bot", True),
        ("bot-deployer", True),
        ("ci_bot", True),
        ("dependabot", True),
        ("github-actions", True),
        ("alice", False),
        ("abbott", False),
        ("robotics-fan", False),
        (None, None),
        ("", None),
    ],
)
def test_bot_logins(login: str | None, bot: bool | None) -> None:
    assert is_bot_login(login) is bot


def test_parse_time_forms() -> None:
    ten = datetime(2026, 11, 1, 10, 0, tzinfo=UTC).timestamp()
    assert parse_ts("2026-11-01T10:00:00Z") == ten
    assert parse_ts("2026-11-01T10:00:00.123Z") == pytest.approx(ten + 0.123)
    assert parse_ts("2026-11-01T12:00:00+02:00") == ten
    assert parse_ts(None) is None and parse_ts("") is None and parse_ts(5) is None


def test_enrichment_streams_lazily() -> None:
    def trees() -> Iterator[StoredTree]:
        yield stored(full_tree())
        raise AssertionError("read past the first tree")

    first = next(enrich_trees(trees(), INFOS))
    assert first["type"] == "pipeline"


def test_enriched_on_is_an_epoch_written_in_utc() -> None:
    doc = next(enrich_trees([stored(full_tree())], INFOS, enriched_on=1793880000.25))
    assert doc["metadata__enriched_on"] == "2026-11-05T12:00:00.250Z"


def test_enriched_on_defaults_to_now() -> None:
    doc = next(enrich_trees([stored(full_tree())], INFOS))
    assert ISO_UTC.match(doc["metadata__enriched_on"])


def test_es_bulk_lines() -> None:
    docs = list(enrich_trees([stored(full_tree())], INFOS, enriched_on=ENRICHED_ON))
    lines = list(es_bulk(docs, raw=False))
    assert len(lines) == 2 * len(docs)
    assert not any("\n" in line for line in lines)  # one JSON value per line, the writer adds newlines
    for action_line, doc_line, doc in zip(lines[::2], lines[1::2], docs, strict=True):
        assert json.loads(action_line) == {"index": {"_index": "sds-acme-circleci", "_id": doc["uuid"]}}
        assert json.loads(doc_line) == doc
    assert "<b>things</b>" in "".join(lines)  # non-ASCII and markup kept verbatim in JSON


@pytest.mark.parametrize(
    ("native", "raw", "expected"),
    [
        ("StackStorm", False, "sds-stackstorm-circleci"),
        ("StackStorm", True, "sds-stackstorm-circleci-raw"),
        ("lfn/onap", False, "sds-lfn-onap-circleci"),
        ("LF/Sub Project", True, "sds-lf-sub-project-circleci-raw"),
    ],
)
def test_index_names(native: str, raw: bool, expected: str) -> None:
    assert index_name(native, raw) == expected


# -- robustness: any field may be missing or null -----------------------------------------------------

STAMPS = st.one_of(
    st.none(),
    st.just(""),
    st.just("garbage"),
    st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S") + st_suffix(d)
    ),
)


def st_suffix(moment: datetime) -> str:
    return f".{moment.microsecond // 1000:03d}Z" if moment.microsecond % 2 else "Z"


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), value)


JOBS = st.fixed_dictionaries(
    {"id": st.uuids().map(str)},
    optional={
        "name": maybe(st.text(max_size=5)),
        "status": maybe(st.sampled_from(["success", "failed", "blocked", "on_hold", "canceled"])),
        "type": maybe(st.sampled_from(["build", "approval"])),
        "job_number": maybe(st.integers(1, 10**6)),
        "started_at": STAMPS,
        "stopped_at": STAMPS,
        "dependencies": maybe(st.lists(st.text(max_size=3), max_size=2)),
        "details": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "queued_at": STAMPS,
                    "started_at": STAMPS,
                    "created_at": STAMPS,
                    "duration": maybe(st.integers(0, 10**7)),
                    "executor": maybe(st.fixed_dictionaries({}, optional={"type": maybe(st.just("docker"))})),
                    "contexts": maybe(
                        st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)}), max_size=2)
                    ),
                },
            )
        ),
    },
)
WORKFLOWS = st.fixed_dictionaries(
    {"id": st.uuids().map(str)},
    optional={
        "name": maybe(st.sampled_from(["build", "test"])),
        "status": maybe(st.sampled_from(["success", "failed", "on_hold", "not_run"])),
        "created_at": STAMPS,
        "stopped_at": STAMPS,
        "jobs": maybe(st.lists(JOBS, max_size=3)),
    },
)
PIPELINES = st.fixed_dictionaries(
    {"id": st.uuids().map(str)},
    optional={
        "number": maybe(st.integers(1, 10**6)),
        "created_at": STAMPS,
        "updated_at": STAMPS,
        "errors": maybe(
            st.lists(st.fixed_dictionaries({"type": st.sampled_from(["config", "plan"])}), max_size=2)
        ),
        "trigger": maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": maybe(st.text(max_size=8)),
                    "actor": maybe(st.fixed_dictionaries({}, optional={"login": maybe(st.text(max_size=8))})),
                },
            )
        ),
        "vcs": maybe(
            st.fixed_dictionaries(
                {}, optional={"branch": maybe(st.text(max_size=5)), "revision": maybe(st.text(max_size=5))}
            )
        ),
        "workflows": maybe(st.lists(WORKFLOWS, max_size=3)),
    },
)


@settings(max_examples=150, deadline=None)
@given(PIPELINES)
def test_any_partial_tree_enriches_without_zeros_for_missing(data: dict[str, Any]) -> None:
    docs = list(enrich_trees([stored(data)], INFOS, enriched_on=ENRICHED_ON))
    assert docs[0]["type"] == "pipeline"
    for doc in docs:
        json.dumps(doc)
        for key, value in doc.items():
            if key.endswith(("_at", "_on", "_date")) and value is not None:
                assert ISO_UTC.match(value), (key, value)
        if doc["type"] == "job":
            # a duration of 0 only for a job that really started and stopped (or reported 0 ms once started)
            if doc["duration_seconds"] == 0:
                assert doc["started_at"] is not None
            if doc["started_at"] is None:
                assert doc["queue_time_seconds"] is None
