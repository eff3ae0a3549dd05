"""Running the collector in-process against the simulator, and comparing with its truth."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from circleci_ds.api import CircleCIClient, ClientStats
from circleci_ds.collect import Collector, EndpointResult, Options
from circleci_ds.export import raw_items
from circleci_ds.fixture import Endpoint, canonical_slug
from circleci_ds.simulator import Simulator
from circleci_ds.store import Store


def endpoints(slugs: list[str], native: str = "acme") -> list[Endpoint]:
    return [Endpoint(canonical_slug(s), s, native, native) for s in slugs]


async def collect(
    url: str,
    db_url: str,
    slugs: list[str],
    *,
    token: str | None = None,
    concurrency: int = 8,
    kill_after_requests: int | None = None,
    **options: Any,
) -> tuple[list[EndpointResult], ClientStats]:
    """One collection; with `kill_after_requests` it is cut off abruptly after that many requests."""
    store = Store.open(db_url)
    try:
        async with CircleCIClient(url, token, concurrency=concurrency, backoff_initial=0.01) as client:
            collector = Collector(client, store, Options(lease_ttl=2.0, **options))
            task = asyncio.create_task(collector.run(endpoints(slugs)))
            if kill_after_requests is not None:
                while not task.done() and client.stats.requests < kill_after_requests:
                    await asyncio.sleep(0)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                return await task, client.stats
            return [], client.stats
    finally:
        store.close()


def exported(db_url: str) -> dict[str, dict[str, dict[str, Any]]]:
    """project slug -> pipeline id -> exported `data`, failing on duplicate lines."""
    store = Store.open(db_url, create=False)
    try:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for item in raw_items(store):
            by_id = out.setdefault(item["project_slug"], {})
            assert item["data"]["id"] not in by_id, "duplicate pipeline in export"
            by_id[item["data"]["id"]] = item["data"]
        return out
    finally:
        store.close()


def truth(sim: Simulator, slugs: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    return {canonical_slug(s): {p["id"]: p for p in sim.truth(canonical_slug(s))} for s in slugs}


def assert_matches_truth(db_url: str, sim: Simulator, slugs: list[str]) -> None:
    got, want = exported(db_url), truth(sim, slugs)
    for slug in want:
        have = got.get(slug, {})
        missing = set(want[slug]) - set(have)
        extra = set(have) - set(want[slug])
        assert not missing and not extra, f"{slug}: missing {len(missing)}, extra {len(extra)}"
        for pid, tree in want[slug].items():
            assert have[pid] == tree, f"{slug}: pipeline {pid} differs"


def store_test_truth(store: Store, sim: Simulator, slugs: list[str]) -> None:
    """Write the simulator's test truth straight into the store (as collection would), by job number."""
    from circleci_ds.simulator.render import render_project
    from circleci_ds.store.testresults import save_chunk
    from circleci_ds.testresults import TestJob

    for written in slugs:
        slug = canonical_slug(written)
        project = sim.history.project(slug)
        assert project is not None
        store.ensure_endpoint(slug, "acme", f"https://circleci.com/{slug}")
        store.save_project_info(slug, render_project(project))
        for entry in sim.test_truth(slug):
            started, stopped = entry["started_at_ms"], entry["stopped_at_ms"]
            job = TestJob(
                endpoint=slug,
                job_number=entry["job_number"],
                job_id=entry["job_id"],
                pipeline_id=entry["pipeline_id"],
                workflow_id=None,
                workflow=entry["workflow"],
                job_name=entry["job_name"],
                branch=entry["branch"],
                commit=entry["commit"],
                status=entry["status"],
                created_at=entry["workflow_created_ms"] / 1000,
                started_at=started / 1000 if started is not None else None,
                stopped_at=stopped / 1000 if stopped is not None else None,
                duration=(stopped - started) / 1000 if started is not None and stopped is not None else None,
                web_url=entry["web_url"],
            )
            save_chunk(store, job, entry["items"], seq=0, final=True)
