"""Benchmark: loading a large identities file (a SortingHat export, JSON).

    python bench/identities.py [--people 30000] [--src DIR]

Writes a SortingHat export of `--people` people (each a profile, one GitHub identity, one enrolment;
about 12 MB for 30,000) and loads it with `circleci_ds.inputs.identities.load_identities` in a child
process, which reports its wall time and peak RSS. `--src` runs another checkout's code.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = (
    "import re, sys, time\n"
    "from circleci_ds.inputs.identities import load_identities\n"
    "t = time.perf_counter(); ids = load_identities(sys.argv[1]); t = time.perf_counter() - t\n"
    "kib = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
    "print(f'{t:.2f} {int(kib) / 1024:.0f}')\n"
)


def export(people: int) -> dict[str, object]:
    uids = {}
    for i in range(people):
        uid = f"{i:040x}"
        uids[uid] = {
            "uuid": uid,
            "profile": {"name": f"Person {i}", "email": f"p{i}@example.org", "is_bot": False, "gender": None},
            "identities": [
                {"id": f"{i:040x}", "source": "github", "username": f"login{i}", "email": None, "uuid": uid},
                {"id": f"{i + 1:040x}", "source": "git", "username": None, "email": f"p{i}@example.org"},
            ],
            "enrollments": [
                {"organization": "Acme", "start": "1900-01-01T00:00:00", "end": "2100-01-01T00:00:00"}
            ],
        }
    return {"time": "2026-01-01T00:00:00", "uidentities": uids}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--people", type=int, default=30_000)
    parser.add_argument("--src", type=Path, default=ROOT / "src")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sortinghat.json"
        path.write_text(json.dumps(export(options.people), indent=2))
        env = {**os.environ, "PYTHONPATH": str(options.src)}
        done = subprocess.run(
            [sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, env=env
        )
        if done.returncode:
            sys.exit(done.stderr[-2000:])
        seconds, mib = done.stdout.split()
        size = path.stat().st_size / 1e6
    print(f"| {options.people:,} people, {size:.1f} MB | {seconds} s | {mib} MiB |")


if __name__ == "__main__":
    main()
