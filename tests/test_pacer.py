"""The pacer's rules (client/pacing.py), each on a fake clock, then per limiter shape against the
simulator's limiters in simulated time and against the simulator itself.

The fake-clock tests are deterministic and take no real time; the simulator tests assert counts (429s,
the pace learned), never durations.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from circleci_ds.client.http import CircleCIClient, RateLimitWait
from circleci_ds.client.pacing import Pacer, Ticket, WaitBudget, WaitTooLong
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.dev.simulator.ratelimit import FixedWindow, Limiter, TokenBucket
from pacer_helpers import FakeClock, drive, run_simulated


def send(pacer: Pacer, clock: FakeClock) -> Ticket:
    """The next request, sent as soon as the pacer lets it go."""
    clock.now += pacer.delay()
    ticket = pacer.try_acquire()
    assert ticket is not None
    return ticket


def answered(pacer: Pacer, clock: FakeClock, successes: int) -> None:
    """`successes` requests sent at the pacer's pace, each answered 200."""
    for _ in range(successes):
        pacer.observe(send(pacer, clock), 200, {})


def limited(pacer: Pacer, clock: FakeClock, retry_after: str | None) -> None:
    """One request sent and answered 429."""
    pacer.observe(send(pacer, clock), 429, {"Retry-After": retry_after} if retry_after is not None else {})


# -- rule 1: pauses --------------------------------------------------------------------------------


def test_retry_after_holds_every_request_and_a_longer_one_extends_the_pause() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    first, second = send(pacer, clock), send(pacer, clock)
    pacer.observe(first, 429, {"Retry-After": "2"})
    assert pacer.try_acquire() is None and pacer.delay() == pytest.approx(2.0)
    assert pacer.paused_until == pytest.approx(clock.now + 2.0)
    clock.now += 1.0
    pacer.observe(second, 429, {"Retry-After": "3"})  # in flight when the pause began: same bunch
    clock.now += 2.999
    assert pacer.try_acquire() is None
    clock.now += 0.001
    assert pacer.try_acquire() is not None and pacer.paused_until is None


def test_a_refusal_in_flight_asking_less_does_not_shorten_the_pause() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    first, second = send(pacer, clock), send(pacer, clock)
    pacer.observe(first, 429, {"Retry-After": "5"})
    pacer.observe(second, 429, {"Retry-After": "1"})
    assert pacer.pause_remaining == pytest.approx(5.0)


def test_without_retry_after_the_pause_is_a_second_then_doubles_while_the_first_request_is_refused() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pauses = []
    for _ in range(12):
        limited(pacer, clock, None)  # after the first, the request that goes first is refused again
        pauses.append(pacer.pause_remaining)
    assert pauses == [1.0, 1.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    answered(pacer, clock, 1)  # a success: the next pause starts from the floor again
    limited(pacer, clock, "0")
    assert pacer.pause_remaining == Pacer.FLOOR


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
        limited(pacer, clock, "120")
    assert pacer.pause_remaining == pytest.approx(120.0)
    assert any("rate limited: every request paused for 2m00s" in r.getMessage() for r in caplog.records)


# -- rule 1 for a 503 with a Retry-After ------------------------------------------------------------


def test_a_503_with_retry_after_pauses_every_request_and_leaves_the_pace() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    answered(pacer, clock, 40)
    down, in_flight = send(pacer, clock), send(pacer, clock)
    pace = pacer.rate
    pacer.observe(down, 503, {"Retry-After": "30"})
    assert pacer.try_acquire() is None and pacer.pause_remaining == pytest.approx(30.0)
    pacer.observe(in_flight, 503, {"Retry-After": "10"})  # a shorter one does not shorten the pause
    assert pacer.pause_remaining == pytest.approx(30.0)
    assert pacer.rate == pace  # an outage says nothing of the rate
    clock.now += 30.0
    first = pacer.try_acquire()
    assert first is not None and first.first and pacer.try_acquire() is None  # one goes first
    pacer.observe(first, 200, {})
    assert send(pacer, clock) is not None


def test_a_503_without_retry_after_changes_nothing_here() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    answered(pacer, clock, 40)
    ticket = send(pacer, clock)
    pace = pacer.rate
    pacer.observe(ticket, 503, {"Retry-After": "soon"})  # unreadable: as if absent
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


async def test_an_outage_longer_than_max_wait_fails_at_once_and_says_so() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    pacer.observe(send(pacer, clock), 503, {"Retry-After": "3600"})
    says = r"^server unavailable \(HTTP 503\): the server asks to wait 1h00m"
    with pytest.raises(WaitTooLong, match=says) as caught:
        await pacer.wait(WaitBudget(900.0))
    assert caught.value.status == 503


# -- rule 2: one first -----------------------------------------------------------------------------


def test_one_request_goes_first_after_a_pause_and_the_others_wait_for_its_answer() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, clock, "1")
    clock.now += 1.0
    first = pacer.try_acquire()
    assert first is not None and first.first
    clock.now += 0.5
    assert pacer.try_acquire() is None and pacer.delay() == Pacer.POLL
    pacer.observe(first, 200, {})
    assert pacer.try_acquire() is not None


