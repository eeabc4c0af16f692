"""Write and read ``docs_shard_{N}_v2.jsonl.zip`` with a manifest published last.

A reader lists manifests, not zips: the zip is written atomically first, the manifest
(with the zip's checksum) after it, so a shard without a manifest is not yet published
and a killed run never exposes a partial one.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mmc4_assets.storage import ShardStore

MANIFEST_SUFFIX = ".manifest.json"


@dataclass(frozen=True)
class PublishedShard:
    zip_name: str
    manifest_name: str
    num_docs: int
    num_images: int
    sha256: str
    bytes: int


def _member_name(zip_name: str) -> str:
    return zip_name[: -len(".zip")]


def write_shard(store: ShardStore, zip_name: str, docs: Iterable[dict[str, Any]],
                manifest_extra: dict[str, Any], folder: str = "published") -> PublishedShard:
    """Stream documents into the zip, then publish the manifest."""
    target = store.path(folder, zip_name)
    num_docs = num_images = 0
    with store.open_atomic(target) as raw:
        hashing = _HashingWriter(raw)
        with zipfile.ZipFile(hashing, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            with zf.open(_member_name(zip_name), "w", force_zip64=True) as member:
                for doc in docs:
                    member.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")
                    num_docs += 1
                    num_images += len(doc["image_info"])
    manifest_name = zip_name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX
    manifest = {"shard_file": zip_name, "num_docs": num_docs, "num_images": num_images,
                "sha256": hashing.sha256.hexdigest(), "bytes": hashing.size, **manifest_extra}
    store.write_bytes(store.path(folder, manifest_name),
                      json.dumps(manifest, indent=2, sort_keys=True).encode())
    return PublishedShard(zip_name, manifest_name, num_docs, num_images, manifest["sha256"],
                          hashing.size)


class _HashingWriter(io.RawIOBase):
    """Hashes what goes through; zipfile needs only write/tell/flush on a non-seekable stream."""

    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.raw.write(b)
        self.sha256.update(b)
        self.size += len(b)
        return len(b)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


def read_manifest(store: ShardStore, manifest_name: str, folder: str = "published") -> dict:
    return json.loads(store.path(folder, manifest_name).read_bytes())


def iter_shard_lines(store: ShardStore, zip_name: str, folder: str = "published") -> Iterator[bytes]:
    with store.path(folder, zip_name).open("rb") as fh, zipfile.ZipFile(fh) as zf:
        with zf.open(_member_name(zip_name)) as member:
            yield from member


def read_shard(store: ShardStore, zip_name: str, folder: str = "published") -> list[dict]:
    return [json.loads(line) for line in iter_shard_lines(store, zip_name, folder)]


def file_sha256(store: ShardStore, zip_name: str, folder: str = "published") -> str:
    digest = hashlib.sha256()
    with store.path(folder, zip_name).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
