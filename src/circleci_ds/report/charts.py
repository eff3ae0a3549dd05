"""Plotly figure specs (plain dicts, given to Plotly.newPlot in the page) for one project.

Plotly reads a few HTML tags inside its strings (`<b>`, `<br>`, `<a href>`), so names from the
API are entity-escaped before they become trace names or axis categories; Plotly shows the
entities as the original characters.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from circleci_ds.metrics.ci import (
    FlakyJob,
    JobMetrics,
    MetricsReport,
    ProjectMetrics,
    TrendPoint,
    WorkflowMetrics,
)
from circleci_ds.report.spec import slowest_jobs

PALETTE = ["#2563eb", "#16a34a", "#db2777", "#ea580c", "#7c3aed", "#0891b2", "#ca8a04", "#4b5563"]
FONT = "-apple-system, BlinkMacSystemFont, 'Segoe UI', Roboto, 'Helvetica Neue', Arial, sans-serif"
TOP = 10


@dataclass
class Chart:
    key: str  # short name, part of the element id
    title: str
    note: str
    figure: dict[str, Any]  # {"data": [...], "layout": {...}}


def plot_text(value: str | None) -> str:
    """API text made inert for Plotly's pseudo-HTML."""
    return html.escape(value if value is not None else "(none)", quote=False)


def project_charts(report: MetricsReport, project: ProjectMetrics) -> list[Chart]:
    """The charts that have data for this project, in page order."""
    slug = project.project_slug
    trends = [t for t in report.trends if t.project_slug == slug]
    workflows = [w for w in report.workflows if w.project_slug == slug]
    jobs = [j for j in report.jobs if j.project_slug == slug]
    flaky = [f for f in report.flaky_jobs if f.project_slug == slug]
    unit = "week" if report.bucket == "week" else "day"
    candidates = [
        success_trend(trends, unit),
        duration_trend(trends, unit),
        queue_distribution(project),
        slowest_chart(jobs),
        flaky_chart(flaky),
        mttr_chart(workflows),
        approval_chart(workflows),
    ]
    return [c for c in candidates if c is not None]


def base_layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """The page's common Plotly layout with these axis titles; `extra` keys override it."""
    layout: dict[str, Any] = {
        "height": 320,
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "font": {"family": FONT, "size": 12, "color": "#334155"},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "colorway": PALETTE,
        "hovermode": "closest",
        "bargap": 0.35,
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
        "xaxis": {"title": {"text": x_title}, "gridcolor": "#e2e8f0", "automargin": True},
        "yaxis": {
            "title": {"text": y_title},
            "gridcolor": "#e2e8f0",
            "automargin": True,
            "rangemode": "tozero",
        },
    }
    layout.update(extra)
    return layout


def time_unit(seconds: list[float]) -> tuple[float, str]:
    """(divisor, name) that keeps the largest of these durations readable."""
    largest = max(seconds, default=0.0)
    if largest >= 3 * 3600:
        return 3600.0, "hours"
    if largest >= 120:
        return 60.0, "minutes"
    return 1.0, "seconds"


def _scaled(values: list[float], divisor: float) -> list[float]:
    return [round(v / divisor, 2) for v in values]


def _by_workflow(trends: list[TrendPoint]) -> dict[str, list[TrendPoint]]:
    out: dict[str, list[TrendPoint]] = {}
    for point in trends:
        out.setdefault(point.workflow, []).append(point)
    return out


def success_trend(trends: list[TrendPoint], unit: str) -> Chart | None:
    data = _trend_lines(trends, lambda p: p.success_rate, 0.01)
    if not data:
        return None
    layout = base_layout(unit.capitalize(), "Success rate (%)")
    layout["xaxis"].update(_time_axis(trends, unit))
    layout["yaxis"].update({"range": [0, 105], "ticksuffix": "%", "rangemode": "normal"})
    note = "Successful / (all - cancelled) runs."
    return Chart("success", f"Success rate per {unit}", note, {"data": data, "layout": layout})


