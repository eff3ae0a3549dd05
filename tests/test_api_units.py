"""Pure parts of the client: Retry-After parsing, the pacer, origins and durations."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from circleci_ds.api import Pacer, parse_retry_after
from circleci_ds.collect import origin_for
from circleci_ds.rules import pipeline_is_final, wants_details
from circleci_ds.times import parse_duration, parse_ts


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("7", None) == 7.0
    server = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(server + timedelta(seconds=4), usegmt=True)
    # Measured against the response's own Date, so a skewed local clock does not matter.
    assert parse_retry_after(later, format_datetime(server, usegmt=True)) == 4.0


def test_retry_after_garbage_and_bounds() -> None:
    assert parse_retry_after(None, None) == 1.0
    assert parse_retry_after("soon", None) == 1.0
    assert parse_retry_after("-3", None) == 0.0
    assert parse_retry_after("100000", None) == 300.0


async def test_pacer_pauses_everyone_and_backs_off() -> None:
    pacer = Pacer()
    for _ in range(30):
        pacer.success()
    pacer.rate_limited(0.3)
    assert pacer.rate is not None and pacer.rate > 0
    started = time.monotonic()
    await asyncio.gather(*(pacer.wait() for _ in range(3)))
    assert time.monotonic() - started >= 0.29


async def test_pacer_caps_rate() -> None:
    pacer = Pacer(max_rps=50)
    started = time.monotonic()
    for _ in range(11):
        await pacer.wait()
    # 11 slots at 50/s span 10 intervals of 20 ms, less a burst of two: a slot missed is made up once.
    assert time.monotonic() - started >= 0.155


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

    from circleci_ds.lanes import dead_local_owner as _dead_local_owner
    from circleci_ds.lanes import new_owner

    host, _, space, _ = new_owner().split(":")
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid is now free
    assert _dead_local_owner(f"{host}:{finished.pid}:{space}:abc")
    assert not _dead_local_owner(new_owner())  # this very process is alive
    assert not _dead_local_owner(f"{host}:{finished.pid}:00000000:abc")  # another container's pids
    assert not _dead_local_owner(f"not-{socket.gethostname()}:{finished.pid}:{space}:abc")
    assert not _dead_local_owner("garbage")
