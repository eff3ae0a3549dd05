"""The store: raw pipeline trees, per-endpoint checkpoints and leases, on SQLite or PostgreSQL."""

from circleci_ds.store.database import (
    DEFAULT_DB_URL,
    EndpointStatus,
    LeaseInfo,
    PipelineIndexEntry,
    Store,
    StoredTree,
    StoreError,
)
from circleci_ds.store.schema import SCHEMA_VERSION

__all__ = [
    "DEFAULT_DB_URL",
    "SCHEMA_VERSION",
    "EndpointStatus",
    "LeaseInfo",
    "PipelineIndexEntry",
    "Store",
    "StoreError",
    "StoredTree",
]
