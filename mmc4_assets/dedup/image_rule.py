"""Which frequent-image rule the corpus runs, and what a shard's publication needs from it.

Two rules, one chosen in ``corpus_image_counts``'s config and recorded here with the data:

- ``mmc4_sample_blocklist`` (default, MMC4's): pHashes with more than 10 near-duplicates in
  a seeded sample of 60,000 fetched images; state in ``corpus/image_blocklist``.
- ``exact_corpus_count`` (stricter variant): exact pHash in more than 10 documents over the
  whole corpus; state in ``corpus/image_counts``.

``corpus/image_rule.json`` names the rule and the state version a publication must use;
``generation`` grows with every change (either rule), so "published from an older
decision" is one integer comparison even across a switch of rule.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mmc4_assets.dedup import blocklist as bl
from mmc4_assets.dedup import image_counts as ic
from mmc4_assets.storage import ShardStore

RULES = (bl.RULE, bl.EXACT_RULE)
POINTER = "image_rule.json"


def read_pointer(store: ShardStore) -> dict:
    path = store.path("corpus", POINTER)
    return json.loads(path.read_bytes()) if path.exists() else {}


def write_pointer(store: ShardStore, rule: str, version: int) -> int:
    """Record the rule and its state version; returns the generation publications compare."""
    old = read_pointer(store)
    generation = old.get("generation", 0)
    if (old.get("rule"), old.get("version")) != (rule, version):
        generation += 1
        store.write_bytes(
            store.path("corpus", POINTER),
            json.dumps({"rule": rule, "version": version, "generation": generation}, sort_keys=True).encode(),
        )
    return generation


@dataclass(frozen=True)
class ImageRule:
    """The frequent-image decision as of one generation."""

    rule: str
    generation: int
    absorbed: dict[str, int | None]  # shard -> storage id of its absorbed image_hash_counts
    frequent: Callable[[Iterable[str]], frozenset[str]]
    settings: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        keep = ("sample_size", "max_near_duplicates", "max_distance", "seed", "blocklist_id", "limit")
        return {
            "image_rule": self.rule,
            "image_rule_generation": self.generation,
            **{k: v for k, v in self.settings.items() if k in keep},
        }


def load_image_rule(store: ShardStore) -> ImageRule | None:
    """None when no corpus update has run yet."""
    pointer = read_pointer(store)
    if not pointer:
        return None
    if pointer["rule"] == bl.RULE:
        blocklist, absorbed, settings = bl.load_blocklist(store)
        return ImageRule(
            bl.RULE, pointer["generation"], absorbed, blocklist.matches, {**settings, "blocklist_size": blocklist.size}
        )
    counts = ic.load_image_counts(store)
    return ImageRule(
        bl.EXACT_RULE,
        pointer["generation"],
        counts.absorbed,
        lambda phashes: frozenset(p for p in phashes if counts.is_frequent(p)),
        {"limit": counts.limit},
    )
