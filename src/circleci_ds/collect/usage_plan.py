"""Rules of the usage phase, as pure functions: which windows to export, and what the limits allow.

- Windows end at or before the last UTC midnight (the data is refreshed daily through the previous full
  day, so a window ending there is stable) and span at most 31 x 24 h.
- A first run covers the year the API keeps: from the last midnight back 365 days (a start older than
  now - 366 days is refused, and now is up to a day past the last midnight).
- Later runs export what no stored export covers in that year (windows refused or failed before, days
  since the last export), plus the two days before the newest export's end again (late rows).
- Newest window first: the recent days matter most, and the POST limit may stop the run before the rest.
- Limits are counted on the server's clock over a sliding window: at most `limit` requests in any
  `window` seconds, whichever run sent them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DAY = 86400.0
MAX_WINDOW = 31 * DAY
HISTORY = 365 * DAY
LATE_DAYS = 2 * DAY
MIN_GAP = 1.0  # seconds: coverage gaps smaller than this are nothing to export

Window = tuple[float, float]  # (start, end) epoch seconds, both inclusive


@dataclass(frozen=True)
class Limit:
    count: int
    window: float  # seconds


POST_LIMIT = Limit(10, 3600.0)  # per organisation: every source agrees
GET_LIMIT = Limit(10, 60.0)  # per organisation: sources say 10 an hour or a minute; 429s say the rest


def last_midnight(now: float) -> float:
    return now - now % DAY


def windows_to_export(now: float, covered: Iterable[Window], pending: Iterable[Window]) -> list[Window]:
    """Windows still to export, newest first: the year up to the last midnight less what stored exports
    cover (`covered`) and what exports in flight will (`pending`); the two days before the newest
    covered end are exported again."""
    end = last_midnight(now)
    floor = end - HISTORY
    covered = sorted(covered)
    holes = _subtract([(floor, end)], covered)
    if covered:
        newest = max(e for _, e in covered)
        holes.append((max(floor, min(newest, end) - LATE_DAYS), end))
    needed = _subtract(_union(holes), sorted(pending))
    windows: list[Window] = []
    for start, stop in needed:
        if stop - start < MIN_GAP:
            continue
        while stop - start > MAX_WINDOW:
            windows.append((stop - MAX_WINDOW, stop))
            stop -= MAX_WINDOW
        windows.append((start, stop))
    return sorted(windows, key=lambda w: w[1], reverse=True)


def _union(intervals: Sequence[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _subtract(intervals: Sequence[Window], cuts: Sequence[Window]) -> list[Window]:
    """`intervals` less every interval of `cuts`."""
    out: list[Window] = []
    for start, end in intervals:
        pieces = [(start, end)]
        for c_start, c_end in cuts:
            next_pieces = []
            for p_start, p_end in pieces:
                if c_end <= p_start or c_start >= p_end:
                    next_pieces.append((p_start, p_end))
                    continue
                if c_start > p_start:
                    next_pieces.append((p_start, c_start))
                if c_end < p_end:
                    next_pieces.append((c_end, p_end))
            pieces = next_pieces
        out += [p for p in pieces if p[1] - p[0] >= MIN_GAP]
    return out


def allowed_now(sent: Sequence[float], now: float, limit: Limit) -> int:
    """How many more requests the limit admits at `now`, given when earlier ones were sent."""
    recent = sum(1 for at in sent if at > now - limit.window)
    return max(0, limit.count - recent)


def next_slot(sent: Sequence[float], now: float, limit: Limit) -> float:
    """When the next request may go: now if the limit admits one, else when the oldest counted leaves."""
    recent = sorted(at for at in sent if at > now - limit.window)
    if len(recent) < limit.count:
        return now
    return recent[len(recent) - limit.count] + limit.window
