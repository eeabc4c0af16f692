"""A storage root that is a local directory or any fsspec URL (``s3://bucket/prefix``).

Layout under the root::

    tables/{table}/{shard}.parquet     one file per asset and shard; the parameters the asset
                                       ran with in its key-value metadata (``read_table_params``)
    images/{sha[:2]}/{sha}.jpg         fetched images, content-addressed
    published/...                      MMC4 jsonl.zip shards and manifests

Local writes go to a temporary name in the same directory and are renamed into place,
so a killed run never leaves a half-written file under the final name. On S3 an object
becomes visible only when its upload completes: a single PUT below s3fs's block size
(50 MiB by default), otherwise a multipart upload that appears whole at
CompleteMultipartUpload. A write that fails is discarded (the multipart upload aborted,
nothing PUT), never committed: closing an s3fs file after an error would upload
whatever was buffered, so :meth:`ShardStore.open_atomic` does not let that happen.

A SIGKILLed local write leaves its temporary file (``.tmp-<uuid>-<name>``) behind. The
first atomic write into a directory sweeps that directory's temporary files older than
``temp_max_age`` seconds (default 24 h, twice the instance's ``max_runtime_seconds``, so no
live run can own one); younger ones may belong to a concurrent run and are left alone. On
S3 a killed upload leaves no object, only an incomplete multipart upload: a bucket lifecycle
rule (AbortIncompleteMultipartUpload) removes those.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

_LOCAL_PROTOCOLS = ("", "file", "local")
TMP_PREFIX = ".tmp-"
DEFAULT_TEMP_MAX_AGE = 24 * 3600.0
PARAMS_KEY = b"mmc4_params"  # parquet key-value metadata: the parameters a table was made with
log = logging.getLogger(__name__)


class ShardStore:
    """Per-shard tables and blobs under one root; ``storage_options`` go to fsspec (s3fs)."""

    def __init__(
        self,
        root: str | os.PathLike,
        storage_options: dict[str, Any] | None = None,
        temp_max_age: float | None = DEFAULT_TEMP_MAX_AGE,
    ):
        self.storage_options = dict(storage_options or {})
        self.root = UPath(str(root), **self.storage_options)
        self.is_local = self.root.protocol in _LOCAL_PROTOCOLS
        self.temp_max_age = temp_max_age  # None: never sweep
        self._swept: set[str] = set()

    def __repr__(self) -> str:
        return f"ShardStore({self.uri()!r})"

    # -- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> UPath:
        for part in parts:
            # keys come from partition keys and hashes; refuse anything that could escape the root
            if not part or part in (".", "..") or "/" in part or "\\" in part:
                raise ValueError(f"unsafe storage key component: {part!r}")
        return self.root.joinpath(*parts)

    def uri(self, *parts: str) -> str:
        return str(self.path(*parts)) if parts else str(self.root)

    def table_path(self, table: str, shard: str) -> UPath:
        return self.path("tables", table, f"{shard}.parquet")

    def blob_path(self, digest: str, ext: str = "jpg") -> UPath:
        return self.path("images", digest[:2], f"{digest}.{ext}")

    # -- atomic bytes ------------------------------------------------------------------
    @contextlib.contextmanager
    def open_atomic(self, target: UPath) -> Iterator[Any]:
        """Binary file handle whose content appears at ``target`` only if the block succeeds."""
        if not self.is_local:
            # no mkdir: object stores have no folders, and s3fs would try to create the bucket
            fh = target.fs.open(target.path, "wb")
            try:
                yield fh
            except BaseException:
                fh.discard()  # aborts a started multipart upload; nothing was PUT yet otherwise
                fh.closed = True  # so close() cannot flush the partial buffer as a real object
                raise
            fh.close()  # the single PUT, or CompleteMultipartUpload
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        local = Path(target.path)
        if self.temp_max_age is not None and str(local.parent) not in self._swept:
            self._swept.add(str(local.parent))
            sweep_temp_files(local.parent, self.temp_max_age)
        tmp = local.with_name(f".tmp-{uuid.uuid4().hex}-{local.name}")
        try:
            with open(tmp, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, local)
        finally:
            if tmp.exists():
                tmp.unlink()

    def write_bytes(self, target: UPath, data: bytes) -> None:
        with self.open_atomic(target) as fh:
            fh.write(data)

    def exists(self, target: UPath) -> bool:
        return target.exists()

    def delete(self, target: UPath) -> None:
        """Remove one object or file; absent is fine."""
        try:
            target.fs.rm_file(target.path)
        except FileNotFoundError:
            pass

    def put_blob(self, digest: str, data: bytes, ext: str = "jpg") -> bool:
        """Store content-addressed bytes; False when they were already there (nothing written)."""
        target = self.blob_path(digest, ext)
        if target.exists():
            return False
        self.write_bytes(target, data)
        return True

    def get_blob(self, image_name: str) -> bytes:
        digest = image_name.split(".", 1)[0]
        ext = image_name.rsplit(".", 1)[-1]
        return self.blob_path(digest, ext).read_bytes()

    # -- tables ------------------------------------------------------------------------
    @contextlib.contextmanager
    def table_writer(
        self, table: str, shard: str, schema: dict, params: dict[str, Any] | None = None
    ) -> Iterator[TableWriter]:
        """Write a table; ``params`` (JSON-able; ``writer.params`` may grow until the block ends)
        travel in its parquet key-value metadata, see read_table_params."""
        with self.open_atomic(self.table_path(table, shard)) as fh:
            writer = TableWriter(fh, schema, params=params)
            try:
                yield writer
            finally:
                writer.close()

    def write_table(self, table: str, shard: str, frame: pl.DataFrame, params: dict[str, Any] | None = None) -> None:
        with self.table_writer(table, shard, dict(frame.schema), params) as out:
            out.write(frame)

    def read_table_params(self, table: str, shard: str) -> dict[str, Any]:
        """The parameters the table was written with ({} for a table written without any)."""
        with self.table_path(table, shard).open("rb") as fh:
            raw = (pq.ParquetFile(fh).metadata.metadata or {}).get(PARAMS_KEY)
        return json.loads(raw) if raw else {}

    def has_table(self, table: str, shard: str) -> bool:
        return self.table_path(table, shard).exists()

    def read_table(self, table: str, shard: str, columns: list[str] | None = None) -> pl.DataFrame:
        with self.table_path(table, shard).open("rb") as fh:
            return pl.from_arrow(pq.read_table(fh, columns=columns))

    def scan(self, table: str, shard: str) -> pl.LazyFrame:
        """A lazy frame over a stored table, with projection and predicate pushdown on any root."""
        path = self.table_path(table, shard)
        if self.is_local:
            return pl.scan_parquet(path.path)
        import pyarrow.dataset as ds

        # pyarrow wraps the fsspec filesystem, so the store's credentials and endpoint apply
        return pl.scan_pyarrow_dataset(ds.dataset(path.path, filesystem=path.fs, format="parquet"))

    def iter_batches(
        self, table: str, shard: str, columns: list[str] | None = None, batch_size: int = 2048
    ) -> Iterator[pl.DataFrame]:
        """Row batches of a stored table; memory is bounded by the batch, not the shard."""
        with self.table_path(table, shard).open("rb") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_size, columns=columns):
                yield pl.from_arrow(pa.Table.from_batches([batch]))

    def num_rows(self, table: str, shard: str) -> int:
        with self.table_path(table, shard).open("rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows


def sweep_temp_files(folder: str | os.PathLike, older_than: float, now: float | None = None) -> list[str]:
    """Delete ``.tmp-*`` files of killed writes in ``folder`` last modified over ``older_than`` s ago."""
    now = time.time() if now is None else now
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TMP_PREFIX):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime > older_than:
                os.unlink(entry.path)
                removed.append(entry.name)
        except FileNotFoundError:
            pass  # another process swept it first
    if removed:
        log.info(
            "removed %d temporary file(s) of killed writes from %s: %s",
            len(removed),
            folder,
            ", ".join(sorted(removed)[:5]),
        )
    return removed


class TableWriter:
    """Appends rows or polars frames as parquet row groups with one fixed schema."""

    def __init__(self, fh: Any, schema: dict, buffer_rows: int = 4096, params: dict[str, Any] | None = None):
        self._schema = pl.Schema(schema)
        self._writer = pq.ParquetWriter(fh, pl.DataFrame(schema=self._schema).to_arrow().schema, compression="zstd")
        self.params = dict(params) if params is not None else None  # written at close
        self._buffer: list[dict] = []
        self._buffer_rows = buffer_rows
        self.rows = 0

    def append(self, row: dict) -> None:
        """Buffer one row; written as part of a row group, not a group of its own."""
        self._buffer.append(row)
        if len(self._buffer) >= self._buffer_rows:
            self._flush()

    def write(self, frame: pl.DataFrame | list[dict]) -> None:
        self._flush()
        if isinstance(frame, list):
            frame = pl.DataFrame(frame, schema=self._schema)
        self._write_frame(frame)

    def _flush(self) -> None:
        if self._buffer:
            rows, self._buffer = self._buffer, []
            self._write_frame(pl.DataFrame(rows, schema=self._schema))

    def _write_frame(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        frame = frame.select(list(self._schema)).cast(self._schema)
        self._writer.write_table(frame.to_arrow())
        self.rows += frame.height

    def close(self) -> None:
        self._flush()
        if self.params is not None:
            self._writer.add_key_value_metadata({PARAMS_KEY: json.dumps(self.params, sort_keys=True)})
        self._writer.close()
