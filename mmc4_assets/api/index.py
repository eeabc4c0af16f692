"""The published set, read from manifests only.

``published_shards`` writes a shard's zip first and its manifest last, so the manifests
under ``{root}/published/`` are exactly the published shards. The index lists them, reads
each manifest once (re-read only when its size or modification time changes) and orders
the shards of each subset by shard number. Cumulative document counts give a global
offset -> (shard, line) lookup by binary search, without opening any zip.

A manifest may carry ``subset`` (``full``, ``ff``, ``core``, ``core-ff``; default ``full``)
and ``shard_key``; without ``shard_key`` the key is the shard number of
``docs_shard_{N}_v2.jsonl.zip``, prefixed with the subset outside ``full`` (``core.42``),
so keys, and the document ids built on them, stay unique across subsets.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmc4_assets.publish.shards import MANIFEST_SUFFIX
from mmc4_assets.storage import ShardStore

log = logging.getLogger(__name__)

SUBSETS = ("full", "ff", "core", "core-ff")  # MMC4's names: mmc4, mmc4-ff, mmc4-core, mmc4-core-ff
DEFAULT_SUBSET = "full"

# Shard keys and subset names appear in ids and query parameters; they are looked up in
# the index, never joined into a path, and this keeps them URL-safe and unambiguous.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUBSET = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_SHARD_FILE = re.compile(r"docs_shard_(?P<n>.+?)_v\d+\.jsonl\.zip")
_DOC_ID = re.compile(r"(?P<shard>[A-Za-z0-9][A-Za-z0-9._-]{0,127})-(?P<line>0|[1-9][0-9]{0,9})")


class ManifestError(ValueError):
    """A manifest that cannot be served (bad JSON, missing fields, unsafe names)."""


def normalize_subset(value: str) -> str:
    """``mmc4`` -> ``full``, ``mmc4-core-ff`` -> ``core-ff``; the short names pass through."""
    v = value.strip().lower().replace("_", "-")
    if v in ("mmc4", ""):
        return DEFAULT_SUBSET
    return v.removeprefix("mmc4-")


def is_valid_subset(value: str) -> bool:
    return bool(_SUBSET.fullmatch(value))


def parse_doc_id(doc_id: str) -> tuple[str, int] | None:
    """``"42-17"`` -> ``("42", 17)``; None for anything that is not a canonical id."""
    m = _DOC_ID.fullmatch(doc_id)
    return (m.group("shard"), int(m.group("line"))) if m else None


def doc_id(shard_key: str, line: int) -> str:
    return f"{shard_key}-{line}"


@dataclass(frozen=True)
class ShardEntry:
    """One published shard, as its manifest describes it."""

    key: str
    subset: str
    number: int | None  # shard number when the key part is numeric: the sort order
    manifest_name: str
    shard_file: str
    num_docs: int
    num_images: int
    sha256: str
    model: str | None = None
    source_shard: str | None = None

    def sort_key(self) -> tuple:
        return (self.number is None, self.number or 0, self.key)

    def describe(self) -> dict[str, Any]:
        return {
            "shard": self.key,
            "subset": self.subset,
            "num_docs": self.num_docs,
            "num_images": self.num_images,
            "source_shard": self.source_shard,
            "model": self.model,
            "sha256": self.sha256,
        }


def entry_from_manifest(manifest_name: str, manifest: Any) -> ShardEntry:
    if not isinstance(manifest, dict):
        raise ManifestError("manifest is not an object")
    shard_file = manifest.get("shard_file") or manifest_name[: -len(MANIFEST_SUFFIX)] + ".jsonl.zip"
    if not isinstance(shard_file, str) or "/" in shard_file or "\\" in shard_file or shard_file in (".", ".."):
        raise ManifestError(f"unsafe shard_file {shard_file!r}")
    subset = normalize_subset(str(manifest.get("subset") or DEFAULT_SUBSET))
    if not is_valid_subset(subset):
        raise ManifestError(f"invalid subset {manifest.get('subset')!r}")
    num_docs, num_images, sha = manifest.get("num_docs"), manifest.get("num_images", 0), manifest.get("sha256")
    if not isinstance(num_docs, int) or num_docs < 0 or isinstance(num_docs, bool):
        raise ManifestError(f"invalid num_docs {num_docs!r}")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ManifestError("missing or invalid sha256")
    m = _SHARD_FILE.fullmatch(shard_file)
    base = m.group("n") if m else manifest_name[: -len(MANIFEST_SUFFIX)]
    number = int(base) if base.isdigit() else None
    key = manifest.get("shard_key")
    if key is None:
        key = base if subset == DEFAULT_SUBSET else f"{subset}.{base}"
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ManifestError(f"invalid shard key {key!r}")
    model = manifest.get("model")
    source = manifest.get("source_shard")
    return ShardEntry(
        key=key,
        subset=subset,
        number=number,
        manifest_name=manifest_name,
        shard_file=shard_file,
        num_docs=num_docs,
        num_images=num_images if isinstance(num_images, int) else 0,
        sha256=sha,
        model=model if isinstance(model, str) else None,
        source_shard=source if isinstance(source, str) else None,
    )


@dataclass(frozen=True)
class SubsetView:
    """The shards of one subset in serving order, with inclusive cumulative doc counts."""

    entries: tuple[ShardEntry, ...]
    cumulative: tuple[int, ...]

    @classmethod
    def of(cls, entries: list[ShardEntry]) -> SubsetView:
        total, cum = 0, []
        for e in entries:
            total += e.num_docs
            cum.append(total)
        return cls(tuple(entries), tuple(cum))

    @property
    def total(self) -> int:
        return self.cumulative[-1] if self.cumulative else 0


def locate(cumulative: tuple[int, ...] | list[int], offset: int) -> tuple[int, int] | None:
    """Global offset -> (shard position, offset within that shard); None past the end."""
    if not cumulative or offset >= cumulative[-1] or offset < 0:
        return None
    i = bisect.bisect_right(cumulative, offset)
    return i, offset - (cumulative[i - 1] if i else 0)


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of the published set; a request uses one snapshot throughout."""

    generation: int
    entries: tuple[ShardEntry, ...]
    loaded_at: float
    problems: tuple[str, ...] = ()
    by_key: dict[str, ShardEntry] = field(default_factory=dict)
    subsets: dict[str, SubsetView] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def build(cls, generation: int, entries: list[ShardEntry], problems: list[str], loaded_at: float) -> Snapshot:
        by_key: dict[str, ShardEntry] = {}
        for e in sorted(entries, key=lambda e: e.manifest_name):
            if e.key in by_key:
                problems.append(
                    f"{e.manifest_name}: shard key {e.key!r} already used by {by_key[e.key].manifest_name}; skipped"
                )
                continue
            by_key[e.key] = e
        grouped: dict[str, list[ShardEntry]] = {}
        for e in by_key.values():
            grouped.setdefault(e.subset, []).append(e)
        subsets = {s: SubsetView.of(sorted(es, key=ShardEntry.sort_key)) for s, es in grouped.items()}
        ordered = tuple(e for s in sorted(subsets, key=_subset_rank) for e in subsets[s].entries)
        digest = hashlib.sha256(
            "\n".join(f"{e.key}:{e.subset}:{e.sha256}:{e.num_docs}" for e in ordered).encode()
        ).hexdigest()[:16]
        return cls(generation, ordered, loaded_at, tuple(problems), by_key, subsets, digest)

    def view(self, subset: str) -> SubsetView:
        return self.subsets.get(subset) or SubsetView((), ())

    def counts(self) -> dict[str, dict[str, int]]:
        return {
            s: {"shards": len(v.entries), "documents": v.total, "images": sum(e.num_images for e in v.entries)}
            for s, v in sorted(self.subsets.items(), key=lambda kv: _subset_rank(kv[0]))
        }


