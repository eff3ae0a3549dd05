"""Cooperating collectors: three `circleci-ds collect` processes share one database through leases.

One of them is killed with SIGKILL mid-run; the survivors take over its endpoints, and together
they store exactly what the simulator holds, with no endpoint collected by two processes at once.
A victim on this host may be seen dead at once; one on another host (here: its own UTS namespace
with another host name) only through its leases expiring.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import requirements
from circleci_ds.derive.facts import open_store
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.store import LeaseInfo, Store

PROJECTS = [f"gh/coop/project-{i:02d}" for i in range(20)]
# Renewed every 2 s: only a collector stalled 4 s loses it (three collectors, the simulator and
# PostgreSQL share 2 cores; on a slow machine 3 s, renewed every second, lapsed).
LEASE_TTL = 6.0
POLL = 0.02  # seconds between two looks at the leases table
RUN_TIMEOUT = 180.0


# -- the pieces: simulator, fixture file, collector processes, lease watcher ----------------------------
@pytest.fixture
def simulator() -> Iterator[tuple[Simulator, str]]:
    # Every fourth project takes longer than the lease TTL, so heartbeats must keep its lease.
    projects = [SimProject(slug, pipelines=25 if i % 4 == 0 else 6) for i, slug in enumerate(PROJECTS)]
    sim = Simulator(SimConfig(seed=5, projects=projects, latency_ms=20.0))
    url = sim.start_thread()
    try:
        yield sim, url
    finally:
        sim.stop_thread()


def write_fixture(path: Path, slugs: list[str]) -> Path:
    lines = ["native:", "  slug: coop", "data_sources:", "- slug: circleci", "  projects:", "  - name: coop"]
    lines += ["    endpoints:"] + [f"    - name: {slug}" for slug in slugs]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "circleci_ds", *args]


@dataclass
class Collector:
    """One `circleci-ds collect` process with its output in files."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def start_collector(
    name: str, fixture: Path, db_url: str, api_url: str, workdir: Path, host: str | None = None
) -> Collector:
    """A collector process; with `host`, in a UTS namespace of its own under that host name."""
    log = workdir / f"{name}.log"
    args = cli(
        "collect", str(fixture), "--db", db_url, "--api-url", api_url, "--lease-ttl", str(LEASE_TTL),
        "--concurrency", "4", "--parallel-endpoints", "2",
    )  # fmt: skip
    if host is not None:  # `exec` keeps the pid, so killing it kills the collector
        args = ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', host, *args]
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Collector(name, proc, log)


@dataclass
class Tenure:
    """One owner's hold on one endpoint, as seen by the watcher."""

    endpoint: str
    owner: str
    acquired_at: float
    first_seen: float  # watcher's clock before the first query that showed it
    last_seen: float  # ... before the last one
    max_expires: float
    seen_expired: bool = False  # shown while already past its expiry


@dataclass
class LeaseWatcher:
    """Reads the leases table every POLL seconds while the collectors run."""

    store: Store
    tenures: dict[tuple[str, str, float], Tenure] = field(default_factory=dict)
    snapshots: list[tuple[float, list[LeaseInfo]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def latest(self) -> list[LeaseInfo]:
        return self.snapshots[-1][1] if self.snapshots else []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.look()
            time.sleep(POLL)

    def look(self) -> None:
        before = time.time()
        leases = self.store.leases()
        self.snapshots.append((before, leases))
        for lease in leases:
            key = (lease.endpoint, lease.owner, lease.acquired_at)
            tenure = self.tenures.get(key)
            if tenure is None:
                tenure = self.tenures[key] = Tenure(*key, before, before, lease.expires_at)
            tenure.last_seen = before
            tenure.max_expires = max(tenure.max_expires, lease.expires_at)
            # `before` precedes the query, so an expiry earlier than it was a real lapse.
            tenure.seen_expired |= lease.expires_at < before

    def by_endpoint(self) -> dict[str, list[Tenure]]:
        """Each endpoint's tenures in acquisition order, a holder's re-takes merged into one."""
        out: dict[str, list[Tenure]] = {}
        for tenure in sorted(self.tenures.values(), key=lambda t: (t.endpoint, t.acquired_at)):
            seq = out.setdefault(tenure.endpoint, [])
            if seq and seq[-1].owner == tenure.owner:
                prev = seq[-1]
                prev.last_seen = max(prev.last_seen, tenure.last_seen)
                prev.max_expires = max(prev.max_expires, tenure.max_expires)
                prev.seen_expired |= tenure.seen_expired
            else:
                seq.append(tenure)
        return out


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])  # host:pid:process-space:random


