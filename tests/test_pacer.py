"""The pacer's rules (client/pacing.py), each on a fake clock against the simulator's limiters,
then per limiter shape against the simulator itself.

The fake-clock tests are deterministic and take no real time; the simulator tests assert counts (429s,
the learned rate), never durations.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from multidict import CIMultiDict

from circleci_ds.client.http import CircleCIClient, RateLimitWait
from circleci_ds.client.pacing import (
    Pacer,
    Quota,
    Ticket,
    WaitBudget,
    WaitTooLong,
    parse_quota,
    parse_retry_after,
)
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.dev.simulator.ratelimit import FixedWindow, Limiter, TokenBucket
from circleci_ds.dev.simulator.server import quota_headers
from pacer_helpers import EPOCH, FakeClock, drive

# -- parsing ---------------------------------------------------------------------------------------


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


# -- pauses ----------------------------------------------------------------------------------------


def limited(pacer: Pacer, retry_after: str | None) -> None:
    """Send one request through `pacer` and answer it 429."""
    ticket = pacer.try_acquire()
    assert ticket is not None
    pacer.observe(ticket, 429, {"Retry-After": retry_after} if retry_after is not None else {})


def test_retry_after_holds_every_request_and_a_longer_one_extends_the_pause() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    first = pacer.try_acquire()
    clock.now += 0.1
    second = pacer.try_acquire()
    assert first is not None and second is not None
    pacer.observe(first, 429, {"Retry-After": "2"})
    assert pacer.try_acquire() is None and pacer.delay() == pytest.approx(2.0)
    assert pacer.paused_until == pytest.approx(clock.now + 2.0)
    clock.now += 1.0
    pacer.observe(second, 429, {"Retry-After": "3"})  # in flight when the pause began: same event
    assert pacer.rate_limited == 2
    clock.now += 2.999
    assert pacer.try_acquire() is None
    clock.now += 0.001
    assert pacer.try_acquire() is not None and pacer.paused_until is None


def test_one_request_goes_first_after_a_pause() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, "1")
    clock.now += 1.0
    probe = pacer.try_acquire()
    assert probe is not None and probe.probe
    clock.now += 0.5
    assert pacer.try_acquire() is None  # the others wait for its answer
    pacer.observe(probe, 200, {})
    assert pacer.try_acquire() is not None


def test_without_retry_after_the_pause_doubles_while_the_first_request_is_refused() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pauses = []
    limited(pacer, None)
    for _ in range(7):
        pauses.append(pacer.pause_remaining)
        clock.now += pacer.pause_remaining
        limited(pacer, None)  # the request that goes first is refused again
    assert pauses == [1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    clock.now += pacer.pause_remaining
    limited(pacer, "0")  # a zero Retry-After after refusals still backs off
    assert pacer.pause_remaining > 0


def test_no_request_goes_during_any_pause() -> None:
    clock = FakeClock()
    out = drive(Pacer(clock=clock), clock, TokenBucket(100, 10, clock), 60)
    assert out.pauses
    for received, pause in out.pauses:
        assert out.count(received, received + pause) == 0


def test_a_long_pause_is_announced_and_shown(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    with caplog.at_level(logging.WARNING, logger="circleci_ds.client.http"):
        limited(pacer, "120")
    assert pacer.pause_remaining == pytest.approx(120.0)
    assert any("paused for 2m00s" in r.getMessage() for r in caplog.records)


async def test_a_pause_beyond_max_wait_fails_at_once_per_request_and_per_run() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    limited(pacer, "999999")
    with pytest.raises(WaitTooLong, match="in this run would add up to 11d13h, beyond --max-wait 15m00s"):
        await pacer.wait()  # the run's bound
    pacer = Pacer(clock=clock, max_wait=900.0)
    limited(pacer, "600")
    with pytest.raises(WaitTooLong, match="asks to wait 10m00s more"):  # this request's bound
        await pacer.wait(WaitBudget(300.0))


# -- 503s with a Retry-After (rule 1b) --------------------------------------------------------------


def test_a_503_with_retry_after_pauses_every_request_and_leaves_the_pace() -> None:
    clock = FakeClock()
    pacer = learned(clock, 40)
    pace, estimate = pacer.rate, pacer.estimate
    down, in_flight = send(pacer, clock), send(pacer, clock)
    pacer.observe(down, 503, {"Retry-After": "30"})
    assert pacer.try_acquire() is None and pacer.pause_remaining == pytest.approx(30.0)
    pacer.observe(in_flight, 503, {"Retry-After": "10"})  # a shorter one does not shorten the pause
    assert pacer.pause_remaining == pytest.approx(30.0)
    assert (pacer.rate, pacer.estimate, pacer.rate_limited) == (pace, estimate, 1)  # not a rate
    clock.now += 30.0
    first = pacer.try_acquire()
    assert first is not None and first.probe and pacer.try_acquire() is None  # one goes first
    pacer.observe(first, 200, {})
    assert send(pacer, clock) is not None


def test_a_503_without_retry_after_changes_nothing_here() -> None:
    clock = FakeClock()
    pacer = learned(clock, 40)
    pace = pacer.rate
    pacer.observe(send(pacer, clock), 503, {"Retry-After": "soon"})  # unreadable: as if absent
    assert pacer.paused_until is None and pacer.rate == pace  # the client retries it with backoff


async def test_503s_saying_retry_after_0_are_asked_again_ever_later_until_max_wait_ends_them() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    pauses = []
    while pacer.paused_total <= 900.0:
        pacer.observe(send(pacer, clock), 503, {"Retry-After": "0"})
        pauses.append(pacer.pause_remaining)
    assert pauses[:4] == [0.25, 0.5, 1.0, 2.0] and max(pauses) == 60.0
    assert len(pauses) == 22  # 0.25 s doubling to 60 s: past 900 s of pauses at the 22nd
    with pytest.raises(WaitTooLong, match="would add up to 15m04s, beyond --max-wait 15m00s"):
        await pacer.wait()  # at once: the run's bound
    clock.now += pacer.pause_remaining
    answered(pacer, clock, 1)  # a success ends the outage: the next 503 pauses 0.25 s again
    pacer.observe(send(pacer, clock), 503, {"Retry-After": "0"})
    assert pacer.pause_remaining == 0.25


async def test_an_outage_longer_than_max_wait_fails_at_once_and_says_so() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    pacer.observe(send(pacer, clock), 503, {"Retry-After": "3600"})
    says = r"^server unavailable \(HTTP 503\): the server asks to wait 1h00m"
    with pytest.raises(WaitTooLong, match=says) as caught:
        await pacer.wait(WaitBudget(900.0))
    assert caught.value.status == 503


# -- lone 429s (rule 1a) ---------------------------------------------------------------------------


def learned(clock: FakeClock, successes: int) -> Pacer:
    """A pacer past its first pause (the pace is learned), then `successes` requests answered 200,
    `SUSTAIN` s or more after the pause ended."""
    pacer = Pacer(clock=clock)
    limited(pacer, "1")
    clock.now += pacer.pause_remaining
    resumed = clock.now
    answered(pacer, clock, successes)
    clock.now = max(clock.now, resumed + Pacer.SUSTAIN)
    assert pacer.estimate is not None
    return pacer


def answered(pacer: Pacer, clock: FakeClock, successes: int) -> None:
    """`successes` requests sent at the pacer's pace, each answered 200."""
    for _ in range(successes):
        clock.now += pacer.delay()
        ticket = pacer.try_acquire()
        assert ticket is not None
        pacer.observe(ticket, 200, {})


