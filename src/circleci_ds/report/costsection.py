"""The cost and capacity part of the report: table specs drawn by both renderers, and its charts.

Estimated cost is labelled so everywhere it shows: the section's title, every credits column header
and the charts. Project, workflow, job and class names are hostile text, made safe by the specs
(tables) and `plot_text` (charts) as elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Console

from circleci_ds.metrics.capacity import CapacityReport, Concurrency
from circleci_ds.metrics.cost import CostReport
from circleci_ds.report import formatting as fmt
from circleci_ds.report.charts import PALETTE, Chart, base_layout, hbar, plot_text
from circleci_ds.report.html import chart_cards, e, spec_table
from circleci_ds.report.spec import Column, TableSpec, project_column
from circleci_ds.report.terminal import print_specs
from circleci_ds.text import plain

SHOWN = 10
WEEK_PROJECTS = 8  # projects drawn in the weekly chart; the rest are summed as "others"


@dataclass
class CostSection:
    cost: CostReport
    capacity: CapacityReport


@dataclass
class QueueRow:
    side: str
    jobs: int
    p50: float | None
    p95: float | None


@dataclass
class LostRow:
    kind: str
    credits: float


def _project(item: Any) -> str:
    if item.project_slug:
        return str(item.project_slug)
    return f"{item.project or '(unnamed)'} (not in the fixture)"


def credits(value: float | None) -> str:
    return fmt.DASH if value is None else f"{value:,.1f}"


def _label(section: CostSection) -> str:
    return " (estimated)" if section.cost.estimated else ""


def tables(estimated: bool) -> tuple[TableSpec[CostSection], ...]:
    """The section's tables; estimated credits say so in every credits header."""
    unit = "Credits (estimated)" if estimated else "Credits"
    money = Column(unit, lambda x: credits(x.credits), numeric=True)
    runs = Column("Runs", lambda x: fmt.count(x.runs), numeric=True)
    projects: TableSpec[CostSection] = TableSpec(
        "cost-projects",
        "Credits by project",
        "Credits = total - user credits (user credits are seat charges, apart). Per green pipeline: "
        "default-branch credits / successful default-branch pipelines.",
        (
            project_column(_project),
            runs,
            money,
            Column("User credits", lambda p: credits(p.user_credits), numeric=True),
            Column("Default branch", lambda p: credits(p.default_branch_credits), numeric=True),
            Column("Green pipelines", lambda p: fmt.count(p.successful_default_pipelines), numeric=True),
            Column(
                "Per green pipeline", lambda p: credits(p.cost_per_successful_default_pipeline), numeric=True
            ),
        ),
        lambda s: s.cost.by_project,
        "No job runs in this window.",
        SHOWN,
    )
    jobs: TableSpec[CostSection] = TableSpec(
        "cost-jobs",
        "Costliest jobs",
        "Every run of the job in the window, any status.",
        (
            project_column(_project),
            Column("Workflow", lambda j: fmt.text(j.workflow)),
            Column("Job", lambda j: fmt.text(j.job)),
            runs,
            money,
        ),
        lambda s: s.cost.by_job,
        "No job runs in this window.",
        SHOWN,
    )
    classes: TableSpec[CostSection] = TableSpec(
        "cost-classes",
        "Credits by resource class",
        "Every job run in the window, by the resource class it ran on.",
        (Column("Resource class", lambda r: fmt.text(r.resource_class)), runs, money),
        lambda s: s.cost.by_resource_class,
        "No job runs in this window.",
        SHOWN,
    )
    lost: TableSpec[CostSection] = TableSpec(
        "cost-lost",
        "Credits lost",
        "A run can count in several rows (a failed run of a flaky job in a rerun).",
        (Column("Spent on", lambda r: r.kind), money),
        lambda s: [
            LostRow("failed runs", s.cost.lost.failed),
            LostRow("reruns", s.cost.lost.reruns),
            LostRow("flaky jobs (their failed runs)", s.cost.lost.flaky_jobs),
            LostRow("jobs failed only on flaky tests", s.cost.lost.flaky_tests),
        ],
    )
    sizing: TableSpec[CostSection] = TableSpec(
        "cost-rightsizing",
        "Right-sizing",
        "From the usage export's utilisation samples; savings assume the same run times on the "
        "suggested class.",
        (
            project_column(_project),
            Column("Workflow", lambda r: fmt.text(r.workflow)),
            Column("Job", lambda r: fmt.text(r.job)),
            Column("Class", lambda r: fmt.text(r.resource_class)),
            Column("Verdict", lambda r: r.verdict),
            Column("Suggested", lambda r: fmt.text(r.suggested_class)),
            Column("Sampled runs", lambda r: fmt.count(r.runs), numeric=True),
            Column("Max CPU p95", lambda r: f"{r.max_cpu_p95:.1f}%", numeric=True),
            Column("Max RAM p95", lambda r: f"{r.max_ram_p95:.1f}%", numeric=True),
            Column("Max CPU p50", lambda r: f"{r.max_cpu_median:.1f}%", numeric=True),
            Column("Saved credits", lambda r: credits(r.saved_credits), numeric=True),
        ),
        lambda s: s.cost.rightsizing,
        "Nothing to suggest (or no usage export: utilisation is only in it).",
        SHOWN,
    )
    return projects, jobs, classes, lost, sizing


def _concurrency_rows(section: CostSection) -> list[Concurrency]:
    return [section.capacity.organisation, *section.capacity.by_resource_class]


