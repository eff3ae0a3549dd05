"""Small time helpers shared by the collector, the store and the CLI."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_ts(value: object) -> float | None:
    """Epoch seconds of an API timestamp (`2026-11-01T10:00:00Z`, with or without ms); None if absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso(epoch: float | None) -> str | None:
    """`2026-11-01T10:00:00Z` (UTC, whole seconds) or None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """Epoch seconds of an ISO date or date-time (UTC when no zone is given)."""
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use e.g. 2026-01-31 or 2026-01-31T12:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def iso_ms(epoch: float | None) -> str | None:
    """ISO-8601 UTC with a `Z`, milliseconds only when there are some; None stays None."""
    if epoch is None:
        return None
    seconds, ms = divmod(round(epoch * 1000), 1000)  # rounded: 0.123 is not 0.12299999
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


_CANONICAL = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z\Z")


def iso_text(value: object) -> str | None:
    """An API timestamp as ISO-8601 UTC (see iso_ms); text already in that form is kept as is."""
    if isinstance(value, str) and _CANONICAL.match(value):
        return value
    return iso_ms(parse_ts(value))
