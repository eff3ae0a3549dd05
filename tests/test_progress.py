"""Progress people can read: per endpoint what is known, the pace, and any pause in force."""

from __future__ import annotations

from circleci_ds.client.http import ClientStats
from circleci_ds.collect.collector import Counters, EndpointProgress, Phase
from circleci_ds.collect.progress import RequestRate, active_lines, client_line, endpoint_line, pause_left


def test_progress_shows_per_endpoint_what_is_known() -> None:
    p = EndpointProgress("gh/acme/api", Phase.LISTING, probed=6, signaled=2, listed=40, to_read=12)
    p.stored, p.open_read, p.failed = 9, 3, 1
    assert endpoint_line(p) == (
        "gh/acme/api: listing and reading | 6 job numbers probed, 2 rerun(s) | 40 listed "
        "| 9/12 stored (3 open) | 1 failed"
    )
    assert endpoint_line(EndpointProgress("gh/acme/web", Phase.WALKING)) == "gh/acme/web: looking for reruns"


def test_progress_lists_only_endpoints_in_progress() -> None:
    counters = Counters(endpoints_total=3)
    counters.endpoints = {
        "a": EndpointProgress("a", Phase.DONE),
        "b": EndpointProgress("b", Phase.READING),
        "c": EndpointProgress("c", Phase.WAITING),
    }
    assert active_lines(counters) == ["b: reading stored ones | 0 listed"]
    counters.endpoints.update({str(i): EndpointProgress(str(i), Phase.WALKING) for i in range(10)})
    assert active_lines(counters, limit=4)[-1] == "… and 7 more endpoint(s) in progress"


def test_progress_shows_requests_per_second_429s_and_the_pause_left() -> None:
    stats = ClientStats(requests=120, rate_limited=3, retries=4)
    counters = Counters(endpoints_total=2, endpoints_done=1)
    assert client_line(counters, stats, 40.4, 0.0) == (
        "endpoints 1/2 | requests 120 (40/s) | 429s 3 | retries 4"
    )
    assert client_line(counters, stats, 0.0, 12.6).endswith("| paused by the server, 13s left")


def test_progress_reads_the_pause_whatever_the_pacer_calls_it() -> None:
    class Public:
        paused_until = 110.0

    class Private:
        _paused_until = 104.0

    assert pause_left(Public(), now=100.0) == 10.0
    assert pause_left(Private(), now=100.0) == 4.0
    assert pause_left(object(), now=100.0) == 0.0
    assert pause_left(Public(), now=200.0) == 0.0


def test_progress_requests_per_second_over_a_window() -> None:
    rate = RequestRate(window=5.0)
    assert rate.sample(0, 0.0) == 0.0
    assert rate.sample(50, 1.0) == 50.0
    assert rate.sample(100, 2.0) == 50.0
    rate.sample(100, 10.0)
    assert rate.sample(100, 11.0) == 0.0  # nothing in the last seconds