def send(pacer: Pacer, clock: FakeClock, budget: WaitBudget | None = None) -> Ticket:
    clock.now += pacer.delay()
    ticket = pacer.try_acquire(budget)
    assert ticket is not None
    return ticket


def test_a_lone_429_slows_the_pace_and_only_the_refused_request_waits_its_retry_after() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.RUN)
    pace, budget = pacer.rate, WaitBudget(900.0)
    pacer.observe(send(pacer, clock, budget), 429, {"Retry-After": "1"})
    assert budget.not_before == pytest.approx(clock.now + 1.0)
    assert pacer.paused_until is None  # the others go on
    assert pacer.rate == pytest.approx(Pacer.SOFT_CUT * pace)
    assert send(pacer, clock) is not None
    clock.now = budget.not_before - 0.01
    assert pacer.try_acquire(budget) is None  # never before its own Retry-After
    clock.now = budget.not_before
    assert pacer.try_acquire(budget) is not None


def test_a_429_right_after_a_lone_one_pauses_every_request() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.RUN)
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})  # sent after it, no success between
    assert pacer.pause_remaining == pytest.approx(1.0)


def test_429s_between_successes_after_a_lone_one_each_slow_the_pace_again() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.RUN)
    pace = pacer.rate
    for _ in range(3):  # a bucket refusing one request in a few: the pace is past its rate
        pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})
        answered(pacer, clock, Pacer.AGAIN)
    assert pacer.paused_until is None  # the others went on
    assert pacer.rate == pytest.approx(Pacer.SOFT_CUT**3 * pace)


