"""Corpus-wide state that grows one shard at a time.

Layout under ``corpus/{name}/`` in the storage root::

    state.json                 version, registry {shard: id, storage_id}, files, settings
    {table}.v{version}.{token}.parquet   one immutable file per table and version

Every update writes new versioned files, then ``state.json`` (the commit point), then
deletes what the new state no longer names. A reader that loads ``state.json`` sees one
consistent version; a killed update leaves the previous version intact.

Counting tables are *key indexes*: rows ``(key, shard, n)``, one per key and shard that
holds it, split into buckets by ``key % buckets``. Keeping each shard's own rows is what
makes updates incremental: replacing or removing a shard's contribution only needs that
shard's new rows, never the other shards' tables. One update rewrites the buckets it
touches (all of them, for a whole shard) and holds one bucket in memory at a time.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import polars as pl

from mmc4_assets.storage import ShardStore

STATE_FILE = "state.json"
KEEP_AFFECTED = 1000  # versions whose affected-shard lists stay readable for the republish sensor


KEY_ROWS = {"key": pl.UInt64, "shard": pl.UInt32, "n": pl.UInt32}
POSTINGS = {"key": pl.UInt64, "n": pl.UInt32, "shards": pl.List(pl.UInt32)}


class ConcurrentUpdate(RuntimeError):
    """Another writer committed since this state was loaded; reload and redo the update."""


class CorpusState:
    """The registry and versioned tables of one corpus-wide asset."""

    def __init__(
        self,
        store: ShardStore,
        name: str,
        version: int = 0,
        registry: dict[str, dict[str, Any]] | None = None,
        files: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
        next_id: int = 0,
    ):
        self.store, self.name, self.version = store, name, version
        self.registry = registry or {}
        self.files = files or {}
        self.settings = settings or {}
        self.next_id = next_id
        self.loaded_version = version
        self._staged: dict[str, str] = {}
        self._token = uuid.uuid4().hex[:8]
        self.affected_file: str | None = None

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def load(cls, store: ShardStore, name: str) -> CorpusState:
        path = store.path("corpus", name, STATE_FILE)
        if not path.exists():
            return cls(store, name)
        raw = json.loads(path.read_bytes())
        return cls(store, name, raw["version"], raw["registry"], raw["files"], raw["settings"], raw["next_id"])

    def fresh(self, settings: dict[str, Any]) -> CorpusState:
        """An empty state that will replace this one (a full recompute) on commit."""
        new = CorpusState(self.store, self.name, version=self.version, settings=dict(settings))
        new.loaded_version = self.loaded_version
        return new

    def path(self, filename: str):
        return self.store.path("corpus", self.name, filename)

    def read(self, table: str, schema: dict) -> pl.DataFrame:
        """The table as of this version (staged writes included); empty when never written."""
        filename = self._staged.get(table) or self.files.get(table)
        if filename is None:
            return pl.DataFrame(schema=schema)
        with self.path(filename).open("rb") as fh:
            return pl.read_parquet(fh)

    # -- registry ----------------------------------------------------------------------
    def shard_id(self, shard: str) -> int:
        """A small integer for the shard, stable for as long as it stays registered."""
        entry = self.registry.get(shard)
        if entry is None:
            entry = self.registry[shard] = {"id": self.next_id, "storage_id": None}
            self.next_id += 1
        return entry["id"]

    def shard_keys(self) -> dict[int, str]:
        return {e["id"]: s for s, e in self.registry.items()}

    # -- writing -----------------------------------------------------------------------
    def stage(self, table: str, frame: pl.DataFrame) -> None:
        # the writer's token keeps two racing updates of the same version from sharing names
        filename = f"{table}.v{self.version + 1:08d}.{self._token}.parquet"
        with self.store.open_atomic(self.path(filename)) as fh:
            frame.write_parquet(fh, compression="zstd")
        self._staged[table] = filename

    def commit(self, affected: Iterable[str] = (), **settings: Any) -> int:
        """Publish staged tables, the registry and the affected shards as the next version.

        ``affected`` lists the shards to (re)publish from this version: the newly absorbed
        ones and those whose published output it changes; it is written before
        ``state.json`` (``affected_file``), so a committed version always has it. Refuses
        when someone else committed since this state was loaded (a last check, not a lock:
        corpus updates run one at a time, see dagster.yaml).
        """
        if CorpusState.load(self.store, self.name).version != self.loaded_version:
            for filename in self._staged.values():
                self.path(filename).unlink(missing_ok=True)
            raise ConcurrentUpdate(f"corpus/{self.name} changed while this update ran")
        self.version += 1
        self.affected_file = f"affected.v{self.version:08d}.{self._token}.json"
        self.store.write_bytes(self.path(self.affected_file), json.dumps(sorted(affected)).encode())
        self.files.update(self._staged)
        self._staged = {}
        self.settings.update(settings)
        state = {
            "version": self.version,
            "registry": self.registry,
            "files": self.files,
            "settings": self.settings,
            "next_id": self.next_id,
            "affected_file": self.affected_file,
        }
        self.store.write_bytes(self.path(STATE_FILE), json.dumps(state, sort_keys=True).encode())
        self._sweep()
        return self.version

    def _sweep(self) -> None:
        """Delete files the committed state does not name (older versions, killed updates).

        Only older versions: one of this version or newer may belong to a writer still running
        (it fails its commit and removes its own files; strays go with the next commit).
        """
        folder = self.store.path("corpus", self.name)
        keep = set(self.files.values()) | {STATE_FILE}
        for path in folder.iterdir():
            name = path.name
            stale_table = name.endswith(".parquet") and name not in keep and _version_of(name) < self.version
            old_affected = name.startswith("affected.") and _version_of(name) <= self.version - KEEP_AFFECTED
            if stale_table or old_affected:
                path.unlink(missing_ok=True)


def _version_of(filename: str) -> int:
    """``phash.b0003.v00000012.ab12cd34.parquet`` -> 12."""
    part = next((p for p in filename.split(".") if p.startswith("v") and p[1:].isdigit()), "v0")
    return int(part[1:])


@dataclass
class CorpusUpdate:
    """The outcome of one incremental (or full) update of a corpus-wide asset."""

    version: int
    absorbed: list[str]
    removed: list[str]
    affected_shards: list[str]
    full_recompute: bool
    affected_file: str | None  # where affected_shards is stored (None: no new version)
    stats: dict[str, Any] = field(default_factory=dict)


def plan(
    state: CorpusState, latest: dict[str, int | None], full_recompute: bool
) -> tuple[dict[str, int | None], list[str]]:
    """(shards to read, shards to forget): new or changed versions, and shards gone upstream."""
    removed = sorted(s for s in state.registry if s not in latest)
    if full_recompute:
        return dict(latest), removed
    changes = {s: v for s, v in latest.items() if s not in state.registry or state.registry[s]["storage_id"] != v}
    return changes, removed


@dataclass
class KeyUpdate:
    """What one update did to a key index, for the keys it touched."""

    before: pl.DataFrame  # POSTINGS of touched keys, old state
    after: pl.DataFrame  # POSTINGS of touched keys, new state
    rows: int = 0  # rows in the index after the update
    buckets_rewritten: int = 0
    stats: dict[str, Any] = field(default_factory=dict)


def _postings(rows: pl.DataFrame) -> pl.DataFrame:
    return (
        rows.group_by("key")
        .agg(pl.col("n").sum().cast(pl.UInt32), pl.col("shard").unique().sort().alias("shards"))
        .select(list(POSTINGS))
        .cast(POSTINGS)
    )


def bucket_table(counter: str, bucket: int) -> str:
    return f"{counter}.b{bucket:04d}"


SPILL_PARTS = 256  # a spill is cut this fine, so it serves any bucket count dividing it
MAX_BUCKET_ROWS = 4_000_000  # an index grows its bucket count to stay under this many rows a bucket


class BucketSpill:
    """New key rows routed to ``key % SPILL_PARTS`` and spilled to local parquet parts.

    What makes a batch of many shards (or a full recompute of the whole corpus) run in
    bounded memory: rows are appended shard by shard, written out every ``flush_rows``,
    and read back one bucket at a time (bucket b of B = the parts p with p % B == b, for
    any B dividing SPILL_PARTS: the bucket count can be chosen once the row count is known).
    ``by`` names the integer column that routes rows (``key`` unless told otherwise).
    """

    def __init__(self, schema: dict | None = None, flush_rows: int = 4_000_000, by: str = "key"):
        self.schema, self.flush_rows, self.by = schema or KEY_ROWS, flush_rows, by
        self._dir = tempfile.TemporaryDirectory(prefix="mmc4-spill-")
        self._pending: list[pl.DataFrame] = []
        self._pending_rows = self._parts = self.rows = 0

    def append(self, frame: pl.DataFrame) -> None:
        if frame.height == 0:
            return
        self._pending.append(frame.select(list(self.schema)).cast(self.schema))
        self._pending_rows += frame.height
        self.rows += frame.height
        if self._pending_rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        frame = pl.concat(self._pending).with_columns(_p=(pl.col(self.by) % SPILL_PARTS).cast(pl.Int64))
        for (p,), part in frame.partition_by("_p", as_dict=True, include_key=False).items():
            part.write_parquet(Path(self._dir.name) / f"p{p:04d}.f{self._parts:06d}.parquet")
        self._parts += 1
        self._pending, self._pending_rows = [], 0

    def bucket(self, b: int, buckets: int) -> pl.DataFrame:
        if SPILL_PARTS % buckets:
            raise ValueError(f"bucket count {buckets} must divide {SPILL_PARTS}")
        self.flush()
        files = [
            f for p in range(b, SPILL_PARTS, buckets) for f in sorted(Path(self._dir.name).glob(f"p{p:04d}.f*.parquet"))
        ]
        if not files:
            return pl.DataFrame(schema=self.schema)
        return pl.concat([pl.read_parquet(f) for f in files]).cast(self.schema)

    def close(self) -> None:
        self._dir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def index_buckets(state: CorpusState, counter: str, minimum: int) -> int:
    """The bucket count a counter's index has now (``minimum`` for a new one)."""
    return int(state.settings.get(f"{counter}.buckets", minimum))


