"""Small helpers shared by the asset modules: config hashes and metadata shapes."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import dagster as dg
import pydantic

from mmc4_assets.quality.rules import Outcome
from mmc4_assets.stats import StepStats

GROUP = "mmc4"  # the six MMC4 stages, raw_c4 ... published_shards, each with a blocking check
# per-shard side outputs the stages use: classifier scores (publishing filters)
SIGNALS_GROUP = "shard_signals"
# corpus-wide dedup: per-shard contributions and the unpartitioned corpus state they feed
CORPUS_GROUP = "corpus"


def shard_check(
    *, asset: Any, blocking: bool, partitions_def: dg.PartitionsDefinition | None = None, **kwargs: Any
) -> Callable[[Callable], dg.AssetChecksDefinition]:
    """``@dg.asset_check`` for a partitioned asset (shards by default; archives for page_records):
    the check is partitioned like its asset, so each result is recorded against its partition
    (the UI's check history and partition view show it), and every result carries the partition
    key in its metadata (``partition``) as well.

    Partitioned asset checks are a preview feature in Dagster 1.13; the warning is silenced in
    defs/partitions.py (docs/data-quality.md says what was checked).
    """
    from mmc4_assets.defs.partitions import shards

    def decorate(fn: Callable) -> dg.AssetChecksDefinition:
        @functools.wraps(fn)
        def with_partition(*args: Any, **kw: Any) -> dg.AssetCheckResult:
            result = fn(*args, **kw)
            try:
                context = dg.AssetCheckExecutionContext.get()
            except dg.DagsterInvariantViolationError:  # called directly, outside a run
                return result
            if context.has_partition_key:
                result = result.with_metadata({**result.metadata, "partition": context.partition_key})
            return result

        return dg.asset_check(asset=asset, blocking=blocking, partitions_def=partitions_def or shards, **kwargs)(
            with_partition
        )

    return decorate


S = TypeVar("S")


def settings_of(config: Any, settings_cls: type[S]) -> S:
    """The stage's settings object (mmc4_params.py) from a Config whose fields carry its names."""
    return settings_cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(settings_cls)})


def settings_config(name: str, settings_cls: type, doc: str) -> type[dg.Config]:
    """A ``dg.Config`` with exactly the fields and defaults of a settings dataclass, and ``.settings()``."""
    hints = typing.get_type_hints(settings_cls)
    fields = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(settings_cls)}
    cls = pydantic.create_model(name, __base__=dg.Config, __module__=__name__, __doc__=doc, **fields)
    cls.settings = lambda self: settings_of(self, settings_cls)
    return cls


def config_hash(*parts: Any) -> str:
    """Short stable hash of the settings that shaped an output, to spot config drift across partitions."""
    payload = [p.model_dump() if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stats_metadata(stats: StepStats, prefix: str, what: str) -> dict[str, Any]:
    """Numeric counts (plotted across partitions by the UI) plus a readable drop table."""
    md: dict[str, Any] = {f"{prefix}_kept": stats.kept, f"{prefix}_dropped": stats.total_dropped}
    md.update({f"{prefix}_{k}": v for k, v in stats.as_dict().items()})
    md[f"{prefix}_drop_reasons"] = dg.MetadataValue.md(stats.as_markdown(what))
    md.update({f"seconds_{k}": round(v, 3) for k, v in stats.timings.items()})
    return md


def check_result(outcome: Outcome, suite: Any = None, **extra: Any) -> dg.AssetCheckResult:
    """One blocking result from the structural rules and the partition's GX suite (if run)."""
    failing = [k for k, v in outcome.failures.items() if v]
    metadata = {**outcome.metadata(), **extra}
    if suite is not None:
        failing += [f"gx:{r.expectation}({r.column or ''})" for r in suite.failed]
        metadata["gx_suite"] = suite.suite
        metadata["gx_success"] = suite.success
        metadata["gx_expectations"] = len(suite.results)
        metadata["gx_failed_expectations"] = len(suite.failed)
        metadata["gx_results"] = dg.MetadataValue.md(suite.as_markdown())
        if suite.docs_url:
            metadata["data_docs"] = dg.MetadataValue.url(f"file://{suite.docs_url}")
    passed = outcome.passed and (suite is None or suite.success)
    if failing:
        metadata["failing"] = ", ".join(failing)  # the rule names, for filtering across partitions
    # in words: what is wrong and how many rows (quality.messages, shared by every check)
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
        description=outcome.describe([r.message() for r in suite.failed] if suite is not None else []),
    )