def test_a_429_soon_after_a_pause_is_a_spent_limit_whatever_the_successes_before() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    drive(pacer, clock, None, 2.0)  # slow start takes the pace far above START
    clock.now += pacer.delay()
    limited(pacer, "1")
    clock.now += pacer.pause_remaining
    resumed = clock.now
    answered(pacer, clock, Pacer.RUN)  # a bucket's refill during the pause carries these
    assert clock.now - resumed < Pacer.SUSTAIN
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})
    assert pacer.pause_remaining == pytest.approx(1.0)


def test_a_429_in_flight_at_a_lone_one_is_the_same_refusal() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.RUN)
    first, in_flight = send(pacer, clock), send(pacer, clock)
    clock.now += 0.025
    pacer.observe(first, 429, {"Retry-After": "1"})
    pace = pacer.rate
    budget = WaitBudget(900.0)
    late = Ticket(in_flight.seq, in_flight.sent, budget=budget)  # sent before the first was answered
    pacer.observe(late, 429, {"Retry-After": "1"})
    assert pacer.paused_until is None and pacer.rate == pace  # waits alone, no second cut
    assert budget.not_before == pytest.approx(clock.now + 1.0)


def test_a_lone_429_after_a_quiet_run_keeps_the_pace() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)
    pace = pacer.rate
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})
    assert pacer.paused_until is None and pacer.rate == pace  # one refusal in QUIET fits the budget


@pytest.mark.parametrize("together", [True, False])
def test_a_lone_429_answered_with_the_answer_before_it_keeps_the_pace(together: bool) -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.BUNCHED)  # not a quiet run: a lone 429 apart slows the pace
    pace = pacer.rate
    admitted, refused = send(pacer, clock), send(pacer, clock)
    clock.now += 0.025
    pacer.observe(admitted, 200, {})
    if not together:  # answered at the pace: the pace's doing
        clock.now += 1.0 / pace
    pacer.observe(refused, 429, {"Retry-After": "1"})  # together: a stall let both reach the server at once
    assert pacer.paused_until is None
    assert pacer.rate == (pace if together else pytest.approx(Pacer.SOFT_CUT * pace))


def test_lone_429s_answered_in_bunches_time_after_time_still_slow_the_pace() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)
    pace = pacer.rate
    for _ in range(3):  # a proxy passing answers on in bunches makes every 429 look like a stall's
        admitted, refused = send(pacer, clock), send(pacer, clock)
        clock.now += 0.025
        pacer.observe(admitted, 200, {})
        pacer.observe(refused, 429, {"Retry-After": "1"})
        answered(pacer, clock, 10)
    # The first came after a quiet run; the next two, fewer than BUNCHED successes apart, each cut.
    assert pacer.rate == pytest.approx(Pacer.SOFT_CUT**2 * pace)


