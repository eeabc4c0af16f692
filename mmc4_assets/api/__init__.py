"""Read API over published MMC4 shards: ``GET /datasets/mmc4`` with Bearer tokens.

Plain modules hold the domain logic and import no web framework:

- ``index``: the published set, from manifests only (per-shard counts, cumulative offsets).
- ``shardcache``: a per-shard sidecar (documents in small compressed blocks plus a per-doc
  summary) built lazily from a shard's zip, so a page reads a few blocks, not the shard.
- ``service``: paging and filters over the two.
- ``auth``: salted token hashes, constant-time checks, a per-token rate limit.

``app`` is the thin FastAPI layer; ``cli`` (``python -m mmc4_assets.api``) serves it with uvicorn.
"""
