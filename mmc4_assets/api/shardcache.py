"""A per-shard sidecar, built once from a published zip, that serves any line cheaply.

A deflated zip member has no random access: reading line 4,000 of a shard means inflating
the 3,999 lines before it. The sidecar re-packs the shard the way the API serves it:

    [block 0][block 1]...    each block: up to ``block_docs`` API documents (compact JSON
                             without ``id``, one per line), zlib-compressed on its own
    block offsets            int64 x (num_blocks + 1)
    images per document      uint32 x num_docs       (for ``min_images``)
    best matched_sim per doc float32 x num_docs      (for ``min_matched_sim``; -inf: no image)
    footer                   magic, num_docs, num_blocks, block_docs, where the arrays start

so a page of 100 documents inflates four or five small blocks, and the filters read the two
small arrays. The similarity matrix, the bulk of a published line, is not served and not
kept. Sidecars live on local disk under the zip's sha256 (from the manifest): a republished
shard gets a new one, and a zip that does not match its manifest is never indexed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmc4_assets.api.index import ShardEntry
from mmc4_assets.storage import ShardStore

log = logging.getLogger(__name__)

MAGIC = b"MMC4API1"
_FOOTER = struct.Struct("<8sQQQQ")
NO_IMAGE_SIM = np.float32(-np.inf)


class ShardUnavailable(RuntimeError):
    """The shard is listed but cannot be served right now (checksum mismatch, missing zip)."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"shard {key}: {reason}")
        self.key, self.reason = key, reason


def project(doc: dict[str, Any]) -> tuple[bytes, int, float]:
    """One published line -> (API document JSON without id, number of images, best matched_sim)."""
    texts = [t for t in doc.get("text_list") or [] if isinstance(t, str)]
    images = [
        {
            "image_name": im.get("image_name"),
            "raw_url": im.get("raw_url"),
            "matched_text_index": im.get("matched_text_index"),
            "matched_sim": im.get("matched_sim"),
        }
        for im in doc.get("image_info") or []
        if isinstance(im, dict)
    ]
    sims = [im["matched_sim"] for im in images if isinstance(im["matched_sim"], (int, float))]
    body = {"url": doc.get("url"), "text": " ".join(texts), "text_list": texts, "images": images}
    return (
        json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        len(images),
        max(sims) if sims else float(NO_IMAGE_SIM),
    )


@dataclass(frozen=True)
class ShardData:
    """A loaded sidecar: its path, block offsets and the per-document summary."""

    path: Path
    num_docs: int
    block_docs: int
    offsets: np.ndarray
    n_images: np.ndarray
    max_sim: np.ndarray

    def mask(self, min_images: int | None, min_matched_sim: float | None) -> np.ndarray:
        keep = np.ones(self.num_docs, dtype=bool)
        if min_images is not None:
            keep &= self.n_images >= min_images
        if min_matched_sim is not None:
            keep &= self.max_sim >= np.float32(min_matched_sim)
        return keep

    def read(self, lines: Sequence[int]) -> list[bytes]:
        """API documents (JSON without id) of ascending line numbers."""
        out: list[bytes] = []
        current, docs = -1, []
        with open(self.path, "rb") as fh:
            fd = fh.fileno()
            for line in lines:
                block = line // self.block_docs
                if block != current:
                    start, end = int(self.offsets[block]), int(self.offsets[block + 1])
                    docs = zlib.decompress(os.pread(fd, end - start, start)).split(b"\n")
                    current = block
                out.append(docs[line - block * self.block_docs])
        return out


def load_sidecar(path: Path) -> ShardData:
    with open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size < _FOOTER.size:
            raise ValueError("truncated sidecar")
        fh.seek(size - _FOOTER.size)
        magic, num_docs, num_blocks, block_docs, arrays_at = _FOOTER.unpack(fh.read(_FOOTER.size))
        if magic != MAGIC or arrays_at + 8 * (num_blocks + 1) + 8 * num_docs + _FOOTER.size != size:
            raise ValueError("not a sidecar of this version")
        fh.seek(arrays_at)
        offsets = np.fromfile(fh, dtype="<i8", count=num_blocks + 1)
        n_images = np.fromfile(fh, dtype="<u4", count=num_docs)
        max_sim = np.fromfile(fh, dtype="<f4", count=num_docs)
    return ShardData(path, num_docs, block_docs, offsets, n_images, max_sim)