def test_a_429_in_flight_at_a_lone_one_is_the_same_refusal_also_when_the_pace_was_kept() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)  # a quiet run: the lone 429 leaves the pace as it is
    first, bunched = send(pacer, clock), send(pacer, clock)  # a stall let both reach the server together
    clock.now += 0.025
    pacer.observe(first, 429, {"Retry-After": "1"})
    pacer.observe(bunched, 429, {"Retry-After": "1"})
    assert pacer.paused_until is None


@pytest.mark.parametrize("apart", [True, False])
def test_refusals_in_flight_at_a_quiet_lone_429_answered_apart_slow_the_pace(apart: bool) -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)  # a quiet run: the lone 429 leaves the pace as it is
    pace = pacer.rate
    tickets = [send(pacer, clock) for _ in range(Pacer.BUNCH)]  # all out before the first answer
    clock.now += 0.1
    for ticket in tickets:  # a window refusing the end of its second, or a stalled server's bunch
        clock.now += 1.0 / pace if apart else 0.0
        pacer.observe(ticket, 429, {"Retry-After": "1"})
    assert pacer.paused_until is None
    assert pacer.rate == pytest.approx(Pacer.SOFT_CUT * pace if apart else pace)


def test_refusals_in_a_row_in_flight_at_a_lone_429_are_a_spent_limit() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)
    tickets = [send(pacer, clock) for _ in range(Pacer.STREAK)]  # all out before the first answer
    clock.now += 0.1
    for ticket in tickets[:-1]:
        pacer.observe(ticket, 429, {"Retry-After": "1"})
    assert pacer.paused_until is None  # a stall's bunch, so far
    pacer.observe(tickets[-1], 429, {"Retry-After": "1"})  # none went through: a window is spent
    assert pacer.pause_remaining == pytest.approx(1.0)


def test_a_success_between_refusals_in_flight_keeps_them_lone() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)
    tickets = [send(pacer, clock) for _ in range(2 * Pacer.STREAK)]
    clock.now += 0.1
    for i, ticket in enumerate(tickets):  # a bucket of one, bunched arrivals: every third admitted
        pacer.observe(ticket, 200 if i % 3 == 2 else 429, {"Retry-After": "1"})
    assert pacer.paused_until is None


def flood(pacer: Pacer, clock: FakeClock, answers: str, *, at_once: bool = False) -> float:
    """Send len(answers) requests, refuse the first, then answer the others in order during the pause
    ('o' 200, 'x' 429), as far apart as they were sent or, `at_once`, together (a server that stalled
    a moment); return the pace refused."""
    pace = pacer.rate
    tickets = [send(pacer, clock) for _ in answers]
    first = clock.now + 0.1  # all are in flight when the first is answered
    for ticket, answer in zip(tickets, answers, strict=True):
        clock.now = first if at_once else ticket.sent - tickets[0].sent + first
        pacer.observe(ticket, 200 if answer == "o" else 429, {"Retry-After": "1"})
    clock.now += pacer.pause_remaining
    assert send(pacer, clock).probe
    return pace


def test_most_requests_in_flight_refused_at_a_pause_set_the_estimate_from_the_share_admitted() -> None:
    clock = FakeClock()
    pacer = learned(clock, 10)  # the first pause was short: its estimate is half the refused pace
    pace = flood(pacer, clock, "xxoxxoxxoxxoxxoxxoxxo")  # a drained bucket admits one in three
    assert pacer.estimate == pytest.approx(pace / 3)  # far under the usual cut (DECREASE x pace)
    assert pacer.rate == pytest.approx(Pacer.MARGIN * pace / 3)


def test_a_bunch_answered_at_once_sets_no_estimate_from_its_share_admitted() -> None:
    clock = FakeClock()
    pacer = learned(clock, 10)
    estimate = pacer.estimate
    flood(pacer, clock, "xxoxxoxxoxxoxxoxxoxxo", at_once=True)  # a stalled server's bunch: no rate in it
    assert pacer.estimate is not None and pacer.estimate > 0.5 * estimate  # the usual cut, no more


