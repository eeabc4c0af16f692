import contextlib
import datetime as dt

import dagster as dg
import polars as pl

from mmc4_assets import __version__
from mmc4_assets.dedup.doc_index import load_doc_decisions
from mmc4_assets.dedup.image_rule import load_image_rule
from mmc4_assets.dedup.keys import url_keys
from mmc4_assets.defs.common import GROUP, check_result, config_hash, latest_metadata, shard_check
from mmc4_assets.defs.corpus_common import latest_version
from mmc4_assets.defs.corpus_doc_index import corpus_doc_index
from mmc4_assets.defs.corpus_image_counts import corpus_image_counts
from mmc4_assets.defs.deduped_docs import deduped_docs
from mmc4_assets.defs.image_classifier_scores import image_classifier_scores
from mmc4_assets.defs.partitions import SHARD_BACKFILL, shards
from mmc4_assets.defs.quality import DataQuality, validate_suite
from mmc4_assets.defs.resources import StorageResource
from mmc4_assets.publish.corpus_rules import ImageScore, ShardRules, apply_corpus_rules
from mmc4_assets.publish.mmc4_format import make_document
from mmc4_assets.publish.shards import MANIFEST_SUFFIX, ShardWriter, file_sha256, iter_shard_lines, read_manifest
from mmc4_assets.publish.subsets import (CORE, CORE_FF, FF, FULL, NEEDS_FACES, SUBSETS, CoreRules, subset_filename,
                                         subset_folder, subset_versions)
from mmc4_assets.quality import suites
from mmc4_assets.quality.funnel import STAGES as FUNNEL_STAGES
from mmc4_assets.quality.funnel import funnel_rows
from mmc4_assets.assign.linear import MMC4
from mmc4_assets.assign.resolve import DEFAULT_MIN_SIM
from mmc4_assets.quality.rules import Outcome, published_assignment_rules, published_rules
from mmc4_assets.stats import StepStats


class CoreConfig(dg.Config):
    """MMC4-core's rules (defaults are MMC4's)."""

    min_sentences: int = 4
    max_sentences: int = 40
    min_images: int = 2
    max_images: int = 15
    phash_threshold: int = 10
    min_sim: float = 0.25
    min_fraction: float = 0.75


class PublishConfig(dg.Config):
    version: str = "v2"       # MMC4's file suffix: docs_shard_{N}_v2.jsonl.zip (full and ff)
    core_version: str = "v3"  # ... and _v3 for core and core-ff
    ndigits: int = 6          # similarity decimals in the jsonl
    # the subsets written beside the full set; ff ones need a face classifier (else skipped)
    subsets: list[str] = list(SUBSETS)
    core: CoreConfig = CoreConfig()
    face_filter_scope: str = "image"   # "image": drop face images; "document": drop docs with any
    drop_near_duplicates: bool = True  # keep the copy on the smallest (shard, doc_id)
    drop_url_duplicates: bool = False  # MMC4 only flagged them (could_have_url_duplicate)
    # refuse to publish from corpus state that has not absorbed this shard's latest
    # contributions (two-pass safety); off only for debugging
    require_current_corpus: bool = True


def _classifier_scores(store, shard: str) -> dict[str, ImageScore]:
    scores = store.read_table("image_classifier_scores", shard)
    return {r["image_name"]: ImageScore(r["p_nsfw"], r["nsfw"], r["p_face"], r["face"])
            for r in scores.iter_rows(named=True)}


def _require_absorbed(context: dg.AssetExecutionContext, asset: str, per_shard: str, absorbed: dict) -> None:
    shard = context.partition_key
    current = latest_version(context.instance, per_shard, shard)
    if current is None or absorbed.get(shard) != current:
        raise dg.Failure(
            f"{asset} has not absorbed the latest {per_shard} of {shard} (absorbed "
            f"{absorbed.get(shard)}, latest {current}); a shard is published after the corpus update "
            f"that includes it (corpus_update_job, started by corpus_update_sensor)", allow_retries=False)


