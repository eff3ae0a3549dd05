"""da-ds fixture file -> typed settings.

A fixture names a native project and lists data sources; we read the `circleci` one(s)
and ignore the others with a note. Errors name the file and the line of the offending field.

Rules for untrusted input:
- A fixture file is at most MAX_FIXTURE_BYTES; its YAML is parsed with circleci_ds.inputs.yamlfile's guards
  (aliases expand to at most 100,000 nodes and never refer to themselves: a "billion laughs" file is
  refused at once, before anything is built from it).
- An endpoint is `vcs/org/repo`: three non-empty segments of letters, digits, `.`, `_` and `-`,
  none of them `.` or `..` (percent signs, spaces, control characters and further slashes are
  refused), so an endpoint can never become another API path.
- A token is printable ASCII only: a newline, another control character or non-ASCII text in it is
  a fixture error, whose message never shows the token.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from circleci_ds.inputs.yamlfile import describe, line_of, parse, read_text


class FixtureError(Exception):
    """A fixture that cannot be used; the message is meant for the user as is."""


VCS_ALIASES = {"gh": "gh", "github": "gh", "bb": "bb", "bitbucket": "bb", "circleci": "circleci"}
MAX_FIXTURE_BYTES = 1 << 20
_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TOKEN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # what an HTTP header can carry
_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def canonical_slug(written: str) -> str:
    """`github/org/repo` -> `gh/org/repo`; raises ValueError when it is not a project slug."""
    parts = written.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"not a project slug (vcs/org/repo): {written!r}")
    vcs = VCS_ALIASES.get(parts[0].lower())
    if vcs is None:
        raise ValueError(
            f"unknown VCS {parts[0]!r} in {written!r} (expected gh, github, bb, bitbucket or circleci)"
        )
    for part in parts[1:]:
        if not _SEGMENT.match(part):
            raise ValueError(
                f"not a project slug (vcs/org/repo): {written!r}: segment {part!r} may hold only "
                "letters, digits, '.', '_' and '-'"
            )
        if set(part) == {"."}:
            raise ValueError(f"not a project slug (vcs/org/repo): {written!r}: a segment cannot be {part!r}")
    return f"{vcs}/{parts[1]}/{parts[2]}"


class _Endpoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        canonical_slug(value)
        return value


class _Project(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = ""
    endpoints: list[_Endpoint]


class _ConfigEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    value: str | None = None


class _DataSource(BaseModel):
    model_config = ConfigDict(extra="allow")
    slug: str
    projects: list[_Project] = []
    config: list[_ConfigEntry] = []


class _Native(BaseModel):
    model_config = ConfigDict(extra="allow")
    slug: str


class _Fixture(BaseModel):
    model_config = ConfigDict(extra="allow")
    native: _Native
    data_sources: list[dict[str, Any]]


@dataclass(frozen=True)
class Endpoint:
    """One CircleCI project to collect."""

    slug: str  # canonical, e.g. gh/StackStorm/st2
    written: str  # as the user wrote it, for messages
    native: str  # the fixture's native slug
    project: str  # the fixture's project name


@dataclass(frozen=True)
class Settings:
    path: Path
    native_slug: str
    endpoints: tuple[Endpoint, ...]
    token: str | None = field(repr=False)
    token_source: str  # "fixture", "environment" or "none"; never the token itself
    notes: tuple[str, ...] = ()
    collect_tests: bool = True  # config entry `collect-tests: false` turns test results off
    usage_org_ids: tuple[str, ...] = ()  # config entries `usage-org-id`: whose Usage API exports to read


def load_fixture(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate a da-ds fixture; raise FixtureError with one clear message."""
    path = Path(path)
    environ = os.environ if environ is None else environ
    raw, root = _parse(path)
    try:
        fixture = _Fixture.model_validate(raw)
    except ValidationError as exc:
        raise FixtureError(describe(path, root, exc, ())) from None
    sources = [(i, s) for i, s in enumerate(fixture.data_sources) if isinstance(s, dict)]
    circle = [(i, s) for i, s in sources if str(s.get("slug", "")).lower() == "circleci"]
    notes = tuple(
        f"ignoring data source {s.get('slug')!r} (only circleci is collected)"
        for _, s in sources
        if str(s.get("slug", "")).lower() != "circleci"
    )
    if not circle:
        raise FixtureError(f"{path}: no data source with `slug: circleci` under `data_sources`")
    endpoints: list[Endpoint] = []
    token_values: list[tuple[str, str]] = []  # (value, ":line")
    tests_values: list[str] = []
    org_values: list[str] = []
    seen: dict[str, str] = {}
    for index, source_raw in circle:
        try:
            source = _DataSource.model_validate(source_raw)
        except ValidationError as exc:
            raise FixtureError(describe(path, root, exc, ("data_sources", index))) from None
        token_values += [
            (c.value or "", line_of(root, ("data_sources", index, "config", c_index, "value")))
            for c_index, c in enumerate(source.config)
            if c.name.lower() == "circle-token"
        ]
        tests_values += [c.value or "" for c in source.config if c.name.lower() == "collect-tests"]
        org_values += [c.value or "" for c in source.config if c.name.lower() == "usage-org-id"]
        for p_index, project in enumerate(source.projects):
            for e_index, ep in enumerate(project.endpoints):
                slug = canonical_slug(ep.name)
                key = slug.lower()
                if key in seen:
                    where = line_of(root, ("data_sources", index, "projects", p_index, "endpoints", e_index))
                    raise FixtureError(
                        f"{path}{where}: duplicate endpoint {ep.name!r} (same project as {seen[key]!r})"
                    )
                seen[key] = ep.name
                endpoints.append(Endpoint(slug, ep.name, fixture.native.slug, project.name))
    if not endpoints:
        raise FixtureError(f"{path}: the circleci data source lists no endpoints")
    token, source_name = _resolve_token(path, token_values, environ)
    settings = Settings(path, fixture.native.slug, tuple(endpoints), token, source_name, notes)
    return replace(
        settings, collect_tests=_collect_tests(path, tests_values), usage_org_ids=_org_ids(path, org_values)
    )