def test_a_window_refusing_all_in_flight_until_it_ends_sets_no_estimate_from_them() -> None:
    clock = FakeClock()
    pacer = learned(clock, 10)
    estimate = pacer.estimate
    flood(pacer, clock, "xxxxxxxxxxxxxxxxxooo")  # refused until the window ended, then all admitted
    assert pacer.estimate is not None and pacer.estimate < estimate  # the usual cut, no more
    assert pacer.estimate > 0.5 * estimate


def test_a_long_retry_after_pauses_every_request_even_alone() -> None:
    clock = FakeClock()
    pacer = learned(clock, Pacer.QUIET)
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "5"})  # a window spent, not jitter
    assert pacer.pause_remaining == pytest.approx(5.0)


def test_the_first_429_pauses_every_request() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    answered(pacer, clock, Pacer.QUIET)
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})  # the pace is not learned yet
    assert pacer.pause_remaining == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [10.0, 150.0])
def test_a_bucket_of_one_against_arrival_jitter_refuses_alone_and_never_early(rate: float) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    # Each request reaches the server up to 2 ms late: pairs arrive closer than the bucket's interval.
    out = drive(pacer, clock, TokenBucket(rate, 1, clock), 60, jitter=0.002)
    assert out.rejected < 0.02 * len(out.sent)
    assert out.retries and all(again - refused >= 1.0 for refused, again in out.retries)
    assert any(pause == 0.0 for _, pause in out.pauses)  # some refused alone
    assert out.stops() <= 3  # few stop every request
    assert out.succeeded >= 0.6 * rate * 60  # the pace does not collapse


@pytest.mark.parametrize(
    ("stall", "least"),
    [
        ((0.03, 3.1), 0.7),  # 0.35 when each bunch stopped every request
        ((0.015, 1.3), 0.5),  # 0.39 when each bunch's 429 cut the pace and the climb back was slower
    ],
)
def test_a_bucket_of_one_behind_a_stalling_server_keeps_its_pace(
    stall: tuple[float, float], least: float
) -> None:
    clock = FakeClock()
    pacer, rate = Pacer(clock=clock), 150.0
    # The server stops reading now and then, and then its limiter sees the waiting requests at once.
    out = drive(pacer, clock, TokenBucket(rate, 1, clock), 60, jitter=0.0005, stall=stall, workers=32)
    assert out.rejected < 0.02 * len(out.sent)
    assert out.stops() <= 3  # a stall's bunch is refused alone, not as a spent limit
    assert out.succeeded >= least * rate * 60


def test_a_big_burst_drained_at_a_far_higher_pace_costs_few_429s() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    out = drive(pacer, clock, TokenBucket(10, 100, clock), 60, workers=32, latency=0.1, retry_after="date")
    assert out.rejected < 0.06 * len(out.sent)  # the share refused in flight shows the rate at once
    assert 0.85 * 10 <= pacer.rate <= 10.5


# -- pace ------------------------------------------------------------------------------------------


def test_max_rps_is_a_hard_cap() -> None:
    clock = FakeClock()
    pacer = Pacer(max_rps=50, clock=clock)
    out = drive(pacer, clock, None, 20)
    assert out.busiest() <= 51  # 51 when a second starts and ends on a slot
    assert out.count(clock.now - 10, clock.now) >= 490


def test_max_rps_holds_while_adapting_to_429s() -> None:
    clock = FakeClock()
    pacer = Pacer(max_rps=60, clock=clock)
    out = drive(pacer, clock, TokenBucket(50, 10, clock), 60)
    assert out.rejected > 0
    assert out.busiest() <= 61
    assert pacer.rate <= 60


def test_pace_grows_only_while_it_holds_requests_back() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    drive(pacer, clock, TokenBucket(100, 10, clock), 20)
    pace = pacer.rate
    # One worker, one request a second: far under the pace, which must not creep up meanwhile.
    drive(pacer, clock, TokenBucket(100, 10, clock), 120, workers=1, think=1.0)
    assert pacer.rate == pace


