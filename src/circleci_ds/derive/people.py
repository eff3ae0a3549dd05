"""Who did what: the person fields of exported documents, from logins, stored users and identities.

Rules:
- A person in a document (the pipeline's author, the workflow's creator, the approver) is known
  by VCS login; with an identities file, the login also gives the person's name, domain, bot flag
  and organisation at the event's date. Without one, the da-ds defaults apply: "Unknown" and an
  empty list, the name from CircleCI when known, the bot flag from the login's shape.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from circleci_ds.inputs.identities import Identities, organizations_at
from circleci_ds.store import Store, StoredTree
from circleci_ds.store.users import UserRecord, load_users
from circleci_ds.times import parse_ts

UNKNOWN = "Unknown"
# VCS of a project slug -> identity provider of its logins.
PROVIDERS = {"gh": "github", "bb": "bitbucket"}


# Logins of well-known automation accounts that carry no bot-like suffix or prefix.
KNOWN_BOTS = frozenset(
    {
        "dependabot",
        "dependabot-preview",
        "renovate",
        "renovate-bot",
        "github-actions",
        "greenkeeper",
        "greenkeeperio-bot",
        "snyk-bot",
        "pyup-bot",
        "mergify",
        "imgbot",
        "codecov",
        "depfu",
        "allcontributors",
        "semantic-release-bot",
        "web-flow",
        "circleci",
        "whitesource-bolt",
    }
)


# -- small helpers -----------------------------------------------------------------------


def is_bot_login(login: str | None) -> bool | None:
    """True for automation accounts ([bot] suffix, -bot/_bot suffix, bot- prefix, known bots)."""
    if not login:
        return None
    name = login.lower()
    return name.endswith(("[bot]", "-bot", "_bot")) or name.startswith(("bot-", "bot_")) or name in KNOWN_BOTS


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
