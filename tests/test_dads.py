"""da-ds drop-in export: one document per job, da-ds' fields, units and ids; es-bulk; index mappings."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from circleci_ds.derive.facts import open_store
from circleci_ds.derive.people import People
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.documents.dads import dads_documents
from circleci_ds.documents.enriched import enrich_trees
from circleci_ds.documents.mapping import ExportKind, mapped_type, mappings
from circleci_ds.documents.raw import raw_items
from circleci_ds.inputs.identities import load_identities
from circleci_ds.store import Store
from collect_helpers import collect

CIRCLECI_SLUG = "circleci/6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b/9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
SLUGS = ["gh/acme/api", "bb/acme/billing", CIRCLECI_SLUG]
PERSON = ("id", "uuid", "name", "user_name", "domain", "org_name", "multi_org_names", "bot")
# The fields issue 12 lists, written out independently of the code.
ISSUE_FIELDS = {
    "uuid", "project_slug", "project_name", "pipeline_id", "pipeline_number", "pipeline_created_at",
    "pipeline_updated_at", "pipeline_state", "pipeline_trigger_type", "pipeline_trigger_date",
    "author_user_name", "author_bot", "workflow_id", "workflow_name", "workflow_status",
    "workflow_created_at",
    "workflow_stopped_at", "workflow_duration", "workflow_duration_seconds", "workflow_duration_minutes",
    "workflow_duration_hours", "workflow_creator_user_name", "workflow_canceled_by", "is_approval",
    "workflow_approval_user_name", "workflow_approval_request_id", "workflow_job_type", "workflow_job_id",
    "workflow_job_name", "workflow_job_status", "workflow_job_started_at", "workflow_job_stopped_at",
    "workflow_job_dependencies", "original_repository_url", "target_repository_url", "revision", "provider",
    "is_release", "tag", "is_commit", "commit_branch", "commit_subject", "commit_body", "job_number",
    "job_started_at", "job_queued_at", "job_stopped_at", "job_status", "job_parallelism", "job_duration",
    "job_executor_type", "job_executor_resource_class", "metadata__updated_on", "metadata__timestamp",
    "metadata__enriched_on", "metadata__backend_name", "metadata__backend_version",
}  # fmt: skip
ROLES = ("author", "workflow_creator", "workflow_approval")
ISSUE_FIELDS |= {f"{role}_{f}" for role in ROLES for f in PERSON}
# Beyond da-ds: the native project (for the index name), the origin, and the canceller's id; the
# job's credits and utilisation from the usage export (null when unknown).
USAGE_FIELDS = {"job_credits", "job_user_credits", "job_median_cpu_pct", "job_max_cpu_pct",
                "job_median_ram_pct", "job_max_ram_pct"}  # fmt: skip
EXTRA_FIELDS = {"origin", "project", "workflow_canceled_by_id", *USAGE_FIELDS}
IDENTITIES = """\
people:
- name: Alice Developer
  email_domain: alice.example
  logins: {github: alice-dev, bitbucket: alice-dev, gitlab: alice-dev}
  enrollments:
  - {organization: Acme, end: "2026-10-20T00:00:00Z"}
  - {organization: Beta Corp, start: "2026-10-20T00:00:00Z"}
- name: Renovate
  bot: true
  logins: {github: renovate-bot}
"""
SPLIT = "2026-10-20T00:00:00Z"




class Collected:
    """One collection of the simulator, kept for the module's tests."""

    def __init__(self, sim: Simulator, db_url: str) -> None:
        self.sim = sim
        self.db_url = db_url
        self.truth = {slug: sim.truth(slug) for slug in [p.slug for p in sim.config.projects]}
        self.users = sim.users_truth()

    def docs(self, identities: Path | None = None) -> list[dict[str, Any]]:
        with opened(self.db_url) as store:
            people = People.load(store, load_identities(identities) if identities else None)
            return list(dads_documents(store.iter_trees(), people))

    def jobs(self) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        for pipelines in self.truth.values():
            for pipeline in pipelines:
                for workflow in pipeline["workflows"]:
                    for job in workflow["jobs"]:
                        yield pipeline, workflow, job


