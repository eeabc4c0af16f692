"""Paging and filters over the published set: what ``GET /datasets/mmc4`` answers.

Documents are ordered by shard (subset's shard order) then line, and a document's id is
``{shard_key}-{line}``. Without document filters the offset -> shard lookup needs only the
manifests' counts; with ``min_images`` or ``min_matched_sim`` it needs each shard's match
count, computed once per (shard checksum, filter) from the sidecar summaries and cached.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from mmc4_assets.api.index import (
    DEFAULT_SUBSET,
    SUBSETS,
    Catalog,
    ShardEntry,
    Snapshot,
    doc_id,
    is_valid_subset,
    locate,
    normalize_subset,
    parse_doc_id,
)
from mmc4_assets.api.shardcache import ShardCache, ShardUnavailable

MAX_LIMIT = 100


class NotReady(RuntimeError):
    """Filters need sidecars of more shards than one request should build; they are being built."""

    def __init__(self, message: str, retry_after: int = 30):
        super().__init__(message)
        self.retry_after = retry_after


class InvalidQuery(ValueError):
    """A parameter that is well-typed but names nothing we serve (unknown subset or shard)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param, self.message = param, message


@dataclass(frozen=True)
class Query:
    subset: str = DEFAULT_SUBSET
    shard: str | None = None
    min_images: int | None = None
    min_matched_sim: float | None = None

    @property
    def filters_docs(self) -> bool:
        return self.min_images is not None or self.min_matched_sim is not None


@dataclass(frozen=True)
class Page:
    documents: list[bytes]  # complete API documents, JSON
    total: int
    offset: int
    limit: int
    next: int | None
    index_version: str

    def to_json(self) -> bytes:
        tail = json.dumps(
            {
                "total": self.total,
                "offset": self.offset,
                "limit": self.limit,
                "next": self.next,
                "index_version": self.index_version,
            },
            separators=(",", ":"),
        ).encode()
        return b'{"documents":[' + b",".join(self.documents) + b"]," + tail[1:]


def _with_id(shard_key: str, line: int, body: bytes) -> bytes:
    # keys match [A-Za-z0-9._-]: nothing in an id needs JSON escaping
    return b'{"id":"' + doc_id(shard_key, line).encode() + b'",' + body[1:]


def _shown(value: str) -> str:
    return repr(value if len(value) <= 64 else value[:64] + "...")


