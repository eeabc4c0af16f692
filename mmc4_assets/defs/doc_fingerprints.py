import dagster as dg
import polars as pl

from mmc4_assets.dedup.doc_index import SCHEME, candidate_fingerprints, fingerprint_schema, other_fingerprints
from mmc4_assets.defs.common import CORPUS_GROUP
from mmc4_assets.defs.deduped_docs import deduped_docs
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.raw_c4 import raw_c4
from mmc4_assets.defs.resources import StorageResource


class DocFingerprintsConfig(dg.Config):
    docs_per_batch: int = 2000


@dg.asset(
    partitions_def=shards,
    backfill_policy=SHARD_BACKFILL,
    group_name=CORPUS_GROUP,
    code_version="1",
    kinds={"numpy", "parquet"},
    deps=[deduped_docs, raw_c4],
    tags={"mmc4/stage": "corpus"},
)
def doc_fingerprints(
    context: dg.AssetExecutionContext, config: DocFingerprintsConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """This shard's share of the document index: every document's URL key, and a MinHash of each
    deduped document's text."""
    shard, store = context.partition_key, storage.store()
    seen: set[str] = set()
    without_words = 0
    with store.table_writer("doc_fingerprints", shard, fingerprint_schema()) as out:
        for batch in store.iter_batches("deduped_docs", shard, ["doc_id", "url", "text_list"], config.docs_per_batch):
            rows = candidate_fingerprints(batch)
            without_words += rows["signature"].null_count()
            seen.update(batch["doc_id"].to_list())
            out.write(rows)
        # every other C4 document still counts for could_have_url_duplicate
        others = store.read_table("raw_c4", shard, ["doc_id", "url"]).filter(~pl.col("doc_id").is_in(list(seen)))
        out.write(other_fingerprints(others))
    return dg.MaterializeResult(
        metadata={
            "num_docs": out.rows,
            "num_candidates": len(seen),
            "candidates_without_words": without_words,
            "scheme": SCHEME.id,
            "path": dg.MetadataValue.path(str(store.table_path("doc_fingerprints", shard))),
        }
    )
