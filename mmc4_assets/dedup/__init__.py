"""Deduplication: in-document pHash dedup and URL flags (per shard), and the corpus-wide state
behind MMC4's cross-shard rules (image frequency, URL duplicates, near-duplicate texts)."""
