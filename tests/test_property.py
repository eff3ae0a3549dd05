"""Property: whatever the history and whatever sequence of clock moves, collections and kills,
a completed collection leaves exactly the server's truth in the store."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circleci_ds.simulator import SimConfig, SimProject, Simulator
from collect_helpers import assert_matches_truth, collect

DAY = 86400.0
SLUGS = ["gh/prop/alpha", "github/prop/beta"]

step = st.one_of(
    st.tuples(st.just("advance"), st.floats(min_value=1.0, max_value=5 * DAY)),
    st.tuples(st.just("collect"), st.just(0)),
    st.tuples(st.just("kill"), st.integers(min_value=1, max_value=600)),
)
_run_ids = itertools.count()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(min_value=0, max_value=2**16), steps=st.lists(step, min_size=1, max_size=7))
def test_collections_converge_to_truth(tmp_path: Path, seed: int, steps: list[tuple[str, float]]) -> None:
    db_url = f"sqlite:///{tmp_path / f'run-{next(_run_ids)}.db'}"
    projects = [SimProject("gh/prop/alpha", pipelines=14), SimProject("gh/prop/beta", pipelines=8)]
    sim = Simulator(
        SimConfig(seed=seed, projects=projects, span_days=5.0, future_days=6.0, page_size=5, rerun_rate=1.0)
    )
    asyncio.run(_scenario(sim, db_url, steps))


async def _scenario(sim: Simulator, db_url: str, steps: list[tuple[str, float]]) -> None:
    async with sim.serve() as url:
        for action, value in steps:
            if action == "advance":
                sim.advance(value)
            elif action == "kill":
                await collect(url, db_url, SLUGS, kill_after_requests=int(value))
            else:
                results, _ = await collect(url, db_url, SLUGS)
                assert all(r.error is None for r in results)
                assert_matches_truth(db_url, sim, SLUGS)
        results, _ = await collect(url, db_url, SLUGS)
        assert all(r.error is None for r in results)
        assert_matches_truth(db_url, sim, SLUGS)
