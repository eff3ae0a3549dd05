"""Property: whatever the history (quiet or busy, with reruns days late and reruns that wait for an
approval) and whatever sequence of clock moves, collections and kills, a completed collection leaves
the server's truth in the store: exactly, but for reruns that wait, until their age-spaced re-read
(the documented limit, docs/collection.md rule 4); and exactly once everything has settled."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from collect_helpers import assert_matches_truth, collect

DAY = 86400.0
SLUGS = ["gh/prop/alpha", "github/prop/beta"]
LATE_RERUN_DAYS = 6.0
FUTURE_DAYS = 6.0

step = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=1.0, max_value=5 * DAY)),
    st.tuples(st.just("advance"), st.floats(min_value=60.0, max_value=3600.0)),
    st.tuples(st.just("collect"), st.just(0)),
    st.tuples(st.just("kill"), st.integers(min_value=1, max_value=600)),
)
_run_ids = itertools.count()


def _projects(busy: bool) -> list[SimProject]:
    if busy:  # a pipeline every 10 minutes on alpha
        alpha = SimProject("gh/prop/alpha", pipelines=90, every_minutes=10)
        return [alpha, SimProject("gh/prop/beta", pipelines=8)]
    return [SimProject("gh/prop/alpha", pipelines=14), SimProject("gh/prop/beta", pipelines=8)]


# 30 examples in all, in three independent searches that parallel workers can share: one search
# of 30 was the suite's longest test by far.
@pytest.mark.parametrize("search", range(3))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(min_value=0, max_value=2**16),
    busy=st.booleans(),
    steps=st.lists(step, min_size=1, max_size=7),
)
def test_collections_converge_to_truth(
    tmp_path: Path, search: int, seed: int, busy: bool, steps: list[tuple[str, float]]
) -> None:
    db_url = f"sqlite:///{tmp_path / f'run-{next(_run_ids)}.db'}"
    config = SimConfig(
        seed=seed,
        projects=_projects(busy),
        span_days=5.0,
        future_days=FUTURE_DAYS,
        page_size=5,
        rerun_rate=1.0,
        late_rerun_days=LATE_RERUN_DAYS,
        gated_rerun_rate=0.3,
    )
    asyncio.run(_scenario(Simulator(config), db_url, steps))


async def _scenario(sim: Simulator, db_url: str, steps: list[tuple[str, float]]) -> None:
    async with sim.serve() as url:
        for action, value in steps:
            if action == "advance":
                sim.advance(value)
            elif action == "kill":
                await collect(url, db_url, SLUGS, kill_after_requests=int(value))
            else:
                await _complete(url, db_url, sim, waiting_ok=True)
        await _complete(url, db_url, sim, waiting_ok=True)
        # Every rerun has come and every approval was given: nothing waits any more.
        sim.advance((FUTURE_DAYS + LATE_RERUN_DAYS + 3) * DAY)
        await _complete(url, db_url, sim, waiting_ok=False)


async def _complete(url: str, db_url: str, sim: Simulator, *, waiting_ok: bool) -> None:
    results, _ = await collect(url, db_url, SLUGS)
    assert all(r.error is None for r in results)
    assert_matches_truth(db_url, sim, SLUGS, waiting_ok=waiting_ok)