def test_a_first_request_that_gets_no_answer_lets_the_others_go() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, clock, "1")
    first = send(pacer, clock)
    assert pacer.try_acquire() is None
    pacer.abandon(first)  # a timeout
    assert send(pacer, clock) is not None


# -- rule 3: the pace ------------------------------------------------------------------------------


def paces(pacer: Pacer, clock: FakeClock, seconds: float) -> list[float]:
    """The pace every second over `seconds` of requests held back by it, none refused."""
    out = [pacer.rate]
    for _ in range(round(seconds)):
        drive(pacer, clock, None, 1.0)
        out.append(pacer.rate)
    return out


def test_slow_start_doubles_the_pace_each_second_while_it_holds_requests_back() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    seen = paces(pacer, clock, 3)
    assert seen[0] == Pacer.START
    assert seen[3] == pytest.approx(Pacer.START * Pacer.FAST**3, rel=0.05)


def test_the_pace_grows_only_while_it_holds_requests_back() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    # One worker, one request a second: far under the pace, which must not creep up meanwhile.
    drive(pacer, clock, None, 60, workers=1, think=1.0)
    assert pacer.rate == Pacer.START


def test_the_first_429_halves_slow_starts_pace_and_it_climbs_back_fast_then_slowly() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    paces(pacer, clock, 2)
    ticket = send(pacer, clock)
    refused = pacer.rate
    pacer.observe(ticket, 429, {"Retry-After": "1"})
    assert pacer.rate == pytest.approx(refused / Pacer.FAST)
    clock.now += pacer.pause_remaining
    seen = paces(pacer, clock, 30)
    ceiling = Pacer.DECREASE * refused
    fast = next(i for i, pace in enumerate(seen) if pace >= ceiling)
    assert seen[1] / seen[0] == pytest.approx(Pacer.RECOVER, rel=0.02)
    assert fast <= 6  # x1.15 a second: from 1/2 to 0.85 of the refused pace in 4 s
    assert seen[-1] / seen[fast + 1] == pytest.approx(Pacer.CLIMB ** (len(seen) - fast - 2), rel=0.02)


def test_a_later_429_cuts_the_pace_once_for_its_whole_bunch() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, clock, "1")  # ends slow start
    clock.now += pacer.pause_remaining
    paces(pacer, clock, 10)  # climbing back, requests well after the pause
    bunch = [send(pacer, clock) for _ in range(5)]
    pace = pacer.rate
    for ticket in bunch:  # all sent before the first 429 came: one bunch
        pacer.observe(ticket, 429, {"Retry-After": "1"})
    assert pacer.rate == pytest.approx(Pacer.DECREASE * pace)


