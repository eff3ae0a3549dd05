"""`circleci-ds demo`: the whole tool against the built-in simulator, with no network beyond loopback.

The simulator serves the Usage API too: the first collection asks for the year's exports and reads what
the limits allow, the second (a simulated day later) the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.files import write_atomic
from circleci_ds.store import Store
from circleci_ds.store.usage import usage_row_count

DEMO_TOKEN_VAR = "CIRCLECI_DS_DEMO_TOKEN"
DEMO_TOKEN = "demo-token-not-a-secret"

FIXTURE = """\
native:
  slug: acme
data_sources:
- slug: git
  projects:
  - name: acme
    endpoints:
    - name: https://github.com/acme/api
- slug: circleci
  projects:
  - name: acme-api
    endpoints:
    - name: github/acme/api
    - name: gh/acme/web
  - name: acme-platform
    endpoints:
    - name: gh/acme/platform-internal
  config:
  - name: Circle-Token
    value: ${CIRCLECI_DS_DEMO_TOKEN}
"""


def demo_config() -> SimConfig:
    return SimConfig(
        seed=7,
        projects=[
            SimProject("gh/acme/api", pipelines=120),
            SimProject("gh/acme/web", pipelines=80),
            SimProject("gh/acme/platform-internal", pipelines=60, private=True),
        ],
        span_days=30.0,
        future_days=2.0,
        latency_ms=5.0,
        jitter_ms=3.0,
        token=DEMO_TOKEN,
    )


def run_demo(directory: Path) -> int:
    """Two collections with the clock moved a day between them; returns the exit status."""
    directory.mkdir(parents=True, exist_ok=True)
    fixture = directory / "fixture.yaml"
    write_atomic(fixture, FIXTURE)
    db_path = (directory / "demo.db").resolve()
    db = f"sqlite:///{db_path}"
    sim = Simulator(demo_config())
    url = sim.start_thread()
    env = {**os.environ, DEMO_TOKEN_VAR: DEMO_TOKEN, "CIRCLECI_API_URL": url, "CIRCLECI_DS_DB": db}
    try:
        _say(f"simulator on {url}; fixture {fixture}; database {db_path}")
        _say("first collection: the whole history")
        code = _run(["collect", str(fixture)], env)
        if code not in (0, 1):
            return code
        sim.advance(86400)
        _say(
            "the simulated clock moved one day: new pipelines, finished workflows, reruns under old pipelines"
        )
        _say("second collection: incremental")
        code = _run(["collect", str(fixture)], env) or code
        _run(["status"], env)
        _say(f"usage: {_usage_rows(db)} job run(s) with credits and utilisation from the Usage API exports")
        report = directory / "report.html"
        _say(f"CI metrics for the default branches, and an HTML report at {report}")
        _run(["report", "--html", str(report)], env)
    finally:
        sim.stop_thread()
    _say(
        f"done. Data is in {db_path}. Try:\n"
        f"  circleci-ds export --db {db} | head -c 600\n"
        f"  circleci-ds report --db {db} --format json"
    )
    return code


def _usage_rows(db: str) -> int:
    store = Store.open(db, create=False)
    try:
        return usage_row_count(store)
    finally:
        store.close()


def _run(args: list[str], env: dict[str, str]) -> int:
    # A child process, exactly as a user would run it; the simulator keeps serving from this one.
    return subprocess.call([sys.executable, "-m", "circleci_ds", *args], env=env)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)
