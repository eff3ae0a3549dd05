"""Leases: which collector works on which endpoint, judged by one clock, the database's.

Rules:
- A lease is taken when nobody holds the endpoint or the holder's lease ran out; it is renewed while
  the holder works and released however the holder ends.
- Leases are judged by one clock, the database's: PostgreSQL's `clock_timestamp()`; for SQLite, whose
  writers all run on this host, the local clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from circleci_ds.store import schema as s
from circleci_ds.store.base import StoreBase, db_now


@dataclass(frozen=True)
class LeaseInfo:
    endpoint: str
    owner: str
    expires_at: float
    acquired_at: float  # when this owner took the endpoint (renewals do not move it)


class Leases(StoreBase):
    """The leases table."""

    def try_lease(self, endpoint: str, owner: str, ttl: float, now: float | None = None) -> bool:
        """Take the endpoint if nobody holds it or the holder's lease ran out (by the database's clock,
        or at `now` when given)."""
        try:
            return self._take_lease(endpoint, owner, ttl, now)
        except IntegrityError:
            # PostgreSQL: another collector inserted the first lease row after our check; it won.
            return False

    def _take_lease(self, endpoint: str, owner: str, ttl: float, at: float | None) -> bool:
        le = s.leases.c
        with self.writing() as conn:
            now = self._lease_now(conn) if at is None else at
            taken = conn.execute(
                update(s.leases)
                .where(le.endpoint == endpoint, (le.expires_at < now) | (le.owner == owner))
                .values(owner=owner, expires_at=now + ttl, acquired_at=now)
            ).rowcount
            if taken:
                return True
            exists = conn.execute(select(le.owner).where(le.endpoint == endpoint)).first()
            if exists is not None:
                return False
            conn.execute(
                insert(s.leases).values(endpoint=endpoint, owner=owner, expires_at=now + ttl, acquired_at=now)
            )
            return True

    def take_over_lease(self, endpoint: str, dead_owner: str, owner: str, ttl: float) -> bool:
        """Take a lease from a holder known to be dead, unless someone else already did."""
        le = s.leases.c
        with self.writing() as conn:
            now = self._lease_now(conn)
            return bool(
                conn.execute(
                    update(s.leases)
                    .where(le.endpoint == endpoint, le.owner == dead_owner)
                    .values(owner=owner, expires_at=now + ttl, acquired_at=now)
                ).rowcount
            )

    def _lease_now(self, conn: Connection) -> float:
        return time.time() if self.is_sqlite else db_now(conn)

    def lease_owner(self, endpoint: str) -> str | None:
        with self.connect() as conn:
            return conn.execute(select(s.leases.c.owner).where(s.leases.c.endpoint == endpoint)).scalar()

    def renew_lease(self, endpoint: str, owner: str, ttl: float) -> bool:
        le = s.leases.c
        with self.writing() as conn:
            return bool(
                conn.execute(
                    update(s.leases)
                    .where(le.endpoint == endpoint, le.owner == owner)
                    .values(expires_at=self._lease_now(conn) + ttl)
                ).rowcount
            )

    def release_lease(self, endpoint: str, owner: str) -> None:
        le = s.leases.c
        with self.writing() as conn:
            conn.execute(delete(s.leases).where(le.endpoint == endpoint, le.owner == owner))

    def release_leases(self, owner: str) -> int:
        """Release every lease `owner` holds (a collector ending, however it ends); how many there were."""
        with self.writing() as conn:
            return int(conn.execute(delete(s.leases).where(s.leases.c.owner == owner)).rowcount)

    def leases(self) -> list[LeaseInfo]:
        le = s.leases.c
        with self.connect() as conn:
            rows = conn.execute(select(le.endpoint, le.owner, le.expires_at, le.acquired_at))
            return [LeaseInfo(*r) for r in rows]
