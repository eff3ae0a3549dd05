"""Stored trees -> perceval-style items, and NDJSON / Elasticsearch `_bulk` lines."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from circleci_ds import __version__
from circleci_ds.ids import uuid
from circleci_ds.store import Store, StoredTree
from circleci_ds.times import iso

BACKEND_NAME = "CircleCI"
BACKEND_VERSION = __version__


_ES_INDEX_BAD = re.compile(r'[\\/*?"<>|\s,#:]+')
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)


def index_name(native_slug: str, raw: bool) -> str:
    """`sds-<native-slug>-circleci[-raw]`, lowercase, with `/` and other characters ES refuses as `-`."""
    slug = _ES_INDEX_BAD.sub("-", native_slug.strip().lower()).strip("-_+") or "unknown"
    return f"sds-{slug}-circleci" + ("-raw" if raw else "")


def valid_index_name(name: str) -> bool:
    """Whether Elasticsearch/OpenSearch accept `name` as an index name."""
    return bool(name) and name == name.lower() and not _ES_INDEX_BAD.search(name) and name[0] not in "-_+"


def raw_item(tree: StoredTree, now: float | None = None) -> dict[str, Any]:
    """One pipeline tree in perceval's item envelope."""
    now = time.time() if now is None else now
    return {
        "backend_name": BACKEND_NAME,
        "backend_version": BACKEND_VERSION,
        "category": "pipeline",
        "origin": tree.origin,
        "tag": tree.origin,
        "uuid": uuid(tree.origin, str(tree.data["id"])),
        "updated_on": tree.updated_on,
        "timestamp": now,
        "project": tree.native,
        "project_slug": tree.endpoint,
        "metadata__updated_on": iso(tree.updated_on, ms=False) if tree.updated_on else None,
        "metadata__timestamp": iso(now, ms=False),
        "data": tree.data,
    }


def raw_items(store: Store, project: str | None = None) -> Iterator[dict[str, Any]]:
    now = time.time()
    for tree in store.iter_trees(project):
        yield raw_item(tree, now)


def ndjson(docs: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One JSON document per line; lines come without their newline."""
    for doc in docs:
        yield _ENCODER.encode(doc)


def es_bulk(docs: Iterable[dict[str, Any]], *, raw: bool, index: str | None = None) -> Iterator[str]:
    """Elasticsearch/OpenSearch `_bulk` lines: an index action (`_id` = uuid), then the document.

    The index is `index` when given, else the da-ds one of each document's native project.
    """
    for doc in docs:
        target = index or index_name(doc["project"], raw)
        yield _ENCODER.encode({"index": {"_index": target, "_id": doc["uuid"]}})
        yield _ENCODER.encode(doc)
