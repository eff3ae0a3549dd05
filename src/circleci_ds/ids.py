"""Identifiers shared by inputs and documents."""

from __future__ import annotations

import hashlib


def uuid(*parts: str) -> str:
    """perceval's item id: sha1 of the parts joined by ':'."""
    return hashlib.sha1(":".join(parts).encode("utf-8", errors="surrogateescape")).hexdigest()
