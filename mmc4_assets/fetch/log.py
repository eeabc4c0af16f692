"""Per-shard fetch log: what a re-run (or a run after a crash) may reuse without a request.

Layout under the storage root::

    tables/fetch_log/{shard}/part-{seq:08d}-{run}.parquet

Every row that cost a request is appended, in completion order, to an in-memory buffer
that is written as one more part every ``flush_rows`` rows or ``flush_seconds`` seconds.
Parts are written atomically (temp file + fsync + rename locally; object stores only show
complete objects), and an image's blob is stored before its row is even buffered, so a
SIGKILL loses at most the unflushed buffer and never leaves a row without its image.
Later parts win over earlier ones for the same (doc_id, image_index, raw_url). A finished
shard compacts its parts into one.

Which logged rows are reused is the ``refetch`` policy (see :data:`REFETCH_MODES`); rows
are also ignored when the settings that decide a row's status changed (the fingerprint)
and, for ok rows, when the stored image has gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from mmc4_assets.fetch.http import CONNECTION_ERROR, OK, TIMEOUT, FetchSettings
from mmc4_assets.fetch.images import ImageLimits
from mmc4_assets.fetch.pipeline import FETCHED_SCHEMA

log = logging.getLogger(__name__)

LOG_TABLE = "fetch_log"
KEY = ["doc_id", "image_index", "raw_url"]
LOG_SCHEMA = {**FETCHED_SCHEMA, "fingerprint": pl.String}

# refetch policy for rows already in the log:
#   none       reuse every logged row (ok rows only while their image is stored)
#   transient  (default) also re-fetch transient failures: timeout, connection_error,
#              http_429 and http_5xx; a 404, a block or an opt-out stays as logged
#   failures   re-fetch every row that is not ok
#   all        ignore the log (it is still written)
REFETCH_MODES = ("none", "transient", "failures", "all")
DEFAULT_REFETCH = "transient"
TRANSIENT_STATUSES = frozenset({TIMEOUT, CONNECTION_ERROR, "http_429"})


def is_transient(status: str | None) -> bool:
    """Failures worth another try on a later run: the server or the path may recover."""
    return status in TRANSIENT_STATUSES or (status or "").startswith("http_5")


def reusable(status: str | None, refetch: str) -> bool:
    """Whether the policy keeps a logged row with this status (image existence aside)."""
    if refetch not in REFETCH_MODES:
        raise ValueError(f"refetch must be one of {REFETCH_MODES}, not {refetch!r}")
    if status is None or refetch == "all":
        return False
    if refetch == "failures":
        return status == OK
    if refetch == "transient":
        return not is_transient(status)
    return True


def fingerprint(settings: FetchSettings, limits: ImageLimits) -> str:
    """Hash of the settings that decide a final status or the stored bytes.

    Timeouts and retries are left out on purpose: they only change transient
    outcomes, which the default policy re-fetches anyway.
    """
    decisive = {
        "limits": asdict(limits),
        "max_bytes": settings.max_bytes,
        "max_redirects": settings.max_redirects,
        "allow_private": settings.allow_private,
        "respect_opt_out": settings.respect_opt_out,
        "robots_tokens": sorted(settings.robots_tokens),
        "decoder": 1,  # bump when process_image changes its output for the same bytes
    }
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


class FetchLog:
    """The fetch log of one shard in one :class:`~mmc4_assets.storage.ShardStore`."""

    def __init__(
        self, store: Any, shard: str, fingerprint: str, *, flush_rows: int = 2048, flush_seconds: float = 30.0
    ) -> None:
        self.store, self.shard, self.fingerprint = store, shard, fingerprint
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._run = uuid.uuid4().hex[:8]
        self._lock = threading.Lock()
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._next_seq: int | None = None
        self.rows_written = 0

    # -- reading -----------------------------------------------------------------------
    def _dir(self) -> Any:
        return self.store.path("tables", LOG_TABLE, self.shard)

    def parts(self) -> list[Any]:
        directory = self._dir()
        if not directory.exists():
            return []
        return sorted(
            (p for p in directory.iterdir() if p.name.startswith("part-") and p.name.endswith(".parquet")),
            key=lambda p: p.name,
        )

    def read_all(self) -> pl.DataFrame:
        """Every logged row, the latest per key, in log order."""
        frames = []
        for part in self.parts():
            try:
                with part.open("rb") as fh:
                    frames.append(pl.from_arrow(pq.read_table(fh)))
            except Exception:  # a damaged part only costs its rows a re-fetch
                log.warning("skipping unreadable fetch-log part %s", part, exc_info=True)
        if not frames:
            return pl.DataFrame(schema=LOG_SCHEMA)
        frame = pl.concat([f.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA) for f in frames])
        return frame.unique(subset=KEY, keep="last", maintain_order=True)

    def reusable_rows(self, refetch: str) -> pl.DataFrame:
        """Logged rows the policy allows to reuse under the current fingerprint."""
        reusable(OK, refetch)  # validates the mode
        if refetch == "all":
            return pl.DataFrame(schema=LOG_SCHEMA)
        rows = self.read_all().filter(pl.col("fingerprint") == self.fingerprint)
        keep = [s for s in rows["status"].unique().to_list() if reusable(s, refetch)]
        return rows.filter(pl.col("status").is_in(keep))

    # -- writing -----------------------------------------------------------------------
    def append(self, row: dict) -> None:
        """Buffer one final row (any thread)."""
        with self._lock:
            self._buffer.append(row)

    def due(self) -> bool:
        return len(self._buffer) >= self.flush_rows or (
            bool(self._buffer) and time.monotonic() - self._last_flush >= self.flush_seconds
        )

    def maybe_flush(self) -> None:
        if self.due():
            self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self._buffer = self._buffer, []
        self._last_flush = time.monotonic()
        if rows:
            self._write_part([{**r, "fingerprint": self.fingerprint} for r in rows])
            self.rows_written += len(rows)

    def _write_part(self, rows: list[dict] | pl.DataFrame) -> Any:
        if self._next_seq is None:
            seqs = [int(p.name.split("-")[1]) for p in self.parts() if p.name.split("-")[1].isdigit()]
            self._next_seq = max(seqs, default=0) + 1
        frame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows, schema=LOG_SCHEMA)
        path = self.store.path("tables", LOG_TABLE, self.shard, f"part-{self._next_seq:08d}-{self._run}.parquet")
        self._next_seq += 1
        with self.store.open_atomic(path) as fh:
            pq.write_table(frame.select(list(LOG_SCHEMA)).cast(LOG_SCHEMA).to_arrow(), fh, compression="zstd")
        return path

    def compact(self) -> None:
        """Flush, then replace all parts by one (written first, so a crash loses nothing)."""
        self.flush()
        old = self.parts()
        if len(old) <= 1:
            return
        merged = self._write_part(self.read_all())
        for part in old:
            if part.name != merged.name:
                part.unlink()
        for leftover in self._dir().iterdir():  # temp files of killed runs
            if leftover.name.startswith(".tmp-"):
                leftover.unlink()
