"""Reports from a real SQLite store: terminal tables, JSON, and the self-contained HTML page."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from builders import job_item, workflow_item
from circleci_ds.derive.facts import open_store
from circleci_ds.report import build_report, render_html, run_report
from circleci_ds.report.html import safe_json
from circleci_ds.store import Store

PLANTED_SUBJECT = "<script>window.__pwned = 1</script>"
PLANTED_BRANCH = 'main<img src=x onerror="window.__pwned=2">'
PLANTED_JOB = "<b>unit</b> & [red]tests[/red]"
PLANTED_LOGIN = "<i>eve</i>"


def _t(day: int, minute: int) -> str:
    return f"2026-11-{day:02d}T{10 + minute // 60:02d}:{minute % 60:02d}:00Z"


def _job(jid: str, name: str, status: str, day: int, start: int, minutes: int) -> dict[str, Any]:
    details = {
        "queued_at": _t(day, start),
        "duration": minutes * 60_000,
        "executor": {"type": "docker", "resource_class": "medium"},
    }
    started, stopped = _t(day, start + 1), _t(day, start + 1 + minutes)
    return job_item(jid, name, status, started_at=started, stopped_at=stopped, details=details)


def _workflow(
    wid: str, name: str, status: str, day: int, start: int, jobs: list[dict[str, Any]]
) -> dict[str, Any]:
    end = start + 2 + max((j_minutes(j) for j in jobs), default=0)
    return workflow_item(wid, name, status, _t(day, start), _t(day, end), jobs)


def j_minutes(job: dict[str, Any]) -> int:
    return int(job["details"]["duration"] // 60_000)


def _pipeline(
    number: int,
    day: int,
    branch: str,
    commit: str,
    subject: str,
    workflows: list[dict[str, Any]],
    login: str = "alice",
) -> dict[str, Any]:
    return {
        "id": f"pipe-{number}",
        "number": number,
        "state": "created",
        "created_at": _t(day, 0),
        "errors": [],
        "trigger": {
            "type": "webhook",
            "received_at": _t(day, 0),
            "actor": {"login": login, "avatar_url": ""},
        },
        "vcs": {
            "branch": branch,
            "revision": commit,
            "commit": {"subject": subject, "body": ""},
            "provider_name": "GitHub",
            "target_repository_url": "https://github.com/acme/api",
            "origin_repository_url": "https://github.com/acme/api",
        },
        "workflows": workflows,
    }


def trees() -> list[dict[str, Any]]:
    """Four days on a branch with HTML in its name: failures, a flaky rerun, the planted subject."""
    out = []
    for day in range(1, 5):
        n = day * 10
        ok = day % 2 == 1
        out.append(
            _pipeline(
                n,
                day,
                PLANTED_BRANCH,
                f"sha{n}",
                f"Change {n}",
                [
                    _workflow(
                        f"wf-{n}",
                        "build & test",
                        "success" if ok else "failed",
                        day,
                        0,
                        [
                            _job(f"job-{n}-a", PLANTED_JOB, "success" if ok else "failed", day, 0, 3 + day),
                            _job(f"job-{n}-b", "lint", "success", day, 0, 1),
                        ],
                    ),
                ],
            )
        )
    # The planted subject: a failure fixed by a rerun on the same commit (a flaky job).
    out.append(
        _pipeline(
            50,
            4,
            PLANTED_BRANCH,
            "sha50",
            PLANTED_SUBJECT,
            [
                _workflow(
                    "wf-50b",
                    "build & test",
                    "success",
                    4,
                    60,
                    [_job("job-50b", PLANTED_JOB, "success", 4, 60, 4)],
                ),
                _workflow(
                    "wf-50",
                    "build & test",
                    "failed",
                    4,
                    30,
                    [_job("job-50", PLANTED_JOB, "failed", 4, 30, 2)],
                ),
            ],
            login=PLANTED_LOGIN,
        )
    )
    return out


def make_store(path: Path) -> Store:
    store = open_store(f"sqlite:///{path}")
    store.ensure_endpoint("gh/acme/api", "acme", "https://circleci.com/gh/acme/api")
    store.save_project_info(
        "gh/acme/api", {"slug": "gh/acme/api", "vcs_info": {"default_branch": PLANTED_BRANCH}}
    )
    for tree in trees():
        store.save_tree("gh/acme/api", tree, fetched_at=1.0, is_final=True)
    # A second project whose default branch is unknown, to check the project filter.
    store.ensure_endpoint("gh/other/lib", "other", "https://circleci.com/gh/other/lib")
    lib = _pipeline(
        1,
        2,
        "main",
        "abc",
        "lib change",
        [_workflow("lib-wf", "ci", "success", 2, 0, [_job("lib-job", "unit", "success", 2, 0, 2)])],
    )
    lib["id"] = "lib-pipe"
    store.save_tree("gh/other/lib", lib, fetched_at=1.0, is_final=True)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path / "store.db")


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=250, color_system=None, force_terminal=False), out


def test_tables(store: Store) -> None:
    con, out = console()
    run_report(
        store, project=None, since=None, until=None, branch=None, fmt="table", html_path=None, console=con
    )
    text = out.getvalue()
    for title in ("Projects", "Workflows", "Slowest jobs", "Flaky jobs"):
        assert title in text
    assert PLANTED_JOB in text  # rich markup in a name is printed, not interpreted
    assert "gh/other/lib" in text and "all branches" in text


def test_tables_to_a_pipe_are_never_squeezed(store: Store) -> None:
    out = io.StringIO()
    narrow = Console(file=out, width=60, color_system=None, force_terminal=False)
    run_report(
        store, project=None, since=None, until=None, branch=None, fmt="table", html_path=None, console=narrow
    )
    text = out.getvalue()
    assert "…" not in text
    assert any(PLANTED_BRANCH in line and "50.0%" in line for line in text.splitlines())
    assert narrow.width == 60


def test_json_to_stdout_stays_json_with_html(store: Store, tmp_path: Path) -> None:
    con, out = console()
    page = tmp_path / "r.html"
    run_report(
        store, project="acme", since=None, until=None, branch=None, fmt="json", html_path=page, console=con
    )
    data = json.loads(out.getvalue())
    assert [p["project_slug"] for p in data["projects"]] == ["gh/acme/api"]
    (build,) = data["workflows"]
    assert build["workflow"] == "build & test" and build["branch"] == PLANTED_BRANCH
    # 6 runs: days 1 and 3 succeed, days 2 and 4 fail, and pipeline 50 fails then passes on a rerun
    assert build["runs"] == 6 and build["success_rate"] == pytest.approx(3 / 6)
    assert data["flaky_jobs"][0]["job"] == PLANTED_JOB and data["flaky_jobs"][0]["commits"] == ["sha50"]
    assert page.exists()


def test_window_and_branch_reach_the_metrics(store: Store) -> None:
    r = build_report(
        store,
        since=datetime(2026, 11, 2, tzinfo=UTC).timestamp(),
        until=datetime(2026, 11, 3, tzinfo=UTC).timestamp(),
        branch="*",
    )
    assert sorted((w.project_slug, w.runs) for w in r.workflows) == [("gh/acme/api", 1), ("gh/other/lib", 1)]


def test_unknown_format(store: Store) -> None:
    con, _ = console()
    with pytest.raises(ValueError, match="format"):
        run_report(
            store, project=None, since=None, until=None, branch=None, fmt="xml", html_path=None, console=con
        )


def test_html_is_self_contained(store: Store, tmp_path: Path) -> None:
    con, out = console()
    page = tmp_path / "report.html"
    run_report(
        store, project=None, since=None, until=None, branch=None, fmt="table", html_path=page, console=con
    )
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script[^>]*\bsrc=", html)
    assert not re.search(r"<link[^>]*\bhref=", html)
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inline
    assert str(page) in out.getvalue()


def test_html_escapes_api_text(store: Store) -> None:
    html = render_html(build_report(store))
    assert html.count("<script") == 3  # chart data, plotly.js, the boot script: nothing planted
    assert "window.__pwned = 1" not in html.replace("&lt;script&gt;window.__pwned = 1&lt;/script&gt;", "")
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    assert 'onerror="window' not in html
    assert "&lt;b&gt;unit&lt;/b&gt; &amp; [red]tests[/red]" in html
    assert "&lt;i&gt;eve&lt;/i&gt;" in html


def test_chart_data_cannot_close_its_script(store: Store) -> None:
    html = render_html(build_report(store))
    data = html.split('<script id="chart-data" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data and "&" not in data
    specs = json.loads(data)
    assert specs and all(s["data"] for s in specs)
    names = json.dumps(specs)
    assert "&lt;b&gt;unit&lt;/b&gt;" in names  # entity-escaped for Plotly's own pseudo-HTML


def test_safe_json() -> None:
    value = {"a": "</script><!-- x & y \u2028"}
    text = safe_json(value)
    assert "</" not in text and "<!--" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value


def test_empty_store(tmp_path: Path) -> None:
    empty = open_store(f"sqlite:///{tmp_path / 'empty.db'}")
    con, out = console()
    run_report(
        empty,
        project=None,
        since=None,
        until=None,
        branch=None,
        fmt="table",
        html_path=tmp_path / "e.html",
        console=con,
    )
    assert "No workflow runs" in out.getvalue()
    assert "No workflow runs" in (tmp_path / "e.html").read_text()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circleci_ds", *args], capture_output=True, text=True, timeout=300
    )


def test_deploy_pattern_from_the_fixture_config_and_bad_patterns(tmp_path: Path) -> None:
    make_store(tmp_path / "store.db").close()
    db = f"sqlite:///{tmp_path / 'store.db'}"
    fixture = tmp_path / "fixture.yaml"
    fixture.write_text(
        "native:\n  slug: acme\ndata_sources:\n- slug: circleci\n  projects:\n  - name: acme\n"
        "    endpoints:\n    - name: gh/acme/api\n  config:\n  - name: deploy-pattern\n    value: '^lint$'\n"
    )
    shown = cli("report", "--db", db, "--format", "json", "--fixture", str(fixture), "--branch", "*")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["deploy_pattern"] == "^lint$"
    assert [d["deploy_workflows"] for d in data["delivery"]] == [["build & test"]]  # its job "lint" matches
    bad = cli("report", "--db", db, "--deploy-pattern", "(unclosed")
    assert bad.returncode == 2 and "not a regular expression" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("report", "--db", db, "--bucket", "hourly").returncode == 2


def test_help_states_the_window_and_every_definition() -> None:
    from circleci_ds.metrics.definitions import DEFINITIONS

    shown = " ".join(cli("report", "--help").stdout.split())
    for definition in DEFINITIONS:
        assert f"{definition.name}: {definition.text[:40]}" in shown.replace("│", "").replace("  ", " ")