def test_a_refused_first_request_after_a_pause_cuts_nothing() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    limited(pacer, clock, "1")
    pace = pacer.rate
    limited(pacer, clock, "1")  # the one sent first: the pause ended too soon, the pace is not at fault
    assert pacer.rate == pace


def test_a_429_soon_after_a_pause_cuts_to_the_rate_admitted_over_it() -> None:
    # A bucket of 10/s with a big burst: slow start drains the burst far above its rate. After the
    # next pause the bucket holds what it refilled, and a 429 comes soon: the successes over that
    # pause and since, over their time, are its refill rate.
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(10, 100, clock)
    out = drive(pacer, clock, bucket, 8, latency=0.1, workers=32)
    assert out.rejected and pacer.rate <= 10  # one pause after slow start, not one per cut of 0.85


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


# -- rule 4: quota ---------------------------------------------------------------------------------


def quota(remaining: int, reset: int) -> dict[str, str]:
    return {"RateLimit-Limit": "600", "RateLimit-Remaining": str(remaining), "RateLimit-Reset": str(reset)}


def test_a_quota_is_spread_over_the_time_to_its_reset() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.observe(send(pacer, clock), 200, quota(100, 20))  # 100 left for 20 s: 5 a second
    out = drive(pacer, clock, None, 10)
    assert 40 <= len(out.sent) <= 52


def test_a_spent_quota_holds_every_request_until_its_reset_without_a_429() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    first = send(pacer, clock)
    in_flight = [send(pacer, clock) for _ in range(3)]
    pacer.observe(first, 200, quota(3, 40))  # 3 left, and 3 requests already on their way
    assert pacer.try_acquire() is None and pacer.pause_remaining == pytest.approx(40.0)
    for ticket in in_flight:
        pacer.observe(ticket, 200, quota(0, 40))
    clock.now += 40.0
    assert pacer.try_acquire() is not None


def test_a_quota_resetting_within_seconds_is_left_to_the_429s() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.observe(send(pacer, clock), 200, quota(0, 1))  # a bucket's whole-second Reset
    assert pacer.paused_until is None and send(pacer, clock) is not None


def test_an_older_requests_quota_does_not_replace_a_newer_one() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    old, new = send(pacer, clock), send(pacer, clock)
    pacer.observe(new, 200, quota(500, 50))
    pacer.observe(old, 200, quota(0, 50))  # answered late: stale
    assert pacer.paused_until is None


# -- rule 5: max-wait ------------------------------------------------------------------------------


async def test_a_pause_beyond_max_wait_fails_at_once_per_request_and_per_run() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    limited(pacer, clock, "999999")
    with pytest.raises(WaitTooLong, match="in this run would add up to 11d13h, beyond --max-wait 15m00s"):
        await pacer.wait()  # the run's bound
    pacer = Pacer(clock=clock, max_wait=900.0)
    limited(pacer, clock, "600")
    with pytest.raises(WaitTooLong, match="asks to wait 10m00s more, beyond --max-wait 15m00s for one"):
        await pacer.wait(WaitBudget(300.0))  # this request's bound


# -- waiting: one wake-up per admitted request ----------------------------------------------------


