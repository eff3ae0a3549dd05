"""Credits and utilisation of a job, from the usage export, for the enriched and da-ds job documents."""

from __future__ import annotations

from typing import Any

from circleci_ds.store import StoredTree

USAGE_FIELDS = ("credits", "user_credits", "median_cpu_pct", "max_cpu_pct", "median_ram_pct", "max_ram_pct")


def usage_fields(
    tree: StoredTree, workflow: dict[str, Any], job: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """The job's credits (total - user credits) and utilisation percentages; null when unknown."""
    usage = (tree.usage or {}).get((str(workflow.get("id")), str(job.get("name"))))
    return {prefix + name: getattr(usage, name) if usage is not None else None for name in USAGE_FIELDS}
