"""The store: raw pipeline trees, per-endpoint checkpoints and leases, on SQLite or PostgreSQL.

It imports no domain module: the facts written beside each tree come from the caller's Deriver.
"""

from circleci_ds.store.base import StoreError
from circleci_ds.store.database import DEFAULT_DB_URL, Store
from circleci_ds.store.endpoints import EndpointStatus
from circleci_ds.store.facts_store import Deriver, FactRows
from circleci_ds.store.leases import LeaseInfo
from circleci_ds.store.schema import SCHEMA_VERSION
from circleci_ds.store.trees import PipelineIndexEntry, StoredTree

__all__ = [
    "DEFAULT_DB_URL",
    "SCHEMA_VERSION",
    "Deriver",
    "EndpointStatus",
    "FactRows",
    "LeaseInfo",
    "PipelineIndexEntry",
    "Store",
    "StoreError",
    "StoredTree",
]
