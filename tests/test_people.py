"""Who did what: user ids resolved once ever into the store, deleted accounts remembered."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert

from circleci_ds.collect.users import user_record
from circleci_ds.derive.facts import open_store, people_in, user_ids_in
from circleci_ds.derive.people import People
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.documents.enriched import enrich_trees
from circleci_ds.inputs.identities import load_identities
from circleci_ds.metrics.people import people_report
from circleci_ds.metrics.window import ALL_BRANCHES, Window
from circleci_ds.store import schema as s
from circleci_ds.store.trees import tree_rows
from circleci_ds.store.urls import engine_url
from circleci_ds.store.users import load_users, save_users, unresolved_user_ids
from collect_helpers import collect

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
SLUGS = ["gh/acme/api", "gh/acme/web"]
TOKEN = "any-token"  # the simulator takes any token when it is configured without one


def sim_config(**knobs: Any) -> SimConfig:
    projects = [SimProject("gh/acme/api", pipelines=30), SimProject("gh/acme/web", pipelines=20)]
    return SimConfig(**{"seed": 5, "projects": projects, "span_days": 6.0, "future_days": 2.0, **knobs})


def referenced_ids(sim: Simulator) -> set[str]:
    """Ids the API shows now, read from the simulator's truth (independent of the collector)."""
    ids: set[str] = set()
    for slug in SLUGS:
        for pipeline in sim.truth(slug):
            for workflow in pipeline["workflows"]:
                ids |= {workflow.get(k) for k in ("started_by", "canceled_by")}
                ids |= {job.get("approved_by") for job in workflow["jobs"]}
    return ids - {None}


def stored_users(db_url: str) -> dict[str, Any]:
    store = open_store(db_url, create=False)
    try:
        return load_users(store)
    finally:
        store.close()


def test_ids_named_by_workflows_and_jobs_are_only_uuids() -> None:
    tree = {"workflows": [
        {"started_by": A, "canceled_by": B, "jobs": [{"approved_by": A}, {"approved_by": None}]},
        {"started_by": "not-a-uuid", "jobs": [{"started_by": ["odd"], "name": A}]},
        "not a workflow",
    ]}  # fmt: skip
    assert user_ids_in(tree["workflows"][0]) == {A, B}  # type: ignore[index]
    assert people_in(tree) == {A, B}
    assert people_in({"workflows": None}) == set()


def test_a_404_is_a_deleted_user_and_hostile_fields_are_dropped() -> None:
    gone = user_record(A, None, 1.0)
    assert gone.deleted and gone.login is None
    odd = user_record(B, {"login": 7, "name": "x" * 10_000, "avatar_url": None}, 1.0)
    assert not odd.deleted and odd.login is None and odd.name is not None and len(odd.name) == 500


