"""The report's people section: runs, failures and reruns by organisation; approvers; rerunners.

Rules (the window and branch are the metrics' own: workflow runs created in [since, until) on
each project's default branch, all branches when that is unknown or the branch is `*`):
- a run belongs to the person who started it (`started_by`) and to that person's organisation at
  the run's creation ("Unknown" without an identities file, or when unaffiliated then);
- failures are runs that ended `failed` or `error`; reruns are runs that are not the first of
  their workflow name in their pipeline (automatic reruns included);
- approvers: approval jobs approved (status success) by someone, counted per approver and the
  approver's organisation at the approval (someone who moved appears once per organisation),
  with the workflows they gate;
- rerunners: manual reruns (not automatic) per person and organisation at the rerun, most first.
A person whose account was deleted, or who was not resolved yet, shows as null.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from circleci_ds.derive.facts import default_branch, rerun_indexes
from circleci_ds.derive.people import People, provider_of
from circleci_ds.metrics.window import Window
from circleci_ds.store import StoredTree
from circleci_ds.times import parse_ts

FAILED = frozenset({"failed", "error"})
TOP = 10


@dataclass(frozen=True, slots=True)
class OrganizationActivity:
    organization: str
    runs: int
    failures: int
    reruns: int
    people: int  # distinct people who started runs


@dataclass(frozen=True, slots=True)
class Approver:
    login: str | None
    name: str | None
    organization: str
    approvals: int
    workflows: list[str]


@dataclass(frozen=True, slots=True)
class Rerunner:
    login: str | None
    name: str | None
    organization: str
    reruns: int


@dataclass(frozen=True, slots=True)
class PeopleReport:
    with_identities: bool
    organizations: list[OrganizationActivity]
    approvers: list[Approver]
    rerunners: list[Rerunner]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Tally:
    runs: int = 0
    failures: int = 0
    reruns: int = 0
    starters: set[Any] = field(default_factory=set)


class PeopleTally:
    """Counts kept while the trees stream by: `watch` passes trees through (to the metrics, say),
    so the report reads the store once; `report` gives the result after the stream ended."""

    def __init__(
        self, people: People, project_infos: dict[str, dict[str, Any]], window: Window | None = None
    ) -> None:
        self.people = people
        self.project_infos = project_infos
        self.window = window or Window()
        self.orgs: dict[str, _Tally] = defaultdict(_Tally)
        # Keyed by (user id, organisation at the event): a person who moved counts under each.
        self.approvals: Counter[tuple[str, str]] = Counter()
        self.gated: dict[tuple[str, str], set[str]] = defaultdict(set)
        self.reruns: Counter[tuple[str, str]] = Counter()

    def watch(self, trees: Iterable[StoredTree]) -> Iterator[StoredTree]:
        for tree in trees:
            self.tree(tree)
            yield tree

    def tree(self, tree: StoredTree) -> None:
        default = default_branch(self.project_infos.get(tree.endpoint))
        wanted = self.window.measured_branch(default)
        if wanted is not None and (tree.data.get("vcs") or {}).get("branch") != wanted:
            return
        provider = provider_of(tree.endpoint, tree.data)
        # The facts' rules over the raw tree: reading the stored facts of every tree costs more.
        workflows = tree.data.get("workflows") or []
        indexes = rerun_indexes(workflows)
        for workflow in workflows:
            if self.window.holds(parse_ts(workflow.get("created_at"))):
                self.run(workflow, provider, indexes[workflow.get("id")] > 0)

    def run(self, workflow: dict[str, Any], provider: str | None, rerun: bool) -> None:
        creator = self.people.creator(workflow, provider)
        tally = self.orgs[creator.org_name]
        tally.runs += 1
        tally.failures += workflow.get("status") in FAILED
        tally.reruns += rerun
        started_by = workflow.get("started_by")
        tally.starters.add(started_by)
        if rerun and workflow.get("auto_rerun_number") is None and isinstance(started_by, str):
            self.reruns[started_by, creator.org_name] += 1
        for job in workflow.get("jobs") or []:
            if _approved(job):
                self.approval(job, workflow, provider)

    def approval(self, job: dict[str, Any], workflow: dict[str, Any], provider: str | None) -> None:
        key = (str(job["approved_by"]), self.people.approver(job, workflow, provider).org_name)
        self.approvals[key] += 1
        self.gated[key].add(str(workflow.get("name")))

    def report(self) -> PeopleReport:
        people = self.people
        organizations = [
            OrganizationActivity(org, t.runs, t.failures, t.reruns, len(t.starters))
            for org, t in self.orgs.items()
        ]
        return PeopleReport(
            with_identities=people.identities is not None,
            organizations=sorted(organizations, key=lambda o: (-o.runs, o.organization)),
            approvers=[
                Approver(people.login_of(uid), people.name_of(uid), org, count, sorted(self.gated[uid, org]))
                for (uid, org), count in _most(self.approvals, people)
            ],
            rerunners=[
                Rerunner(people.login_of(uid), people.name_of(uid), org, count)
                for (uid, org), count in _most(self.reruns, people)[:TOP]
            ],
        )


def people_report(
    trees: Iterable[StoredTree],
    project_infos: dict[str, dict[str, Any]],
    people: People,
    window: Window | None = None,
) -> PeopleReport:
    """Streams the trees once; see the module rules."""
    tally = PeopleTally(people, project_infos, window)
    for tree in trees:
        tally.tree(tree)
    return tally.report()


def _approved(job: dict[str, Any]) -> bool:
    return job.get("type") == "approval" and job.get("status") == "success" and bool(job.get("approved_by"))


def _most(counts: Counter[tuple[str, str]], people: People) -> list[tuple[tuple[str, str], int]]:
    """Most first; ties by login (unresolved people last), then id and organisation."""
    return sorted(counts.items(), key=lambda item: (-item[1], people.login_of(item[0][0]) or "~", item[0]))
