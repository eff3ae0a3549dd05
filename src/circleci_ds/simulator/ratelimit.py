"""Token bucket over real (monotonic) time, shared by all rate-limited requests."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Refills `rate` tokens per second up to `burst`; each granted request takes one token."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> float:
        """0.0 if a token was taken, else the seconds until one will be available."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
