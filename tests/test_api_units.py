"""Pure parts of the client: origins, durations, finality (the pacer's are in test_pacer.py)."""

from __future__ import annotations

import pytest

from circleci_ds.collect.collector import origin_for
from circleci_ds.collect.rules import pipeline_is_final, wants_details
from circleci_ds.times import parse_duration, parse_ts


def test_origin() -> None:
    assert origin_for("https://circleci.com/api/v2", "gh/a/b") == "https://circleci.com/gh/a/b"
    assert origin_for("https://ci.example.org/api/v2/", "gh/a/b") == "https://ci.example.org/gh/a/b"


@pytest.mark.parametrize(
    ("text", "seconds"), [("72h", 259200), ("3d", 259200), ("1d12h", 129600), ("90", 90)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 fortnights")


def test_timestamps_with_and_without_ms() -> None:
    assert parse_ts("2026-11-01T10:00:00Z") == parse_ts("2026-11-01T10:00:00.000Z")
    assert parse_ts(None) is None


def test_finality_rules() -> None:
    done = {"status": "success", "jobs": [{"status": "success"}]}
    assert pipeline_is_final({"state": "created", "workflows": [done]})
    assert pipeline_is_final({"state": "errored", "workflows": []})
    assert not pipeline_is_final({"state": "setup-pending", "workflows": []})
    assert not pipeline_is_final({"state": "created", "workflows": [{"status": "on_hold", "jobs": []}]})
    blocked = {"status": "success", "jobs": [{"status": "blocked"}]}
    assert not pipeline_is_final({"state": "created", "workflows": [blocked]})


def test_details_only_for_numbered_build_jobs() -> None:
    assert wants_details({"type": "build", "job_number": 3})
    assert not wants_details({"type": "build"})
    assert not wants_details({"type": "approval", "job_number": 4})


def test_dead_local_owner_needs_same_host_and_process_space() -> None:
    import socket
    import subprocess

    from circleci_ds.collect.lanes import dead_local_owner as _dead_local_owner
    from circleci_ds.collect.lanes import new_owner

    host, _, space, _ = new_owner().split(":")
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid is now free
    assert _dead_local_owner(f"{host}:{finished.pid}:{space}:abc")
    assert not _dead_local_owner(new_owner())  # this very process is alive
    assert not _dead_local_owner(f"{host}:{finished.pid}:00000000:abc")  # another container's pids
    assert not _dead_local_owner(f"not-{socket.gethostname()}:{finished.pid}:{space}:abc")
    assert not _dead_local_owner("garbage")
