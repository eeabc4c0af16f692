"""MMC4's parameters: defined once (mmc4_params.py), mapped onto by each asset's Config, and
carried with the data they shaped (parquet key-value metadata), not read back from Dagster."""

import polars as pl

from mmc4_assets import mmc4_params as P
from mmc4_assets.storage import ShardStore


def test_defaults_are_mmc4s():
    assert P.AssignSettings() == P.AssignSettings(min_similarity=0.15, assignment="mmc4")
    assert (P.ImageLimits().min_side, P.ImageLimits().max_aspect, P.ImageLimits().max_side) == (150, 2.0, 800)
    assert P.DedupSettings().phash_threshold == 5
    assert (P.ClassifierSettings().nsfw_threshold, P.BlocklistRule().max_near_duplicates) == (0.1, 10)
    assert (P.BlocklistRule().max_distance, P.ExactCountSettings().max_docs_per_image) == (5, 10)
    assert P.DocIndexSettings().near_duplicate_jaccard == 0.8
    assert P.CoreRules().as_dict() == {
        "min_sentences": 4,
        "max_sentences": 40,
        "min_images": 2,
        "max_images": 15,
        "phash_threshold": 10,
        "min_sim": 0.25,
        "min_fraction": 0.75,
    }


def test_configs_map_onto_the_settings_objects():
    from mmc4_assets.defs.assignments import AssignmentsConfig
    from mmc4_assets.defs.corpus_doc_index import CorpusDocIndexConfig
    from mmc4_assets.defs.deduped_docs import DedupConfig
    from mmc4_assets.defs.fetched_images import FetchConfig
    from mmc4_assets.defs.published_shards import CoreConfig, PublishConfig

    assert AssignmentsConfig().settings() == P.AssignSettings()
    assert AssignmentsConfig(min_similarity=0.3).settings().min_similarity == 0.3
    assert DedupConfig().settings() == P.DedupSettings()
    assert FetchConfig().limits() == P.ImageLimits()
    assert PublishConfig().settings() == P.PublishSettings()
    # CoreConfig is generated from CoreRules, field for field
    assert set(CoreConfig.model_fields) == set(P.CoreRules().as_dict())
    assert PublishConfig(core=CoreConfig(min_sim=0.3)).settings().core == P.CoreRules(min_sim=0.3)
    assert CorpusDocIndexConfig().near_duplicate_jaccard == P.DocIndexSettings.near_duplicate_jaccard


def test_table_params_travel_with_the_table(tmp_path):
    store = ShardStore(tmp_path)
    store.write_table("t", "s", pl.DataFrame({"a": [1, 2]}), {"min_similarity": 0.3})
    assert store.read_table_params("t", "s") == {"min_similarity": 0.3}
    assert store.read_table("t", "s")["a"].to_list() == [1, 2]
    with store.table_writer("u", "s", {"a": pl.Int64}, {"rule": "x"}) as out:
        out.write(pl.DataFrame({"a": [3]}))
        out.params["rows"] = out.rows  # counts known only at the end still travel
    assert store.read_table_params("u", "s") == {"rule": "x", "rows": 1}
    store.write_table("v", "s", pl.DataFrame({"a": [1]}))
    assert store.read_table_params("v", "s") == {}  # a table from before: the check uses MMC4's default


def test_checks_never_read_parameters_from_the_event_log():
    import pathlib

    import mmc4_assets.defs as defs_pkg

    folder = pathlib.Path(defs_pkg.__file__).parent
    assert [p.name for p in folder.glob("*.py") if "latest_metadata" in p.read_text()] == []
