"""One self-contained HTML page: styles, plotly.js and the data are all inline, so it opens offline.

Every string from the API is HTML-escaped where it lands in markup; table cells, drawn from the
specs of circleci_ds.report.spec, also have their control characters replaced, and only an
`https://` URL becomes a link. The chart data travels as JSON inside a
`<script type="application/json">` whose `<`, `>` and `&` are written as \\u escapes, so no value
can close the script element or open a comment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from circleci_ds.files import write_atomic
from circleci_ds.metrics.ci import MetricsReport, ProjectMetrics
from circleci_ds.metrics.definitions import DEFINITIONS
from circleci_ds.report import formatting as fmt
from circleci_ds.report.charts import Chart, organisation_chart, project_charts
from circleci_ds.report.spec import ORGANISATION, PROJECT_TABLES, Column, S, TableSpec, rows_of

STYLE = """
:root { --ink:#0f172a; --muted:#64748b; --line:#e2e8f0; --bg:#f1f5f9; --card:#fff; --accent:#2563eb;
  --good:#15803d; --bad:#b91c1c; --warn:#b45309; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background:linear-gradient(135deg,#0f172a,#1e3a8a); color:#fff; padding:28px 40px 24px; }
header h1 { margin:0 0 4px; font-size:24px; font-weight:650; letter-spacing:-.01em; }
header p { margin:0; color:#cbd5e1; }
nav { margin-top:14px; display:flex; flex-wrap:wrap; gap:8px; }
nav a { color:#fff; background:rgba(255,255,255,.12); padding:3px 10px; border-radius:999px;
  text-decoration:none; font-size:13px; }
main { max-width:1320px; margin:0 auto; padding:24px 40px 48px; }
section.project, section.organisation { margin-bottom:40px; }
header p.warning { color:#fde68a; }
h2 { font-size:20px; margin:0 0 12px; display:flex; flex-wrap:wrap; align-items:center; gap:10px; }
h3 { font-size:15px; margin:0 0 2px; }
.chip { font-size:12px; font-weight:500; color:#1e3a8a; background:#dbeafe; padding:2px 9px;
  border-radius:999px; }
.kpis { display:grid; grid-template-columns:repeat(auto-fit,minmax(135px,1fr)); gap:12px;
  margin-bottom:16px; }
.kpi, .card { background:var(--card); border:1px solid var(--line); border-radius:12px;
  box-shadow:0 1px 2px rgba(15,23,42,.05); }
.kpi { padding:14px 16px; }
.kpi .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.kpi .value { font-size:22px; font-weight:650; font-variant-numeric:tabular-nums; }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(520px,1fr)); gap:16px;
  margin-bottom:16px; }
.card { padding:16px 18px; margin-bottom:16px; overflow-x:auto; }
.grid .card { margin-bottom:0; }
.note { color:var(--muted); font-size:12px; margin:0 0 8px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { font-size:12px; color:var(--muted); text-transform:uppercase; letter-spacing:.03em; font-weight:600;
  white-space:nowrap; }
td.num, th.num { text-align:right; white-space:nowrap; }
tbody tr:nth-child(even) { background:#f8fafc; }
tbody tr:hover { background:#eef2ff; }
code { font-family:ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size:12px; }
.status { font-size:12px; font-weight:600; padding:1px 8px; border-radius:999px; }
.status.failed { background:#fee2e2; color:var(--bad); }
.status.error { background:#ffedd5; color:var(--warn); }
.empty { color:var(--muted); font-style:italic; }
footer { color:var(--muted); font-size:12px; max-width:1320px; margin:0 auto; padding:0 40px 40px; }
footer dt { font-weight:600; color:var(--ink); margin-top:6px; }
footer dd { margin:0; }
"""

BOOT = """
(function () {
  var specs = JSON.parse(document.getElementById("chart-data").textContent);
  var config = {displayModeBar: false, responsive: true};
  specs.forEach(function (s) { Plotly.newPlot(s.id, s.data, s.layout, config); });
})();
"""


def e(value: Any) -> str:
    """HTML-escaped text of any value."""
    return escape(str(value), quote=True)


def safe_json(value: Any) -> str:
    """JSON that can sit inside a <script> element: no `<`, `>` or `&` appears literally."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped inside the plotly Python package."""
    from plotly.offline import get_plotlyjs  # imported on use: plotly is slow to import

    return get_plotlyjs()


def render_html(
    report: MetricsReport, extra_sections: str = "", extra_specs: Sequence[dict[str, Any]] = ()
) -> str:
    """The whole page as a string; `extra_sections` (markup, already escaped) go after the projects,
    with the chart specs they draw in `extra_specs`."""
    specs: list[dict[str, Any]] = []
    if report.projects:
        organisation = _organisation(report, specs)
        sections = [_project_section(report, p, i, specs) for i, p in enumerate(report.projects)]
        body = organisation + "\n".join(sections)
    else:
        body = '<p class="empty">No workflow runs in this window.</p>'
    body += extra_sections
    specs.extend(extra_specs)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>CircleCI report</title><style>{STYLE}</style></head><body>"
        f"{_header(report)}<main>{body}</main>{_footer(report)}"
        f'<script id="chart-data" type="application/json">{safe_json(specs)}</script>'
        f"<script>{plotly_js()}</script><script>{BOOT}</script></body></html>\n"
    )


def write_html(
    report: MetricsReport, path: Path, extra_sections: str = "", extra_specs: Sequence[dict[str, Any]] = ()
) -> None:
    # OutputError leaves a previous report as it was
    write_atomic(path, render_html(report, extra_sections, extra_specs))


def _header(report: MetricsReport) -> str:
    links = "".join(f'<a href="#p{i}">{e(p.project_slug)}</a>' for i, p in enumerate(report.projects))
    nav = f"<nav>{links}</nav>" if len(report.projects) > 1 else ""
    warnings = "".join(f'<p class="warning">warning: {e(w)}</p>' for w in report.warnings)
    return (
        f'<header><h1>CircleCI report</h1><p id="window">{e(report.window)}</p>'
        f"<p>Generated {e(report.generated_at)}.</p>{warnings}{nav}</header>"
    )


def _footer(report: MetricsReport) -> str:
    names = {d.key: d.name for d in DEFINITIONS}
    items = "".join(f"<dt>{e(names.get(k, k))}</dt><dd>{e(t)}</dd>" for k, t in report.definitions.items())
    return f"<footer><h3>Definitions</h3><dl>{items}</dl></footer>"


def _organisation(report: MetricsReport, specs: list[dict[str, Any]]) -> str:
    charts = [c for c in (organisation_chart(report.projects),) if c is not None]
    cards = chart_cards(charts, "org", specs)
    table = spec_table(ORGANISATION, report)
    return f'<section class="organisation" id="organisation"><h2>Organisation</h2>{cards}{table}</section>'


def chart_cards(charts: list[Chart], prefix: str, specs: list[dict[str, Any]]) -> str:
    """A grid of chart cards (none when there are no charts); their figures are appended to `specs`."""
    cards = []
    for chart in charts:
        chart_id = f"chart-{prefix}-{chart.key}"
        specs.append({"id": chart_id, **chart.figure})
        cards.append(_chart_card(chart, chart_id))
    return f'<div class="grid">{"".join(cards)}</div>' if cards else ""


def _chart_card(chart: Chart, chart_id: str) -> str:
    return (
        f'<div class="card"><h3>{e(chart.title)}</h3><p class="note">{e(chart.note)}</p>'
        f'<div class="chart" id="{e(chart_id)}"></div></div>'
    )


def _project_section(
    report: MetricsReport, project: ProjectMetrics, index: int, specs: list[dict[str, Any]]
) -> str:
    cards = chart_cards(project_charts(report, project), str(index), specs)
    native = f'<span class="chip">{e(project.project)}</span>' if project.project else ""
    tables = "".join(spec_table(spec, report, project.project_slug) for spec in PROJECT_TABLES)
    return (
        f'<section class="project" id="p{index}"><h2>{e(project.project_slug)}{native}'
        f'<span class="chip">{e(fmt.branch(project.branch))}</span></h2>'
        f"{_kpis(project)}{cards}{tables}</section>"
    )


def _kpis(p: ProjectMetrics) -> str:
    values = [
        ("Pipelines", fmt.count(p.pipelines)),
        ("Runs", fmt.count(p.runs)),
        ("Success rate", fmt.percent(p.success_rate)),
        ("First pass", fmt.percent(p.first_pass_success_rate)),
        ("Throughput", fmt.rate(p.throughput)),
        ("Duration p50", fmt.seconds(p.duration_median)),
        ("MTTR", fmt.seconds(p.mttr_mean)),
        ("Time to green", fmt.seconds(p.time_to_green_median)),
        ("Queue p50", fmt.seconds(p.queue_time_median)),
        ("Flaky jobs", fmt.count(p.flaky_jobs)),
    ]
    cells = "".join(
        f'<div class="kpi"><div class="label">{e(label)}</div><div class="value">{e(value)}</div></div>'
        for label, value in values
    )
    return f'<div class="kpis">{cells}</div>'


def spec_table(spec: TableSpec[S], source: S, project: str | None = None) -> str:
    """A card with the spec's table, rows from `source` (with `project`, only its rows and no project
    column); every cell is escaped here."""
    items = rows_of(spec, source, project)
    columns = spec.visible(with_project=project is None)
    head = "".join(
        f'<th class="num">{e(c.header)}</th>' if c.numeric else f"<th>{e(c.header)}</th>" for c in columns
    )
    if not items:
        body = f'<tr><td class="empty" colspan="{len(columns)}">{e(spec.empty)}</td></tr>'
    else:
        body = "".join("<tr>" + "".join(_cell(c, item) for c in columns) + "</tr>" for item in items)
    return (
        f'<div class="card" data-table="{e(spec.key)}"><h3>{e(spec.title)}</h3>'
        f'<p class="note">{e(spec.note)}</p>'
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def _cell(column: Column, item: Any) -> str:
    if column.link is not None:
        url = column.url(item)
        inner = f'<a href="{e(url)}">{e(column.link)}</a>' if url is not None else e(fmt.DASH)
    elif column.code:
        inner = f"<code>{e(column.text(item))}</code>"
    else:
        inner = e(column.text(item))
    return f'<td class="num">{inner}</td>' if column.numeric else f"<td>{inner}</td>"