def write_sidecar(path: Path, lines: Iterator[bytes], block_docs: int = 32, level: int = 3) -> int:
    """Write a sidecar for an iterator of published jsonl lines; returns the document count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    offsets, n_images, max_sim, block = [0], [], [], []
    try:
        with open(tmp, "wb") as out:

            def flush() -> None:
                if block:
                    offsets.append(offsets[-1] + out.write(zlib.compress(b"\n".join(block), level)))
                    block.clear()

            for lineno, raw in enumerate(lines):
                try:
                    doc = json.loads(raw)
                except ValueError as exc:
                    raise ValueError(f"line {lineno} is not JSON: {exc}") from None
                if not isinstance(doc, dict):
                    raise ValueError(f"line {lineno} is not a JSON object")
                body, n, best = project(doc)
                block.append(body)
                n_images.append(n)
                max_sim.append(best)
                if len(block) == block_docs:
                    flush()
            flush()
            arrays_at = offsets[-1]
            out.write(np.asarray(offsets, dtype="<i8").tobytes())
            out.write(np.asarray(n_images, dtype="<u4").tobytes())
            out.write(np.asarray(max_sim, dtype="<f4").tobytes())
            out.write(_FOOTER.pack(MAGIC, len(n_images), len(offsets) - 1, block_docs, arrays_at))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(n_images)


class ShardCache:
    """Builds sidecars on first use (one build per shard at a time) and keeps recent ones loaded."""

    def __init__(
        self,
        store: ShardStore,
        cache_dir: str | os.PathLike,
        folder: str = "published",
        block_docs: int = 32,
        max_loaded: int = 4096,
        retry_after_s: float = 5.0,
    ):
        self.store, self.folder = store, folder
        self.cache_dir = Path(cache_dir)
        self.block_docs, self.max_loaded, self.retry_after_s = block_docs, max_loaded, retry_after_s
        self._loaded: OrderedDict[str, ShardData] = OrderedDict()
        self._failed: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self._build_locks: dict[str, threading.Lock] = {}
        self.builds = 0

    def sidecar_path(self, entry: ShardEntry) -> Path:
        return self.cache_dir / entry.sha256[:2] / f"{entry.sha256}.sidecar"

    def get(self, entry: ShardEntry) -> ShardData:
        with self._lock:
            data = self._loaded.get(entry.sha256)
            if data is not None:
                self._loaded.move_to_end(entry.sha256)
                return data
            build_lock = self._build_locks.setdefault(entry.sha256, threading.Lock())
        with build_lock:  # concurrent first requests for one shard build it once
            try:
                with self._lock:
                    if entry.sha256 in self._loaded:
                        return self._loaded[entry.sha256]
                data = self._load_or_build(entry)
                with self._lock:
                    self._loaded[entry.sha256] = data
                    while len(self._loaded) > self.max_loaded:
                        self._loaded.popitem(last=False)
                return data
            finally:
                with self._lock:
                    self._build_locks.pop(entry.sha256, None)

    def is_built(self, entry: ShardEntry) -> bool:
        return entry.sha256 in self._loaded or self.sidecar_path(entry).exists()

    def _load_or_build(self, entry: ShardEntry) -> ShardData:
        path = self.sidecar_path(entry)
        if path.exists():
            try:
                data = load_sidecar(path)
                if data.num_docs == entry.num_docs:
                    return data
            except (OSError, ValueError) as exc:
                log.warning("rebuilding sidecar %s: %s", path, exc)
        failed = self._failed.get(entry.sha256)
        if failed and time.monotonic() - failed[0] < self.retry_after_s:
            raise ShardUnavailable(entry.key, failed[1])  # don't re-download a bad zip per request
        try:
            self._build(entry, path)
            data = load_sidecar(path)
        except ShardUnavailable as exc:
            self._failed[entry.sha256] = (time.monotonic(), exc.reason)
            raise
        self._failed.pop(entry.sha256, None)
        return data

    def _build(self, entry: ShardEntry, path: Path) -> None:
        started = time.perf_counter()
        with self._verified_zip(entry) as local_zip:
            try:
                with zipfile.ZipFile(local_zip) as zf:
                    names = zf.namelist()
                    member = entry.shard_file[: -len(".zip")]
                    if member not in names:
                        if len(names) != 1:
                            raise ShardUnavailable(entry.key, "zip does not hold one jsonl member")
                        member = names[0]
                    with zf.open(member) as lines:
                        count = write_sidecar(path, lines, self.block_docs)
            except (zipfile.BadZipFile, ValueError) as exc:
                raise ShardUnavailable(entry.key, f"unreadable zip: {exc}") from None
        if count != entry.num_docs:
            path.unlink(missing_ok=True)
            raise ShardUnavailable(entry.key, f"{count} lines but the manifest says {entry.num_docs}")
        self.builds += 1
        log.info("sidecar for shard %s: %d docs in %.2fs", entry.key, count, time.perf_counter() - started)

    @contextmanager
    def _verified_zip(self, entry: ShardEntry) -> Iterator[Path]:
        """A local copy of the zip (the file itself on a local root), checked against the manifest."""
        src = self.store.path(self.folder, entry.shard_file)
        digest = hashlib.sha256()
        tmp: Path | None = None
        try:
            if self.store.is_local:
                local = Path(src.path)
                with open(local, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
            else:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=".download-", suffix=".zip", dir=self.cache_dir)
                tmp = local = Path(name)
                with src.open("rb") as fh, os.fdopen(fd, "wb") as out:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
        except FileNotFoundError:
            raise ShardUnavailable(entry.key, "zip is missing") from None
        except OSError as exc:
            raise ShardUnavailable(entry.key, f"zip unreadable: {exc}") from None
        try:
            if digest.hexdigest() != entry.sha256:
                # the zip is rewritten before its manifest: a shard being republished looks like this
                raise ShardUnavailable(entry.key, "zip does not match its manifest checksum (being republished?)")
            yield local
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmc4-assets" / "api"
