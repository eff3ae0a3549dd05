"""Enriched documents of test results, one per result, for `export --kind enriched`.

Fields: the common da-ds ones (uuid, origin, project, project_slug, metadata__*,
grimoire_creation_date), `is_circleci_test: 1` (and 0 for the pipeline/workflow/job flags), the
job's context (pipeline, workflow, job id/number/name/status/URL, branch, commit) and the result
(classname, name, file, result, passed, run_time in seconds, message excerpt). The uuid is
perceval's sha1 of origin, job id and the test's classname and name (and its occurrence number
when one job reports the same test more than once). Streamed from the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from circleci_ds import __version__
from circleci_ds.documents.raw import BACKEND_NAME
from circleci_ds.ids import uuid
from circleci_ds.store import Store
from circleci_ds.store.testresults import iter_results
from circleci_ds.times import iso


def test_documents(store: Store, project: str | None = None) -> Iterator[dict[str, Any]]:
    seen: dict[tuple[str, str], int] = {}
    job_ref = None
    for row in iter_results(store, project):
        if row.ref != job_ref:
            job_ref, seen = row.ref, {}
        occurrence = seen.get((row.classname, row.name), 0)
        seen[row.classname, row.name] = occurrence + 1
        yield _document(row, occurrence)


test_documents.__test__ = False  # type: ignore[attr-defined]


def _document(row: Any, occurrence: int) -> dict[str, Any]:
    parts = [row.origin, str(row.job_id), "test", row.classname, row.name]
    if occurrence:
        parts.append(str(occurrence))
    when = iso(row.stopped_at if row.stopped_at is not None else row.created_at)
    return {
        "uuid": uuid(*parts),
        "type": "test",
        "origin": row.origin,
        "project": row.native,
        "project_slug": row.endpoint,
        "metadata__updated_on": when,
        "metadata__timestamp": when,
        "metadata__backend_name": BACKEND_NAME,
        "metadata__backend_version": __version__,
        "grimoire_creation_date": when,
        "is_circleci_pipeline": 0,
        "is_circleci_workflow": 0,
        "is_circleci_job": 0,
        "is_circleci_test": 1,
        "pipeline_id": row.pipeline_id,
        "workflow_id": row.workflow_id,
        "workflow_name": row.workflow,
        "job_id": row.job_id,
        "job_number": row.job_number,
        "job_name": row.job_name,
        "job_status": row.status,
        "job_web_url": row.web_url,
        "branch": row.branch,
        "commit_sha": row.commit_sha,
        "classname": row.classname,
        "name": row.name,
        "file": row.file or None,
        "result": row.result,
        "passed": None if row.outcome is None else bool(row.outcome),
        "run_time": row.run_time,
        "message": row.message,
    }
