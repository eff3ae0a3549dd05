"""Elasticsearch / OpenSearch index templates for the three export kinds.

Rules (by field name, first match wins): commit subjects and bodies are text (with a keyword
sub-field); times (`*_at`, `*_date`, `metadata__updated_on|timestamp|enriched_on`,
`grimoire_creation_date`) are dates; `*_seconds|_minutes|_hours` and raw epochs are doubles;
`*_bot` and `is_rerun`, `is_default_branch` are booleans; other `is_*` flags (0/1), numbers,
counts, indexes and millisecond durations are longs; everything else (ids, statuses, names,
organisations, URLs) is a keyword. da-ds and raw templates are strict (an unmapped field is
refused); the enriched one maps fields added later through the same rules as dynamic templates.
The raw item's `data` (the API's JSON) is kept but not indexed.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from circleci_ds.documents.dads import FIELDS as DADS_FIELDS


class EsType(StrEnum):
    KEYWORD = "keyword"
    TEXT = "text"
    DATE = "date"
    LONG = "long"
    DOUBLE = "double"
    BOOLEAN = "boolean"
    OBJECT = "object"  # stored, not indexed


class ExportKind(StrEnum):
    raw = "raw"
    enriched = "enriched"
    dads = "dads"


_RULES: tuple[tuple[str, EsType], ...] = (
    (r"commit_(subject|body)", EsType.TEXT),
    (r".*_at|.*_date|metadata__(updated_on|timestamp|enriched_on)", EsType.DATE),
    (r".*_(seconds|minutes|hours)|updated_on|timestamp|.*credits|.*_pct", EsType.DOUBLE),
    (r".*_bot|is_rerun|is_default_branch", EsType.BOOLEAN),
    (
        r"is_.*|.*_number|.*_count|.*_index|(jobs|workflows)_.*|.*parallelism|.*_duration|.*auto_reruns?"
        r"|auto_rerun_number",
        EsType.LONG,
    ),
)
_COMPILED = tuple((re.compile(pattern + r"\Z"), es_type) for pattern, es_type in _RULES)

RAW_FIELDS = (
    "backend_name", "backend_version", "category", "origin", "tag", "uuid", "updated_on", "timestamp",
    "project", "project_slug", "metadata__updated_on", "metadata__timestamp", "data",
)  # fmt: skip
# Enriched fields known today; fields added later are mapped by the dynamic templates.
ENRICHED_FIELDS = (
    "uuid", "type", "origin", "project", "project_slug", "metadata__updated_on", "metadata__timestamp",
    "metadata__enriched_on", "metadata__backend_name", "metadata__backend_version", "repository_url",
    "origin_repository_url", "vcs_provider", "branch", "tag", "commit_sha", "commit_subject", "review_id",
    "review_url", "trigger_type", "trigger_received_at", "author_login", "author_bot", "default_branch",
    "is_default_branch", "pipeline_id", "pipeline_number", "is_circleci_pipeline", "is_circleci_workflow",
    "is_circleci_job", "grimoire_creation_date", "state", "created_at", "updated_at", "errors_count",
    "error_types", "workflow_id", "workflow_name", "workflow_tag", "status", "stopped_at", "duration_seconds",
    "rerun_index", "is_rerun", "auto_rerun_number", "max_auto_reruns", "started_by", "canceled_by",
    "errored_by", "job_id", "job_number", "job_name", "job_type", "queued_at", "started_at",
    "queue_time_seconds", "approval_wait_seconds", "approved_by", "executor_type", "resource_class",
    "parallelism", "contexts", "web_url", "workflow_status", "workflow_created_at", "workflow_rerun_index",
    "author_id", "author_uuid", "author_name", "author_domain", "author_org_name", "author_multi_org_names",
    "started_by_login", "started_by_name", "started_by_org_name", "canceled_by_login", "approved_by_login",
    "approved_by_name", "approved_by_org_name", "credits", "user_credits", "median_cpu_pct", "max_cpu_pct",
    "median_ram_pct", "max_ram_pct",
)  # fmt: skip
PATTERNS = {
    ExportKind.raw: "sds-*-circleci-raw",
    ExportKind.enriched: "sds-*-circleci",
    ExportKind.dads: "sds-*-circleci",
}


def es_type(name: str) -> EsType:
    """The type of a field by its name (see the module rules)."""
    if name == "data":
        return EsType.OBJECT
    return next((t for pattern, t in _COMPILED if pattern.match(name)), EsType.KEYWORD)


def _property(es: EsType) -> dict[str, Any]:
    if es is EsType.TEXT:
        return {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}
    if es is EsType.OBJECT:
        return {"type": "object", "enabled": False}
    if es is EsType.KEYWORD:
        return {"type": "keyword", "ignore_above": 4096}
    return {"type": es.value}


def _dynamic_templates() -> list[dict[str, Any]]:
    """The name rules again, for enriched fields this list does not know yet; strings default to keyword."""
    templates: list[dict[str, Any]] = [
        {f"rule_{i}": {"match_pattern": "regex", "match": pattern.pattern.removesuffix(r"\Z"),
                       "mapping": _property(es)}}
        for i, (pattern, es) in enumerate(_COMPILED)
    ]  # fmt: skip
    templates.append({"strings": {"match_mapping_type": "string", "mapping": _property(EsType.KEYWORD)}})
    templates.append({"decimals": {"match_mapping_type": "double", "mapping": {"type": "double"}}})
    return templates


def fields_of(kind: ExportKind) -> tuple[str, ...]:
    known = {ExportKind.raw: RAW_FIELDS, ExportKind.enriched: ENRICHED_FIELDS, ExportKind.dads: DADS_FIELDS}
    return known[kind]


def mappings(kind: ExportKind) -> dict[str, Any]:
    """The `mappings` of an index for one export kind."""
    body: dict[str, Any] = {
        "dynamic": True if kind is ExportKind.enriched else "strict",
        "properties": {name: _property(es_type(name)) for name in fields_of(kind)},
    }
    if kind is ExportKind.enriched:
        body["dynamic_templates"] = _dynamic_templates()
    return body


def index_template(kind: ExportKind, pattern: str | None = None) -> dict[str, Any]:
    """A composable index template (PUT _index_template/<name>) for indices matching `pattern`."""
    return {
        "index_patterns": [pattern or PATTERNS[kind]],
        "priority": 200,
        "template": {"settings": {"index.mapping.total_fields.limit": 2000}, "mappings": mappings(kind)},
    }


def mapped_type(mapping: dict[str, Any], name: str) -> str | None:
    """The type an index with `mapping` gives a field: its property, else the first dynamic template
    matching its name, else keyword; None when a strict mapping refuses the field."""
    prop = mapping["properties"].get(name)
    if prop is not None:
        return str(prop["type"])
    if mapping["dynamic"] == "strict":
        return None
    for template in mapping.get("dynamic_templates", []):
        (rule,) = template.values()
        if "match" in rule and re.fullmatch(rule["match"], name):
            return str(rule["mapping"]["type"])
    return EsType.KEYWORD.value
