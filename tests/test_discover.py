"""`circleci-ds discover`: the fixture it prints is one `collect` takes as is; clear lines when it cannot."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from circleci_ds.collect.discover import Discovery, Org, fixture_text, note_pipelines, org_id_of, parse_org
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.inputs.fixture import load_fixture
from collect_helpers import assert_matches_truth

TOKEN = "discover-token-0123456789"
ORG_ID = "6f1c2a7e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def sim() -> Iterator[tuple[Simulator, str]]:
    projects = [
        SimProject("gh/acme/api", pipelines=12),
        SimProject("github/acme/web", pipelines=6, private=True),
        SimProject("gh/acme/quiet", pipelines=0),  # no pipeline: not listed
        SimProject("bb/acme/legacy", pipelines=4),  # same name, another VCS organisation
        SimProject(f"circleci/{ORG_ID}/9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", pipelines=5),
    ]
    simulator = Simulator(SimConfig(seed=9, projects=projects, token=TOKEN, page_size=5))
    url = simulator.start_thread()
    try:
        yield simulator, url
    finally:
        simulator.stop_thread()


def cli(url: str, *args: str, token: str | None = TOKEN, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "CIRCLE_TOKEN"}
    environ |= {"CIRCLECI_API_URL": url, **env}
    if token is not None:
        environ["CIRCLE_TOKEN"] = token
    command = [sys.executable, "-m", "circleci_ds", *args]
    return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=300)


def test_discovered_fixture_is_collected_as_is(sim: tuple[Simulator, str], tmp_path: Path) -> None:
    simulator, url = sim
    found = cli(url, "discover", "github/acme")
    assert found.returncode == 0, found.stderr
    fixture = tmp_path / "acme.yaml"
    fixture.write_text(found.stdout)
    settings = load_fixture(fixture, {"CIRCLE_TOKEN": TOKEN})
    assert [e.slug for e in settings.endpoints] == ["gh/acme/api", "gh/acme/web"]
    assert settings.usage_org_ids == (simulator.history.project("gh/acme/api").org_id,)  # type: ignore[union-attr]
    assert "${CIRCLE_TOKEN}" in found.stdout and TOKEN not in found.stdout + found.stderr
    assert found.stderr.count("\n") == 1 and "2 project(s)" in found.stderr
    db = f"sqlite:///{tmp_path / 'acme.db'}"
    collected = cli(url, "collect", str(fixture), "--db", db, "--no-tests")
    assert collected.returncode == 0, collected.stderr
    assert "collected 2/2 endpoint(s)" in collected.stdout + collected.stderr
    assert_matches_truth(db, simulator, ["gh/acme/api", "gh/acme/web"])


def test_without_a_token_public_projects_only(sim: tuple[Simulator, str], tmp_path: Path) -> None:
    simulator, url = sim
    found = cli(url, "discover", "gh/acme", token=None)
    assert found.returncode == 0, found.stderr
    assert "Circle-Token" not in found.stdout and "usage-org-id" not in found.stdout
    fixture = tmp_path / "public.yaml"
    fixture.write_text(found.stdout)
    assert [e.slug for e in load_fixture(fixture, {}).endpoints] == ["gh/acme/api"]  # web is private
    db = f"sqlite:///{tmp_path / 'p.db'}"
    collected = cli(url, "collect", str(fixture), "--db", db, "--no-tests", token=None)
    assert collected.returncode == 0, collected.stderr
    assert_matches_truth(db, simulator, ["gh/acme/api"])


def test_circleci_org_by_id(sim: tuple[Simulator, str]) -> None:
    _, url = sim
    found = cli(url, "discover", f"circleci/{ORG_ID}")
    assert found.returncode == 0, found.stderr
    assert f"circleci/{ORG_ID}/9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d" in found.stdout
    assert f"value: {ORG_ID}" in found.stdout


@pytest.mark.parametrize(
    ("org", "token", "status", "words"),
    [
        ("gh/nobody", TOKEN, 1, "not found, or the token cannot see it"),
        ("gh/acme", "wrong-token-0123456789", 1, "token rejected (HTTP 401)"),
        ("acme", TOKEN, 2, "not an organisation"),
        ("gl/acme", TOKEN, 2, "not an organisation"),
        ("gh/ac%2Fme", TOKEN, 2, "not an organisation name"),
    ],
)
def test_failures_are_one_line(
    sim: tuple[Simulator, str], org: str, token: str, status: int, words: str
) -> None:
    _, url = sim
    found = cli(url, "discover", org, token=token)
    assert found.returncode == status
    assert found.stdout == ""
    assert found.stderr.count("\n") == 1 and words in found.stderr, found.stderr
    assert "Traceback" not in found.stderr and token not in found.stderr


def test_private_only_organisation_without_a_token(tmp_path: Path) -> None:
    simulator = Simulator(SimConfig(seed=2, projects=[SimProject("gh/secret/x", private=True)], token=TOKEN))
    url = simulator.start_thread()
    try:
        found = cli(url, "discover", "gh/secret", token=None)
    finally:
        simulator.stop_thread()
    assert found.returncode == 1
    assert "no pipelines visible to anyone without a token" in found.stderr


def test_page_cap_is_said(sim: tuple[Simulator, str]) -> None:
    _, url = sim
    found = cli(url, "discover", "gh/acme", "--max-pages", "1")
    assert found.returncode == 0
    assert "stopped after 1 pages" in found.stderr


# -- pure rules ---------------------------------------------------------------------------------------


def test_parse_org_and_collaborations() -> None:
    assert parse_org("github/Acme") == Org("gh", "Acme")
    assert parse_org("bitbucket/team/") == Org("bb", "team")
    items = [
        {"id": "1", "slug": "bb/acme", "vcs-type": "bitbucket", "name": "acme"},
        {"id": "2", "slug": "github/ACME", "vcs-type": "github", "name": "ACME"},
        {"id": None, "slug": "gh/acme"},
    ]
    assert org_id_of(Org("gh", "acme"), items) == "2"
    assert org_id_of(Org("bb", "acme"), items) == "1"
    assert org_id_of(Org("gh", "other"), items) is None
    assert org_id_of(Org("circleci", ORG_ID), []) == ORG_ID


def test_hostile_listing_items_are_skipped_and_the_fixture_stays_valid(tmp_path: Path) -> None:
    found = Discovery(Org("gh", "acme"))
    note_pipelines(
        found,
        [
            {"project_slug": "gh/acme/api"},
            {"project_slug": "gh/acme/../../etc"},
            {"project_slug": "gh/acme/x\nname: injected"},
            {"project_slug": 7},
            "not an object",
            {"project_slug": "github/acme/api"},
        ],
    )
    assert found.projects == {"gh/acme/api": 2} and found.skipped == 4
    fixture = tmp_path / "f.yaml"
    fixture.write_text(fixture_text(found, with_token=True))
    assert [e.slug for e in load_fixture(fixture, {"CIRCLE_TOKEN": TOKEN}).endpoints] == ["gh/acme/api"]
