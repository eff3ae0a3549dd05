"""Rich tables for the terminal, drawn from the table specs (circleci_ds.report.spec).

Every cell goes through `display.plain` into a `Text` object, never into a markup string, so a job
called `[red]x` prints as written and control characters in it are replaced.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from circleci_ds.display import plain
from circleci_ds.metrics import MetricsReport
from circleci_ds.report.spec import TABLES, TableSpec, rows_of


def cell_text(value: str) -> Text:
    """External or formatted text as an inert rich Text, control characters replaced."""
    return plain(value)


def print_tables(report: MetricsReport, console: Console) -> None:
    """The window, any warnings, then every table."""
    console.print(plain(report.window, style="dim"))
    for warning in report.warnings:
        console.print(plain(f"warning: {warning}", style="yellow"))
    if not report.projects:
        console.print(Text("No workflow runs in this window."))
        return
    for spec in TABLES:
        print_table(console, build_table(spec, report))


def _table(title: str, *columns: str, numeric_from: int = 1) -> Table:
    """An empty table with plain headers (sections that have no spec yet: people)."""
    table = Table(
        title=title, title_justify="left", title_style="bold", header_style="bold cyan", box=box.SIMPLE_HEAD,
        pad_edge=False,
    )  # fmt: skip
    for index, name in enumerate(columns):
        table.add_column(name, justify="right" if index >= numeric_from else "left", overflow="fold")
    return table


def build_table(spec: TableSpec, report: MetricsReport) -> Table:
    table = Table(
        title=Text(spec.title, style="bold"),
        title_justify="left",
        header_style="bold cyan",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption=Text(spec.note, style="dim"),
        caption_justify="left",
    )
    for column in spec.columns:
        table.add_column(Text(column.header), justify="right" if column.numeric else "left", overflow="fold")
    rows = rows_of(spec, report)
    for item in rows:
        table.add_row(*(cell_text(c) for c in spec.cells(item)))
    if not rows:
        table.caption = Text(spec.empty, style="dim")
    return table


def print_table(console: Console, table: Table) -> None:
    """A terminal wraps cells to fit; a file or pipe gets the table at its natural width."""
    if console.is_terminal:
        console.print(table)
        return
    saved = console.width
    console.width = natural_width(console, table)  # print() never goes past the console's width
    try:
        console.print(table)
    finally:
        console.width = saved


def natural_width(console: Console, table: Table) -> int:
    """The width the table takes when nothing has to wrap."""
    unbounded = console.options.update_width(10_000)
    return max(console.width, console.measure(table, options=unbounded).maximum)
