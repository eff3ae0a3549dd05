"""Usage API CSV files -> typed `usage_runs` rows. Pure functions over bytes already downloaded.

Rules (the CSV's shape is documented loosely; see docs/usage-collection.md):
- A file is gzip when it starts with the magic bytes 1f 8b, else it is taken as CSV already decoded.
  Gzip is inflated in steps of at most CHUNK bytes; past `Limits.max_csv_bytes` inflated the file fails
  (a gzip bomb never inflates at once), as does a line longer than `Limits.max_line_bytes`.
- Columns are found by name, case-insensitively; extra columns are ignored, missing optional ones are
  null. ORGANIZATION_ID and JOB_ID are required: a header without them fails the file.
- Fields are RFC 4180 quoted or backslash-escaped (both are read); a field that is exactly `\\N`,
  quoted or not, is null; a field longer than the csv module's limit (128 KiB) fails the file, as does
  a row whose field count differs from the header's.
- Booleans: True/False, Y/N, yes/no, t/f, 1/0, any case. Numbers must be finite; an unreadable number
  fails the file (the data is not what it claims to be). Timestamps without a zone are UTC; an
  unreadable one is null.
- Ids longer than MAX_ID characters fail the file (they key the rows); texts are cut to their
  column's size, NUL characters replaced.
Any failure raises UsageFileError with one line naming the file's row; the caller fails that export.
"""

from __future__ import annotations

import csv
import math
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from circleci_ds.times import parse_ts

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 256 * 1024  # inflated bytes produced at once, at most
MAX_ID = 64
_NULL = "\ue000"  # stands for a `\N` field while the csv module reads the line
_NULLS = ("\\N", '"\\N"')  # a null field, plain or quoted
_MARKED = f",{_NULL},"
_TRUE = frozenset({"true", "y", "yes", "t", "1"})
_FALSE = frozenset({"false", "n", "no", "f", "0"})
_INT32 = 2**31
_INT64 = 2**63


class UsageFileError(ValueError):
    """A usage file that cannot be read; the message is one line for the user."""


@dataclass(frozen=True)
class Limits:
    max_csv_bytes: int = 4 * 1024**3  # a file, inflated
    max_line_bytes: int = 1024**2  # one physical line


# -- values -------------------------------------------------------------------------------------------


