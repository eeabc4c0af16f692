"""Corpus updates in batches, and publishing after the update that includes a shard.

- ``mmc4_shard_job`` (automation.py) runs a shard's stages and writes its contributions
  (``image_hash_counts``, ``doc_fingerprints``); it never touches the corpus state, so any
  number of shard runs proceed in parallel.
- ``corpus_update_sensor`` starts ``corpus_update_job`` when ``min_batch_shards`` shards are
  waiting, or when the oldest has waited ``max_wait_seconds``: one update absorbs every shard
  finished since the previous one (O(new rows) for the image blocklist; the document index
  streams its buckets once per batch). Updates run one at a time (run queue tag limit
  ``mmc4/corpus: 1`` in dagster.yaml, and the sensor starts none while one is in flight).
- ``corpus_publish_sensor`` publishes, after each finished update, every shard it absorbed and
  every published shard whose decisions it changed (``mmc4_publish_job``).

Publishing waits for the update rather than publishing early and republishing: a
published zip is what users copy, so it should never carry decisions its own shard would
change (its own URLs duplicated, its own near-duplicates, its images' sample counts); each
shard is then written once per change of decision, not once before and once after its
update; and the result is the same whatever order shards finished in (tests compare it
with a serial run). The cost is latency: a shard appears at most one batch interval later.
"""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from mmc4_assets.dedup import blocklist as bl
from mmc4_assets.dedup.corpus_state import CorpusState, read_affected
from mmc4_assets.dedup.doc_index import NAME as DOC_INDEX
from mmc4_assets.dedup.image_counts import NAME as IMAGE_COUNTS
from mmc4_assets.dedup.image_rule import read_pointer
from mmc4_assets.defs.corpus_common import latest_versions
from mmc4_assets.defs.corpus_doc_index import corpus_doc_index
from mmc4_assets.defs.corpus_image_counts import corpus_image_counts
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.published_shards import published_shards
from mmc4_assets.defs.resources import StorageResource

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

mmc4_publish_job = dg.define_asset_job(
    "mmc4_publish_job",
    selection=dg.AssetSelection.assets(published_shards),
    partitions_def=shards,
    description="Publish (or re-publish) shards from the current corpus state; the publish sensor's target.",
)

corpus_update_job = dg.define_asset_job(
    "corpus_update_job",
    selection=dg.AssetSelection.assets(corpus_image_counts, corpus_doc_index),
    description="Absorb every shard finished since the last update into the corpus state, in one batch.",
    # one update at a time: dagster.yaml limits runs with this tag to 1
    tags={"mmc4/corpus": "update"},
)

corpus_recompute_job = dg.define_asset_job(
    "corpus_recompute_job",
    selection=dg.AssetSelection.assets(corpus_image_counts, corpus_doc_index),
    description="Rebuild the corpus state from every shard, reading shards on the Dask engine.",
    tags={"mmc4/corpus": "update"},
    config={
        "ops": {
            a: {"config": {"full_recompute": True, "engine": {"min_shards": 0}}}
            for a in ("corpus_image_counts", "corpus_doc_index")
        }
    },
)


def image_state_name(store) -> str:
    """The state folder of the image rule that ran last (MMC4's blocklist before any update)."""
    return IMAGE_COUNTS if read_pointer(store).get("rule") == bl.EXACT_RULE else bl.NAME


def waiting_shards(instance: dg.DagsterInstance, store) -> list[str]:
    """Shards whose latest contributions some corpus state has not absorbed (or removed shards)."""
    waiting: set[str] = set()
    for asset, name in (("image_hash_counts", image_state_name(store)), ("doc_fingerprints", DOC_INDEX)):
        registry = CorpusState.load(store, name).registry
        latest = latest_versions(instance, asset)
        waiting |= {s for s, v in latest.items() if registry.get(s, {}).get("storage_id") != v}
        waiting |= set(registry) - set(latest)
    return sorted(waiting)


def corpus_update_due(waiting: int, waited_s: float, min_batch: int, max_wait_s: float) -> bool:
    return waiting > 0 and (waiting >= min_batch or waited_s >= max_wait_s)


def _update_sensor(min_batch: int, max_wait_s: float, interval_s: int) -> dg.SensorDefinition:
    # RUNNING by default: it only acts on shards whose runs finished, and without it nothing publishes
    @dg.sensor(
        name="corpus_update_sensor",
        job=corpus_update_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {interval_s} s: starts one corpus_update_job for every shard finished since the "
        f"last update, once {min_batch} shards wait (MMC4_CORPUS_MIN_BATCH) or the oldest has "
        f"waited {max_wait_s:.0f} s (MMC4_CORPUS_MAX_WAIT_S); never two at once. On by default.",
    )
    def corpus_update_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        """Starts a corpus update when enough shards wait for one, or the oldest has waited long enough."""
        if context.instance.get_runs_count(dg.RunsFilter(job_name=corpus_update_job.name, statuses=IN_FLIGHT)):
            return dg.SensorResult(skip_reason="a corpus update is in flight", cursor=context.cursor)
        waiting = waiting_shards(context.instance, storage.store())
        cursor = json.loads(context.cursor) if context.cursor else {}
        if not waiting:
            return dg.SensorResult(skip_reason="no shard waits for the corpus state", cursor=json.dumps({}))
        since = cursor.get("waiting_since") or time.time()
        waited = time.time() - since
        if not corpus_update_due(len(waiting), waited, min_batch, max_wait_s):
            return dg.SensorResult(
                skip_reason=f"{len(waiting)} shard(s) waiting for {waited:.0f}s; an update starts at "
                f"{min_batch} shards or after {max_wait_s:.0f}s",
                cursor=json.dumps({"waiting_since": since}),
            )
        return dg.SensorResult(
            run_requests=[dg.RunRequest(tags={"mmc4/batch_shards": str(len(waiting))})], cursor=json.dumps({})
        )

    return corpus_update_sensor


