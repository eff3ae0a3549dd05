"""SIGTERM and SIGINT during `collect`: what is stored is kept, leases are released, one line, 143 / 130.

A real `circleci-ds collect` process against the simulator is signalled once it has stored some
pipelines; a second run then completes the store to exactly the simulator's truth.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import StoreError
from collect_helpers import assert_matches_truth, cli_args, error_lines, run_cli, serving, write_fixture

SLUGS = [f"gh/sig/project-{i}" for i in range(3)]


@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    with serving(
        SimConfig(seed=9, projects=[SimProject(s, pipelines=40) for s in SLUGS], latency_ms=30.0)
    ) as served:
        yield served


def stored_pipelines(db_url: str) -> int:
    try:
        store = open_store(db_url, create=False)
    except StoreError:
        return 0  # not created yet
    try:
        return sum(s.pipelines for s in store.endpoint_statuses())
    finally:
        store.close()


def leases(db_url: str) -> list[str]:
    store = open_store(db_url, create=False)
    try:
        return [lease.owner for lease in store.leases()]
    finally:
        store.close()


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_keeps_what_is_stored_and_releases_leases(
    signum: signal.Signals, status: int, db_url: str, simulator: tuple[Simulator, str], tmp_path: Path
) -> None:
    sim, api_url = simulator
    fixture = write_fixture(tmp_path / "fixture.yaml", SLUGS)
    args = cli_args("collect", str(fixture), "--db", db_url, "--api-url", api_url, "--lease-ttl", "600")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while stored_pipelines(db_url) < 5:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "nothing stored in time"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    assert error_lines(stderr) == [f"error: interrupted by {signum.name}; everything stored so far is kept"]
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted")
    kept = stored_pipelines(db_url)
    assert 5 <= kept < 3 * 40
    assert leases(db_url) == [], "a lease outlived its collector"

    again = run_cli("collect", str(fixture), "--db", db_url, "--api-url", api_url)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_matches_truth(db_url, sim, SLUGS)


def begun(url: str) -> int:
    """Requests the simulator began serving (its admin routes are not counted)."""
    with urllib.request.urlopen(f"{url}/_sim/stats", timeout=20) as answer:
        return int(json.load(answer)["requests"])


def _ask(url: str) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(url, timeout=20).read()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_simulator_ends_on_a_signal_while_it_serves(signum: int, code: int) -> None:
    proc = subprocess.Popen(
        cli_args("simulate", "--port", "0", "--latency-ms", "50"), stdout=subprocess.PIPE, text=True
    )
    with ThreadPoolExecutor(max_workers=16) as pool:
        try:
            url = (proc.stdout.readline() if proc.stdout else "").split()[3]
            for _ in range(64):  # requests in flight: the signal lands while the loop is busy
                pool.submit(_ask, f"{url}/project/gh/sim-org/project-0/pipeline")
            deadline = time.monotonic() + 60
            while begun(url) < 16:  # a first wave of requests in (each held for the 50 ms latency)
                assert time.monotonic() < deadline, "the simulator took no request"
                time.sleep(0.005)
            proc.send_signal(signum)
            assert proc.wait(timeout=20) == code
        finally:
            proc.kill()
