"""What the tests need from the machine, and the one rule for when it is missing.

A test that needs what this machine lacks (PostgreSQL's server binaries, Debian's chromium, faketime,
root for a tmpfs or another host name) skips with the reason, except under CI (`CI=true`), where it
fails with that reason: CI must never pass by skipping. Everything else a test needs (the OpenAPI
document included) is in the repository.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

from pgserver import PgUnavailable, find_bindir

CHROMIUM = Path("/usr/bin/chromium")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str) -> NoReturn:
    """Skip the running test for `reason`; under CI fail instead, with that one line."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this test may not be skipped)", pytrace=False)
    pytest.skip(reason)


def chromium() -> Path:
    if not CHROMIUM.exists():
        unavailable(f"needs Debian's chromium at {CHROMIUM}")
    return CHROMIUM


def faketime() -> str:
    return shutil.which("faketime") or unavailable("Debian's faketime is not installed")


def pg_bindir() -> Path:
    try:
        return find_bindir()
    except PgUnavailable as exc:
        reason = str(exc)
    unavailable(reason)  # outside the handler: one message, not a chain of two
