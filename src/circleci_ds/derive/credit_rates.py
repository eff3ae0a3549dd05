"""Credits per minute of CircleCI's cloud resource classes, shipped as dated data.

Used for two things only: the **estimated** cost when the organisation's Usage API export is not
available (resource class x duration x parallelism), and the right-sizing savings (the ratio of the
suggested class's rate to the current one's). Real credits always come from the usage export.

Source: CircleCI's public price list of compute resource classes (credits per minute),
https://circleci.com/pricing/price-list/ (linked from https://circleci.com/pricing/#compute-options-table),
recorded on RATES_DATE; docs/cost.md says which entries were checked against it. Prices change:
`report --credit-rates FILE` replaces or adds entries (a YAML mapping of resource class to credits per
minute).

Each family lists its classes from the smallest to the largest; "the next smaller class" of a class is
the one before it in its family. A class name that several executors share (`medium` is both a Docker
and a Linux VM class) belongs to the first family that lists it (Docker): the rates agree for the
shared names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

RATES_DATE = "2026-12-07"
RATES_SOURCE = "https://circleci.com/pricing/price-list/"

# family -> ((class, credits per minute), ...) smallest first
FAMILIES: Mapping[str, tuple[tuple[str, float], ...]] = MappingProxyType(
    {
        "docker": (
            ("small", 5),
            ("medium", 10),
            ("medium+", 15),
            ("large", 20),
            ("xlarge", 40),
            ("2xlarge", 80),
            ("2xlarge+", 100),
        ),
        "arm": (("arm.medium", 10), ("arm.large", 20), ("arm.xlarge", 40), ("arm.2xlarge", 80)),
        "machine": (
            ("linux.medium", 10),
            ("linux.large", 20),
            ("linux.xlarge", 40),
            ("linux.2xlarge", 80),
            ("linux.2xlarge+", 160),
        ),
        "windows": (
            ("windows.medium", 40),
            ("windows.large", 120),
            ("windows.xlarge", 210),
            ("windows.2xlarge", 500),
        ),
        "macos": (("macos.m1.medium.gen1", 150), ("macos.m1.large.gen1", 250)),
        "m2pro": (("m2pro.medium", 150), ("m2pro.large", 200)),
        "m4pro": (("m4pro.medium", 200), ("m4pro.large", 400)),
    }
)


@dataclass(frozen=True)
class CreditRates:
    """Credits per minute by resource class, and each class's next smaller one."""

    per_minute: dict[str, float]
    smaller: dict[str, str] = field(default_factory=dict)
    date: str = RATES_DATE
    source: str = RATES_SOURCE

    def rate(self, resource_class: str | None) -> float | None:
        return None if resource_class is None else self.per_minute.get(resource_class)

    def next_smaller(self, resource_class: str | None) -> str | None:
        return None if resource_class is None else self.smaller.get(resource_class)

    def with_overrides(self, overrides: Mapping[str, float], source: str) -> CreditRates:
        """These rates with some replaced or added (family order unchanged)."""
        return CreditRates({**self.per_minute, **overrides}, dict(self.smaller), self.date, source)


def shipped_rates() -> CreditRates:
    per_minute: dict[str, float] = {}
    smaller: dict[str, str] = {}
    for classes in FAMILIES.values():
        for i, (name, rate) in enumerate(classes):
            if name in per_minute:
                continue
            per_minute[name] = float(rate)
            if i > 0:
                smaller[name] = classes[i - 1][0]
    return CreditRates(per_minute, smaller)
