"""Who did what: the users behind workflows and jobs, and the person fields of exported documents.

Rules:
- Workflows name users by id (`started_by`, `canceled_by`, `errored_by`), approval jobs by
  `approved_by`. Each distinct id is resolved through GET /user/{id} once ever: the answer goes
  into the `users` table, a 404 is remembered as a deleted account. A look-up that fails
  otherwise writes nothing, so a later run asks again; ids that are not UUIDs are never asked.
- The pass runs after a collection's endpoints, with the collection's client (its pacing,
  retries and concurrency), and only with a token (the API refuses user look-ups without one,
  so asking would cost requests on every run). A token the API refuses for user look-ups ends the pass with a
  warning; the collection itself has succeeded by then.
- A person in a document (the pipeline's author, the workflow's creator, the approver) is known
  by VCS login; with an identities file, the login also gives the person's name, domain, bot flag
  and organisation at the event's date. Without one, the da-ds defaults apply: "Unknown" and an
  empty list, the name from CircleCI when known, the bot flag from the login's shape.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from circleci_ds.api import ApiError, CircleCIClient, NotFound, Unauthorized
from circleci_ds.enrich import is_bot_login
from circleci_ds.identities import Identities, organizations_at
from circleci_ds.store import Store, StoredTree
from circleci_ds.store.users import UserRecord, load_users, save_users, unresolved_user_ids
from circleci_ds.times import parse_ts

log = logging.getLogger("circleci_ds.people")
Db = Callable[..., Awaitable[Any]]

UNKNOWN = "Unknown"
BATCH = 256  # ids looked up (concurrently, within the client's bounds) before their rows are saved
_MAX_TEXT = 500  # longest login or name kept from a response
# VCS of a project slug -> identity provider of its logins.
PROVIDERS = {"gh": "github", "bb": "bitbucket"}


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


# -- person fields of documents -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Person:
    """A person as da-ds documents show one (the `<role>_*` fields)."""

    user_name: str | None
    id: str = UNKNOWN
    uuid: str = UNKNOWN
    name: str = UNKNOWN
    domain: str = UNKNOWN
    org_name: str = UNKNOWN
    multi_org_names: tuple[str, ...] = ()
    bot: bool = False

    def fields(self, role: str) -> dict[str, Any]:
        return {
            f"{role}_id": self.id,
            f"{role}_uuid": self.uuid,
            f"{role}_name": self.name,
            f"{role}_user_name": self.user_name,
            f"{role}_domain": self.domain,
            f"{role}_org_name": self.org_name,
            f"{role}_multi_org_names": list(self.multi_org_names),
            f"{role}_bot": self.bot,
        }


@dataclass
class People:
    """Resolved users and (optionally) identities: turns ids and logins into persons."""

    users: dict[str, UserRecord] = field(default_factory=dict)
    identities: Identities | None = None
    _by_login: dict[str, UserRecord] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_login = {u.login.lower(): u for u in self.users.values() if u.login}

    @classmethod
    def load(cls, store: Store, identities: Identities | None = None) -> People:
        return cls(load_users(store), identities)

    def login_of(self, user_id: Any) -> str | None:
        """The login behind a user id; None when unknown, unresolved or deleted."""
        user = self.users.get(user_id) if isinstance(user_id, str) else None
        return user.login if user is not None else None

    def name_of(self, user_id: Any) -> str | None:
        user = self.users.get(user_id) if isinstance(user_id, str) else None
        return user.name if user is not None else None

    def person(self, login: str | None, provider: str | None, at: float | None) -> Person:
        """The person with this VCS login at epoch `at` (for the organisation)."""
        known = self._by_login.get(login.lower()) if login else None
        fallback_name = (known.name if known else None) or UNKNOWN
        found = self.identities.find(provider, login) if self.identities and login else None
        if found is None:
            return Person(login, name=fallback_name, bot=bool(is_bot_login(login)))
        identity, identity_id = found
        org, orgs = organizations_at(identity, at)
        return Person(
            login,
            id=identity_id,
            uuid=identity.uuid,
            name=identity.name or fallback_name,
            domain=identity.domain or UNKNOWN,
            org_name=org or UNKNOWN,
            multi_org_names=orgs,
            bot=identity.bot,
        )

    def person_by_id(self, user_id: Any, provider: str | None, at: float | None) -> Person:
        return self.person(self.login_of(user_id), provider, at)

    def author(self, tree: StoredTree) -> Person:
        """The pipeline's trigger actor, at the pipeline's creation."""
        pipeline = tree.data
        login = ((pipeline.get("trigger") or {}).get("actor") or {}).get("login")
        provider = provider_of(tree.endpoint, pipeline)
        at = self._when(pipeline.get("created_at"))
        return self.person(login if isinstance(login, str) else None, provider, at)

    def creator(self, workflow: dict[str, Any], provider: str | None) -> Person:
        """Who started the workflow, at its creation."""
        return self.person_by_id(workflow.get("started_by"), provider, self._when(workflow.get("created_at")))

    def approver(self, job: dict[str, Any], workflow: dict[str, Any], provider: str | None) -> Person:
        """Who approved an approval job, at the approval (else the workflow's creation)."""
        at = self._when(job.get("stopped_at") or workflow.get("created_at"))
        return self.person_by_id(job.get("approved_by"), provider, at)

    def _when(self, stamp: Any) -> float | None:
        """An event's epoch, needed only to pick an organisation from identities."""
        return parse_ts(stamp) if self.identities is not None else None

    def enriched_fields(
        self, tree: StoredTree, workflow: dict[str, Any] | None, job: dict[str, Any] | None
    ) -> dict[str, Any]:
        """People fields of an enriched document (pipeline: workflow and job None; workflow: job None).

        Every document: the author's name, uuid, domain and organisations at the pipeline's creation.
        Workflow and job documents: who started and cancelled the workflow. Approval jobs: the approver.
        """
        author = self.author(tree).fields("author")
        fields = {k: v for k, v in author.items() if k not in ("author_user_name", "author_bot")}
        if workflow is None:
            return fields
        provider = provider_of(tree.endpoint, tree.data)
        creator = self.creator(workflow, provider)
        fields.update(
            {
                "started_by_login": creator.user_name,
                "started_by_name": self.name_of(workflow.get("started_by")),
                "started_by_org_name": creator.org_name,
                "canceled_by_login": self.login_of(workflow.get("canceled_by")),
            }
        )
        if job is not None and job.get("type") == "approval":
            approver = self.approver(job, workflow, provider)
            fields.update(
                {
                    "approved_by_login": approver.user_name,
                    "approved_by_name": self.name_of(job.get("approved_by")),
                    "approved_by_org_name": approver.org_name,
                }
            )
        return fields


def provider_of(endpoint: str, pipeline: dict[str, Any]) -> str | None:
    """The identity provider of a project's logins: from its slug, else its pipelines' VCS."""
    vcs = endpoint.split("/", 1)[0]
    if vcs in PROVIDERS:
        return PROVIDERS[vcs]
    name = (pipeline.get("vcs") or {}).get("provider_name")
    return name.lower() if isinstance(name, str) and name else None