def _text(limit: int) -> Callable[[str], str]:
    def convert(value: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL
        return value[:limit]

    return convert


def _ident(value: str) -> str:
    if len(value) > MAX_ID or "\x00" in value:
        raise ValueError(f"an id of {len(value)} characters")
    return value


def _number(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("a number out of range")
    return number


def _integer(bound: int) -> Callable[[str], int]:
    def convert(value: str) -> int:
        number = int(value) if value.lstrip("-").isdigit() else int(float(value))
        if not -bound <= number < bound:
            raise ValueError("an integer out of range")
        return number

    return convert


def _boolean(value: str) -> int:
    folded = value.strip().lower()
    if folded in _TRUE:
        return 1
    if folded in _FALSE:
        return 0
    raise ValueError(f"not a boolean: {value[:20]!r}")


def _time(value: str) -> float | None:
    return parse_ts(value.strip())


def day_of(value: str) -> float | None:
    """Epoch of a `YYYY-MM-DD` date's UTC midnight (a timestamp's date part is enough); None if unreadable."""
    text = value.strip()[:10]
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        return None
    try:
        day = datetime.fromisoformat(text)
    except ValueError:
        return None
    return day.replace(tzinfo=UTC).timestamp()


def midnight(epoch: float) -> float:
    return epoch - epoch % 86400.0


# CSV column -> (usage_runs column, converter); the order is the column order of `usage_runs`.
COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "ORGANIZATION_ID": ("org_id", _ident),
    "JOB_ID": ("job_run_id", _ident),
    "ORGANIZATION_NAME": ("org_name", _text(300)),
    "PROJECT_ID": ("project_id", _ident),
    "PROJECT_NAME": ("project_name", _text(300)),
    "VCS_NAME": ("vcs_name", _text(40)),
    "VCS_BRANCH": ("branch", _text(1000)),
    "PIPELINE_ID": ("pipeline_id", _ident),
    "PIPELINE_NUMBER": ("pipeline_number", _integer(_INT64)),
    "WORKFLOW_ID": ("workflow_id", _ident),
    "WORKFLOW_NAME": ("workflow_name", _text(1000)),
    "JOB_NAME": ("job_name", _text(1000)),
    "JOB_RUN_NUMBER": ("job_number", _integer(_INT64)),
    "JOB_RUN_QUEUED_AT": ("queued_at", _time),
    "JOB_RUN_STARTED_AT": ("started_at", _time),
    "JOB_RUN_STOPPED_AT": ("stopped_at", _time),
    "JOB_RUN_DATE": ("run_day", day_of),
    "JOB_BUILD_STATUS": ("status", _text(40)),
    "RESOURCE_CLASS": ("resource_class", _text(100)),
    "EXECUTOR": ("executor", _text(40)),
    "PARALLELISM": ("parallelism", _integer(_INT32)),
    "JOB_RUN_SECONDS": ("run_seconds", _number),
    "MEDIAN_CPU_UTILIZATION_PCT": ("median_cpu_pct", _number),
    "MAX_CPU_UTILIZATION_PCT": ("max_cpu_pct", _number),
    "MEDIAN_RAM_UTILIZATION_PCT": ("median_ram_pct", _number),
    "MAX_RAM_UTILIZATION_PCT": ("max_ram_pct", _number),
    "TOTAL_CREDITS": ("total_credits", _number),
    "USER_CREDITS": ("user_credits", _number),
    "COMPUTE_CREDITS": ("compute_credits", _number),
    "DLC_CREDITS": ("dlc_credits", _number),
    "NETWORK_CREDITS": ("network_credits", _number),
    "STORAGE_CREDITS": ("storage_credits", _number),
    "IS_WORKFLOW_SUCCESSFUL": ("is_workflow_successful", _boolean),
}
REQUIRED = ("ORGANIZATION_ID", "JOB_ID")
ROW_KEYS = (*(field for field, _ in COLUMNS.values()), "project_slug", "export_id")


# -- which fixture endpoint a CSV project is ----------------------------------------------------------

_VCS_PREFIX = {"github": "gh", "bitbucket": "bb"}  # GitHub App and GitLab projects: by project id only


@dataclass(frozen=True)
class ProjectMap:
    """CSV project -> fixture endpoint: by PROJECT_ID against the stored project info, else by
    `<vcs>/<ORGANIZATION_NAME>/<PROJECT_NAME>` (GitHub and Bitbucket OAuth projects), case-insensitively."""

    by_id: dict[str, str]  # project id -> endpoint slug
    by_name: dict[str, str]  # lower-cased `gh/org/repo` -> endpoint slug

    @classmethod
    def build(cls, endpoints: Iterable[str], project_ids: dict[str, str]) -> ProjectMap:
        """`endpoints`: canonical slugs; `project_ids`: endpoint slug -> project id (GET /project)."""
        return cls({pid: slug for slug, pid in project_ids.items()}, {s.lower(): s for s in endpoints})

    def slug(self, project_id: str | None, vcs: str | None, org: str | None, name: str | None) -> str | None:
        if project_id is not None and project_id in self.by_id:
            return self.by_id[project_id]
        prefix = _VCS_PREFIX.get((vcs or "").strip().lower())
        if prefix is None or not org or not name:
            return None
        return self.by_name.get(f"{prefix}/{org}/{name}".lower())


# -- files ----------------------------------------------------------------------------------------------


def inflate(data: bytes, limits: Limits) -> Iterator[bytes]:
    """The file's bytes, inflated in bounded steps when it is gzip (by its magic bytes)."""
    if not data.startswith(GZIP_MAGIC):
        if len(data) > limits.max_csv_bytes:
            raise UsageFileError(f"larger than {limits.max_csv_bytes} bytes")
        yield data
        return
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total = 0
    rest = data
    try:
        while rest:
            out = inflater.decompress(rest, CHUNK)
            total += len(out)
            if total > limits.max_csv_bytes:
                raise UsageFileError(f"inflates past {limits.max_csv_bytes} bytes (a gzip bomb?)")
            if out:
                yield out
            rest = inflater.unconsumed_tail
            if inflater.eof:
                rest = inflater.unused_data
                if rest and not rest.startswith(GZIP_MAGIC):
                    raise UsageFileError("data after the end of the gzip stream")
                if rest:
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # another gzip member
        if not inflater.eof:
            raise UsageFileError("gzip stream cut short")
    except zlib.error as exc:
        raise UsageFileError(f"not readable gzip ({exc})") from None


def lines(chunks: Iterable[bytes], limits: Limits) -> Iterator[str]:
    """Physical lines (ending in `\\n` but the last), UTF-8 with bad bytes replaced, `\\N` fields marked."""
    decoder = _utf8()
    pending = ""
    for chunk in chunks:
        text = decoder.decode(chunk)
        if _NULL in text:
            text = text.replace(_NULL, "\ufffd")  # the marker cannot come from the file
        pending += text
        parts = pending.split("\n")
        pending = parts.pop()
        if len(pending) > limits.max_line_bytes:
            raise UsageFileError(f"a line longer than {limits.max_line_bytes} bytes")
        for part in parts:
            yield _mark_nulls(part + "\n", limits)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield _mark_nulls(pending, limits)


def _utf8() -> Any:
    import codecs

    return codecs.getincrementaldecoder("utf-8")("replace")


def _mark_nulls(line: str, limits: Limits) -> str:
    """The line with each whole `\\N` field (quoted or not) replaced by the null marker."""
    if len(line) > limits.max_line_bytes:
        raise UsageFileError(f"a line longer than {limits.max_line_bytes} bytes")
    if "\\N" not in line:
        return line
    for null in _NULLS:  # plain string operations: a regular expression costs several times more
        inner = f",{null},"
        if inner in line:
            line = line.replace(inner, _MARKED).replace(inner, _MARKED)  # twice: `,\\N,\\N,` overlaps
        if line.startswith(null + ","):
            line = _NULL + line[len(null) :]
        for end in ("\r\n", "\n", ""):
            if line.endswith("," + null + end):
                line = line[: len(line) - len(null) - len(end)] + _NULL + end
                break
    return line


def parse_file(
    data: bytes, export_id: str, projects: ProjectMap, limits: Limits | None = None
) -> Iterator[dict[str, Any]]:
    """Typed `usage_runs` rows of one downloaded file; UsageFileError on anything unreadable."""
    limits = limits or Limits()
    reader = csv.reader(lines(inflate(data, limits), limits), escapechar="\\", strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return  # an empty file: no rows
        plan = _plan(header)
        width = len(header)
        for row in reader:
            if not row or row == [""]:
                continue
            if len(row) != width:
                raise UsageFileError(f"row {reader.line_num}: {len(row)} fields, the header has {width}")
            yield _typed(row, plan, reader.line_num, export_id, projects)
    except csv.Error as exc:
        raise UsageFileError(f"line {reader.line_num}: not readable CSV ({exc})") from None


Plan = list[tuple[int, str, Callable[[str], Any]]]


def _plan(header: list[str]) -> Plan:
    names = {name.strip().strip("\ufeff").upper(): i for i, name in enumerate(header)}
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise UsageFileError(f"the header lacks {', '.join(missing)} (is this a usage export?)")
    return [(names[name], field, conv) for name, (field, conv) in COLUMNS.items() if name in names]


def _typed(row: list[str], plan: Plan, line: int, export_id: str, projects: ProjectMap) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    for index, field, convert in plan:
        value = row[index]
        if value == _NULL or value == "":
            continue
        if _NULL in value:
            value = value.replace(_NULL, "\\N")  # a `\N` inside a longer quoted field is text
        try:
            out[field] = convert(value)
        except ValueError as exc:
            raise UsageFileError(f"line {line}: {field}: {exc}") from None
    if out["org_id"] is None or out["job_run_id"] is None:
        raise UsageFileError(f"line {line}: no ORGANIZATION_ID or JOB_ID")
    if out["run_day"] is None and out["started_at"] is not None:
        out["run_day"] = midnight(out["started_at"])
    out["project_slug"] = projects.slug(
        out["project_id"], out["vcs_name"], out["org_name"], out["project_name"]
    )
    out["export_id"] = export_id
    return out
