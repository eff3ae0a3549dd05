"""What a collection shows while it runs.

Per endpoint, what is known as it becomes known: job numbers probed and reruns found, pipelines
listed, picked for reading and stored, open ones read again, items that failed. For the client:
requests and requests per second, 429s, and a pause in force with the time it has left. Endpoint
names come from the fixture and are shown as text, never as markup.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from circleci_ds.collect.collector import Counters, EndpointProgress, Phase

ACTIVE = (Phase.WALKING, Phase.LISTING, Phase.READING)


class RequestRate:
    """Requests per second over the last `window` seconds, from samples of a growing count."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def sample(self, count: int, now: float) -> float:
        self._samples.append((now, count))
        while len(self._samples) > 2 and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        first_at, first = self._samples[0]
        span = now - first_at
        return (count - first) / span if span > 0 else 0.0


def pause_left(pacer: object, now: float | None = None) -> float:
    """Seconds left of a pause the pacer holds every request for; 0 when none.

    Read defensively: the pacer's attribute may be public (`paused_until`) or not (yet)."""
    until = getattr(pacer, "paused_until", None)
    if until is None:
        until = getattr(pacer, "_paused_until", None)
    if not isinstance(until, int | float):
        return 0.0
    now = time.monotonic() if now is None else now
    return max(0.0, float(until) - now)


def endpoint_line(p: EndpointProgress) -> str:
    """`gh/acme/api: reading | 40 numbers probed, 2 reruns | 120 listed | 35/40 stored (5 open) | 1 failed`"""
    parts = [f"{p.name}: {p.phase.value}"]
    if p.probed:
        parts.append(f"{p.probed} job numbers probed, {p.signaled} rerun(s)")
    if p.listed or p.phase in (Phase.LISTING, Phase.READING):
        parts.append(f"{p.listed} listed")
    if p.to_read or p.stored:
        opened = f" ({p.open_read} open)" if p.open_read else ""
        parts.append(f"{p.stored}/{p.to_read} stored{opened}")
    if p.failed:
        parts.append(f"{p.failed} failed")
    return " | ".join(parts)


def client_line(counters: Counters, stats: Any, rate: float, paused: float) -> str:
    """Endpoints done, requests (per second), 429s, retries and any pause in force."""
    line = (
        f"endpoints {counters.endpoints_done}/{counters.endpoints_total} | requests {stats.requests} "
        f"({rate:.0f}/s) | 429s {stats.rate_limited} | retries {stats.retries}"
    )
    if paused > 0:
        line += f" | paused by the server, {paused:.0f}s left"
    return line


def active_lines(counters: Counters, limit: int = 8) -> list[str]:
    """Lines of the endpoints being collected now (at most `limit`, then a count of the rest)."""
    active = [p for p in counters.endpoints.values() if p.phase in ACTIVE]
    lines = [endpoint_line(p) for p in active[:limit]]
    if len(active) > limit:
        lines.append(f"… and {len(active) - limit} more endpoint(s) in progress")
    return lines

