"""Invariants each stage's output must hold. Each returns an Outcome with its evidence.

These are the structural checks that block a broken partition. The great-expectations
suites (distributional expectations, Data Docs) sit on top of the same tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import linear_sum_assignment

from mmc4_assets.dedup.phash import dedup_in_document
from mmc4_assets.publish.mmc4_format import schema_errors
from mmc4_assets.quality.messages import describe, reason_counts

# reasons raw_c4 gives a source that ended or broke before its end (pages.raw_docs.SOURCE_REASONS)
_SOURCE_BROKEN = ("truncated_source", "corrupt_source")


@dataclass
class Outcome:
    failures: dict[str, int] = field(default_factory=dict)  # rule -> offending rows
    examples: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    summary: str = ""  # one line on what the partition holds, leading every description
    messages: dict[str, str] = field(default_factory=dict)  # rule -> its own words, when given

    @property
    def passed(self) -> bool:
        return not any(self.failures.values())

    def rule(self, name: str, offending: int, example: Any = None, message: str | None = None) -> None:
        self.failures[name] = int(offending)
        if offending and message:
            self.messages[name] = message
        if offending and example is not None and len(self.examples) < 5:
            self.examples.append(f"{name}: {example}")

    def describe(self, failed_expectations: list[str] = ()) -> str:
        """What is wrong and how many rows, in words (``quality.messages``)."""
        return describe(self.summary, self.failures, self.messages, failed_expectations)

    def metadata(self) -> dict[str, Any]:
        md: dict[str, Any] = {f"violations_{k}": v for k, v in self.failures.items()}
        md.update(self.stats)
        if self.examples:
            md["examples"] = "\n".join(self.examples)
        if self.summary:
            md["summary"] = self.summary
        return md


def _first(frame: pl.DataFrame, col: str = "doc_id") -> Any:
    return frame[col][0] if frame.height else None


def raw_c4_rules(
    docs: pl.DataFrame,
    quarantine: pl.DataFrame,
    lines_read: int | None,
    allow_truncated_source: bool = False,
    image_drops: dict[str, int] | None = None,
    images_kept: int | None = None,
) -> Outcome:
    out = Outcome(stats={"docs": docs.height, "quarantined": quarantine.height})
    reasons = dict(quarantine.group_by("reason").len().iter_rows()) if quarantine.height else {}
    lines = lines_read if lines_read is not None else docs.height + quarantine.height
    out.summary = f"{docs.height} documents: {quarantine.height} of {lines} lines quarantined" + (
        f" ({reason_counts(reasons)})" if reasons else ""
    )
    if image_drops is not None and images_kept is not None:
        total = images_kept + sum(image_drops.values())
        out.summary += f"; {images_kept} of {total} image URLs pass the URL filter" + (
            f" ({reason_counts(image_drops)})" if any(image_drops.values()) else ""
        )
    out.rule("no_documents", int(docs.height == 0), message="no document to pass on")
    # a source that ended early publishes only its first part: blocking unless allowed
    broken = quarantine.filter(pl.col("reason").is_in(_SOURCE_BROKEN))
    detail = broken["raw"][0] if broken.height else None
    out.stats["truncated_source_allowed"] = allow_truncated_source
    if detail:
        out.stats["source_error"] = detail
    out.rule(
        "source_broken",
        0 if allow_truncated_source else broken.height,
        detail,
        message=f"source shard cut short or corrupt ({detail}); set "
        f"allow_truncated_source to publish the lines read before it",
    )
    not_gzip = quarantine.filter(pl.col("reason") == "not_gzip")
    out.rule(
        "source_not_gzip",
        not_gzip.height,
        _first(not_gzip, "raw"),
        message=f"source shard is not gzip ({_first(not_gzip, 'raw')})",
    )
    out.rule("null_url_or_text", docs.filter(pl.col("url").is_null() | pl.col("text_list").is_null()).height)
    dup = docs.filter(pl.col("doc_id").is_duplicated())
    out.rule("duplicate_doc_id", dup.height, _first(dup))
    empty = docs.filter(pl.col("text_list").list.len() == 0)
    out.rule("no_sentences", empty.height, _first(empty))
    no_img = docs.filter(pl.col("image_urls").list.len() == 0)
    out.rule("no_candidate_images", no_img.height, _first(no_img))
    if lines_read is not None:
        # every source line is accounted for: a document or a quarantine row
        out.rule("lines_unaccounted", abs(lines_read - docs.height - quarantine.height))
    return out


def fetched_images_rules(
    fetched: pl.DataFrame, raw_docs: pl.DataFrame, min_side: int, max_aspect: float, max_side: int
) -> Outcome:
    expected = raw_docs.select(pl.col("image_urls").list.len().sum()).item() or 0
    ok = fetched.filter(pl.col("status") == "ok")
    out = Outcome(
        stats={
            "candidates": fetched.height,
            "ok": ok.height,
            "success_rate": round(ok.height / fetched.height, 4) if fetched.height else 0.0,
        }
    )
    failed = (
        dict(fetched.filter(pl.col("status") != "ok").group_by("status").len().iter_rows()) if fetched.height else {}
    )
    out.summary = f"{ok.height} of {fetched.height} candidate images fetched ok" + (
        f" ({reason_counts({str(k): v for k, v in failed.items()})})" if failed else ""
    )
    out.rule("no_image_ok", int(ok.height == 0), message="no candidate image was fetched ok")
    out.rule("rows_vs_raw_c4_candidates", abs(fetched.height - expected))
    dup_keys = fetched.filter(pl.struct("doc_id", "image_index").is_duplicated())
    out.rule("duplicate_candidate_rows", dup_keys.height, _first(dup_keys))
    out.rule("ok_without_image_name", ok.filter(pl.col("image_name").is_null() | pl.col("phash").is_null()).height)
    orig_small = ok.filter(pl.min_horizontal("orig_width", "orig_height") < min_side)
    out.rule("ok_but_too_small", orig_small.height, _first(orig_small))
    aspect = pl.col("orig_width") / pl.col("orig_height")
    bad = ok.filter((aspect > max_aspect) | (aspect < 1 / max_aspect))
    out.rule("ok_but_bad_aspect", bad.height, _first(bad))
    big = ok.filter(pl.max_horizontal("width", "height") > max_side)
    out.rule("longer_side_over_max", big.height, _first(big))
    no_reason = fetched.filter(pl.col("status").is_null() | (pl.col("status") == ""))
    out.rule("row_without_status", no_reason.height)
    return out


def clip_scores_rules(scores: pl.DataFrame, features: pl.DataFrame) -> Outcome:
    out = Outcome(
        stats={"docs": scores.height, "distinct_images": features.height},
        summary=f"{scores.height} documents scored, {features.height} distinct images",
    )
    shape_bad = range_bad = 0
    example = None
    for row in scores.select("doc_id", "text_list", "images", "similarity_matrix").iter_rows(named=True):
        m = np.asarray(row["similarity_matrix"], dtype=np.float64)
        if m.shape != (len(row["images"]), len(row["text_list"])):
            shape_bad += 1
            example = example or row["doc_id"]
        elif m.size and (not np.isfinite(m).all() or np.abs(m).max() > 1.0 + 1e-5):
            range_bad += 1
            example = example or row["doc_id"]
    out.rule("matrix_shape_not_images_x_sentences", shape_bad, example)
    out.rule("similarity_not_finite_cosine", range_bad, example)
    if features.height:
        emb = np.asarray(features["embedding"].to_list(), dtype=np.float64)
        norms = np.linalg.norm(emb, axis=1)
        out.rule("embedding_norm_not_1", int((np.abs(norms - 1.0) > 1e-3).sum()))
    names = set(features["image_name"].to_list())
    missing = scores.select(pl.col("images").list.eval(pl.element().struct.field("image_name"))).explode("images")
    missing_n = sum(1 for n in missing["images"].to_list() if n is not None and n not in names)
    out.rule("image_without_features", missing_n)
    return out


def assignments_rules(assigned: pl.DataFrame, min_sim: float) -> Outcome:
    out = Outcome(stats={"docs": assigned.height}, summary=f"{assigned.height} documents assigned")
    bad_index = below = shared = shape_bad = not_entry = 0
    example = None
    for row in assigned.select("doc_id", "text_list", "image_info", "similarity_matrix").iter_rows(named=True):
        n_sent = len(row["text_list"])
        idx = [im["matched_text_index"] for im in row["image_info"]]
        if len(row["similarity_matrix"]) != len(row["image_info"]):
            shape_bad += 1
            continue
        if any(i is None or not 0 <= i < n_sent for i in idx):
            bad_index += 1
            example = example or row["doc_id"]
            continue
        # a kept image's best sentence clears the threshold (its matched one need not, in MMC4's rule)
        if any(max(r) < min_sim - 1e-6 for r in row["similarity_matrix"]):
            below += 1
            example = example or row["doc_id"]
        if any(
            abs(im["matched_sim"] - r[im["matched_text_index"]]) > 1e-6
            for im, r in zip(row["image_info"], row["similarity_matrix"])
        ):
            not_entry += 1
            example = example or row["doc_id"]
        # a sentence may hold several images only through the surplus rule
        non_surplus = [im["matched_text_index"] for im in row["image_info"] if not im["surplus"]]
        if len(non_surplus) != len(set(non_surplus)):
            shared += 1
            example = example or row["doc_id"]
    out.rule("matched_text_index_outside_text_list", bad_index, example)
    out.rule("best_sim_below_min", below, example)
    out.rule("matched_sim_not_matrix_entry", not_entry, example)
    out.rule("sentence_shared_outside_surplus_rule", shared, example)
    out.rule("matrix_rows_not_images", shape_bad)
    out.rule("doc_without_images", assigned.filter(pl.col("image_info").list.len() == 0).height)
    return out


# -- MMC4's assignment, checked on a published document ------------------------------------

ASSIGNMENT_PROBLEMS = ("matched_sim_not_matrix_entry", "total_not_optimal", "surplus_rule_broken", "best_sim_below_min")


def assignment_problems(
    matrix: Any,
    matched_text_index: list[int],
    matched_sim: list[float],
    min_sim: float,
    rule: str = "mmc4",
    atol: float = 1e-6,
) -> list[str]:
    """What in one document's assignment differs from MMC4's rule (empty: it conforms).

    ``matrix`` is the images x sentences similarity matrix as published. The checks:
    * ``matched_sim_not_matrix_entry``: matched_sim is the matrix entry it points at;
    * ``total_not_optimal``: the one-to-one part totals the linear-assignment optimum
      within ``atol`` per placed image (the published matrix is rounded, 6 decimals by
      default, so two optimal pairings may differ by that much after rounding);
    * ``surplus_rule_broken``: with images <= sentences no sentence holds two images; with
      more images, every sentence holds one and the images beyond one sit on their best
      sentence (the surplus);
    * ``best_sim_below_min``: every image's best sentence is >= min_sim.
    For ``rule="thresholded_argmax"`` (the named variant) the optimum and the surplus rule do
    not hold by design; instead every matched_sim must be >= min_sim.
    """
    sim = np.asarray(matrix, dtype=np.float64)
    idx = np.asarray(matched_text_index, dtype=np.int64)
    n, m = sim.shape if sim.ndim == 2 else (0, 0)
    if n == 0 or m == 0 or idx.shape != (n,) or (idx < 0).any() or (idx >= m).any():
        return []  # shape and index errors are the schema rules' findings
    problems = []
    picked = sim[np.arange(n), idx]
    if np.abs(picked - np.asarray(matched_sim, dtype=np.float64)).max() > 1e-9:
        problems.append("matched_sim_not_matrix_entry")
    row_max = sim.max(axis=1)
    if (row_max < min_sim - 1e-9).any():
        problems.append("best_sim_below_min")
    if rule != "mmc4":
        if (picked < min_sim - 1e-9).any():
            problems.append("matched_sim_below_min")
        return problems
    if n <= m:
        total, surplus_ok = picked.sum(), np.unique(idx).size == n
    else:
        # per sentence: one image placed by the solver, the others on their own best sentence.
        # When several could be the solver's, the largest is (any one-to-one total <= optimum).
        on_best = picked >= row_max - 1e-9
        total, surplus_ok = 0.0, np.unique(idx).size == m
        for j in range(m):
            here = np.flatnonzero(idx == j)
            off_best = here[~on_best[here]]
            if off_best.size > 1:
                surplus_ok = False
            if here.size:
                total += picked[off_best[0]] if off_best.size == 1 else picked[here].max()
    rows, cols = linear_sum_assignment(sim, maximize=True)
    if abs(total - sim[rows, cols].sum()) > atol * min(n, m):
        problems.append("total_not_optimal")
    if not surplus_ok:
        problems.append("surplus_rule_broken")
    return problems


def published_assignment_rules(lines: list[bytes], min_sim: float, rule: str = "mmc4") -> Outcome:
    """Every document of a published full-set shard carries MMC4's assignment (assignment_problems)."""
    out = Outcome(
        stats={"assignment_rule": rule, "min_similarity": min_sim},
        summary=f"{len(lines)} published documents checked against the {rule} assignment",
    )
    counts = dict.fromkeys(ASSIGNMENT_PROBLEMS + (("matched_sim_below_min",) if rule != "mmc4" else ()), 0)
    examples: dict[str, str] = {}
    for i, line in enumerate(lines):
        try:
            doc = json.loads(line)
            images = doc["image_info"]
            found = assignment_problems(
                doc["similarity_matrix"],
                [im["matched_text_index"] for im in images],
                [im["matched_sim"] for im in images],
                min_sim,
                rule,
            )
        except (ValueError, KeyError, TypeError):
            continue  # unparsable or malformed lines are published_rules' findings
        for p in found:
            counts[p] += 1
            examples.setdefault(p, f"line {i}: {doc.get('url')}")
    for p, n in counts.items():
        out.rule(f"assignment_{p}", n, examples.get(p))
    return out


