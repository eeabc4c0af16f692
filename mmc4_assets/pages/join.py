"""C4 document URLs x page records, on Dask: one join for many shards, per-shard page tables out.

Every C4 shard wants the pages of its URLs, and every archive holds pages of URLs of every
shard: a many-to-many join. Reading every archive per shard costs archives x shards; this
costs archive rows + shard documents, once:

1. ``docs``: one task per C4 shard streams the shard file once -> ``(shard, url_key, c4_time)``,
   the first document of a URL wins (as ``raw_c4`` does).
2. ``pages``: the ``page_records`` parquet tables of every archive (one partition each).
3. ``docs.merge(pages, on="url_key")`` with dask's shuffle (``p2p`` by default: disk-backed,
   bounded memory). Only matches leave the merge.
4. Optionally the URLs still missing are joined with Common Crawl's columnar index
   (``pages/cc_columnar.py``), and the chosen captures are read by byte range.
5. The matches are shuffled by shard; each output partition holds whole shards, picks one
   capture per (shard, URL) -- HTML 200 first, then closest to the C4 timestamp, then
   archive key and record offset, so the choice never depends on partitioning -- and writes
   ``shard_pages/{shard}.parquet`` through :class:`ShardStore` (atomic).

The same code runs on an in-process LocalCluster and on a remote scheduler
(``mmc4_assets.engine.dask_client``). Workers open inputs and outputs themselves from URIs
and fsspec storage options, so nothing large goes through the client. No Dagster import.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from mmc4_assets.pages.archives import normalize_url, parse_time
from mmc4_assets.pages.page_table import (
    PAGE_RECORDS_SCHEMA,
    SHARD_PAGES_SCHEMA,
    SHARD_PAGES_TABLE,
)
from mmc4_assets.pages.raw_docs import iter_c4_lines
from mmc4_assets.storage import ShardStore

log = logging.getLogger(__name__)

# numpy/pandas-native dtypes through the shuffle: dask's p2p shuffle cannot round-trip
# pyarrow *list* extension dtypes through pandas metadata (list columns travel as object)
_S = pd.StringDtype("pyarrow")
_I64 = pd.Int64Dtype()
_EPOCH = pd.Timestamp(0, tz="UTC")
DOC_META = pd.DataFrame(
    {
        "shard": pd.Series([], dtype=_S),
        "url_key": pd.Series([], dtype=_S),
        "c4_url": pd.Series([], dtype=_S),
        "c4_time": pd.Series([], dtype=_I64),
    }
)
WRITTEN_META = pd.DataFrame(
    {
        "shard": pd.Series([], dtype=_S),
        "pages": pd.Series([], dtype=_I64),
        "docs_matched_warc": pd.Series([], dtype=_I64),
        "docs_matched_wat": pd.Series([], dtype=_I64),
        "docs_matched_cc": pd.Series([], dtype=_I64),
    }
)
_PAGE_COLUMNS = list(PAGE_RECORDS_SCHEMA)
# what read_parquet(dtype_backend="numpy_nullable") gives for page_records: every source of page
# rows (archives, the columnar index) uses these, so the shuffle sees one schema
PAGE_DTYPES = {
    "url": "string",
    "capture_time": "datetime64[us, UTC]",
    "status": "Int32",
    "mime": "string",
    "source": "string",
    "archive": "string",
    "record_offset": "Int64",
    "image_urls": object,
    "image_alts": object,
    "image_positions": object,
}


@dataclass(frozen=True)
class Location:
    """A URI and the fsspec options to open it (picklable: workers open it themselves)."""

    uri: str
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class JoinReport:
    """What the join did, per shard: pages written and matches by source."""

    per_shard: dict[str, dict[str, int]]
    page_tables: int

    @property
    def pages(self) -> int:
        return sum(r["pages"] for r in self.per_shard.values())


def shard_urls(shard: str, location: Location) -> pd.DataFrame:
    """(shard, url_key, c4_url, c4_time) of one C4 shard file; first document of a URL wins."""
    from upath import UPath

    seen: dict[str, tuple[str, int | None]] = {}
    with UPath(location.uri, **location.options).open("rb") as fh:
        for line in iter_c4_lines(fh):
            if line.error is None:
                key = normalize_url(line.doc["url"])
                if key not in seen:
                    when = parse_time(line.doc["timestamp"])
                    seen[key] = (line.doc["url"], int(when.timestamp()) if when else None)
    return pd.DataFrame(
        {
            "shard": pd.Series([shard] * len(seen), dtype=_S),
            "url_key": pd.Series(list(seen), dtype=_S),
            "c4_url": pd.Series([v[0] for v in seen.values()], dtype=_S),
            "c4_time": pd.Series([v[1] for v in seen.values()], dtype=_I64),
        }
    )


def _docs_frame(shards: Mapping[str, Location]):
    import dask.dataframe as dd

    items = sorted(shards.items())
    return dd.from_map(
        lambda item: shard_urls(*item), items, meta=DOC_META, label="c4-shard-urls", enforce_metadata=False
    )


def _pages_frame(page_tables: list[Location]):
    import dask.dataframe as dd

    options = page_tables[0].options if page_tables else {}
    return dd.read_parquet(
        [t.uri for t in page_tables],
        columns=_PAGE_COLUMNS,
        storage_options=options or None,
        dtype_backend="numpy_nullable",
        split_row_groups=False,
        aggregate_files=False,
    )


def rank_captures(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (shard, url_key): HTML 200 first, then closest in time to the C4 document,
    then archive key and record offset (deterministic whatever the partitioning)."""
    if frame.empty:
        return frame
    frame = frame.reset_index(drop=True)  # partitions of a shuffle repeat index labels
    status = pd.to_numeric(frame["status"], errors="coerce")
    html = frame["mime"].astype(object).fillna("").astype(str).str.contains("html")
    preferred = ((status == 200) & html).astype(bool)
    capture = (pd.to_datetime(frame["capture_time"], utc=True) - _EPOCH).dt.total_seconds()
    distance = (capture - pd.to_numeric(frame["c4_time"], errors="coerce").astype("float64")).abs()
    ranked = frame.assign(
        _pref=(~preferred).astype("int8"),
        _dist=distance.fillna(float(2**62)),
        _arch=frame["archive"].fillna(""),
        _off=frame["record_offset"].fillna(-1).astype("int64"),
    )
    ranked = ranked.sort_values(["shard", "url_key", "_pref", "_dist", "_arch", "_off"], kind="stable")
    best = ranked.drop_duplicates(["shard", "url_key"], keep="first")
    seconds = (capture.loc[best.index] - pd.to_numeric(best["c4_time"]).astype("float64")).round()
    return best.drop(columns=["_pref", "_dist", "_arch", "_off"]).assign(
        seconds_from_c4=seconds.astype(_I64 if seconds.isna().any() else "int64")
    )


