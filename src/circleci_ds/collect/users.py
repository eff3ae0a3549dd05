"""The user pass of a collection: each user id the store names, resolved once through GET /user/{id}.

Rules:
- Workflows name users by id (`started_by`, `canceled_by`, `errored_by`), approval jobs by
  `approved_by`. Each distinct id is resolved through GET /user/{id} once ever: the answer goes
  into the `users` table, a 404 is remembered as a deleted account. A look-up that fails
  otherwise writes nothing, so a later run asks again; ids that are not UUIDs are never asked.
- The pass runs after a collection's endpoints, with the collection's client (its pacing,
  retries and concurrency), and only with a token (the API refuses user look-ups without one,
  so asking would cost requests on every run). A token the API refuses for user look-ups ends the pass with a
  warning; the collection itself has succeeded by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from circleci_ds.client.http import ApiError, CircleCIClient, NotFound, Unauthorized
from circleci_ds.store import Store
from circleci_ds.store.users import UserRecord, save_users, unresolved_user_ids

log = logging.getLogger("circleci_ds.collect.users")
Db = Callable[..., Awaitable[Any]]

BATCH = 256  # ids looked up (concurrently, within the client's bounds) before their rows are saved
_MAX_TEXT = 500  # longest login or name kept from a response


# -- which ids to resolve (pure) -----------------------------------------------------------------


def user_record(user_id: str, body: dict[str, Any] | None, now: float) -> UserRecord:
    """The row for one look-up: `body` is GET /user/{id}'s answer, None for a 404 (deleted)."""
    if body is None:
        return UserRecord(user_id, None, None, None, True, now)
    login, name, avatar = (_text(body.get(k)) for k in ("login", "name", "avatar_url"))
    return UserRecord(user_id, login, name, avatar, False, now)


def _text(value: Any) -> str | None:
    return value[:_MAX_TEXT] if isinstance(value, str) and value else None


# -- the pass (I/O) -------------------------------------------------------------------------------


@dataclass
class UserPass:
    """What one collection's pass over users did."""

    asked: int = 0
    resolved: int = 0
    deleted: int = 0
    failed: int = 0


async def resolve_users(client: CircleCIClient, store: Store, db: Db) -> UserPass:
    """Look up every user id the store names and has not resolved yet; `db` runs a store call."""
    if not client.has_token:  # the API answers user look-ups only with a token: asking costs requests
        log.info("no token: user look-ups skipped; people stay unresolved")
        return UserPass()
    todo: list[str] = await db(unresolved_user_ids, store)  # from the people_refs facts: no JSON read
    done = UserPass()
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        try:
            answers = await asyncio.gather(*(_look_up(client, uid) for uid in batch))
        except Unauthorized:
            log.warning("user look-ups refused (HTTP 401): people stay unresolved; they need a token")
            break
        records = [r for r in answers if r is not None]
        await db(save_users, store, records)
        done.asked += len(batch)
        done.resolved += len(records)
        done.deleted += sum(r.deleted for r in records)
        done.failed += len(batch) - len(records)
    if done.failed:
        log.warning("%d user look-up(s) failed; the next collection asks again", done.failed)
    return done


async def _look_up(client: CircleCIClient, user_id: str) -> UserRecord | None:
    try:
        body: dict[str, Any] | None = await client.user(user_id)
    except NotFound:
        body = None
    except Unauthorized:
        raise
    except ApiError as exc:
        log.debug("user %s: %s", user_id, exc)
        return None
    return user_record(user_id, body, time.time())
