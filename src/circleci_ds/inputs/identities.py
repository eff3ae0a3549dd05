"""Identities file (YAML or JSON): people, their logins, and their organisations over time.

Rules:
- A person has logins per provider (`github`, `gitlab`, `bitbucket`; `gh` and `bb` are aliases),
  and optionally a name, an email domain, a bot flag, a uuid and organisation enrolments.
  A login (per provider, case-insensitive) belongs to one person only.
- An enrolment covers `start <= t < end`: a missing start or end leaves that side open; a
  date-only end covers that whole day, a date-time end is the first moment no longer covered.
  Times without a zone are UTC.
- The organisation of a document is the enrolment valid at the event's date, not the latest one:
  of several valid ones, the one that started last; `multi_org_names` lists every valid one.
- A SortingHat export (`uidentities`) is read as is: profile name, email domain and bot flag,
  identities' `source` / `username` as logins, enrolments with 1900-01-01 / 2100-01-01 as open ends.
- A bad file stops with one line naming the file and the line (exit status 2). The file is read with
  circleci_ds.inputs.yamlfile's guards: at most MAX_IDENTITIES_BYTES, aliases expanding to at most MAX_NODES.
- A JSON file (a SortingHat export runs to tens of MiB) is parsed with `json` alone: the YAML node tree
  that gives line numbers is built only for the error being reported. JSON nested too deeply to
  parse is a bad file like any other.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from circleci_ds.ids import uuid as sha1_id
from circleci_ds.inputs.yamlfile import describe, line_of, parse, read_text
from circleci_ds.times import epoch_of, parse_moment

PROVIDER_ALIASES = {"gh": "github", "github": "github", "bb": "bitbucket", "bitbucket": "bitbucket",
                    "gitlab": "gitlab"}
MAX_IDENTITIES_BYTES = 256 << 20  # SortingHat exports of large organisations run to tens of MiB
MAX_NODES = 20_000_000  # what the aliases of such a file may expand to
Root = Callable[[], yaml.Node | None]  # the node tree for line numbers, built when first asked for
_OPEN_START, _OPEN_END = datetime(1900, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)


class _Loader(yaml.SafeLoader):
    """Dates stay text until validated, so a bad one is reported with its line."""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class IdentitiesError(Exception):
    """An identities file that cannot be used; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Enrollment:
    organization: str
    start: float | None  # epoch seconds, inclusive; None: open
    end: float | None  # epoch seconds, exclusive; None: open

    def covers(self, at: float) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


@dataclass(frozen=True, slots=True)
class Identity:
    uuid: str
    name: str | None
    domain: str | None
    bot: bool
    enrollments: tuple[Enrollment, ...]


def organizations_at(identity: Identity, at: float | None) -> tuple[str | None, tuple[str, ...]]:
    """(organisation, every organisation) of the enrolments valid at epoch `at`."""
    if at is None:
        return None, ()
    valid = [e for e in identity.enrollments if e.covers(at)]
    if not valid:
        return None, ()
    by_start = sorted(valid, key=lambda e: -1e18 if e.start is None else e.start)  # stable: file order
    names = tuple(dict.fromkeys(e.organization for e in by_start))
    return by_start[-1].organization, names


class Identities:
    """People by (provider, login)."""

    def __init__(self, entries: dict[tuple[str, str], tuple[Identity, str]]) -> None:
        self._entries = entries
        self._by_login: dict[str, list[tuple[Identity, str]]] = {}
        for (_, login), found in entries.items():
            self._by_login.setdefault(login, []).append(found)

    def __len__(self) -> int:
        return len({id(identity) for identity, _ in self._entries.values()})

    def find(self, provider: str | None, login: str | None) -> tuple[Identity, str] | None:
        """(identity, identity id) of a login; without a provider, only when one person has it."""
        if not login:
            return None
        key = login.lower()
        if provider is not None:
            return self._entries.get((PROVIDER_ALIASES.get(provider, provider), key))
        matches = self._by_login.get(key, [])
        people = {m[0].uuid for m in matches}
        return matches[0] if len(people) == 1 else None


# -- the file format ------------------------------------------------------------------------------


class _Span(BaseModel):
    """An enrolment as both formats write it."""

    organization: str = Field(min_length=1)
    start: Any = None
    end: Any = None

    @field_validator("start", "end", mode="before")
    @classmethod
    def _when(cls, value: Any) -> datetime | date | None:
        return parse_moment(value)


class _Enrollment(_Span):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _ordered(self) -> _Enrollment:
        start, end = epoch_of(self.start), epoch_of(self.end, day_end=True)
        if start is not None and end is not None and end <= start:
            raise ValueError("the enrolment ends before it starts")
        return self


class _Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uuid: str | None = Field(default=None, min_length=1)
    name: str | None = None
    email_domain: str | None = None
    bot: bool = False
    logins: dict[str, list[str] | str]
    enrollments: list[_Enrollment] = []

    @field_validator("logins")
    @classmethod
    def _providers(cls, value: dict[str, list[str] | str]) -> dict[str, list[str] | str]:
        for provider, logins in value.items():
            if provider.lower() not in PROVIDER_ALIASES:
                raise ValueError(f"unknown provider {provider!r} (expected github, gitlab or bitbucket)")
            if not all(isinstance(x, str) and x.strip() for x in _as_list(logins)):
                raise ValueError(f"logins of {provider!r} must be non-empty strings")
        if not value:
            raise ValueError("a person needs at least one login")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    people: list[_Person]


