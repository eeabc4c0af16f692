"""The corpus-wide rules applied when a shard is published, and what they need to know.

Per document, in order:
1. near-duplicate text (``drop_near_duplicates``): dropped when a document on a smaller
   ``(shard, doc_id)`` has estimated Jaccard >= the index threshold;
2. duplicate URL (``drop_url_duplicates``, off by default as in MMC4): dropped unless it is
   the smallest ``(shard, doc_id)`` among candidates sharing the URL;
   ``could_have_url_duplicate`` is set either way when any C4 document shares the URL;
3. per image: dropped when its pHash is in more than ``limit`` documents corpus-wide
   (``frequent_image``) or the NSFW classifier flags it (``nsfw``); the face classifier's
   verdict is recorded in ``face_detections`` (below);
4. a document left without images is dropped (``no_image_after_corpus_rules``); one that
   lost some is assigned again over the images it keeps (assign/resolve.py), so the full
   set's assignment is MMC4's for exactly its published images.

``face_detections`` stays null unless a face classifier ran; then it is
``{"p_face": <probability, 4 decimals>, "has_face": <p_face > face_threshold>}``.
MMC4's own field held detector boxes; a classifier on CLIP features has none, so the
probability and the decision are what we can honestly publish.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mmc4_assets.assign.resolve import keep_and_reassign
from mmc4_assets.dedup.keys import url_key
from mmc4_assets.stats import StepStats


@dataclass(frozen=True)
class ImageScore:
    p_nsfw: float | None
    nsfw: bool | None
    p_face: float | None
    face: bool | None


@dataclass
class ShardRules:
    """Everything the corpus decided about one shard, gathered before its documents stream by."""

    shard: str
    frequent_phashes: frozenset[str] = frozenset()  # this shard's pHashes over the corpus limit
    duplicated_urls: frozenset[int] = frozenset()  # this shard's url keys held by another doc
    url_owner: dict[int, str] = field(default_factory=dict)  # duplicated url key -> smallest shard
    first_doc_for_url: dict[int, str] = field(default_factory=dict)  # url key -> smallest doc_id here
    near_duplicates: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    scores: dict[str, ImageScore] = field(default_factory=dict)
    drop_url_duplicates: bool = False
    drop_near_duplicates: bool = True
    nsfw_on: bool = False
    face_on: bool = False

    def url_copy_dropped(self, key: int, doc_id: str) -> bool:
        owner = self.url_owner.get(key)
        if owner is None:
            return False
        return owner < self.shard or (owner == self.shard and self.first_doc_for_url.get(key, doc_id) != doc_id)


def face_detections(score: ImageScore | None) -> dict | None:
    if score is None or score.p_face is None:
        return None
    return {"p_face": round(float(score.p_face), 4), "has_face": bool(score.face)}


def apply_corpus_rules(row: dict, rules: ShardRules, docs: StepStats, images: StepStats) -> dict | None:
    """The document as it is published in the full set, or None (the reason is counted)."""
    if rules.drop_near_duplicates and row["doc_id"] in rules.near_duplicates:
        docs.drop("near_duplicate")
        images.drop("in_dropped_doc", len(row["image_info"]))
        return None
    key = url_key(row["url"])
    if rules.drop_url_duplicates and rules.url_copy_dropped(key, row["doc_id"]):
        docs.drop("url_duplicate")
        images.drop("in_dropped_doc", len(row["image_info"]))
        return None
    keep, info = [], []
    for i, im in enumerate(row["image_info"]):
        if im["phash"] in rules.frequent_phashes:
            images.drop("frequent_image")
            continue
        score = rules.scores.get(im["image_name"])
        if rules.nsfw_on and (score is None or score.nsfw is None):
            images.drop("nsfw_unscored")  # a filter that is on never lets an unscored image through
            continue
        if rules.nsfw_on and score.nsfw:
            images.drop("nsfw")
            continue
        images.keep()
        keep.append(i)
        # unscored with the face filter on counts as a face: the -ff subsets stay conservative
        has_face = rules.face_on and (score is None or score.face is None or bool(score.face))
        info.append({**im, "face_detections": face_detections(score) if rules.face_on else None, "has_face": has_face})
    if not keep:
        docs.drop("no_image_after_corpus_rules")
        return None
    docs.keep()
    flag = int(bool(row["could_have_url_duplicate"]) or key in rules.duplicated_urls)
    return {**keep_and_reassign(row, keep, info), "could_have_url_duplicate": flag}
