"""One home for the raw items tests build by hand: a job and a workflow as the API lists them, a
StoredTree around a pipeline as the store gives it back, and a job whose tests are to be read.

Fields a test does not name are absent, or take the defaults below; times are ISO text (each test
file keeps its own shorthand for its clock). Trees that the simulator generates come from
collect_helpers / sim_helpers instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from circleci_ds.store import StoredTree
from circleci_ds.store.testresults import TestJob

SLUG = "gh/acme/api"
NATIVE = "acme"


def job_item(
    job_id: str,
    name: str,
    status: str,
    *,
    kind: str = "build",
    dependencies: Sequence[str] = (),
    **fields: Any,
) -> dict[str, Any]:
    """A job of GET /workflow/{id}/job (with its `details` when a test gives them)."""
    shape = {"id": job_id, "name": name, "type": kind, "status": status, "dependencies": list(dependencies)}
    return {**shape, **fields}


def workflow_item(
    workflow_id: str,
    name: str,
    status: str,
    created_at: str | None,
    stopped_at: str | None,
    jobs: list[dict[str, Any]],
    **fields: Any,
) -> dict[str, Any]:
    """A workflow of GET /pipeline/{id}/workflow, with its jobs as the store nests them."""
    return {
        "id": workflow_id,
        "name": name,
        "status": status,
        "created_at": created_at,
        "stopped_at": stopped_at,
        "jobs": jobs,
        **fields,
    }


def stored_tree(
    data: dict[str, Any], endpoint: str = SLUG, native: str = NATIVE, updated_on: float = 0.0
) -> StoredTree:
    """A pipeline tree as Store.iter_trees gives it (no stored facts: readers derive them)."""
    return StoredTree(endpoint, native, f"https://circleci.com/{endpoint}", updated_on, data)


def unread_job(number: int, name: str = "lint", status: str = "success", endpoint: str = SLUG) -> TestJob:
    """A finished build job of `endpoint` whose tests are to be read: a minute long, on main."""
    return TestJob(endpoint, number, f"id-{number}", "p", "w", "build", name, "main", "c", status,
                   1.7e9, 1.7e9, 1.7e9 + 60, 60.0, None)  # fmt: skip
