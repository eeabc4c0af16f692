"""Check failures in words: what is wrong and how many rows, for every blocking check.

One mechanism for all stages: a rule's count becomes "<n> <phrase>" from ``RULE_TEXT``
(or the message the rule gave), a failed GX expectation becomes a sentence from its type,
kwargs and observed value, and the stage's one-line summary (e.g. "0 documents: 40 of 40
lines quarantined (no_page_record 34, missing_field 6)") leads the description.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# rule name -> what each counted row is; the count goes in front
RULE_TEXT: dict[str, str] = {
    # raw_c4
    "no_documents": "shard(s) with no documents",
    "source_broken": "source shard(s) cut short or corrupt",
    "source_not_gzip": "source shard(s) that are not gzip",
    "null_url_or_text": "document(s) with a null url or text",
    "duplicate_doc_id": "row(s) sharing a doc_id",
    "no_sentences": "document(s) without sentences",
    "no_candidate_images": "document(s) without candidate images",
    "lines_unaccounted": "source line(s) neither a document nor a quarantined row",
    # fetched_images
    "no_image_ok": "shard(s) where no candidate image was fetched ok",
    "rows_vs_raw_c4_candidates": "row(s) more or fewer than raw_c4's candidate image URLs",
    "duplicate_candidate_rows": "candidate row(s) duplicated on (doc_id, image_index)",
    "ok_without_image_name": "ok row(s) without image_name or phash",
    "ok_but_too_small": "ok image(s) below min_side",
    "ok_but_bad_aspect": "ok image(s) beyond max_aspect",
    "longer_side_over_max": "stored image(s) over max_side",
    "row_without_status": "row(s) without a status",
    # clip_scores
    "matrix_shape_not_images_x_sentences": "document(s) whose similarity_matrix is not images x sentences",
    "similarity_not_finite_cosine": "document(s) with similarities not finite or outside [-1, 1]",
    "embedding_norm_not_1": "image embedding(s) whose norm is not 1",
    "image_without_features": "image(s) without CLIP features",
    # assignments
    "matched_text_index_outside_text_list": "document(s) with a matched_text_index outside text_list",
    "matched_sim_below_min": "document(s) with a matched_sim below the minimum",
    "sentence_shared_outside_surplus_rule": "document(s) where one sentence holds two images outside the surplus rule",
    "matrix_rows_not_images": "document(s) whose similarity_matrix rows are not its images",
    "doc_without_images": "document(s) without images",
    # deduped_docs
    "in_document_phash_duplicate": "document(s) with near-duplicate images (pHash)",
    # published_shards
    "unparsable_lines": "published line(s) that do not parse",
    "schema_violations": "published line(s) breaking the MMC4 schema",
    "doc_count_vs_deduped_docs": "document(s) more or fewer than deduped_docs",
    "manifest_doc_count": "document(s) more or fewer than the manifest says",
    "checksum_mismatch": "file(s) whose sha256 differs from the manifest",
    "manifest_subset_field": "manifest(s) naming another subset",
    "more_docs_than_full": "subset(s) with more documents than the full shard",
}


def reason_counts(counts: Mapping[str, int] | Iterable[tuple[str, int]], limit: int = 6) -> str:
    """``{"no_page_record": 34, "x": 6}`` -> "no_page_record 34, x 6", largest first."""
    items = sorted(dict(counts).items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (f", {len(items) - limit} more" if len(items) > limit else "")


def rule_message(name: str, offending: int) -> str:
    """ "2 row(s) sharing a doc_id"; a subset prefix ("ff:checksum_mismatch") is kept in front."""
    prefix, _, base = name.rpartition(":")
    phrase = RULE_TEXT.get(base, f"row(s) breaking {base}")
    return f"{prefix + ': ' if prefix else ''}{offending} {phrase}"


def _bounds(kw: Mapping[str, Any]) -> str:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def expectation_message(
    expectation: str, column: str | None, kwargs: Mapping[str, Any] | None, unexpected: int | None, observed: Any
) -> str:
    """A failed GX expectation in words, e.g. "table has 0 rows, expected at least 1"."""
    kw = dict(kwargs or {})
    n = f"{unexpected} row(s)" if unexpected is not None else "rows"
    kind = expectation.removeprefix("expect_")
    if kind == "table_row_count_to_be_between":
        return f"table has {observed} rows, expected {_bounds(kw)}"
    if kind == "table_row_count_to_equal":
        return f"table has {observed} rows, expected {kw.get('value')}"
    if kind == "column_values_to_be_between":
        return f"{n} with {column} not {_bounds(kw)}"
    if kind == "column_values_to_not_be_null":
        return f"{n} with a null {column}"
    if kind == "column_values_to_be_unique":
        return f"{n} with a duplicated {column}"
    if kind == "column_values_to_be_in_set":
        return f"{n} with {column} not in {kw.get('value_set')}"
    if kind == "compound_columns_to_be_unique":
        return f"{n} duplicated on ({', '.join(kw.get('column_list') or [])})"
    if kind == "column_pair_values_to_be_equal":
        return f"{n} where {kw.get('column_A')} != {kw.get('column_B')}"
    if kind == "column_pair_values_a_to_be_greater_than_b":
        return f"{n} where {kw.get('column_A')} <= {kw.get('column_B')}"
    return (
        f"{expectation}({column or ''}) failed"
        + (f" ({n})" if unexpected is not None else "")
        + (f", observed {observed}" if observed is not None else "")
    )


def describe(
    summary: str,
    failures: Mapping[str, int],
    messages: Mapping[str, str] | None = None,
    expectations: Iterable[str] = (),
) -> str:
    """The check description: the summary, then each failing rule and expectation in words."""
    messages = messages or {}
    parts = [messages.get(k) or rule_message(k, v) for k, v in failures.items() if v]
    parts += [f"GX: {e}" for e in expectations]
    if not parts:
        return f"{summary}; all rules and expectations hold" if summary else "all rules and expectations hold"
    return (f"{summary}. " if summary else "") + "Failing: " + "; ".join(parts)
