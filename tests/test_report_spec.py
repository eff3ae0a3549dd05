"""The table specs' rules, through both renderers: links only in the page and only to https, cells
cut at their limit, control characters replaced everywhere, the terminal's row cap, and every
section (metrics, tests, people) drawn from the same specs with the same columns."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html import unescape

from rich.console import Console

from circleci_ds.metrics.people import Approver, OrganizationActivity, PeopleReport, Rerunner
from circleci_ds.report import people_section, testsection
from circleci_ds.report.html import spec_table
from circleci_ds.report.spec import TABLES, Column, TableSpec, project_column
from circleci_ds.report.terminal import build_table, print_table


@dataclass(frozen=True)
class Row:
    project_slug: str
    text: str
    url: str | None


SPEC: TableSpec[list[Row]] = TableSpec(
    "rows",
    "Rows",
    "A note.",
    (
        project_column(lambda r: r.project_slug),
        Column("Text", lambda r: r.text, limit=12),
        Column("Where", lambda r: r.url, link="open"),
    ),
    lambda rows: rows,
    terminal_rows=2,
)


def terminal(spec: TableSpec[list[Row]] | TableSpec[PeopleReport], source: object) -> str:
    out = io.StringIO()
    print_table(Console(file=out, width=200), build_table(spec, source))  # type: ignore[arg-type]
    return out.getvalue()


def terminal_headers(text: str) -> list[str]:
    """The header row of a printed table: the line above the rule."""
    lines = text.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    return re.split(r"\s{2,}", lines[rule - 1].strip())


def cells(page: str) -> list[list[str]]:
    """Each body row's cells, tags kept."""
    rows = re.findall(r"<tr>(.*?)</tr>", page.split("<tbody>", 1)[1])
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]


def test_link_columns_link_only_https_urls_and_only_in_the_page() -> None:
    rows = [
        Row("a", "x", "https://ci/1"),
        Row("b", "y", "javascript:alert(1)"),
        Row("c", "z", 'http://ci/"><script>'),
        Row("d", "w", None),
    ]
    page = spec_table(SPEC, rows)
    links = [row[2] for row in cells(page)]
    assert links == ['<a href="https://ci/1">open</a>', "—", "—", "—"]
    assert "javascript" not in page and "<script>" not in page
    text = terminal(SPEC, rows)
    assert "Where" not in text and "https://ci/1" not in text and "open" not in text


def test_long_cells_are_cut_at_the_column_limit_in_both_renderers() -> None:
    rows = [Row("a", "0123456789abcdef", None), Row("b", "0123456789ab", None)]
    assert [unescape(row[1]) for row in cells(spec_table(SPEC, rows))] == ["0123456789a…", "0123456789ab"]
    text = terminal(SPEC, rows)
    assert "0123456789a…" in text and "0123456789ab" in text and "abcdef" not in text


def test_control_characters_are_replaced_in_both_renderers() -> None:
    rows = [Row("\x1b[31mred\x07", "\u202eevil\x9b", None)]
    page = spec_table(SPEC, rows)
    text = terminal(SPEC, rows)
    for shown in (page, text):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]", shown), repr(shown)
        assert "\ufffd[31mred\ufffd" in shown and "\ufffdevil\ufffd" in shown


def test_page_escapes_every_cell() -> None:
    rows = [Row("<b>p</b>", "<i>&amp;", "https://ci/?a=1&b=<x>")]
    page = spec_table(SPEC, rows)
    assert "<b>" not in page and "<i>" not in page and "<x>" not in page
    assert cells(page)[0] == ["&lt;b&gt;p&lt;/b&gt;", "&lt;i&gt;&amp;amp;", '<a href="https://ci/?a=1&amp;b=&lt;x&gt;">open</a>']


def test_terminal_shows_at_most_its_row_cap_and_the_page_every_row() -> None:
    rows = [Row(f"project-{n}", "x", None) for n in range(4)]
    assert len(cells(spec_table(SPEC, rows))) == 4
    text = terminal(SPEC, rows)
    assert "project-1" in text and "project-2" not in text


def test_a_project_section_drops_the_project_column_and_other_projects_rows() -> None:
    rows = [Row("a", "mine", None), Row("b", "theirs", None)]
    page = spec_table(SPEC, rows, project="a")
    assert cells(page) == [["mine", "—"]] and "Project" not in page


def test_people_tables_show_the_same_columns_in_both_renderers() -> None:
    report = PeopleReport(
        with_identities=False,
        organizations=[OrganizationActivity("Acme <Inc>", 3, 1, 1, 2)],
        approvers=[Approver(None, "Eve [red]", "Acme <Inc>", 2, ["deploy", "release"])],
        rerunners=[Rerunner("bob", None, "Unknown", 4)],
    )
    for spec in people_section.people_specs(report):
        headers = [c.header for c in spec.columns]
        page = spec_table(spec, report)
        text = terminal(spec, report)
        assert re.findall(r"<th(?: [^>]*)?>(.*?)</th>", page) == headers
        assert terminal_headers(text) == headers
    html = people_section.people_html(report)
    assert "Eve [red]" in html and "Acme &lt;Inc&gt;" in html and "(deleted or unresolved)" in html
    assert "No identities file given" in html


def test_every_table_key_is_unique_in_the_page() -> None:
    report = PeopleReport(with_identities=True, organizations=[], approvers=[], rerunners=[])
    specs = [*TABLES, *testsection.TABLES, *people_section.people_specs(report)]
    keys = [s.key for s in specs]
    assert len(set(keys)) == len(keys)
