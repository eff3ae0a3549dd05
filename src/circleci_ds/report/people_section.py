"""The report's people section (see people_report.py): terminal tables and an HTML card.

Logins, names and organisations come from the API or the identities file: `display.plain` text
in the terminal (no markup, controls replaced), escaped in HTML.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from circleci_ds.display import plain
from circleci_ds.people_report import PeopleReport
from circleci_ds.report import formatting as fmt
from circleci_ds.report.html import _table as html_table
from circleci_ds.report.html import e
from circleci_ds.report.terminal import _table, print_table

UNKNOWN_PERSON = "(deleted or unresolved)"
ORG_NOTE = "Workflow runs by the organisation of who started them, at the run's creation."


def _who(login: str | None) -> str:
    return login if login is not None else UNKNOWN_PERSON


def print_people(report: PeopleReport, console: Console) -> None:
    for table in people_tables(report):
        print_table(console, table)


def people_tables(report: PeopleReport) -> list[Table]:
    orgs = _table("Runs by organisation", "Organisation", "Runs", "Failures", "Reruns", "People")
    for o in report.organizations:
        orgs.add_row(plain(o.organization), fmt.count(o.runs), fmt.count(o.failures), fmt.count(o.reruns),
                     fmt.count(o.people))  # fmt: skip
    if not report.with_identities:
        orgs.caption = "No identities file given (--identities): organisations are Unknown."
    approvers = _table("Who approves", "Approver", "Organisation", "Approvals", "Workflows", numeric_from=2)
    for a in report.approvers:
        approvers.add_row(plain(_who(a.login)), plain(a.organization), fmt.count(a.approvals),
                          plain(", ".join(a.workflows)))  # fmt: skip
    rerunners = _table("Who reruns most (manual reruns)", "Person", "Organisation", "Reruns", numeric_from=2)
    for r in report.rerunners:
        rerunners.add_row(plain(_who(r.login)), plain(r.organization), fmt.count(r.reruns))
    return [orgs, approvers, rerunners]


def people_html(report: PeopleReport) -> str:
    """One section with three cards; every value escaped."""
    orgs = [
        [e(o.organization), e(fmt.count(o.runs)), e(fmt.count(o.failures)), e(fmt.count(o.reruns)),
         e(fmt.count(o.people))]
        for o in report.organizations
    ]  # fmt: skip
    approvers = [
        [e(_who(a.login)), e(fmt.text(a.name)), e(a.organization), e(fmt.count(a.approvals)),
         e(", ".join(a.workflows))]
        for a in report.approvers
    ]  # fmt: skip
    rerunners = [
        [e(_who(r.login)), e(fmt.text(r.name)), e(r.organization), e(fmt.count(r.reruns))]
        for r in report.rerunners
    ]
    org_headers = ["Organisation", "Runs", "Failures", "Reruns", "People"]
    cards = (
        html_table("Runs by organisation", ORG_NOTE, org_headers, orgs, 1)
        + html_table("Who approves", "Approved approval jobs, per approver.",
                     ["Approver", "Name", "Organisation", "Approvals", "Workflows"], approvers, 3)
        + html_table("Who reruns most", "Manual reruns, per person who started them.",
                     ["Person", "Name", "Organisation", "Reruns"], rerunners, 3)
    )  # fmt: skip
    return f'<section class="project" id="people"><h2>People</h2>{cards}</section>'