def _shard_rules(context: dg.AssetExecutionContext, config: PublishConfig, store, shard: str) -> tuple[ShardRules, dict]:
    """Everything the corpus decided about this shard, and the versions it came from."""
    image_rule = load_image_rule(store)
    if image_rule is None:
        raise dg.Failure("no corpus update has run yet: run corpus_update_job first", allow_retries=False)
    own = store.read_table("deduped_docs", shard, ["doc_id", "url", "image_info"])
    keys = url_keys(own["url"])
    docs = load_doc_decisions(store, shard, keys.unique().to_list())
    if config.require_current_corpus:
        _require_absorbed(context, "corpus_image_counts", "image_hash_counts", image_rule.absorbed)
        _require_absorbed(context, "corpus_doc_index", "doc_fingerprints", docs.absorbed)
    phashes = own["image_info"].explode().struct.field("phash").drop_nulls().unique().to_list()
    first_doc = (own.select("doc_id", key=keys).group_by("key").agg(pl.col("doc_id").min()))
    classify_md = latest_metadata(context, "image_classifier_scores")
    rules = ShardRules(
        shard=shard,
        # blocklist rule: a multi-index lookup of this shard's pHashes, O(shard)
        frequent_phashes=image_rule.frequent(phashes),
        duplicated_urls=frozenset(keys.filter(keys.is_in(docs.duplicated_urls.implode())).to_list()),
        url_owner=docs.url_owner,
        first_doc_for_url=dict(zip(first_doc["key"].to_list(), first_doc["doc_id"].to_list())),
        near_duplicates=docs.near_duplicates,
        scores=_classifier_scores(store, shard),
        drop_url_duplicates=config.drop_url_duplicates,
        drop_near_duplicates=config.drop_near_duplicates,
        nsfw_on=bool(classify_md.get("nsfw_on")),
        face_on=bool(classify_md.get("face_on")),
    )
    corpus = {
        **image_rule.metadata(),
        "doc_index_version": docs.version, "near_duplicate_jaccard": docs.threshold,
        "drop_near_duplicates": config.drop_near_duplicates, "drop_url_duplicates": config.drop_url_duplicates,
    }
    classifiers = {"nsfw": classify_md.get("nsfw_filter", "off: not scored"),
                   "face": classify_md.get("face_filter", "off: not scored"),
                   "nsfw_threshold": classify_md.get("nsfw_threshold"),
                   "face_threshold": classify_md.get("face_threshold"),
                   "weights": classify_md.get("classifiers")}
    return rules, {"corpus": corpus, "classifiers": classifiers}


def _upstream_metadata(context: dg.AssetExecutionContext) -> dict:
    """Model and config hashes of the upstream materializations this shard was built from."""
    out = {}
    for asset in ("raw_c4", "fetched_images", "clip_scores", "assignments", "deduped_docs"):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]),
            limit=1).records
        md = records[0].asset_materialization.metadata if records else {}
        out[asset] = {k: md[k].value for k in ("config_hash", "model", "random_weights") if k in md}
    return out


def _funnel(context: dg.AssetExecutionContext, docs: StepStats, images: StepStats,
            num_docs: int, num_images: int) -> dg.MetadataValue:
    """Documents and images surviving each stage of this shard, with every drop reason (UI table)."""
    stage_md: dict[str, dict] = {}
    for asset in FUNNEL_STAGES[:-1]:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[context.partition_key]),
            limit=1).records
        mat = records[0].asset_materialization if records else None
        if mat is not None:
            stage_md[asset] = {k: v.value for k, v in mat.metadata.items() if isinstance(v.value, (int, float))}
    stage_md["published_shards"] = {
        "num_docs": num_docs, "num_images": num_images,
        **{f"docs_dropped_{k}": n for k, n in docs.dropped.items()},
        **{f"images_dropped_{k}": n for k, n in images.dropped.items()}}
    return dg.MetadataValue.table(
        records=[dg.TableRecord(row) for row in funnel_rows(stage_md)],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("stage", "string"), dg.TableColumn("documents", "int"),
            dg.TableColumn("images", "int"), dg.TableColumn("dropped", "string")]))


def _slug(subset: str) -> str:
    return {FULL: "", FF: "_ff", CORE: "_core", CORE_FF: "_core_ff"}[subset]


@dg.asset(partitions_def=shards, backfill_policy=SHARD_BACKFILL, group_name=GROUP, code_version="2", kinds={"json"},
          deps=[deduped_docs, corpus_image_counts, corpus_doc_index, image_classifier_scores],
          tags={"mmc4/stage": "publish"})
