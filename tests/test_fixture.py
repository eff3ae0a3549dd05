"""Fixture loading: the da-ds format as is, token resolution, and every bad-fixture case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from circleci_ds.inputs.fixture import FixtureError, canonical_slug, load_fixture

GOOD = """\
native:
  slug: StackStorm
data_sources:
- slug: git
  projects:
  - name: StackStorm
    endpoints:
    - name: https://github.com/StackStorm/st2
- slug: circleci
  projects:
  - name: StackStorm
    endpoints:
    - name: github/StackStorm/stackstorm-ha
    - name: bb/acme/thing
    - name: circleci/3e8c2a7c-1111-4f5e-9d7b-000000000001/5a1b2c3d-2222-4e5f-8a9b-000000000002
  config:
    - name: Circle-Token
      value: <user-generated token>
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fixture.yaml"
    path.write_text(text)
    return path


def test_da_ds_fixture_is_accepted_as_is(tmp_path: Path) -> None:
    settings = load_fixture(write(tmp_path, GOOD), environ={})
    assert settings.native_slug == "StackStorm"
    assert [e.slug for e in settings.endpoints] == [
        "gh/StackStorm/stackstorm-ha",
        "bb/acme/thing",
        "circleci/3e8c2a7c-1111-4f5e-9d7b-000000000001/5a1b2c3d-2222-4e5f-8a9b-000000000002",
    ]
    assert settings.endpoints[0].written == "github/StackStorm/stackstorm-ha"
    assert settings.endpoints[0].native == "StackStorm"
    assert settings.token == "<user-generated token>"
    assert settings.token_source == "fixture"
    assert settings.notes == ("ignoring data source 'git' (only circleci is collected)",)
    assert "user-generated" not in repr(settings)


@pytest.mark.parametrize(
    ("written", "canonical"),
    [
        ("github/a/b", "gh/a/b"),
        ("gh/a/b", "gh/a/b"),
        ("GitHub/a/b", "gh/a/b"),
        ("bitbucket/a/b", "bb/a/b"),
        ("bb/a/b", "bb/a/b"),
        ("/gh/a/b/", "gh/a/b"),
        ("circleci/org-id/project-id", "circleci/org-id/project-id"),
    ],
)
def test_slug_canonical_forms(written: str, canonical: str) -> None:
    assert canonical_slug(written) == canonical


def test_token_from_environment_reference(tmp_path: Path) -> None:
    text = GOOD.replace("<user-generated token>", "${MY_CIRCLE_TOKEN}")
    settings = load_fixture(write(tmp_path, text), environ={"MY_CIRCLE_TOKEN": "s3cr3t"})
    assert settings.token == "s3cr3t"


def test_token_falls_back_to_circle_token_then_none(tmp_path: Path) -> None:
    text = GOOD.split("  config:")[0]
    path = write(tmp_path, text)
    assert load_fixture(path, environ={"CIRCLE_TOKEN": "from-env"}).token == "from-env"
    anonymous = load_fixture(path, environ={})
    assert anonymous.token is None
    assert anonymous.token_source == "none"


BAD = {
    "yaml syntax": ("native:\n  slug: [unclosed\n", r"fixture.yaml:\d+: invalid YAML"),
    "no native slug": ("native: {}\ndata_sources: []\n", r"fixture.yaml:1: `native.slug` is required"),
    "no native": ("data_sources: []\n", r"fixture.yaml:1: `native` is required"),
    "not a mapping": ("- a\n- b\n", r"must be a mapping"),
    "no circleci source": (
        "native:\n  slug: x\ndata_sources:\n- slug: git\n  projects: []\n",
        r"no data source with `slug: circleci`",
    ),
    "endpoint not a slug": (
        GOOD.replace("bb/acme/thing", "https://circleci.com/gh/acme/thing"),
        r"fixture.yaml:14: `data_sources.1.projects.0.endpoints.1.name` not a project slug",
    ),
    "unknown vcs": (GOOD.replace("bb/acme/thing", "gl/acme/thing"), r"fixture.yaml:14: .*unknown VCS 'gl'"),
    "duplicate endpoint": (
        GOOD.replace("bb/acme/thing", "gh/StackStorm/stackstorm-ha"),
        r"fixture.yaml:14: duplicate endpoint 'gh/StackStorm/stackstorm-ha'",
    ),
    "endpoint without name": (
        GOOD.replace("- name: bb/acme/thing", "- url: x"),
        r"`data_sources.1.projects.0",
    ),
    "no endpoints": (
        "native:\n  slug: x\ndata_sources:\n- slug: circleci\n  projects: []\n",
        r"lists no endpoints",
    ),
    "unset env token": (
        GOOD.replace("<user-generated token>", "${NOPE_UNSET}"),
        r"\$\{NOPE_UNSET\}, which is not set",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_fixture_one_clear_message(tmp_path: Path, case: str) -> None:
    text, pattern = BAD[case]
    with pytest.raises(FixtureError, match=pattern):
        load_fixture(write(tmp_path, text), environ={})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="no such fixture file"):
        load_fixture(tmp_path / "absent.yaml", environ={})


@pytest.mark.parametrize("case", ["yaml syntax", "duplicate endpoint", "no circleci source"])
def test_cli_bad_fixture_exits_2_without_traceback(tmp_path: Path, case: str) -> None:
    path = write(tmp_path, BAD[case][0])
    proc = subprocess.run(
        [sys.executable, "-m", "circleci_ds", "collect", str(path), "--db", f"sqlite:///{tmp_path / 'x.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert str(path) in proc.stderr.replace("\n", "")
    assert not (tmp_path / "x.db").exists()  # nothing written for a bad fixture
