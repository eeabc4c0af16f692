"""Storage root: per-shard parquet tables, content-addressed blobs, atomic writes."""

from mmc4_assets.storage.settings import StorageSettings, open_store, resolve_root, storage_settings
from mmc4_assets.storage.store import ShardStore, TableWriter

__all__ = ["ShardStore", "StorageSettings", "TableWriter", "open_store", "resolve_root", "storage_settings"]
