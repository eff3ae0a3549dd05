"""Human formatting of metric values, shared by the terminal tables and the HTML page."""

from __future__ import annotations

DASH = "—"


def seconds(value: float | None) -> str:
    """`850ms`, `12.3s`, `4m 05s`, `2h 03m`, `3d 4h`; a dash when unknown."""
    if value is None:
        return DASH
    if value < 1:
        return f"{value * 1000:.0f}ms"
    if value < 60:
        return f"{value:.1f}s"
    whole = round(value)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"


def percent(value: float | None) -> str:
    return DASH if value is None else f"{value * 100:.1f}%"


def rate(value: float | None) -> str:
    """Runs per day."""
    return DASH if value is None else f"{value:.2f}/day"


def number(value: float | None) -> str:
    return DASH if value is None else f"{value:,.2f}"


def count(value: int | None) -> str:
    return DASH if value is None else f"{value:,}"


def short_sha(sha: str | None) -> str:
    return sha[:8] if sha else DASH


def text(value: str | None) -> str:
    """API text as is, or a dash when missing."""
    return DASH if value is None or value == "" else value


def branch(value: str | None) -> str:
    return "all branches" if value is None else value

