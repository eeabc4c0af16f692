"""Common Crawl through its columnar URL index: one bulk join instead of one CDX call per URL.

CC publishes, per crawl, a parquet table of every capture
(``s3://commoncrawl/cc-index/table/cc-main/warc/crawl=CC-MAIN-2019-18/subset=warc/*.parquet``)
with ``url``, ``url_surtkey``, ``fetch_time``, ``fetch_status``, ``content_mime_detected``,
``warc_filename``, ``warc_record_offset``, ``warc_record_length``. Inside the shard_pages join
(``pages/join.py``), the URLs no archive had are:

1. joined with the index on the normalized URL (HTML 200 captures only; parquet row-group
   statistics skip what ``fetch_status`` rules out);
2. reduced to one capture per (shard, URL): the closest in time to the C4 document, then
   file name and offset (deterministic);
3. shuffled by ``warc_filename``; each task opens each of its WARC files once and reads the
   chosen records' byte ranges in offset order, parsing them with the archive parser.

A record that cannot be read or holds no page is left out (the document falls to
``no_page_record`` in raw_c4, or to the CDX fallback when that is on).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mmc4_assets.pages.archives import iter_page_records, normalize_url
from mmc4_assets.pages.page_table import page_row

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "url",
    "fetch_time",
    "fetch_status",
    "content_mime_detected",
    "warc_filename",
    "warc_record_offset",
    "warc_record_length",
]
MAX_RECORD_BYTES = 16 * 1024 * 1024  # a CC WARC record is a few hundred KB at most
_EPOCH = pd.Timestamp(0, tz="UTC")


def _with_keys(index: pd.DataFrame) -> pd.DataFrame:
    mime = index["content_mime_detected"].astype(object).fillna("").astype(str)
    index = index[mime.str.contains("html")]
    return index.assign(url_key=index["url"].astype(object).map(normalize_url).astype("string[pyarrow]"))


def closest_capture(frame: pd.DataFrame) -> pd.DataFrame:
    """One capture per (shard, url_key): closest fetch_time to the C4 timestamp, then file and offset."""
    if frame.empty:
        return frame
    frame = frame.reset_index(drop=True)
    fetched = (pd.to_datetime(frame["fetch_time"], utc=True) - _EPOCH).dt.total_seconds()
    c4 = pd.to_numeric(frame["c4_time"], errors="coerce").astype("float64")
    ranked = frame.assign(_dist=(fetched - c4).abs().fillna(float(2**62)))
    ranked = ranked.sort_values(["shard", "url_key", "_dist", "warc_filename", "warc_record_offset"], kind="stable")
    return ranked.drop_duplicates(["shard", "url_key"], keep="first").drop(columns=["_dist"])


def open_archive(root, name: str):
    """One WARC file of the crawl, opened once for all its chosen records (1 MiB read blocks)."""
    return (root / name).open("rb", block_size=2**20)


@dataclass(frozen=True)
class ColumnarIndex:
    """The index files and the crawl root their ``warc_filename``s are relative to."""

    files: tuple[str, ...]
    archive_root: str
    index_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    archive_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_config(cls, config) -> ColumnarIndex:
        """From a ``CommonCrawlConfig``: globs expanded now, so a run joins a fixed set of files."""
        from upath import UPath

        settings = config.settings()
        files: list[str] = []
        for pattern in config.columnar_index:
            fs = UPath(pattern, **settings.storage_options).fs if "://" in pattern else None
            if fs is not None and any(c in pattern for c in "*?["):
                files += sorted(fs.unstrip_protocol(p) for p in fs.glob(pattern))
            elif fs is None and any(c in pattern for c in "*?["):
                import glob

                files += sorted(glob.glob(pattern, recursive=True))
            else:
                files.append(pattern)
        return cls(tuple(files), settings.archive_root, settings.storage_options, settings.storage_options)

    def read_ranges(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Page rows of the chosen captures; each WARC file opened once, records read in offset order."""
        from upath import UPath

        from mmc4_assets.pages.join import DOC_META, PAGE_DTYPES

        root = UPath(self.archive_root, **self.archive_options)
        rows = []
        for filename, group in frame.groupby("warc_filename", sort=True):
            name = str(filename).lstrip("/")
            if ".." in name.split("/"):
                continue
            try:
                fh = open_archive(root, name)
            except OSError as exc:
                log.warning("cannot open %s: %s", name, exc)
                continue
            with fh:
                for cap in group.sort_values("warc_record_offset").itertuples(index=False):
                    length, offset = int(cap.warc_record_length), int(cap.warc_record_offset)
                    if not 0 < length <= MAX_RECORD_BYTES or offset < 0:
                        continue
                    try:
                        fh.seek(offset)
                        data = fh.read(length)
                        page = next(iter_page_records(io.BytesIO(data), name), None)
                    except Exception as exc:  # one bad capture, not the task  # noqa: BLE001
                        log.warning("unreadable record %s@%s: %s", name, offset, type(exc).__name__)
                        continue
                    if page is None:
                        continue
                    row = page_row(page, name)
                    row.update(
                        record_offset=offset,
                        shard=cap.shard,
                        url_key=cap.url_key,
                        c4_url=cap.c4_url,
                        c4_time=cap.c4_time,
                        source=f"cc_{page.source}",
                    )
                    rows.append(row)
        out = pd.DataFrame(rows, columns=list(DOC_META.columns) + list(PAGE_DTYPES))
        out["capture_time"] = pd.to_datetime(out["capture_time"], utc=True).astype("datetime64[us, UTC]")
        return out.astype(
            {**DOC_META.dtypes.to_dict(), **{k: v for k, v in PAGE_DTYPES.items() if k != "capture_time"}}
        )

    def pages_for(self, docs, shuffle: dict):
        """Page rows (docs' columns + page_records columns) for ``docs`` (a dask frame of
        shard, url_key, c4_url, c4_time) from the index and the crawl's WARC files."""
        import dask.dataframe as dd

        from mmc4_assets.pages.join import DOC_META, PAGE_DTYPES

        index = dd.read_parquet(
            list(self.files),
            columns=INDEX_COLUMNS,
            filters=[("fetch_status", "==", 200)],
            storage_options=self.index_options or None,
        )
        index = index.map_partitions(_with_keys, meta=_with_keys(index._meta))
        candidates = docs.merge(index, on="url_key", how="inner", **shuffle)
        best = candidates.shuffle(on="url_key", **shuffle).map_partitions(closest_capture)
        meta = pd.concat([DOC_META, pd.DataFrame({c: pd.Series([], dtype=t) for c, t in PAGE_DTYPES.items()})], axis=1)
        return best.shuffle(on="warc_filename", **shuffle).map_partitions(
            self.read_ranges, meta=meta, enforce_metadata=False
        )