def grown_buckets(current: int, rows: int, minimum: int) -> int:
    """Enough buckets (a power of two, never fewer than now) for ``rows`` at MAX_BUCKET_ROWS each."""
    b = max(current, minimum, 1)
    while rows > b * MAX_BUCKET_ROWS and b < SPILL_PARTS:
        b *= 2
    return b


def _over_postings(
    old: pl.DataFrame, new: pl.DataFrame, touched: pl.DataFrame, limit: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """POSTINGS before and after, only for touched keys over ``limit`` on either side.

    The other touched keys can flip nothing, so they are never materialized as lists:
    a batch touching millions of keys keeps only the few that matter.
    """

    def sums(rows: pl.DataFrame) -> pl.DataFrame:
        return rows.join(touched, on="key", how="semi").group_by("key").agg(pl.col("n").sum())

    over = (
        pl.concat([sums(old).filter(pl.col("n") > limit)["key"], sums(new).filter(pl.col("n") > limit)["key"]])
        .unique()
        .to_frame()
    )
    return (_postings(old.join(over, on="key", how="semi")), _postings(new.join(over, on="key", how="semi")))


def _old_buckets(state: CorpusState, counter: str, old_count: int, count: int) -> Iterator[tuple[int, pl.DataFrame]]:
    """(new bucket, its old rows): each old bucket read once, before anything replaces it,
    and split into the new buckets it feeds (b, b + old_count, ...) when the count grew."""
    for ob in range(old_count):
        old = state.read(bucket_table(counter, ob), KEY_ROWS)
        if count == old_count:
            yield ob, old
            continue
        for b in range(ob, count, old_count):
            yield b, old.filter((pl.col("key") % count) == b)


def update_key_index(
    state: CorpusState,
    counter: str,
    buckets: int,
    replaced: Iterable[int],
    added: pl.DataFrame | BucketSpill,
    limit: int = 0,
    sink: Callable[[pl.DataFrame], None] | None = None,
) -> KeyUpdate:
    """Drop every row of the ``replaced`` shard ids, add ``added`` (KEY_ROWS), bucket by bucket.

    ``added`` is a frame (a few shards) or a BucketSpill (a batch, a full recompute): either
    way one bucket is in memory at a time. ``buckets`` is the minimum bucket count: an index
    whose rows outgrow MAX_BUCKET_ROWS a bucket doubles it (each old bucket splits in two),
    so memory stays bounded at any corpus size. ``before``/``after`` keep only keys over ``limit``;
    with a ``sink``, each bucket's ``after`` goes to it instead and the update keeps neither
    (the band index: its keys over the limit grow with the corpus).
    """
    replaced = pl.Series(sorted(set(replaced)), dtype=pl.UInt32)
    old_buckets = index_buckets(state, counter, buckets)
    if isinstance(added, pl.DataFrame):
        frame = added.select(list(KEY_ROWS)).cast(KEY_ROWS)
        added = BucketSpill()
        added.append(frame)
    old_rows = int(state.settings.get(f"{counter}.rows", 0))
    count = grown_buckets(old_buckets, old_rows + added.rows, buckets)
    before, after = [], []
    rows = rewritten = 0
    for b, old in _old_buckets(state, counter, old_buckets, count):
        table = bucket_table(counter, b)
        new_rows = added.bucket(b, count)
        stale = old.filter(pl.col("shard").is_in(replaced.implode()))
        if stale.height == 0 and new_rows.height == 0 and count == old_buckets:
            rows += old.height
            continue
        new = pl.concat([old.filter(~pl.col("shard").is_in(replaced.implode())), new_rows])
        touched = pl.concat([stale["key"], new_rows["key"]]).unique().to_frame()
        was, now = _over_postings(old, new, touched, limit)
        if sink is None:
            before.append(was)
            after.append(now)
        else:
            sink(now)
        state.stage(table, new)
        rows += new.height
        rewritten += 1
        del old, new, new_rows, stale, touched
    state.settings.update({f"{counter}.buckets": count, f"{counter}.rows": rows})
    empty = pl.DataFrame(schema=POSTINGS)
    return KeyUpdate(pl.concat(before) if before else empty, pl.concat(after) if after else empty, rows, rewritten)


def update_over_limit(state: CorpusState, counter: str, update: KeyUpdate, limit: int) -> pl.DataFrame:
    """Maintain ``{counter}.over``: POSTINGS of keys with n > limit, without a full scan."""
    table = f"{counter}.over"
    old = state.read(table, POSTINGS)
    touched = pl.concat([update.before["key"], update.after["key"]]).unique().to_frame()
    new = pl.concat([old.join(touched, on="key", how="anti"), update.after.filter(pl.col("n") > limit)]).sort("key")
    if update.before.height or update.after.height or state.files.get(table) is None:
        state.stage(table, new)
    return new


def flipped_shards(update: KeyUpdate, limit: int, *, postings_matter: bool = False) -> set[int]:
    """Shard ids holding a key whose over-the-limit status changed in this update.

    With ``postings_matter``, a key over the limit whose set of shards changed counts too
    (who holds a duplicate URL decides which copy is kept).
    """
    joined = update.before.join(update.after, on="key", how="full", suffix="_after", coalesce=True)
    over_b = pl.col("n").fill_null(0) > limit
    over_a = pl.col("n_after").fill_null(0) > limit
    changed = over_b != over_a
    if postings_matter:
        none = pl.lit([], dtype=pl.List(pl.UInt32))
        moved = pl.col("shards").fill_null(none) != pl.col("shards_after").fill_null(none)
        changed = changed | ((over_b | over_a) & moved)
    hit = joined.filter(changed)
    ids = set(hit["shards"].explode().drop_nulls().to_list())
    ids |= set(hit["shards_after"].explode().drop_nulls().to_list())
    return ids


def read_affected(store: ShardStore, name: str, affected_file: str) -> list[str] | None:
    """The shards one version affected; None once the file was pruned (KEEP_AFFECTED)."""
    path = store.path("corpus", name, affected_file)
    return json.loads(path.read_bytes()) if path.exists() else None


def over_set_changes(
    old: pl.DataFrame,
    old_ids: dict[int, str],
    new: pl.DataFrame,
    new_ids: dict[int, str],
    *,
    postings_matter: bool = False,
) -> set[str]:
    """Shards touched by the difference of two over-the-limit sets (after a full recompute,
    when shard ids were renumbered and the update has no 'before' of its own)."""

    def keyed(frame: pl.DataFrame, ids: dict[int, str]) -> dict[int, frozenset[str]]:
        return {k: frozenset(ids[i] for i in s) for k, s in zip(frame["key"].to_list(), frame["shards"].to_list())}

    a, b = keyed(old, old_ids), keyed(new, new_ids)
    out: set[str] = set()
    for key in a.keys() ^ b.keys():
        out |= a.get(key, frozenset()) | b.get(key, frozenset())
    if postings_matter:
        for key in a.keys() & b.keys():
            if a[key] != b[key]:
                out |= a[key] | b[key]
    return out


@dataclass(frozen=True)
class TableReader:
    """``read(shard)`` of one per-shard table: picklable, so engine workers can call it too."""

    store: ShardStore
    table: str
    columns: tuple[str, ...] | None = None

    def __call__(self, shard: str) -> pl.DataFrame:
        return self.store.read_table(self.table, shard, list(self.columns) if self.columns else None)
