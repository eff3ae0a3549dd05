"""Clocks that disagree: leases are judged by the database's clock, not each host's.

Two `circleci-ds collect` processes share one PostgreSQL database; one runs 90 s ahead under
Debian's `faketime`, as a drifting container would. Neither may take an endpoint from a live
holder, every endpoint is collected once, and the pair makes no more requests for project data than
one collector alone (the simulator counts them). User look-ups (`GET /user/{id}`) are left out of
that count: each process keeps its own cache of users shared across endpoints, so two collectors may
both look up one new user, whatever their clocks.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import requirements
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from collect_helpers import assert_matches_truth, cli_args, serving, write_fixture
from pgserver import PgServer

SLUGS = [f"gh/skew/project-{i:02d}" for i in range(8)]
LEASE_TTL = "3"
DONE_LINE = re.compile(r" INFO (\S+): done, \d+ pipeline\(s\) stored")
NOT_PROJECT_DATA = ("user", "me")


def project_data_requests(sim: Simulator) -> int:
    return sum(n for kind, n in sim.stats["by_endpoint"].items() if kind not in NOT_PROJECT_DATA)


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    # Some projects take longer than the lease TTL, so leases are renewed while held.
    projects = [SimProject(slug, pipelines=20 if i % 3 == 0 else 6) for i, slug in enumerate(SLUGS)]
    with serving(SimConfig(seed=11, projects=projects, latency_ms=20.0)) as served:
        yield served


def collect_args(fixture: Path, db_url: str, api_url: str) -> list[str]:
    return cli_args(
        "collect", str(fixture), "--db", db_url, "--api-url", api_url, "--lease-ttl", LEASE_TTL,
        "--concurrency", "4", "--parallel-endpoints", "2",
    )  # fmt: skip


def run_all(commands: list[list[str]], logs: list[Path]) -> list[str]:
    """Start the commands together, wait for all; returns their outputs (each must exit 0)."""
    procs = []
    for args, log in zip(commands, logs, strict=True):
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            )
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    texts = [log.read_text(errors="replace") for log in logs]
    for proc, text in zip(procs, texts, strict=True):
        assert proc.returncode == 0, text[-3000:]
    return texts


@pytest.mark.postgres
def test_a_collector_with_a_fast_clock_takes_nothing_from_a_live_one(
    pg_server: PgServer, simulator: tuple[Simulator, str], tmp_path: Path
) -> None:
    faketime = requirements.faketime()
    sim, api_url = simulator
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    alone_db = pg_server.create_database()
    sim.reset_stats()
    run_all([collect_args(fixture, alone_db, api_url)], [tmp_path / "alone.log"])
    alone = project_data_requests(sim)

    pair_db = pg_server.create_database()
    sim.reset_stats()
    skewed = [faketime, "-f", "+90s", *collect_args(fixture, pair_db, api_url)]
    texts = run_all(
        [collect_args(fixture, pair_db, api_url), skewed], [tmp_path / "a.log", tmp_path / "b.log"]
    )
    pair = project_data_requests(sim)

    done = Counter(slug for text in texts for slug in DONE_LINE.findall(text))
    assert done == Counter(SLUGS), "every endpoint collected exactly once"
    for text in texts:
        assert "lease lost" not in text, "an endpoint was taken from a live holder"
    assert all(DONE_LINE.search(text) for text in texts), "both collectors worked"
    assert pair <= alone, f"the pair made {pair} requests for project data, one collector alone {alone}"
    assert_matches_truth(pair_db, sim, SLUGS)
