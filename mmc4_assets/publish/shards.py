"""Write and read ``docs_shard_{N}_v2.jsonl.zip`` with a manifest published last.

A reader lists manifests, not zips: the zip is written atomically first, the manifest
(with the zip's checksum) after it, so a shard without a manifest is not yet published
and a killed run never exposes a partial one. Subsets live in their own folder under
``published/`` (``published/mmc4-ff/...``) with the same pair of files.
"""

from __future__ import annotations

import contextlib
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


Folder = str | tuple[str, ...]


def _parts(folder: Folder) -> tuple[str, ...]:
    """``"published"`` or ``("published", "mmc4-ff")``: each part is one safe path component."""
    return (folder,) if isinstance(folder, str) else tuple(folder)


def manifest_name_for(zip_name: str) -> str:
    return zip_name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX


class ShardWriter:
    """One zip being written; several can be open at once (a shard and its subsets).

    Leaving the ``with`` block normally renames the zip into place; ``publish_manifest``
    then writes its manifest. An exception leaves nothing under the final name.
    """

    def __init__(self, store: ShardStore, zip_name: str, folder: Folder = "published"):
        self.store, self.zip_name, self.folder = store, zip_name, _parts(folder)
        self.num_docs = self.num_images = 0
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> ShardWriter:
        # a re-publish retracts the old manifest first: readers never pair it with the new zip
        self.store.delete(self.store.path(*self.folder, manifest_name_for(self.zip_name)))
        raw = self._stack.enter_context(self.store.open_atomic(self.store.path(*self.folder, self.zip_name)))
        self._hashing = _HashingWriter(raw)
        self._zip = self._stack.enter_context(zipfile.ZipFile(self._hashing, "w", compression=zipfile.ZIP_DEFLATED))
        # a fixed member date makes the same documents give the same bytes (and sha256) anywhere
        info = zipfile.ZipInfo(_member_name(self.zip_name), date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self._member = self._stack.enter_context(self._zip.open(info, "w", force_zip64=True))
        return self

    def write(self, doc: dict[str, Any]) -> None:
        self._member.write(json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n")
        self.num_docs += 1
        self.num_images += len(doc["image_info"])

    def __exit__(self, *exc) -> bool | None:
        return self._stack.__exit__(*exc)

    def publish_manifest(self, manifest_extra: dict[str, Any]) -> PublishedShard:
        manifest_name = manifest_name_for(self.zip_name)
        manifest = {
            "shard_file": self.zip_name,
            "num_docs": self.num_docs,
            "num_images": self.num_images,
            "sha256": self._hashing.sha256.hexdigest(),
            "bytes": self._hashing.size,
            **manifest_extra,
        }
        self.store.write_bytes(
            self.store.path(*self.folder, manifest_name), json.dumps(manifest, indent=2, sort_keys=True).encode()
        )
        return PublishedShard(
            self.zip_name, manifest_name, self.num_docs, self.num_images, manifest["sha256"], self._hashing.size
        )


def write_shard(
    store: ShardStore,
    zip_name: str,
    docs: Iterable[dict[str, Any]],
    manifest_extra: dict[str, Any],
    folder: Folder = "published",
) -> PublishedShard:
    """Stream documents into the zip, then publish the manifest."""
    with ShardWriter(store, zip_name, folder) as out:
        for doc in docs:
            out.write(doc)
    return out.publish_manifest(manifest_extra)


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


def read_manifest(store: ShardStore, manifest_name: str, folder: Folder = "published") -> dict:
    return json.loads(store.path(*_parts(folder), manifest_name).read_bytes())


def iter_shard_lines(store: ShardStore, zip_name: str, folder: Folder = "published") -> Iterator[bytes]:
    with (
        store.path(*_parts(folder), zip_name).open("rb") as fh,
        zipfile.ZipFile(fh) as zf,
        zf.open(_member_name(zip_name)) as member,
    ):
        yield from member


def read_shard(store: ShardStore, zip_name: str, folder: Folder = "published") -> list[dict]:
    return [json.loads(line) for line in iter_shard_lines(store, zip_name, folder)]


def file_sha256(store: ShardStore, zip_name: str, folder: Folder = "published") -> str:
    digest = hashlib.sha256()
    with store.path(*_parts(folder), zip_name).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