def write_shard_partition(frame: pd.DataFrame, out: Location) -> pd.DataFrame:
    """Pick one capture per URL and write each shard of this partition (whole shards only)."""
    store = ShardStore(out.uri, out.options)
    best = rank_captures(frame)
    counts = []
    for shard, group in best.groupby("shard", sort=True, observed=True):
        table = pl.from_arrow(pa.Table.from_pandas(group, preserve_index=False))
        table = table.select([pl.col(c).cast(t) for c, t in SHARD_PAGES_SCHEMA.items()]).sort("url_key")
        store.write_table(SHARD_PAGES_TABLE, str(shard), table)
        by_source = table["source"].value_counts()
        n = dict(zip(by_source["source"].to_list(), by_source["count"].to_list(), strict=True))
        counts.append(
            {
                "shard": str(shard),
                "pages": table.height,
                "docs_matched_warc": n.get("warc", 0),
                "docs_matched_wat": n.get("wat", 0),
                "docs_matched_cc": n.get("cc_warc", 0) + n.get("cc_wat", 0),
            }
        )
    return pd.DataFrame(counts, columns=list(WRITTEN_META)).astype(WRITTEN_META.dtypes.to_dict())


def empty_shard_pages() -> pl.DataFrame:
    return pl.DataFrame(schema=SHARD_PAGES_SCHEMA)


def join_shard_pages(
    client,
    shards: Mapping[str, Location],
    page_tables: list[Location],
    out: Location,
    *,
    cc=None,
    shuffle_method: str | None = None,
    npartitions: int | None = None,
) -> JoinReport:
    """Write ``shard_pages/{shard}.parquet`` for every shard in ``shards``; one Dask computation.

    ``client``: a ``distributed.Client`` (``engine.dask_client``). ``page_tables``: the
    ``page_records`` tables to join. ``cc``: a ``cc_columnar.ColumnarIndex`` for the URLs the
    archives do not have (None: archives only). Shards without a match get an empty table.
    """
    import dask.dataframe as dd

    docs = _docs_frame(shards)
    n_out = npartitions or max(1, min(len(shards), 4 * max(1, len(client.scheduler_info()["workers"]))))
    shuffle = {"shuffle_method": shuffle_method} if shuffle_method else {}
    parts = []
    if page_tables:
        pages = _pages_frame(page_tables)
        if cc is None:
            parts.append(docs.merge(pages, on="url_key", how="inner", **shuffle))
        else:
            joined = docs.merge(pages, on="url_key", how="left", **shuffle)
            parts.append(joined[joined["url"].notna()])
            missing = joined[joined["url"].isna()][list(DOC_META.columns)]
            parts.append(cc.pages_for(missing, shuffle))
    elif cc is not None:
        parts.append(cc.pages_for(docs, shuffle))
    per_shard: dict[str, dict[str, int]] = {}
    if parts:
        matches = dd.concat(parts) if len(parts) > 1 else parts[0]
        by_shard = matches.shuffle(on="shard", npartitions=n_out, **shuffle)
        # on this client, named: a bare .compute() goes to whichever Client was made last in the
        # process (another run's, or a closed one), and waits for it forever
        written = client.compute(
            by_shard.map_partitions(write_shard_partition, out, meta=WRITTEN_META, enforce_metadata=False)
        ).result()
        for row in written.to_dict("records"):
            per_shard[row["shard"]] = {k: int(v) for k, v in row.items() if k != "shard"}
    store = ShardStore(out.uri, out.options)
    for shard in shards:  # no match at all: an empty table, so raw_c4 reads "none found", not "not joined"
        if shard not in per_shard:
            store.write_table(SHARD_PAGES_TABLE, shard, empty_shard_pages())
            per_shard[shard] = {k: 0 for k in WRITTEN_META.columns if k != "shard"}
    return JoinReport(per_shard=per_shard, page_tables=len(page_tables))
