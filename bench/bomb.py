"""Benchmark: the collector's peak memory against a gzip bomb, at several --max-response-mb caps.

    python bench/bomb.py [--caps 16,64,256] [--repeat 3]

A hostile server (tests/hostile_server.py) answers every project request with about 1 MB of gzip
that inflates to 1 GiB of JSON whitespace; `circleci-ds collect` (one endpoint) must fail that
request at the cap. `baseline` is the same run against a server that answers 404 at once: the
interpreter, the libraries and the store. Peak RSS is the collector's own VmHWM, read as it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from collect_helpers import RSS_PROBE, peak_rss_mib
from hostile_server import HostileServer, Mode, gzip_bomb
from simproc import write_fixture


@contextmanager
def hostile(mode: Mode, **params: object) -> Iterator[str]:
    """A HostileServer without upstream, served from a thread; yields its base URL."""
    server, ready, url = HostileServer(), threading.Event(), []
    stop: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop.append(asyncio.Event())
        async with server.serve() as base:
            server.behave(mode, kinds="project", **params)
            url.append(base)
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait()
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join()


def collector_peak(url: str, cap_mib: float | None) -> tuple[float, int]:
    """Peak RSS in MiB and exit status of one `circleci-ds collect` against `url`."""
    with tempfile.TemporaryDirectory() as tmp:
        fixture = write_fixture(Path(tmp) / "fixture.yaml", ["gh/bench/bomb"])
        args = ["collect", str(fixture), "--db", f"sqlite:///{tmp}/store.db", "--api-url", url]
        if cap_mib is not None:
            args += ["--max-response-mb", str(cap_mib)]
        done = subprocess.run([*RSS_PROBE, *args], capture_output=True, text=True, check=False)
        return peak_rss_mib(done.stderr), done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--caps", default="16,64,256", help="--max-response-mb values, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    bomb = gzip_bomb()
    print(f"gzip body: {len(bomb):,} bytes, inflating to {1 << 30:,}")
    print("| run | peak RSS (median) | exit |\n| --- | ---: | ---: |")
    rows: list[tuple[str, Mode, float | None]] = [("baseline (404)", Mode.MESSAGE, None)]
    rows += [
        (f"gzip bomb, --max-response-mb {cap}", Mode.GZIP_BOMB, float(cap)) for cap in options.caps.split(",")
    ]
    for name, mode, cap in rows:
        params = {"status": 404, "text": "nope"} if mode is Mode.MESSAGE else {}
        with hostile(mode, **params) as url:
            runs = [collector_peak(url, cap) for _ in range(options.repeat)]
        print(f"| {name} | {statistics.median(r for r, _ in runs):.1f} MiB | {runs[0][1]} |")


if __name__ == "__main__":
    main()
