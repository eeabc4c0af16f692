"""Stable 64-bit keys for corpus-wide counting: pHashes as integers, URLs hashed.

Keys must mean the same thing on every shard and every day, so URLs go through blake2b
(polars' own hash is not stable across versions). 64 bits: at 10^8 distinct URLs the
chance of any collision is about 3e-4, and a collision only sets a spurious
could_have_url_duplicate flag.
"""

from __future__ import annotations

import hashlib

import polars as pl


def url_key(url: str) -> int:
    return int.from_bytes(hashlib.blake2b(url.encode("utf-8"), digest_size=8).digest(), "little")


def url_keys(urls: pl.Series) -> pl.Series:
    """url_key of every URL (distinct URLs hashed once)."""
    if urls.len() == 0:
        return pl.Series(urls.name, [], dtype=pl.UInt64)
    distinct = urls.unique()
    codes = pl.Series([url_key(u) for u in distinct.to_list()], dtype=pl.UInt64)
    return urls.replace_strict(distinct, codes, return_dtype=pl.UInt64)


def phash_key(phash: str) -> int:
    """The 64-bit perceptual hash (16 hex digits) as an unsigned integer."""
    return int(phash, 16)


def phash_keys(phashes: pl.Expr | pl.Series) -> pl.Expr | pl.Series:
    return phashes.str.to_integer(base=16, dtype=pl.UInt64)
