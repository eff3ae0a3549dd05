"""Rich tables for the terminal, drawn from the table specs (circleci_ds.report.spec).

Every cell goes through `display.plain` into a `Text` object, never into a markup string, so a job
called `[red]x` prints as written and control characters in it are replaced. Link columns are left
out: a terminal shows no links.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from circleci_ds.metrics.ci import MetricsReport
from circleci_ds.report.spec import TABLES, S, TableSpec, rows_of
from circleci_ds.text import plain


def print_tables(report: MetricsReport, console: Console) -> None:
    """The window, any warnings, then every table."""
    console.print(plain(report.window, style="dim"))
    for warning in report.warnings:
        console.print(plain(f"warning: {warning}", style="yellow"))
    if not report.projects:
        console.print(Text("No workflow runs in this window."))
        return
    print_specs(console, TABLES, report)


def print_specs(console: Console, specs: Iterable[TableSpec[S]], source: S) -> None:
    """Each spec's table, its rows taken from `source`."""
    for spec in specs:
        print_table(console, build_table(spec, source))


def build_table(spec: TableSpec[S], source: S) -> Group:
    """The spec's title, table (without its link columns; every cell a `plain` Text) and note.

    Title and note sit outside the table, so a narrow table does not wrap them."""
    table = Table(header_style="bold cyan", box=box.SIMPLE_HEAD, pad_edge=False)
    columns = spec.text_columns()
    for column in columns:
        table.add_column(Text(column.header), justify="right" if column.numeric else "left", overflow="fold")
    rows = rows_of(spec, source)
    for item in rows[: spec.terminal_rows]:
        table.add_row(*(plain(c.text(item)) for c in columns))
    note = spec.note if rows else spec.empty
    return Group(Text(spec.title, style="bold"), table, Text(note, style="dim"))


def print_table(console: Console, table: RenderableType) -> None:
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


def natural_width(console: Console, table: RenderableType) -> int:
    """The width the table takes when nothing has to wrap."""
    unbounded = console.options.update_width(10_000)
    return max(console.width, console.measure(table, options=unbounded).maximum)
