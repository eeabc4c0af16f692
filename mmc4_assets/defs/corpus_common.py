"""Helpers shared by the corpus-wide assets: which shard versions exist, which were absorbed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import dagster as dg

from mmc4_assets.dedup.corpus_state import ConcurrentUpdate, CorpusState, CorpusUpdate, plan
from mmc4_assets.defs.partitions import shards
from mmc4_assets.engine import EngineSettings, dask_client

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
        dg.AssetKey(asset), dg.DagsterEventType.ASSET_MATERIALIZATION, partitions={shard}
    ).get(shard)


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


class EngineConfig(dg.Config):
    """Where an update's per-shard reading runs: Dask (see mmc4_assets.engine)."""

    scheduler_address: str = ""  # tcp://host:8786 of a running scheduler; empty: an in-process LocalCluster
    n_workers: int = 2  # LocalCluster only
    memory_limit: str = "2GiB"  # LocalCluster only, per worker
    # use the engine when an update reads at least this many shards (full recomputes, big
    # catch-ups); smaller batches read here, without a cluster's start-up time
    min_shards: int = 500

    def settings(self) -> EngineSettings:
        return EngineSettings(
            scheduler_address=self.scheduler_address or None, n_workers=self.n_workers, memory_limit=self.memory_limit
        )


@contextlib.contextmanager
def engine_for(config: EngineConfig, to_read: int, context: dg.AssetExecutionContext) -> Iterator:
    """A Dask client when ``to_read`` shards justify one, else None (read in this process)."""
    if to_read < config.min_shards:
        yield None
        return
    where = config.scheduler_address or "an in-process LocalCluster"
    context.log.info(f"reading {to_read} shards on the Dask engine ({where})")
    with dask_client(config.settings()) as client:
        yield client


def shards_to_read(store, name: str, latest: dict[str, int], full_recompute: bool) -> int:
    """How many shards an update of corpus state ``name`` would read."""
    if full_recompute:
        return len(latest)
    return len(plan(CorpusState.load(store, name), latest, False)[0])


def run_corpus_update(
    context: dg.AssetExecutionContext,
    store,
    *,
    state: str,
    contributions: str,
    config: Any,
    label: str,
    update: Callable[[dict[str, int], Any], CorpusUpdate],
) -> tuple[CorpusUpdate, dict]:
    """One corpus asset's update: the latest ``contributions`` of every shard, absorbed into the
    corpus state ``state`` by ``update(latest, dask_client_or_None)`` (retried on a lost race).

    ``config`` carries ``engine`` and ``full_recompute``. Returns the update and its metadata.
    """
    started = time.perf_counter()
    latest = latest_versions(context.instance, contributions)
    with engine_for(config.engine, shards_to_read(store, state, latest, config.full_recompute), context) as client:
        result = with_retries(context, lambda: update(latest, client))
    context.log.info(
        f"{label} v{result.version}: read {len(result.absorbed)} shard(s), "
        f"{len(result.affected_shards)} published shard(s) affected"
    )
    return result, update_metadata(result, time.perf_counter() - started)