class opened:
    def __init__(self, db_url: str) -> None:
        self.store = open_store(db_url, create=False)

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.close()


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collected]:
    projects = [
        SimProject(SLUGS[0], 25),
        SimProject(SLUGS[1], 10, default_branch="master"),
        SimProject(SLUGS[2], 8),
    ]
    sim = Simulator(SimConfig(seed=11, projects=projects, span_days=5.0, future_days=1.0))
    url = sim.start_thread()
    db_url = f"sqlite:///{tmp_path_factory.mktemp('dads') / 'store.db'}"
    try:
        results, _ = asyncio.run(collect(url, db_url, SLUGS, token="t"))
        assert all(r.error is None for r in results)
        yield Collected(sim, db_url)
    finally:
        sim.stop_thread()


def epoch(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def by_job(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {(d["workflow_job_id"], d["workflow_id"]): d for d in docs}  # type: ignore[misc]


# -- the documents --------------------------------------------------------------------------------


def test_one_document_per_job_approval_and_blocked_included(collected: Collected) -> None:
    docs = collected.docs()
    truth_jobs = list(collected.jobs())
    assert len(docs) == len(truth_jobs) == len(by_job(docs))
    assert {d["workflow_job_type"] for d in docs} == {"build", "approval"}
    statuses = {d["workflow_job_status"] for d in docs}
    assert "blocked" in statuses or "blocked" not in {j["status"] for _, _, j in truth_jobs}
    assert "on_hold" in statuses


def test_fields_are_da_ds_list(collected: Collected) -> None:
    for doc in collected.docs():
        assert set(doc) == ISSUE_FIELDS | EXTRA_FIELDS


def test_uuid_is_sha1_of_job_pipeline_and_workflow_ids(collected: Collected) -> None:
    docs = by_job(collected.docs())
    for pipeline, workflow, job in collected.jobs():
        doc = docs[job["id"], workflow["id"]]
        expected = hashlib.sha1(f"{job['id']}:{pipeline['id']}:{workflow['id']}".encode()).hexdigest()
        assert doc["uuid"] == expected


def test_durations_in_milliseconds_flags_zero_or_one_missing_times_null(collected: Collected) -> None:
    docs = by_job(collected.docs())
    seen_running = seen_null_job_time = False
    for pipeline, workflow, job in collected.jobs():
        doc = docs[job["id"], workflow["id"]]
        created, stopped = epoch(workflow["created_at"]), epoch(workflow["stopped_at"])
        if stopped is None or created is None:
            seen_running = True
            assert doc["workflow_duration"] is None and doc["workflow_duration_hours"] is None
        else:
            ms = round((stopped - created) * 1000)
            assert doc["workflow_duration"] == ms and isinstance(ms, int)
            assert doc["workflow_duration_seconds"] == pytest.approx(ms / 1000)
            assert doc["workflow_duration_minutes"] == pytest.approx(ms / 60_000)
            assert doc["workflow_duration_hours"] == pytest.approx(ms / 3_600_000)
        details = job["details"]
        if details and details["started_at"]:
            assert doc["job_duration"] == details["duration"]  # the API's milliseconds, as is
            assert epoch(doc["job_started_at"]) == epoch(details["started_at"])
        else:
            seen_null_job_time = True
            assert doc["job_duration"] is None and doc["job_started_at"] is None
        vcs = pipeline.get("vcs") or {}
        assert doc["is_approval"] == int(job["type"] == "approval")
        assert doc["is_release"] == int(bool(vcs.get("tag")))
        assert doc["is_commit"] == int(bool(vcs.get("branch")))
        assert all(v is None or not str(v).startswith("0001-") for v in doc.values())
    assert seen_running and seen_null_job_time


def test_people_resolved_deleted_and_unknown_without_identities(collected: Collected) -> None:
    docs = by_job(collected.docs())
    deleted = 0
    for pipeline, workflow, job in collected.jobs():
        doc = docs[job["id"], workflow["id"]]
        creator = collected.users[workflow["started_by"]]
        assert doc["workflow_creator_user_name"] == (creator["login"] if creator else None)
        deleted += creator is None
        assert doc["author_user_name"] == pipeline["trigger"]["actor"]["login"]
        if job.get("approved_by"):
            approver = collected.users[job["approved_by"]]
            assert doc["workflow_approval_user_name"] == (approver["login"] if approver else None)
        for role in ("author", "workflow_creator", "workflow_approval"):
            assert doc[f"{role}_org_name"] == "Unknown" and doc[f"{role}_multi_org_names"] == []
            assert doc[f"{role}_uuid"] == "Unknown" and doc[f"{role}_domain"] == "Unknown"
    assert deleted, "the simulated history has workflows started by a deleted account"


def test_organisation_comes_from_identities_at_the_event_date(collected: Collected, tmp_path: Path) -> None:
    path = tmp_path / "identities.yaml"
    path.write_text(IDENTITIES)
    split = epoch(SPLIT)
    assert split is not None
    checked = {"author": 0, "workflow_creator": 0, "workflow_approval": 0}
    for doc in collected.docs(path):
        moments = {
            "author": doc["pipeline_created_at"],
            "workflow_creator": doc["workflow_created_at"],
            "workflow_approval": doc["workflow_job_stopped_at"] or doc["workflow_created_at"],
        }
        for role, moment in moments.items():
            applies = role != "workflow_approval" or doc["is_approval"]
            if doc[f"{role}_user_name"] == "alice-dev" and applies:
                at = epoch(moment)
                assert at is not None
                assert doc[f"{role}_org_name"] == ("Acme" if at < split else "Beta Corp")
                assert doc[f"{role}_multi_org_names"] == [doc[f"{role}_org_name"]]
                assert (doc[f"{role}_name"], doc[f"{role}_domain"]) == ("Alice Developer", "alice.example")
                checked[role] += 1
            elif doc[f"{role}_user_name"] == "renovate-bot":
                assert doc[f"{role}_bot"] is True and doc[f"{role}_org_name"] == "Unknown"
    assert all(checked.values()), checked


# -- es-bulk and mappings ---------------------------------------------------------------------------


def export_lines(db_url: str, *args: str) -> list[str]:
    command = [sys.executable, "-m", "circleci_ds", "export", "--db", db_url, *args]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_es_bulk_lines_index_each_document_by_its_uuid(collected: Collected) -> None:
    lines = export_lines(collected.db_url, "--kind", "dads", "--format", "es-bulk")
    actions, docs = [json.loads(x) for x in lines[::2]], [json.loads(x) for x in lines[1::2]]
    assert len(actions) == len(docs) == len(list(collected.jobs()))
    for action, doc in zip(actions, docs, strict=True):
        assert action == {"index": {"_index": "sds-acme-circleci", "_id": doc["uuid"]}}
    named = export_lines(collected.db_url, "--kind", "dads", "--format", "es-bulk", "--index", "ci-jobs")
    assert {json.loads(x)["index"]["_index"] for x in named[::2]} == {"ci-jobs"}


def _fits(es_type: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, list):
        return all(_fits(es_type, v) for v in value)
    checks = {
        "keyword": lambda v: isinstance(v, str),
        "text": lambda v: isinstance(v, str),
        "date": lambda v: isinstance(v, str) and epoch(v) is not None,
        "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "double": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
    }
    return checks[es_type](value)


@pytest.mark.parametrize("kind", list(ExportKind))
def test_every_exported_field_has_a_mapping_of_its_type(collected: Collected, kind: ExportKind) -> None:
    mapping = mappings(kind)
    with opened(collected.db_url) as store:
        people = People.load(store)
        docs = {
            ExportKind.raw: lambda: raw_items(store),
            ExportKind.enriched: lambda: enrich_trees(
                store.iter_trees(), store.project_infos(), people=people
            ),
            ExportKind.dads: lambda: dads_documents(store.iter_trees(), people),
        }[kind]()
        checked: set[str] = set()
        for doc in docs:
            for name, value in doc.items():
                es_type = mapped_type(mapping, name)
                assert es_type is not None, f"{kind}: {name} has no mapping"
                assert _fits(es_type, value), f"{kind}: {name}={value!r} does not fit {es_type}"
                checked.add(name)
    assert checked


def test_es_mapping_command_prints_a_template(collected: Collected) -> None:
    command = [sys.executable, "-m", "circleci_ds", "es-mapping", "--kind", "dads"]
    template = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert template["index_patterns"] == ["sds-*-circleci"]
    props = template["template"]["mappings"]["properties"]
    assert props["workflow_duration"]["type"] == "long" and props["workflow_created_at"]["type"] == "date"
    assert props["workflow_duration_hours"]["type"] == "double"
    assert props["author_org_name"]["type"] == "keyword"
    assert props["is_approval"]["type"] == "long" and props["author_bot"]["type"] == "boolean"


def test_a_bad_index_name_exits_2(collected: Collected) -> None:
    command = [sys.executable, "-m", "circleci_ds", "export", "--db", collected.db_url, "--kind", "dads",
               "--format", "es-bulk", "--index", "Bad Name"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2 and result.stdout == "" and "--index 'Bad Name'" in result.stderr
