"""Server-side rate limiters of several shapes, over real time, shared by all rate-limited requests.

- `TokenBucket(rate, burst)`: refills `rate` tokens per second up to `burst`; a request takes one.
- `FixedWindow(limit, window)`: at most `limit` requests per window of `window` seconds; windows are
  aligned on the clock (every whole second or minute), as counters keyed by the current second or
  minute are.

Each `take()` answers with a `Decision`: whether the request is admitted, how long until one would be,
and the quota a server reports in `RateLimit-*` headers (for a bucket: its size, the whole tokens left,
and the seconds until it is full again; its `window`, the seconds it takes to fill from empty).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Decision:
    wait: float  # 0.0 if admitted, else seconds until a request would be
    limit: int  # the quota: bucket size or requests per window
    remaining: int  # requests left in the quota after this one
    reset: float  # seconds until the quota is whole again
    window: float  # seconds the whole quota is granted over: a window's length, a bucket's fill from empty

    @property
    def admitted(self) -> bool:
        return self.wait <= 0.0


class Limiter(Protocol):
    def take(self) -> Decision: ...


class TokenBucket:
    """Refills `rate` tokens per second up to `burst`; each admitted request takes one token."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> Decision:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        wait = 0.0
        if self._tokens >= 1.0:
            self._tokens -= 1.0
        else:
            wait = (1.0 - self._tokens) / self.rate
        reset = (self.burst - self._tokens) / self.rate
        return Decision(wait, self.burst, math.floor(self._tokens), reset, self.burst / self.rate)


class FixedWindow:
    """At most `limit` requests in each clock-aligned window of `window` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._start = -math.inf
        self._used = 0

    def take(self) -> Decision:
        now = self._clock()
        start = now - now % self.window
        if start != self._start:
            self._start, self._used = start, 0
        reset = start + self.window - now
        if self._used < self.limit:
            self._used += 1
            return Decision(0.0, self.limit, self.limit - self._used, reset, self.window)
        return Decision(reset, self.limit, 0, reset, self.window)


def make_limiter(shape: str, rate: float, burst: int) -> Limiter:
    """`bucket`: TokenBucket(rate, burst); `second` / `minute`: a fixed window admitting rate x its length."""
    if shape == "bucket":
        return TokenBucket(rate, burst)
    window = 1.0 if shape == "second" else 60.0
    return FixedWindow(max(1, round(rate * window)), window)