def _current(store) -> dict[str, int]:
    """What a publication made now would record: the image rule's generation, the doc index version."""
    return {
        "corpus_image_counts_version": read_pointer(store).get("generation", 0),
        "corpus_doc_index_version": CorpusState.load(store, DOC_INDEX).version,
    }


def shards_to_publish(instance: dg.DagsterInstance, store, listed: dict[str, dict[str, int]]) -> list[str]:
    """Listed shards absorbed by both corpus states and never published, or published from a
    state older than the one that listed them (``listed``: shard -> published metadata key ->
    the version that listed it)."""
    absorbed = {
        asset: CorpusState.load(store, name).registry
        for asset, name in (("image_hash_counts", image_state_name(store)), ("doc_fingerprints", DOC_INDEX))
    }
    latest = {asset: latest_versions(instance, asset) for asset in absorbed}
    out = []
    for shard, versions in listed.items():
        if any(
            shard not in latest[a] or absorbed[a].get(shard, {}).get("storage_id") != latest[a][shard] for a in absorbed
        ):
            continue  # a later update absorbs it and lists it again
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=published_shards.key, asset_partitions=[shard]), limit=1
        ).records
        md = records[0].asset_materialization.metadata if records else {}
        if any((md[k].value if k in md else -1) < v for k, v in versions.items()):
            out.append(shard)
    return out


# corpus asset -> (its metadata key of the version publications record, published_shards' key for it)
VERSION_KEYS = {
    "corpus_image_counts": ("generation", "corpus_image_counts_version"),
    "corpus_doc_index": ("version", "corpus_doc_index_version"),
}


def listed_since(context_instance: dg.DagsterInstance, store, cursor: dict, log=None) -> dict[str, dict[str, int]]:
    """Shards the finished corpus updates after ``cursor`` list for publication (advances ``cursor``)."""
    listed: dict[str, dict[str, int]] = {}
    for asset, (version_key, published_key) in VERSION_KEYS.items():
        records = context_instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), after_storage_id=cursor.get(asset)),
            limit=50,
            ascending=True,
        ).records
        for record in records:
            run = context_instance.get_run_by_id(record.run_id)
            if run is not None and not run.is_finished:
                break  # the update's other asset may not have committed yet: next tick
            md = record.asset_materialization.metadata
            if "affected_file" in md:
                folder = md["path"].value.rstrip("/").rsplit("/", 1)[-1]
                shards_listed = read_affected(store, folder, md["affected_file"].value)
                if shards_listed is None:  # pruned: a sensor this far behind publishes what it can see
                    if log:
                        log.warning(
                            f"{asset} v{md['version'].value}: affected list pruned; "
                            "run mmc4_publish_job for all shards to be sure"
                        )
                    shards_listed = []
                for shard in shards_listed:
                    versions = listed.setdefault(shard, {})
                    versions[published_key] = max(versions.get(published_key, -1), md[version_key].value)
            cursor[asset] = record.storage_id
    return listed


def _publish_sensor(interval_s: int) -> dg.SensorDefinition:
    # RUNNING by default: publishing follows the corpus update that includes the shard
    @dg.sensor(
        name="corpus_publish_sensor",
        job=mmc4_publish_job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Every {interval_s} s: after each corpus update, publishes the shards it absorbed and "
        "republishes those whose corpus decisions it changed (mmc4_publish_job). On by default.",
    )
    def corpus_publish_sensor(context: dg.SensorEvaluationContext, storage: StorageResource) -> dg.SensorResult:
        """Publishes the shards a finished corpus update absorbed, and republishes those whose decisions it changed."""
        store = storage.store()
        cursor = json.loads(context.cursor) if context.cursor else {}
        todo = shards_to_publish(context.instance, store, listed_since(context.instance, store, cursor, context.log))
        if not todo:
            return dg.SensorResult(
                skip_reason="every absorbed shard is published from the current corpus state", cursor=json.dumps(cursor)
            )
        state = ".".join(str(v) for v in _current(store).values())
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(partition_key=s, run_key=f"publish:{s}:{state}", tags={"mmc4/publish": "corpus"})
                for s in todo
            ],
            cursor=json.dumps(cursor),
        )

    return corpus_publish_sensor


@dg.definitions
def corpus_automation() -> dg.Definitions:
    # read here, not at import: tests and `dg check` load the module without the env
    min_batch = int(os.environ.get("MMC4_CORPUS_MIN_BATCH", "100"))
    max_wait = float(os.environ.get("MMC4_CORPUS_MAX_WAIT_S", "600"))
    interval = int(os.environ.get("MMC4_CORPUS_SENSOR_INTERVAL_S", "60"))
    return dg.Definitions(
        jobs=[mmc4_publish_job, corpus_update_job, corpus_recompute_job],
        sensors=[_update_sensor(min_batch, max_wait, interval), _publish_sensor(interval)],
    )
