"""Benchmark: one collector against three cooperating collectors on one database.

    python bench/cooperate.py [--projects 30] [--pipelines 2] [--latency-ms 25] [--max-rps 20]
                              [--runs 3] [--backends postgresql,sqlite]

The simulator runs in its own process (`circleci-ds simulate`) with a per-request latency. For
each backend and run, a fresh database is collected into by one `circleci-ds collect --max-rps R`,
then another fresh one by three such processes started together; each figure is the wall time
until every process has exited. With the rate capped per process, three should be close to three
times as fast (target: at least 2.5x). PostgreSQL is a throw-away server (tests/pgserver.py).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pgserver import PgServer  # noqa: E402
from simproc import cli, simulator, stored_pipelines, write_fixture  # noqa: E402

TARGET = 2.5


def collect_wall_time(processes: int, fixture: Path, db_url: str, api_url: str, max_rps: float) -> float:
    """Seconds from starting `processes` collectors together until the last one exits."""
    args = cli("collect", str(fixture), "--db", db_url, "--api-url", api_url, "--max-rps", str(max_rps))
    started = time.monotonic()
    procs = [
        subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    outputs = [p.communicate()[1] for p in procs]
    wall = time.monotonic() - started
    for proc, err in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"collect exited {proc.returncode}:\n{err[-2000:]}")
    return wall


@dataclass
class Figures:
    one: list[float] = field(default_factory=list)
    three: list[float] = field(default_factory=list)
    pipelines: set[int] = field(default_factory=set)

    def ratio(self) -> float:
        return statistics.median(self.one) / statistics.median(self.three)


class Databases:
    """A fresh database per collection, on each backend."""

    def __init__(self, workdir: Path, pg: PgServer | None) -> None:
        self.workdir = workdir
        self.pg = pg
        self.count = 0

    def fresh(self, backend: str) -> str:
        self.count += 1
        if backend == "postgresql":
            assert self.pg is not None
            return self.pg.create_database("bench")
        return f"sqlite:///{self.workdir / f'bench-{self.count}.db'}"


def run(args: argparse.Namespace) -> dict[str, Figures]:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    figures = {backend: Figures() for backend in backends}
    with (
        tempfile.TemporaryDirectory(prefix="circleci-ds-bench-") as tmp,
        simulator(args.projects, args.pipelines, args.latency_ms) as sim,
        PgServer() if "postgresql" in backends else _nothing() as pg,
    ):
        fixture = write_fixture(Path(tmp) / "fixture.yaml", sim.slugs)
        dbs = Databases(Path(tmp), pg)
        for i in range(args.runs):
            for backend in backends:
                for processes, times in ((1, figures[backend].one), (3, figures[backend].three)):
                    db_url = dbs.fresh(backend)
                    wall = collect_wall_time(processes, fixture, db_url, sim.url, args.max_rps)
                    times.append(wall)
                    figures[backend].pipelines.add(stored_pipelines(db_url))
                    print(f"run {i + 1}  {backend:<10}  {processes} collector(s)  {wall:6.1f}s", flush=True)
    return figures


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def report(figures: dict[str, Figures], args: argparse.Namespace) -> bool:
    print(
        f"\n{args.projects} projects x {args.pipelines} pipelines, {args.latency_ms:g} ms latency, "
        f"--max-rps {args.max_rps:g} per collector; medians of {args.runs} run(s)"
    )
    ok = True
    for backend, f in figures.items():
        one, three, ratio = statistics.median(f.one), statistics.median(f.three), f.ratio()
        same = len(f.pipelines) == 1
        ok &= ratio >= TARGET and same
        print(
            f"{backend:<10}  one: {one:6.1f}s  three: {three:6.1f}s  speed-up: {ratio:.2f}x "
            f"({'meets' if ratio >= TARGET else 'misses'} {TARGET}x)  pipelines stored: "
            + (f"{f.pipelines.pop()} each run" if same else f"DIFFERENT {sorted(f.pipelines)}")
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--projects", type=int, default=30)
    parser.add_argument("--pipelines", type=int, default=2, help="pipelines per project")
    parser.add_argument("--latency-ms", type=float, default=25.0)
    parser.add_argument("--max-rps", type=float, default=20.0, help="per collector")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backends", default="postgresql,sqlite")
    args = parser.parse_args()
    return 0 if report(run(args), args) else 1


if __name__ == "__main__":
    sys.exit(main())