def duration_trend(trends: list[TrendPoint], unit: str) -> Chart | None:
    known = [p.active_duration_median for p in trends if p.active_duration_median is not None]
    divisor, name = time_unit(known)
    data = _trend_lines(trends, lambda p: p.active_duration_median, divisor)
    if not data:
        return None
    layout = base_layout(unit.capitalize(), name.capitalize())
    layout["xaxis"].update(_time_axis(trends, unit))
    note = "Completed runs, created_at to stopped_at, approval waits left out (shown apart)."
    return Chart("duration", f"Median active duration per {unit}", note, {"data": data, "layout": layout})


def _trend_lines(
    trends: list[TrendPoint], value: Callable[[TrendPoint], float | None], divisor: float
) -> list[dict[str, Any]]:
    """One line per workflow through its buckets that have a value."""
    lines = []
    for workflow, points in _by_workflow(trends).items():
        known = [(p.period, round(v / divisor, 2)) for p in points if (v := value(p)) is not None]
        if known:
            lines.append(_line(workflow, [x for x, _ in known], [y for _, y in known]))
    return lines


def _time_axis(trends: list[TrendPoint], unit: str) -> dict[str, Any]:
    """A date axis padded by half a bucket each side, with one tick per bucket when there are few."""
    step = timedelta(days=7 if unit == "week" else 1)
    periods = sorted({date.fromisoformat(p.period) for p in trends})
    start = datetime.combine(periods[0], time()) - step / 2
    end = datetime.combine(periods[-1], time()) + step / 2
    axis: dict[str, Any] = {
        "type": "date",
        "tickformat": "%b %d",
        "range": [start.isoformat(), end.isoformat()],
    }
    if (periods[-1] - periods[0]) / step <= 14:
        axis["dtick"] = step.total_seconds() * 1000  # Plotly counts date ticks in milliseconds
        axis["tick0"] = periods[0].isoformat()  # ticks on the buckets (weeks start on Mondays)
    return axis


def _line(name: str, x: list[str], y: list[float]) -> dict[str, Any]:
    return {
        "type": "scatter",
        "mode": "lines+markers",
        "name": plot_text(name),
        "x": x,
        "y": y,
        "marker": {"size": 7},
        "line": {"width": 2},
    }


def queue_distribution(project: ProjectMetrics) -> Chart | None:
    if not any(project.queue_histogram.values()):
        return None
    bar = {
        "type": "bar",
        "name": "jobs",
        "x": list(project.queue_histogram),
        "y": list(project.queue_histogram.values()),
        "marker": {"color": PALETTE[5]},
    }
    layout = base_layout("Queue time (started_at - queued_at)", "Jobs", showlegend=False, bargap=0.15)
    note = "Build jobs with job details."
    return Chart("queue", "Queue time distribution", note, {"data": [bar], "layout": layout})


def _job_label(workflow: str, job: str) -> str:
    return plot_text(f"{workflow} / {job}")


def slowest_chart(jobs: list[JobMetrics]) -> Chart | None:
    slow = list(reversed(slowest_jobs(jobs, TOP)))  # Plotly draws horizontal bars bottom-up
    if not slow:
        return None
    p50 = [j.duration_p50 or 0.0 for j in slow]  # both are set whenever p95 is
    p95 = [j.duration_p95 or 0.0 for j in slow]
    divisor, name = time_unit(p95)
    labels = [_job_label(j.workflow, j.job) for j in slow]
    data = [
        hbar("p50", labels, _scaled(p50, divisor), PALETTE[0]),
        hbar("p95", labels, _scaled(p95, divisor), PALETTE[3]),
    ]
    layout = base_layout(name.capitalize(), "", barmode="group", height=max(260, 80 + 38 * len(slow)))
    note = "Duration of successful runs, p50 and p95."
    return Chart("slowest", "Slowest jobs", note, {"data": data, "layout": layout})