def climb(pacer: Pacer, clock: FakeClock, seconds: float) -> list[float]:
    """The paces every 0.5 s over `seconds` of requests held back by the pace, none refused."""
    paces = [pacer.rate]
    for _ in range(round(seconds / 0.5)):
        drive(pacer, clock, None, 0.5)
        paces.append(pacer.rate)
    return paces


def test_the_pace_climbs_back_towards_a_refused_one_in_bounded_steps() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, "1")  # the run's first 429
    clock.now += pacer.pause_remaining
    drive(pacer, clock, None, 0.2)  # requests held back by the pace
    refused = pacer.rate
    clock.now += pacer.delay()
    limited(pacer, "1")  # soon after the pause: a spent limit
    clock.now += pacer.pause_remaining
    paces = climb(pacer, clock, 40.0)
    steps = [after / before for before, after in itertools.pairwise(paces) if after != before]
    assert steps and max(steps) <= Pacer.CLIMB_MAX + 1e-9  # an overshoot costs one pause, not two
    assert paces[-1] == pytest.approx(Pacer.MARGIN * refused, rel=0.02)  # just under the refused pace


def test_a_lone_429_ends_the_climb_back() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, "1")  # the run's first 429
    clock.now += pacer.pause_remaining
    drive(pacer, clock, None, 0.2)
    clock.now += pacer.delay()
    limited(pacer, "1")  # a spent limit: the pace climbs back towards this one
    clock.now += pacer.pause_remaining
    assert len(set(climb(pacer, clock, 6.0))) > 1  # partway up
    answered(pacer, clock, Pacer.RUN)
    pacer.observe(send(pacer, clock), 429, {"Retry-After": "1"})  # lone: refusals begin here
    assert pacer.paused_until is None
    assert set(climb(pacer, clock, 20.0)) == {pacer.rate}  # held, until a minute has passed


def test_a_pace_refused_only_by_the_runs_first_429_is_climbed_back_to_faster_and_past() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    drive(pacer, clock, None, 0.2)  # slow start holds requests back
    refused = pacer.rate
    clock.now += pacer.delay()
    limited(pacer, "1")  # a stall, or slow start's overshoot: the estimate is half of it
    clock.now += pacer.pause_remaining
    paces = climb(pacer, clock, 40.0)
    assert set(paces[: round(Pacer.SUSTAIN / 0.5)]) == {paces[0]}  # no step before a 429 would be lone
    back = Pacer.MARGIN * refused * 0.99
    reached = next(i for i, pace in enumerate(paces) if pace >= back)
    assert reached * 0.5 <= 10.0  # a step a second: back in 9 s, not the 20 s of steps every 2 s
    pairs = enumerate(itertools.pairwise(paces))
    steps = [(i, after / before) for i, (before, after) in pairs if after != before]
    assert max(step for i, step in steps if i < reached) <= Pacer.FIRST_MAX + 1e-9
    assert max(step for i, step in steps if i >= reached) <= Pacer.CLIMB_MAX + 1e-9  # past it: any 429's
    assert paces[-1] == pytest.approx(Pacer.MARGIN * Pacer.START_GROWTH * refused, rel=0.02)


def shape(name: str, rate: float, clock: FakeClock) -> Limiter:
    """A limiter admitting `rate` requests/s on average; windows start 0.4 s (or 40 s) from now."""
    if name.startswith("bucket"):
        return TokenBucket(rate, int(name.removeprefix("bucket")), clock)
    window = 1.0 if name == "second" else 60.0
    return FixedWindow(round(rate * window), window, lambda: clock.now + window * 0.6 - 1000.0)


SHAPES = [("bucket10", 50.0), ("bucket100", 20.0), ("bucket1", 20.0), ("second", 60.0), ("minute", 10.0)]


