"""`circleci-ds discover ORG`: every project of an organisation that has pipelines, as a da-ds fixture.

Rules:
- ORG is `gh/acme`, `github/acme`, `bb/team`, `bitbucket/team` or `circleci/<org-id>`.
- The projects are those named by GET /pipeline?org-slug=ORG (CircleCI lists the pipelines of the
  organisation's recently built projects, newest first), read page by page up to `max_pages` pages;
  a list cut there is said in one line (older projects may be missing: raise --max-pages).
- With a token, GET /me/collaborations gives the organisation's id (written as the fixture's
  `usage-org-id`, so `collect` reads its usage without asking again); it is not needed without one.
- The fixture names the token as `${CIRCLE_TOKEN}` when one was used, and no token otherwise (public
  projects); `collect` reads it as is.
- Failures are one line (DiscoverError): the token refused, the organisation unknown or invisible to
  the token, no pipeline at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from circleci_ds.client.http import ApiError, CircleCIClient, NotFound, Unauthorized
from circleci_ds.inputs.fixture import canonical_slug

DEFAULT_MAX_PAGES = 50  # 1,000 pipelines at CircleCI's 20 a page
_ORG_VCS = {"gh": "gh", "github": "gh", "bb": "bb", "bitbucket": "bb", "circleci": "circleci"}
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TOKEN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")  # what an HTTP header can carry


class DiscoverError(Exception):
    """The organisation cannot be discovered; the message is one line for the user."""


@dataclass(frozen=True)
class Org:
    vcs: str  # gh, bb or circleci
    name: str  # the VCS organisation, or the organisation id for circleci/

    @property
    def slug(self) -> str:
        return f"{self.vcs}/{self.name}"


@dataclass
class Discovery:
    org: Org
    org_id: str | None = None
    projects: dict[str, int] = field(default_factory=dict)  # canonical slug -> pipelines seen
    pages: int = 0
    cut: bool = False  # stopped at max_pages with more pages left
    skipped: int = 0  # listed pipelines without a usable project slug


def parse_org(written: str) -> Org:
    """`github/acme` -> Org('gh', 'acme'); ValueError for anything else."""
    parts = written.strip().strip("/").split("/")
    if len(parts) != 2 or parts[0].lower() not in _ORG_VCS:
        raise ValueError(f"not an organisation (gh/ORG, github/ORG, bb/ORG or circleci/ORG-ID): {written!r}")
    name = parts[1]
    if not _NAME.match(name) or set(name) == {"."}:
        raise ValueError(f"not an organisation name: {name!r}")
    return Org(_ORG_VCS[parts[0].lower()], name)


def org_id_of(org: Org, collaborations: list[dict[str, Any]]) -> str | None:
    """The organisation's id among GET /me/collaborations' items (matched by slug, any VCS spelling)."""
    if org.vcs == "circleci":
        return org.name
    for item in collaborations:
        slug, org_id = item.get("slug"), item.get("id")
        if isinstance(slug, str) and isinstance(org_id, str) and "/" in slug:
            vcs, _, name = slug.partition("/")
            if _ORG_VCS.get(vcs.lower()) == org.vcs and name.lower() == org.name.lower():
                return org_id
    return None


def note_pipelines(found: Discovery, items: list[Any]) -> None:
    """Count each listed pipeline under its project's canonical slug."""
    for item in items:
        slug = item.get("project_slug") if isinstance(item, dict) else None
        try:
            canonical = canonical_slug(slug) if isinstance(slug, str) else None
        except ValueError:
            canonical = None
        if canonical is None:
            found.skipped += 1
            continue
        found.projects[canonical] = found.projects.get(canonical, 0) + 1


def fixture_text(found: Discovery, *, with_token: bool) -> str:
    """The da-ds fixture `collect` reads: one project named after the organisation, its endpoints sorted."""
    native = re.sub(r"[^a-z0-9_-]+", "-", found.org.name.lower()).strip("-") or "org"
    config: list[dict[str, str]] = []
    if with_token:
        config.append({"name": "Circle-Token", "value": "${CIRCLE_TOKEN}"})
    if found.org_id is not None:
        config.append({"name": "usage-org-id", "value": found.org_id})
    source: dict[str, Any] = {
        "slug": "circleci",
        "projects": [{"name": native, "endpoints": [{"name": slug} for slug in sorted(found.projects)]}],
    }
    if config:
        source["config"] = config
    document = {"native": {"slug": native}, "data_sources": [source]}
    header = f"# circleci-ds discover {found.org.slug}: {len(found.projects)} project(s) with pipelines\n"
    return header + yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


async def discover(client: CircleCIClient, org: Org, max_pages: int = DEFAULT_MAX_PAGES) -> Discovery:
    """Every project with pipelines of `org`, and its id when the token's user collaborates on it."""
    found = Discovery(org)
    if client.has_token:
        try:
            found.org_id = org_id_of(org, await client.collaborations())
        except Unauthorized:
            raise DiscoverError("token rejected (HTTP 401): check CIRCLE_TOKEN") from None
        except ApiError:
            found.org_id = None  # the id only feeds usage-org-id; the pipelines decide
    elif org.vcs == "circleci":
        found.org_id = org.name
    try:
        async for page in client.org_pipeline_pages(org.slug):
            found.pages += 1
            note_pipelines(found, page)
            if found.pages >= max_pages:
                found.cut = True
                break
    except Unauthorized:
        if client.has_token:
            raise DiscoverError("token rejected (HTTP 401): check CIRCLE_TOKEN") from None
        raise DiscoverError(
            f"{org.slug}: the API lists an organisation's pipelines only with a token here (HTTP 401); "
            "set CIRCLE_TOKEN"
        ) from None
    except NotFound:
        raise DiscoverError(f"{org.slug}: organisation not found, or the token cannot see it") from None
    except ApiError as exc:
        raise DiscoverError(f"{org.slug}: {exc}") from None
    if not found.projects:
        who = "the token" if client.has_token else "anyone without a token"
        raise DiscoverError(f"{org.slug}: no pipelines visible to {who} (no project, or none it can see)")
    return found


async def run_discover(
    api_url: str, token: str | None, org: Org, max_pages: int, timeout: float
) -> tuple[str, str]:
    """(the fixture, a one-line summary) for `circleci-ds discover`."""
    if token is not None and not _TOKEN.fullmatch(token):
        raise DiscoverError("CIRCLE_TOKEN holds a control character or non-ASCII text, which no token has")
    async with CircleCIClient(api_url, token, timeout=timeout, max_wait=60.0) as client:
        found = await discover(client, org, max_pages)
    summary = f"{org.slug}: {len(found.projects)} project(s) with pipelines, from {found.pages} page(s)"
    if found.org_id is not None:
        summary += f"; organisation id {found.org_id}"
    if found.cut:
        summary += f"; stopped after {max_pages} pages (--max-pages): older projects may be missing"
    if found.skipped:
        summary += f"; {found.skipped} pipeline(s) without a usable project slug skipped"
    return fixture_text(found, with_token=token is not None), summary
