"""MMC4's published variants: the full set, mmc4-ff, mmc4-core and mmc4-core-ff.

A document here is a deduped_docs row (``image_info`` items carry ``phash`` and
``matched_sim``) after the corpus rules (publish/corpus_rules.py); each rule returns a new
document with ``image_info`` and ``similarity_matrix`` rows kept in step, or None.

- ff ("fewer faces"): images the face classifier flags are removed (``scope="image"``),
  or documents holding any such image are (``scope="document"``); a document left with
  no image is dropped.
- core: ``CoreRules`` (mmc4_params.py): 4-40 sentences, then in-document pHash dedup at the
  stricter threshold 10, then 2-15 images, then at least 75 % of the images with matched_sim > 0.25.
- core-ff: the core rules applied to the ff document.
"""

from __future__ import annotations

from mmc4_assets.dedup.phash import dedup_in_document
from mmc4_assets.mmc4_params import CORE, CORE_FF, FF, FULL, SUBSETS, CoreRules  # noqa: F401 (re-exported)
from mmc4_assets.publish.mmc4_format import shard_number
from mmc4_assets.stats import StepStats

NEEDS_FACES = (FF, CORE_FF)


def keep_images(doc: dict, keep: list[int]) -> dict:
    return {
        **doc,
        "image_info": [doc["image_info"][i] for i in keep],
        "similarity_matrix": [doc["similarity_matrix"][i] for i in keep],
    }


def without_faces(doc: dict, scope: str, docs: StepStats, images: StepStats) -> dict | None:
    """The ff version of a document: no image the face classifier flagged."""
    flagged = [bool(im.get("has_face")) for im in doc["image_info"]]
    if scope == "document":
        if any(flagged):
            docs.drop("has_face_image")
            images.drop("in_doc_with_face", len(flagged))
            return None
        docs.keep()
        images.keep(len(flagged))
        return doc
    if scope != "image":
        raise ValueError(f"face filter scope must be 'image' or 'document', not {scope!r}")
    keep = [i for i, f in enumerate(flagged) if not f]
    images.keep(len(keep))
    images.drop("face", len(flagged) - len(keep))
    if not keep:
        docs.drop("no_image_without_face")
        return None
    docs.keep()
    return keep_images(doc, keep)


def core_document(doc: dict, rules: CoreRules, docs: StepStats, images: StepStats) -> dict | None:
    """The document if it meets MMC4-core's rules (after the stricter pHash dedup), else None."""
    n_sent = len(doc["text_list"])
    if not rules.min_sentences <= n_sent <= rules.max_sentences:
        docs.drop("sentences_out_of_range")
        return None
    dup_of = dedup_in_document([im["phash"] for im in doc["image_info"]], rules.phash_threshold)
    keep = [i for i, d in enumerate(dup_of) if d is None]
    doc = keep_images(doc, keep)
    n_img = len(keep)
    if not rules.min_images <= n_img <= rules.max_images:
        docs.drop("images_out_of_range")
        return None
    well_matched = sum(im["matched_sim"] > rules.min_sim for im in doc["image_info"])
    if well_matched < rules.min_fraction * n_img:
        docs.drop("low_similarity")
        return None
    docs.keep()
    images.keep(n_img)
    images.drop("phash_duplicate_core", len(dup_of) - n_img)
    return doc


def subset_folder(subset: str) -> tuple[str, ...]:
    """The full set stays directly under published/ (its path is a public contract)."""
    return ("published",) if subset == FULL else ("published", subset)


def subset_filename(subset: str, shard: str, version: str, core_version: str) -> str:
    """MMC4's naming: full and ff ``docs_shard_{N}_v2.jsonl.zip``, core ``..._v3.jsonl.zip``."""
    suffix = core_version if subset in (CORE, CORE_FF) else version
    return f"docs_shard_{shard_number(shard)}_{suffix}.jsonl.zip"


def subset_versions(
    doc: dict, subsets: list[str], face_scope: str, rules: CoreRules, stats: dict[str, tuple[StepStats, StepStats]]
) -> dict[str, dict]:
    """The full-set document and, for each subset asked for, its version there (absent: not in it).

    ``stats`` holds (documents, images) counters per subset; core-ff is core of the ff version.
    """
    out, ff = {FULL: doc}, None
    if FF in subsets or CORE_FF in subsets:
        ff = without_faces(doc, face_scope, *stats.get(FF, (StepStats(), StepStats())))
        if ff is not None and FF in subsets:
            out[FF] = ff
    if CORE in subsets:
        core = core_document(doc, rules, *stats[CORE])
        if core is not None:
            out[CORE] = core
    if CORE_FF in subsets:
        if ff is None:
            stats[CORE_FF][0].drop("no_image_without_face")
        elif (core_ff := core_document(ff, rules, *stats[CORE_FF])) is not None:
            out[CORE_FF] = core_ff
    return out
