"""The `--credit-rates` file: a YAML mapping of resource class to credits per minute.

It replaces or adds entries of the shipped table (circleci_ds.derive.credit_rates); read bounded and
parsed guarded like every file people write.
"""

from __future__ import annotations

import math
from pathlib import Path

from circleci_ds.inputs.yamlfile import parse, read_text

LIMIT = 64 * 1024


class RatesError(Exception):
    """The rates file cannot be used; the message names it."""


def load_rates(path: Path) -> dict[str, float]:
    """Resource class -> credits per minute (a finite number, zero or more)."""
    data, _ = parse(path, read_text(path, LIMIT, RatesError, "credit rates"), RatesError)
    if not isinstance(data, dict) or not data:
        raise RatesError(f"{path}: expected a mapping of resource class to credits per minute")
    rates: dict[str, float] = {}
    for name, value in data.items():
        if not isinstance(name, str) or not name or len(name) > 100:
            raise RatesError(f"{path}: a resource class must be a name of at most 100 characters")
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < 0:
            raise RatesError(f"{path}: {name!r}: credits per minute must be a number >= 0")
        rates[name] = float(value)
    return rates
