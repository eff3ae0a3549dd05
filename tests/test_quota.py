"""The quota-header parsers (client/quota.py): every form, and hostile values read as absent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from circleci_ds.client.quota import Quota, parse_quota, parse_retry_after
from circleci_ds.dev.simulator.ratelimit import FixedWindow, TokenBucket
from circleci_ds.dev.simulator.server import quota_headers
from pacer_helpers import EPOCH, FakeClock


def test_retry_after_seconds_and_http_date_against_the_response_date() -> None:
    assert parse_retry_after("7", None) == 7.0
    server = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(server + timedelta(seconds=4), usegmt=True)
    # Measured against the response's own Date, so a skewed local clock does not matter.
    assert parse_retry_after(later, format_datetime(server, usegmt=True)) == 4.0


def test_retry_after_absent_or_garbage_is_none_and_long_ones_are_kept() -> None:
    assert parse_retry_after(None, None) is None
    assert parse_retry_after("soon", None) is None
    assert parse_retry_after("nan", None) is None
    assert parse_retry_after("-3", None) == 0.0
    assert parse_retry_after("999999", None) == 999999.0  # max_wait bounds it, not the parser


def test_quota_headers_in_both_families() -> None:
    date = format_datetime(datetime.fromtimestamp(EPOCH, UTC), usegmt=True)
    ietf = {"RateLimit-Limit": "100", "RateLimit-Remaining": "7", "RateLimit-Reset": "12"}
    assert parse_quota(ietf, date) == Quota(100, 7, 12.0)
    github = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(EPOCH) + 30), "Date": date}
    assert parse_quota(github, date) == Quota(None, 0, 30.0)  # an epoch, against the Date header
    for bad in ({"RateLimit-Remaining": "-1", "RateLimit-Reset": "1"}, {"RateLimit-Remaining": "3"},
                {"X-RateLimit-Remaining": "9" * 40, "X-RateLimit-Reset": "1"},
                {"RateLimit-Remaining": "3", "RateLimit-Reset": "inf"}):  # fmt: skip
        assert parse_quota(bad, date) is None


# The IETF draft's structured `RateLimit` field, and the quota each value reads as (None: ignored).
STRUCTURED = [
    ({"RateLimit": '"default";r=50;t=30', "RateLimit-Policy": '"default";q=100;w=60'}, Quota(100, 50, 30.0)),
    ({"RateLimit": "default;r=50;t=30"}, Quota(None, 50, 30.0)),  # a token names it; no policy: no limit
    # Two policies: the one with the least remaining binds, with its own quota.
    ({"RateLimit": '"burst";r=5;t=1, "daily";r=999;t=86000',
      "RateLimit-Policy": '"burst";q=10;w=1, "daily";q=1000;w=86400'}, Quota(10, 5, 1.0)),
    ({"RateLimit": '"hourly";r=0, "minute";r=7;t=12'}, Quota(None, 7, 12.0)),  # no t: not known when
    ({"RateLimit": '"default";r=3;t=0.25'}, Quota(None, 3, 0.25)),  # a decimal reset is read too
    ({"RateLimit": "limit=10, remaining=1, reset=7"}, Quota(10, 1, 7.0)),  # draft 07's dictionary
    ({"RateLimit": '"default";r=0'}, None),
    ({"RateLimit": '"default";r=-1;t=3'}, None),
    ({"RateLimit": '"default";r=?1;t=3'}, None),  # a boolean is no count
    ({"RateLimit": '"default";r=2.5;t=3'}, None),
    ({"RateLimit": "limit=10, remaining=1"}, None),
    ({"RateLimit": '"default";r=5;t=3;'}, None),  # malformed: ignored whole
    ({"RateLimit": '"d\u00e9faut";r=5;t=3'}, None),
    ({"RateLimit": "\u00e9;r=5;t=3"}, None),
    ({"RateLimit": '"default";r=999999999999999999;t=3'}, None),  # past a Structured Field integer
    ({"RateLimit": ", ".join(['"p";r=5;t=1'] * 500)}, None),  # over 4 KiB
]  # fmt: skip


@pytest.mark.parametrize(("headers", "quota"), STRUCTURED)
def test_quota_in_the_ietf_drafts_structured_field(headers: dict[str, str], quota: Quota | None) -> None:
    assert parse_quota(headers, None) == quota


def test_a_structured_field_over_several_lines_is_one_list() -> None:
    lines = CIMultiDict([("RateLimit", '"minute";r=9;t=30'), ("ratelimit", '"second";r=2;t=1')])
    assert parse_quota(lines, None) == Quota(None, 2, 1.0)


def test_twitters_hyphenated_family_is_read_like_githubs() -> None:
    date = format_datetime(datetime.fromtimestamp(EPOCH, UTC), usegmt=True)
    reset = str(int(EPOCH) + 90)  # an epoch, against the Date header
    twitter = {"X-Rate-Limit-Limit": "15", "X-Rate-Limit-Remaining": "3", "X-Rate-Limit-Reset": reset}
    assert parse_quota(twitter, date) == Quota(15, 3, 90.0)


@pytest.mark.parametrize("limiter", ["bucket", "second", "minute"])
def test_the_simulators_structured_quota_reads_as_its_ratelimit_headers(limiter: str) -> None:
    clock = FakeClock()
    window = 1.0 if limiter == "second" else 60.0
    server = TokenBucket(7, 5, clock) if limiter == "bucket" else FixedWindow(3, window, clock)
    read = []
    for step in range(40):
        decision = server.take()
        forms = [parse_quota(quota_headers(form, decision, 0), None) for form in ("ratelimit", "structured")]
        assert forms[0] is not None and forms[0] == forms[1]
        read.append(forms[0].remaining)
        clock.now += 0.01 if step % 10 else 1.0
    assert min(read) == 0 and max(read) > 0  # spent and refilled, not one value throughout


@pytest.mark.parametrize("value", ["inf", "-inf", "1e400", "9" * 400, "\x00", "Tue, 99 Foo 2026", " ", "1_0"])
def test_hostile_retry_after_values_read_as_absent_or_finite(value: str) -> None:
    seconds = parse_retry_after(value, "not a date")
    assert seconds is None or (seconds >= 0 and seconds != float("inf"))