def _queue_rows(section: CostSection) -> list[QueueRow]:
    c = section.capacity
    rows = [QueueRow("all jobs", c.queue_all.jobs, c.queue_all.p50, c.queue_all.p95)]
    for side, split in (("queued at the cap", c.queue_at_cap), ("queued below it", c.queue_below_cap)):
        if split is not None:
            rows.append(QueueRow(side, split.jobs, split.p50, split.p95))
    return rows


CONCURRENCY: TableSpec[CostSection] = TableSpec(
    "capacity-concurrency",
    "Concurrent job runs",
    "One per running job whatever its parallelism; p95 over every day of the window.",
    (
        Column(
            "Resource class",
            lambda c: "all (organisation)" if c.resource_class == "*" else fmt.text(c.resource_class),
        ),
        Column("Peak", lambda c: fmt.count(c.peak), numeric=True),
        Column("Daily peak p95", lambda c: fmt.number(c.p95_daily_peak), numeric=True),
        Column("Minutes at cap", lambda c: fmt.number(c.minutes_at_cap), numeric=True),
    ),
    _concurrency_rows,
)

QUEUE: TableSpec[CostSection] = TableSpec(
    "capacity-queue",
    "Queue time against the cap",
    "Jobs queued while the organisation ran at or above its concurrency cap, against below it.",
    (
        Column("Jobs", lambda q: q.side),
        Column("Count", lambda q: fmt.count(q.jobs), numeric=True),
        Column("p50", lambda q: fmt.seconds(q.p50), numeric=True),
        Column("p95", lambda q: fmt.seconds(q.p95), numeric=True),
    ),
    _queue_rows,
)


def all_tables(section: CostSection) -> tuple[TableSpec[CostSection], ...]:
    return (*tables(section.cost.estimated), CONCURRENCY, QUEUE)


def print_cost_tables(section: CostSection, console: Console) -> None:
    console.print(plain(section.cost.scope, style="dim"))
    for note in section.cost.notes:
        console.print(plain(note, style="yellow"))
    console.print(plain(section.capacity.scope, style="dim"))
    print_specs(console, all_tables(section), section)


def html_section(section: CostSection, specs: list[dict[str, Any]]) -> str:
    """The page's Cost and capacity section; chart specs are appended to `specs`."""
    label = _label(section)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in section.cost.notes)
    intro = (
        f'<p class="note">{e(section.cost.scope)}</p>{notes}<p class="note">{e(section.capacity.scope)}</p>'
    )
    cards = chart_cards(section_charts(section), "cost", specs)
    body = "".join(spec_table(spec, section) for spec in all_tables(section))
    title = f"<h2>Cost and capacity{e(label)}</h2>"
    return f'<section class="project" id="cost">{title}{intro}{cards}{body}</section>'


# -- charts -------------------------------------------------------------------------------------------


def section_charts(section: CostSection) -> list[Chart]:
    found = [_weekly_chart(section), _jobs_chart(section), _concurrency_chart(section)]
    return [c for c in found if c is not None]


def _weekly_chart(section: CostSection) -> Chart | None:
    weeks = sorted({w.week for w in section.cost.by_week})
    if not weeks:
        return None
    top = [_project(p) for p in section.cost.by_project[:WEEK_PROJECTS]]
    series: dict[str, dict[str, float]] = {}
    for w in section.cost.by_week:
        name = _project(w)
        name = name if name in top else "others"
        series.setdefault(name, {})
        series[name][w.week] = series[name].get(w.week, 0.0) + w.credits
    data = [
        {"type": "bar", "name": plot_text(name), "x": weeks,
         "y": [round(values.get(wk, 0.0), 1) for wk in weeks], "marker": {"color": PALETTE[i % len(PALETTE)]}}
        for i, (name, values) in enumerate(series.items())
    ]  # fmt: skip
    label = _label(section)
    layout = base_layout("Week (Monday, UTC)", f"Credits{label}", barmode="stack")
    return Chart(
        "weekly",
        f"Credits per week by project{label}",
        "Stacked by project.",
        {"data": data, "layout": layout},
    )


def _jobs_chart(section: CostSection) -> Chart | None:
    top = list(reversed(section.cost.by_job[:SHOWN]))
    if not top:
        return None
    labels = [plot_text(f"{_project(j)} · {j.workflow} · {j.job}"[:80]) for j in top]
    label = _label(section)
    bar = hbar(f"credits{label}", labels, [round(j.credits, 1) for j in top], PALETTE[3])
    layout = base_layout(f"Credits{label}", "", height=max(240, 80 + 34 * len(top)), showlegend=False)
    return Chart(
        "jobs", f"Costliest jobs{label}", "Credits over the window.", {"data": [bar], "layout": layout}
    )


def _concurrency_chart(section: CostSection) -> Chart | None:
    points = section.capacity.timeline
    if not points or not any(p.peak for p in points):
        return None
    x = [p.hour for p in points]
    data: list[dict[str, Any]] = [
        {"type": "scatter", "mode": "lines+markers", "line": {"shape": "hv", "color": PALETTE[0]},
         "marker": {"size": 3}, "name": "peak per hour", "x": x, "y": [p.peak for p in points]},
    ]  # fmt: skip
    cap = section.capacity.concurrency_cap
    if cap is not None:
        data.append(
            {"type": "scatter", "mode": "lines", "line": {"dash": "dash", "color": "#b91c1c"},
             "name": f"concurrency cap ({cap})", "x": [x[0], x[-1]], "y": [cap, cap]}
        )  # fmt: skip
    layout = base_layout("Hour (UTC)", "Concurrent job runs")
    note = "Highest number of job runs at once in each hour, every class together."
    return Chart("concurrency", "Concurrency over time", note, {"data": data, "layout": layout})