@pytest.mark.parametrize(("name", "rate"), SHAPES)
@pytest.mark.parametrize("retry_after", ["seconds", "date", "none"])
def test_pace_converges_under_each_limiter_shape_with_few_429s(
    name: str, rate: float, retry_after: str
) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    seconds = 300.0 if name == "minute" else 90.0
    out = drive(pacer, clock, shape(name, rate, clock), seconds, retry_after=retry_after)
    assert out.rejected < 0.02 * len(out.sent)
    if name != "minute":  # a window of a minute takes any pace up to its quota
        # The pace learned, as the server saw it over the last 30 s (a probe above may be under way).
        assert 0.85 * rate <= out.count(clock.now - 30, clock.now) / 30 <= 1.05 * rate
    assert out.succeeded >= 0.85 * rate * seconds


@pytest.mark.parametrize("headers", ["ratelimit", "x-ratelimit", "structured"])
@pytest.mark.parametrize(("name", "rate"), [("minute", 10.0), ("bucket100", 20.0)])
def test_quota_headers_spare_the_429s(headers: str, name: str, rate: float) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    out = drive(pacer, clock, shape(name, rate, clock), 200.0, headers=headers)
    assert out.rejected == 0
    assert out.succeeded >= 0.85 * rate * 200.0


def test_a_bucket_reporting_whole_second_resets_is_paced_at_its_refill_rate() -> None:
    # A bucket of 10 at 60/s says `RateLimit-Reset: 1` whatever it holds: waiting for that reset at
    # every spent quota costs most of a second; its refill, read from the quota, is its rate.
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(60, 10, clock)
    out = drive(pacer, clock, bucket, 60.0, latency=0.005, workers=32, headers="ratelimit")
    assert out.rejected <= 1  # slow start's pace, taken for the refill until one is measured
    assert pacer.estimate == pytest.approx(60, rel=0.05)
    assert out.succeeded >= 0.95 * 60 * 60  # a second's wait at each spent quota would cost more


@pytest.mark.parametrize("burst", [2, 5, 20])
@pytest.mark.parametrize("rate", [60.0, 150.0])
def test_quota_headers_of_a_bucket_smaller_than_the_requests_in_flight_keep_its_rate(
    burst: int, rate: float
) -> None:
    # At 100 ms, 6 to 15 requests are in flight: more than such a bucket holds, though it refills them
    # on their way; counting each as spent would stop every request at each reading.
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(rate, burst, clock)
    out = drive(pacer, clock, bucket, 60.0, latency=0.1, workers=32, headers="ratelimit", jitter=0.001)
    assert out.rejected < 0.02 * len(out.sent)
    assert out.succeeded >= 0.85 * rate * 60  # slow start and the first spent quota included


@pytest.mark.parametrize("latency", [0.005, 0.1])
@pytest.mark.parametrize("phase", [0.3, 0.85])
@pytest.mark.parametrize("limit", [30, 60])
def test_a_window_per_second_known_from_its_quota_is_paced_just_under_its_limit(
    limit: int, phase: float, latency: float
) -> None:
    # A window of 30 a second says `RateLimit-Reset: 1` whatever is left of it: waiting that second
    # out at each spent quota cost 0.78-0.89 of the rate. Known as a window (the request sent to tell
    # it from a bucket refused, or its quota seen jumping back to the limit at a reset: at 60 a second,
    # phase 0.85 and 100 ms that request reaches a window that has just reset), its rate is its limit
    # a second.
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    window = FixedWindow(limit, 1.0, lambda: clock.now + phase - 1000.0)
    out = drive(
        pacer, clock, window, 60.0, latency=latency, workers=20, headers="ratelimit", jitter=0.002, late=0.004
    )
    assert out.rejected <= 2
    assert pacer.estimate == limit
    assert out.succeeded >= 0.94 * limit * 60


def test_pace_follows_a_limit_that_drops_and_rises() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(100, 10, clock)
    drive(pacer, clock, bucket, 30)
    bucket.rate = 50
    drop = drive(pacer, clock, bucket, 30)
    assert 0.7 * 50 <= drop.count(clock.now - 15, clock.now) / 15 <= 51
    bucket.rate = 150
    rise = drive(pacer, clock, bucket, 180)  # a held pace is probed above after a minute
    assert rise.count(clock.now - 15, clock.now) / 15 >= 0.85 * 150


