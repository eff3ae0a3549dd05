"""The `users` table: who is behind the user ids workflows and jobs carry, resolved once ever.

A row is written once per id: with the login and name GET /user/{id} gave, or marked deleted
when it answered 404. Ids whose look-up failed otherwise get no row, so a later run asks again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import delete, insert, select

from circleci_ds.store import schema as s
from circleci_ds.store.database import Store

_CHUNK = 400


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    login: str | None
    name: str | None
    avatar_url: str | None
    deleted: bool
    resolved_at: float


def save_users(store: Store, records: Iterable[UserRecord]) -> None:
    """Write resolved users in one transaction; a row already there (another collector) is replaced."""
    rows = [
        {
            "id": r.id,
            "login": r.login,
            "name": r.name,
            "avatar_url": r.avatar_url,
            "deleted": r.deleted,
            "resolved_at": r.resolved_at,
        }
        for r in records
    ]
    if not rows:
        return
    with store.writing() as conn:
        for start in range(0, len(rows), _CHUNK):
            chunk = rows[start : start + _CHUNK]
            conn.execute(delete(s.users).where(s.users.c.id.in_([r["id"] for r in chunk])))
            conn.execute(insert(s.users), chunk)


def load_users(store: Store) -> dict[str, UserRecord]:
    """Every resolved user by id."""
    u = s.users.c
    query = select(u.id, u.login, u.name, u.avatar_url, u.deleted, u.resolved_at)
    with store.engine.connect() as conn:
        return {
            r.id: UserRecord(r.id, r.login, r.name, r.avatar_url, bool(r.deleted), r.resolved_at)
            for r in conn.execute(query)
        }


def unresolved_user_ids(store: Store) -> list[str]:
    """The user ids stored trees name (people_refs) that no `users` row resolves yet, sorted."""
    r, u = s.people_refs.c, s.users.c
    query = (
        select(r.user_id)
        .distinct()
        .outerjoin(s.users, u.id == r.user_id)
        .where(u.id.is_(None))
        .order_by(r.user_id)
    )
    with store.reading() as conn:
        return list(conn.execute(query).scalars())