def published_shards(context: dg.AssetExecutionContext, config: PublishConfig,
                     storage: StorageResource) -> dg.MaterializeResult:
    """The shard in MMC4's jsonl.zip format with a manifest, and its mmc4-ff / mmc4-core / mmc4-core-ff subsets."""
    shard, store = context.partition_key, storage.store()
    upstream = _upstream_metadata(context)
    rules, decided = _shard_rules(context, config, store, shard)
    core_rules = CoreRules(**config.core.model_dump())
    unknown = set(config.subsets) - set(SUBSETS)
    if unknown:
        raise dg.Failure(f"unknown subsets {sorted(unknown)}; choose from {list(SUBSETS)}")
    skipped = {s: "no face classifier configured" for s in config.subsets if s in NEEDS_FACES and not rules.face_on}
    subsets = [FULL, *(s for s in SUBSETS if s in config.subsets and s not in skipped)]
    names = {s: subset_filename(s, shard, config.version, config.core_version) for s in subsets}
    stats = {s: (StepStats(), StepStats()) for s in subsets}  # (docs, images) per subset
    full_docs, full_images = stats[FULL]

    with contextlib.ExitStack() as stack:
        out = {s: stack.enter_context(ShardWriter(store, names[s], subset_folder(s))) for s in subsets}
        for batch in store.iter_batches("deduped_docs", shard, batch_size=1000):
            for row in batch.iter_rows(named=True):
                doc = apply_corpus_rules(row, rules, full_docs, full_images)
                if doc is None:
                    continue
                for subset, d in subset_versions(doc, subsets, config.face_filter_scope, core_rules, stats).items():
                    out[subset].write(make_document(d["url"], d["text_list"], d["image_info"],
                                                    d["similarity_matrix"], d["could_have_url_duplicate"],
                                                    config.ndigits))
    # every zip is in place: manifests now, the full set's last
    common = {
        "source_shard": shard, "format": "mmc4", "mmc4_assets_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "model": upstream.get("clip_scores", {}).get("model"),
        "random_weights": upstream.get("clip_scores", {}).get("random_weights"),
        "upstream": upstream, "config_hash": config_hash(config), **decided,
    }
    published = {s: out[s].publish_manifest(_manifest(s, common, config, core_rules, names[FULL]))
                 for s in [*subsets[1:], FULL]}
    _retract(store, shard, config, [s for s in SUBSETS if s not in subsets])

    metadata = {}
    for subset in subsets:
        slug = _slug(subset)
        metadata[f"num_docs{slug}"] = published[subset].num_docs
        metadata[f"num_images{slug}"] = published[subset].num_images
    full = published[FULL]
    table = ["| subset | file | docs | images |", "|---|---|---:|---:|"]
    table += [f"| {s} | {'/'.join(subset_folder(s)[1:] + (names[s],))} | {published[s].num_docs} | "
              f"{published[s].num_images} |" for s in subsets]
    table += [f"| {s} | skipped: {why} | | |" for s, why in skipped.items()]
    return dg.MaterializeResult(metadata={
        **metadata,
        "filter_funnel": _funnel(context, full_docs, full_images, full.num_docs, full.num_images),
        "bytes": full.bytes,
        "sha256": full.sha256,
        "shard_file": names[FULL],
        "manifest": full.manifest_name,
        "subsets": dg.MetadataValue.md("\n".join(table)),
        "subset_files": dg.MetadataValue.json({s: "/".join((*subset_folder(s), names[s])) for s in subsets}),
        "subsets_skipped": dg.MetadataValue.json(skipped),
        "docs_dropped": full_docs.total_dropped,
        **{f"docs_dropped_{k}": v for k, v in sorted(full_docs.dropped.items())},
        **{f"images_dropped_{k}": v for k, v in sorted(full_images.dropped.items())},
        "docs_drop_reasons": dg.MetadataValue.md(full_docs.as_markdown("documents")),
        "images_drop_reasons": dg.MetadataValue.md(full_images.as_markdown("images")),
        **({"core_drop_reasons": dg.MetadataValue.md(stats[CORE][0].as_markdown("documents"))} if CORE in stats else {}),
        "corpus_image_counts_version": decided["corpus"]["image_rule_generation"],
        "image_rule": decided["corpus"]["image_rule"],
        # always present (0 included), so the UI plots it across shards
        "images_dropped_by_image_rule": full_images.dropped.get("frequent_image", 0),
        "corpus_doc_index_version": decided["corpus"]["doc_index_version"],
        "nsfw_filter": decided["classifiers"]["nsfw"],
        "face_filter": decided["classifiers"]["face"],
        "model": upstream.get("clip_scores", {}).get("model") or "unknown",
        "config_hash": config_hash(config),
        "path": dg.MetadataValue.path(store.uri("published", names[FULL])),
    })