# -- against the simulator, per limiter shape ------------------------------------------------------

SIM_SHAPES = [
    ("bucket", 100.0, 10, "seconds"),
    ("bucket", 40.0, 1, "date"),
    ("second", 100.0, 1, "seconds"),
    ("minute", 5.0, 1, "none"),  # 300 a minute: the second minute's window is reached
]


@pytest.mark.parametrize(("limiter", "rate", "burst", "retry_after"), SIM_SHAPES)
async def test_client_against_each_simulated_limiter(
    limiter: str, rate: float, burst: int, retry_after: str
) -> None:
    config = SimConfig(
        projects=[SimProject("gh/acme/api", pipelines=2)],
        rate_limit_rps=rate,
        rate_burst=burst,
        limiter=limiter,
        retry_after=retry_after,
    )
    sim = Simulator(config)
    wanted = 400 if limiter == "minute" else round(rate * 10)
    done = 0

    async def worker(client: CircleCIClient) -> None:
        nonlocal done
        while done < wanted:
            await client.get("/project/gh/acme/api")
            done += 1

    async with sim.serve() as url, CircleCIClient(url, "t", concurrency=16) as client:
        await asyncio.gather(*(worker(client) for _ in range(16)))
    refused = sim.stats["status"].get("429", 0)
    assert refused == client.stats.rate_limited == client.pacer.rate_limited
    assert refused < 0.02 * sim.stats["requests"]
    estimate = client.pacer.estimate  # the server's rate as estimated at the last pause
    if limiter != "minute":  # within one window's end a windowed server may be sent anything
        # A burst can carry a pace above the rate for seconds, so the estimate may overshoot a little.
        assert estimate is not None and 0.5 * rate <= estimate <= 1.25 * rate


async def test_client_fails_a_request_whose_wait_exceeds_max_wait() -> None:
    config = SimConfig(projects=[SimProject("gh/acme/api", pipelines=1)], rate_limit_rps=0.001, rate_burst=1)
    sim = Simulator(config)
    async with sim.serve() as url, CircleCIClient(url, "t", max_wait=5.0) as client:
        await client.get("/project/gh/acme/api")
        with pytest.raises(RateLimitWait, match="giving up"):
            await client.get("/project/gh/acme/api")
    assert math.isclose(sim.stats["status"]["429"], 1)


def test_collect_fails_an_endpoint_whose_wait_exceeds_max_wait(tmp_path: Path) -> None:
    # One request every 2,000 s: the second request is told to wait about 33 minutes.
    config = SimConfig(projects=[SimProject("gh/acme/api", pipelines=3)], rate_limit_rps=0.0005, rate_burst=1)
    sim = Simulator(config)
    url = sim.start_thread()
    fixture = tmp_path / "fixture.yaml"
    fixture.write_text(
        "native:\n  slug: acme\ndata_sources:\n- slug: circleci\n  projects:\n  - name: acme\n"
        "    endpoints:\n    - name: gh/acme/api\n"
        "  config:\n  - name: Circle-Token\n    value: a-long-token-42\n"
    )
    try:
        args = ["collect", str(fixture), "--max-wait", "5m", "--db", f"sqlite:///{tmp_path / 's.db'}"]
        env = {**os.environ, "CIRCLECI_API_URL": url}
        run = subprocess.run(
            [sys.executable, "-m", "circleci_ds", *args], env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        sim.stop_thread()
    assert run.returncode == 1, run.stderr
    assert "rate limited: every request paused for 33m" in run.stderr  # announced
    assert "beyond --max-wait 5m00s" in run.stderr and "giving up" in run.stderr
    assert "Traceback" not in run.stderr
    assert sim.stats["status"].get("429") == 1  # failed at once, not after waiting and asking again