def other_host_or_skip() -> str:
    """A host name for a collector in its own UTS namespace (needs root and util-linux's unshare)."""
    ok = (
        shutil.which("unshare")
        and subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0
    )
    if not ok:
        requirements.unavailable(
            "cannot run a collector under another host name (`unshare --uts` needs root)"
        )
    return "coop-other-host"


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL)


def finished_count(store: Store) -> int:
    return sum(1 for s in store.endpoint_statuses() if s.last_finished is not None)


def exported(db_url: str) -> dict[str, list[dict[str, Any]]]:
    """`circleci-ds export` output: project slug -> list of pipeline trees, in output order."""
    done = subprocess.run(cli("export", "--db", db_url), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out: dict[str, list[dict[str, Any]]] = {}
    for line in done.stdout.splitlines():
        item = json.loads(line)
        out.setdefault(item["project_slug"], []).append(item["data"])
    return out


DONE_LINE = re.compile(r" INFO (\S+): done, \d+ pipeline\(s\) stored")


# -- the scenario ---------------------------------------------------------------------------------
@dataclass
class Run:
    collectors: list[Collector]
    watcher: LeaseWatcher
    held_at_kill: list[str]  # the victim's unfinished endpoints when it died
    left_finished: list[str]  # ... and those it had finished but not yet released
    kill_time: float
    status_during: subprocess.CompletedProcess[str]

    @property
    def victim(self) -> Collector:
        return self.collectors[0]

    @property
    def survivors(self) -> list[Collector]:
        return self.collectors[1:]


@pytest.fixture
def run_with_a_kill(simulator: tuple[Simulator, str], tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """run(db_url, victim_host) -> Run: three collectors, the first killed mid-run."""
    stores: list[Store] = []

    def run(db_url: str, victim_host: str | None = None) -> Run:
        _, api_url = simulator
        fixture = write_fixture(tmp_path / "fixture.yaml", PROJECTS)
        watcher = LeaseWatcher(open_store(db_url))
        stores.append(watcher.store)
        watcher.start()
        hosts = [victim_host, None, None]
        collectors = [
            start_collector(f"c{i}", fixture, db_url, api_url, tmp_path, host) for i, host in enumerate(hosts)
        ]
        try:
            (held, left), kill_time = kill_mid_run(watcher, collectors[0])
            status = subprocess.run(cli("status", "--db", db_url), capture_output=True, text=True, timeout=60)
            for c in collectors[1:]:
                c.proc.wait(timeout=RUN_TIMEOUT)
        finally:
            for c in collectors:
                if c.proc.poll() is None:
                    c.proc.kill()
                    c.proc.wait()
            watcher.stop()
        return Run(collectors, watcher, held, left, kill_time, status)

    yield run
    for store in stores:
        store.close()


def kill_mid_run(watcher: LeaseWatcher, victim: Collector) -> tuple[tuple[list[str], list[str]], float]:
    """SIGKILL the victim once some endpoints are done and it has just taken another one. Returns the
    endpoints it held unfinished, and those it held finished (killed between storing an endpoint's end
    and releasing its lease: the survivors see it collected and leave that lease to expire)."""

    def victim_busy() -> bool:
        if victim.proc.poll() is not None:
            raise AssertionError(f"{victim.name} ended before it could be killed:\n{victim.text()}")
        fresh = time.time() - 0.3  # an endpoint takes longer than that, so it still holds it
        holds = any(owner_pid(x.owner) == victim.pid and x.acquired_at > fresh for x in watcher.latest())
        return holds and finished_count(watcher.store) >= 3

    wait_until(victim_busy, 90, "a busy victim")
    os.kill(victim.pid, signal.SIGKILL)
    kill_time = time.time()
    victim.proc.wait()
    leases = [x for x in watcher.store.leases() if owner_pid(x.owner) == victim.pid]
    finished = {s.slug: s.last_finished for s in watcher.store.endpoint_statuses()}
    done = {x.endpoint for x in leases if (finished.get(x.endpoint) or -math.inf) >= x.acquired_at}
    held = [x.endpoint for x in leases if x.endpoint not in done]
    assert held, "the victim held no unfinished endpoint when it was killed"
    return (held, sorted(done)), kill_time


def check_run(run: Run, db_url: str, sim: Simulator) -> None:
    """What holds whoever the victim was: the survivors finished it all, once, and correctly."""
    for c in run.survivors:
        assert c.proc.returncode == 0, c.text()[-3000:]
    assert run.victim.proc.returncode == -signal.SIGKILL
    check_status_showed_holders(run)
    check_taken_over_after_death(run)
    check_no_lapse(run)
    check_every_endpoint_done(run)
    # Every lease released, the dead one's taken over first (or left on an endpoint it had finished).
    assert sorted((x.endpoint, owner_pid(x.owner)) for x in run.watcher.store.leases()) == [
        (endpoint, run.victim.pid) for endpoint in run.left_finished
    ]
    check_union_is_the_truth(db_url, sim)


# -- the tests ----------------------------------------------------------------------------------------
def test_three_collectors_share_the_work_and_survive_a_kill(
    db_url: str, simulator: tuple[Simulator, str], run_with_a_kill: Callable[..., Run]
) -> None:
    run = run_with_a_kill(db_url)
    check_run(run, db_url, simulator[0])


@pytest.mark.postgres
def test_a_dead_collector_on_another_host_is_taken_over_once_its_leases_expire(
    pg_url: str, simulator: tuple[Simulator, str], run_with_a_kill: Callable[..., Run]
) -> None:
    run = run_with_a_kill(pg_url, other_host_or_skip())
    check_run(run, pg_url, simulator[0])
    tenures = run.watcher.by_endpoint()
    for endpoint in run.held_at_kill:
        dead, nxt = after_the_victim(tenures[endpoint], run.victim)
        assert dead.owner.startswith("coop-other-host:")
        assert nxt.acquired_at > dead.max_expires, f"{endpoint}: taken before the dead lease expired"
        # Its last renewal came at most a third of the TTL before the kill.
        assert nxt.acquired_at >= run.kill_time + LEASE_TTL * 2 / 3 - 0.2


# -- checks ------------------------------------------------------------------------------------------
def after_the_victim(seq: list[Tenure], victim: Collector) -> tuple[Tenure, Tenure]:
    """The victim's last tenure of an endpoint, and the one that followed it."""
    dead = [t for t in seq if owner_pid(t.owner) == victim.pid][-1]
    later = seq[seq.index(dead) + 1 :]
    assert later, f"{dead.endpoint} was not taken over"
    return dead, later[0]


def check_status_showed_holders(run: Run) -> None:
    status, snapshots = run.status_during, run.watcher.snapshots
    assert status.returncode == 0, status.stderr
    owner_and_expiry = r":\d+:[0-9a-f]{8}:[0-9a-f]{6} \([+-]\d+s\)"
    assert re.search(owner_and_expiry, status.stdout), status.stdout
    owners = {owner_pid(x.owner) for _, leases in snapshots for x in leases}
    assert owners == {c.pid for c in run.collectors}, "every collector held leases"
    assert max(len({x.owner for x in leases}) for _, leases in snapshots) >= 2, "they worked side by side"


def check_taken_over_after_death(run: Run) -> None:
    """The dead collector's endpoints went to survivors, who finished them."""
    survivors = {c.pid for c in run.survivors}
    tenures = run.watcher.by_endpoint()
    done_by_survivors = {slug for c in run.survivors for slug in DONE_LINE.findall(c.text())}
    for endpoint in run.held_at_kill:
        _, nxt = after_the_victim(tenures[endpoint], run.victim)
        assert owner_pid(nxt.owner) in survivors
        assert nxt.acquired_at >= run.kill_time, f"{endpoint}: taken while its holder was alive"
        assert endpoint in done_by_survivors


def check_no_lapse(run: Run) -> None:
    """No live holder let its lease lapse, nor lost one.

    Taking an unexpired lease is impossible (test_store covers the race); what could still put two
    collectors on one endpoint is a heartbeat too late to renew, so that is what is looked for here.
    """
    for endpoint, seq in run.watcher.by_endpoint().items():
        for tenure in seq:
            if owner_pid(tenure.owner) != run.victim.pid:
                assert not tenure.seen_expired, f"{endpoint}: {tenure} lapsed while its holder worked"
    for c in run.collectors:
        assert "lease lost" not in c.text(), c.name


def check_every_endpoint_done(run: Run) -> None:
    finished = [slug for c in run.collectors for slug in DONE_LINE.findall(c.text())]
    assert set(finished) == set(PROJECTS)


def check_union_is_the_truth(db_url: str, sim: Simulator) -> None:
    got = exported(db_url)
    assert set(got) == set(PROJECTS)
    for slug in PROJECTS:
        ids = [tree["id"] for tree in got[slug]]
        assert len(ids) == len(set(ids)), f"{slug}: duplicate pipelines"
        want = {tree["id"]: tree for tree in sim.truth(slug)}
        assert {tree["id"]: tree for tree in got[slug]} == want, f"{slug} differs from the simulator"
