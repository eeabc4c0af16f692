"""The great-expectations resource the blocking checks use, and the warn-level drift checks' helper."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from mmc4_assets.quality.suites import Thresholds


class DataQuality(dg.ConfigurableResource):
    """Thresholds of the data-quality layer and the GX runner.

    Local storage roots keep one persistent GX file context, ``{storage root}/gx``, whose
    Data Docs (``gx/uncommitted/data_docs/local_site/index.html``) accumulate every
    validation; each check links to its own page. Object-store roots keep the validation
    results in check metadata only (an ephemeral context).
    """

    gx_enabled: bool = True
    build_data_docs: bool = True
    max_url_filter_drop_share: float = Thresholds.max_url_filter_drop_share
    min_fetch_success_rate: float = Thresholds.min_fetch_success_rate
    norm_tolerance: float = Thresholds.norm_tolerance
    max_success_rate_drop: float = Thresholds.max_success_rate_drop
    trailing_partitions: int = Thresholds.trailing_partitions
    # a truncated or corrupt source shard blocks raw_c4 unless allowed; the check's metadata
    # records the choice and where the source broke
    allow_truncated_source: bool = False
    _runners: dict = PrivateAttr(default_factory=dict)

    def thresholds(self, **run_params: Any) -> Thresholds:
        """Configured bounds, with the parameters the asset actually ran with (from its metadata)."""
        base = Thresholds(
            max_url_filter_drop_share=self.max_url_filter_drop_share,
            min_fetch_success_rate=self.min_fetch_success_rate,
            norm_tolerance=self.norm_tolerance,
            max_success_rate_drop=self.max_success_rate_drop,
            trailing_partitions=self.trailing_partitions,
        )
        known = {f.name for f in dataclasses.fields(Thresholds)}
        return dataclasses.replace(base, **{k: v for k, v in run_params.items() if k in known and v is not None})

    def validate(self, suite: str, partition: str, frame, expectations: list, storage_root: str):
        if not self.gx_enabled:
            return None
        from mmc4_assets.quality.gx import GXRunner

        project_dir = None if "://" in storage_root else storage_root.rstrip("/")
        runner = self._runners.get(project_dir)
        if runner is None:
            runner = self._runners[project_dir] = GXRunner(project_dir, build_docs=self.build_data_docs)
        return runner.validate(suite, partition, frame, expectations, run_id=_current_run_id())


def _current_run_id() -> str | None:
    try:
        return dg.AssetCheckExecutionContext.get().run.run_id
    except dg.DagsterInvariantViolationError:  # called outside a check
        return None


def validate_suite(
    quality: DataQuality,
    suite: str,
    partition: str,
    storage_root: str,
    frame_fn: Callable[[], Any],
    expectations_fn: Callable[[], list],
):
    """Build the frame and expectations only when GX is on (importing GX costs seconds)."""
    if not quality.gx_enabled:
        return None
    return quality.validate(suite, partition, frame_fn(), expectations_fn(), storage_root)


def run_param_check(
    quality: DataQuality,
    storage: Any,
    table: str,
    shard: str,
    param: str,
    default: Any,
    rules: Callable[[Any, Any], Any],
    frame: Callable[[Any], Any],
    expectations: Callable[[Thresholds], list],
) -> dg.AssetCheckResult:
    """The blocking check of a stage whose rules depend on one parameter: the value the table was
    made with (stored beside it, ``read_table_params``; ``default`` for a table from before)."""
    from mmc4_assets.defs.common import check_result

    store = storage.store()
    value = store.read_table_params(table, shard).get(param, default)
    data = store.read_table(table, shard)
    thresholds = quality.thresholds(**{param: value})
    suite = validate_suite(quality, table, shard, storage.root, lambda: frame(data), lambda: expectations(thresholds))
    return check_result(rules(data, value), suite, **{param: value})
