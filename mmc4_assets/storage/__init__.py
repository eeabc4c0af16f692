"""Storage root: per-shard parquet tables, content-addressed blobs, atomic writes."""

from mmc4_assets.storage.store import ShardStore, TableWriter

__all__ = ["ShardStore", "TableWriter"]
