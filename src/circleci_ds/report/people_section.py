"""The report's people section (see people_report.py): three table specs, drawn by both renderers.

Logins, names and organisations come from the API or the identities file: the specs replace their
control characters, the terminal prints them as `display.plain` text (no markup), the page escapes
them. Both renderers show the same columns.
"""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from circleci_ds.metrics.people import PeopleReport
from circleci_ds.report import formatting as fmt
from circleci_ds.report.html import spec_table
from circleci_ds.report.spec import Column, TableSpec
from circleci_ds.report.terminal import print_specs

UNKNOWN_PERSON = "(deleted or unresolved)"
NO_IDENTITIES = "No identities file given (--identities): organisations are Unknown."


def _who(login: str | None) -> str:
    return login if login is not None else UNKNOWN_PERSON


ORGANISATIONS: TableSpec[PeopleReport] = TableSpec(
    "people-organisations",
    "Runs by organisation",
    "Workflow runs by the organisation of who started them, at the run's creation.",
    (
        Column("Organisation", lambda o: o.organization),
        Column("Runs", lambda o: fmt.count(o.runs), numeric=True),
        Column("Failures", lambda o: fmt.count(o.failures), numeric=True),
        Column("Reruns", lambda o: fmt.count(o.reruns), numeric=True),
        Column("People", lambda o: fmt.count(o.people), numeric=True),
    ),
    lambda r: r.organizations,
)

APPROVERS: TableSpec[PeopleReport] = TableSpec(
    "people-approvers",
    "Who approves",
    "Approved approval jobs, per approver.",
    (
        Column("Approver", lambda a: _who(a.login)),
        Column("Name", lambda a: fmt.text(a.name)),
        Column("Organisation", lambda a: a.organization),
        Column("Approvals", lambda a: fmt.count(a.approvals), numeric=True),
        Column("Workflows", lambda a: ", ".join(a.workflows)),
    ),
    lambda r: r.approvers,
)

RERUNNERS: TableSpec[PeopleReport] = TableSpec(
    "people-rerunners",
    "Who reruns most",
    "Manual reruns, per person who started them.",
    (
        Column("Person", lambda r: _who(r.login)),
        Column("Name", lambda r: fmt.text(r.name)),
        Column("Organisation", lambda r: r.organization),
        Column("Reruns", lambda r: fmt.count(r.reruns), numeric=True),
    ),
    lambda r: r.rerunners,
)


def people_specs(report: PeopleReport) -> tuple[TableSpec[PeopleReport], ...]:
    """The three tables; without an identities file the organisations table says so."""
    if report.with_identities:
        return (ORGANISATIONS, APPROVERS, RERUNNERS)
    return (replace(ORGANISATIONS, note=f"{ORGANISATIONS.note} {NO_IDENTITIES}"), APPROVERS, RERUNNERS)


def print_people(report: PeopleReport, console: Console) -> None:
    print_specs(console, people_specs(report), report)


def people_html(report: PeopleReport) -> str:
    """One section with three cards; every value escaped."""
    cards = "".join(spec_table(spec, report) for spec in people_specs(report))
    return f'<section class="project" id="people"><h2>People</h2>{cards}</section>'
