"""Identities files: people, logins per provider, organisations by the event's date; bad files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from circleci_ds.inputs.identities import (
    MAX_IDENTITIES_BYTES,
    IdentitiesError,
    load_identities,
    organizations_at,
)
from circleci_ds.times import parse_date

GOOD = """\
people:
- name: Alice Developer
  email_domain: Example.COM
  logins:
    github: alice-dev
    gitlab: [alice, adev]
  enrollments:
  - organization: Acme
    end: 2026-10-15
  - organization: Example Inc
    start: 2026-10-16
    end: 2026-11-01T12:00:00Z
  - organization: Foundation
    start: 2026-10-20
- name: Bot
  bot: true
  logins: {gh: renovate-bot}
"""


BAD_DATE = (
    "people:\n- name: x\n  logins:\n    github: a\n"
    "  enrollments:\n  - organization: A\n    start: 2026-13-01\n"
)
TWO_PEOPLE = "people:\n- name: x\n  logins: {github: a}\n- name: y\n  logins: {gh: A}\n"
BACKWARDS = (
    "people:\n- name: x\n  logins: {github: a}\n  enrollments:\n"
    "  - {organization: A, start: 2026-02-01, end: 2026-01-01}\n"
)


def write(tmp_path: Path, text: str, name: str = "identities.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def org_at(path: Path, when: str) -> tuple[str | None, tuple[str, ...]]:
    found = load_identities(path).find("github", "ALICE-dev")
    assert found is not None
    return organizations_at(found[0], parse_date(when))


@pytest.mark.parametrize(
    ("when", "org", "orgs"),
    [
        ("2020-01-01", "Acme", ("Acme",)),  # no start: open before
        ("2026-10-15T23:59:59Z", "Acme", ("Acme",)),  # a date-only end covers its whole day
        ("2026-10-16T00:00:00Z", "Example Inc", ("Example Inc",)),  # a start date is inclusive
        ("2026-10-25", "Foundation", ("Example Inc", "Foundation")),  # overlap: the later start wins
        ("2026-11-01T11:59:59Z", "Foundation", ("Example Inc", "Foundation")),
        ("2026-11-01T12:00:00Z", "Foundation", ("Foundation",)),  # a date-time end is exclusive
        ("2030-01-01", "Foundation", ("Foundation",)),  # no end: open after
    ],
)
def test_organisation_is_the_enrolment_valid_at_the_event_date(
    tmp_path: Path, when: str, org: str, orgs: tuple[str, ...]
) -> None:
    assert org_at(write(tmp_path, GOOD), when) == (org, orgs)


def test_logins_per_provider_name_domain_bot(tmp_path: Path) -> None:
    identities = load_identities(write(tmp_path, GOOD))
    alice, alice_id = identities.find("github", "alice-dev") or (None, None)
    assert alice is not None and alice.name == "Alice Developer" and alice.domain == "example.com"
    assert identities.find("gitlab", "adev") is not None and identities.find("gitlab", "adev")[0] is alice
    assert identities.find("bitbucket", "alice-dev") is None  # logins are per provider
    assert identities.find(None, "alice-dev") is not None  # one person has it under any provider
    bot = identities.find("github", "renovate-bot")
    assert bot is not None and bot[0].bot and bot[0].name == "Bot"
    assert len(identities) == 2
    assert alice_id == alice.uuid  # no uuid given: the id of the person's first login


def test_json_files_and_sortinghat_exports_are_read(tmp_path: Path) -> None:
    export = {
        "uidentities": {
            "u1": {
                "uuid": "u1",
                "profile": {"name": "Carol", "email": "carol@Corp.example", "is_bot": False},
                "identities": [
                    {"id": "i1", "source": "github", "username": "carol-sre", "email": None},
                    {"id": "i2", "source": "git", "username": None, "email": "carol@corp.example"},
                ],
                "enrollments": [
                    {"organization": "Corp", "start": "1900-01-01T00:00:00", "end": "2026-06-01T00:00:00"},
                    {"organization": "NewCo", "start": "2026-06-01T00:00:00", "end": "2100-01-01T00:00:00"},
                ],
            }
        }
    }
    identities = load_identities(write(tmp_path, json.dumps(export, indent=4), "sh.json"))
    carol, identity_id = identities.find("github", "carol-sre") or (None, None)
    assert carol is not None and (carol.uuid, identity_id, carol.domain) == ("u1", "i1", "corp.example")
    assert organizations_at(carol, parse_date("2001-01-01")) == ("Corp", ("Corp",))
    assert organizations_at(carol, parse_date("2099-12-31")) == ("NewCo", ("NewCo",))
    assert organizations_at(carol, None) == (None, ())


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (BAD_DATE, 7, "not a date"),
        ("people:\n- name: x\n  logins: {svn: a}\n", 3, "unknown provider"),
        (TWO_PEOPLE, 5, "belongs to two people"),
        (BACKWARDS, 5, "ends before it starts"),
        ("people:\n- name: x\n  logins: {github: a}\n  colour: red\n", 4, "Extra inputs"),
        ("people:\n- name: x\n  logins: {github: [a\n", 4, "invalid YAML"),
    ],
)  # fmt: skip
def test_bad_files_name_the_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(IdentitiesError, match=message) as info:
        load_identities(path)
    assert str(info.value).startswith(f"{path}:{line}: ")


def test_bad_json_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "people": [\n    {"logins": {"github": "a"},}\n  ]\n}\n', "ids.json")
    with pytest.raises(IdentitiesError, match=rf"^{path}:3: invalid JSON"):
        load_identities(path)


def test_a_bad_identities_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "people:\n- name: x\n  logins: {svn: a}\n")
    db = tmp_path / "none.db"
    result = subprocess.run(
        [sys.executable, "-m", "circleci_ds", "export", "--db", f"sqlite:///{db}", "--kind", "dads",
         "--identities", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}:3: " in lines[0] and "Traceback" not in result.stderr
    assert not db.exists()


def _alias_bomb() -> str:
    """Nine levels of ten aliases each: a billion people if expanded."""
    lines = ['p0: &p0 {name: x, logins: {github: "a"}}']
    lines += [f"p{i}: &p{i} [{', '.join([f'*p{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\npeople: *p9\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_alias_bomb(), r"^{path}: invalid YAML: its aliases expand to more than"),
        ("people: &p [*p]\n", r"^{path}:1: invalid YAML: an alias refers to itself"),
        ("[" * 20_000, r"^{path}: invalid YAML: nested too deeply|^{path}:\d+: invalid YAML"),
    ],
)
def test_identities_yaml_is_read_with_the_fixture_guards(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(IdentitiesError, match=message.format(path=re.escape(str(path)))):
        load_identities(path)


def test_an_identities_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "ids.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_IDENTITIES_BYTES + 1)  # sparse: no disk spent
    with pytest.raises(IdentitiesError, match=r"larger than 262144 KiB"):
        load_identities(path)
