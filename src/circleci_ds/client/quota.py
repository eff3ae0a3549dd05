"""What a server's answer says about its rate limit, read from its headers (pure; every value hostile).

- `parse_retry_after`: `Retry-After` as delta-seconds or an HTTP date (against the answer's own `Date`).
- `parse_quota`: the quota left and when it is whole again, in every form servers use: `RateLimit-*`
  (the IETF draft up to its 6th version), `X-RateLimit-*` (GitHub's), `X-Rate-Limit-*` (Twitter's),
  the reset as seconds or as an epoch; the draft's structured `RateLimit` field with its
  `RateLimit-Policy` (since its 8th version) or as a dictionary (its 7th).
- `parse_http_date`: epoch seconds of an HTTP date.

A value that is absent, malformed or out of range reads as None: the caller goes on without it.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any

import http_sf


@dataclass(frozen=True, slots=True)
class Quota:
    """What quota headers said: `remaining` requests until `reset` seconds from the response."""

    limit: int | None
    remaining: int
    reset: float


@functools.lru_cache(maxsize=16)  # a server's Date changes once a second; parsing it is slow
def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP date, or None if absent or unreadable."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_retry_after(value: str | None, server_date: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), at least 0; None when
    absent or unreadable. A date is measured against the response's own `Date` (so local clock skew
    does not matter), else against local time. No upper cap here: `max_wait` bounds what is waited."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        target = parse_http_date(value)
        if target is None:
            return None
        base = parse_http_date(server_date)
        seconds = target - (base if base is not None else time.time())
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def parse_quota(headers: Mapping[str, str], server_date: str | None) -> Quota | None:
    """The quota a response reports, in any of the forms servers use; None if absent or malformed:
    - `RateLimit-Remaining` / `-Reset` (seconds), else `X-RateLimit-*` or `X-Rate-Limit-*` (seconds, or an
      epoch when larger than a year's seconds, measured against `Date`), with an optional `-Limit`;
    - else the IETF draft's structured `RateLimit` field (`_structured_quota`)."""
    for prefix in ("RateLimit-", "X-RateLimit-", "X-Rate-Limit-"):
        remaining = _count(headers.get(prefix + "Remaining"))
        reset = _seconds(headers.get(prefix + "Reset"))
        if remaining is None or reset is None:
            continue
        if reset > 365 * 86400:  # an epoch
            base = parse_http_date(server_date)
            reset = max(0.0, reset - (base if base is not None else time.time()))
        return Quota(_count(headers.get(prefix + "Limit")), remaining, reset)
    return _structured_quota(headers)


def _structured_quota(headers: Mapping[str, str]) -> Quota | None:
    """The IETF draft's `RateLimit` field, a Structured Field (RFC 9651) in either of its shapes:
    - since draft 08, a list of policies' service limits, `"name";r=REMAINING;t=SECONDS`, each policy's
      quota in `RateLimit-Policy` (`"name";q=QUOTA;w=WINDOW`): the policy with the least remaining is
      the one that binds; one without `t` says nothing of when it refills and is left to the 429s;
    - in draft 07, a dictionary `limit=L, remaining=R, reset=SECONDS`.
    `t` and `reset` may be fractional (the draft says integers; other forms' resets often are not)."""
    field = _field(headers, "RateLimit")
    if field is None:
        return None
    old = _sf_parse(field, "dictionary")
    if old is not None and (quota := _quota(old.get("limit"), old.get("remaining"), old.get("reset"))):
        return quota
    policies = dict(_sf_items(_field(headers, "RateLimit-Policy")))
    quotas = [
        _quota(policies.get(name, {}).get("q"), params.get("r"), params.get("t"))
        for name, params in _sf_items(field)
    ]
    known = [quota for quota in quotas if quota is not None]
    return min(known, key=lambda quota: (quota.remaining, -quota.reset), default=None)


def _quota(limit: Any, remaining: Any, reset: Any) -> Quota | None:
    """A quota from Structured Field values: integers at least 0 (a member is `(value, parameters)`; a
    boolean is no integer), the reset an integer or a decimal; None without remaining or reset."""
    limit, remaining, reset = (v[0] if isinstance(v, tuple) else v for v in (limit, remaining, reset))
    if type(remaining) is not int or remaining < 0 or type(reset) not in (int, Decimal) or reset < 0:
        return None
    return Quota(limit if type(limit) is int and limit >= 0 else None, remaining, float(reset))


def _field(headers: Mapping[str, str], name: str) -> str | None:
    """A field's value, its lines joined as RFC 9110 joins a list's (a multidict's lines, or the one)."""
    getall = getattr(headers, "getall", None)
    lines = getall(name, []) if getall is not None else [v] if (v := headers.get(name)) is not None else []
    value = ", ".join(lines)
    return value if lines and len(value) <= 4096 else None


def _sf_parse(value: str, kind: str) -> Any:
    try:
        return http_sf.parse(value.encode("ascii"), tltype=kind)
    except (ValueError, UnicodeEncodeError):
        return None


def _sf_items(value: str | None) -> list[tuple[str, dict[str, Any]]]:
    """A Structured Field list's items as (name, parameters); names are strings or tokens."""
    parsed = _sf_parse(value, "list") if value is not None else None
    items = []
    for member in parsed or []:
        name, params = member if isinstance(member, tuple) else (None, {})
        if isinstance(name, (str, http_sf.Token)) and isinstance(params, dict):
            items.append((str(name), params))
    return items


def _count(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 12:
        return None
    return int(value.strip())


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None and len(value) < 32 else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None
