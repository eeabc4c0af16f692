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

# One partition per page archive (a WARC or WAT file), keyed by its path relative to the
# pattern that found it (pages/archive_keys.py). Registered by archive_discovery_sensor or
# `mmc4-archives discover`. Each archive is read once, in its own run: a broken file fails
# its own partition and nothing else.
archives = dg.DynamicPartitionsDefinition(name="archives")
ARCHIVE_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)

# The page join reads every archive's page records for all the shards of its run at once: a
# backfill of N shards is ONE run and one Dask join, O(page records + N shards' documents).
JOIN_BACKFILL = dg.BackfillPolicy.single_run()
