import dagster as dg

# One partition per C4-format source shard file (``{key}.json.gz``). Dynamic, because a
# crawl grows; a sensor registers new files (automation.py), or `mmc4-shards add` by hand.
shards = dg.DynamicPartitionsDefinition(name="shards")
