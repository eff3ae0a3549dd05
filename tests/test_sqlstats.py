"""The SQL statistics helpers agree with the same statistics computed in memory, on both backends.

By hand: values 1..21 in one group -> p50 = 11, p95 at rank 20 * 0.95 = 19 (exactly; a float product
gives 18.999..., the database and Python must still pick the same ranks) -> 20.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Double, Engine, Integer, MetaData, String, Table, create_engine, insert, select

from circleci_ds.metrics.sqlstats import moments, percentile, percentiles
from circleci_ds.store.urls import engine_url

QS = (0.0, 0.5, 0.9, 0.95, 1.0)
meta = MetaData()
values = Table("values_", meta, Column("g", String(10)), Column("v", Double), Column("i", Integer))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    made = create_engine(engine_url(db_url))
    meta.create_all(made)
    yield made
    made.dispose()


def load(engine: Engine, rows: list[tuple[str, float | None]]) -> None:
    with engine.begin() as conn:
        conn.execute(values.delete())
        if rows:
            conn.execute(insert(values), [{"g": g, "v": v, "i": i} for i, (g, v) in enumerate(rows)])


def test_percentiles_by_hand(engine: Engine) -> None:
    load(engine, [("a", float(v)) for v in range(21, 0, -1)] + [("b", None)])
    with engine.connect() as conn:
        got = percentiles(conn, select(values.c.g, values.c.v), ("g",), "v", (0.5, 0.95))
    assert got == {("a",): {0.5: 11.0, 0.95: 20.0}}  # group b has no value: absent


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from("xyz"), st.one_of(st.none(), st.floats(-1e6, 1e6).map(lambda f: round(f, 3)))
        ),
        max_size=60,
    )
)
def test_percentiles_match_memory(engine: Engine, rows: list[tuple[str, float | None]]) -> None:
    load(engine, rows)
    with engine.connect() as conn:
        got = percentiles(conn, select(values.c.g, values.c.v), ("g",), "v", QS)
    groups = {g for g, v in rows if v is not None}
    assert set(got) == {(g,) for g in groups}
    for g in groups:
        ordered = sorted(v for h, v in rows if h == g and v is not None)
        for q in QS:
            assert got[(g,)][q] == pytest.approx(percentile(ordered, q), abs=1e-6)


def test_moments_by_hand() -> None:
    assert moments(4, 20.0, 120.0) == (5.0, pytest.approx(5**0.5))  # 2 4 6 8
    assert moments(0, None, None) == (None, None)
