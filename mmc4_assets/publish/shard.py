"""Publishing one shard: the corpus rules, MMC4's jsonl.zip, its subsets, the manifests, and the check.

Plain functions of a store and ``PublishSettings`` (mmc4_params.py); defs/published_shards.py
only wires them. Everything a check needs travels with the data: the classifier settings in
the image_classifier_scores table's metadata, the subset files and counts in the full set's
manifest (written last).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from mmc4_assets.assign.linear import MMC4
from mmc4_assets.dedup.doc_index import load_doc_decisions
from mmc4_assets.dedup.image_rule import load_image_rule
from mmc4_assets.dedup.keys import url_keys
from mmc4_assets.mmc4_params import AssignSettings, PublishSettings
from mmc4_assets.publish.corpus_rules import ImageScore, ShardRules, apply_corpus_rules
from mmc4_assets.publish.mmc4_format import make_document, shard_number
from mmc4_assets.publish.shards import (
    MANIFEST_SUFFIX,
    PublishedShard,
    ShardWriter,
    file_sha256,
    iter_shard_lines,
    read_manifest,
)
from mmc4_assets.publish.subsets import (
    CORE,
    CORE_FF,
    FF,
    FULL,
    NEEDS_FACES,
    SUBSETS,
    subset_filename,
    subset_folder,
    subset_versions,
)
from mmc4_assets.quality.rules import Outcome, published_assignment_rules, published_rules
from mmc4_assets.stats import StepStats

CLASSIFIER_TABLE = "image_classifier_scores"


class PublishError(RuntimeError):
    """The shard cannot be published now (no corpus state yet, stale corpus state, bad settings)."""


def slug(subset: str) -> str:
    return {FULL: "", FF: "_ff", CORE: "_core", CORE_FF: "_core_ff"}[subset]


def classifier_scores(store, shard: str) -> dict[str, ImageScore]:
    scores = store.read_table(CLASSIFIER_TABLE, shard)
    return {
        r["image_name"]: ImageScore(r["p_nsfw"], r["nsfw"], r["p_face"], r["face"])
        for r in scores.iter_rows(named=True)
    }


def _require_absorbed(shard: str, asset: str, per_shard: str, absorbed: dict, current: int | None) -> None:
    if current is None or absorbed.get(shard) != current:
        raise PublishError(
            f"{asset} has not absorbed the latest {per_shard} of {shard} (absorbed "
            f"{absorbed.get(shard)}, latest {current}); a shard is published after the corpus update "
            f"that includes it (corpus_update_job, started by corpus_update_sensor)"
        )


def shard_rules(
    store, shard: str, settings: PublishSettings, latest_version: Callable[[str], int | None]
) -> tuple[ShardRules, dict]:
    """Everything the corpus decided about this shard, and the versions it came from.

    ``latest_version(per_shard_asset)`` is the latest version of this shard's contribution,
    which the corpus state must have absorbed (``settings.require_current_corpus``).
    """
    image_rule = load_image_rule(store)
    if image_rule is None:
        raise PublishError("no corpus update has run yet: run corpus_update_job first")
    own = store.read_table("deduped_docs", shard, ["doc_id", "url", "image_info"])
    keys = url_keys(own["url"])
    docs = load_doc_decisions(store, shard, keys.unique().to_list())
    if settings.require_current_corpus:
        _require_absorbed(
            shard, "corpus_image_counts", "image_hash_counts", image_rule.absorbed, latest_version("image_hash_counts")
        )
        _require_absorbed(
            shard, "corpus_doc_index", "doc_fingerprints", docs.absorbed, latest_version("doc_fingerprints")
        )
    phashes = own["image_info"].explode().struct.field("phash").drop_nulls().unique().to_list()
    first_doc = own.select("doc_id", key=keys).group_by("key").agg(pl.col("doc_id").min())
    classify = store.read_table_params(CLASSIFIER_TABLE, shard)  # written with the scores
    rules = ShardRules(
        shard=shard,
        # blocklist rule: a multi-index lookup of this shard's pHashes, O(shard)
        frequent_phashes=image_rule.frequent(phashes),
        duplicated_urls=frozenset(keys.filter(keys.is_in(docs.duplicated_urls.implode())).to_list()),
        url_owner=docs.url_owner,
        first_doc_for_url=dict(zip(first_doc["key"].to_list(), first_doc["doc_id"].to_list())),
        near_duplicates=docs.near_duplicates,
        scores=classifier_scores(store, shard),
        drop_url_duplicates=settings.drop_url_duplicates,
        drop_near_duplicates=settings.drop_near_duplicates,
        nsfw_on=bool(classify.get("nsfw_on")),
        face_on=bool(classify.get("face_on")),
    )
    corpus = {
        **image_rule.metadata(),
        "doc_index_version": docs.version,
        "near_duplicate_jaccard": docs.threshold,
        "drop_near_duplicates": settings.drop_near_duplicates,
        "drop_url_duplicates": settings.drop_url_duplicates,
    }
    classifiers = {
        "nsfw": classify.get("nsfw_filter", "off: not scored"),
        "face": classify.get("face_filter", "off: not scored"),
        "nsfw_threshold": classify.get("nsfw_threshold"),
        "face_threshold": classify.get("face_threshold"),
        "weights": classify.get("classifiers"),
    }
    return rules, {"corpus": corpus, "classifiers": classifiers}


@dataclass
class PublishOutcome:
    """What one publication wrote: per subset its file name, counters and published manifest."""

    subsets: list[str]  # FULL first, then the subsets written
    skipped: dict[str, str]  # subset -> why it was not written
    names: dict[str, str]
    stats: dict[str, tuple[StepStats, StepStats]]  # (documents, images) per subset
    published: dict[str, PublishedShard] = field(default_factory=dict)

    def path(self, subset: str) -> str:
        return "/".join((*subset_folder(subset), self.names[subset]))


def choose_subsets(settings: PublishSettings, face_on: bool) -> tuple[list[str], dict[str, str]]:
    unknown = set(settings.subsets) - set(SUBSETS)
    if unknown:
        raise PublishError(f"unknown subsets {sorted(unknown)}; choose from {list(SUBSETS)}")
    skipped = {s: "no face classifier configured" for s in settings.subsets if s in NEEDS_FACES and not face_on}
    return [FULL, *(s for s in SUBSETS if s in settings.subsets and s not in skipped)], skipped


def publish_shard(
    store, shard: str, settings: PublishSettings, rules: ShardRules, common: dict, batch_size: int = 1000
) -> PublishOutcome:
    """Write the full set and its subsets, then their manifests (the full set's last), retract the rest."""
    subsets, skipped = choose_subsets(settings, rules.face_on)
    names = {s: subset_filename(s, shard, settings.version, settings.core_version) for s in subsets}
    result = PublishOutcome(subsets, skipped, names, {s: (StepStats(), StepStats()) for s in subsets})
    full_docs, full_images = result.stats[FULL]
    with contextlib.ExitStack() as stack:
        out = {s: stack.enter_context(ShardWriter(store, names[s], subset_folder(s))) for s in subsets}
        for batch in store.iter_batches("deduped_docs", shard, batch_size=batch_size):
            for row in batch.iter_rows(named=True):
                doc = apply_corpus_rules(row, rules, full_docs, full_images)
                if doc is None:
                    continue
                for subset, d in subset_versions(
                    doc, subsets, settings.face_filter_scope, settings.core, result.stats
                ).items():
                    out[subset].write(
                        make_document(
                            d["url"],
                            d["text_list"],
                            d["image_info"],
                            d["similarity_matrix"],
                            d["could_have_url_duplicate"],
                            settings.ndigits,
                        )
                    )
    # every zip is in place: manifests now, the full set's last
    for subset in subsets[1:]:
        result.published[subset] = out[subset].publish_manifest(manifest_fields(subset, common, settings, names[FULL]))
    # what the check needs, in the manifest a reader trusts: the subsets written with it
    full_extra = {
        "docs_dropped": full_docs.total_dropped,
        "subset_files": {s: {"path": result.path(s), "num_docs": result.published[s].num_docs} for s in subsets[1:]},
    }
    result.published[FULL] = out[FULL].publish_manifest(
        {**manifest_fields(FULL, common, settings, names[FULL]), **full_extra}
    )
    retract(store, shard, settings, [s for s in SUBSETS if s not in subsets])
    return result


def manifest_fields(subset: str, common: dict, settings: PublishSettings, full_file: str) -> dict:
    """What every manifest says, plus each subset's own rules; ``subset`` is "full" for the main set."""
    core = subset in (CORE, CORE_FF)
    extra = {**common, "subset": subset, "version": settings.core_version if core else settings.version}
    if core:
        extra["core_rules"] = settings.core.as_dict()
    if subset in (FF, CORE_FF):
        extra["face_filter_scope"] = settings.face_filter_scope
    if subset != FULL:
        extra["full_shard_file"] = full_file
    return extra


def retract(store, shard: str, settings: PublishSettings, subsets: list[str]) -> None:
    """Remove a subset published earlier but not now (manifest first, so readers stop seeing it)."""
    for subset in subsets:
        name = subset_filename(subset, shard, settings.version, settings.core_version)
        manifest = store.path(*subset_folder(subset), name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX)
        for path in (manifest, store.path(*subset_folder(subset), name)):
            if path.exists():
                path.unlink()


def assignment_settings(store, shard: str) -> tuple[str, float]:
    """The rule and threshold the shard's images were placed with (carried in deduped_docs)."""
    columns = store.scan("deduped_docs", shard).collect_schema().names()
    default = (MMC4, AssignSettings.min_similarity)
    if "assignment" not in columns:
        return default
    used = store.read_table("deduped_docs", shard, ["assignment", "min_similarity"]).unique().drop_nulls()
    if used.height > 1:
        raise ValueError(f"deduped_docs of {shard} mixes assignment settings: {used.rows()}")
    return (used["assignment"][0], float(used["min_similarity"][0])) if used.height else default


def full_manifest(store, shard: str) -> dict | None:
    """The full set's manifest of this shard (the newest, should the file version have changed)."""
    found = []
    for path in store.path("published").glob(f"docs_shard_{shard_number(shard)}_*{MANIFEST_SUFFIX}"):
        manifest = read_manifest(store, path.name)
        if manifest.get("source_shard") == shard and manifest.get("subset", FULL) == FULL:
            found.append(manifest)
    return max(found, key=lambda m: m.get("created_at", "")) if found else None


@dataclass
class PublishedCheck:
    outcome: Outcome
    full_lines: list[bytes] | None = None  # the full set's lines, for its GX suite
    checksum_ok: bool = False
    expected_docs: int = 0
    shard_file: str = ""


def check_published(store, shard: str) -> PublishedCheck:
    """Every line of the shard and its subsets parses and matches the MMC4 schema; counts reconcile
    with deduped_docs; checksums = manifests; the full set's assignment is MMC4's."""
    manifest = full_manifest(store, shard)
    combined = Outcome(stats={"subsets": ""})
    if manifest is None:
        combined.rule("full_manifest_missing", 1)
        return PublishedCheck(combined)
    subsets = manifest.get("subset_files", {})
    files = {
        FULL: {
            "path": f"published/{manifest['shard_file']}",
            # every deduped document is published or dropped with a counted reason
            "num_docs": store.num_rows("deduped_docs", shard) - manifest.get("docs_dropped", 0),
        },
        **subsets,
    }
    combined.stats["subsets"] = ", ".join(files)
    result = PublishedCheck(combined, shard_file=manifest["shard_file"])
    for subset, entry in files.items():
        *folder, zip_name = entry["path"].split("/")
        own = read_manifest(store, zip_name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX, tuple(folder))
        lines = list(iter_shard_lines(store, zip_name, tuple(folder)))
        actual_sha = file_sha256(store, zip_name, tuple(folder))
        if subset == FULL:
            result.full_lines, result.checksum_ok = lines, own.get("sha256") == actual_sha
            result.expected_docs = entry["num_docs"]
            # MMC4's assignment over exactly the published images (subsets keep the full set's)
            rule, min_sim = assignment_settings(store, shard)
            assigned = published_assignment_rules(lines, min_sim, rule)
            for name, n in assigned.failures.items():
                combined.rule(name, n)
            combined.examples += assigned.examples[:2]
            combined.stats.update(assignment_rule=rule, min_similarity=min_sim)
        outcome = published_rules(lines, own, actual_sha, entry["num_docs"])
        outcome.rule("manifest_subset_field", int(own.get("subset") != subset))
        for rule, n in outcome.failures.items():
            combined.rule(rule if subset == FULL else f"{subset}:{rule}", n)
        combined.examples += [f"{subset}: {e}" for e in outcome.examples][:5]
        combined.stats[f"lines{slug(subset) or '_full'}"] = len(lines)
    full_docs = len(result.full_lines or [])
    for subset, entry in subsets.items():
        combined.rule(f"{subset}:more_docs_than_full", int(entry["num_docs"] > full_docs))
    return result
