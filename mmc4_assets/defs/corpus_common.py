"""Helpers shared by the corpus-wide assets: which shard versions exist, which were absorbed."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import dagster as dg

from mmc4_assets.dedup.corpus_state import ConcurrentUpdate
from mmc4_assets.defs.partitions import shards

T = TypeVar("T")


def latest_versions(instance: dg.DagsterInstance, asset: str) -> dict[str, int]:
    """Registered shard -> storage id of the latest materialization of a per-shard asset.

    A storage id names one materialization, so a re-materialized shard has a new one: the
    aggregates compare these with what they absorbed and read only what differs.
    """
    registered = set(instance.get_dynamic_partitions(shards.name))
    latest = instance.get_latest_storage_id_by_partition(dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {k: v for k, v in latest.items() if k in registered}


def latest_version(instance: dg.DagsterInstance, asset: str, shard: str) -> int | None:
    return instance.get_latest_storage_id_by_partition(
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION, partitions={shard}).get(shard)


def update_metadata(update, seconds: float) -> dict:
    """The story of one incremental update: what was read, what changed, who must republish."""
    return {
        "version": update.version,
        "full_recompute": update.full_recompute,
        "shards_read": len(update.absorbed),
        "shards_removed": len(update.removed),
        "absorbed": dg.MetadataValue.json(update.absorbed[:50]),
        "affected_shards": len(update.affected_shards),
        "affected_preview": dg.MetadataValue.json(update.affected_shards[:50]),
        # the full list, for the republish sensor (metadata keeps only a preview)
        **({"affected_file": update.affected_file} if update.affected_file else {}),
        **{k: v for k, v in update.stats.items()},
        "seconds_update": round(seconds, 3),
    }


def with_retries(context: dg.AssetExecutionContext, update: Callable[[], T], attempts: int = 3) -> T:
    """Redo an update that lost a race with another run's commit (it reloads the newer state)."""
    for attempt in range(1, attempts + 1):
        try:
            return update()
        except ConcurrentUpdate as exc:
            if attempt == attempts:
                raise
            context.log.warning(f"{exc}; retrying on the newer state ({attempt}/{attempts})")
    raise AssertionError("unreachable")
