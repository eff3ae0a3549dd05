"""Who did what: user ids resolved once ever into the store, deleted accounts remembered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circleci_ds.people import People, new_user_ids, user_ids_in, user_record
from circleci_ds.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import Store
from circleci_ds.store.users import load_users
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
    store = Store.open(db_url, create=False)
    try:
        return load_users(store)
    finally:
        store.close()


def test_ids_named_by_workflows_and_jobs_are_new_once_and_only_uuids() -> None:
    objects = [
        {"started_by": A, "canceled_by": B},
        {"approved_by": A},
        {"started_by": "not-a-uuid", "approved_by": None},
        {"started_by": ["odd"], "name": A},
    ]
    assert user_ids_in(objects[0]) == {A, B}
    assert new_user_ids(objects, known=set()) == sorted([A, B])
    assert new_user_ids(objects, known={A}) == [B]
    assert new_user_ids(objects, known={A, B}) == []


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


async def test_refused_user_look_ups_leave_the_collection_whole_and_are_asked_again(tmp_path: Path) -> None:
    sim = Simulator(sim_config())
    url = sim.start_thread()
    db_url = f"sqlite:///{tmp_path / 'store.db'}"
    try:
        results, _ = await collect(url, db_url, SLUGS)  # public projects, no token: /user answers 401
        assert [r.error for r in results] == [None, None]
        assert stored_users(db_url) == {}
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
