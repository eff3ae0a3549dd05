"""The report's one Window: which creation times it holds and which branch it measures."""

from __future__ import annotations

from circleci_ds.metrics.ci import window_line
from circleci_ds.metrics.window import ALL_BRANCHES, Window


def test_bounds_are_half_open_and_open_when_none() -> None:
    window = Window(since=100.0, until=200.0)
    assert [window.holds(t) for t in (99.9, 100.0, 199.9, 200.0)] == [False, True, True, False]
    assert window.holds(None) is False  # an unreadable creation time is outside a bounded window
    assert Window(since=100.0).holds(1e12) and Window(until=200.0).holds(-1e12)
    assert Window().holds(None)


def test_measured_branch_asked_default_or_all() -> None:
    assert Window().measured_branch("main") == "main"
    assert Window().measured_branch(None) is None  # default unknown: every branch
    assert Window(branch="dev").measured_branch("main") == "dev"
    assert Window(branch=ALL_BRANCHES).measured_branch("main") is None


def test_window_line_shows_the_bounds_as_iso_text() -> None:
    line = window_line(Window(1_793_577_600.0, 1_793_664_000.0, ALL_BRANCHES))
    assert line == (
        "Window: workflow runs created from 2026-11-02T00:00:00Z to 2026-11-03T00:00:00Z (until excluded), "
        "on all branches."
    )
    assert window_line(Window(0.0, 1.0)).endswith("on each project's default branch.")
    assert window_line(Window(0.0, 1.0, "a<b")).endswith("on branch a<b.")