class _LRU(OrderedDict):
    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class Dataset:
    """``max_sync_builds``: a filtered request builds at most this many missing sidecars itself;
    beyond that it starts a background build and answers NotReady (at MMC4 scale, thousands of
    shards, building them all inside one request would outlast any client timeout)."""

    def __init__(self, catalog: Catalog, cache: ShardCache, max_limit: int = MAX_LIMIT, max_sync_builds: int = 64):
        self.catalog, self.cache, self.max_limit = catalog, cache, max_limit
        self.max_sync_builds = max_sync_builds
        self._counts = _LRU(500_000)  # (sha256, min_images, min_sim) -> matching docs in the shard
        self._selections = _LRU(256)  # (generation, query) -> (entries, cumulative counts)
        self._lock = threading.Lock()
        self._warmer: threading.Thread | None = None

    # -- queries -----------------------------------------------------------------------
    def validate(self, query: Query, snap: Snapshot) -> Query:
        subset = normalize_subset(query.subset)
        if not is_valid_subset(subset) or (subset not in SUBSETS and subset not in snap.subsets):
            known = sorted(set(SUBSETS) | set(snap.subsets))
            raise InvalidQuery("subset", f"unknown subset {_shown(query.subset)}; one of {known}")
        if query.shard is not None:
            entry = snap.by_key.get(query.shard)
            if entry is None:
                raise InvalidQuery(
                    "shard", f"unknown shard {_shown(query.shard)}; GET /datasets/mmc4/shards lists the published ones"
                )
            if entry.subset != subset:
                raise InvalidQuery("shard", f"shard {entry.key!r} is in subset {entry.subset!r}, not {subset!r}")
        if query.min_images is not None and query.min_images < 0:
            raise InvalidQuery("min_images", "min_images must be >= 0")
        if query.min_matched_sim is not None and not (
            math.isfinite(query.min_matched_sim) and -1 <= query.min_matched_sim <= 1
        ):
            raise InvalidQuery("min_matched_sim", "min_matched_sim must be a number in [-1, 1]")
        return Query(subset, query.shard, query.min_images, query.min_matched_sim)

    def page(self, query: Query, offset: int = 0, limit: int = 10) -> Page:
        if not 1 <= limit <= self.max_limit:
            raise InvalidQuery("limit", f"limit must be between 1 and {self.max_limit}")
        if offset < 0:
            raise InvalidQuery("offset", "offset must be >= 0")
        snap = self.catalog.snapshot()
        query = self.validate(query, snap)
        entries, cumulative = self._selection(snap, query)
        docs: list[bytes] = []
        found = locate(cumulative, offset)
        if found is not None:
            i, local = found
            while len(docs) < limit and i < len(entries):
                in_shard = cumulative[i] - (cumulative[i - 1] if i else 0)
                if local < in_shard:
                    docs += self._read(entries[i], query, local, limit - len(docs))
                i, local = i + 1, 0
        total = cumulative[-1] if len(cumulative) else 0
        end = offset + len(docs)
        return Page(docs, total, offset, limit, end if docs and end < total else None, snap.version)

    def document(self, doc_id_: str) -> bytes | None:
        """One document by id, in any subset; None when no published document has that id."""
        parsed = parse_doc_id(doc_id_)
        if parsed is None:
            return None
        key, line = parsed
        entry = self.catalog.snapshot().by_key.get(key)
        if entry is None or line >= entry.num_docs:
            return None
        return _with_id(entry.key, line, self.cache.get(entry).read([line])[0])

    def shards(self, subset: str | None = None) -> tuple[Snapshot, list[dict[str, Any]]]:
        snap = self.catalog.snapshot()
        if subset is not None:
            subset = self.validate(Query(subset=subset), snap).subset
        return snap, [e.describe() for e in snap.entries if subset is None or e.subset == subset]

    def health(self) -> dict[str, Any]:
        snap = self.catalog.snapshot()
        counts = snap.counts()
        return {
            "status": "ok" if self.catalog.last_error is None else "degraded",
            "shards": len(snap.entries),
            "documents": counts.get(DEFAULT_SUBSET, {}).get("documents", 0),
            "subsets": counts,
            "index_version": snap.version,
            "index_age_s": round(max(0.0, time.monotonic() - snap.loaded_at), 3),
            "skipped_manifests": len(snap.problems),
            "listing_error": self.catalog.last_error is not None,
        }

    # -- internals ---------------------------------------------------------------------
    def _selection(self, snap: Snapshot, query: Query) -> tuple[tuple[ShardEntry, ...], Any]:
        if query.shard is not None:
            entries: tuple[ShardEntry, ...] = (snap.by_key[query.shard],)
            if not query.filters_docs:
                return entries, (entries[0].num_docs,)
        else:
            view = snap.view(query.subset)
            if not query.filters_docs:
                return view.entries, view.cumulative
            entries = view.entries
        key = (snap.generation, snap.version, query)
        with self._lock:
            hit = self._selections.get(key)
        if hit is not None:
            return hit
        missing = [e for e in entries if e.num_docs and not self.cache.is_built(e)]
        if len(missing) > self.max_sync_builds:
            self.start_warming()
            raise NotReady(
                f"filters need a summary of every shard; {len(entries) - len(missing)} of "
                f"{len(entries)} shards are ready and the rest are being built"
            )
        cumulative = tuple(accumulate(self._count(e, query) for e in entries))
        with self._lock:
            self._selections.put(key, (entries, cumulative))
        return entries, cumulative

    def _count(self, entry: ShardEntry, query: Query) -> int:
        if entry.num_docs == 0:
            return 0
        key = (entry.sha256, query.min_images, query.min_matched_sim)
        with self._lock:
            hit = self._counts.get(key)
        if hit is None:
            hit = int(self.cache.get(entry).mask(query.min_images, query.min_matched_sim).sum())
            with self._lock:
                self._counts.put(key, hit)
        return hit

    def _read(self, entry: ShardEntry, query: Query, local: int, need: int) -> list[bytes]:
        data = self.cache.get(entry)
        if query.filters_docs:
            lines = np.flatnonzero(data.mask(query.min_images, query.min_matched_sim))[local : local + need]
            lines = [int(x) for x in lines]
        else:
            lines = list(range(local, min(entry.num_docs, local + need)))
        return [_with_id(entry.key, line, body) for line, body in zip(lines, data.read(lines))]

    # -- background warm-up ------------------------------------------------------------
    def start_warming(self) -> None:
        """One background pass over the published set, unless one is running."""
        with self._lock:
            if self._warmer is not None and self._warmer.is_alive():
                return
            self._warmer = threading.Thread(
                target=self.warm, args=(threading.Event(),), name="mmc4-api-warm-once", daemon=True
            )
            self._warmer.start()

    def warm(self, stop: threading.Event) -> int:
        """Build missing sidecars of the current published set; returns how many were built."""
        built = 0
        for entry in self.catalog.snapshot().entries:
            if stop.is_set():
                break
            if entry.num_docs and not self.cache.is_built(entry):
                try:
                    self.cache.get(entry)
                    built += 1
                except ShardUnavailable:
                    pass  # retried on the next pass or by the request that needs it
        return built
