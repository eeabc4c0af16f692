"""MinHash signatures over word n-grams and LSH band keys, vectorised with numpy.

One scheme for the whole corpus: signatures computed on different shards, on different
days, must be comparable, so every hash here is stable (blake2b for words, fixed seeds
for the permutations) and the parameters live in ``MinHashScheme`` whose ``id`` is
stored beside every signature. Changing any parameter means a full recompute.

Measured against datasketch 2.0 (same n-grams, 128 permutations) in
``benchmarks/corpus_scaling.py --minhash``; this implementation was kept (no extra
dependency, several times faster: datasketch hashes each shingle with sha1 in Python).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class MinHashScheme:
    """Word n-gram MinHash with ``bands`` x ``rows`` LSH (num_perm = bands * rows)."""

    ngram: int = 5
    bands: int = 16
    rows: int = 8
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def id(self) -> str:
        return f"minhash-v1:w{self.ngram}:b{self.bands}x{self.rows}:s{self.seed}"

    @cached_property
    def _perm(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(1, 2**63, self.num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
        b = rng.integers(0, 2**63, self.num_perm, dtype=np.uint64)
        return a, b

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that two documents of this Jaccard similarity share at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


def word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads the n-gram combination over all 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def shingle_hashes(texts: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram of every text, and each text's offset into them.

    A text shorter than ``ngram`` words is one shingle (all its words); an empty text has
    none, and its signature is all ones (it matches nothing).
    """
    tokens = pl.Series("text", list(texts), dtype=pl.String).str.to_lowercase().str.extract_all(r"\w+")
    lengths = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    words = tokens.explode().drop_nulls()  # an empty list explodes to one null
    # blake2b is stable across versions and machines (polars' own hash is not); hash each
    # distinct word once, in Python, then map back in Rust
    distinct = words.unique()
    codes = pl.Series([word_hash(w) for w in distinct.to_list()], dtype=pl.UInt64)
    hashes = words.replace_strict(distinct, codes, return_dtype=pl.UInt64).to_numpy()
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(texts) else np.zeros(0, np.int64)
    # window hash at every position: h_i * G^(n-1) + ... + h_{i+n-1}, wrapping in 64 bits
    padded = np.concatenate([hashes, np.zeros(ngram, dtype=np.uint64)])
    total = len(hashes)
    window = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(ngram):
            window = window * _GOLDEN + padded[j : j + total]
    ends = np.repeat(starts + lengths, lengths)
    doc_of = np.repeat(np.arange(len(texts)), lengths)
    full = np.arange(total) + ngram <= ends
    shingles, owners = _mix(window[full]), doc_of[full]
    # texts shorter than the n-gram: one shingle of all their words (rare, so a Python loop)
    short = np.flatnonzero((lengths > 0) & (lengths < ngram))
    if len(short):
        extra = np.zeros(len(short), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k, d in enumerate(short):
                h = np.uint64(0)
                for v in hashes[starts[d] : starts[d] + lengths[d]]:
                    h = h * _GOLDEN + v
                extra[k] = h
        shingles = np.concatenate([shingles, _mix(extra)])
        owners = np.concatenate([owners, short])
        order = np.argsort(owners, kind="stable")
        shingles, owners = shingles[order], owners[order]
    counts = np.bincount(owners, minlength=len(texts))
    return shingles, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def signatures(texts: Sequence[str], scheme: MinHashScheme, chunk: int = 1 << 16) -> np.ndarray:
    """uint32 MinHash signatures, one row of ``scheme.num_perm`` per text.

    Permutation k of a shingle x is the top 32 bits of ``a_k * x + b_k`` (multiply-add-shift
    hashing, wrapping in 64 bits); no modulo, so numpy does it at memory speed.
    """
    shingles, offsets = shingle_hashes(texts, scheme.ngram)
    a, b = scheme._perm
    out = np.full((len(texts), scheme.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    nonempty = np.flatnonzero(offsets[1:] > offsets[:-1])
    if not len(nonempty):
        return out
    doc_of = np.repeat(np.arange(len(texts)), np.diff(offsets))
    best = np.full(out.shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    buf = np.empty((scheme.num_perm, min(chunk, len(shingles))), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, len(shingles), chunk):
            x = shingles[lo : lo + chunk]
            docs = doc_of[lo : lo + chunk]
            perm = buf[:, : len(x)]
            np.multiply(a[:, None], x[None, :], out=perm)
            np.add(perm, b[:, None], out=perm)
            # chunk boundaries may split a document: reduce per (chunk, doc), then merge
            starts = np.flatnonzero(np.concatenate([[True], docs[1:] != docs[:-1]]))
            present = docs[starts]
            best[present] = np.minimum(best[present], np.minimum.reduceat(perm, starts, axis=1).T)
    # the shift is monotone, so the min of the shifted values is the shifted min
    out[nonempty] = (best[nonempty] >> np.uint64(32)).astype(np.uint32)
    return out


def band_keys(sigs: np.ndarray, scheme: MinHashScheme) -> np.ndarray:
    """uint64 key per (document, band): documents sharing a key are LSH candidates.

    The band index is mixed in, so equal rows in different bands never collide.
    """
    n = sigs.shape[0]
    rows = sigs.reshape(n, scheme.bands, scheme.rows).astype(np.uint64)
    key = np.broadcast_to(np.arange(1, scheme.bands + 1, dtype=np.uint64), (n, scheme.bands)).copy()
    with np.errstate(over="ignore"):
        for r in range(scheme.rows):
            key = _mix(key * _GOLDEN + rows[:, :, r])
    return key


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of equal signature entries, row by row (an unbiased Jaccard estimate)."""
    return (np.asarray(a) == np.asarray(b)).mean(axis=-1)
