"""The cycle collector's thresholds while collecting.

CPython frees an object when its last reference goes; its cycle collector only finds garbage that
refers to itself. It walks the young objects every 700 new containers by default: every few requests
here, as each parsed answer is hundreds of dicts and lists, which die by reference count anyway. The
collector makes almost no cycles, so those walks find next to nothing; walking every 50,000 containers
cuts the collector's CPU in them about tenfold (docs/benchmarks-collect.md); garbage in a cycle
waits for at most 50,000 new containers instead of 700 before it is freed.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG = 50_000  # new containers between two walks of the young generation


@contextmanager
def fewer_gc_passes() -> Iterator[None]:
    """Walk the young generation every YOUNG new containers inside, as before outside."""
    before = gc.get_threshold()
    gc.set_threshold(YOUNG, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