class Sleeps:
    """Counts the pacer's sleeps (asyncio.sleep) while requests wait on it; latency sleeps not."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        self.real = asyncio.sleep

        async def counted(seconds: float) -> None:
            self.count += 1
            await self.real(seconds)

        monkeypatch.setattr(asyncio, "sleep", counted)


def run_workers(
    pacer: Pacer, clock: FakeClock, sleeps: Sleeps, seconds: float, workers: int = 32, **answers: int
) -> list[Ticket]:
    """`workers` requests in a loop for `seconds` of simulated time, each answered after 25 ms: 200, or
    429 (Retry-After 1) for the request numbered in `answers["refuse"]`."""
    sent: list[Ticket] = []
    end = clock.now + seconds

    async def worker() -> None:
        while clock.now < end:
            ticket = await pacer.wait()
            sent.append(ticket)
            await sleeps.real(0.025)
            refused = ticket.seq == answers.get("refuse")
            pacer.observe(ticket, 429 if refused else 200, {"Retry-After": "1"} if refused else {})

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    run_simulated(clock, main())
    return sent


def test_each_admitted_request_costs_one_sleep_however_many_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Slow start holds 32 requests back: were each to sleep until the next slot, all would wake at it
    # and all but one sleep again, 32 sleeps per request.
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    sleeps = Sleeps(monkeypatch)
    sent = run_workers(pacer, clock, sleeps, 4.0)
    assert len(sent) >= 250  # 20/s doubling each second: about 300 in 4 s
    assert sleeps.count <= 1.05 * len(sent)
    assert [t.seq for t in sent] == sorted(t.seq for t in sent)


def test_a_pause_costs_each_waiting_request_one_sleep_and_one_goes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    sleeps = Sleeps(monkeypatch)
    sent = run_workers(pacer, clock, sleeps, 4.0, refuse=60)
    refused = next(t for t in sent if t.seq == 60)
    after = [t for t in sent if t.sent > refused.sent + 0.025]
    assert after[0].first and after[0].sent == pytest.approx(refused.sent + 0.025 + 1.0)
    assert after[1].sent >= after[0].sent + 0.025  # the others waited for its answer
    # Per request one sleep; per pause one for each request waiting, and the polls of the one whose
    # turn it is while the first is out (0.025 s / POLL).
    assert sleeps.count <= 1.05 * len(sent) + 32 + 0.025 / Pacer.POLL + 1


def test_a_cancelled_waiter_does_not_hold_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    got: list[Ticket] = []

    async def main() -> None:
        send(pacer, clock)  # the next slot is 1/20 s away
        waiting = [asyncio.ensure_future(pacer.wait()) for _ in range(3)]
        await asyncio.sleep(0.01)  # the first one's turn: it sleeps until the slot; the others queue
        waiting[0].cancel()
        waiting[1].cancel()  # queued: leaves the queue
        got.append(await waiting[2])
        assert waiting[0].cancelled() and waiting[1].cancelled()

    start = clock.now
    run_simulated(clock, main())
    assert got[0].sent == pytest.approx(start + 1 / Pacer.START)


def test_requests_waiting_their_turn_when_a_pause_begins_each_judge_it_on_their_budget() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock, max_wait=900.0)
    outcomes: list[str] = []

    async def one(budget: float) -> None:
        try:
            await pacer.wait(WaitBudget(budget))
            outcomes.append(f"sent at +{clock.now - start:g}")
        except WaitTooLong:
            outcomes.append(f"gave up at +{clock.now - start:g}")

    async def main() -> None:
        first = send(pacer, clock)
        waiting = [asyncio.ensure_future(one(budget)) for budget in (5.0, 500.0, 5.0)]
        await asyncio.sleep(0.001)  # all three wait for a slot, in turn
        pacer.observe(first, 429, {"Retry-After": "300"})
        await asyncio.gather(*waiting)

    start = clock.now
    run_simulated(clock, main())
    assert sorted(outcomes) == ["gave up at +0.05", "gave up at +0.05", "sent at +300.001"]


# -- per limiter shape, in simulated time -----------------------------------------------------------


def shape(name: str, rate: float, clock: FakeClock) -> Limiter:
    """A limiter admitting `rate` requests/s on average; windows start 0.4 s (or 24 s) from now."""
    if name.startswith("bucket"):
        return TokenBucket(rate, int(name.removeprefix("bucket")), clock)
    window = 1.0 if name == "second" else 60.0
    return FixedWindow(round(rate * window), window, lambda: clock.now + window * 0.6 - 1000.0)


SHAPES = [
    ("bucket10", 50.0),
    ("bucket100", 20.0),
    ("bucket1", 20.0),
    ("second", 60.0),
    ("minute", 10.0),
]


@pytest.mark.parametrize(("name", "rate"), SHAPES)
@pytest.mark.parametrize("retry_after", ["seconds", "date", "none"])
def test_the_pace_settles_under_each_limiter_shape_with_few_429s(
    name: str, rate: float, retry_after: str
) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    seconds = 300.0 if name == "minute" else 90.0
    out = drive(pacer, clock, shape(name, rate, clock), seconds, retry_after=retry_after, jitter=0.001)
    assert out.rejected < 0.03 * len(out.sent)
    if name != "minute":  # a window of a minute takes any pace up to its quota
        assert 0.7 * rate <= out.count(clock.now - 30, clock.now) / 30 <= 1.05 * rate
    assert out.succeeded >= 0.8 * rate * seconds  # within the target of 1.25 x requests / limit


@pytest.mark.parametrize("headers", ["ratelimit", "x-ratelimit", "structured"])
@pytest.mark.parametrize(("name", "rate"), [("minute", 10.0), ("bucket100", 20.0)])
def test_quota_headers_in_every_form_spare_the_429s(headers: str, name: str, rate: float) -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    out = drive(pacer, clock, shape(name, rate, clock), 200.0, headers=headers)
    assert out.rejected <= 0.01 * len(out.sent)
    assert out.succeeded >= 0.8 * rate * 200.0


def test_pace_follows_a_limit_that_drops_and_rises() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    bucket = TokenBucket(100, 10, clock)
    drive(pacer, clock, bucket, 30)
    bucket.rate = 50
    drop = drive(pacer, clock, bucket, 30)
    after_drop = drop.count(clock.now - 15, clock.now) / 15
    assert after_drop <= 51 and drop.rejected <= 5  # under the new limit, a few 429s to learn it
    bucket.rate = 150
    rise = drive(pacer, clock, bucket, 180)  # found again by the climb, 1% a second
    assert rise.count(clock.now - 15, clock.now) / 15 >= 2 * after_drop and rise.rejected <= 5


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
    assert refused == client.stats.rate_limited
    assert refused < 0.03 * sim.stats["requests"]
    if limiter != "minute":  # within a minute's window any pace is taken until its quota is spent
        assert 0.5 * rate <= client.pacer.rate <= 1.25 * rate  # the pace learned


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
    # Failed at once, not after waiting and asking again. The usage phase runs alongside and its
    # routes' 429s pause nothing: which of the two goes first is the order they asked in.
    assert sim.stats["by_endpoint"]["pipelines"] == 1
    assert sim.stats["by_endpoint"]["usage_create"] <= 1
    assert sim.stats["status"].get("429") == sim.stats["requests"] - 1  # all but the first refused


def test_a_wake_up_late_by_a_timer_tick_keeps_its_slot_idle_time_earns_no_burst() -> None:
    """Event loops round sleeps up to the millisecond: a request admitted up to LATE after its slot keeps
    the pace's timeline (the next slot is one interval after the missed one), while a request after idle
    time starts a new one (the next slot is one interval after it)."""
    now = [0.0]
    pacer = Pacer(max_rps=100.0, clock=lambda: now[0])
    pacer.rate = 100.0  # 10 ms a slot
    assert pacer.try_acquire() is not None
    now[0] = 0.010 + Pacer.LATE * 0.8  # the next slot, woken a little late
    assert pacer.try_acquire() is not None
    now[0] = 0.020
    assert pacer.try_acquire() is not None, "the late wake-up did not push the next slot back"
    now[0] = 1.0  # idle for most of a second
    assert pacer.try_acquire() is not None
    assert pacer.try_acquire() is None, "idle time earned a burst"
    now[0] = 1.010
    assert pacer.try_acquire() is not None
