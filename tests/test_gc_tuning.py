"""The cycle collector's thresholds while collecting, and after."""

from __future__ import annotations

import gc

import pytest

from circleci_ds.collect.gc_tuning import YOUNG, fewer_gc_passes


def test_the_young_generation_is_walked_less_often_inside_and_as_before_after() -> None:
    before = gc.get_threshold()
    with pytest.raises(KeyError), fewer_gc_passes():
        assert gc.get_threshold() == (YOUNG, *before[1:])
        raise KeyError("a run that fails")
    assert gc.get_threshold() == before


def test_cyclic_garbage_is_still_collected_inside() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    with fewer_gc_passes():
        for _ in range(YOUNG // 10 * 12):  # past one young threshold's worth of containers
            Node()
        left = sum(isinstance(o, Node) for o in gc.get_objects())
    assert left < YOUNG