def flaky_chart(flaky: list[FlakyJob]) -> Chart | None:
    top = list(reversed(flaky[:TOP]))
    if not top:
        return None
    labels = [_job_label(f.workflow, f.job) for f in top]
    data = [hbar("commits", labels, [f.flaky_commits for f in top], PALETTE[2])]
    layout = base_layout(
        "Commits on which the job failed and passed",
        "",
        showlegend=False,
        height=max(220, 80 + 32 * len(top)),
    )
    if max(f.flaky_commits for f in top) <= 10:
        layout["xaxis"]["dtick"] = 1  # whole commits
    note = "Same job, same commit, both outcomes."
    return Chart("flaky", "Flakiest jobs", note, {"data": data, "layout": layout})


def hbar(name: str, labels: list[str], values: list[float], color: str) -> dict[str, Any]:
    """A horizontal bar trace (labels already made inert with `plot_text`)."""
    return {
        "type": "bar",
        "orientation": "h",
        "name": name,
        "y": labels,
        "x": values,
        "marker": {"color": color},
    }


def mttr_chart(workflows: list[WorkflowMetrics]) -> Chart | None:
    known = [w for w in workflows if w.mttr_mean is not None and w.mttr_median is not None]
    if not known:
        return None
    means = [w.mttr_mean or 0.0 for w in known]
    medians = [w.mttr_median or 0.0 for w in known]
    divisor, name = time_unit(means + medians)
    labels = [plot_text(w.workflow) for w in known]
    data = [
        {
            "type": "bar",
            "name": "mean",
            "x": labels,
            "y": _scaled(means, divisor),
            "marker": {"color": PALETTE[4]},
        },
        {
            "type": "bar",
            "name": "median",
            "x": labels,
            "y": _scaled(medians, divisor),
            "marker": {"color": PALETTE[1]},
        },
    ]
    layout = base_layout("Workflow", name.capitalize(), barmode="group", bargap=0.5)
    note = "From a failing run to the next successful run, same branch."
    return Chart("mttr", "Mean time to recovery", note, {"data": data, "layout": layout})


def approval_chart(workflows: list[WorkflowMetrics]) -> Chart | None:
    """Approval waits apart from durations, so one deploy workflow does not flatten the others."""
    known = [w for w in workflows if w.approval_wait_median is not None]
    if not known:
        return None
    medians = [w.approval_wait_median or 0.0 for w in known]
    divisor, name = time_unit(medians)
    bar = {
        "type": "bar",
        "name": "median wait",
        "x": [plot_text(w.workflow) for w in known],
        "y": _scaled(medians, divisor),
        "marker": {"color": PALETTE[6]},
    }
    layout = base_layout("Workflow", name.capitalize(), showlegend=False, bargap=0.5)
    note = "From an approval job going on hold to its approval (median per run)."
    return Chart("approval", "Approval waits", note, {"data": [bar], "layout": layout})


def organisation_chart(projects: list[ProjectMetrics]) -> Chart | None:
    """Success and first-pass success rate of every project, in health order."""
    known = [p for p in projects if p.success_rate is not None]
    if not known:
        return None
    labels = [plot_text(p.project_slug) for p in known]
    data = [
        {
            "type": "bar",
            "name": name,
            "x": labels,
            "y": [round((value(p) or 0.0) * 100, 1) for p in known],
            "marker": {"color": color},
        }
        for name, value, color in (
            ("success", lambda p: p.success_rate, PALETTE[1]),
            ("first pass", lambda p: p.first_pass_success_rate, PALETTE[0]),
        )
    ]
    layout = base_layout("Project", "Rate (%)", barmode="group", bargap=0.4)
    layout["yaxis"].update({"range": [0, 105], "ticksuffix": "%", "rangemode": "normal"})
    note = "Projects in health order, lowest success rate first."
    return Chart("health", "Project health", note, {"data": data, "layout": layout})