def _subset_rank(subset: str) -> tuple[int, str]:
    return (SUBSETS.index(subset) if subset in SUBSETS else len(SUBSETS), subset)


class Catalog:
    """Lists manifests under ``{root}/{folder}`` and keeps the latest snapshot.

    ``snapshot()`` re-lists when the last listing is older than ``ttl`` seconds: one caller
    refreshes while concurrent callers keep using the previous snapshot, so a slow object
    store listing never stalls every request. ``ttl=0`` re-lists on every call.
    """

    def __init__(
        self,
        store: ShardStore,
        folder: str = "published",
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.store, self.folder, self.ttl, self._clock = store, folder, ttl, clock
        self._snapshot: Snapshot | None = None
        self._manifests: dict[str, tuple[tuple, ShardEntry | str]] = {}  # name -> (fingerprint, entry|error)
        self._lock = threading.Lock()
        self._generation = 0
        self.last_error: str | None = None

    def snapshot(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and self._clock() - snap.loaded_at < self.ttl:
            return snap
        if snap is None:
            with self._lock:  # the first listing: everyone waits for it
                return self._snapshot if self._snapshot is not None else self._refresh_locked()
        if self._lock.acquire(blocking=False):
            try:
                return self._refresh_locked()
            finally:
                self._lock.release()
        return snap

    def refresh(self) -> Snapshot:
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> Snapshot:
        try:
            listing = self._list()
        except Exception as exc:  # keep serving the last good snapshot through a flaky listing
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("listing %s failed: %s", self.store.uri(self.folder), self.last_error)
            old = self._snapshot  # retried after another ttl, not on every request
            self._snapshot = (
                dataclasses.replace(old, loaded_at=self._clock())
                if old is not None
                else Snapshot.build(self._generation, [], [], self._clock())
            )
            return self._snapshot
        self.last_error = None
        changed = [name for name, fp in listing if name not in self._manifests or self._manifests[name][0] != fp]
        fresh = self._read_many(changed)
        entries, problems, seen = [], [], set()
        for name, fingerprint in listing:
            seen.add(name)
            if name in fresh:
                if isinstance(fresh[name], Exception):  # vanished or a transient store error: next listing
                    problems.append(f"{name}: unreadable: {fresh[name]}")
                    continue
                self._manifests[name] = (fingerprint, self._parse(name, fresh[name]))
            cached = self._manifests[name]
            if isinstance(cached[1], ShardEntry):
                entries.append(cached[1])
            else:
                problems.append(f"{name}: {cached[1]}")
        for gone in set(self._manifests) - seen:
            del self._manifests[gone]
        old = self._snapshot
        snap = Snapshot.build(self._generation + 1, entries, problems, self._clock())
        if old is not None and snap.version == old.version:
            # same published set: keep the generation so caches derived from it stay valid
            snap = dataclasses.replace(snap, generation=old.generation)
        else:
            self._generation += 1
            log.info("published set: %d shards, %s", len(snap.entries), snap.counts())
        if old is None or snap.problems != old.problems:
            for p in snap.problems:
                log.warning("manifest skipped: %s", p)
        self._snapshot = snap
        return snap

    def _list(self) -> list[tuple[str, tuple]]:
        folder = self.store.path(self.folder)
        fs, path = folder.fs, folder.path
        fs.invalidate_cache(path)  # object-store listings are cached by fsspec otherwise
        try:
            infos = fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for info in infos:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            # skip temp files of atomic writes (".tmp-<uuid>-<name>") and anything not a manifest
            if info.get("type") == "file" and name.endswith(MANIFEST_SUFFIX) and not name.startswith("."):
                stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("etag")
                out.append((name, (info.get("size"), str(stamp))))
        return sorted(out)

    def _read_many(self, names: list[str]) -> dict[str, bytes | Exception]:
        """Manifest bytes by name; an object store fetches them concurrently (thousands at cold start)."""
        if not names:
            return {}
        folder = self.store.path(self.folder)
        fs = folder.fs
        paths = {fs._strip_protocol(self.store.path(self.folder, n).path): n for n in names}
        got = fs.cat(list(paths), on_error="return")  # a list in, a dict out
        out: dict[str, bytes | Exception] = {}
        for path, name in paths.items():
            value = got.get(path, FileNotFoundError(path))
            out[name] = value if isinstance(value, (bytes, Exception)) else FileNotFoundError(path)
        return out

    @staticmethod
    def _parse(name: str, raw: bytes) -> ShardEntry | str:
        """The entry, or why the manifest cannot be served (kept until the manifest changes)."""
        try:
            return entry_from_manifest(name, json.loads(raw))
        except ValueError as exc:  # ManifestError and JSON errors
            return f"{type(exc).__name__}: {exc}"