def _manifest(subset: str, common: dict, config: PublishConfig, core_rules: CoreRules, full_file: str) -> dict:
    """What every manifest says, plus each subset's own rules; ``subset`` is "full" for the main set."""
    core = subset in (CORE, CORE_FF)
    extra = {**common, "subset": subset, "version": config.core_version if core else config.version}
    if core:
        extra["core_rules"] = core_rules.as_dict()
    if subset in (FF, CORE_FF):
        extra["face_filter_scope"] = config.face_filter_scope
    if subset != FULL:
        extra["full_shard_file"] = full_file
    return extra


def _retract(store, shard: str, config: PublishConfig, subsets: list[str]) -> None:
    """Remove a subset published earlier but not now (manifest first, so readers stop seeing it)."""
    for subset in subsets:
        name = subset_filename(subset, shard, config.version, config.core_version)
        manifest = store.path(*subset_folder(subset), name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX)
        for path in (manifest, store.path(*subset_folder(subset), name)):
            if path.exists():
                path.unlink()


def _assignment_settings(store, shard: str) -> tuple[str, float]:
    """The rule and threshold the shard's images were placed with (carried in deduped_docs)."""
    columns = store.scan("deduped_docs", shard).collect_schema().names()
    if "assignment" not in columns:
        return MMC4, DEFAULT_MIN_SIM
    used = store.read_table("deduped_docs", shard, ["assignment", "min_similarity"]).unique().drop_nulls()
    if used.height > 1:
        raise ValueError(f"deduped_docs of {shard} mixes assignment settings: {used.rows()}")
    return (used["assignment"][0], float(used["min_similarity"][0])) if used.height else (MMC4, DEFAULT_MIN_SIM)


@shard_check(asset=published_shards, blocking=True)
def published_shards_match_mmc4_schema(context: dg.AssetCheckExecutionContext, storage: StorageResource,
                                       quality: DataQuality) -> dg.AssetCheckResult:
    """Every line of the shard and its subsets parses and matches the MMC4 schema; counts reconcile with deduped_docs; checksums = manifests; the full set's assignment is MMC4's (matched_sim = matrix entry, optimal total, surplus rule, best sentence >= min_sim)."""
    store, shard = storage.store(), context.partition_key
    md = latest_metadata(context, "published_shards")
    files = md.get("subset_files") or {FULL: f"published/{md.get('shard_file', '')}"}
    dropped = md.get("docs_dropped", 0)
    combined = Outcome(stats={"subsets": ", ".join(files)})
    full_docs = None
    for subset, path in files.items():
        *folder, zip_name = path.split("/")
        manifest = read_manifest(store, zip_name[: -len(".jsonl.zip")] + MANIFEST_SUFFIX, tuple(folder))
        lines = list(iter_shard_lines(store, zip_name, tuple(folder)))
        if subset == FULL:
            # every deduped document is published or dropped with a counted reason
            expected = store.num_rows("deduped_docs", shard) - dropped
            full_docs = len(lines)
            full_suite_inputs = (lines, manifest.get("sha256") == file_sha256(store, zip_name, tuple(folder)),
                                 expected)
            # MMC4's assignment over exactly the published images (subsets keep the full set's)
            rule, min_sim = _assignment_settings(store, shard)
            assigned = published_assignment_rules(lines, min_sim, rule)
            for name, n in assigned.failures.items():
                combined.rule(name, n)
            combined.examples += assigned.examples[:2]
            combined.stats.update(assignment_rule=rule, min_similarity=min_sim)
        else:
            expected = md.get(f"num_docs{_slug(subset)}", -1)
        outcome = published_rules(lines, manifest, file_sha256(store, zip_name, tuple(folder)), expected)
        outcome.rule("manifest_subset_field", int(manifest.get("subset") != subset))
        for rule, n in outcome.failures.items():
            combined.rule(rule if subset == FULL else f"{subset}:{rule}", n)
        combined.examples += [f"{subset}: {e}" for e in outcome.examples][:5]
        combined.stats[f"lines{_slug(subset) or '_full'}"] = len(lines)
    for subset in files:
        if subset != FULL and full_docs is not None:
            combined.rule(f"{subset}:more_docs_than_full", int(md.get(f"num_docs{_slug(subset)}", 0) > full_docs))
    suite = None
    if full_docs is not None:
        lines, checksum_ok, expected = full_suite_inputs
        suite = validate_suite(quality, "published_shards", shard, storage.root,
                               lambda: suites.published_frame(lines, checksum_ok),
                               lambda: suites.published_expectations(quality.thresholds(), expected))
    return check_result(combined, suite, shard_file=md.get("shard_file", ""))