_ORG_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def _org_ids(path: Path, values: list[str]) -> tuple[str, ...]:
    """The `usage-org-id` entries: organisation ids (UUIDs), several separated by commas."""
    ids: list[str] = []
    for value in values:
        for part in value.split(","):
            org_id = part.strip()
            if not _ORG_ID.match(org_id):
                shown = org_id[:40]
                raise FixtureError(f"{path}: usage-org-id must be an organisation id (a UUID), not {shown!r}")
            if org_id not in ids:
                ids.append(org_id)
    return tuple(ids)


def _collect_tests(path: Path, values: list[str]) -> bool:
    """The `collect-tests` config entry: true unless it says false (yes/no, on/off, 1/0 too)."""
    flags = {"true": True, "yes": True, "on": True, "1": True}
    flags |= {"false": False, "no": False, "off": False, "0": False}
    for value in values:
        if value.strip().lower() not in flags:
            raise FixtureError(f"{path}: collect-tests must be true or false, not {value.strip()[:40]!r}")
    return all(flags[v.strip().lower()] for v in values)


def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    raw, root = parse(path, read_text(path, MAX_FIXTURE_BYTES, FixtureError, "fixture"), FixtureError)
    if not isinstance(raw, dict):
        raise FixtureError(f"{path}: the fixture must be a mapping with `native` and `data_sources`")
    return raw, root


def _resolve_token(
    path: Path, values: list[tuple[str, str]], environ: Mapping[str, str]
) -> tuple[str | None, str]:
    if len(values) > 1:
        raise FixtureError(f"{path}: more than one Circle-Token entry in the circleci data source config")
    if values:
        value, where = values[0][0].strip(), values[0][1]
        ref = _ENV_REF.match(value)
        if ref:
            name = ref.group(1)
            if not environ.get(name):
                raise FixtureError(f"{path}{where}: Circle-Token refers to ${{{name}}}, which is not set")
            return _checked_token(path, environ[name], f"{where}: Circle-Token (${{{name}}})"), "fixture"
        if value:
            return _checked_token(path, value, f"{where}: Circle-Token"), "fixture"
    if environ.get("CIRCLE_TOKEN"):
        return _checked_token(path, environ["CIRCLE_TOKEN"], ": CIRCLE_TOKEN"), "environment"
    return None, "none"


def _checked_token(path: Path, token: str, what: str) -> str:
    """The token, if it can travel in an HTTP header; never quoted in the error."""
    if not _TOKEN.fullmatch(token):
        raise FixtureError(
            f"{path}{what} holds a newline, another control character or non-ASCII text, which no token has"
        )
    return token


def load_config_value(path: Path | str, name: str) -> str | None:
    """The value of a `config` entry (e.g. `deploy-pattern`) of the circleci data source, if any."""
    path = Path(path)
    raw, _ = _parse(path)
    sources = raw.get("data_sources") if isinstance(raw.get("data_sources"), list) else []
    for source in sources:
        if isinstance(source, dict) and str(source.get("slug", "")).lower() == "circleci":
            for entry in source.get("config") or []:
                if isinstance(entry, dict) and str(entry.get("name", "")).lower() == name.lower():
                    value = entry.get("value")
                    return str(value) if value is not None else None
    return None
