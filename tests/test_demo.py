"""`circleci-ds demo` works on a fresh install and leaves data behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_and_leaves_an_exportable_database(tmp_path: Path) -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "circleci_ds", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "Traceback" not in demo.stderr
    assert "second collection: incremental" in demo.stdout
    usage = [line for line in demo.stdout.splitlines() if "job run(s) with credits" in line]
    assert usage and int(usage[0].split()[2]) > 100, usage
    db = tmp_path / "demo" / "demo.db"
    assert db.exists() and (tmp_path / "demo" / "report.html").exists()
    export = subprocess.run(
        [sys.executable, "-m", "circleci_ds", "export", "--db", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [json.loads(line) for line in export.stdout.splitlines()]
    assert export.returncode == 0 and len(lines) > 100
    assert {line["project_slug"] for line in lines} == {
        "gh/acme/api",
        "gh/acme/web",
        "gh/acme/platform-internal",
    }
