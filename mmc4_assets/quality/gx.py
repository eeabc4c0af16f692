"""A small great-expectations 1.x runner: one validation per asset partition.

dagster-ge does not support GX 1.x, so this is our own. great_expectations is imported
lazily (it takes several seconds) and only by processes that run checks. The context is
ephemeral; Data Docs, when a directory is given, are rebuilt there after each validation
so a check's metadata can link to the run's page.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_SITE = "mmc4_data_docs"


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None
    observed: Any
    kwargs: dict = field(default_factory=dict)

    def message(self) -> str:
        from mmc4_assets.quality.messages import expectation_message

        return expectation_message(self.expectation, self.column, self.kwargs, self.unexpected_count,
                                   self.observed)


@dataclass
class SuiteOutcome:
    suite: str
    success: bool
    results: list[ExpectationOutcome] = field(default_factory=list)
    docs_url: str | None = None

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success]

    def as_markdown(self) -> str:
        lines = ["| expectation | column | ok | unexpected | observed |", "|---|---|---|---:|---|"]
        for r in self.results:
            lines.append(f"| {r.expectation} | {r.column or ''} | {'✅' if r.success else '❌'} | "
                         f"{'' if r.unexpected_count is None else r.unexpected_count} | "
                         f"{'' if r.observed is None else str(r.observed)[:60]} |")
        return "\n".join(lines)


class GXRunner:
    """Owns one ephemeral GX context per process; validations are serialised (GX is not thread-safe)."""

    def __init__(self, docs_dir: str | Path | None = None):
        self.docs_dir = str(docs_dir) if docs_dir else None
        self._context = None
        self._lock = threading.Lock()

    def _ctx(self):
        if self._context is None:
            import great_expectations as gx

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = {"globally": False}
            if self.docs_dir:
                Path(self.docs_dir).mkdir(parents=True, exist_ok=True)
                ctx.add_data_docs_site(_SITE, {
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                      "base_directory": self.docs_dir},
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                })
            ctx.data_sources.add_pandas("mmc4")
            self._context = ctx
        return self._context

    def validate(self, suite_name: str, run_name: str, frame, expectations: list) -> SuiteOutcome:
        """Validate a pandas frame against expectations built by ``mmc4_assets.quality.suites``."""
        import great_expectations as gx

        with self._lock:
            ctx = self._ctx()
            source = ctx.data_sources.get("mmc4")
            asset_name = f"{suite_name}__{run_name}"
            asset = source.add_dataframe_asset(asset_name)
            batch_def = asset.add_batch_definition_whole_dataframe("partition")
            suite = gx.ExpectationSuite(name=asset_name)
            for expectation in expectations:
                suite.add_expectation(expectation)
            suite = ctx.suites.add(suite)
            definition = ctx.validation_definitions.add(
                gx.ValidationDefinition(data=batch_def, suite=suite, name=asset_name))
            actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[_SITE])] if self.docs_dir else []
            checkpoint = ctx.checkpoints.add(gx.Checkpoint(
                name=asset_name, validation_definitions=[definition], actions=actions))
            result = checkpoint.run(batch_parameters={"dataframe": frame})
            outcome = SuiteOutcome(suite=suite_name, success=bool(result.success))
            for run in result.run_results.values():
                for r in run.results:
                    cfg = r.expectation_config
                    res = r.result or {}
                    outcome.results.append(ExpectationOutcome(
                        expectation=cfg.type, column=cfg.kwargs.get("column"), success=bool(r.success),
                        unexpected_count=res.get("unexpected_count"), observed=res.get("observed_value"),
                        kwargs={k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"}))
            if self.docs_dir:
                outcome.docs_url = str(Path(self.docs_dir) / "index.html")
            return outcome
