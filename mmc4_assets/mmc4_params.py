"""MMC4's parameters, each written once: one typed settings object per stage, defaults = MMC4's.

No Dagster here. Each asset's ``dg.Config`` takes its defaults from these objects and maps
back onto one with ``.settings()``; domain functions take the settings object (or read their
default from its class), never a literal. Each asset writes the settings it ran with next to
its output (``ShardStore.table_writer(..., params=...)``) and its check reads them from there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# the stages of one shard, in order (jobs, the funnel, the published upstream record)
STAGES = ("raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs", "published_shards")
# MMC4's published variants: the full set, and the subsets written beside it
FULL = "full"
FF, CORE, CORE_FF = "mmc4-ff", "mmc4-core", "mmc4-core-ff"
SUBSETS = (FF, CORE, CORE_FF)


@dataclass(frozen=True)
class Settings:
    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageLimits(Settings):
    """fetched_images: which decoded images are kept, and how they are stored."""

    min_side: int = 150  # MMC4: drop width or height < 150 px
    max_aspect: float = 2.0  # MMC4: drop aspect ratio > 2 or < 1/2
    max_side: int = 800  # MMC4: resize so the longer side <= 800
    max_pixels: int = 40_000_000  # above this the header is a decompression bomb, never decode
    jpeg_quality: int = 90


@dataclass(frozen=True)
class AssignSettings(Settings):
    """assignments: images placed on sentences."""

    min_similarity: float = 0.15  # MMC4: drop images whose best sentence is below this
    # "mmc4": MMC4's compute_assignments.py (linear assignment over the kept images' whole
    # matrix, argmax only for images beyond the sentences); "thresholded_argmax": this
    # project's earlier variant (pairs below min_similarity forbidden). See docs/mmc4-rules.md.
    assignment: str = "mmc4"


@dataclass(frozen=True)
class DedupSettings(Settings):
    """deduped_docs: in-document perceptual duplicates."""

    phash_threshold: int = 5  # MMC4 (findimagedupes): within 5 bits is the same picture


@dataclass(frozen=True)
class ClassifierSettings(Settings):
    """image_classifier_scores: when an image is flagged."""

    nsfw_threshold: float = 0.1  # MMC4: drop images with p(nsfw) > 0.1
    face_threshold: float = 0.5  # an image has a face when p(face) > this


@dataclass(frozen=True)
class BlocklistRule(Settings):
    """corpus_image_counts, MMC4's rule: frequent images from a seeded sample of fetched images."""

    sample_size: int = 60_000
    max_near_duplicates: int = 10  # blocked when MORE than this many duplicates in the sample
    max_distance: int = DedupSettings.phash_threshold  # findimagedupes threshold (pHash bits)
    seed: int = 0


@dataclass(frozen=True)
class ExactCountSettings(Settings):
    """corpus_image_counts, the stricter variant: an exact pHash in more than this many documents."""

    max_docs_per_image: int = BlocklistRule.max_near_duplicates


@dataclass(frozen=True)
class DocIndexSettings(Settings):
    """corpus_doc_index: near-duplicate documents."""

    near_duplicate_jaccard: float = 0.8  # estimated word 5-gram Jaccard at or above: near-duplicate


@dataclass(frozen=True)
class CoreRules(Settings):
    """mmc4-core (and core-ff), MMC4's rules."""

    min_sentences: int = 4
    max_sentences: int = 40
    min_images: int = 2
    max_images: int = 15
    phash_threshold: int = 10  # stricter than the full set's 5
    min_sim: float = 0.25  # an image is well matched when matched_sim > min_sim
    min_fraction: float = 0.75  # ... and at least this share of the images must be


@dataclass(frozen=True)
class PublishSettings(Settings):
    """published_shards: file names, subsets and the corpus rules' switches."""

    version: str = "v2"  # MMC4's file suffix: docs_shard_{N}_v2.jsonl.zip (full and ff)
    core_version: str = "v3"  # ... and _v3 for core and core-ff
    ndigits: int = 6  # similarity decimals in the jsonl
    # the subsets written beside the full set; ff ones need a face classifier (else skipped)
    subsets: tuple[str, ...] = SUBSETS
    core: CoreRules = CoreRules()
    face_filter_scope: str = "image"  # "image": drop face images; "document": drop docs with any
    drop_near_duplicates: bool = True  # keep the copy on the smallest (shard, doc_id)
    drop_url_duplicates: bool = False  # MMC4 only flagged them (could_have_url_duplicate)
    # refuse to publish from corpus state that has not absorbed this shard's latest
    # contributions (two-pass safety); off only for debugging
    require_current_corpus: bool = True
