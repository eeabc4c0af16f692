import warnings

import dagster as dg

# Our checks are partitioned like their assets (defs/common.py shard_check), a preview feature
# in Dagster 1.13 that warns at every load; docs/data-quality.md records what was checked.
warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")

# One partition per C4-format source shard file (``{key}.json.gz``). Dynamic, because a
# crawl grows; a sensor registers new files (automation.py), or `mmc4-shards add` by hand.
shards = dg.DynamicPartitionsDefinition(name="shards")

# Assets read ``context.partition_key``: a backfill of N shards is N one-shard runs, which the
# run queue (dagster.yaml: 4 at a time, 4 per backfill) and the mmc4_fetch pool keep bounded.
SHARD_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