def deduped_docs_rules(docs: pl.DataFrame, threshold: int) -> Outcome:
    out = Outcome(stats={"docs": docs.height}, summary=f"{docs.height} documents after dedup")
    dups = 0
    example = None
    for row in docs.select("doc_id", "image_info").iter_rows(named=True):
        if any(d is not None for d in dedup_in_document([im["phash"] for im in row["image_info"]], threshold)):
            dups += 1
            example = example or row["doc_id"]
    out.rule("in_document_phash_duplicate", dups, example)
    out.rule("doc_without_images", docs.filter(pl.col("image_info").list.len() == 0).height)
    out.rule("duplicate_doc_id", docs.filter(pl.col("doc_id").is_duplicated()).height)
    return out


def published_rules(lines: list[bytes], manifest: dict, actual_sha256: str, expected_docs: int) -> Outcome:
    out = Outcome(
        stats={"lines": len(lines), "expected_docs": expected_docs},
        summary=f"{len(lines)} documents published, {expected_docs} expected",
    )
    unparsable = invalid = 0
    example = None
    for i, line in enumerate(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            unparsable += 1
            example = example or f"line {i}"
            continue
        errors = schema_errors(doc)
        if errors:
            invalid += 1
            example = example or f"line {i}: {errors[0]}"
    out.rule("unparsable_lines", unparsable, example)
    out.rule("schema_violations", invalid, example)
    out.rule("doc_count_vs_deduped_docs", abs(len(lines) - expected_docs))
    out.rule("manifest_doc_count", abs(manifest.get("num_docs", -1) - len(lines)))
    out.rule("checksum_mismatch", int(manifest.get("sha256") != actual_sha256))
    return out
