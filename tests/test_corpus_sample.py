"""The bundled sample through every asset (spine, corpus, classifiers, subsets) with both filters on.

The classifiers here are plumbing only: fixed linear weights on the tiny random CLIP's
64-d features (NSFW: never fires; face: a fixed direction), so every code path that a
real NSFW MLP / face logistic regression takes runs end to end.
"""

import json
import zipfile

import dagster as dg
import pytest
import torch

from mmc4_assets.definitions import defs
from mmc4_assets.defs.classifiers import FeatureClassifiers
from mmc4_assets.defs.partitions import shards
from mmc4_assets.defs.resources import sample_resources
from mmc4_assets.publish.mmc4_format import schema_errors
from mmc4_assets.storage import ShardStore

SHARD = "c4-sample.00000-of-00001"


def _linear(path, seed, bias):
    torch.manual_seed(seed)
    layer = torch.nn.Linear(64, 1)
    with torch.no_grad():
        layer.bias.fill_(bias)
    torch.save(torch.nn.Sequential(layer).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    classifiers = FeatureClassifiers(
        nsfw_weights=_linear(root / "nsfw.pt", 0, -20.0), face_weights=_linear(root / "face.pt", 1, 0.0)
    )
    d = defs()
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(shards.name, [SHARD])
    result = dg.materialize(
        [*d.assets, *d.asset_checks],
        partition_key=SHARD,
        instance=instance,
        # the page stages (archive partitions, the join) are not in this run:
        # raw_c4 scans the sample's two archives itself
        selection=dg.AssetSelection.all() - dg.AssetSelection.groups("pages"),
        resources={**sample_resources(str(root)), "classifiers": classifiers},
        raise_on_error=False,
    )
    return root, result


def _md(result):
    return {
        m.asset_key.to_user_string(): {
            k: v.value for k, v in m.step_materialization_data.materialization.metadata.items()
        }
        for m in result.get_asset_materialization_events()
    }


def _read(root, *parts):
    path = root.joinpath("published", *parts)
    with zipfile.ZipFile(path) as zf:
        return [json.loads(line) for line in zf.read(path.name[:-4]).splitlines()]


def test_sample_runs_every_asset_and_check(sample_run):
    root, result = sample_run
    assert result.success
    assert set(_md(result)) >= {
        "raw_c4",
        "fetched_images",
        "clip_scores",
        "assignments",
        "deduped_docs",
        "published_shards",
        "image_hash_counts",
        "doc_fingerprints",
        "image_classifier_scores",
        "corpus_image_counts",
        "corpus_doc_index",
    }
    assert all(c.passed for c in result.get_asset_check_evaluations())


def test_full_set_keeps_its_path_and_every_deduped_document(sample_run):
    root, result = sample_run
    docs = _read(root, "docs_shard_0_v2.jsonl.zip")
    deduped = ShardStore(root).read_table("deduped_docs", SHARD)
    # no image is in > 10 documents, the two lemon-bars crawls are not near-duplicates (J 0.69),
    # the NSFW weights never fire: the corpus rules change nothing on the sample
    assert sorted(d["url"] for d in docs) == sorted(deduped["url"].to_list())
    assert all(schema_errors(d) == [] for d in docs)
    manifest = json.loads((root / "published" / "docs_shard_0_v2.manifest.json").read_text())
    assert manifest["subset"] == "full" and manifest["num_docs"] == len(docs)
    assert manifest["classifiers"]["nsfw"].startswith("on") and manifest["corpus"]["image_rule_generation"] == 1


def test_subsets_follow_their_rules_and_manifests(sample_run):
    root, result = sample_run
    md = _md(result)["published_shards"]
    full = _read(root, "docs_shard_0_v2.jsonl.zip")
    faces = {im["image_name"] for d in full for im in d["image_info"] if im["face_detections"]["has_face"]}
    assert faces  # the fixed direction flags some images: the ff path is exercised
    ff = _read(root, "mmc4-ff", "docs_shard_0_v2.jsonl.zip")
    assert not faces & {im["image_name"] for d in ff for im in d["image_info"]}
    for subset, name in (
        ("mmc4-ff", "docs_shard_0_v2"),
        ("mmc4-core", "docs_shard_0_v3"),
        ("mmc4-core-ff", "docs_shard_0_v3"),
    ):
        manifest = json.loads((root / "published" / subset / f"{name}.manifest.json").read_text())
        docs = _read(root, subset, f"{name}.jsonl.zip")
        slug = {"mmc4-ff": "_ff", "mmc4-core": "_core", "mmc4-core-ff": "_core_ff"}[subset]
        assert manifest["subset"] == subset and manifest["num_docs"] == len(docs) == md[f"num_docs{slug}"]
        assert manifest["full_shard_file"] == "docs_shard_0_v2.jsonl.zip"
        if "core" in subset:
            assert all(4 <= len(d["text_list"]) <= 40 and 2 <= len(d["image_info"]) <= 15 for d in docs)