async def test_each_user_id_is_resolved_once_ever(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    url = sim.start_thread()
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    try:
        await collect(url, db_url, SLUGS, token=TOKEN)
        first = referenced_ids(sim)
        assert sim.stats["by_endpoint"]["user"] == len(first)
        truth = sim.users_truth()
        users = stored_users(db_url)
        assert set(users) == first
        for user_id, user in users.items():
            expected = truth[user_id]
            assert user.deleted == (expected is None)
            if expected is not None:
                assert (user.login, user.name) == (expected["login"], expected["name"])
        assert any(u.deleted for u in users.values())

        sim.reset_stats()
        await collect(url, db_url, SLUGS, token=TOKEN)  # nothing new: no user asked again
        assert sim.stats["by_endpoint"]["user"] == 0

        sim.advance(2 * 86400)
        sim.reset_stats()
        await collect(url, db_url, SLUGS, token=TOKEN)
        assert sim.stats["by_endpoint"]["user"] == len(referenced_ids(sim) - first)
        assert set(stored_users(db_url)) == referenced_ids(sim)
    finally:
        sim.stop_thread()


async def test_without_a_token_user_look_ups_are_skipped_and_made_once_a_token_comes(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    url = sim.start_thread()
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    try:
        results, _ = await collect(url, db_url, SLUGS)  # public projects, no token: /user would answer 401
        assert [r.error for r in results] == [None, None]
        assert stored_users(db_url) == {}
        assert sim.stats["by_endpoint"].get("user", 0) == 0  # not asked without a token
        sim.reset_stats()
        await collect(url, db_url, SLUGS, token=TOKEN)
        assert sim.stats["by_endpoint"]["user"] == len(referenced_ids(sim))
        assert set(stored_users(db_url)) == referenced_ids(sim)
    finally:
        sim.stop_thread()


def test_people_name_resolved_deleted_and_unknown_ids() -> None:
    people = People(
        {
            A: user_record(A, {"login": "alice", "name": "Alice", "avatar_url": None}, 1.0),
            B: user_record(B, None, 1.0),
        }
    )
    assert people.login_of(A) == "alice" and people.name_of(A) == "Alice"
    assert people.login_of(B) is None  # deleted
    assert people.login_of("33333333-3333-4333-8333-333333333333") is None  # never resolved
    known = people.person_by_id(A, "github", 0.0)
    assert (known.user_name, known.name, known.org_name) == ("alice", "Alice", "Unknown")
    assert known.multi_org_names == ()
    unknown = people.person_by_id(B, "github", 0.0)
    assert (unknown.user_name, unknown.name, unknown.id, unknown.bot) == (None, "Unknown", "Unknown", False)
    assert people.person("renovate-bot", "github", 0.0).bot


IDENTITIES = """\
people:
- name: Alice
  logins: {github: alice-dev}
  enrollments:
  - {organization: Acme, end: "2026-10-29T00:00:00Z"}
  - {organization: Beta, start: "2026-10-29T00:00:00Z"}
- name: Carol
  logins: {github: carol-sre}
  enrollments:
  - {organization: Acme}
"""
SPLIT = datetime(2026, 10, 29, tzinfo=UTC).timestamp()


def expected_org(login: str | None, at: float) -> str:
    """The identities above, applied by hand."""
    if login == "alice-dev":
        return "Acme" if at < SPLIT else "Beta"
    return "Acme" if login == "carol-sre" else "Unknown"


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


PerPerson = Counter[tuple[str | None, str]]


def truth_people(sim: Simulator) -> tuple[dict[str, list[int]], PerPerson, PerPerson]:
    """(org -> [runs, failures, reruns]), approvals and manual reruns per (login, org), from the simulator."""
    users = sim.users_truth()

    def login(user_id: str) -> str | None:
        return user["login"] if (user := users[user_id]) else None

    orgs: dict[str, list[int]] = {}
    approvals: PerPerson = Counter()
    reruns: PerPerson = Counter()
    for slug in SLUGS:
        for pipeline in sim.truth(slug):
            for w in pipeline["workflows"]:
                org = expected_org(login(w["started_by"]), ts(w["created_at"]))
                record = sim.history.workflows[w["id"]]
                tally = orgs.setdefault(org, [0, 0, 0])
                tally[0] += 1
                tally[1] += w["status"] in ("failed", "error")
                tally[2] += record.rerun_of is not None
                if record.rerun_of is not None and record.auto_rerun_number is None:
                    reruns[login(w["started_by"]), org] += 1
                for job in w["jobs"]:
                    if job["type"] == "approval" and job["status"] == "success":
                        who = login(job["approved_by"])
                        approvals[who, expected_org(who, ts(job["stopped_at"]))] += 1
    return orgs, approvals, reruns


async def collected_with_identities(tmp_path: Path) -> tuple[Simulator, str, Path]:
    """A simulator (stopped, its truth still readable), the store it was collected into, and IDENTITIES."""
    sim = Simulator(sim_config())
    url = sim.start_thread()
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    path = tmp_path / "identities.yaml"
    path.write_text(IDENTITIES)
    try:
        await collect(url, db_url, SLUGS, token=TOKEN)
    finally:
        sim.stop_thread()
    return sim, db_url, path


async def test_report_counts_runs_failures_reruns_by_organisation_and_approvers(tmp_path: Path) -> None:
    sim, db_url, path = await collected_with_identities(tmp_path)
    orgs, approvals, reruns = truth_people(sim)
    store = open_store(db_url, create=False)
    try:
        people = People.load(store, load_identities(path))
        got = people_report(store.iter_trees(), store.project_infos(), people, Window(branch=ALL_BRANCHES))
    finally:
        store.close()
    assert {o.organization: [o.runs, o.failures, o.reruns] for o in got.organizations} == orgs
    assert {"Acme", "Beta", "Unknown"} <= set(orgs)
    assert {(a.login, a.organization): a.approvals for a in got.approvers} == approvals
    assert {(r.login, r.organization): r.reruns for r in got.rerunners} == reruns
    assert [a.approvals for a in got.approvers] == sorted((a.approvals for a in got.approvers), reverse=True)
    assert any(a.login is None for a in got.approvers), "a deleted account approved something"


async def test_report_shows_people_in_json_terminal_and_escaped_html(tmp_path: Path) -> None:
    _, db_url, _ = await collected_with_identities(tmp_path)
    html = tmp_path / "report.html"
    base = [sys.executable, "-m", "circleci_ds", "report", "--db", db_url, "--branch", "*"]
    as_json = json.loads(subprocess.run([*base, "--format", "json"], capture_output=True, text=True,
                                        check=True).stdout)  # fmt: skip
    names = {a["name"] for a in as_json["people"]["approvers"] if a["name"]}
    assert as_json["people"]["organizations"][0]["organization"] == "Unknown"
    table = subprocess.run([*base, "--html", str(html)], capture_output=True, text=True, check=True).stdout
    assert "Runs by organisation" in table and "Who approves" in table and "Who reruns most" in table
    page = html.read_text()
    assert 'id="people"' in page
    for name in names:
        assert escape(name) in page
        assert "<" not in name or name not in page


async def test_enriched_documents_carry_logins_names_and_organisations(tmp_path: Path) -> None:
    sim, db_url, path = await collected_with_identities(tmp_path)
    users = sim.users_truth()
    store = open_store(db_url, create=False)
    try:
        people = People.load(store, load_identities(path))
        docs = list(enrich_trees(store.iter_trees(), store.project_infos(), people=people))
    finally:
        store.close()
    approvals = 0
    created: dict[str, float] = {}
    started_by: dict[str, str | None] = {}
    for doc in docs:  # each tree's pipeline first, then each workflow before its jobs
        if doc["type"] == "pipeline":
            created[doc["pipeline_id"]] = ts(doc["created_at"])
            assert "started_by_login" not in doc
        elif doc["type"] == "workflow":
            creator = users[doc["started_by"]]
            assert doc["started_by_login"] == (creator["login"] if creator else None)
            assert doc["started_by_name"] == (creator["name"] if creator else None)
            started_by[doc["workflow_id"]] = doc["started_by_login"]
        else:
            assert doc["started_by_login"] == started_by[doc["workflow_id"]]
            if doc["job_type"] == "approval" and doc["approved_by"]:
                approver = users[doc["approved_by"]]
                assert doc["approved_by_login"] == (approver["login"] if approver else None)
                approvals += 1
        author_org = expected_org(doc["author_login"], created[doc["pipeline_id"]])
        assert doc["author_org_name"] == author_org
    assert approvals


def test_the_upgrade_finds_the_people_of_trees_stored_before_it(db_url: str) -> None:
    tree = {"id": "p-1", "number": 1, "created_at": "2026-11-01T00:00:00Z", "workflows": [
        {"id": "w-1", "started_by": A, "jobs": [{"id": "j-1", "type": "approval", "approved_by": B}]},
        {"id": "w-2", "started_by": A, "jobs": []}]}  # fmt: skip
    rows = tree_rows("gh/acme/api", tree, fetched_at=1.0, is_final=True)
    before = s.MIGRATIONS.index(s._people_refs)
    engine = create_engine(engine_url(db_url))
    with engine.begin() as conn:  # a store of the release before people_refs, holding the tree
        for step in s.MIGRATIONS[:before]:
            step(conn)
        conn.execute(insert(s.schema_version).values(version=before))
        conn.execute(insert(s.pipelines), [rows.pipeline])
        conn.execute(insert(s.workflows), rows.workflows)
        conn.execute(insert(s.jobs_numbered), rows.jobs)
    engine.dispose()
    store = open_store(db_url)
    try:
        assert unresolved_user_ids(store) == sorted([A, B])
        tree["workflows"] = tree["workflows"][1:]  # type: ignore[index]  # the approver's run is gone
        store.save_tree("gh/acme/api", tree, fetched_at=2.0, is_final=True)
        assert unresolved_user_ids(store) == [A]
    finally:
        store.close()


def test_users_table_and_project_names_on_both_backends_and_after_an_upgrade(db_url: str) -> None:
    engine = create_engine(engine_url(db_url))
    with engine.begin() as conn:  # a store of the release before: two migration steps
        for step in s.MIGRATIONS[:2]:
            step(conn)
        conn.execute(insert(s.schema_version).values(version=2))
    engine.dispose()
    store = open_store(db_url)
    try:
        store.ensure_endpoint("gh/acme/api", "acme", "https://circleci.com/gh/acme/api", "Acme API")
        tree = {"id": "p-1", "number": 1, "created_at": "2026-11-01T00:00:00Z", "workflows": [
            {"id": "w-1", "started_by": A, "jobs": [{"id": "j-1", "type": "approval", "approved_by": B},
                                                    {"id": "j-2", "type": "build"}]}]}  # fmt: skip
        store.save_tree("gh/acme/api", tree, fetched_at=1.0, is_final=True)
        assert unresolved_user_ids(store) == sorted([A, B])
        save_users(store, [user_record(A, {"login": "a", "name": "A", "avatar_url": None}, 2.0)])
        save_users(store, [user_record(B, None, 2.0), user_record(A, {"login": "a2"}, 3.0)])
        users = load_users(store)
        assert (users[A].login, users[B].deleted) == ("a2", True)
        assert unresolved_user_ids(store) == []
        assert [t.project_name for t in store.iter_trees()] == ["Acme API"]
    finally:
        store.close()
