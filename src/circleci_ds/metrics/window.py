"""The one home of what a report measures: a window of time and the branch measured.

Rules:
- The window holds runs created in [since, until); a bound that is None is open. Instants are
  epoch seconds, UTC (see circleci_ds.times): ISO text appears only in the outputs.
- The measured branch: `branch` when given, `ALL_BRANCHES` ("*") for every branch, and by default
  each project's default branch; every branch in a project whose default branch is unknown.
- `project` (a native project slug) narrows the window to that project's endpoints; None is all.
The CI, test and people metrics of one report take the same Window.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_BRANCHES = "*"


@dataclass(frozen=True)
class Window:
    since: float | None = None
    until: float | None = None
    branch: str | None = None  # None: each project's default branch; ALL_BRANCHES: every branch
    project: str | None = None  # a native project slug; None: every project

    def holds(self, created: float | None) -> bool:
        """Whether a creation time lies in [since, until); an unknown time only in an open window."""
        if created is None:
            return self.since is None and self.until is None
        return (self.since is None or created >= self.since) and (self.until is None or created < self.until)

    def measured_branch(self, default: str | None) -> str | None:
        """The branch measured in a project whose default branch is `default`; None: every branch."""
        if self.branch == ALL_BRANCHES:
            return None
        return self.branch if self.branch is not None else default

    def describe_branch(self) -> str:
        """The measured branch in words, for the window line atop every output."""
        if self.branch is None:
            return "each project's default branch"
        if self.branch == ALL_BRANCHES:
            return "all branches"
        return f"branch {self.branch}"
