"""The ids and numbers taken from the API, checked once where they enter.

Rules:
- An id is a non-empty string of at most MAX_ID characters (CircleCI's are 36-character UUIDs; the
  store's id columns hold 64).
- A job or pipeline number is an integer in [0, MAX_NUMBER]: CircleCI numbers the jobs of a project
  one by one, and the busiest projects are in the millions; 2**31 - 1 leaves three orders of magnitude
  and fits every integer column.
- Job details must carry the `number` asked for; details that name another are refused (the job
  they were asked for fails alone, and the number they name is never believed).
"""

from __future__ import annotations

from typing import Any

MAX_ID = 64  # characters
MAX_NUMBER = 2**31 - 1


def is_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID


def is_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_NUMBER


def details_problem(details: dict[str, Any], asked: int) -> str | None:
    """Why job details answered for job `asked` cannot be used; None when they can."""
    number = details.get("number")
    if number != asked or not is_number(number):
        return f"details of job {asked} name job number {_shown(number)}"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
