"""MMC4 document format, shard writing and reading."""
