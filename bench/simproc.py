"""Shared by the benchmarks: the simulator as its own process, fixtures for it, what was stored."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from circleci_ds.derive.facts import open_store


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "circleci_ds", *args]


class Sim:
    """`circleci-ds simulate` on a free port, driven through its admin endpoints."""

    def __init__(self, proc: subprocess.Popen[str], url: str, slugs: list[str]) -> None:
        self.proc, self.url, self.slugs = proc, url, slugs

    def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}/_sim/{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as resp:
            result: dict[str, Any] = json.load(resp)
            return result

    def stats(self) -> dict[str, Any]:
        return self.admin("GET", "stats")

    def reset_stats(self) -> None:
        self.admin("POST", "reset-stats")

    def advance(self, seconds: float) -> None:
        self.admin("POST", f"advance?seconds={seconds}")

    def truth(self, slug: str) -> list[dict[str, Any]]:
        request = urllib.request.Request(f"{self.url}/_sim/truth?project={slug}")
        with urllib.request.urlopen(request, timeout=60) as resp:
            result: list[dict[str, Any]] = json.load(resp)
            return result

    def test_truth(self, slug: str) -> list[dict[str, Any]]:
        """The jobs answering test results now, with their items (GET /_sim/truth/tests)."""
        request = urllib.request.Request(f"{self.url}/_sim/truth/tests?project={slug}")
        with urllib.request.urlopen(request, timeout=60) as resp:
            result: list[dict[str, Any]] = json.load(resp)
            return result

    def configure(self, **knobs: Any) -> None:
        self.admin("POST", "config", knobs)


# A simulator of any shape (busy histories, late reruns), printing what `circleci-ds simulate` prints.
_SHAPED = """
import asyncio, json, sys
from circleci_ds.dev.simulator import SimConfig, SimProject, run_standalone
shape = json.loads(sys.argv[1])
projects = [SimProject(**p) for p in shape.pop("projects")]
def ready(url):
    print(f"simulator listening at {url}")
    print("projects: " + ", ".join(p.slug for p in projects), flush=True)
asyncio.run(run_standalone(SimConfig(projects=projects, **shape), port=0, on_ready=ready))
"""


@contextmanager
def simulator(projects: int, pipelines: int, latency_ms: float) -> Iterator[Sim]:
    args = cli(
        "simulate", "--port", "0", "--projects", str(projects), "--pipelines", str(pipelines),
        "--latency-ms", str(latency_ms),
    )  # fmt: skip
    with serving(args) as sim:
        yield sim


@contextmanager
def shaped_simulator(shape: dict[str, Any]) -> Iterator[Sim]:
    """A simulator built from SimConfig fields; `projects` holds SimProject fields."""
    with serving([sys.executable, "-c", _SHAPED, json.dumps(shape)]) as sim:
        yield sim


@contextmanager
def serving(args: list[str]) -> Iterator[Sim]:
    # stderr to a file, never a pipe nobody reads: a full pipe would stall the server.
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout is not None
            found = re.search(r"listening at (\S+)", proc.stdout.readline())
            if found is None:
                err.seek(0)
                raise RuntimeError(f"the simulator did not start:\n{err.read()[-2000:]}")
            slugs = proc.stdout.readline().removeprefix("projects: ").strip().split(", ")
            yield Sim(proc, found.group(1), slugs)
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, repeated (one that lands while the simulator's event loop runs a callback is lost: asyncio
    logs the exception it raises and goes on), then SIGKILL."""
    for _ in range(6):
        proc.terminate()
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.kill()
    proc.wait()


def write_fixture(path: Path, slugs: list[str]) -> Path:
    # A token makes every project visible, whatever CIRCLE_TOKEN holds in the environment.
    endpoints = "".join(f"    - name: {slug}\n" for slug in slugs)
    path.write_text(
        "native:\n  slug: bench\ndata_sources:\n- slug: circleci\n"
        "  config:\n  - name: Circle-Token\n    value: bench-token\n"
        f"  projects:\n  - name: bench\n    endpoints:\n{endpoints}"
    )
    return path


def stored_pipelines(db_url: str) -> int:
    return _pipelines(db_url, open_only=False)


def open_pipelines(db_url: str) -> int:
    return _pipelines(db_url, open_only=True)


def _pipelines(db_url: str, *, open_only: bool) -> int:
    store = open_store(db_url, create=False)
    try:
        statuses = store.endpoint_statuses()
        return sum(s.open_pipelines if open_only else s.pipelines for s in statuses)
    finally:
        store.close()