class _ShProfile(BaseModel):
    name: str | None = None
    email: str | None = None
    is_bot: bool | None = False


class _ShIdentity(BaseModel):
    id: str | None = None
    source: str
    username: str | None = None


class _ShUnique(BaseModel):
    uuid: str = Field(min_length=1)
    profile: _ShProfile | None = None
    identities: list[_ShIdentity] = []
    enrollments: list[_Span] = []


class _ShExport(BaseModel):
    uidentities: dict[str, _ShUnique]


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def load_identities(path: Path | str) -> Identities:
    """Read and validate an identities file; IdentitiesError with `file:line: problem` otherwise."""
    path = Path(path)
    raw, root = _parse(path)
    if isinstance(raw, dict) and "uidentities" in raw:
        return _from_sortinghat(path, raw, root)
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise IdentitiesError(describe(path, root(), exc, ())) from None
    entries: dict[tuple[str, str], tuple[Identity, str]] = {}
    for index, person in enumerate(parsed.people):
        logins = [
            (PROVIDER_ALIASES[p.lower()], login.strip())
            for p, value in person.logins.items()
            for login in _as_list(value)
        ]
        first_id = sha1_id(*logins[0])
        identity = Identity(
            uuid=person.uuid or first_id,
            name=person.name,
            domain=_domain(person.email_domain),
            bot=person.bot,
            enrollments=tuple(_enrollment(e.organization, e.start, e.end) for e in person.enrollments),
        )
        for provider, login in logins:
            _add(entries, path, root, ("people", index, "logins"), provider, login, identity, None)
    return Identities(entries)


def _from_sortinghat(path: Path, raw: dict[str, Any], root: Root) -> Identities:
    try:
        export = _ShExport.model_validate(raw)
    except ValidationError as exc:
        raise IdentitiesError(describe(path, root(), exc, ())) from None
    entries: dict[tuple[str, str], tuple[Identity, str]] = {}
    for key, unique in export.uidentities.items():
        profile = unique.profile or _ShProfile()
        email = profile.email
        identity = Identity(
            uuid=unique.uuid,
            name=profile.name,
            domain=_domain(email.rpartition("@")[2] if email and "@" in email else None),
            bot=bool(profile.is_bot),
            enrollments=tuple(
                _enrollment(e.organization, _open(e.start, _OPEN_START), _open(e.end, _OPEN_END))
                for e in unique.enrollments
            ),
        )
        for ident in unique.identities:
            provider = PROVIDER_ALIASES.get(ident.source.lower())
            if provider is None or not ident.username:
                continue  # git, email and other sources carry no CI login
            identity_id = ident.id or sha1_id(provider, ident.username)
            where = ("uidentities", key, "identities")
            _add(entries, path, root, where, provider, ident.username, identity, identity_id)
    return Identities(entries)


def _open(value: datetime | date | None, bound: datetime) -> datetime | date | None:
    """SortingHat writes open ends as 1900-01-01 / 2100-01-01."""
    if isinstance(value, datetime) and (value if value.tzinfo else value.replace(tzinfo=UTC)) == bound:
        return None
    return value


def _add(
    entries: dict[tuple[str, str], tuple[Identity, str]],
    path: Path,
    root: Root,
    where: tuple[Any, ...],
    provider: str,
    login: str,
    identity: Identity,
    identity_id: str | None,
) -> None:
    key = (provider, login.lower())
    if key in entries and entries[key][0] is not identity:
        where_line = line_of(root(), where)
        raise IdentitiesError(f"{path}{where_line}: {provider} login {login!r} belongs to two people")
    entries[key] = (identity, identity_id or sha1_id(provider, login))


def _enrollment(organization: str, start: datetime | date | None, end: datetime | date | None) -> Enrollment:
    return Enrollment(organization, epoch_of(start), epoch_of(end, day_end=True))


def _domain(value: str | None) -> str | None:
    return value.strip().lower() or None if value else None


def _parse(path: Path) -> tuple[Any, Root]:
    """The file's data and its YAML node tree (for line numbers); JSON files are parsed as JSON, their
    node tree built only if an error needs a line."""
    text = read_text(path, MAX_IDENTITIES_BYTES, IdentitiesError, "identities")
    root: Root
    if path.suffix.lower() == ".json":
        raw, root = _parse_json(path, text), functools.cache(lambda: _nodes(text))
    else:
        raw, node = parse(path, text, IdentitiesError, loader=_Loader, max_nodes=MAX_NODES)
        root = lambda: node  # noqa: E731 - built already: the alias check needs it
    if not isinstance(raw, dict):
        raise IdentitiesError(f"{path}: expected a mapping with `people` (or a SortingHat export)")
    return raw, root


def _nodes(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
    except (yaml.YAMLError, RecursionError):
        return None  # valid JSON that YAML cannot read: messages go without a line


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise IdentitiesError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except RecursionError:
        raise IdentitiesError(f"{path}: invalid JSON: nested too deeply") from None
