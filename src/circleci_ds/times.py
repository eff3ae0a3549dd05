"""The one home for time: parsing API timestamps, user dates and durations, and writing ISO-8601.

Rules:
- Instants are epoch seconds (float) everywhere inside the program; UTC only.
- Reading an API timestamp is total: anything that is not an ISO-8601 text naming an instant
  between 0001-01-01 and 9999-12-31 UTC (a number, a word, `9999-12-31T23:59:59-01:00`, which is
  in year 10000 once in UTC, NaN, None) reads as None. Raw data is kept as sent; derived data
  gets null, and `TimeReader` counts what could not be read so callers can warn.
- A timestamp without a zone is UTC.
- Written timestamps are `2026-11-01T10:00:00Z`, with `.123` milliseconds only when there are some
  (or never, with `ms=False`). Text already in that form is passed through unchanged (`stamp`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

DAY = 86400.0
WEEK = 7 * DAY
MIN_EPOCH = datetime(1, 1, 1, tzinfo=UTC).timestamp()
MAX_EPOCH = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")


def in_range(epoch: float | None) -> bool:
    """Whether an epoch can be shown as a date (years 1 to 9999 UTC); False for None and NaN."""
    return epoch is not None and not math.isnan(epoch) and MIN_EPOCH <= epoch <= MAX_EPOCH


def parse_ts(value: object) -> float | None:
    """Epoch seconds of an API timestamp (`2026-11-01T10:00:00Z`, `...:00.123+02:00`); None if unreadable."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    return _parse_text(value)


@lru_cache(maxsize=4096)
def _parse_text(value: str) -> float | None:
    # Cached: a tree names most of its instants several times (job list, job details, workflow),
    # and each is read by more than one rule.
    try:
        parsed = datetime.fromisoformat(value[:-1] if value[-1] in "Zz" else value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        epoch = (parsed - _EPOCH).total_seconds()  # no overflow, unlike astimezone() near year 1 or 9999
    except (ValueError, TypeError, OverflowError):
        return None
    return epoch if in_range(epoch) else None


def iso(epoch: float | None, *, ms: bool = True) -> str | None:
    """`2026-11-01T10:00:00Z`, or `...:00.123Z` when there are milliseconds (and `ms`); None if not a date."""
    if epoch is None or not in_range(epoch):
        return None
    try:
        moment = (_EPOCH + timedelta(seconds=round(epoch, 3))).replace(tzinfo=None)
    except OverflowError:  # rounding up past 9999-12-31T23:59:59.999
        return None
    if ms and moment.microsecond:
        return moment.isoformat(timespec="milliseconds") + "Z"
    return moment.isoformat(timespec="seconds") + "Z"


def stamp(value: object) -> tuple[float | None, str | None]:
    """(epoch, ISO-8601 UTC text) of an API timestamp; text already in canonical form is kept as is."""
    epoch = parse_ts(value)
    if epoch is None:
        return None, None
    if isinstance(value, str) and _CANONICAL.match(value):
        return epoch, value
    return epoch, iso(epoch)


def seconds_between(start: float | None, end: float | None) -> float | None:
    """end - start in seconds (to the millisecond); None when either is unknown."""
    if start is None or end is None:
        return None
    return round(end - start, 3)


def day_start(epoch: float) -> float:
    """The UTC midnight at or before the instant."""
    return epoch - epoch % DAY


def week_start(epoch: float) -> float:
    """The Monday 00:00 UTC at or before the instant (1970-01-01 was a Thursday)."""
    return epoch - (epoch + 3 * DAY) % WEEK


def date_text(epoch: float) -> str:
    """YYYY-MM-DD of the instant in UTC ("" when it is not a date)."""
    return (iso(day_start(epoch)) or "")[:10]


@dataclass
class TimeReader:
    """Reads API timestamps and counts those present but unreadable, for one warning at the end."""

    unreadable: int = 0

    def read(self, value: object) -> float | None:
        epoch = parse_ts(value)
        if epoch is None and value is not None and value != "":
            self.unreadable += 1
        return epoch


MAX_DURATION = 10 * 366 * 86400.0  # seconds: a longer duration from the API is not believed


def duration_ms(value: object) -> float | None:
    """A duration in milliseconds as the API gives it (job details' `duration`), or None when it is
    not a number, negative, not finite or past MAX_DURATION: such a value is absurd, and past a
    64-bit integer it would break every document and table built from it."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not 0 <= value <= MAX_DURATION * 1000:  # NaN fails too
        return None
    return float(value)


def parse_duration(text: str) -> float:
    """Seconds in `72h`, `3d`, `1d12h`, `90m`, `45s` or a bare number of seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 72h, 3d, 1d12h, 90m)")
    return sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)


def parse_date(text: str) -> float:
    """Epoch seconds of an ISO date or date-time given by a user (UTC when no zone is given)."""
    epoch = parse_ts(text.strip())
    if epoch is None:
        raise ValueError(f"not a date: {text!r} (use e.g. 2026-01-31 or 2026-01-31T12:00:00Z)")
    return epoch


def iso_ms(epoch: float | None) -> str | None:
    """ISO-8601 UTC with a `Z`, milliseconds only when there are some; None stays None (see iso)."""
    return iso(epoch)


def iso_text(value: object) -> str | None:
    """An API timestamp as ISO-8601 UTC; text already in that form is kept as is (see stamp)."""
    return stamp(value)[1]


def parse_moment(value: object) -> datetime | date | None:
    """A whole day (`2024-01-31`) or a date-time (`2024-01-31T12:00:00Z`, UTC unless zoned) as given
    in a file (YAML gives date and datetime objects, JSON text); ValueError for anything else."""
    if value is None or isinstance(value, datetime | date):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a date (2024-01-31) or a date-time (2024-01-31T12:00:00Z)")
    text = value.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date or date-time: {value!r}") from None


def epoch_of(moment: datetime | date | None, *, day_end: bool = False) -> float | None:
    """Epoch seconds of a date-time (UTC unless zoned) or of a whole day's start, or with `day_end`
    of its end (the next midnight, excluded)."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        return (start + timedelta(days=1) if day_end else start).timestamp()
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
